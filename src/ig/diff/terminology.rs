//! ValueSet, CodeSystem and SearchParameter changes.
//!
//! Without a terminology server we compare what the packages state: a ValueSet's
//! explicitly listed codes (`compose.include.concept`) and a CodeSystem's concepts. A code
//! that disappears can make sent data invalid (tightening); only added codes are a
//! loosening; any other change of `compose` (filters, included value sets) is info,
//! because deciding it needs an expansion. Metadata (date, version, text) is ignored.
//! A SearchParameter whose code, type, base or expression changed is info: it changes
//! what a search means, not what data is accepted.

use std::collections::BTreeSet;

use serde_json::Value;

use super::{Class, Sink};

pub(crate) fn valueset_changed(a: &Value, b: &Value, sink: &mut Sink) {
    let (ca, cb) = (vs_codes(a), vs_codes(b));
    if ca != cb {
        // Codes of a system NEW includes whole are still in; under a filter we can't tell.
        let (whole, filtered) = (included_systems(b, false), included_systems(b, true));
        let system = |c: &String| {
            c.split_once('|')
                .map_or(String::new(), |(s, _)| s.to_string())
        };
        let unsure = ca
            .iter()
            .filter(|c| !cb.contains(*c))
            .any(|c| filtered.contains(&system(c)));
        let kept_whole: BTreeSet<String> = ca
            .iter()
            .filter(|c| whole.contains(&system(c)))
            .cloned()
            .collect();
        if cb.is_empty() && !kept_whole.is_empty() && kept_whole.len() == ca.len() {
            let before = Some(format!("{} codes", ca.len()));
            sink.push(
                Class::Loosening,
                "valueset-changed",
                None,
                before,
                Some("whole code system included".into()),
            );
        } else if unsure {
            let before = Some(format!("{} codes", ca.len()));
            sink.push(
                Class::Info,
                "valueset-changed",
                None,
                before,
                Some("codes replaced by a filter".into()),
            );
        } else {
            let effective: BTreeSet<String> = kept_whole.into_iter().chain(cb).collect();
            codes_changed("valueset-changed", &ca, &effective, sink);
        }
    } else if a.get("compose") != b.get("compose") {
        sink.push(
            Class::Info,
            "valueset-changed",
            None,
            Some("compose".into()),
            Some("compose changed (filters or includes)".into()),
        );
    }
}

pub(crate) fn codesystem_changed(a: &Value, b: &Value, sink: &mut Sink) {
    let (ca, cb) = (cs_codes(a), cs_codes(b));
    if ca != cb {
        codes_changed("codesystem-changed", &ca, &cb, sink);
    }
}

pub(crate) fn searchparameter_changed(a: &Value, b: &Value, sink: &mut Sink) {
    let summary = |v: &Value| {
        let s = |k| v.get(k).and_then(Value::as_str).unwrap_or("");
        let base: Vec<&str> = v
            .get("base")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        format!(
            "{} {} on {}: {}",
            s("code"),
            s("type"),
            base.join("|"),
            s("expression")
        )
    };
    let (x, y) = (summary(a), summary(b));
    if x != y {
        sink.push(
            Class::Info,
            "searchparameter-changed",
            None,
            Some(x),
            Some(y),
        );
    }
}

fn codes_changed(kind: &str, a: &BTreeSet<String>, b: &BTreeSet<String>, sink: &mut Sink) {
    let dropped: Vec<&str> = a.difference(b).map(String::as_str).collect();
    let gained = b.difference(a).count();
    let class = if dropped.is_empty() {
        Class::Loosening
    } else {
        Class::Tightening
    };
    let mut after = format!("{} codes (+{gained} -{})", b.len(), dropped.len());
    if !dropped.is_empty() {
        // A few names are enough to act on; the full list is in the packages.
        let shown: Vec<&str> = dropped.iter().take(5).copied().collect();
        after.push_str(&format!("; removed {}", shown.join(", ")));
        if dropped.len() > shown.len() {
            after.push_str(", …");
        }
    }
    sink.push(
        class,
        kind,
        None,
        Some(format!("{} codes", a.len())),
        Some(after),
    );
}

/// `system|code` for every explicitly listed code of the compose's includes.
fn vs_codes(vs: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let includes = vs
        .pointer("/compose/include")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for inc in includes {
        let system = inc.get("system").and_then(Value::as_str).unwrap_or("");
        for c in inc
            .get("concept")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(code) = c.get("code").and_then(Value::as_str) {
                out.insert(format!("{system}|{code}"));
            }
        }
    }
    out
}

/// Systems NEW includes without a code list: wholly (`filtered` = false) or by filter.
fn included_systems(vs: &Value, filtered: bool) -> BTreeSet<String> {
    let includes = vs
        .pointer("/compose/include")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    includes
        .iter()
        .filter(|i| {
            i.get("concept").is_none()
                && i.get("valueSet").is_none()
                && i.get("filter").is_some() == filtered
        })
        .filter_map(|i| i.get("system").and_then(Value::as_str).map(str::to_string))
        .collect()
}

/// Every concept code of a CodeSystem, nested concepts included.
fn cs_codes(cs: &Value) -> BTreeSet<String> {
    fn walk(list: Option<&Value>, out: &mut BTreeSet<String>) {
        for c in list.and_then(Value::as_array).into_iter().flatten() {
            if let Some(code) = c.get("code").and_then(Value::as_str) {
                out.insert(code.to_string());
            }
            walk(c.get("concept"), out);
        }
    }
    let mut out = BTreeSet::new();
    walk(cs.get("concept"), &mut out);
    out
}

#[cfg(test)]
mod unit {
    use super::*;
    use serde_json::json;

    #[test]
    fn dropped_codes_tighten_and_added_codes_loosen() {
        let a = json!({"compose": {"include": [{"system": "s", "concept": [{"code": "a"}, {"code": "b"}]}]}});
        let b = json!({"compose": {"include": [{"system": "s", "concept": [{"code": "a"}]}]}});
        let mut out = Vec::new();
        valueset_changed(
            &a,
            &b,
            &mut Sink {
                out: &mut out,
                profile: "vs",
            },
        );
        valueset_changed(
            &b,
            &a,
            &mut Sink {
                out: &mut out,
                profile: "vs",
            },
        );
        assert_eq!(out[0].class, Class::Tightening);
        assert_eq!(
            out[0].after.as_deref(),
            Some("1 codes (+0 -1); removed s|b")
        );
        assert_eq!(out[1].class, Class::Loosening);
    }

    #[test]
    fn nested_codesystem_concepts_count() {
        let cs = json!({"concept": [{"code": "a", "concept": [{"code": "a1"}]}]});
        assert_eq!(
            cs_codes(&cs).into_iter().collect::<Vec<_>>(),
            vec!["a", "a1"]
        );
    }
}
