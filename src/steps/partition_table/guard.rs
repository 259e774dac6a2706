//! The uniqueness guard: PostgreSQL cannot put a UNIQUE index on a partitioned table
//! unless it contains the partition key, and HAPI's `idx_res_type_fhir_id (res_type,
//! fhir_id)` does not. Weakening it to per-partition would let two partitions hold the
//! same client-assigned id, so each such index gets a guard table (the key columns + the
//! partition key) with a real global unique index, kept by a row trigger.
//!
//! The guard is built beside HAPI's writes, never under a lock that holds them: while the
//! old table still has its own unique index, that index keeps the key unique and the guard
//! only has to be *exact* (one row per row of the table, same key columns) by the time the
//! index goes (attach or swap). So:
//! 1. one short transaction (`ddl::locked`, SHARE ROW EXCLUSIVE for the CREATE TRIGGER's
//!    instant) creates the empty guard with its unique index on the partition key and the
//!    trigger, which from then on upserts on that key;
//! 2. the fill copies the table in key order, `batch_rows` a statement, `ON CONFLICT DO
//!    NOTHING` (a row the trigger wrote is newer than the fill's snapshot of it; an update
//!    racing a batch waits for the batch's commit on the key index, then its upsert wins);
//! 3. a row deleted between a batch's snapshot and its commit is the one thing a fill can
//!    leave behind (the trigger's DELETE could not see the batch's row): the reconcile
//!    removes guard rows whose table row is gone (res_id comes from `seq_resource_id` and
//!    is never reused, so a guard row whose table row is gone is stale);
//! 4. the unique index on the key columns is built `CONCURRENTLY` (HAPI's writes go into
//!    the guard through the trigger meanwhile), an invalid one left by a kill is rebuilt;
//!    CONCURRENTLY waits for every older transaction of the database, so its wait is bounded
//!    by `lock_timeout`: past it, the index is built under a SHARE lock on the guard alone
//!    (new resources wait for the build, nothing else does), and a warning says so;
//! 5. an exact check (one snapshot: guard ⟗ table on the partition key, key columns equal)
//!    must find no difference, or the step fails before anything depends on the guard (a
//!    difference is reconciled and checked again twice first: a delete still open at the
//!    reconcile leaves its stale row until it commits).
//!
//! Every part is idempotent, so a killed install is run again from the top. The guard's
//! unique index is named `<original>_guard`, so a duplicate's error still names the
//! original constraint (HAPI matches the name in the message).

use std::time::Instant;

use tokio_postgres::Client;

use super::catalog::{Catalog, Index};
use super::{PartitionTable, StepCx, ddl, pgerr, quote_ident};
use crate::report::Level;

pub const TRIGGER: &str = "ferry_guard";

/// The unique indexes that need a guard, with their guard table's name.
pub fn guarded<'a>(pt: &PartitionTable, cat: &'a Catalog) -> Vec<(&'a Index, String)> {
    cat.indexes
        .iter()
        .filter(|i| i.needs_guard(&pt.key))
        .enumerate()
        .map(|(n, i)| {
            let base = pt.names().guard;
            (i, if n == 0 { base } else { format!("{base}{n}") })
        })
        .collect()
}

fn function(pt: &PartitionTable) -> String {
    pt.q(&format!("{}_ferry_guard_fn", pt.table))
}

/// The trigger function (one for all guards of the table) and the trigger on `on`.
pub fn trigger_sql(pt: &PartitionTable, cat: &Catalog, on: &str) -> String {
    let k = quote_ident(&pt.key);
    let mut del = String::new();
    let mut ins = String::new();
    let mut changed = vec![format!("OLD.{k} IS DISTINCT FROM NEW.{k}")];
    for (ix, g) in guarded(pt, cat) {
        let cols: Vec<String> = ix.key_cols.iter().map(|c| quote_ident(c)).collect();
        let new: Vec<String> = cols.iter().map(|c| format!("NEW.{c}")).collect();
        for c in &cols {
            changed.push(format!("OLD.{c} IS DISTINCT FROM NEW.{c}"));
        }
        del.push_str(&format!("DELETE FROM {} WHERE {k} = OLD.{k};\n", pt.q(&g)));
        let set: Vec<String> = cols.iter().map(|c| format!("{c} = EXCLUDED.{c}")).collect();
        ins.push_str(&format!(
            "INSERT INTO {} ({k}, {}) VALUES (NEW.{k}, {}) ON CONFLICT ({k}) DO UPDATE SET {};\n",
            pt.q(&g),
            cols.join(", "),
            new.join(", "),
            set.join(", ")
        ));
    }
    format!(
        "CREATE OR REPLACE FUNCTION {f}() RETURNS trigger LANGUAGE plpgsql AS $ferry$\n\
         BEGIN\n\
         IF TG_OP = 'UPDATE' AND NOT ({changed}) THEN RETURN NULL; END IF;\n\
         IF TG_OP IN ('UPDATE', 'DELETE') THEN\n{del}END IF;\n\
         IF TG_OP IN ('INSERT', 'UPDATE') THEN\n{ins}END IF;\n\
         RETURN NULL;\nEND $ferry$;\n\
         DROP TRIGGER IF EXISTS {TRIGGER} ON {on};\n\
         CREATE TRIGGER {TRIGGER} AFTER INSERT OR UPDATE OR DELETE ON {on} \
         FOR EACH ROW EXECUTE FUNCTION {f}();\n",
        f = function(pt),
        changed = changed.join(" OR "),
    )
}

