//! Diffing the BD Core fixtures: loosening-only and tightening releases (rendering is
//! tested in `report::views::ig`).

use super::*;

#[test]
fn loosening_release_has_no_tightenings() {
    let d = diff(
        &read(&fixture("bd.gov.dghs.core-0.2.1.tgz")),
        &read(&fixture("bd.gov.dghs.core-0.2.2.tgz")),
    );
    assert_eq!(d.tightenings().count(), 0, "{:#?}", d.findings);
    let l = Class::Loosening;
    assert!(find(&d, l, "/bd-patient", Some("Patient.birthDate"), "min").is_some());
    assert!(find(&d, l, "/bd-encounter", Some("Encounter.type"), "binding").is_some());
    assert!(find(&d, l, "/bd-observation", Some("Observation"), "constraint").is_some());
    assert!(
        find(
            &d,
            l,
            "/bd-observation",
            Some("Observation.value[x]"),
            "type"
        )
        .is_some()
    );
    assert!(
        find(
            &d,
            Class::Info,
            "/bd-patient-nid",
            None,
            "searchparameter-changed"
        )
        .is_some()
    );
}

#[test]
fn tightening_release_finds_each_deliberate_tightening() {
    let d = diff(
        &read(&fixture("bd.gov.dghs.core-0.2.1.tgz")),
        &read(&fixture("bd.gov.dghs.core-0.3.0.tgz")),
    );
    let expected = [
        (
            "/bd-patient",
            Some("Patient.name"),
            "min",
            Some("0"),
            Some("1"),
        ),
        (
            "/bd-patient",
            Some("Patient.address"),
            "max",
            Some("*"),
            Some("1"),
        ),
        (
            "/bd-patient",
            Some("Patient.telecom"),
            "mustSupport",
            Some("false"),
            Some("true"),
        ),
        (
            "/bd-patient",
            Some("Patient.identifier"),
            "slicing",
            Some("open"),
            Some("closed"),
        ),
        (
            "/bd-patient",
            Some("Patient.identifier:nid.system"),
            "fixed",
            None,
            Some("fixedUri: \"http://dghs.gov.bd/nid\""),
        ),
        (
            "/bd-encounter",
            Some("Encounter.type"),
            "binding",
            Some("preferred"),
            Some("required"),
        ),
        (
            "/bd-observation",
            Some("Observation.value[x]"),
            "type",
            Some("CodeableConcept|Quantity|string"),
            Some("Quantity"),
        ),
        (
            "/bd-observation",
            Some("Observation.category:vs"),
            "slicing",
            None,
            Some("slice 1..1"),
        ),
    ];
    for (profile, element, kind, before, after) in expected {
        let f = find(&d, Class::Tightening, profile, element, kind)
            .unwrap_or_else(|| panic!("missing {kind} on {element:?}: {:#?}", d.findings));
        assert_eq!(
            (f.before.as_deref(), f.after.as_deref()),
            (before, after),
            "{kind} on {element:?}"
        );
    }
    for (profile, element, kind) in [
        ("/bd-patient", Some("Patient"), "constraint"),
        ("/bd-encounter", Some("Encounter"), "constraint"),
        ("/bd-encounter", Some("Encounter.subject"), "type"),
        ("/bd-observation", Some("Observation.code"), "pattern"),
        ("/ValueSet/bd-encounter-type", None, "valueset-changed"),
    ] {
        assert!(
            find(&d, Class::Tightening, profile, element, kind).is_some(),
            "missing {kind} on {profile} {element:?}"
        );
    }
    assert_eq!(d.tightenings().count(), 13, "{:#?}", d.findings);
    assert_eq!(d.findings.len(), 13, "nothing else changed");
}

#[test]
fn diff_refuses_pairs_that_are_not_an_upgrade() {
    let old = fixture("bd.gov.dghs.core-0.2.1.tgz");
    for (bad, text) in [
        (
            "bad/bd.gov.dghs.other-0.3.0.tgz",
            "is package bd.gov.dghs.other",
        ),
        (
            "bad/bd.gov.dghs.core-0.1.0.tgz",
            "has version 0.1.0, not newer than 0.2.1",
        ),
        (
            "bad/bd.gov.dghs.core-0.4.0-r5.tgz",
            "is for FHIR [\"5.0.0\"]",
        ),
    ] {
        let e = diff_files(&old, &fixture(bad), &Limits::default()).expect_err(bad);
        assert!(
            matches!(e, IgError::NotAnUpgrade { .. }) && e.to_string().contains(text),
            "{bad}: {e}"
        );
    }
}
