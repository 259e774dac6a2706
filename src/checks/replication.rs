//! `replication-lag` and `replication-slots`, read on the primary.
//!
//! replication-lag: every standby in pg_stat_replication is `streaming` with replay lag
//! ≤ `max_lag` (bytes behind the primary's current WAL position, default 16MB) and
//! ≤ `max_lag_seconds` (replay_lag, default 30); fewer than `min_standbys` (default 1)
//! standbys is an ALERT (the replica is gone). `standby` narrows it to one application_name.
//! replication-slots: no slot retains more than `max_retained` (default 256MB) while inactive
//! (no standby consumes it, so the primary keeps its WAL until the disk is full), and no
//! slot has lost WAL it needed (`wal_status = 'lost'`).
//! The positions need pg_read_all_stats (or a superuser): without it the columns are NULL
//! and the check is UNKNOWN, never OK.

use serde_json::json;

use super::{CheckCx, Report};

pub const LAG_KEYS: &[&str] = &[
    "database",
    "max_lag",
    "max_lag_seconds",
    "min_standbys",
    "standby",
];
pub const SLOT_KEYS: &[&str] = &["database", "max_retained"];

fn pg(e: tokio_postgres::Error) -> anyhow::Error {
    anyhow::anyhow!("{}", crate::infra::postgres::describe(&e))
}

pub async fn lag(cx: &CheckCx<'_>) -> anyhow::Result<Report> {
    let max = cx.params.bytes("max_lag", "16MB")?;
    let max_s = cx.params.f64("max_lag_seconds", 30.0)?;
    let min = cx.params.int("min_standbys", 1)?;
    let only = cx.params.string("standby", "")?;
    let client = cx.db("fhir").await?;
    let rows = client
        .query(
            "SELECT application_name, state, pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint, \
                    extract(epoch FROM replay_lag)::float8 FROM pg_stat_replication \
             WHERE $1 = '' OR application_name = $1 ORDER BY application_name",
            &[&only],
        )
        .await
        .map_err(pg)?;
    let mut bad = vec![];
    let mut details = vec![];
    let mut worst: i64 = 0;
    let mut data = vec![];
    for r in &rows {
        let (app, state, bytes, secs): (String, Option<String>, Option<i64>, Option<f64>) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let Some(bytes) = bytes else {
            anyhow::bail!(
                "pg_stat_replication shows {app} without positions: this login needs pg_read_all_stats"
            );
        };
        worst = worst.max(bytes);
        let state = state.unwrap_or_default();
        let shown = format!(
            "{app}: {state}, replay lag {} ({})",
            super::params::pretty_bytes(bytes.max(0) as u64),
            secs.map(|s| format!("{s:.1}s"))
                .unwrap_or_else(|| "idle".into())
        );
        if state != "streaming" || bytes as u64 > max || secs.is_some_and(|s| s > max_s) {
            bad.push(shown.clone());
        }
        details.push(shown);
        data.push(json!({"standby": app, "state": state, "lag_bytes": bytes, "lag_seconds": secs}));
    }
    let n = rows.len() as i64;
    let limits = format!("threshold {} / {max_s}s", super::params::pretty_bytes(max));
    let data =
        json!({"standbys": data, "max_lag": max, "max_lag_seconds": max_s, "min_standbys": min});
    let what = if only.is_empty() {
        String::new()
    } else {
        format!(" named {only}")
    };
    Ok(if n < min {
        Report::alert(format!("{n} standby(s){what} connected, {min} expected"))
    } else if !bad.is_empty() {
        Report::alert(format!(
            "{} of {n} standby(s) behind or not streaming ({limits}): {}",
            bad.len(),
            bad.join("; ")
        ))
    } else {
        Report::ok(format!(
            "{n} standby(s) streaming, worst replay lag {} ({limits})",
            super::params::pretty_bytes(worst.max(0) as u64)
        ))
    }
    .details(details)
    .data(data))
}

pub async fn slots(cx: &CheckCx<'_>) -> anyhow::Result<Report> {
    let max = cx.params.bytes("max_retained", "256MB")?;
    let client = cx.db("fhir").await?;
    let rows = client
        .query(
            "SELECT slot_name, slot_type, active, wal_status, \
                    CASE WHEN restart_lsn IS NOT NULL THEN pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint END \
             FROM pg_replication_slots ORDER BY slot_name",
            &[],
        )
        .await
        .map_err(pg)?;
    let mut bad = vec![];
    let mut details = vec![];
    let mut data = vec![];
    for r in &rows {
        let (name, kind, active, status, retained): (
            String,
            String,
            bool,
            Option<String>,
            Option<i64>,
        ) = (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        let ret = retained.unwrap_or(0).max(0) as u64;
        let shown = format!(
            "{name} ({kind}, {}): retains {}{}",
            if active { "active" } else { "inactive" },
            super::params::pretty_bytes(ret),
            status
                .as_deref()
                .map(|s| format!(", wal_status {s}"))
                .unwrap_or_default()
        );
        if status.as_deref() == Some("lost") || (!active && ret > max) {
            bad.push(shown.clone());
        }
        details.push(shown);
        data.push(json!({"slot": name, "type": kind, "active": active, "wal_status": status, "retained_bytes": retained}));
    }
    let data = json!({"slots": data, "max_retained": max});
    let limit = super::params::pretty_bytes(max);
    Ok(if !bad.is_empty() {
        Report::alert(format!(
            "{} slot(s) retaining WAL with no standby (over {limit}) or lost: {} (drop a forgotten one: SELECT pg_drop_replication_slot('NAME'))",
            bad.len(),
            bad.join("; ")
        ))
    } else {
        Report::ok(format!("{} slot(s), none inactive over {limit} of WAL", rows.len()))
    }
    .details(details)
    .data(data))
}
