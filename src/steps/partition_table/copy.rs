//! `existing = "copy"`: the twin (`<table>_ferry_twin`, partitioned, its partitions under
//! their final names), keyset batches in key order (checkpoint = the last key copied),
//! the indexes built on the twin (two sessions side by side) under ferry names, then the
//! swap: one transaction under `lock_timeout` that drops the incoming FKs, renames old →
//! `<table>_old` and twin → `<table>`, gives indexes and constraints their original names,
//! re-creates the FKs `NOT VALID` and starts the change capture used by rollback.
//!
//! Resume never duplicates: a batch is one statement (all or nothing), and on re-entry
//! the twin's largest key — the end of the last committed batch — wins over a checkpoint
//! that a kill -9 kept from being written.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::catalog::{self, Catalog};
use super::ddl::{finish_parent_sql, lit};
use super::{PartitionTable, Phase, State, StepCx, budget, guard, pgerr, quote_ident};
use crate::report::{Level, Unit};

pub fn new_index(n: usize) -> String {
    format!("ferry_new_{n}")
}
pub fn old_index(n: usize) -> String {
    format!("ferry_old_{n}")
}
pub const CHANGES_TRIGGER: &str = "ferry_changes";

pub async fn run(
    pt: &PartitionTable,
    cx: &StepCx,
    c: &Client,
    st: &mut State,
) -> anyhow::Result<()> {
    budget::start(cx);
    let cat = st.catalog.clone().expect("snapshot");
    let twin = pt.q(&pt.names().twin);
    if st.phase < Phase::Twin {
        super::twin::create(pt, c, &cat, &twin).await?;
        st.phase = Phase::Twin;
        cx.save_checkpoint(st)?;
    }
    if st.phase < Phase::Copied {
        copy_rows(pt, cx, c, st, &cat, &twin).await?;
        st.phase = Phase::Copied;
        cx.save_checkpoint(st)?;
    }
    if st.phase < Phase::Indexed {
        let n = cat.indexes.len() as f64;
        let est = st
            .rate
            .map(|r| Duration::from_secs_f64(cat.rows as f64 / r * 0.5 * n / 2.0));
        budget::fits(pt, cx, est, "the index builds")?;
        super::twin::build_indexes_only(pt, cx, c, &cat, &twin).await?;
        st.phase = Phase::Indexed;
        cx.save_checkpoint(st)?;
    }
    if st.phase < Phase::Swapped {
        budget::fits(pt, cx, Some(budget::exclusive_wait(pt)), "the swap")?;
        swap(pt, cx, c, st, &cat, "", &[]).await?;
        st.phase = Phase::Swapped;
        cx.save_checkpoint(st)?;
    }
    Ok(())
}

async fn copy_rows(
    pt: &PartitionTable,
    cx: &StepCx,
    c: &Client,
    st: &mut State,
    cat: &Catalog,
    twin: &str,
) -> anyhow::Result<()> {
    let t = cat.qualified();
    let k = quote_ident(&pt.key);
    caught_up(cx, c, st, &k, twin).await?;
    let insert = format!("INSERT INTO {twin} SELECT * FROM {t} WHERE {k} > $1 AND {k} <= $2");
    let t0 = Instant::now();
    let mut here = 0i64;
    loop {
        let left = (cat.rows - st.copied).max(0) as f64;
        let est = st.rate.map(|rate| Duration::from_secs_f64(left / rate));
        budget::fits(pt, cx, est, "the copy")?;
        let from = st.last_key.unwrap_or(i64::MIN);
        let Some((upto, n)) = next_batch(c, &t, &k, from, pt.batch_rows).await? else {
            break;
        };
        c.execute(insert.as_str(), &[&from, &upto])
            .await
            .map_err(|e| {
                anyhow::anyhow!("copying {t} rows {from}..={upto} into {twin}: {}", pgerr(e))
            })?;
        st.last_key = Some(upto);
        st.copied += n;
        here += n;
        let secs = t0.elapsed().as_secs_f64().max(1e-3);
        let rate = here as f64 / secs;
        st.rate = Some(rate);
        let left = (cat.rows - st.copied).max(0) as f64;
        cx.progress(
            st.copied.max(0) as u64,
            cat.rows.max(st.copied).max(0) as u64,
            Unit::Rows,
        );
        cx.log(
            Level::Info,
            format!(
                "copied {}/{} rows ({:.0} rows/s, ETA {:.0}s), last {} {upto}",
                st.copied,
                cat.rows,
                rate,
                left / rate,
                pt.key
            ),
        );
        cx.save_checkpoint(st)?;
        if let Some(th) = &pt.throttle {
            cx.cancel.sleep(th.get()).await?;
        }
    }
    Ok(())
}

/// The next batch of `t` in `k` order after `from`, at most `rows`: its last key and its
/// row count; `None` when no row is left.
pub(super) async fn next_batch(
    c: &Client,
    t: &str,
    k: &str,
    from: i64,
    rows: i64,
) -> anyhow::Result<Option<(i64, i64)>> {
    let row = c
        .query_one(
            format!(
                "SELECT max({k}), count(*) FROM (SELECT {k} FROM {t} WHERE {k} > $1 ORDER BY {k} LIMIT $2) s"
            )
            .as_str(),
            &[&from, &rows],
        )
        .await
        .map_err(pgerr)?;
    let (upto, n): (Option<i64>, i64) = (row.get(0), row.get(1));
    Ok(upto.map(|u| (u, n)))
}

