//! Check thresholds: defaults in code, then the target's `[checks.NAME]`, then the caller's
//! overrides. Typed getters name the key and the check in their errors.

use std::time::Duration;

use anyhow::{anyhow, bail};

use crate::util::duration::parse_duration;

#[derive(Debug, Clone, Default)]
pub struct Params {
    pub check: String,
    pub values: toml::Table,
}

impl Params {
    /// Target settings first, then overrides; unknown keys are an error naming the allowed.
    pub fn merge(check: &str, allowed: &[&str], layers: &[&toml::Table]) -> anyhow::Result<Params> {
        let mut values = toml::Table::new();
        for layer in layers {
            for (k, v) in layer.iter() {
                if !allowed.contains(&k.as_str()) {
                    let help = crate::util::suggest::did_you_mean(k, allowed.iter().copied())
                        .map(|h| format!(" ({h})"))
                        .unwrap_or_default();
                    bail!(
                        "check `{check}` has no setting `{k}`{help}; it takes: {}",
                        allowed.join(", ")
                    );
                }
                values.insert(k.clone(), v.clone());
            }
        }
        Ok(Params {
            check: check.into(),
            values,
        })
    }

    fn bad(&self, key: &str, want: &str) -> anyhow::Error {
        anyhow!("check `{}`: `{key}` must be {want}", self.check)
    }

    pub fn string(&self, key: &str, default: &str) -> anyhow::Result<String> {
        match self.values.get(key) {
            None => Ok(default.into()),
            Some(toml::Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(self.bad(key, "a string")),
        }
    }

    pub fn f64(&self, key: &str, default: f64) -> anyhow::Result<f64> {
        match self.values.get(key) {
            None => Ok(default),
            Some(toml::Value::Integer(i)) => Ok(*i as f64),
            Some(toml::Value::Float(f)) => Ok(*f),
            Some(toml::Value::String(s)) => s.parse().map_err(|_| self.bad(key, "a number")),
            Some(_) => Err(self.bad(key, "a number")),
        }
    }

    pub fn int(&self, key: &str, default: i64) -> anyhow::Result<i64> {
        match self.values.get(key) {
            None => Ok(default),
            Some(toml::Value::Integer(i)) => Ok(*i),
            Some(toml::Value::String(s)) => s.parse().map_err(|_| self.bad(key, "an integer")),
            Some(_) => Err(self.bad(key, "an integer")),
        }
    }

    pub fn duration(&self, key: &str, default: &str) -> anyhow::Result<Duration> {
        let s = self.string(key, default)?;
        parse_duration(&s).map_err(|e| anyhow!("check `{}`: `{key}`: {e}", self.check))
    }

    pub fn list(&self, key: &str, default: &[&str]) -> anyhow::Result<Vec<String>> {
        match self.values.get(key) {
            None => Ok(default.iter().map(|s| s.to_string()).collect()),
            Some(toml::Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| self.bad(key, "a list of strings"))
                })
                .collect(),
            Some(toml::Value::String(s)) => Ok(s
                .split(',')
                .map(|p| p.trim().to_owned())
                .filter(|p| !p.is_empty())
                .collect()),
            Some(_) => Err(self.bad(key, "a list of strings")),
        }
    }

    /// "10GB", "512MB", "8kB", or a plain number of bytes (powers of 1024, as pg_size_pretty).
    pub fn bytes(&self, key: &str, default: &str) -> anyhow::Result<u64> {
        let s = match self.values.get(key) {
            Some(toml::Value::Integer(i)) if *i >= 0 => return Ok(*i as u64),
            _ => self.string(key, default)?,
        };
        parse_bytes(&s).ok_or_else(|| self.bad(key, "a size such as \"10GB\""))
    }
}

pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" | "bytes" => 1,
        "kb" | "k" | "kib" => 1 << 10,
        "mb" | "m" | "mib" => 1 << 20,
        "gb" | "g" | "gib" => 1 << 30,
        "tb" | "t" | "tib" => 1 << 40,
        _ => return None,
    };
    Some((n * mult as f64) as u64)
}

pub fn pretty_bytes(n: u64) -> String {
    let units = ["bytes", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < units.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} bytes")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_merging() {
        assert_eq!(parse_bytes("10GB"), Some(10 << 30));
        assert_eq!(parse_bytes("8kB"), Some(8192));
        assert_eq!(parse_bytes("12"), Some(12));
        assert_eq!(parse_bytes("ten"), None);
        let target: toml::Table = toml::from_str("max_pct = 70").unwrap();
        let cli: toml::Table = toml::from_str("max_pct = 50").unwrap();
        let p = Params::merge("connections", &["max_pct", "database"], &[&target, &cli]).unwrap();
        assert_eq!(p.f64("max_pct", 80.0).unwrap(), 50.0);
        let bad: toml::Table = toml::from_str("max_pc = 50").unwrap();
        let e = Params::merge("connections", &["max_pct"], &[&bad])
            .unwrap_err()
            .to_string();
        assert!(e.contains("did you mean `max_pct`"), "{e}");
    }
}
