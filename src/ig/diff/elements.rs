//! Element-by-element comparison of two versions of one StructureDefinition.
//!
//! Elements are matched by id after normalising choice types: the renamed form
//! `Observation.valueQuantity` becomes `Observation.value[x]:valueQuantity`, the form R4
//! snapshots use, so both spellings meet. Slices match by their `:sliceName` ids.
//!
//! Rules (old → new on the same element): min up, max down, mustSupport gained, binding
//! strength up (example < preferred < extensible < required), another value set under a
//! `required` binding (we cannot expand value sets offline, so we flag it rather than
//! miss codes that dropped out), a new error constraint or warning → error, fixed/pattern
//! added or changed, a type code or a target/profile dropped, slicing rules open →
//! openAtEnd → closed are tightenings; their reverses are loosenings. A changed
//! constraint expression, another value set under weaker bindings (or only its version
//! pin changed) and a changed baseDefinition are info. Elements new in NEW are reported
//! only when their parent existed in OLD (children of a new slice add nothing the slice
//! itself doesn't say): a new slice with min ≥ 1 is a tightening (`slicing`), a new
//! must-support slice or element is a tightening (`mustSupport`), other new slices info.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::ids::{
    choice_value, elements, is_slice, max_value, parent, slice_summary, str_at, unversioned,
};
use super::{Class, Sink};

pub(crate) fn compare_profiles(a: &Value, b: &Value, sink: &mut Sink) {
    let (base_a, base_b) = (str_at(a, "baseDefinition"), str_at(b, "baseDefinition"));
    if base_a.map(unversioned) != base_b.map(unversioned) {
        sink.push(
            Class::Info,
            "base",
            None,
            base_a.map(str::to_string),
            base_b.map(str::to_string),
        );
    }
    let (ea, eb) = (elements(a), elements(b));
    for (id, va) in &ea {
        if let Some(vb) = eb.get(id) {
            compare_element(id, va, vb, sink);
        } else if parent(id).is_some_and(|p| eb.contains_key(p)) && is_slice(id) {
            let was_required = va.get("min").and_then(Value::as_u64).unwrap_or(0) >= 1;
            let class = if was_required {
                Class::Loosening
            } else {
                Class::Info
            };
            sink.push(
                class,
                "slicing",
                Some(id),
                Some(slice_summary(va)),
                Some("removed".into()),
            );
        }
    }
    for (id, vb) in eb.iter().filter(|(id, _)| !ea.contains_key(*id)) {
        if !parent(id).is_some_and(|p| ea.contains_key(p)) {
            continue;
        }
        let min = vb.get("min").and_then(Value::as_u64).unwrap_or(0);
        let ms = vb
            .get("mustSupport")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if is_slice(id) && min >= 1 {
            sink.push(
                Class::Tightening,
                "slicing",
                Some(id),
                None,
                Some(slice_summary(vb)),
            );
        } else if ms {
            sink.push(
                Class::Tightening,
                "mustSupport",
                Some(id),
                Some("absent".into()),
                Some("true".into()),
            );
        } else if min >= 1 {
            sink.push(
                Class::Tightening,
                "min",
                Some(id),
                Some("absent".into()),
                Some(min.to_string()),
            );
        } else if is_slice(id) {
            sink.push(
                Class::Info,
                "slicing",
                Some(id),
                None,
                Some(slice_summary(vb)),
            );
        }
    }
}

