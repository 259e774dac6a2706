//! The resolved playbook: typed steps with every variable already interpolated. Nothing in
//! here refers back to TOML text; a `Playbook` is what the engine runs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::steps::StepSpec;

#[derive(Debug, Clone)]
pub struct Playbook {
    pub name: String,
    pub description: String,
    pub path: PathBuf,
    /// sha256 of the file's bytes: a resumed run refuses a changed playbook by default.
    pub hash: String,
    /// Every variable's final value (defaults overridden by `--var`).
    pub vars: BTreeMap<String, String>,
    pub steps: Vec<StepDef>,
    /// Rendered `warning: …` diagnostics (`| raw` in shell or SQL text); `validate` shows them.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct StepDef {
    pub id: String,
    pub kind: String,
    pub description: Option<String>,
    pub timeout: Option<Duration>,
    pub retries: u32,
    pub retry_delay: Duration,
    pub on_failure: OnFailure,
    pub spec: StepSpec,
    /// sha256 over kind, resolved parameters and the common settings.
    pub fingerprint: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    #[default]
    Rollback,
    Stop,
}

/// "30s", "4h", "1m30s", "250ms". A bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u64>() {
        return Ok(Duration::from_secs(n));
    }
    let mut total = Duration::ZERO;
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
        total += Duration::from_secs_f64(secs);
        rest = next;
    }
    Ok(total)
}

pub fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        m if m % 3_600_000 == 0 && m > 0 => format!("{}h", m / 3_600_000),
        m if m % 60_000 == 0 && m > 0 => format!("{}m", m / 60_000),
        m if m % 1000 == 0 => format!("{}s", m / 1000),
        m => format!("{m}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("4h").unwrap(), Duration::from_secs(4 * 3600));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3 weeks").is_err());
        assert_eq!(fmt_duration(Duration::from_secs(90)), "90s");
    }
}
