//! Vendor notice records: `<vendor_notice_dir>/<id>-<version>.toml` with
//! `notified_on = YYYY-MM-DD` (a TOML date or a string), `channel` and `reference`. An
//! upgrade that tightens SHALL constraints may run once the notice is `min_days` old.
//!
//! "Today" is the UTC date: ferry has no reliable local offset in a multi-threaded
//! process, and the rule is about weeks, so a day's skew at midnight does not matter.

use std::path::{Path, PathBuf};

use time::{Date, Duration, OffsetDateTime, macros::format_description};

#[derive(Debug)]
pub enum Notice {
    Missing {
        path: PathBuf,
    },
    Invalid {
        path: PathBuf,
        why: String,
    },
    TooRecent {
        path: PathBuf,
        notified_on: Date,
    },
    Ok {
        path: PathBuf,
        notified_on: Date,
        channel: String,
        reference: String,
    },
}

pub fn today() -> Date {
    OffsetDateTime::now_utc().date()
}

pub fn fmt(d: Date) -> String {
    d.format(format_description!("[year]-[month]-[day]"))
        .unwrap_or_else(|_| d.to_string())
}

/// The first date an upgrade notified on `d` may run.
pub fn first_allowed(d: Date, min_days: u32) -> Date {
    d.saturating_add(Duration::days(i64::from(min_days)))
}

pub fn evaluate(path: &Path, today: Date, min_days: u32) -> Notice {
    let path = path.to_path_buf();
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Notice::Missing { path },
        Err(e) => {
            return Notice::Invalid {
                path,
                why: e.to_string(),
            };
        }
    };
    match parse(&text) {
        Err(why) => Notice::Invalid { path, why },
        Ok((notified_on, channel, reference)) => {
            if first_allowed(notified_on, min_days) <= today {
                Notice::Ok {
                    path,
                    notified_on,
                    channel,
                    reference,
                }
            } else {
                Notice::TooRecent { path, notified_on }
            }
        }
    }
}

fn parse(text: &str) -> Result<(Date, String, String), String> {
    let t: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| format!("not valid TOML: {}", e.message().trim()))?;
    let s = |k: &str| -> Result<String, String> {
        match t.get(k) {
            Some(toml::Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
            Some(_) => Err(format!("`{k}` must be a non-empty string")),
            None => Err(format!("`{k}` is missing")),
        }
    };
    let raw = match t.get("notified_on") {
        Some(toml::Value::Datetime(dt)) if dt.time.is_none() && dt.offset.is_none() => {
            dt.to_string()
        }
        Some(toml::Value::String(s)) => s.clone(),
        Some(_) => return Err("`notified_on` must be a date (YYYY-MM-DD)".into()),
        None => return Err("`notified_on` is missing".into()),
    };
    let date = Date::parse(raw.trim(), format_description!("[year]-[month]-[day]"))
        .map_err(|e| format!("`notified_on = {raw}` is not a date (YYYY-MM-DD): {e}"))?;
    Ok((date, s("channel")?, s("reference")?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    #[test]
    fn dates_and_fields() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("n.toml");
        let today = date!(2025 - 03 - 31);
        assert!(matches!(evaluate(&p, today, 30), Notice::Missing { .. }));
        std::fs::write(
            &p,
            "notified_on = 2025-03-01\nchannel = \"email\"\nreference = \"X-1\"\n",
        )
        .unwrap();
        assert!(matches!(evaluate(&p, today, 30), Notice::Ok { .. }));
        assert!(matches!(evaluate(&p, today, 31), Notice::TooRecent { .. }));
        std::fs::write(
            &p,
            "notified_on = \"2025-03-02\"\nchannel = \"email\"\nreference = \"X-1\"\n",
        )
        .unwrap();
        assert!(matches!(evaluate(&p, today, 30), Notice::TooRecent { .. }));
        std::fs::write(
            &p,
            "notified_on = \"2025-13-02\"\nchannel = \"e\"\nreference = \"r\"\n",
        )
        .unwrap();
        assert!(
            matches!(evaluate(&p, today, 30), Notice::Invalid { why, .. } if why.contains("not a date"))
        );
        std::fs::write(&p, "notified_on = 2025-03-01\nchannel = \"email\"\n").unwrap();
        assert!(
            matches!(evaluate(&p, today, 30), Notice::Invalid { why, .. } if why.contains("`reference` is missing"))
        );
        assert_eq!(fmt(first_allowed(date!(2025 - 03 - 02), 30)), "2025-04-01");
    }
}
