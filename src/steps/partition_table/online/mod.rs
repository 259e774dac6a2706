//! `online = true` with `existing = "copy"`: the conversion while HAPI serves reads and
//! writes. Phases, each ending with a checkpoint and re-entered after kill -9:
//! - **capture**: a row trigger on the old table (`ferry_capture`) logs the key of every
//!   inserted, updated or deleted row into `<table>_ferry_log` (installed under the lock
//!   discipline of `ddl::locked`, in SHARE ROW EXCLUSIVE mode); the copy's upper bound is the largest key read after it
//!   committed, so every row above it, and every row changed at all, is in the log;
//! - **twin** and **copy**: as offline, up to that bound, throttled (`max_rows_per_s`, the
//!   fixed `throttle`, and a back-off while HAPI's own queries, sampled from
//!   `pg_stat_activity` (latency.rs), or a probe lookup on the table are slower than
//!   their baseline);
//! - **indexes**: as offline (the replay needs the twin's primary key);
//! - **replay**: batches of the log (deleted from it, their keys deleted from the twin
//!   and copied again from the old table, one transaction each) until the backlog is
//!   small; idempotent, so a killed batch is simply done again; a range twin gets the
//!   partitions the climbing keys need before each round (headroom.rs);
//! - **window budget** (`window`): before each copy batch the rest of the copy and the
//!   replay of what the capture will have logged by its end are estimated from the
//!   measured rates (budget.rs), then the index builds, the replay and the swap; a phase
//!   that would not fit stops at its checkpoint (exit 5; the capture stays and keeps
//!   logging, so `ferry resume` in the next window loses nothing);
//! - **swap**: the offline swap transaction (under `lock_timeout`, retried with back-off;
//!   the error and the journal name what blocked it) with, after its locks are granted,
//!   the last delta replayed and the capture dropped; the swap itself starts the change
//!   capture on the new table that rollback uses, so rows written after the swap are
//!   brought back too. FK `VALIDATE`, verify and rollback are the offline ones.

pub mod blockers;
pub mod headroom;
pub mod latency;

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::catalog::Catalog;
use super::ddl::{lit, locked};
use super::{PartitionTable, Phase, State, StepCx, budget, pgerr, quote_ident};
use crate::report::Level;

pub const CAPTURE_TRIGGER: &str = "ferry_capture";

/// `online` accepts a bool or a playbook var's text (`"{{ online }}"`).
pub fn boolean<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum BoolOrText {
        Bool(bool),
        Text(String),
    }
    match <BoolOrText as serde::Deserialize>::deserialize(d)? {
        BoolOrText::Bool(b) => Ok(b),
        BoolOrText::Text(t) => match t.trim() {
            "true" | "yes" | "1" => Ok(true),
            "false" | "no" | "0" | "" => Ok(false),
            other => Err(serde::de::Error::custom(format!(
                "`{other}` is not a boolean (true or false)"
            ))),
        },
    }
}

/// A count that also accepts a playbook var's text (`lock_retries = "{{ lock_retries }}"`).
pub fn count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = super::defaults::int(d)?;
    u32::try_from(n).map_err(|_| serde::de::Error::custom(format!("`{n}` is not a count ≥ 0")))
}

fn log_table(pt: &PartitionTable) -> String {
    pt.q(&format!("{}_ferry_log", pt.table))
}
fn log_fn(pt: &PartitionTable) -> String {
    pt.q(&format!("{}_ferry_log_fn", pt.table))
}

/// Drops the capture (trigger on `on`, log table, function); used by the swap and by a
/// rollback before it.
pub fn drop_capture_sql(pt: &PartitionTable, on: &str) -> String {
    format!(
        "DROP TRIGGER IF EXISTS {CAPTURE_TRIGGER} ON {on};\nDROP TABLE IF EXISTS {};\nDROP FUNCTION IF EXISTS {}();\n",
        log_table(pt),
        log_fn(pt)
    )
}

