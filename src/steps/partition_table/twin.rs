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

pub async fn build_indexes(
    pt: &PartitionTable,
    cx: &StepCx,
    c: &Client,
    cat: &Catalog,
    twin: &str,
) -> anyhow::Result<()> {
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
            todo.push(sql);
        }
    }
    // Two sessions side by side, biggest work first alternating (the PK first).
    let other = pt.client(cx).await?;
    let (a, b): (Vec<_>, Vec<_>) = todo.into_iter().enumerate().partition(|(i, _)| i % 2 == 0);
    let t0 = Instant::now();
    let (ra, rb) = tokio::join!(run_list(c, a), run_list(&other, b));
    ra?;
    rb?;
    c.batch_execute(&format!("ANALYZE {twin}"))
        .await
        .map_err(pgerr)?;
    cx.log(
        Level::Info,
        format!(
            "indexes built on the twin in {} ms",
            t0.elapsed().as_millis()
        ),
    );
    Ok(())
}

async fn run_list(cl: &Client, list: Vec<(usize, String)>) -> anyhow::Result<()> {
    for (_, sql) in list {
        cl.batch_execute(&sql)
            .await
            .map_err(|e| anyhow::anyhow!("{}: {}", sql.trim(), pgerr(e)))?;
    }
    Ok(())
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
