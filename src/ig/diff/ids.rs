//! Element ids and small accessors shared by the StructureDefinition comparison.
//!
//! Invariant: two spellings of one element get one key. Slices keep their `:sliceName`
//! ids; renamed choice types (`Observation.valueQuantity`) become the slice form R4
//! snapshots use (`Observation.value[x]:valueQuantity`) when `value[x]` exists beside them.

use std::collections::{BTreeMap, HashSet};

use serde_json::Value;

/// Snapshot (else differential) elements keyed by normalised id.
pub(crate) fn elements(sd: &Value) -> BTreeMap<String, &Value> {
    let list = ["/snapshot/element", "/differential/element"]
        .iter()
        .find_map(|p| sd.pointer(p).and_then(Value::as_array))
        .map(Vec::as_slice)
        .unwrap_or_default();
    let raw: HashSet<&str> = list.iter().filter_map(|e| str_at(e, "id")).collect();
    let mut out = BTreeMap::new();
    for e in list {
        if let Some(id) = str_at(e, "id") {
            out.entry(normalise(id, &raw)).or_insert(e);
        }
    }
    out
}

/// Rewrite renamed choice segments (`valueQuantity`) to the slice form
/// (`value[x]:valueQuantity`) when the profile also has `value[x]` at that level.
pub(crate) fn normalise(id: &str, raw: &HashSet<&str>) -> String {
    let (mut raw_prefix, mut out) = (String::new(), String::new());
    for (i, seg) in id.split('.').enumerate() {
        let sep = if i == 0 { "" } else { "." };
        let mut rewritten = None;
        if i > 0 && !seg.contains('[') && !seg.contains(':') {
            for (at, c) in seg.char_indices().skip(1) {
                if c.is_ascii_uppercase()
                    && raw.contains(format!("{raw_prefix}.{}[x]", &seg[..at]).as_str())
                {
                    rewritten = Some(format!("{}[x]:{seg}", &seg[..at]));
                    break;
                }
            }
        }
        out.push_str(sep);
        out.push_str(rewritten.as_deref().unwrap_or(seg));
        raw_prefix.push_str(sep);
        raw_prefix.push_str(seg);
    }
    out
}

pub(crate) fn choice_value(v: &Value, prefix: &str) -> Option<String> {
    let obj = v.as_object()?;
    obj.iter()
        .find(|(k, _)| k.starts_with(prefix) && k.len() > prefix.len())
        .map(|(k, x)| format!("{k}: {x}"))
}

pub(crate) fn slice_summary(v: &Value) -> String {
    let min = v.get("min").and_then(Value::as_u64).unwrap_or(0);
    let max = str_at(v, "max").unwrap_or("*");
    format!("slice {min}..{max}")
}

pub(crate) fn is_slice(id: &str) -> bool {
    id.rsplit('.').next().is_some_and(|last| last.contains(':'))
}

/// The element that contains `id`: the sliced element for a slice, else the path parent.
pub(crate) fn parent(id: &str) -> Option<&str> {
    let last = id.rsplit('.').next()?;
    match last.rfind(':') {
        Some(at) => Some(&id[..id.len() - last.len() + at]),
        None => id.rfind('.').map(|at| &id[..at]),
    }
}

pub(crate) fn max_value(s: &str) -> Option<u64> {
    if s == "*" {
        Some(u64::MAX)
    } else {
        s.parse().ok()
    }
}

pub(crate) fn unversioned(url: &str) -> &str {
    url.split('|').next().unwrap_or(url)
}

pub(crate) fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn normalises_renamed_choice_types() {
        let raw: HashSet<&str> = [
            "Observation",
            "Observation.value[x]",
            "Observation.valueQuantity",
        ]
        .into();
        assert_eq!(
            normalise("Observation.valueQuantity", &raw),
            "Observation.value[x]:valueQuantity"
        );
        assert_eq!(
            normalise("Observation.value[x]", &raw),
            "Observation.value[x]"
        );
        assert_eq!(
            normalise("Observation.valueQuantity.unit", &raw),
            "Observation.value[x]:valueQuantity.unit"
        );
    }

    #[test]
    fn parents_of_slices_and_children() {
        assert_eq!(
            parent("Observation.category:us-core"),
            Some("Observation.category")
        );
        assert_eq!(
            parent("Observation.category:us-core.coding"),
            Some("Observation.category:us-core")
        );
        assert_eq!(parent("Observation"), None);
        assert!(is_slice("Patient.extension:race") && !is_slice("Patient.extension:race.url"));
    }
}
