//! `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)` of one SELECT, inside a READ ONLY transaction
//! that is always rolled back, and the Seq Scan nodes of its plan. Shared by the `seqscan`
//! check and the `explain_seqscan` step (the partitioning window's trigger and post-check).
//!
//! Why this is safe on production: the statement must start with SELECT or WITH; the
//! extended query protocol refuses a second statement; READ ONLY refuses any write a CTE or
//! function might attempt; and the transaction is rolled back either way.

use std::time::Duration;

use anyhow::anyhow;
use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone, Serialize)]
pub struct SeqScan {
    pub relation: String,
    pub actual_rows: f64,
    pub loops: f64,
    pub time_ms: f64,
    pub filter: Option<String>,
}

impl SeqScan {
    pub fn describe(&self) -> String {
        let filter = self
            .filter
            .as_deref()
            .map(|f| format!(", filter {f}"))
            .unwrap_or_default();
        format!(
            "Seq Scan on {} ({} rows × {} loops, {:.1} ms{filter})",
            self.relation, self.actual_rows, self.loops, self.time_ms
        )
    }
}

/// Refuses anything but one SELECT (or WITH … SELECT), before it reaches the server.
pub fn only_select(query: &str) -> Result<(), String> {
    let q = strip_comments(query);
    let q = q.trim().trim_end_matches(';').trim();
    let first = q
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or("")
        .to_ascii_uppercase();
    if first != "SELECT" && first != "WITH" {
        return Err(format!(
            "only a single SELECT can be explained, not `{}`",
            q.split_whitespace().next().unwrap_or("")
        ));
    }
    if q.contains(';') && !in_literal_only(q) {
        return Err("only a single statement can be explained (found `;`)".into());
    }
    Ok(())
}

fn strip_comments(q: &str) -> String {
    q.lines()
        .map(|l| l.split("--").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// True when every `;` sits inside a single-quoted literal.
fn in_literal_only(q: &str) -> bool {
    let mut inside = false;
    for c in q.chars() {
        match c {
            '\'' => inside = !inside,
            ';' if !inside => return false,
            _ => {}
        }
    }
    true
}

pub async fn explain(
    client: &mut tokio_postgres::Client,
    query: &str,
    timeout: Duration,
) -> anyhow::Result<(Vec<SeqScan>, Value)> {
    only_select(query).map_err(|e| anyhow!(e))?;
    let q = |e: tokio_postgres::Error| anyhow!("{}", crate::infra::postgres::describe(&e));
    let tx = client
        .build_transaction()
        .read_only(true)
        .start()
        .await
        .map_err(q)?;
    tx.batch_execute(&format!(
        "SET LOCAL statement_timeout = {}",
        timeout.as_millis()
    ))
    .await
    .map_err(q)?;
    let sql = format!(
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {}",
        query.trim().trim_end_matches(';')
    );
    let r = tx.query_one(sql.as_str(), &[]).await;
    let _ = tx.rollback().await;
    let plan: Value = r
        .map_err(|e| anyhow!("EXPLAIN failed: {}", crate::infra::postgres::describe(&e)))?
        .get(0);
    let root = plan
        .get(0)
        .and_then(|p| p.get("Plan"))
        .ok_or_else(|| anyhow!("EXPLAIN returned no plan"))?;
    let mut scans = vec![];
    walk(root, &mut scans);
    Ok((scans, plan))
}

fn walk(node: &Value, out: &mut Vec<SeqScan>) {
    if node["Node Type"] == "Seq Scan" {
        out.push(SeqScan {
            relation: node["Relation Name"].as_str().unwrap_or("?").to_owned(),
            actual_rows: node["Actual Rows"].as_f64().unwrap_or(0.0),
            loops: node["Actual Loops"].as_f64().unwrap_or(1.0),
            time_ms: node["Actual Total Time"].as_f64().unwrap_or(0.0),
            filter: node["Filter"].as_str().map(str::to_owned),
        });
    }
    for child in node["Plans"].as_array().into_iter().flatten() {
        walk(child, out);
    }
}

/// Scans on one of `tables`, or on one of their partitions (`<table>_…`).
pub fn on_tables<'a>(scans: &'a [SeqScan], tables: &[String]) -> Vec<&'a SeqScan> {
    scans
        .iter()
        .filter(|s| {
            tables.iter().any(|t| {
                s.relation.eq_ignore_ascii_case(t)
                    || s.relation
                        .to_ascii_lowercase()
                        .starts_with(&format!("{}_", t.to_ascii_lowercase()))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_single_selects() {
        assert!(only_select("SELECT 1").is_ok());
        assert!(only_select("  -- a comment\n with x as (select 1) select * from x;").is_ok());
        assert!(only_select("select ';' as semi").is_ok());
        assert!(
            only_select("DELETE FROM hfj_resource")
                .unwrap_err()
                .contains("`DELETE`")
        );
        assert!(only_select("select 1; drop table hfj_resource").is_err());
        assert!(only_select("EXPLAIN select 1").is_err());
    }
}
