//! Diff two IG packages and classify each change for the people who send data.
//!
//! Resources are matched by canonical URL. StructureDefinitions are compared element by
//! element on the snapshot (the differential only when a profile has no snapshot), so
//! tightenings inherited from a base are seen too; see `elements` for the rules.
//! ValueSets, CodeSystems and SearchParameters are compared in `terminology`.
//!
//! Classes: `tightening` = data or behaviour valid under OLD may be rejected under NEW
//! (a SHALL tightening, the thing an upgrade must be warned about); `loosening` = the
//! reverse; `info` = a change whose effect cannot be decided from the packages alone.
//!
//! JSON shape (stable; `ferry ig diff --format json`):
//! ```json
//! {"old": {"id": "…", "version": "…"}, "new": {"id": "…", "version": "…"},
//!  "findings": [{"class": "tightening|loosening|info", "kind": "…", "profile": "<canonical>",
//!                "element": "<element id>|null", "before": "…|null", "after": "…|null"}]}
//! ```
//! `kind` is one of `min`, `max`, `mustSupport`, `binding`, `constraint`, `fixed`,
//! `pattern`, `type`, `slicing`, `base` (baseDefinition changed), `profile-added`,
//! `profile-removed`, `valueset-added|removed|changed`, `codesystem-added|removed|changed`,
//! `searchparameter-added|removed|changed`. For non-StructureDefinition kinds `profile`
//! holds that resource's canonical URL.
//!
//! Invariants: findings are sorted (class: tightening, loosening, info; then profile,
//! element, kind, before, after) so output is deterministic; `diff` never fails: anything
//! unreadable was already refused by `read_package`.

mod elements;
mod ids;
mod terminology;

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::{IgError, Package};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    Tightening,
    Loosening,
    Info,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub class: Class,
    pub kind: String,
    pub profile: String,
    pub element: Option<String>,
    pub before: Option<String>,
    pub after: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PkgRef {
    pub id: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diff {
    pub old: PkgRef,
    pub new: PkgRef,
    pub findings: Vec<Finding>,
}

impl Diff {
    pub fn tightenings(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.class == Class::Tightening)
    }

    /// Findings per class, in class order.
    pub fn counts(&self) -> BTreeMap<Class, usize> {
        let mut m = BTreeMap::new();
        for f in &self.findings {
            *m.entry(f.class).or_insert(0) += 1;
        }
        m
    }
}

/// Collects findings for one resource; keeps call sites short.
pub(crate) struct Sink<'a> {
    out: &'a mut Vec<Finding>,
    profile: &'a str,
}

impl Sink<'_> {
    pub(crate) fn push(
        &mut self,
        class: Class,
        kind: &str,
        element: Option<&str>,
        before: Option<String>,
        after: Option<String>,
    ) {
        self.out.push(Finding {
            class,
            kind: kind.to_string(),
            profile: self.profile.to_string(),
            element: element.map(str::to_string),
            before,
            after,
        });
    }
}

/// Compare `old` with `new`. Never fails; see the module doc for the classes.
pub fn diff(old: &Package, new: &Package) -> Diff {
    let mut findings = Vec::new();
    for rt in [
        "StructureDefinition",
        "ValueSet",
        "CodeSystem",
        "SearchParameter",
    ] {
        let (a, b) = (by_url(old, rt), by_url(new, rt));
        for (url, va) in &a {
            let mut sink = Sink {
                out: &mut findings,
                profile: url,
            };
            match b.get(url) {
                Some(vb) => compare(rt, va, vb, &mut sink),
                None => removed(rt, va, &mut sink),
            }
        }
        for (url, vb) in b.iter().filter(|(u, _)| !a.contains_key(*u)) {
            added(
                rt,
                vb,
                &mut Sink {
                    out: &mut findings,
                    profile: url,
                },
            );
        }
    }
    findings.sort_by(|x, y| {
        (
            x.class, &x.profile, &x.element, &x.kind, &x.before, &x.after,
        )
            .cmp(&(
                y.class, &y.profile, &y.element, &y.kind, &y.before, &y.after,
            ))
    });
    findings.dedup();
    Diff {
        old: pkg_ref(old),
        new: pkg_ref(new),
        findings,
    }
}

fn pkg_ref(p: &Package) -> PkgRef {
    PkgRef {
        id: p.id.clone(),
        version: p.version.to_string(),
    }
}

/// Parsed bodies of one resource type keyed by canonical URL (first file wins on a
/// duplicate URL, files being sorted by name).
fn by_url<'a>(p: &'a Package, rt: &str) -> BTreeMap<&'a str, Value> {
    let mut m = BTreeMap::new();
    for r in p.resources.iter().filter(|r| r.resource_type == rt) {
        if let Some(url) = r.url.as_deref()
            && !m.contains_key(url)
            && let Some(json) = r.json()
        {
            m.insert(url, json);
        }
    }
    m
}

fn compare(rt: &str, a: &Value, b: &Value, sink: &mut Sink) {
    match rt {
        "StructureDefinition" => elements::compare_profiles(a, b, sink),
        "ValueSet" => terminology::valueset_changed(a, b, sink),
        "CodeSystem" => terminology::codesystem_changed(a, b, sink),
        _ => terminology::searchparameter_changed(a, b, sink),
    }
}

/// A removed profile is a tightening: instances claiming it no longer validate, and a
/// removed SearchParameter breaks the clients that search with it.
fn removed(rt: &str, a: &Value, sink: &mut Sink) {
    let version = a.get("version").and_then(Value::as_str).map(str::to_string);
    let (class, kind) = match rt {
        "StructureDefinition" => (Class::Tightening, "profile-removed"),
        "ValueSet" => (Class::Info, "valueset-removed"),
        "CodeSystem" => (Class::Info, "codesystem-removed"),
        _ => (Class::Tightening, "searchparameter-removed"),
    };
    sink.push(class, kind, None, version, None);
}

fn added(rt: &str, b: &Value, sink: &mut Sink) {
    let version = b.get("version").and_then(Value::as_str).map(str::to_string);
    let kind = match rt {
        "StructureDefinition" => "profile-added",
        "ValueSet" => "valueset-added",
        "CodeSystem" => "codesystem-added",
        _ => "searchparameter-added",
    };
    sink.push(Class::Info, kind, None, None, version);
}

/// Refuse pairs that are not an upgrade of one package: another id, a version that is
/// not newer, or another FHIR release (major.minor) — all bad input for `ig diff`.
pub fn check_upgrade(old: &Package, new: &Package) -> Result<(), IgError> {
    let not = |detail: String| Err(IgError::NotAnUpgrade { detail });
    if old.id != new.id {
        return not(format!(
            "{} is package {} but {} is package {}",
            old.file_name, old.id, new.file_name, new.id
        ));
    }
    if new.version <= old.version {
        return not(format!(
            "{} has version {}, not newer than {} in {}",
            new.file_name, new.version, old.version, old.file_name
        ));
    }
    if old.fhir_releases() != new.fhir_releases() {
        return not(format!(
            "{} is for FHIR {:?} but {} is for FHIR {:?}",
            old.file_name, old.fhir_versions, new.file_name, new.fhir_versions
        ));
    }
    Ok(())
}