/// The capture's statements, run only while it is not installed (no DROP TRIGGER: that
/// would need ACCESS EXCLUSIVE, and CREATE TRIGGER needs only SHARE ROW EXCLUSIVE, which
/// lets HAPI's reads go on while it waits).
fn capture_sql(pt: &PartitionTable, on: &str) -> String {
    let lg = log_table(pt);
    let f = log_fn(pt);
    let k = quote_ident(&pt.key);
    format!(
        "CREATE TABLE IF NOT EXISTS {lg} (seq bigserial PRIMARY KEY, {k} bigint NOT NULL);\n\
         COMMENT ON TABLE {lg} IS {c};\n\
         CREATE OR REPLACE FUNCTION {f}() RETURNS trigger LANGUAGE plpgsql AS $ferry$\n\
         BEGIN\n\
         IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND OLD.{k} IS DISTINCT FROM NEW.{k}) THEN INSERT INTO {lg} ({k}) VALUES (OLD.{k}); END IF;\n\
         IF TG_OP <> 'DELETE' THEN INSERT INTO {lg} ({k}) VALUES (NEW.{k}); END IF;\n\
         RETURN NULL;\nEND $ferry$;\n\
         CREATE TRIGGER {CAPTURE_TRIGGER} AFTER INSERT OR UPDATE OR DELETE ON {on} FOR EACH ROW EXECUTE FUNCTION {f}();\n",
        c = lit(
            "ferry partition_table (online): keys written during the copy, replayed into the twin; dropped by the swap"
        ),
    )
}

async fn capture_installed(c: &Client, on: &str) -> anyhow::Result<bool> {
    Ok(c.query_one(
        "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass($1) AND tgname = $2)",
        &[&on, &CAPTURE_TRIGGER],
    )
    .await
    .map_err(pgerr)?
    .get(0))
}

pub async fn run(
    pt: &PartitionTable,
    cx: &StepCx,
    c: &Client,
    st: &mut State,
) -> anyhow::Result<()> {
    budget::start(cx);
    let cat = st.catalog.clone().expect("snapshot");
    let t = cat.qualified();
    let twin = pt.q(&pt.names().twin);
    let k = quote_ident(&pt.key);
    if st.upto.is_none() && !super::copy::swapped(pt, c).await? {
        if !capture_installed(c, &t).await? {
            locked(
                pt,
                cx,
                c,
                std::slice::from_ref(&t),
                "SHARE ROW EXCLUSIVE",
                &capture_sql(pt, &t),
                "installing the change capture",
            )
            .await?;
        }
        // Read after the trigger committed: every row above it was written since, so it
        // is in the log; i64::MIN when the table was empty.
        let max: Option<i64> = c
            .query_one(&format!("SELECT max({k}) FROM {t}"), &[])
            .await
            .map_err(pgerr)?
            .get(0);
        st.upto = Some(max.unwrap_or(i64::MIN));
        cx.log(
            Level::Info,
            format!(
                "change capture on {t}: writes from now on are logged; copying up to {} {}",
                pt.key,
                max.map_or("(none)".into(), |m| m.to_string())
            ),
        );
        cx.save_checkpoint(st)?;
    }
    if st.phase < Phase::Twin {
        super::twin::create(pt, c, &cat, &twin).await?;
        st.phase = Phase::Twin;
        cx.save_checkpoint(st)?;
    }
    if st.phase < Phase::Copied {
        headroom::ensure(pt, cx, c, &cat, &twin).await?;
        copy_rows(pt, cx, c, st, &cat, &twin).await?;
        st.phase = Phase::Copied;
        cx.save_checkpoint(st)?;
    }
    if st.phase < Phase::Indexed {
        // As offline: half the copy's time per index, two sessions side by side.
        let n = cat.indexes.len() as f64;
        let est = st
            .rate
            .map(|r| Duration::from_secs_f64(cat.rows as f64 / r * 0.5 * n / 2.0));
        budget::fits(pt, cx, est, "the index builds")?;
        super::twin::build_indexes(pt, cx, c, &cat, &twin).await?;
        st.phase = Phase::Indexed;
        cx.save_checkpoint(st)?;
    }
    if st.phase < Phase::Swapped {
        if !super::copy::swapped(pt, c).await? {
            let est = replay_estimate(st, logged(pt, c).await?);
            budget::fits(pt, cx, est, "the replay")?;
            replay(pt, cx, st, &cat, &twin).await?;
            budget::fits(pt, cx, Some(budget::exclusive_wait(pt)), "the swap")?;
        }
        let lg = log_table(pt);
        let pre = format!(
            "DELETE FROM {twin} WHERE {k} IN (SELECT {k} FROM {lg});\n\
             INSERT INTO {twin} SELECT * FROM {t} WHERE {k} IN (SELECT DISTINCT {k} FROM {lg});\n{}",
            drop_capture_sql(pt, &t)
        );
        // The log table is written by HAPI's transactions (the capture trigger) and dropped
        // here: locked up front with the rest.
        let exists: bool = c
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&lg])
            .await
            .map_err(pgerr)?
            .get(0);
        let extra = if exists { vec![lg.clone()] } else { vec![] };
        // The last delta and the writes after the swap have their partitions.
        if !super::copy::swapped(pt, c).await? {
            headroom::ensure(pt, cx, c, &cat, &twin).await?;
        }
        super::copy::swap(pt, cx, c, st, &cat, &pre, &extra).await?;
        st.phase = Phase::Swapped;
        cx.save_checkpoint(st)?;
    }
    Ok(())
}

