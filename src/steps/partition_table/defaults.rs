//! Defaults of the step's keys, their I/O-free validation, and integer keys that also accept a `"{{ var }}"` string.

use serde::Deserialize;

use crate::util::duration::Duration;

/// An integer, or a string that holds one (`"{{ interval }}"` in a playbook).
pub fn int<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum IntOrText {
        Int(i64),
        Text(String),
    }
    match IntOrText::deserialize(d)? {
        IntOrText::Int(n) => Ok(n),
        IntOrText::Text(t) => t
            .trim()
            .replace('_', "")
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("`{t}` is not an integer"))),
    }
}

pub fn fhir() -> String {
    "fhir".into()
}
pub fn public() -> String {
    "public".into()
}
pub fn hfj_resource() -> String {
    "hfj_resource".into()
}
pub fn res_id() -> String {
    "res_id".into()
}
pub fn range() -> String {
    "range".into()
}
pub fn sixteen() -> i64 {
    16
}
pub fn million() -> i64 {
    1_000_000
}
pub fn four() -> i64 {
    4
}
pub fn attach_() -> String {
    "attach".into()
}
pub fn batch() -> i64 {
    50_000
}
pub fn all() -> String {
    "all".into()
}
pub fn stop() -> String {
    "stop".into()
}
pub fn lock_timeout() -> Duration {
    Duration::new(std::time::Duration::from_secs(2), "2s")
}
pub fn five() -> u32 {
    5
}

/// The step's key checks that need no I/O.
pub fn invalid(pt: &super::PartitionTable) -> Vec<(Option<&'static str>, String)> {
    let mut v = vec![];
    if !["hash", "range"].contains(&pt.strategy.as_str()) {
        v.push((
            Some("strategy"),
            "`strategy` must be \"hash\" or \"range\"".into(),
        ));
    }
    if !["copy", "attach"].contains(&pt.existing.as_str()) {
        v.push((
            Some("existing"),
            "`existing` must be \"copy\" or \"attach\"".into(),
        ));
    }
    if pt.existing == "attach" && pt.strategy == "hash" {
        v.push((Some("existing"), "`existing = \"attach\"` needs `strategy = \"range\"`: a hash partition cannot hold every existing row; use `existing = \"copy\"`".into()));
    }
    if !["all", "prepare", "convert", "validate", "cleanup"].contains(&pt.stage.as_str()) {
        v.push((
            Some("stage"),
            "`stage` must be all, prepare, convert, validate or cleanup".into(),
        ));
    }
    if !["stop", "rollback"].contains(&pt.on_window.as_str()) {
        v.push((
            Some("on_window"),
            "`on_window` must be \"stop\" or \"rollback\"".into(),
        ));
    }
    if !(2..=1024).contains(&pt.modulus) {
        v.push((
            Some("modulus"),
            "`modulus` must be between 2 and 1024".into(),
        ));
    }
    if pt.interval < 1 || pt.batch_rows < 1 || !(0..=1000).contains(&pt.premake) {
        v.push((
            None,
            "`interval` and `batch_rows` must be ≥ 1, `premake` 0–1000".into(),
        ));
    }
    v
}
