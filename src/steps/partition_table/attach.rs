//! `existing = "attach"` (range only), the zero-copy path: the table becomes the first
//! partition. `prepare` (online, HAPI may serve): a `CHECK (key < hi) NOT VALID` then
//! `VALIDATE` (SHARE UPDATE EXCLUSIVE: reads and writes go on), and for each guarded
//! unique index a non-unique twin built CONCURRENTLY. `window`: one transaction under
//! `lock_timeout` (retried with back-off) that renames, creates the partitioned parent with
//! the original names, ATTACHes (no scan: the validated CHECK proves the bound; the
//! existing indexes are attached, not built), makes `premake` partitions and re-points
//! every FK `NOT VALID`. Its duration does not depend on the table's size.

use std::time::Instant;

use tokio_postgres::Client;

use super::ddl::{
    Exclusive, exclusive, finish_parent_sql, fks_sql, lock_set, parent_index_sql, rename_index_sql,
    with_options,
};
use super::{PartitionTable, Phase, State, StepCx, budget, guard, pgerr, quote_ident};
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
    budget::start(cx);
    let cat = st.catalog.clone().expect("snapshot");
    let t = cat.qualified();
    let name = pt.names().check;
    // A CHECK an earlier `stage = "prepare"` step added decides the bound: the partition
    // bound must be implied by it for ATTACH to skip its scan.
    let existing: Option<i64> = c
        .query_opt(
            "SELECT substring(pg_get_constraintdef(oid) from '< \\(?(-?[0-9]+)')::bigint FROM pg_constraint WHERE conrelid = to_regclass($1) AND conname = $2",
            &[&t, &name],
        )
        .await
        .map_err(pgerr)?
        .and_then(|r| r.get(0));
    let hi = match existing.or(st.hi) {
        Some(h) => {
            if st.hi != Some(h) {
                st.hi = Some(h);
                cx.save_checkpoint(st)?;
            }
            h
        }
        None => {
            // One interval of headroom above the largest key, or the key's sequence
            // position when HAPI's pooled ids are ahead of it: rows HAPI writes until
            // the window still satisfy the CHECK.
            let high = super::online::headroom::high(pt, c, &t).await?;
            let h = (cat.max_key.unwrap_or(0).max(high) / pt.interval + 2) * pt.interval;
            st.hi = Some(h);
            cx.save_checkpoint(st)?;
            h
        }
    };
    let row = c
        .query_opt(
            "SELECT convalidated FROM pg_constraint WHERE conrelid = to_regclass($1) AND conname = $2",
            &[&t, &name],
        )
        .await
        .map_err(pgerr)?;
    if row.is_none() {
        let add = format!(
            "ALTER TABLE {t} ADD CONSTRAINT {} CHECK ({} < {hi}) NOT VALID;\n",
            quote_ident(&name),
            quote_ident(&pt.key)
        );
        exclusive(
            pt,
            cx,
            c,
            std::slice::from_ref(&t),
            &add,
            "adding the range CHECK",
        )
        .await?;
    }
    let heap = budget::heap_bytes(c, &t).await?;
    if !row.is_some_and(|r| r.get::<_, bool>(0)) {
        let sampled = budget::scan_rate(pt, c, &t).await?;
        budget::fits(
            pt,
            cx,
            budget::scan(heap, st.scan_rate.or(sampled)),
            "the range CHECK validation",
        )?;
        let t0 = Instant::now();
        c.batch_execute(&format!(
            "ALTER TABLE {t} VALIDATE CONSTRAINT {}",
            quote_ident(&name)
        ))
        .await
        .map_err(|e| anyhow::anyhow!("validating {name} on {t}: {}", pgerr(e)))?;
        let secs = t0.elapsed().as_secs_f64();
        st.scan_rate = Some(heap as f64 / secs.max(1e-3));
        cx.save_checkpoint(st)?;
        cx.log(
            Level::Info,
            format!("{name} validated in {} ms", t0.elapsed().as_millis()),
        );
    }
    // Each guarded unique key: a substitute index built CONCURRENTLY (two scans) and its
    // guard filled in bulk and indexed (about one more): three scans of the heap each.
    let guards = cat
        .indexes
        .iter()
        .filter(|i| i.needs_guard(&pt.key))
        .count() as i64;
    if guards > 0 {
        let rate = match st.scan_rate {
            Some(r) => Some(r),
            None => budget::scan_rate(pt, c, &t).await?,
        };
        budget::fits(
            pt,
            cx,
            budget::scan(heap * 3 * guards, rate),
            "the substitute indexes and the uniqueness guard",
        )?;
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

pub async fn window(
    pt: &PartitionTable,
    cx: &StepCx,
    c: &Client,
    st: &mut State,
) -> anyhow::Result<()> {
    budget::start(cx);
    let cat = st.catalog.clone().expect("snapshot");
    let p0 = pt.part_name(0);
    if !attached(pt, c, &cat).await? {
        // Its statements are catalog-only (no scan, no build): the worst case is the wait
        // for its locks.
        budget::fits(
            pt,
            cx,
            Some(budget::exclusive_wait(pt)),
            "the window transaction",
        )?;
        let hi = st.hi.expect("prepared");
        let t = cat.qualified();
        // Every lock the statements need, taken up front (`exclusive`): ACCESS EXCLUSIVE on
        // the table (DROP TRIGGER/INDEX, RENAME, ATTACH PARTITION of it as p0, the FKs'
        // triggers on the referenced side) and on each referencing table (DROP CONSTRAINT
        // of an FK; ADD FOREIGN KEY NOT VALID needs SHARE ROW EXCLUSIVE, a weaker mode of
        // the same lock). The rest is on relations this transaction creates (the parent,
        // the premade partitions: ATTACH needs SHARE UPDATE EXCLUSIVE on the parent) or on
        // the table's own indexes (ALTER INDEX RENAME: SHARE UPDATE EXCLUSIVE on the index,
        // which only conflicts with sessions that hold a lock on the table too).
        let rels = lock_set(&cat, std::slice::from_ref(&t));
        let mut sql = fks_sql(&cat, false);
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
        // `premake` partitions, or more when the writes are already that close to `hi`.
        let high = super::online::headroom::high(pt, c, &t).await?;
        let mut parts = vec![];
        for k in 1..=super::online::headroom::attach_count(pt, hi, high) {
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
        let x = match exclusive(pt, cx, c, &rels, &sql, "the window transaction").await {
            Ok(x) => x,
            // A killed ferry's session may have committed this window meanwhile.
            Err(_) if attached(pt, c, &cat).await? => Exclusive {
                held: std::time::Duration::ZERO,
                waited: std::time::Duration::ZERO,
                attempt: 0,
            },
            Err(e) => return Err(e),
        };
        st.window_ms = Some(x.held.as_millis() as u64);
        cx.log(
            Level::Info,
            format!(
                "window transaction: {} ms with its locks held ({} locks taken up front at attempt {}, waited {} ms; {} attached as {p0}, {} partitions made, {} FKs re-pointed NOT VALID)",
                x.held.as_millis(),
                rels.len(),
                x.attempt,
                x.waited.as_millis(),
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

async fn attached(
    pt: &PartitionTable,
    c: &Client,
    cat: &super::catalog::Catalog,
) -> anyhow::Result<bool> {
    Ok(c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_inherits WHERE inhparent = to_regclass($1) AND inhrelid = to_regclass($2))",
            &[&cat.qualified(), &pt.q(&pt.part_name(0))],
        )
        .await
        .map_err(pgerr)?
        .get(0))
}