/// How many keys the change capture has logged in all (its `seq`'s position; 0 before it
/// logged any).
async fn logged(pt: &PartitionTable, c: &Client) -> anyhow::Result<i64> {
    Ok(c.query_one(
        "SELECT coalesce(pg_sequence_last_value(pg_get_serial_sequence($1, 'seq')::regclass), 0)",
        &[&log_table(pt)],
    )
    .await
    .map_err(pgerr)?
    .get(0))
}

/// The replay of `backlog` logged keys not yet replayed, at half the copy's measured rate
/// (a replay batch deletes and re-inserts by key lists: index lookups, not a range scan).
fn replay_estimate(st: &State, logged: i64) -> Option<Duration> {
    let backlog = (logged - st.replayed).max(0) as f64;
    st.rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(backlog / (r / 2.0)))
}

/// The probe: a primary-key lookup on the old table, HAPI's most common query shape.
async fn probe(c: &Client, sql: &str, key: i64) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    c.query_opt(sql, &[&key]).await.map_err(pgerr)?;
    Ok(t0.elapsed())
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
    let upto = st.upto.expect("capture installed");
    super::copy::caught_up(cx, c, st, &k, twin).await?;
    let bound = format!(
        "SELECT max({k}), count(*) FROM (SELECT {k} FROM {t} WHERE {k} > $1 AND {k} <= $3 ORDER BY {k} LIMIT $2) s"
    );
    let insert = format!("INSERT INTO {twin} SELECT * FROM {t} WHERE {k} > $1 AND {k} <= $2");
    let probe_sql = format!("SELECT 1 FROM {t} WHERE {k} = $1");
    let mut samples = vec![];
    for _ in 0..7 {
        samples.push(probe(c, &probe_sql, upto).await?);
    }
    samples.sort();
    let baseline = samples[samples.len() / 2];
    let slow = baseline * 3 + Duration::from_millis(2);
    // HAPI's own queries, from the server's side (latency.rs): calibrated for 500 ms
    // before the first batch.
    let watch = latency::Watch::start(pt.client(cx).await?).await?;
    cx.cancel.sleep(Duration::from_millis(500)).await?;
    let hapi_base = watch.take().slowest_ms;
    let mut backoff = Duration::ZERO;
    let mut backed_off = Duration::ZERO;
    let mut throttled = Duration::ZERO;
    let t0 = Instant::now();
    let logged0 = logged(pt, c).await?;
    let mut here = 0i64;
    loop {
        // The window budget: the rest of the copy at its measured rate, then the replay of
        // what the capture will have logged by then (at the rate it logs now).
        if let Some(rate) = st.rate.filter(|r| *r > 0.0) {
            let left = (cat.rows - st.copied).max(0) as f64 / rate;
            let now = logged(pt, c).await?;
            let per_s = (now - logged0).max(0) as f64 / t0.elapsed().as_secs_f64().max(1e-3);
            let replay = replay_estimate(st, now + (per_s * left) as i64).unwrap_or_default();
            budget::fits(
                pt,
                cx,
                Some(Duration::from_secs_f64(left) + replay),
                "the rest of the copy and its replay",
            )?;
        }
        let from = st.last_key.unwrap_or(i64::MIN);
        let b0 = Instant::now();
        let row = c
            .query_one(bound.as_str(), &[&from, &pt.batch_rows, &upto])
            .await
            .map_err(pgerr)?;
        let (to, n): (Option<i64>, i64) = (row.get(0), row.get(1));
        let Some(to) = to else { break };
        c.execute(insert.as_str(), &[&from, &to])
            .await
            .map_err(|e| {
                anyhow::anyhow!("copying {t} rows {from}..={to} into {twin}: {}", pgerr(e))
            })?;
        let took = b0.elapsed();
        st.last_key = Some(to);
        st.copied += n;
        here += n;
        let rate = here as f64 / t0.elapsed().as_secs_f64().max(1e-3);
        st.rate = Some(rate);
        cx.log(
            Level::Info,
            format!(
                "copied {}/{} rows ({rate:.0} rows/s under load, {} ms throttled, {} ms backed off for HAPI's latency), last {} {to}",
                st.copied,
                cat.rows,
                throttled.as_millis(),
                backed_off.as_millis(),
                pt.key
            ),
        );
        cx.save_checkpoint(st)?;
        let mut pause = pt.throttle.as_ref().map_or(Duration::ZERO, |d| d.get());
        if pt.max_rows_per_s > 0 {
            let min = Duration::from_secs_f64(n as f64 / pt.max_rows_per_s as f64);
            pause = pause.max(min.saturating_sub(took));
        }
        let p = probe(c, &probe_sql, to).await?;
        let hapi = watch.take();
        let why = if latency::slow(hapi_base, hapi.slowest_ms) {
            Some(format!(
                "HAPI's slowest query took {:.0} ms (baseline {hapi_base:.0} ms, {} finished)",
                hapi.slowest_ms, hapi.finished
            ))
        } else if p > slow {
            Some(format!(
                "probe lookup took {} ms (baseline {} ms)",
                p.as_millis(),
                baseline.as_millis()
            ))
        } else {
            None
        };
        if let Some(why) = why {
            backoff = (backoff * 2).clamp(Duration::from_millis(50), Duration::from_secs(2));
            cx.log(
                Level::Warn,
                format!("{why}: backing off {} ms", backoff.as_millis()),
            );
        } else {
            backoff /= 2;
        }
        let pause_total = pause.max(backoff);
        if !pause_total.is_zero() {
            let extra = pause_total.saturating_sub(pause);
            backed_off += extra;
            throttled += pause_total - extra;
            cx.cancel.sleep(pause_total).await?;
        }
    }
    Ok(())
}

