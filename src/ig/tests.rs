//! Behavioural tests of `ig` on the committed fixtures (`fixtures/ig/`) and the real US
//! Core packages (`$FERRY_SHARED_DIR`, else `../shared`, else `/work/shared`). They live
//! here rather than in `tests/integration` because the CLI is wired on another branch.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/ig")
        .join(name)
}

fn real(name: &str) -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let candidates = [
        std::env::var_os("FERRY_SHARED_DIR").map(PathBuf::from),
        Some(manifest.join("../shared")),
        Some(PathBuf::from("/work/shared")),
    ];
    let dir = candidates
        .into_iter()
        .flatten()
        .map(|d| d.join("fixtures/real-ig-packages"))
        .find(|d| d.is_dir())
        .expect("real IG packages not found: set FERRY_SHARED_DIR to the shared/ checkout");
    dir.join(name)
}

fn read(path: &Path) -> Package {
    read_package(path, &Limits::default()).unwrap_or_else(|e| panic!("{e}"))
}

fn err(path: &Path) -> (IgError, String) {
    let e = read_package(path, &Limits::default()).expect_err("package must be refused");
    let msg = e.to_string();
    (e, msg)
}

#[test]
fn reads_the_baseline_package() {
    let path = fixture("bd.gov.dghs.core-0.2.1.tgz");
    let p = read(&path);
    assert_eq!(
        (p.id.as_str(), p.version.to_string().as_str()),
        ("bd.gov.dghs.core", "0.2.1")
    );
    assert_eq!(p.fhir_versions, vec!["4.0.1"]);
    assert_eq!(
        p.canonical.as_deref(),
        Some("https://fhir.dghs.gov.bd/core")
    );
    assert_eq!(p.package_type.as_deref(), Some("IG"));
    assert_eq!(
        p.dependencies.get("hl7.fhir.r4.core").map(String::as_str),
        Some("4.0.1")
    );
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(p.sha256, hex::encode(Sha256::digest(&bytes)));
    assert_eq!(p.index_version, Some(2));
    let counts: Vec<(&str, usize)> = p.counts.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(
        counts,
        [
            ("CodeSystem", 1),
            ("SearchParameter", 1),
            ("StructureDefinition", 3),
            ("ValueSet", 1)
        ]
    );
    assert_eq!(p.example_counts.get("Patient"), Some(&1));
    assert!(
        p.resources.iter().all(|r| r.body.is_some()),
        "diffed types keep their body"
    );
}

#[test]
fn reads_index_v1_and_builds_a_missing_index() {
    assert_eq!(
        read(&fixture("bd.gov.dghs.core-0.2.2.tgz")).index_version,
        Some(1)
    );
    let p = read(&fixture("bd.gov.dghs.core-0.3.0.tgz"));
    assert_eq!(p.index_version, None);
    let urls: Vec<_> = p
        .resources
        .iter()
        .filter(|r| r.resource_type == "StructureDefinition")
        .map(|r| r.url.clone().unwrap())
        .collect();
    assert_eq!(urls.len(), 3);
    assert!(
        urls.iter()
            .all(|u| u.starts_with("https://fhir.dghs.gov.bd/core/StructureDefinition/bd-"))
    );
}

#[test]
fn every_bad_package_gives_its_own_error() {
    type Case = (&'static str, fn(&IgError) -> bool, &'static str);
    let cases: [Case; 12] = [
        (
            "tar-slip.tgz",
            |e| matches!(e, IgError::BadEntry { .. }),
            "entry \"package/../evil.json\" escapes package/ (tar slip)",
        ),
        (
            "absolute-path.tgz",
            |e| matches!(e, IgError::BadEntry { .. }),
            "\"/etc/evil.json\" is an absolute path",
        ),
        (
            "symlink.tgz",
            |e| matches!(e, IgError::BadEntry { .. }),
            "\"package/link.json\" is a symlink",
        ),
        (
            "hardlink.tgz",
            |e| matches!(e, IgError::BadEntry { .. }),
            "\"package/hard.json\" is a hardlink",
        ),
        (
            "fifo.tgz",
            |e| matches!(e, IgError::BadEntry { .. }),
            "\"package/pipe\" is a fifo",
        ),
        (
            "duplicate.tgz",
            |e| matches!(e, IgError::BadEntry { .. }),
            "appears twice",
        ),
        (
            "bomb.tgz",
            |e| {
                matches!(
                    e,
                    IgError::TooLarge {
                        limit: 536_870_912,
                        ..
                    }
                )
            },
            "more than 536870912 bytes uncompressed",
        ),
        (
            "truncated.tgz",
            |e| matches!(e, IgError::Truncated { .. }),
            "truncated gzip stream",
        ),
        (
            "not-gzip.tgz",
            |e| matches!(e, IgError::NotGzip { .. }),
            "not a gzip file",
        ),
        (
            "missing-manifest.tgz",
            |e| matches!(e, IgError::MissingManifest { .. }),
            "no package/package.json",
        ),
        (
            "invalid-manifest.tgz",
            |e| matches!(e, IgError::BadManifest { .. }),
            "package/package.json: invalid JSON",
        ),
        (
            "non-semver.tgz",
            |e| matches!(e, IgError::BadManifest { .. }),
            "version \"0.3\" is not SemVer",
        ),
    ];
    for (name, is_variant, text) in cases {
        let (e, msg) = err(&fixture(&format!("bad/{name}")));
        assert!(is_variant(&e), "{name}: wrong variant {e:?}");
        assert!(
            msg.starts_with(&format!("bad IG package {name}: ")),
            "{name}: message must name the file: {msg}"
        );
        assert!(msg.contains(text), "{name}: {msg:?} lacks {text:?}");
    }
}