pub fn drop_trigger_sql(on: &str) -> String {
    format!("DROP TRIGGER IF EXISTS {TRIGGER} ON {on};\n")
}

/// Creates, fills, reconciles, indexes and checks the guards (module doc), beside HAPI.
pub async fn install(
    pt: &PartitionTable,
    cx: &StepCx,
    c: &Client,
    cat: &Catalog,
) -> anyhow::Result<()> {
    let guards = guarded(pt, cat);
    let Some((_, first)) = guards.first() else {
        return Ok(());
    };
    let t = cat.qualified();
    let k = quote_ident(&pt.key);
    let exists: bool = c
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&pt.q(first)])
        .await
        .map_err(pgerr)?
        .get(0);
    if !exists {
        let mut body = String::new();
        for (ix, g) in &guards {
            body.push_str(&format!(
                "CREATE TABLE {g} AS SELECT {k}, {cols} FROM {t} WITH NO DATA;\n\
                 ALTER TABLE {g} ALTER COLUMN {k} SET NOT NULL;\n\
                 CREATE UNIQUE INDEX {kx} ON {g} ({k});\n",
                g = pt.q(g),
                cols = cols(ix),
                kx = quote_ident(&format!("{g}_key")),
            ));
        }
        body.push_str(&trigger_sql(pt, cat, &t));
        ddl::locked(
            pt,
            cx,
            c,
            std::slice::from_ref(&t),
            "SHARE ROW EXCLUSIVE",
            &body,
            "installing the uniqueness guard's trigger",
        )
        .await?;
    }
    for (ix, g) in &guards {
        let what = format!("the uniqueness guard {g} of {}", ix.name);
        fill(pt, cx, c, &t, &k, ix, &pt.q(g))
            .await
            .map_err(|e| e.context(format!("filling {what}")))?;
        index(pt, cx, c, ix, g)
            .await
            .map_err(|e| e.context(format!("indexing {what}")))?;
        // A delete whose transaction was still open at the reconcile leaves its stale row
        // until it commits: reconciled and checked again, a few times, before failing.
        for attempt in 1..=3 {
            match exact(c, &t, &k, ix, &pt.q(g)).await {
                Ok(()) => break,
                Err(e) if attempt == 3 => return Err(e.context(format!("checking {what}"))),
                Err(_) => {
                    cx.cancel
                        .sleep(std::time::Duration::from_millis(200))
                        .await?;
                    reconcile(c, &t, &k, &pt.q(g)).await?;
                }
            }
        }
    }
    Ok(())
}

fn cols(ix: &Index) -> String {
    let v: Vec<String> = ix.key_cols.iter().map(|c| quote_ident(c)).collect();
    v.join(", ")
}

/// Steps 2 and 3: the batched fill in key order, then the reconcile.
async fn fill(
    pt: &PartitionTable,
    cx: &StepCx,
    c: &Client,
    t: &str,
    k: &str,
    ix: &Index,
    g: &str,
) -> anyhow::Result<()> {
    let cols = cols(ix);
    let insert = format!(
        "INSERT INTO {g} ({k}, {cols}) SELECT {k}, {cols} FROM {t} WHERE {k} > $1 AND {k} <= $2 \
         ON CONFLICT ({k}) DO NOTHING"
    );
    let t0 = Instant::now();
    let (mut from, mut done) = (i64::MIN, 0i64);
    loop {
        let Some((upto, n)) = super::copy::next_batch(c, t, k, from, pt.batch_rows).await? else {
            break;
        };
        c.execute(insert.as_str(), &[&from, &upto])
            .await
            .map_err(pgerr)?;
        (from, done) = (upto, done + n);
        if let Some(th) = &pt.throttle {
            cx.cancel.sleep(th.get()).await?;
        }
    }
    let stale = reconcile(c, t, k, g).await?;
    cx.log(
        Level::Info,
        format!(
            "uniqueness guard {g}: {done} rows filled beside HAPI's writes in {:.1}s, {stale} stale removed",
            t0.elapsed().as_secs_f64()
        ),
    );
    Ok(())
}