/// `pre`: statements run once the locks are granted (online: the last delta replayed).
pub(super) async fn swap(
    pt: &PartitionTable,
    cx: &StepCx,
    c: &Client,
    st: &mut State,
    cat: &Catalog,
    pre: &str,
    extra: &[String],
) -> anyhow::Result<()> {
    let names = pt.names();
    if swapped(pt, c).await? {
        return Ok(());
    }
    let t = cat.qualified();
    let twin = pt.q(&names.twin);
    let old = pt.q(&names.old);
    // Every lock up front (`exclusive`): the table and the twin (LOCK recurses into the
    // twin's partitions, which the FKs' triggers are cloned onto), `extra` (ferry's tables
    // the online `pre` writes or drops) and every referencing table (DROP CONSTRAINT:
    // ACCESS EXCLUSIVE; ADD FOREIGN KEY NOT VALID: SHARE ROW EXCLUSIVE). Index renames
    // take SHARE UPDATE EXCLUSIVE on the index, which only conflicts with sessions holding
    // a lock on its table as well.
    let mut first = vec![t.clone(), twin.clone()];
    first.extend(extra.iter().cloned());
    let rels = super::ddl::lock_set(cat, &first);
    let mut sql = String::from(pre);
    sql.push_str(&super::ddl::fks_sql(cat, false));
    sql.push_str(&guard::drop_trigger_sql(&t));
    sql.push_str(&format!(
        "ALTER TABLE {t} RENAME TO {};\n",
        quote_ident(&names.old)
    ));
    for (n, ix) in cat.indexes.iter().enumerate() {
        sql.push_str(&super::ddl::rename_index_sql(
            pt,
            &old,
            ix,
            &ix.name,
            &old_index(n),
        ));
    }
    sql.push_str(&format!(
        "ALTER TABLE {twin} RENAME TO {};\n",
        quote_ident(&pt.table)
    ));
    for (n, ix) in cat.indexes.iter().enumerate() {
        let on_twin = super::catalog::Index {
            constraint: ix.constraint.clone().filter(|_| !ix.needs_guard(&pt.key)),
            ..ix.clone()
        };
        sql.push_str(&super::ddl::rename_index_sql(
            pt,
            &t,
            &on_twin,
            &new_index(n),
            &ix.name,
        ));
    }
    let parts: Vec<String> = c
        .query("SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass($1)", &[&twin])
        .await
        .map_err(pgerr)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    sql.push_str(&finish_parent_sql(pt, cat, &parts));
    sql.push_str(&changes_sql(pt, &t));
    let x = match super::ddl::exclusive(pt, cx, c, &rels, &sql, "the swap").await {
        Ok(x) => x,
        // A session of a killed ferry may have committed this very swap meanwhile (its
        // statements were already on the server): then it is done, not failed.
        Err(e) => {
            if swapped(pt, c).await? {
                return Ok(());
            }
            return Err(e);
        }
    };
    st.window_ms = Some(x.held.as_millis() as u64);
    cx.log(
        Level::Info,
        format!(
            "swap transaction: {} ms with its locks held ({} locks taken up front at attempt {}, waited {} ms); {} keeps the original rows until cleanup",
            x.held.as_millis(),
            rels.len(),
            x.attempt,
            x.waited.as_millis(),
            names.old
        ),
    );
    Ok(())
}

pub(super) async fn swapped(pt: &PartitionTable, c: &Client) -> anyhow::Result<bool> {
    Ok(
        catalog::relkind(c, &pt.schema, &pt.table).await? == Some('p')
            && catalog::relkind(c, &pt.schema, &pt.names().old)
                .await?
                .is_some(),
    )
}

/// The change capture on the new table: every key inserted, updated or deleted since the
/// swap, so a rollback can bring the old table up to date.
fn changes_sql(pt: &PartitionTable, on: &str) -> String {
    let ch = pt.q(&pt.names().changes);
    let f = pt.q(&format!("{}_ferry_changes_fn", pt.table));
    let k = quote_ident(&pt.key);
    format!(
        "CREATE TABLE {ch} ({k} bigint NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());\n\
         COMMENT ON TABLE {ch} IS {c};\n\
         CREATE FUNCTION {f}() RETURNS trigger LANGUAGE plpgsql AS $ferry$\n\
         BEGIN\n\
         IF TG_OP IN ('UPDATE', 'DELETE') THEN INSERT INTO {ch} ({k}) VALUES (OLD.{k}); END IF;\n\
         IF TG_OP IN ('UPDATE', 'INSERT') THEN INSERT INTO {ch} ({k}) VALUES (NEW.{k}); END IF;\n\
         RETURN NULL;\nEND $ferry$;\n\
         CREATE TRIGGER {CHANGES_TRIGGER} AFTER INSERT OR UPDATE OR DELETE ON {on} FOR EACH ROW EXECUTE FUNCTION {f}();\n",
        c = lit(
            "ferry partition_table: keys changed since the swap, for rollback; dropped by cleanup"
        ),
    )
}

/// Re-entry of a copy: a batch that committed before its checkpoint was written (kill -9)
/// is counted from the twin itself, so the copy goes on after it and never duplicates it.
pub(super) async fn caught_up(
    cx: &StepCx,
    c: &Client,
    st: &mut State,
    k: &str,
    twin: &str,
) -> anyhow::Result<()> {
    let in_twin: Option<i64> = c
        .query_one(&format!("SELECT max({k}) FROM {twin}"), &[])
        .await
        .map_err(pgerr)?
        .get(0);
    if in_twin > st.last_key {
        // The last batch committed but its checkpoint was not written (kill -9).
        let n: i64 = c
            .query_one(&format!("SELECT count(*) FROM {twin}"), &[])
            .await
            .map_err(pgerr)?
            .get(0);
        st.last_key = in_twin;
        st.copied = n;
        cx.save_checkpoint(st)?;
    }
    Ok(())
}
