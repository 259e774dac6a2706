//! SQL shared by the attach window, the copy swap and rollback: the lock discipline
//! (`locked`: every lock up front, NOWAIT retries, one bounded wait; the one place a
//! refused attempt is reported), the statements that give the new parent what the old
//! table had (statistics targets, owner, grants, guard trigger, FKs `NOT VALID`), and
//! index/constraint DDL built from the catalog snapshot. Identifiers are quoted; values are literals.

use std::time::{Duration, Instant};

use anyhow::bail;
use tokio_postgres::Client;

use super::catalog::{self, Catalog};
use super::{PartitionTable, StepCx, guard, pgerr, quote_ident};
use crate::report::Level;

/// What blocked the lock requests of `retry` in this process, for the step's checkpoint
/// (the journal): one line per failed attempt, taken by `take_blocked`.
static BLOCKED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

pub fn take_blocked() -> Vec<String> {
    std::mem::take(&mut *BLOCKED.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Every relation the window/swap transaction locks, in a stable order: `first` (the table,
/// then the twin, then ferry's own tables on it), then every referencing table of the
/// incoming FKs by name, each once. The table comes first as in HAPI's own transactions
/// (they write it before the tables that reference it), which keeps the bounded last wait
/// from deadlocking with them as far as an order can.
pub fn lock_set(cat: &Catalog, first: &[String]) -> Vec<String> {
    let mut refs: Vec<String> = cat.incoming.iter().map(|fk| fk.on.clone()).collect();
    refs.sort();
    let mut v: Vec<String> = vec![];
    for r in first.iter().cloned().chain(refs) {
        if !v.contains(&r) {
            v.push(r);
        }
    }
    v
}

/// The back-off before NOWAIT attempt `n + 1` (upper bound; the sleep is jittered between
/// half and all of it): 50 ms doubling, at most 1 s.
pub fn nowait_backoff(n: u32) -> Duration {
    (Duration::from_millis(50) * 2u32.saturating_pow(n.min(10))).min(Duration::from_secs(1))
}

fn jitter(d: Duration) -> Duration {
    // No RNG dependency for this: the clock's nanoseconds and the pid are random enough
    // to keep two waiters (two ferry runs, or ferry and a cron job) out of step.
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|t| t.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    let f = (h.finish() % 1000) as f64 / 1000.0;
    d.mul_f64(0.5 + 0.5 * f)
}

/// How the exclusive phase went: how long the locks were held (LOCK granted → COMMIT),
/// how long ferry waited for them in all (the last attempt's wait, none for NOWAIT), and
/// the attempt that got them (1-based).
pub struct Exclusive {
    pub held: Duration,
    pub waited: Duration,
    pub attempt: u32,
}

fn lock_error(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    [
        SqlState::LOCK_NOT_AVAILABLE,
        SqlState::QUERY_CANCELED,
        SqlState::T_R_DEADLOCK_DETECTED,
    ]
    .iter()
    .any(|s| e.code() == Some(s))
}

/// One transaction that takes every lock it needs up front, then runs `body` (statements,
/// no BEGIN/COMMIT) with them held: `LOCK TABLE rels… IN ACCESS EXCLUSIVE MODE` in one
/// statement. Attempts 1..=`lock_retries` use `NOWAIT`: a lock held by anyone fails the
/// attempt at once, nothing queues behind ferry, the holders are read for the report and
/// the attempt is retried after a jittered back-off ([`nowait_backoff`]). The last attempt
/// (`lock_retries` + 1) waits, so a table that is never idle (HAPI under steady load)
/// cannot starve the step: that one wait is bounded in all by `lock_timeout`
/// (`statement_timeout` on the LOCK, not only per lock), while HAPI's requests queue behind
/// it at most that long. `body` runs under `lock_timeout` too: if it asked for a lock not
/// taken up front, its wait would be bounded and retried, not unbounded.
pub async fn exclusive(
    pt: &PartitionTable,
    cx: &StepCx,
    c: &Client,
    rels: &[String],
    body: &str,
    what: &str,
) -> anyhow::Result<Exclusive> {
    locked(pt, cx, c, rels, "ACCESS EXCLUSIVE", body, what).await
}

/// [`exclusive`] with another lock `mode` (`SHARE ROW EXCLUSIVE` for a CREATE TRIGGER,
/// which lets HAPI's reads go on). Every transaction of this step that needs a lock on a
/// table HAPI uses goes through here: the window, the swap, the change capture's install,
/// the range CHECK, rollback and cleanup.
pub async fn locked(
    pt: &PartitionTable,
    cx: &StepCx,
    c: &Client,
    rels: &[String],
    mode: &str,
    body: &str,
    what: &str,
) -> anyhow::Result<Exclusive> {
    let ms = pt.lock_timeout.get().as_millis();
    let st_orig: String = c
        .query_one("SELECT current_setting('statement_timeout')", &[])
        .await
        .map_err(pgerr)?
        .get(0);
    let list = rels.join(", ");
    for attempt in 0..=pt.lock_retries {
        let last = attempt == pt.lock_retries;
        let lock = if last {
            format!(
                "BEGIN;\nSET LOCAL lock_timeout = {ms};\nSET LOCAL statement_timeout = {ms};\nLOCK TABLE {list} IN {mode} MODE;\nSET LOCAL statement_timeout = {};\n",
                lit(&st_orig)
            )
        } else {
            format!(
                "BEGIN;\nSET LOCAL lock_timeout = {ms};\nLOCK TABLE {list} IN {mode} MODE NOWAIT;\n"
            )
        };
        let t0 = Instant::now();
        let (e, in_body) = match c.batch_execute(&lock).await {
            Ok(()) => {
                let waited = t0.elapsed();
                let t1 = Instant::now();
                match c.batch_execute(&format!("{body}COMMIT;\n")).await {
                    Ok(()) => {
                        return Ok(Exclusive {
                            held: t1.elapsed(),
                            waited,
                            attempt: attempt + 1,
                        });
                    }
                    Err(e) => (e, true),
                }
            }
            Err(e) => (e, false),
        };
        crate::infra::postgres::rollback(c).await;
        // In the body a cancel is not the LOCK's statement_timeout: not retried.
        let lock = lock_error(&e)
            && !(in_body && e.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED));
        let delay = jitter(nowait_backoff(attempt));
        refused(pt, cx, c, e, lock, attempt, rels, what, delay).await?;
        cx.cancel.sleep(delay).await?;
    }
    unreachable!("the loop returns")
}

/// The one place a failed attempt of [`locked`] is reported: for a lock not granted, its
/// holders are read (while they most likely still hold it) and kept for the journal
/// ([`take_blocked`]); then either the step fails — any other error, or the last attempt —
/// with the blockers and what to do in the message, or a warning says when it retries.
#[allow(clippy::too_many_arguments)]
async fn refused(
    pt: &PartitionTable,
    cx: &StepCx,
    c: &Client,
    e: tokio_postgres::Error,
    lock: bool,
    attempt: u32,
    rels: &[String],
    what: &str,
    delay: Duration,
) -> anyhow::Result<()> {
    let blockers = if lock {
        let b = super::online::blockers::describe(pt, c, rels).await;
        BLOCKED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(format!("{what}, attempt {}: {b}", attempt + 1));
        b
    } else {
        String::new()
    };
    if !lock || attempt == pt.lock_retries {
        bail!(
            "{what} on {}.{}: {}{}",
            pt.schema,
            pt.table,
            pgerr(e),
            if lock {
                format!(
                    " ({} NOWAIT attempts, then one wait of lock_timeout {} for all {} locks; {blockers}: end the sessions that hold locks on it, or raise `lock_timeout`/`lock_retries`)",
                    pt.lock_retries,
                    pt.lock_timeout,
                    rels.len()
                )
            } else {
                String::new()
            }
        );
    }
    cx.log(
        Level::Warn,
        format!(
            "{what}: {} locks not free at once (NOWAIT attempt {} of {}, then one wait of up to {}; {blockers}), retrying in {} ms",
            rels.len(),
            attempt + 1,
            pt.lock_retries,
            pt.lock_timeout,
            delay.as_millis()
        ),
    );
    Ok(())
}

/// Statements shared by attach and the copy swap: what the new parent gets around its
/// partitions (statistics targets, owner, grants, guard trigger, FKs `NOT VALID`).
pub fn finish_parent_sql(pt: &PartitionTable, cat: &Catalog, parts: &[String]) -> String {
    let t = cat.qualified();
    let mut sql = String::new();
    for col in &cat.columns {
        if col.stattarget >= 0 {
            sql.push_str(&format!(
                "ALTER TABLE {t} ALTER COLUMN {} SET STATISTICS {};\n",
                quote_ident(&col.name),
                col.stattarget
            ));
        }
    }
    // Plain statements, no DO block (that cost ~1 ms each inside the lock): an ALTER OWNER
    // to the owner a relation already has changes nothing and checks no privilege.
    for rel in std::iter::once(t.clone()).chain(parts.iter().map(|p| pt.q(p))) {
        sql.push_str(&format!(
            "ALTER TABLE {rel} OWNER TO {};\n",
            quote_ident(&cat.owner)
        ));
    }
    for (privilege, grantee) in &cat.grants {
        sql.push_str(&format!("GRANT {privilege} ON {t} TO {grantee};\n"));
    }
    if !guard::guarded(pt, cat).is_empty() {
        sql.push_str(&guard::trigger_sql(pt, cat, &t));
    }
    sql.push_str(&fks_sql(cat, true));
    sql
}

/// `ALTER TABLE … ADD CONSTRAINT` for every incoming FK (with `NOT VALID`), or DROP.
pub fn fks_sql(cat: &Catalog, add: bool) -> String {
    cat.incoming
        .iter()
        .map(|fk| {
            if add {
                format!(
                    "ALTER TABLE {} ADD CONSTRAINT {} {} NOT VALID;\n",
                    fk.on,
                    quote_ident(&fk.name),
                    fk.def
                )
            } else {
                format!(
                    "ALTER TABLE {} DROP CONSTRAINT IF EXISTS {};\n",
                    fk.on,
                    quote_ident(&fk.name)
                )
            }
        })
        .collect()
}

pub fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

pub fn with_options(cat: &Catalog) -> String {
    if cat.reloptions.is_empty() {
        String::new()
    } else {
        format!(" WITH ({})", cat.reloptions.join(", "))
    }
}

/// Creates and attaches or makes the parent's index `ix` under its original name.
pub fn parent_index_sql(t: &str, ix: &catalog::Index, key: &str) -> String {
    match &ix.constraint {
        Some((_, def)) if !ix.needs_guard(key) => format!(
            "ALTER TABLE {t} ADD CONSTRAINT {} {def};\n",
            quote_ident(&ix.name)
        ),
        _ => format!(
            "CREATE {}INDEX {} ON {t} USING {};\n",
            if ix.unique && !ix.needs_guard(key) {
                "UNIQUE "
            } else {
                ""
            },
            quote_ident(&ix.name),
            ix.tail
        ),
    }
}

/// Renames index/constraint `ix` of table `on` to `to`.
pub fn rename_index_sql(
    pt: &PartitionTable,
    on: &str,
    ix: &catalog::Index,
    from: &str,
    to: &str,
) -> String {
    if ix.constraint.is_some() {
        format!(
            "ALTER TABLE {on} RENAME CONSTRAINT {} TO {};\n",
            quote_ident(from),
            quote_ident(to)
        )
    } else {
        format!(
            "ALTER INDEX {} RENAME TO {};\n",
            pt.q(from),
            quote_ident(to)
        )
    }
}
