//! `package/package.json`: the package's identity and what it depends on.
//!
//! Invariants: a parsed [`Manifest`] has an id that follows the FHIR package naming rule
//! and a SemVer version; every dependency maps an id to a version string. Fields the
//! spec calls informational (`type`, `canonical`) are kept as written: real packages spell
//! `type` both `IG` and `fhir.ig`.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Manifest {
    pub id: String,
    pub version: semver::Version,
    pub fhir_versions: Vec<String>,
    pub dependencies: BTreeMap<String, String>,
    pub package_type: Option<String>,
    pub canonical: Option<String>,
}

/// Only the fields we use; serde skips the rest (author, maintainers, …).
#[derive(Deserialize)]
struct Raw {
    name: Option<serde_json::Value>,
    version: Option<serde_json::Value>,
    #[serde(rename = "fhirVersions")]
    fhir_versions: Option<Vec<String>>,
    /// Pre-2019 spelling of `fhirVersions`.
    #[serde(rename = "fhir-version-list")]
    fhir_version_list: Option<Vec<String>>,
    #[serde(default)]
    dependencies: BTreeMap<String, serde_json::Value>,
    #[serde(rename = "type")]
    package_type: Option<String>,
    canonical: Option<String>,
}

/// Parse package.json; the error is a one-line cause for `IgError::BadManifest`.
pub(crate) fn parse(bytes: &[u8]) -> Result<Manifest, String> {
    let raw: Raw = serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}"))?;
    let id = match raw.name {
        Some(serde_json::Value::String(s)) => s,
        Some(_) => return Err("\"name\" is not a string".into()),
        None => return Err("no \"name\"".into()),
    };
    check_name(&id)?;
    let version = match raw.version {
        Some(serde_json::Value::String(s)) => {
            semver::Version::parse(&s).map_err(|e| format!("version {s:?} is not SemVer ({e})"))?
        }
        Some(_) => return Err("\"version\" is not a string".into()),
        None => return Err("no \"version\"".into()),
    };
    let mut dependencies = BTreeMap::new();
    for (k, v) in raw.dependencies {
        match v {
            serde_json::Value::String(s) => dependencies.insert(k, s),
            _ => return Err(format!("dependency {k:?} has a non-string version")),
        };
    }
    let fhir_versions = raw
        .fhir_versions
        .or(raw.fhir_version_list)
        .unwrap_or_else(|| core_versions(&dependencies));
    Ok(Manifest {
        id,
        version,
        fhir_versions,
        dependencies,
        package_type: raw.package_type,
        canonical: raw.canonical,
    })
}

/// Without `fhirVersions`, the spec says the core package dependency fixes the FHIR
/// version (`hl7.fhir.r4.core` 4.0.1 → "4.0.1").
fn core_versions(deps: &BTreeMap<String, String>) -> Vec<String> {
    deps.iter()
        .filter(|(k, _)| k.starts_with("hl7.fhir.r") && k.ends_with(".core"))
        .map(|(_, v)| v.clone())
        .collect()
}

/// FHIR package naming rule: two or more dot-separated parts, each a lowercase letter
/// followed by lowercase letters, digits or dashes.
fn check_name(id: &str) -> Result<(), String> {
    let parts: Vec<&str> = id.split('.').collect();
    let part_ok = |p: &&str| {
        let mut b = p.bytes();
        matches!(b.next(), Some(c) if c.is_ascii_lowercase())
            && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
    };
    if parts.len() < 2 || !parts.iter().all(part_ok) {
        return Err(format!(
            "name {id:?} breaks the FHIR package naming rule (two or more dot-separated parts of \
             lowercase letters, digits and dashes, each starting with a letter)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn parses_both_fhir_version_spellings_and_prereleases() {
        let m = parse(
            br#"{"name":"hl7.fhir.us.core","version":"7.0.0-ballot","fhir-version-list":["4.0.1"],
            "dependencies":{"hl7.fhir.r4.core":"4.0.1"},"type":"fhir.ig"}"#,
        )
        .unwrap();
        assert_eq!(m.version.pre.as_str(), "ballot");
        assert_eq!(m.fhir_versions, vec!["4.0.1"]);
        assert_eq!(m.package_type.as_deref(), Some("fhir.ig"));
        let m = parse(
            br#"{"name":"a.b","version":"1.0.0","dependencies":{"hl7.fhir.r4.core":"4.0.1"}}"#,
        )
        .unwrap();
        assert_eq!(
            m.fhir_versions,
            vec!["4.0.1"],
            "falls back to the core dependency"
        );
    }

    #[test]
    fn rejects_bad_names_and_versions() {
        let e = parse(br#"{"name":"Core","version":"1.0.0"}"#).unwrap_err();
        assert!(e.contains("naming rule"), "{e}");
        let e = parse(br#"{"name":"a.1b","version":"1.0.0"}"#).unwrap_err();
        assert!(e.contains("naming rule"), "{e}");
        let e = parse(br#"{"name":"a.b","version":"current"}"#).unwrap_err();
        assert!(e.contains("not SemVer"), "{e}");
        let e = parse(br#"{"name":"a.b","version":"1.0.0","dependencies":{"x.y":1}}"#).unwrap_err();
        assert!(e.contains("non-string"), "{e}");
    }
}
