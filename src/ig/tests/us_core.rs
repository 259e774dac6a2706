//! The real US Core pairs: the README's tightenings must be found; the ignored bench.

use super::*;

#[test]
fn us_core_3_to_4_finds_the_readme_tightenings() {
    let (old, new) = (
        read(&real("hl7.fhir.us.core-3.1.1.tgz")),
        read(&real("hl7.fhir.us.core-4.0.0.tgz")),
    );
    assert_eq!(
        (old.package_type.as_deref(), old.index_version),
        (Some("fhir.ig"), Some(1))
    );
    assert_eq!(old.counts["StructureDefinition"], 30);
    let d = diff(&old, &new);
    let t = Class::Tightening;
    let min = |el| {
        find(&d, t, "/us-core-smokingstatus", Some(el), "min")
            .map(|f| (f.before.clone(), f.after.clone()))
    };
    assert_eq!(
        min("Observation.category"),
        Some((Some("0".into()), Some("1".into())))
    );
    assert_eq!(
        min("Observation.effective[x]"),
        Some((Some("0".into()), Some("1".into())))
    );
    let b = find(
        &d,
        t,
        "/us-core-medicationrequest",
        Some("MedicationRequest.category"),
        "binding",
    )
    .unwrap();
    assert_eq!(
        (b.before.as_deref(), b.after.as_deref()),
        (Some("example"), Some("preferred"))
    );
    let c = find(
        &d,
        t,
        "/us-core-practitionerrole",
        Some("PractitionerRole"),
        "constraint",
    )
    .unwrap();
    assert!(
        c.after
            .as_deref()
            .unwrap()
            .starts_with("us-core-13 (error)")
    );
    let ms = d
        .tightenings()
        .filter(|f| f.kind == "mustSupport" && f.before.as_deref() == Some("false"))
        .count();
    assert!(ms >= 6, "README: 6 elements gained mustSupport, found {ms}");
    let added = d
        .findings
        .iter()
        .filter(|f| f.kind == "profile-added")
        .count();
    assert!(
        added >= 9,
        "README: 9 profiles added (vital signs), found {added}"
    );
}

#[test]
fn us_core_6_to_7_finds_the_readme_tightenings() {
    let (old, new) = (
        read(&real("hl7.fhir.us.core-6.1.0.tgz")),
        read(&real("hl7.fhir.us.core-7.0.0.tgz")),
    );
    assert_eq!(
        (old.package_type.as_deref(), old.index_version),
        (Some("IG"), Some(2))
    );
    assert_eq!(
        (
            old.counts["StructureDefinition"],
            old.counts["SearchParameter"]
        ),
        (59, 106)
    );
    assert_eq!(
        old.sha256,
        "4c4e7fbb07ef2fdb35bdfc3f5d09a417ee0d8644ea17cb3692ca6d03c4358b1d"
    );
    assert_eq!(new.dependencies["hl7.fhir.uv.extensions"], "5.1.0-cibuild");
    let d = diff(&old, &new);
    let t = Class::Tightening;
    for (profile, element) in [
        ("/us-core-procedure", "Procedure.reasonCode"),
        ("/us-core-specimen", "Specimen.collection.bodySite"),
    ] {
        let f = find(&d, t, profile, Some(element), "binding")
            .unwrap_or_else(|| panic!("binding on {element}"));
        assert_eq!(
            (f.before.as_deref(), f.after.as_deref()),
            (Some("example"), Some("extensible"))
        );
    }
    for (profile, element, key) in [
        (
            "/us-core-observation-lab",
            "Observation.referenceRange",
            "us-core-22",
        ),
        (
            "/us-core-observation-screening-assessment",
            "Observation.value[x]",
            "us-core-3",
        ),
        ("/us-core-patient", "Patient.extension:race", "us-core-23"),
        ("/us-core-smokingstatus", "Observation", "us-core-24"),
    ] {
        let f = find(&d, t, profile, Some(element), "constraint")
            .unwrap_or_else(|| panic!("{key} on {element}"));
        assert!(
            f.after
                .as_deref()
                .unwrap()
                .starts_with(&format!("{key} (error)")),
            "{f:?}"
        );
    }
    let ms = d
        .tightenings()
        .filter(|f| f.kind == "mustSupport" && f.before.as_deref() == Some("false"))
        .count();
    assert!(
        ms >= 19,
        "README: 19 elements gained mustSupport, found {ms}"
    );
    assert_eq!(
        d.findings
            .iter()
            .filter(|f| f.kind == "profile-added")
            .count(),
        4,
        "3 resource profiles + 1 extension"
    );
}
