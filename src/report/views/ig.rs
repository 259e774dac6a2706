//! `ferry ig inspect` and `ferry ig diff`. Human output lists tightenings first, then
//! loosenings, then info.
//!
//! JSON of inspect: `{"file","id","version","fhirVersions","type","canonical",
//! "dependencies":{id: version},"sha256","indexVersion","entries","uncompressedBytes",
//! "counts":{resourceType: n},"exampleCounts":{resourceType: n},
//! "profiles":[{"url","version","type","kind"}]}` (absent values are null). JSON of diff:
//! `Diff`'s documented shape (`ig/diff/mod.rs`).

use serde::Serialize;
use serde_json::json;

use crate::ig::{Class, Diff, Finding, Package, Resource};
use crate::report::view::View;

pub struct InspectView<'a>(pub &'a Package);

pub struct DiffView<'a>(pub &'a Diff);

fn profiles(p: &Package) -> impl Iterator<Item = &Resource> {
    p.resources
        .iter()
        .filter(|r| r.resource_type == "StructureDefinition")
}

impl Serialize for InspectView<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let p = self.0;
        let profiles: Vec<_> = profiles(p)
            .map(|r| json!({"url": r.url, "version": r.version, "type": r.sd_type, "kind": r.kind}))
            .collect();
        json!({
            "file": p.file_name, "id": p.id, "version": p.version.to_string(),
            "fhirVersions": p.fhir_versions, "type": p.package_type, "canonical": p.canonical,
            "dependencies": p.dependencies, "sha256": p.sha256, "indexVersion": p.index_version,
            "entries": p.entries, "uncompressedBytes": p.uncompressed_bytes,
            "counts": p.counts, "exampleCounts": p.example_counts, "profiles": profiles,
        })
        .serialize(s)
    }
}

impl View for InspectView<'_> {
    fn human(&self, out: &mut String) {
        out.push_str(&inspect_human(self.0));
    }
}

impl Serialize for DiffView<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Through a Value: its keys come out sorted, as the documented examples show them.
        serde_json::to_value(self.0)
            .map_err(serde::ser::Error::custom)?
            .serialize(s)
    }
}

impl View for DiffView<'_> {
    fn human(&self, out: &mut String) {
        out.push_str(&diff_human(self.0));
    }
}

fn inspect_human(p: &Package) -> String {
    let or_dash = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
    let join_counts = |m: &std::collections::BTreeMap<String, usize>| {
        if m.is_empty() {
            return "-".to_string();
        }
        m.iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let deps = p
        .dependencies
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>();
    let index = p
        .index_version
        .map_or("built from files".to_string(), |v| format!("version {v}"));
    let mut s = format!("{} {}  ({})\n", p.id, p.version, p.file_name);
    s += &format!("  FHIR versions  {}\n", p.fhir_versions.join(", "));
    s += &format!("  type           {}\n", or_dash(&p.package_type));
    s += &format!("  canonical      {}\n", or_dash(&p.canonical));
    s += &format!("  sha256         {}\n", p.sha256);
    s += &format!(
        "  dependencies   {}\n",
        if deps.is_empty() {
            "-".into()
        } else {
            deps.join(", ")
        }
    );
    s += &format!(
        "  index          {index}; {} entries, {} bytes uncompressed\n",
        p.entries, p.uncompressed_bytes
    );
    s += &format!("  resources      {}\n", join_counts(&p.counts));
    s += &format!("  examples       {}\n", join_counts(&p.example_counts));
    s += &format!("  profiles ({})\n", profiles(p).count());
    for r in profiles(p) {
        s += &format!(
            "    {}  {}  {}  {}\n",
            or_dash(&r.url),
            or_dash(&r.version),
            or_dash(&r.sd_type),
            or_dash(&r.kind)
        );
    }
    s
}

fn class_name(c: Class) -> &'static str {
    match c {
        Class::Tightening => "tightening",
        Class::Loosening => "loosening",
        Class::Info => "info",
    }
}

fn diff_human(d: &Diff) -> String {
    let counts = d.counts();
    let n = |c| counts.get(&c).copied().unwrap_or(0);
    let mut s = format!(
        "{} {} -> {} {}\n",
        d.old.id, d.old.version, d.new.id, d.new.version
    );
    for c in [Class::Tightening, Class::Loosening, Class::Info] {
        s += &format!("  {:<11} {}\n", format!("{}:", class_name(c)), n(c));
    }
    for c in [Class::Tightening, Class::Loosening, Class::Info] {
        let group: Vec<&Finding> = d.findings.iter().filter(|f| f.class == c).collect();
        if group.is_empty() {
            continue;
        }
        s += &format!("\n{} ({})\n", class_name(c).to_uppercase(), group.len());
        let mut last_profile = "";
        for f in group {
            if f.profile != last_profile {
                s += &format!("  {}\n", f.profile);
                last_profile = &f.profile;
            }
            let arrow = match (&f.before, &f.after) {
                (Some(b), Some(a)) => format!("{b} -> {a}"),
                (None, Some(a)) => format!("+ {a}"),
                (Some(b), None) => format!("- {b}"),
                (None, None) => String::new(),
            };
            let elem = f
                .element
                .as_deref()
                .map(|e| format!(" {e}:"))
                .unwrap_or_default();
            s += &format!("    [{}]{elem} {arrow}\n", f.kind);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::ig::{Limits, diff_files, read_package};
    use crate::report::view::{Format, render};

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/ig")
            .join(name)
    }

    #[test]
    fn inspect_renders_human_and_json() {
        let p = read_package(&fixture("bd.gov.dghs.core-0.2.1.tgz"), &Limits::default()).unwrap();
        let out = render(&InspectView(&p), Format::Json);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
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
        let human = render(&InspectView(&p), Format::Human);
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
    fn diff_renders_stable_json_and_grouped_text() {
        let (a, b) = (
            fixture("bd.gov.dghs.core-0.2.1.tgz"),
            fixture("bd.gov.dghs.core-0.3.0.tgz"),
        );
        let run = |format| {
            let d = diff_files(&a, &b, &Limits::default()).unwrap();
            render(&DiffView(&d), format)
        };
        let json = run(Format::Json);
        assert_eq!(json, run(Format::Json), "deterministic");
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
        let text = run(Format::Human);
        assert!(
            text.contains("  tightening: 13\n  loosening:  0\n  info:       0\n"),
            "{text}"
        );
        assert!(text.contains("[min] Patient.name: 0 -> 1"), "{text}");
    }
}
