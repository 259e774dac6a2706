//! What the server says of one setting: its pg_settings row joined with the last
//! postgresql.auto.conf line for it (pg_file_settings), and whether a value fits its type and
//! range. `pg_setting` (setting.rs) decides "in effect" from this alone ([`Info::is`]), never
//! by comparing value spellings ("1GB" vs "131072").

use anyhow::anyhow;

use crate::infra::postgres;

/// pg_settings' row, and the last postgresql.auto.conf line for it.
#[derive(Debug, Clone)]
pub struct Info {
    pub setting: String,
    pub unit: Option<String>,
    pub vartype: String,
    pub context: String,
    pub source: String,
    pub min_val: Option<String>,
    pub max_val: Option<String>,
    pub enumvals: Option<Vec<String>>,
    pub pending_restart: bool,
    pub auto: Option<String>,
    /// pg_settings' source line is that auto.conf line.
    pub from_auto: bool,
    /// pg_settings' value comes from postgresql.auto.conf (any line of it).
    pub in_auto: bool,
}

impl Info {
    pub fn shown(&self) -> String {
        match &self.unit {
            Some(u) if !u.is_empty() => format!("{} ({u})", self.setting),
            _ => self.setting.clone(),
        }
    }
    /// In effect with auto.conf holding `want` (None: no auto.conf line), nothing pending.
    pub fn is(&self, want: Option<&str>) -> bool {
        !self.pending_restart
            && self.auto.as_deref() == want
            && match want {
                Some(_) => self.from_auto,
                None => !self.in_auto,
            }
    }
}

const INFO: &str = "SELECT s.setting, s.unit, s.vartype, s.context, s.source, s.min_val, s.max_val, \
    s.enumvals, s.pending_restart, f.setting, \
    (f.seqno IS NOT NULL AND s.sourcefile = f.sourcefile AND s.sourceline = f.sourceline), \
    coalesce(s.sourcefile LIKE '%/postgresql.auto.conf', false) \
    FROM pg_settings s LEFT JOIN LATERAL (SELECT * FROM pg_file_settings f \
      WHERE f.name = s.name AND f.sourcefile LIKE '%/postgresql.auto.conf' ORDER BY f.seqno DESC LIMIT 1) f ON true \
    WHERE s.name = $1";

pub async fn info(c: &tokio_postgres::Client, name: &str) -> anyhow::Result<Option<Info>> {
    let row = c
        .query_opt(INFO, &[&name])
        .await
        .map_err(|e| anyhow!("reading pg_settings: {}", postgres::describe(&e)))?;
    Ok(row.map(|r| Info {
        setting: r.get(0),
        unit: r.get(1),
        vartype: r.get(2),
        context: r.get(3),
        source: r.get(4),
        min_val: r.get(5),
        max_val: r.get(6),
        enumvals: r.get(7),
        pending_restart: r.get(8),
        auto: r.get(9),
        from_auto: r.get::<_, Option<bool>>(10).unwrap_or(false),
        in_auto: r.get(11),
    }))
}

/// Why `value` cannot be `name`'s, from what pg_settings says of it (None: it can).
pub fn bad_value(name: &str, i: &Info, value: &str) -> Option<String> {
    let range = || {
        format!(
            "{} … {}",
            i.min_val.as_deref().unwrap_or("?"),
            i.max_val.as_deref().unwrap_or("?")
        )
    };
    let num = |v: &str| v.trim().parse::<f64>().ok();
    match i.vartype.as_str() {
        "integer" | "real" => {
            // A number with a unit ("256MB") is the server's to convert and check.
            let t = value.trim();
            let digits = t
                .trim_end_matches(|c: char| c.is_ascii_alphabetic())
                .trim_end();
            if digits.len() < t.len() && num(digits).is_some() {
                return None;
            }
            let Some(v) = num(value) else {
                return Some(format!(
                    "`{value}` is not a number ({name} is {})",
                    i.vartype
                ));
            };
            if i.vartype == "integer" && v.fract() != 0.0 {
                return Some(format!("{name} takes a whole number, not `{value}`"));
            }
            let (lo, hi) = (
                i.min_val.as_deref().and_then(num),
                i.max_val.as_deref().and_then(num),
            );
            if lo.is_some_and(|lo| v < lo) || hi.is_some_and(|hi| v > hi) {
                return Some(format!("{value} is out of range for {name} ({})", range()));
            }
            None
        }
        "bool" => {
            let ok = ["on", "off", "true", "false", "yes", "no", "1", "0"];
            (!ok.contains(&value.trim().to_ascii_lowercase().as_str()))
                .then(|| format!("{name} is on or off, not `{value}`"))
        }
        "enum" => {
            let vals = i.enumvals.clone().unwrap_or_default();
            (!vals.iter().any(|e| e.eq_ignore_ascii_case(value.trim()))).then(|| {
                format!(
                    "`{value}` is not one of {name}'s values: {}",
                    vals.join(", ")
                )
            })
        }
        _ => None,
    }
}

/// When this session last read the configuration files (as text: compared exactly).
pub async fn conf_load_time(c: &tokio_postgres::Client) -> anyhow::Result<String> {
    Ok(c.query_one("SELECT pg_conf_load_time()::text", &[])
        .await
        .map_err(|e| anyhow!("pg_conf_load_time(): {}", postgres::describe(&e)))?
        .get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(min: &str, max: &str) -> Info {
        Info {
            setting: "30".into(),
            unit: None,
            vartype: "integer".into(),
            context: "postmaster".into(),
            source: "configuration file".into(),
            min_val: Some(min.into()),
            max_val: Some(max.into()),
            enumvals: None,
            pending_restart: false,
            auto: None,
            from_auto: false,
            in_auto: false,
        }
    }

    #[test]
    fn values_are_judged_by_pg_settings_type_and_range() {
        let i = int("1", "262143");
        assert_eq!(bad_value("max_connections", &i, "40"), None);
        assert_eq!(
            bad_value("max_connections", &i, "0").as_deref(),
            Some("0 is out of range for max_connections (1 … 262143)")
        );
        assert!(bad_value("max_connections", &i, "4.5").is_some());
        assert!(bad_value("max_connections", &i, "many").is_some());
        assert_eq!(bad_value("shared_buffers", &i, "256MB"), None);
        let e = Info {
            vartype: "enum".into(),
            enumvals: Some(vec!["off".into(), "on".into()]),
            ..int("", "")
        };
        assert!(bad_value("x", &e, "ON").is_none());
        assert!(bad_value("x", &e, "maybe").unwrap().contains("off, on"));
    }

    #[test]
    fn in_effect_means_from_auto_conf_with_nothing_pending() {
        let i = Info {
            auto: Some("40".into()),
            from_auto: true,
            in_auto: true,
            ..int("1", "9")
        };
        assert!(i.is(Some("40")));
        assert!(
            !Info {
                pending_restart: true,
                ..i.clone()
            }
            .is(Some("40"))
        );
        assert!(!i.is(None));
        assert!(int("1", "9").is(None));
        // RESET written but not yet read: the value still comes from auto.conf.
        let unread = Info {
            in_auto: true,
            ..int("1", "9")
        };
        assert!(!unread.is(None));
    }
}
