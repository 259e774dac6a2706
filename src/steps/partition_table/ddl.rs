//! SQL shared by the attach window, the copy swap and rollback: the lock-timeout retry
//! loop, the statements that give the new parent what the old table had (statistics
//! targets, owner, grants, guard trigger, FKs `NOT VALID`), and index/constraint DDL built
//! from the catalog snapshot. Identifiers are quoted; values are literals.

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

/// Runs `sql` (one transaction, or statements under a session lock_timeout), retrying
/// a lock timeout with back-off. Returns how long the successful attempt took.
pub async fn retry(
    pt: &PartitionTable,
    cx: &StepCx,
    c: &Client,
    sql: &str,
    what: &str,
) -> anyhow::Result<Duration> {
    let mut delay = Duration::from_millis(200);
    for attempt in 0..=pt.lock_retries {
        let t0 = Instant::now();
        match c.batch_execute(sql).await {
            Ok(()) => return Ok(t0.elapsed()),
            Err(e) => {
                crate::infra::postgres::rollback(c).await;
                let _ = c.batch_execute("RESET lock_timeout").await;
                let lock = e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE);
                // Who held it, read while the holder is (most likely) still there.
                let blockers = if lock {
                    super::online::blockers::describe(pt, c).await
                } else {
                    String::new()
                };
                if lock {
                    BLOCKED
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(format!("{what}, attempt {}: {blockers}", attempt + 1));
                }
                if !lock || attempt == pt.lock_retries {
                    bail!(
                        "{what} on {}.{}: {}{}",
                        pt.schema,
                        pt.table,
                        pgerr(e),
                        if lock {
                            format!(
                                " ({} attempts of lock_timeout {}; {blockers}: end the sessions that hold locks on it, or raise `lock_timeout`/`lock_retries`)",
                                pt.lock_retries + 1,
                                pt.lock_timeout
                            )
                        } else {
                            String::new()
                        }
                    );
                }
                cx.log(
                    Level::Warn,
                    format!(
                        "{what}: lock not granted within {} (attempt {} of {}; {blockers}), retrying in {} ms",
                        pt.lock_timeout,
                        attempt + 1,
                        pt.lock_retries + 1,
                        delay.as_millis()
                    ),
                );
                cx.cancel.sleep(delay).await?;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    unreachable!("the loop returns")
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
    for rel in std::iter::once(t.clone()).chain(parts.iter().map(|p| pt.q(p))) {
        sql.push_str(&format!(
            "DO $o$ BEGIN IF (SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = to_regclass({r})) <> {o} THEN ALTER TABLE {rel} OWNER TO {oi}; END IF; END $o$;\n",
            r = lit(&rel),
            o = lit(&cat.owner),
            oi = quote_ident(&cat.owner)
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