/// Replays the log into the twin in batches until the backlog is small enough for the
/// swap to take the rest under its lock.
async fn replay(
    pt: &PartitionTable,
    cx: &StepCx,
    st: &mut State,
    cat: &Catalog,
    twin: &str,
) -> anyhow::Result<()> {
    let t = cat.qualified();
    let k = quote_ident(&pt.key);
    let lg = log_table(pt);
    let mut rc = pt.client(cx).await?;
    let small = pt.batch_rows.clamp(1, 1000);
    let take = format!(
        "DELETE FROM {lg} WHERE seq IN (SELECT seq FROM {lg} ORDER BY seq LIMIT $1) RETURNING {k}"
    );
    let del = format!("DELETE FROM {twin} WHERE {k} = ANY($1)");
    let ins = format!("INSERT INTO {twin} SELECT * FROM {t} WHERE {k} = ANY($1)");
    let count = format!("SELECT count(*) FROM {lg}");
    let t0 = Instant::now();
    for round in 0.. {
        let backlog: i64 = rc.query_one(&count, &[]).await.map_err(pgerr)?.get(0);
        if backlog <= small || round >= 10_000 {
            cx.log(
                Level::Info,
                format!(
                    "replayed {} logged keys in {} ms; {backlog} left for the swap",
                    st.replayed,
                    t0.elapsed().as_millis()
                ),
            );
            return Ok(());
        }
        headroom::ensure(pt, cx, &rc, cat, twin).await?;
        let tx = rc.transaction().await.map_err(pgerr)?;
        let mut keys: Vec<i64> = tx
            .query(&take, &[&pt.batch_rows])
            .await
            .map_err(pgerr)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let n = keys.len() as i64;
        keys.sort_unstable();
        keys.dedup();
        tx.execute(&del, &[&keys]).await.map_err(pgerr)?;
        tx.execute(&ins, &[&keys])
            .await
            .map_err(|e| anyhow::anyhow!("replaying the change log into {twin}: {}", pgerr(e)))?;
        tx.commit().await.map_err(pgerr)?;
        st.replayed += n;
        cx.log(
            Level::Info,
            format!("replayed {n} logged keys ({backlog} were waiting)"),
        );
        cx.save_checkpoint(st)?;
    }
    unreachable!("the loop returns")
}
