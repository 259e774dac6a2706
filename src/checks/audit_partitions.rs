//! `audit-partitions`: the partitions of `audit.audit_events` for this month and the next
//! `months_ahead` months exist (by the range they cover, whatever their names), their bounds
//! are contiguous, and a default partition, if someone added one, holds no rows. A missing
//! partition makes every audit INSERT of that month fail.

use serde_json::json;

use super::{CheckCx, Report};
use crate::infra::postgres::quote_ident;

pub const KEYS: &[&str] = &["database", "schema", "table", "months_ahead"];

pub struct Part {
    pub name: String,
    /// Range in epoch seconds; None for MINVALUE/MAXVALUE or the default partition.
    pub lo: Option<i64>,
    pub hi: Option<i64>,
    pub default: bool,
}

/// The partitions of `schema.table` with their bounds, in range order.
pub async fn partitions(
    client: &tokio_postgres::Client,
    schema: &str,
    table: &str,
) -> anyhow::Result<Vec<Part>> {
    let rows = client
        .query(
            "WITH p AS ( \
               SELECT c.relname::text AS name, pg_get_expr(c.relpartbound, c.oid) AS bound \
               FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
               JOIN pg_class t ON t.oid = i.inhparent JOIN pg_namespace n ON n.oid = t.relnamespace \
               WHERE n.nspname = $1 AND t.relname = $2) \
             SELECT name, bound = 'DEFAULT', \
               extract(epoch FROM (regexp_match(bound, 'FROM \\(''([^'']+)''\\)'))[1]::timestamptz)::bigint, \
               extract(epoch FROM (regexp_match(bound, 'TO \\(''([^'']+)''\\)'))[1]::timestamptz)::bigint \
             FROM p ORDER BY 3 NULLS FIRST, 1",
            &[&schema, &table],
        )
        .await
        .map_err(|e| anyhow::anyhow!("listing partitions: {}", crate::infra::postgres::describe(&e)))?;
    Ok(rows
        .iter()
        .map(|r| Part {
            name: r.get(0),
            default: r.get(1),
            lo: r.get(2),
            hi: r.get(3),
        })
        .collect())
}

/// (start, end, conventional name) of this month and the next `ahead` months, in UTC.
pub async fn months(
    client: &tokio_postgres::Client,
    table: &str,
    ahead: i64,
) -> anyhow::Result<Vec<(i64, i64, String)>> {
    let rows = client
        .query(
            "SELECT extract(epoch FROM m)::bigint, extract(epoch FROM m + interval '1 month')::bigint, \
                    $2 || '_' || to_char(m, 'YYYY_MM') \
             FROM (SELECT (date_trunc('month', now() AT TIME ZONE 'UTC') + make_interval(months => g)) AT TIME ZONE 'UTC' AS m \
                   FROM generate_series(0, $1::int) g) s ORDER BY 1",
            &[&(ahead as i32), &table],
        )
        .await
        .map_err(|e| anyhow::anyhow!("{}", crate::infra::postgres::describe(&e)))?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

pub fn covered(parts: &[Part], start: i64, end: i64) -> bool {
    parts
        .iter()
        .any(|p| !p.default && p.lo.is_none_or(|lo| lo <= start) && p.hi.is_none_or(|hi| hi >= end))
}

pub async fn run(cx: &CheckCx<'_>) -> anyhow::Result<Report> {
    let schema = cx.params.string("schema", "audit")?;
    let table = cx.params.string("table", "audit_events")?;
    let ahead = cx.params.int("months_ahead", 1)?.clamp(0, 120);
    let client = cx.db("audit").await?;
    let parts = partitions(&client, &schema, &table).await?;
    if parts.is_empty() {
        let exists: bool = client
            .query_one(
                "SELECT to_regclass($1) IS NOT NULL",
                &[&format!("{schema}.{table}")],
            )
            .await?
            .get(0);
        anyhow::ensure!(
            exists,
            "table {schema}.{table} does not exist (wrong database or schema?)"
        );
    }
    let want = months(&client, &table, ahead).await?;
    let missing: Vec<&str> = want
        .iter()
        .filter(|(s, e, _)| !covered(&parts, *s, *e))
        .map(|(_, _, n)| n.as_str())
        .collect();
    let mut problems = vec![];
    let mut notes = vec![];
    let ranged: Vec<&Part> = parts.iter().filter(|p| !p.default).collect();
    let this_month = want.first().map_or(i64::MIN, |w| w.0);
    let window_end = want.last().map_or(i64::MIN, |w| w.1);
    for w in ranged.windows(2) {
        if let (Some(hi), Some(lo)) = (w[0].hi, w[1].lo)
            && hi != lo
        {
            let gap = format!("no partition between {} and {}", w[0].name, w[1].name);
            if lo <= this_month {
                // Old months archived out of the middle: no insert goes there any more.
                notes.push(format!("{gap} (in the past)"));
            } else if hi >= window_end {
                // Beyond the months checked: a hole that will fail inserts when its month comes.
                let fate = if parts.iter().any(|p| p.default) {
                    "rows for that period land in the default partition"
                } else {
                    "inserts for that period will fail"
                };
                problems.push(format!("{gap}: {fate}"));
            }
            // Inside the window, the missing months already say it.
        }
    }
    for d in parts.iter().filter(|p| p.default) {
        let rows = default_rows(&client, &schema, &d.name).await?;
        if rows > 0 {
            problems.push(format!("{rows} rows in the default partition {}", d.name));
        }
    }
    let last = ranged
        .iter()
        .filter_map(|p| p.hi.map(|h| (h, &p.name)))
        .max()
        .map(|(_, n)| n.clone());
    let data = json!({
        "partitions": parts.len(), "missing": missing, "problems": problems,
        "last": last, "months_checked": want.iter().map(|w| &w.2).collect::<Vec<_>>(),
    });
    let next = want.get(1).map(|w| w.2.as_str());
    let report = if missing.is_empty() && problems.is_empty() {
        Report::ok(format!(
            "audit partitions present for {} ({} partitions, contiguous, last {})",
            want.iter()
                .map(|w| w.2.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            parts.len(),
            last.as_deref().unwrap_or("?")
        ))
    } else if missing.len() == 1 && Some(missing[0]) == next {
        Report::alert(format!(
            "Missing audit partition for next month: {}",
            missing[0]
        ))
    } else if !missing.is_empty() {
        Report::alert(format!(
            "Missing audit partition(s): {}",
            missing.join(", ")
        ))
    } else {
        Report::alert(problems.join("; "))
    };
    Ok(report
        .details(problems.into_iter().chain(notes).collect())
        .data(data))
}

/// Rows in the default partition: counted when this login may read it, else the
/// statistics' live-tuple estimate (readable by anyone), which is what a monitor can see.
async fn default_rows(
    client: &tokio_postgres::Client,
    schema: &str,
    name: &str,
) -> anyhow::Result<i64> {
    let q = format!(
        "SELECT count(*) FROM {}.{}",
        quote_ident(schema),
        quote_ident(name)
    );
    match client.query_one(&q, &[]).await {
        Ok(r) => Ok(r.get(0)),
        Err(_) => {
            let r = client
                .query_one(
                    "SELECT coalesce(n_live_tup, 0) FROM pg_stat_all_tables WHERE schemaname = $1 AND relname = $2",
                    &[&schema, &name],
                )
                .await
                .map_err(|e| anyhow::anyhow!("{}", crate::infra::postgres::describe(&e)))?;
            Ok(r.get(0))
        }
    }
}
