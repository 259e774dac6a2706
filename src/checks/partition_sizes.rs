//! `audit-partition-sizes`: no partition of `audit.audit_events` is larger than `max_size`
//! (the seed: plan the next archive when one passes 10 GB).

use serde_json::json;

use super::params::pretty_bytes;
use super::{CheckCx, Report};

pub const KEYS: &[&str] = &["database", "schema", "table", "max_size"];

pub async fn run(cx: &CheckCx<'_>) -> anyhow::Result<Report> {
    let schema = cx.params.string("schema", "audit")?;
    let table = cx.params.string("table", "audit_events")?;
    let max = cx.params.bytes("max_size", "10GB")?;
    let client = cx.db("audit").await?;
    let rows = client
        .query(
            "SELECT c.relname::text, pg_relation_size(c.oid) \
             FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             JOIN pg_class t ON t.oid = i.inhparent JOIN pg_namespace n ON n.oid = t.relnamespace \
             WHERE n.nspname = $1 AND t.relname = $2 ORDER BY c.relname DESC",
            &[&schema, &table],
        )
        .await
        .map_err(|e| anyhow::anyhow!("{}", crate::infra::postgres::describe(&e)))?;
    anyhow::ensure!(
        !rows.is_empty(),
        "{schema}.{table} has no partitions (or does not exist)"
    );
    let sizes: Vec<(String, u64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
        .collect();
    let over: Vec<String> = sizes
        .iter()
        .filter(|(_, s)| *s > max)
        .map(|(n, s)| format!("{n} ({})", pretty_bytes(*s)))
        .collect();
    let (largest, lsize) = sizes
        .iter()
        .max_by_key(|(_, s)| *s)
        .cloned()
        .unwrap_or_default();
    let details = sizes
        .iter()
        .take(3)
        .map(|(n, s)| format!("{n}: {}", pretty_bytes(*s)))
        .collect();
    let data = json!({"partitions": sizes.iter().map(|(n, s)| json!({"partition": n, "bytes": s})).collect::<Vec<_>>(), "max_bytes": max});
    Ok(if over.is_empty() {
        Report::ok(format!(
            "{} partitions, largest {largest} ({}) ≤ {}",
            sizes.len(),
            pretty_bytes(lsize),
            pretty_bytes(max)
        ))
    } else {
        Report::alert(format!(
            "audit partition(s) above {}: {} (plan the next archive)",
            pretty_bytes(max),
            over.join(", ")
        ))
    }
    .details(details)
    .data(data))
}
