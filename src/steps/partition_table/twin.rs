//! The copy path's twin: the partitioned table `<table>_ferry_twin` with its partitions
//! under their final names and the old table's storage parameters, and the index builds
//! on it (two sessions side by side, ferry names until the swap renames them; a build
//! already there — a resumed run — is skipped, partitioned index builds being atomic).

use std::time::Instant;

use tokio_postgres::Client;

use super::catalog::Catalog;
use super::copy::new_index;
use super::ddl::with_options;
use super::{PartitionTable, StepCx, pgerr, quote_ident};
use crate::report::Level;

pub fn twin_sql(pt: &PartitionTable, cat: &Catalog) -> String {
    let t = cat.qualified();
    let twin = pt.q(&pt.names().twin);
    let k = quote_ident(&pt.key);
    let by = if pt.strategy == "hash" {
        "HASH"
    } else {
        "RANGE"
    };
    let mut sql = format!(
        "BEGIN;\nCREATE TABLE {twin} (LIKE {t} INCLUDING DEFAULTS INCLUDING STORAGE INCLUDING COMMENTS INCLUDING GENERATED INCLUDING COMPRESSION INCLUDING CONSTRAINTS) PARTITION BY {by} ({k});\n"
    );
    let w = with_options(cat);
    if pt.strategy == "hash" {
        for r in 0..pt.modulus {
            sql.push_str(&format!(
                "CREATE TABLE {} PARTITION OF {twin} FOR VALUES WITH (MODULUS {}, REMAINDER {r}){w};\n",
                pt.q(&pt.part_name(r)),
                pt.modulus
            ));
        }
    } else {
        let n = cat.max_key.unwrap_or(0).max(0) / pt.interval + 1 + pt.premake;
        for p in 0..n {
            let from = if p == 0 {
                "MINVALUE".to_owned()
            } else {
                (p * pt.interval).to_string()
            };
            sql.push_str(&format!(
                "CREATE TABLE {} PARTITION OF {twin} FOR VALUES FROM ({from}) TO ({}){w};\n",
                pt.q(&pt.part_name(p)),
                (p + 1) * pt.interval
            ));
        }
    }
    sql.push_str("COMMIT;\n");
    sql
}

/// The index builds, then `ANALYZE` of the twin (the online copy: nothing waits for it).
pub async fn build_indexes(
    pt: &PartitionTable,
    cx: &StepCx,
    c: &Client,
    cat: &Catalog,
    twin: &str,
) -> anyhow::Result<()> {
    build_indexes_only(pt, cx, c, cat, twin).await?;
    analyze(cx, c, twin).await
}

/// `ANALYZE` of the (partitioned) table and its partitions. The offline copy runs it in the
/// validate stage, while HAPI serves, not in the window: until then the planner has the
/// partitions' sizes (every index build sets reltuples and relpages), not column statistics.
pub async fn analyze(cx: &StepCx, c: &Client, t: &str) -> anyhow::Result<()> {
    let t0 = Instant::now();
    c.batch_execute(&format!("ANALYZE {t}"))
        .await
        .map_err(pgerr)?;
    cx.log(
        Level::Info,
        format!("{t} analyzed in {} ms", t0.elapsed().as_millis()),
    );
    Ok(())
}

/// The index builds only (the offline copy: in the window).
pub async fn build_indexes_only(
    pt: &PartitionTable,
    cx: &StepCx,
    c: &Client,
    cat: &Catalog,
    twin: &str,
) -> anyhow::Result<()> {
    // Sorting cost per key column: a collated (varlena) comparison costs several fixed-width
    // ones (HAPI's res_type, fhir_id).
    let varlena: std::collections::HashSet<String> = c
        .query(
            "SELECT a.attname::text FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND t.typlen = -1",
            &[&twin],
        )
        .await
        .map_err(pgerr)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut todo = vec![];
    for (n, ix) in cat.indexes.iter().enumerate() {
        let exists: bool = c
            .query_one(
                "SELECT to_regclass($1) IS NOT NULL",
                &[&pt.q(&new_index(n))],
            )
            .await
            .map_err(pgerr)?
            .get(0);
        if !exists {
            let sql = super::ddl::parent_index_sql(twin, ix, &pt.key).replacen(
                &quote_ident(&ix.name),
                &quote_ident(&new_index(n)),
                1,
            );
            let cost: usize = if ix.key_cols.is_empty() {
                8
            } else {
                2 + ix
                    .key_cols
                    .iter()
                    .map(|k| if varlena.contains(k) { 4 } else { 1 })
                    .sum::<usize>()
            };
            todo.push((cost, ix.name.clone(), sql));
        }
    }
    // Two sessions side by side taking the next build from one queue, the costliest first
    // (longest processing time first: neither session idles while the other has two left).
    todo.sort_by_key(|t| std::cmp::Reverse(t.0));
    let other = pt.client(cx).await?;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let t0 = Instant::now();
    let (ra, rb) = tokio::join!(
        run_queue(cx, c, &todo, &next),
        run_queue(cx, &other, &todo, &next)
    );
    ra?;
    rb?;
    cx.log(
        Level::Info,
        format!(
            "indexes built on the twin in {} ms",
            t0.elapsed().as_millis()
        ),
    );
    Ok(())
}

async fn run_queue(
    cx: &StepCx,
    cl: &Client,
    todo: &[(usize, String, String)],
    next: &std::sync::atomic::AtomicUsize,
) -> anyhow::Result<()> {
    loop {
        let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let Some((_, name, sql)) = todo.get(i) else {
            return Ok(());
        };
        let t0 = Instant::now();
        cl.batch_execute(sql)
            .await
            .map_err(|e| anyhow::anyhow!("{}: {}", sql.trim(), pgerr(e)))?;
        cx.log(
            Level::Info,
            format!(
                "index {name} built on the twin in {} ms",
                t0.elapsed().as_millis()
            ),
        );
    }
}

/// The twin (`twin`, quoted) and its partitions, unless a killed run already made it.
pub async fn create(
    pt: &PartitionTable,
    c: &Client,
    cat: &Catalog,
    twin: &str,
) -> anyhow::Result<()> {
    if super::catalog::relkind(c, &pt.schema, &pt.names().twin).await? != Some('p') {
        c.batch_execute(&twin_sql(pt, cat))
            .await
            .map_err(|e| anyhow::anyhow!("creating the twin {twin}: {}", pgerr(e)))?;
    }
    Ok(())
}
