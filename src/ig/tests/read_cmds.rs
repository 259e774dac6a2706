//! Reading packages: the good fixtures, every bad one and the limits (rendering is tested
//! in `report::views::ig`).

use super::*;

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
