//! The one rule for a replica count, wherever one is written (`scale`'s and
//! `pool_capacity`'s `replicas`, `pool_capacity`'s `surge`, `ferry sandbox up --replicas`):
//! a whole number from 0 to [`MAX`], as a TOML integer or a string of ASCII digits (what a
//! `{{ var }}` renders as), nothing else: no sign, no spaces, no wrapping of big numbers.
//! A validation placeholder (`<name>`, a variable not given yet) is accepted while
//! validating and checked once it has its value.

use serde::Deserialize;

/// The most replicas a count may say: far above any HAPI deployment ferry drives (each
/// replica holds a connection pool), low enough that arithmetic on counts cannot overflow.
pub const MAX: u32 = 64;

/// A parsed `replicas` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Count {
    Fixed(u32),
    /// `"current"`: the service's running replicas (only where a key allows it).
    Current,
    /// A variable not given yet while validating (`<name>`).
    Later(String),
    /// Not a count: the message, reported by `validate` at the key.
    Invalid(String),
}

/// Parses `v` for `key`; `current` says whether `"current"` is allowed there.
pub fn parse(key: &str, v: &toml::Value, current: bool) -> Count {
    let what = if current {
        format!("`{key}` must be a whole number from 0 to {MAX} or \"current\"")
    } else {
        format!("`{key}` must be a whole number from 0 to {MAX}")
    };
    let n: Option<i128> = match v {
        toml::Value::Integer(n) => Some(i128::from(*n)),
        toml::Value::String(s) if current && s == "current" => return Count::Current,
        toml::Value::String(s) if crate::util::is_placeholder(s) => return Count::Later(s.clone()),
        toml::Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            // Digits only; a number too long even for i128 is simply out of range.
            Some(s.parse::<i128>().unwrap_or(i128::MAX))
        }
        _ => None,
    };
    match n {
        Some(n) if (0..=i128::from(MAX)).contains(&n) => Count::Fixed(n as u32),
        Some(n) => Count::Invalid(format!("{what}, not {n}")),
        None => Count::Invalid(format!("{what}, not {}", shown(v))),
    }
}

/// The count for `ferry sandbox up --replicas` (clap's value parser): 1 to [`MAX`].
pub fn parse_cli(s: &str) -> Result<u32, String> {
    match parse("--replicas", &toml::Value::String(s.to_owned()), false) {
        Count::Fixed(0) => Err("at least 1 replica".into()),
        Count::Fixed(n) => Ok(n),
        Count::Invalid(m) => Err(m),
        _ => Err(format!("`{s}` is not a number")),
    }
}

fn shown(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => format!("`{s}`"),
        other => format!("{} `{other}`", other.type_str()),
    }
}

/// `deserialize_with` for a `replicas` key that allows "current".
pub fn replicas_or_current<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Count, D::Error> {
    Ok(parse("replicas", &toml::Value::deserialize(d)?, true))
}

/// `deserialize_with` for a `replicas` key that does not allow "current".
pub fn replicas<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Count, D::Error> {
    Ok(parse("replicas", &toml::Value::deserialize(d)?, false))
}

/// `deserialize_with` for `surge`.
pub fn surge<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Count, D::Error> {
    Ok(parse("surge", &toml::Value::deserialize(d)?, false))
}

impl Count {
    /// The number, at run time (validation refused `Invalid`; `Later` has its value by now).
    pub fn fixed(&self) -> anyhow::Result<Option<u32>> {
        match self {
            Count::Fixed(n) => Ok(Some(*n)),
            Count::Current => Ok(None),
            Count::Later(s) | Count::Invalid(s) => anyhow::bail!("not a replica count: {s}"),
        }
    }

    /// The validation error, if any.
    pub fn error(&self) -> Option<String> {
        match self {
            Count::Invalid(m) => Some(m.clone()),
            _ => None,
        }
    }
}

impl std::fmt::Display for Count {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Count::Fixed(n) => write!(f, "{n}"),
            Count::Current => f.write_str("current"),
            Count::Later(s) => f.write_str(s),
            Count::Invalid(_) => f.write_str("?"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(n: i64) -> toml::Value {
        toml::Value::Integer(n)
    }
    fn s(x: &str) -> toml::Value {
        toml::Value::String(x.into())
    }

    #[test]
    fn counts_parse_once_by_one_rule() {
        assert_eq!(parse("replicas", &int(3), false), Count::Fixed(3));
        assert_eq!(parse("replicas", &s("3"), false), Count::Fixed(3));
        assert_eq!(parse("replicas", &int(0), false), Count::Fixed(0));
        assert_eq!(parse("replicas", &int(64), false), Count::Fixed(64));
        assert_eq!(parse("replicas", &s("current"), true), Count::Current);
        assert_eq!(
            parse("replicas", &s("<replicas>"), false),
            Count::Later("<replicas>".into())
        );
    }

    #[test]
    fn big_numbers_do_not_wrap_and_spaces_are_refused_everywhere() {
        let e = |v: toml::Value, current: bool| parse("replicas", &v, current).error();
        assert_eq!(
            e(int(4294967298), false).unwrap(),
            "`replicas` must be a whole number from 0 to 64, not 4294967298"
        );
        assert_eq!(
            e(s("4294967298"), true).unwrap(),
            "`replicas` must be a whole number from 0 to 64 or \"current\", not 4294967298"
        );
        assert!(e(s("99999999999999999999999999999999999999999"), false).is_some());
        assert!(e(int(65), false).is_some());
        assert!(e(int(-1), false).is_some());
        for bad in [" 4", "4 ", "+4", "-4", "4.0", "", "four", "0x4"] {
            assert!(e(s(bad), false).is_some(), "{bad:?}");
            assert!(e(s(bad), true).is_some(), "{bad:?}");
        }
        assert_eq!(
            e(s(" 4"), false).unwrap(),
            "`replicas` must be a whole number from 0 to 64, not ` 4`"
        );
        assert!(e(s("current"), false).is_some(), "only where allowed");
        assert!(e(toml::Value::Float(2.0), false).is_some());
    }

    #[test]
    fn the_sandbox_flag_uses_the_same_rule() {
        assert_eq!(parse_cli("3"), Ok(3));
        assert!(parse_cli("0").is_err());
        assert!(parse_cli("4294967298").is_err());
        assert!(parse_cli(" 4").is_err());
    }
}
