//! The window budget (`window`, `on_window`): before each phase its time is estimated, and a
//! phase that would not fit in what is left stops at the (clean) checkpoint before it —
//! exit 5, `ferry resume` continues in the next window — or fails so the run rolls back.
//!
//! The clock starts at the step's first estimate in this process (a resume is a new
//! window). Estimates come from rates measured on this database: copy's rows/s (from its
//! batches) for the copy, index builds and swap; for attach, a sequential-scan rate in
//! bytes/s measured on a 1% TABLESAMPLE of the table before the CHECK validation, then the
//! validation's own measured rate for the guard fill and the FK validations. A phase that
//! waits on locks is estimated at its worst case (`lock_timeout` × attempts).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::bail;
use tokio_postgres::Client;

use super::{Interrupted, PartitionTable, StepCx, pgerr};
use crate::report::Level;

static CLOCKS: Mutex<Option<HashMap<String, Instant>>> = Mutex::new(None);

/// Starts this step's window clock (a no-op when it runs already).
pub fn start(cx: &StepCx) {
    started(cx);
}

/// When this step's window started (its first estimate in this process).
fn started(cx: &StepCx) -> Instant {
    let mut g = CLOCKS.lock().unwrap_or_else(|e| e.into_inner());
    *g.get_or_insert_with(HashMap::new)
        .entry(cx.step_id.clone())
        .or_insert_with(Instant::now)
}

/// Whether `what`, estimated at `est`, fits in what is left of the window. `None` (no
/// estimate yet) and no `window` both fit.
pub fn fits(
    pt: &PartitionTable,
    cx: &StepCx,
    est: Option<Duration>,
    what: &str,
) -> anyhow::Result<()> {
    let Some(window) = pt.window.as_ref() else {
        return Ok(());
    };
    let started = started(cx);
    let Some(est) = est else {
        return Ok(());
    };
    let left = window.get().saturating_sub(started.elapsed());
    if est <= left {
        return Ok(());
    }
    let msg = format!(
        "{what} is estimated at {:.1}s but the window ({window}) has {:.1}s left",
        est.as_secs_f64(),
        left.as_secs_f64()
    );
    if pt.on_window == "rollback" {
        bail!("{msg}: rolling back (on_window = \"rollback\")");
    }
    cx.log(
        Level::Warn,
        format!(
            "{msg}: stopping at the last checkpoint; `ferry resume` continues in the next window"
        ),
    );
    Err(Interrupted.into())
}

/// The worst case of the window/swap's lock phase (`ddl::exclusive`): `lock_retries`
/// NOWAIT attempts (no wait each) with their back-off, then one wait of `lock_timeout`.
pub fn exclusive_wait(pt: &PartitionTable) -> Duration {
    let backoff: Duration = (0..pt.lock_retries).map(super::ddl::nowait_backoff).sum();
    pt.lock_timeout.get() + backoff
}

/// Seconds to scan `bytes` at `rate` bytes/s.
pub fn scan(bytes: i64, rate: Option<f64>) -> Option<Duration> {
    rate.filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(bytes.max(0) as f64 / r))
}

/// Only measured when a window is set: the heap's sequential-scan rate in bytes/s, from a
/// timed `count(*)` over a 1% block sample (REPEATABLE, so the same blocks each time).
pub async fn scan_rate(
    pt: &PartitionTable,
    c: &Client,
    table: &str,
) -> anyhow::Result<Option<f64>> {
    if pt.window.is_none() {
        return Ok(None);
    }
    let pages: i64 = c
        .query_one(
            "SELECT greatest(relpages, 1)::bigint FROM pg_class WHERE oid = to_regclass($1)",
            &[&table],
        )
        .await
        .map_err(pgerr)?
        .get(0);
    let t0 = Instant::now();
    c.batch_execute(&format!(
        "SELECT count(*) FROM {table} TABLESAMPLE SYSTEM (1) REPEATABLE (0)"
    ))
    .await
    .map_err(pgerr)?;
    let secs = t0.elapsed().as_secs_f64().max(1e-4);
    Ok(Some((pages as f64 * 8192.0 / 100.0).max(8192.0) / secs))
}

/// Heap bytes of `rel` (what a sequential scan reads).
pub async fn heap_bytes(c: &Client, rel: &str) -> anyhow::Result<i64> {
    Ok(c.query_one(
        "SELECT coalesce(pg_relation_size(to_regclass($1)), 0)",
        &[&rel],
    )
    .await
    .map_err(pgerr)?
    .get(0))
}