#[test]
fn limits_cover_every_decompressed_byte_and_entry() {
    let path = fixture("bd.gov.dghs.core-0.2.1.tgz");
    let full = read(&path).uncompressed_bytes;
    // Declared file sizes fit, but tar headers and padding do not: only the stream
    // counter can catch this.
    let tight = Limits {
        max_bytes: full - 1,
        ..Limits::default()
    };
    let e = read_package(&path, &tight).expect_err("one byte short must fail");
    assert!(
        matches!(e, IgError::TooLarge { limit, .. } if limit == full - 1),
        "{e:?}"
    );
    let few = Limits {
        max_entries: 3,
        ..Limits::default()
    };
    let e = read_package(&path, &few).expect_err("entry cap");
    assert_eq!(
        e.to_string(),
        "bad IG package bd.gov.dghs.core-0.2.1.tgz: more than 3 tar entries"
    );
}

fn find<'a>(
    d: &'a Diff,
    class: Class,
    profile_end: &str,
    element: Option<&str>,
    kind: &str,
) -> Option<&'a Finding> {
    d.findings.iter().find(|f| {
        f.class == class
            && f.profile.ends_with(profile_end)
            && f.element.as_deref() == element
            && f.kind == kind
    })
}

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
        let mut out = Vec::new();
        let e = diff_cmd(&old, &fixture(bad), &Limits::default(), false, &mut out).expect_err(bad);
        assert!(
            matches!(e, IgError::NotAnUpgrade { .. }) && e.to_string().contains(text),
            "{bad}: {e}"
        );
        assert!(out.is_empty(), "nothing is written on error");
    }
}

#[test]
fn inspect_cmd_renders_human_and_json() {
    let path = fixture("bd.gov.dghs.core-0.2.1.tgz");
    let mut out = Vec::new();
    inspect_cmd(&path, &Limits::default(), true, &mut out).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["id"], "bd.gov.dghs.core");
    assert_eq!(v["version"], "0.2.1");
    assert_eq!(v["fhirVersions"], serde_json::json!(["4.0.1"]));
    assert_eq!(v["dependencies"]["hl7.fhir.r4.core"], "4.0.1");
    assert_eq!(v["counts"]["StructureDefinition"], 3);
    assert_eq!(v["sha256"].as_str().map(str::len), Some(64));
    let profiles = v["profiles"].as_array().unwrap();
    assert_eq!(profiles.len(), 3);
    assert_eq!(
        profiles[0]["url"],
        "https://fhir.dghs.gov.bd/core/StructureDefinition/bd-encounter"
    );
    assert_eq!(
        (profiles[0]["type"].as_str(), profiles[0]["kind"].as_str()),
        (Some("Encounter"), Some("resource"))
    );
    let mut human = Vec::new();
    inspect_cmd(&path, &Limits::default(), false, &mut human).unwrap();
    let human = String::from_utf8(human).unwrap();
    assert!(
        human.starts_with("bd.gov.dghs.core 0.2.1  (bd.gov.dghs.core-0.2.1.tgz)\n"),
        "{human}"
    );
    assert!(
        human.contains(
            "resources      CodeSystem 1, SearchParameter 1, StructureDefinition 3, ValueSet 1"
        ),
        "{human}"
    );
}

#[test]
fn diff_cmd_renders_stable_json_and_grouped_text() {
    let (a, b) = (
        fixture("bd.gov.dghs.core-0.2.1.tgz"),
        fixture("bd.gov.dghs.core-0.3.0.tgz"),
    );
    let run = |json| {
        let mut out = Vec::new();
        diff_cmd(&a, &b, &Limits::default(), json, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    };
    let json = run(true);
    assert_eq!(json, run(true), "deterministic");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        v["old"],
        serde_json::json!({"id": "bd.gov.dghs.core", "version": "0.2.1"})
    );
    assert_eq!(v["new"]["version"], "0.3.0");
    let f = &v["findings"][0];
    let keys: Vec<&str> = f.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["after", "before", "class", "element", "kind", "profile"]
    );
    assert_eq!(f["class"], "tightening");
    let text = run(false);
    assert!(
        text.contains("  tightening: 13\n  loosening:  0\n  info:       0\n"),
        "{text}"
    );
    assert!(text.contains("[min] Patient.name: 0 -> 1"), "{text}");
}

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

/// `cargo test --release --bin ferry -- --ignored bench --nocapture`: reader and diff speed.
#[test]
#[ignore]
fn bench_read_and_diff_us_core() {
    let time = |f: &mut dyn FnMut()| {
        let mut v: Vec<f64> = (0..15)
            .map(|_| {
                let t = std::time::Instant::now();
                f();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (a, b) = (
        real("hl7.fhir.us.core-6.1.0.tgz"),
        real("hl7.fhir.us.core-7.0.0.tgz"),
    );
    let read_ms = time(&mut || drop(read(&a)));
    let (pa, pb) = (read(&a), read(&b));
    let diff_ms = time(&mut || drop(diff(&pa, &pb)));
    println!(
        "bench: read_package(us.core 6.1.0) median {read_ms:.1} ms; diff(6.1.0 -> 7.0.0, parsed) median {diff_ms:.1} ms"
    );
}
