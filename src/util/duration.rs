//! Durations as playbooks write them: "30s", "4h", "1m30s", "250ms"; a bare number is
//! seconds. `Duration` is a step parameter that deserializes from such a string.

use std::fmt;
use std::time;

use serde::{Deserialize, Deserializer};

/// "30s", "4h", "1m30s", "250ms". A bare number is seconds.
pub fn parse_duration(s: &str) -> Result<time::Duration, String> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u64>() {
        return Ok(time::Duration::from_secs(n));
    }
    let mut total = time::Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(digits);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a duration (try \"30s\", \"4h\")"))?;
        let secs = match unit {
            "ms" => n / 1000.0,
            "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            "d" => n * 86400.0,
            _ => return Err(format!("`{s}` is not a duration (units: ms, s, m, h, d)")),
        };
        total += time::Duration::from_secs_f64(secs);
        rest = next;
    }
    Ok(total)
}

pub fn fmt_duration(d: time::Duration) -> String {
    let ms = d.as_millis();
    match ms {
        m if m % 3_600_000 == 0 && m > 0 => format!("{}h", m / 3_600_000),
        m if m % 60_000 == 0 && m > 0 => format!("{}m", m / 60_000),
        m if m % 1000 == 0 => format!("{}s", m / 1000),
        m => format!("{m}ms"),
    }
}

/// A duration parameter: its value, and the text it was written as (what `describe` shows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duration {
    value: time::Duration,
    text: String,
}

impl Duration {
    /// A default: `value` written as `text`.
    pub fn new(value: time::Duration, text: impl Into<String>) -> Self {
        Duration {
            value,
            text: text.into(),
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(Duration::new(parse_duration(s)?, s))
    }

    pub fn get(&self) -> time::Duration {
        self.value
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Duration::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let secs = time::Duration::from_secs;
        assert_eq!(parse_duration("30s").unwrap(), secs(30));
        assert_eq!(parse_duration("1m30s").unwrap(), secs(90));
        assert_eq!(parse_duration("4h").unwrap(), secs(4 * 3600));
        assert_eq!(
            parse_duration("250ms").unwrap(),
            time::Duration::from_millis(250)
        );
        assert_eq!(parse_duration("7").unwrap(), secs(7));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3 weeks").is_err());
        assert_eq!(fmt_duration(secs(90)), "90s");
    }

    #[test]
    fn a_parameter_keeps_its_text() {
        let d = Duration::parse("1m30s").unwrap();
        assert_eq!(d.get(), time::Duration::from_secs(90));
        assert_eq!(d.to_string(), "1m30s");
    }
}
