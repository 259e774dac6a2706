//! Masks known secret values in any text before it leaves the process or reaches disk.
//!
//! Secrets are registered when they are read (target `*_env` / `*_file` keys). Every event,
//! journal record and error message passes through `redact`, so a secret that a child
//! echoes, or that an error message quotes, is shown as `***`.

use std::borrow::Cow;
use std::sync::RwLock;

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Shorter values would mask innocent text everywhere (a one-letter password would garble
/// every line), so they are refused at registration and the caller warns instead.
pub const MIN_SECRET_LEN: usize = 4;

/// Registers a secret value; returns false when it is too short to mask safely.
pub fn register(secret: &str) -> bool {
    let secret = secret.trim_end_matches(['\n', '\r']);
    if secret.len() < MIN_SECRET_LEN {
        return false;
    }
    let mut all = SECRETS.write().unwrap_or_else(|e| e.into_inner());
    if !all.iter().any(|s| s == secret) {
        all.push(secret.to_owned());
        // Longest first, so a secret that contains another is masked whole.
        all.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }
    true
}

pub fn redact(text: &str) -> Cow<'_, str> {
    let all = SECRETS.read().unwrap_or_else(|e| e.into_inner());
    if !all.iter().any(|s| text.contains(s.as_str())) {
        return Cow::Borrowed(text);
    }
    let mut out = text.to_owned();
    for s in all.iter() {
        out = out.replace(s.as_str(), "***");
    }
    Cow::Owned(out)
}

pub fn redact_in_place(text: &mut String) {
    if let Cow::Owned(o) = redact(text) {
        *text = o;
    }
}

/// Redacts every string inside a JSON value (checkpoints are step-defined JSON).
pub fn redact_json(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) => redact_in_place(s),
        serde_json::Value::Array(a) => a.iter_mut().for_each(redact_json),
        serde_json::Value::Object(o) => o.values_mut().for_each(redact_json),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_registered_values_and_refuses_short_ones() {
        assert!(register("s3cr3t-pass"));
        assert!(!register("ab"));
        assert_eq!(redact("pw=s3cr3t-pass;"), "pw=***;");
        assert_eq!(redact("ab cd"), "ab cd");
        let mut v = serde_json::json!({"a": ["x s3cr3t-pass y"]});
        redact_json(&mut v);
        assert_eq!(v["a"][0], "x *** y");
    }
}