/// Step 3: removes the guard rows whose table row is gone; returns how many.
async fn reconcile(c: &Client, t: &str, k: &str, g: &str) -> anyhow::Result<u64> {
    c.execute(
        format!("DELETE FROM {g} WHERE NOT EXISTS (SELECT 1 FROM {t} WHERE {t}.{k} = {g}.{k})")
            .as_str(),
        &[],
    )
    .await
    .map_err(pgerr)
}

/// Step 4: the unique index on the key columns, built CONCURRENTLY; an invalid one (a
/// build that was killed or failed) is dropped and built again.
async fn index(
    pt: &PartitionTable,
    cx: &StepCx,
    c: &Client,
    ix: &Index,
    g: &str,
) -> anyhow::Result<()> {
    let name = format!("{}_guard", ix.name);
    let valid: Option<bool> = c
        .query_opt(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class x ON x.oid = i.indexrelid \
             WHERE i.indrelid = to_regclass($1) AND x.relname = $2",
            &[&pt.q(g), &name],
        )
        .await
        .map_err(pgerr)?
        .map(|r| r.get(0));
    let qn = pt.q(&name);
    match valid {
        Some(true) => return Ok(()),
        Some(false) => c
            .batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {qn}"))
            .await
            .map_err(pgerr)?,
        None => {}
    }
    let create = format!(
        "CREATE UNIQUE INDEX {} ON {} ({})",
        quote_ident(&name),
        pt.q(g),
        cols(ix)
    );
    // CONCURRENTLY waits for every older transaction of the database: bounded by
    // lock_timeout, so a long transaction elsewhere cannot stall the step.
    let ms = pt.lock_timeout.get().as_millis();
    let orig: String = c
        .query_one("SELECT current_setting('lock_timeout')", &[])
        .await
        .map_err(pgerr)?
        .get(0);
    let concurrent = c
        .batch_execute(&format!(
            "SET lock_timeout = {ms}; {}",
            create.replacen("INDEX", "INDEX CONCURRENTLY", 1)
        ))
        .await;
    c.batch_execute(&format!("SET lock_timeout = {}", ddl::lit(&orig)))
        .await
        .map_err(pgerr)?;
    let Err(e) = concurrent else {
        return Ok(());
    };
    let why = pgerr(e);
    c.batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {qn}"))
        .await
        .map_err(pgerr)?;
    // Then in one short transaction under a SHARE lock on the guard alone: HAPI's inserts
    // (through the trigger) wait for the build, its reads and other writes go on.
    cx.log(
        Level::Warn,
        format!(
            "the guard's unique index {name}: CONCURRENTLY gave up after lock_timeout ({why}); \
             building it under a SHARE lock on {g}, new resources wait for the build"
        ),
    );
    ddl::locked(
        pt,
        cx,
        c,
        &[pt.q(g)],
        "SHARE",
        &format!("{create};\n"),
        "building the uniqueness guard's unique index",
    )
    .await?;
    Ok(())
}

/// Step 5: in one snapshot, every table row has its guard row with the same key columns
/// and no guard row is without its table row (the trigger writes both in one transaction).
async fn exact(c: &Client, t: &str, k: &str, ix: &Index, g: &str) -> anyhow::Result<()> {
    let differ: Vec<String> = ix
        .key_cols
        .iter()
        .map(|col| {
            let col = quote_ident(col);
            format!("o.{col} IS DISTINCT FROM x.{col}")
        })
        .collect();
    let row = c
        .query_one(
            format!(
                "SELECT count(*) FILTER (WHERE x.{k} IS NULL), count(*) FILTER (WHERE o.{k} IS NULL), \
                 count(*) FILTER (WHERE o.{k} IS NOT NULL AND x.{k} IS NOT NULL AND ({})) \
                 FROM {t} o FULL JOIN {g} x ON x.{k} = o.{k}",
                differ.join(" OR ")
            )
            .as_str(),
            &[],
        )
        .await
        .map_err(pgerr)?;
    let (missing, extra, wrong): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    anyhow::ensure!(
        missing + extra + wrong == 0,
        "the guard differs from {t}: {missing} rows missing, {extra} rows without their row, \
         {wrong} with other key columns"
    );
    Ok(())
}

/// Removes the guards, their function and the trigger on `on` (idempotent).
pub fn drop_sql(pt: &PartitionTable, cat: &Catalog, on: &str) -> String {
    let mut sql = drop_trigger_sql(on);
    for (_, g) in guarded(pt, cat) {
        sql.push_str(&format!("DROP TABLE IF EXISTS {};\n", pt.q(&g)));
    }
    sql.push_str(&format!("DROP FUNCTION IF EXISTS {}();\n", function(pt)));
    sql
}
