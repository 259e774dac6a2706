//! Rendering of `ferry ig inspect` and `ferry ig diff`, human or JSON.
//!
//! Invariants: the only code in `ig` that writes output, and only to the `out` it is
//! given; JSON output is one document whose shape is documented here (inspect) and in
//! `diff` (diff); human output lists tightenings first, then loosenings, then info.

use std::io::Write;
use std::path::Path;

use serde_json::json;

use super::diff::{Class, Diff, Finding, check_upgrade, diff};
use super::{IgError, Limits, Package, read_package};

/// `ferry ig inspect PKG`. JSON shape: `{"file","id","version","fhirVersions","type",
/// "canonical","dependencies":{id: version},"sha256","indexVersion","entries",
/// "uncompressedBytes","counts":{resourceType: n},"exampleCounts":{resourceType: n},
/// "profiles":[{"url","version","type","kind"}]}` (absent values are null).
pub fn inspect_cmd(
    path: &Path,
    limits: &Limits,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), IgError> {
    let p = read_package(path, limits)?;
    let text = if json {
        inspect_json(&p)
    } else {
        inspect_human(&p)
    };
    write(out, &text)
}

/// `ferry ig diff OLD NEW`: refuses pairs that are not an upgrade (see `check_upgrade`).
pub fn diff_cmd(
    old: &Path,
    new: &Path,
    limits: &Limits,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), IgError> {
    let (a, b) = (read_package(old, limits)?, read_package(new, limits)?);
    check_upgrade(&a, &b)?;
    let d = diff(&a, &b);
    let text = if json { diff_json(&d) } else { diff_human(&d) };
    write(out, &text)
}

fn write(out: &mut dyn Write, text: &str) -> Result<(), IgError> {
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|source| IgError::Io {
            file: "<output>".into(),
            source,
        })
}

fn profiles(p: &Package) -> impl Iterator<Item = &super::Resource> {
    p.resources
        .iter()
        .filter(|r| r.resource_type == "StructureDefinition")
}

fn inspect_json(p: &Package) -> String {
    let profiles: Vec<_> = profiles(p)
        .map(|r| json!({"url": r.url, "version": r.version, "type": r.sd_type, "kind": r.kind}))
        .collect();
    let doc = json!({
        "file": p.file_name, "id": p.id, "version": p.version.to_string(),
        "fhirVersions": p.fhir_versions, "type": p.package_type, "canonical": p.canonical,
        "dependencies": p.dependencies, "sha256": p.sha256, "indexVersion": p.index_version,
        "entries": p.entries, "uncompressedBytes": p.uncompressed_bytes,
        "counts": p.counts, "exampleCounts": p.example_counts, "profiles": profiles,
    });
    format!("{doc:#}\n")
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

fn diff_json(d: &Diff) -> String {
    // Diff's Serialize impl is the documented shape; serialising plain data cannot fail.
    let doc = serde_json::to_value(d).unwrap_or_default();
    format!("{doc:#}\n")
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