fn compare_element(id: &str, a: &Value, b: &Value, sink: &mut Sink) {
    let e = Some(id);
    let num = |v: &Value, k| v.get(k).and_then(Value::as_u64);
    let tighter = |t: bool| {
        if t {
            Class::Tightening
        } else {
            Class::Loosening
        }
    };
    if let (Some(x), Some(y)) = (num(a, "min"), num(b, "min"))
        && x != y
    {
        sink.push(
            tighter(y > x),
            "min",
            e,
            Some(x.to_string()),
            Some(y.to_string()),
        );
    }
    if let (Some(x), Some(y)) = (str_at(a, "max"), str_at(b, "max"))
        && let (Some(nx), Some(ny)) = (max_value(x), max_value(y))
        && nx != ny
    {
        sink.push(tighter(ny < nx), "max", e, Some(x.into()), Some(y.into()));
    }
    let ms = |v: &Value| {
        v.get("mustSupport")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    };
    if ms(a) != ms(b) {
        let class = if ms(b) {
            Class::Tightening
        } else {
            Class::Loosening
        };
        sink.push(
            class,
            "mustSupport",
            e,
            Some(ms(a).to_string()),
            Some(ms(b).to_string()),
        );
    }
    binding(id, a.get("binding"), b.get("binding"), sink);
    constraints(id, a, b, sink);
    for prefix in ["fixed", "pattern"] {
        let (x, y) = (choice_value(a, prefix), choice_value(b, prefix));
        if x != y {
            let class = if y.is_some() {
                Class::Tightening
            } else {
                Class::Loosening
            };
            sink.push(class, prefix, e, x, y);
        }
    }
    types(id, a, b, sink);
    let rules = |v: &Value| {
        v.pointer("/slicing/rules")
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let rank = |r: &str| match r {
        "open" => 0,
        "openAtEnd" => 1,
        _ => 2, // closed
    };
    match (rules(a), rules(b)) {
        (Some(x), Some(y)) if rank(&x) != rank(&y) => {
            let class = if rank(&y) > rank(&x) {
                Class::Tightening
            } else {
                Class::Loosening
            };
            sink.push(class, "slicing", e, Some(x), Some(y));
        }
        (None, Some(y)) if rank(&y) > 0 => {
            sink.push(Class::Tightening, "slicing", e, None, Some(y))
        }
        _ => {}
    }
}

fn binding(id: &str, a: Option<&Value>, b: Option<&Value>, sink: &mut Sink) {
    fn strength(v: Option<&Value>) -> &str {
        v.and_then(|v| str_at(v, "strength")).unwrap_or("none")
    }
    let rank = |s: &str| {
        ["none", "example", "preferred", "extensible", "required"]
            .iter()
            .position(|x| *x == s)
            .unwrap_or(0)
    };
    let (sa, sb) = (strength(a), strength(b));
    let e = Some(id);
    if rank(sa) != rank(sb) {
        let class = if rank(sb) > rank(sa) {
            Class::Tightening
        } else {
            Class::Loosening
        };
        sink.push(class, "binding", e, Some(sa.into()), Some(sb.into()));
        return;
    }
    let vs = |v: Option<&Value>| v.and_then(|v| str_at(v, "valueSet")).map(str::to_string);
    let (va, vb) = (vs(a), vs(b));
    if va == vb || va.is_none() || vb.is_none() {
        return;
    }
    let moved = va.as_deref().map(unversioned) != vb.as_deref().map(unversioned);
    let class = if moved && sb == "required" {
        Class::Tightening
    } else {
        Class::Info
    };
    let show = |s: &str, v: Option<String>| Some(format!("{s} {}", v.unwrap_or_default()));
    sink.push(class, "binding", e, show(sa, va), show(sb, vb));
}

fn constraints(id: &str, a: &Value, b: &Value, sink: &mut Sink) {
    let map = |v: &Value| -> BTreeMap<String, (String, String)> {
        let list = v
            .get("constraint")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        list.iter()
            .filter_map(|c| {
                let key = str_at(c, "key")?.to_string();
                let sev = str_at(c, "severity").unwrap_or("error").to_string();
                let expr = str_at(c, "expression")
                    .or_else(|| str_at(c, "xpath"))
                    .unwrap_or("")
                    .to_string();
                Some((key, (sev, expr)))
            })
            .collect()
    };
    let (ca, cb) = (map(a), map(b));
    let e = Some(id);
    let show = |k: &str, (sev, expr): &(String, String)| Some(format!("{k} ({sev}): {expr}"));
    for (k, x) in &ca {
        match cb.get(k) {
            None => {
                let class = if x.0 == "error" {
                    Class::Loosening
                } else {
                    Class::Info
                };
                sink.push(class, "constraint", e, show(k, x), None);
            }
            Some(y) if x.0 != y.0 => {
                let class = if y.0 == "error" {
                    Class::Tightening
                } else {
                    Class::Loosening
                };
                sink.push(class, "constraint", e, show(k, x), show(k, y));
            }
            Some(y) if x.1 != y.1 => {
                sink.push(Class::Info, "constraint", e, show(k, x), show(k, y))
            }
            Some(_) => {}
        }
    }
    for (k, y) in cb.iter().filter(|(k, _)| !ca.contains_key(*k)) {
        let class = if y.0 == "error" {
            Class::Tightening
        } else {
            Class::Info
        };
        sink.push(class, "constraint", e, None, show(k, y));
    }
}

/// Type codes with their (unversioned) profiles and targetProfiles.
type Types = BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)>;

fn types(id: &str, a: &Value, b: &Value, sink: &mut Sink) {
    let collect = |v: &Value| -> Types {
        let list = v
            .get("type")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let set = |t: &Value, k| -> BTreeSet<String> {
            let l = t
                .get(k)
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
            l.iter()
                .filter_map(Value::as_str)
                .map(|s| unversioned(s).to_string())
                .collect()
        };
        list.iter()
            .filter_map(|t| {
                Some((
                    str_at(t, "code")?.to_string(),
                    (set(t, "profile"), set(t, "targetProfile")),
                ))
            })
            .collect()
    };
    let (ta, tb) = (collect(a), collect(b));
    if ta.is_empty() || tb.is_empty() {
        return; // root elements and content references carry no type
    }
    let codes = |t: &Types| t.keys().cloned().collect::<Vec<_>>().join("|");
    if ta.keys().ne(tb.keys()) {
        let dropped = ta.keys().any(|k| !tb.contains_key(k));
        let class = if dropped {
            Class::Tightening
        } else {
            Class::Loosening
        };
        sink.push(class, "type", Some(id), Some(codes(&ta)), Some(codes(&tb)));
    }
    for (code, (pa, ra)) in &ta {
        let Some((pb, rb)) = tb.get(code) else {
            continue;
        };
        for (what, x, y) in [("profile", pa, pb), ("targetProfile", ra, rb)] {
            if x == y {
                continue;
            }
            // An empty list allows anything; otherwise dropping an entry narrows.
            let narrowed = (x.is_empty() && !y.is_empty())
                || (!y.is_empty() && x.iter().any(|p| !y.contains(p)));
            let class = if narrowed {
                Class::Tightening
            } else {
                Class::Loosening
            };
            let show = |s: &BTreeSet<String>| {
                Some(format!(
                    "{code} {what}({})",
                    s.iter().cloned().collect::<Vec<_>>().join("|")
                ))
            };
            sink.push(class, "type", Some(id), show(x), show(y));
        }
    }
}
