//! `existing = "attach"` (range only), the zero-copy path: the table becomes the first
//! partition. `prepare` (online, HAPI may serve): a `CHECK (key < hi) NOT VALID` then
//! `VALIDATE` (SHARE UPDATE EXCLUSIVE: reads and writes go on), and for each guarded
//! unique index a non-unique twin built CONCURRENTLY. `window`: one transaction under
//! `lock_timeout` (retried with back-off) that renames, creates the partitioned parent with
//! the original names, ATTACHes (no scan: the validated CHECK proves the bound; the
//! existing indexes are attached, not built), makes `premake` partitions and re-points
//! every FK `NOT VALID`. Its duration does not depend on the table's size.

use std::time::{Duration, Instant};

use anyhow::bail;
use tokio_postgres::Client;

use super::catalog::{self, Catalog};
use super::{PartitionTable, Phase, State, StepCx, guard, pgerr, quote_ident};
use crate::report::Level;

/// The name of the old table's `n`th index while it is the first partition's.
pub fn p0_index(n: usize) -> String {
    format!("ferry_p0_{n}")
}
pub fn substitute(n: usize) -> String {
    format!("ferry_nu_{n}")
}

pub async fn prepare(
    pt: &PartitionTable,
    cx: &StepCx,
    c: &Client,
    st: &mut State,
) -> anyhow::Result<()> {
    let cat = st.catalog.clone().expect("snapshot");
    let t = cat.qualified();
    let hi = match st.hi {
        Some(h) => h,
        None => {
            // One interval of headroom above the largest key: rows HAPI writes until the
            // window still satisfy the CHECK.
            let h = (cat.max_key.unwrap_or(0) / pt.interval + 2) * pt.interval;
            st.hi = Some(h);
            cx.save_checkpoint(st)?;
            h
        }
    };
    let name = pt.names().check;
    let row = c
        .query_opt(
            "SELECT convalidated FROM pg_constraint WHERE conrelid = to_regclass($1) AND conname = $2",
            &[&t, &name],
        )
        .await
        .map_err(pgerr)?;
    if row.is_none() {
        let add = format!(
            "SET lock_timeout = {}; ALTER TABLE {t} ADD CONSTRAINT {} CHECK ({} < {hi}) NOT VALID; RESET lock_timeout",
            pt.lock_timeout.get().as_millis(),
            quote_ident(&name),
            quote_ident(&pt.key)
        );
        retry(pt, cx, c, &add, "adding the range CHECK").await?;
    }
    if !row.is_some_and(|r| r.get::<_, bool>(0)) {
        let t0 = Instant::now();
        c.batch_execute(&format!(
            "ALTER TABLE {t} VALIDATE CONSTRAINT {}",
            quote_ident(&name)
        ))
        .await
        .map_err(|e| anyhow::anyhow!("validating {name} on {t}: {}", pgerr(e)))?;
        cx.log(
            Level::Info,
            format!("{name} validated in {} ms", t0.elapsed().as_millis()),
        );
    }
    for (n, ix) in cat.indexes.iter().enumerate() {
        if !ix.needs_guard(&pt.key) {
            continue;
        }
        let sub = substitute(n);
        let valid: Option<bool> = c
            .query_opt(
                "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)",
                &[&pt.q(&sub)],
            )
            .await
            .map_err(pgerr)?
            .map(|r| r.get(0));
        if valid == Some(true) {
            continue;
        }
        if valid == Some(false) {
            // A build killed half-way leaves an invalid index: start it again.
            c.batch_execute(&format!("DROP INDEX CONCURRENTLY {}", pt.q(&sub)))
                .await
                .map_err(pgerr)?;
        }
        c.batch_execute(&format!(
            "CREATE INDEX CONCURRENTLY {} ON {t} USING {}",
            quote_ident(&sub),
            ix.tail
        ))
        .await
        .map_err(|e| anyhow::anyhow!("building {sub} on {t}: {}", pgerr(e)))?;
    }
    Ok(())
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
                if !lock || attempt == pt.lock_retries {
                    bail!(
                        "{what} on {}.{}: {}{}",
                        pt.schema,
                        pt.table,
                        pgerr(e),
                        if lock {
                            format!(
                                " ({} attempts of lock_timeout {}: end the sessions that hold locks on it, or raise `lock_timeout`/`lock_retries`)",
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
                        "{what}: lock not granted within {}, retrying in {} ms",
                        pt.lock_timeout,
                        delay.as_millis()
                    ),
                );
                cx.cancel.sleep(delay).await?;
                delay *= 2;
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

pub async fn window(
    pt: &PartitionTable,
    cx: &StepCx,
    c: &Client,
    st: &mut State,
) -> anyhow::Result<()> {
    let cat = st.catalog.clone().expect("snapshot");
    let p0 = pt.part_name(0);
    let attached: bool = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_inherits WHERE inhparent = to_regclass($1) AND inhrelid = to_regclass($2))",
            &[&cat.qualified(), &pt.q(&p0)],
        )
        .await
        .map_err(pgerr)?
        .get(0);
    if !attached {
        let hi = st.hi.expect("prepared");
        let t = cat.qualified();
        let mut sql = format!(
            "BEGIN;\nSET LOCAL lock_timeout = {};\nLOCK TABLE {t} IN ACCESS EXCLUSIVE MODE;\n",
            pt.lock_timeout.get().as_millis()
        );
        sql.push_str(&fks_sql(&cat, false));
        sql.push_str(&guard::drop_trigger_sql(&t));
        for ix in cat.indexes.iter().filter(|i| i.needs_guard(&pt.key)) {
            sql.push_str(&match ix.constraint {
                Some(_) => format!(
                    "ALTER TABLE {t} DROP CONSTRAINT {};\n",
                    quote_ident(&ix.name)
                ),
                None => format!("DROP INDEX {};\n", pt.q(&ix.name)),
            });
        }
        sql.push_str(&format!(
            "ALTER TABLE {t} RENAME TO {};\n",
            quote_ident(&p0)
        ));
        let p0q = pt.q(&p0);
        for (n, ix) in cat.indexes.iter().enumerate() {
            if !ix.needs_guard(&pt.key) {
                sql.push_str(&rename_index_sql(pt, &p0q, ix, &ix.name, &p0_index(n)));
            }
        }
        sql.push_str(&format!(
            "CREATE TABLE {t} (LIKE {p0q} INCLUDING DEFAULTS INCLUDING STORAGE INCLUDING COMMENTS INCLUDING GENERATED INCLUDING COMPRESSION) PARTITION BY RANGE ({});\n",
            quote_ident(&pt.key)
        ));
        for ix in &cat.indexes {
            sql.push_str(&parent_index_sql(&t, ix, &pt.key));
        }
        sql.push_str(&format!(
            "ALTER TABLE {t} ATTACH PARTITION {p0q} FOR VALUES FROM (MINVALUE) TO ({hi});\n"
        ));
        let mut parts = vec![];
        for k in 1..=pt.premake {
            let name = pt.part_name(k);
            sql.push_str(&format!(
                "CREATE TABLE {} PARTITION OF {t} FOR VALUES FROM ({}) TO ({}){};\n",
                pt.q(&name),
                hi + (k - 1) * pt.interval,
                hi + k * pt.interval,
                with_options(&cat)
            ));
            parts.push(name);
        }
        sql.push_str(&finish_parent_sql(pt, &cat, &parts));
        sql.push_str("COMMIT;\n");
        let took = retry(pt, cx, c, &sql, "the window transaction").await?;
        st.window_ms = Some(took.as_millis() as u64);
        cx.log(
            Level::Info,
            format!(
                "window transaction: {} ms ({} attached as {p0}, {} partitions made, {} FKs re-pointed NOT VALID)",
                took.as_millis(),
                cat.table,
                pt.premake,
                cat.incoming.len()
            ),
        );
    }
    st.phase = Phase::Swapped;
    cx.save_checkpoint(st)?;
    Ok(())
}
