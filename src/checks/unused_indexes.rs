//! `unused-indexes`: HAPI (`hfj_%`) indexes with `idx_scan = 0`. Indexes that back a primary
//! key or unique constraint are needed whatever their scans and are left out, and so is
//! everything while the statistics are younger than `min_stats_age` (default 7d): after a
//! restart or a stats reset every index looks unused.

use serde_json::json;

use super::params::pretty_bytes;
use super::{CheckCx, Report};

pub const KEYS: &[&str] = &["database", "pattern", "min_stats_age"];

pub async fn run(cx: &CheckCx<'_>) -> anyhow::Result<Report> {
    let pattern = cx.params.string("pattern", "hfj_%")?;
    let min_age = cx.params.duration("min_stats_age", "7d")?;
    let client = cx.db("fhir").await?;
    let q = |e: tokio_postgres::Error| anyhow::anyhow!("{}", crate::infra::postgres::describe(&e));
    let age: f64 = client
        .query_one(
            "SELECT extract(epoch FROM now() - coalesce((SELECT stats_reset FROM pg_stat_database WHERE datname = current_database()), pg_postmaster_start_time()))::float8",
            &[],
        )
        .await
        .map_err(q)?
        .get(0);
    let rows = client
        .query(
            "SELECT s.relname::text, s.indexrelname::text, s.idx_scan, pg_relation_size(s.indexrelid) \
             FROM pg_stat_user_indexes s \
             WHERE s.relname LIKE $1 AND s.idx_scan = 0 \
               AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = s.indexrelid AND c.contype IN ('p', 'u')) \
             ORDER BY pg_relation_size(s.indexrelid) DESC, s.indexrelname",
            &[&pattern],
        )
        .await
        .map_err(q)?;
    let unused: Vec<(String, String, u64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get::<_, i64>(3) as u64))
        .collect();
    let details: Vec<String> = unused
        .iter()
        .map(|(t, i, s)| format!("{i} on {t} ({})", pretty_bytes(*s)))
        .collect();
    let data = json!({
        "stats_age_s": age,
        "unused": unused.iter().map(|(t, i, s)| json!({"table": t, "index": i, "bytes": s})).collect::<Vec<_>>(),
    });
    let days = age / 86400.0;
    Ok(if age < min_age.as_secs_f64() {
        Report::ok(format!(
            "statistics are {days:.1} days old, younger than min_stats_age: {} {pattern} indexes not yet scanned, too early to judge",
            unused.len()
        ))
    } else if unused.is_empty() {
        Report::ok(format!("every {pattern} index was scanned in the last {days:.1} days"))
    } else {
        let names: Vec<&str> = unused.iter().take(5).map(|u| u.1.as_str()).collect();
        let more = if unused.len() > 5 { format!(" and {} more", unused.len() - 5) } else { String::new() };
        Report::alert(format!("{} {pattern} index(es) never scanned in {days:.1} days: {}{more}", unused.len(), names.join(", ")))
    }
    .details(details)
    .data(data))
}
