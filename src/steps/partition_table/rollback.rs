//! Rollback from any phase, and the approval-gated cleanup that ends it.
//!
//! The state is read from the catalog, not trusted from the checkpoint (a kill -9 can
//! land between a commit and its checkpoint): the table still plain → drop the twin and
//! every ferry object; swapped (copy) → the old table gets every key the change capture
//! saw (deleted, then re-inserted from the new table's current rows), takes its name,
//! indexes and FKs back; attached → detach the first partition, drop its CHECK, move
//! every row of the other partitions into it, restore names, the unique constraint and
//! FKs. Each of those is one transaction that takes every lock it needs up front (the
//! table, ferry's tables HAPI writes through triggers, every referencing table) under the
//! lock discipline of `ddl::locked`, so it never queues behind HAPI's transactions one
//! relation at a time; FKs come back `NOT VALID` and are validated after it. After cleanup dropped `<table>_old`, rollback is refused: nothing to return to.

use anyhow::bail;
use tokio_postgres::Client;

use super::attach::{p0_index, substitute};
use super::catalog::{self, Catalog};
use super::copy::{CHANGES_TRIGGER, old_index};
use super::ddl::{fks_sql, lock_set, locked, rename_index_sql};
use super::{PartitionTable, State, StepCx, guard, pgerr, quote_ident};
use crate::report::Level;

async fn exists(c: &Client, qualified: &str) -> anyhow::Result<bool> {
    Ok(
        c.query_one("SELECT to_regclass($1) IS NOT NULL", &[&qualified])
            .await
            .map_err(pgerr)?
            .get(0),
    )
}

/// Drops the change capture (table, trigger on `on` when given, function).
fn drop_changes_sql(pt: &PartitionTable, on: Option<&str>) -> String {
    let mut sql = String::new();
    if let Some(on) = on {
        sql.push_str(&format!(
            "DROP TRIGGER IF EXISTS {CHANGES_TRIGGER} ON {on};\n"
        ));
    }
    sql.push_str(&format!(
        "DROP TABLE IF EXISTS {};\nDROP FUNCTION IF EXISTS {}();\n",
        pt.q(&pt.names().changes),
        pt.q(&format!("{}_ferry_changes_fn", pt.table))
    ));
    sql
}

/// The relations of `names` that exist, schema-qualified, in that order.
async fn existing(
    pt: &PartitionTable,
    c: &Client,
    names: &[String],
) -> anyhow::Result<Vec<String>> {
    let mut v = vec![];
    for n in names {
        let q = pt.q(n);
        if exists(c, &q).await? {
            v.push(q);
        }
    }
    Ok(v)
}

pub async fn run(pt: &PartitionTable, cx: &StepCx, c: &Client, st: &State) -> anyhow::Result<()> {
    let Some(cat) = &st.catalog else {
        return Ok(()); // nothing was changed before the snapshot
    };
    let names = pt.names();
    let t = cat.qualified();
    let kind = catalog::relkind(c, &pt.schema, &pt.table).await?;
    // ferry's tables that HAPI's transactions write through its triggers (the guards, the
    // change capture): locked up front with the table, like everything the statements
    // touch (`ddl::locked`), so no lock is queued for behind HAPI one at a time.
    let mut ferry_tables: Vec<String> = guard::guarded(pt, cat)
        .into_iter()
        .map(|(_, g)| g)
        .collect();
    ferry_tables.push(names.changes.clone());
    let (sql, rels) = match kind {
        None => bail!(
            "{t} does not exist: rollback cannot tell where its rows are; look for {} or {} and restore by hand",
            names.old,
            pt.part_name(0)
        ),
        Some('p') if !pt.attach() => {
            let old = pt.q(&names.old);
            if !exists(c, &old).await? {
                bail!(
                    "{old} was dropped by the cleanup step: the conversion of {t} can no longer be rolled back (the partitioned table stays, with all rows)"
                );
            }
            let ch = pt.q(&names.changes);
            let k = quote_ident(&pt.key);
            let mut sql = fks_sql(cat, false);
            sql.push_str(&guard::drop_trigger_sql(&t));
            sql.push_str(&format!(
                "DROP TRIGGER IF EXISTS {CHANGES_TRIGGER} ON {t};\n\
                 DELETE FROM {old} WHERE {k} IN (SELECT {k} FROM {ch});\n\
                 INSERT INTO {old} SELECT * FROM {t} WHERE {k} IN (SELECT {k} FROM {ch});\n\
                 DROP TABLE {t};\n\
                 ALTER TABLE {old} RENAME TO {};\n",
                quote_ident(&pt.table)
            ));
            for (n, ix) in cat.indexes.iter().enumerate() {
                sql.push_str(&rename_index_sql(pt, &t, ix, &old_index(n), &ix.name));
            }
            let mut first = vec![t.clone(), old];
            first.extend(existing(pt, c, &ferry_tables).await?);
            (sql, lock_set(cat, &first))
        }
        Some('p') => {
            let p0 = pt.q(&pt.part_name(0));
            let mut sql = fks_sql(cat, false);
            sql.push_str(&guard::drop_trigger_sql(&t));
            sql.push_str(&format!(
                "ALTER TABLE {t} DETACH PARTITION {p0};\n\
                 ALTER TABLE {p0} DROP CONSTRAINT IF EXISTS {};\n\
                 INSERT INTO {p0} SELECT * FROM {t};\n\
                 DROP TABLE {t};\n\
                 ALTER TABLE {p0} RENAME TO {};\n",
                quote_ident(&names.check),
                quote_ident(&pt.table)
            ));
            for (n, ix) in cat.indexes.iter().enumerate() {
                if ix.needs_guard(&pt.key) {
                    sql.push_str(&format!("DROP INDEX IF EXISTS {};\n", pt.q(&substitute(n))));
                    sql.push_str(&unique_sql(&t, ix));
                } else {
                    sql.push_str(&rename_index_sql(pt, &t, ix, &p0_index(n), &ix.name));
                }
            }
            // LOCK on the parent recurses into p0 and the other partitions.
            let mut first = vec![t.clone()];
            first.extend(existing(pt, c, &ferry_tables).await?);
            (sql, lock_set(cat, &first))
        }
        Some(_) => {
            // Not converted (or already rolled back): drop what ferry made, if anything;
            // nothing there needs no lock (a refused or lock-starved run undoes instantly).
            if !ferry_objects(pt, c, &t).await? {
                return Ok(());
            }
            let twin = pt.q(&names.twin);
            let mut sql = format!("DROP TABLE IF EXISTS {twin};\n");
            sql.push_str(&format!(
                "ALTER TABLE {t} DROP CONSTRAINT IF EXISTS {};\n",
                quote_ident(&names.check)
            ));
            for (n, _) in cat.indexes.iter().enumerate() {
                sql.push_str(&format!("DROP INDEX IF EXISTS {};\n", pt.q(&substitute(n))));
            }
            sql.push_str(&guard::drop_sql(pt, cat, &t));
            sql.push_str(&drop_changes_sql(pt, Some(&t)));
            sql.push_str(&super::online::drop_capture_sql(pt, &t));
            // The table, the twin and the capture's log (HAPI writes it through the
            // trigger); no referencing table is touched before the swap.
            let mut first = vec![t.clone()];
            ferry_tables.extend([names.twin.clone(), format!("{}_ferry_log", pt.table)]);
            first.extend(existing(pt, c, &ferry_tables).await?);
            locked(
                pt,
                cx,
                c,
                &first,
                "ACCESS EXCLUSIVE",
                &sql,
                "rolling back (before the swap)",
            )
            .await?;
            return Ok(());
        }
    };
    let mut sql = sql;
    sql.push_str(&fks_sql(cat, true));
    sql.push_str(&guard::drop_sql(pt, cat, &t));
    sql.push_str(&drop_changes_sql(pt, None));
    let x = locked(
        pt,
        cx,
        c,
        &rels,
        "ACCESS EXCLUSIVE",
        &sql,
        "rolling back the conversion",
    )
    .await?;
    cx.log(
        Level::Info,
        format!(
            "{t} restored in {} ms with its locks held ({} locks taken up front at attempt {}, waited {} ms); validating its FKs",
            x.held.as_millis(),
            rels.len(),
            x.attempt,
            x.waited.as_millis()
        ),
    );
    validate(c, cat).await
}

/// Whether any object this step makes before the window exists.
async fn ferry_objects(pt: &PartitionTable, c: &Client, t: &str) -> anyhow::Result<bool> {
    let like = format!("{}_ferry%", pt.table);
    Ok(c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
               WHERE n.nspname = $1 AND (c.relname::text LIKE $2 OR c.relname::text LIKE 'ferry\\_nu\\_%')) \
             OR EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass($3) AND conname::text LIKE $2) \
             OR EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass($3) AND tgname::text LIKE 'ferry%') \
             OR EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = $1 AND p.proname::text LIKE $2)",
            &[&pt.schema, &like, &t],
        )
        .await
        .map_err(pgerr)?
        .get(0))
}

/// Re-creates a guarded unique index or constraint on the restored table.
fn unique_sql(t: &str, ix: &catalog::Index) -> String {
    match &ix.constraint {
        Some((_, def)) => format!(
            "ALTER TABLE {t} ADD CONSTRAINT {} {def};\n",
            quote_ident(&ix.name)
        ),
        None => format!(
            "CREATE UNIQUE INDEX {} ON {t} USING {};\n",
            quote_ident(&ix.name),
            ix.tail
        ),
    }
}

/// `VALIDATE CONSTRAINT` for every incoming FK that is not yet validated.
pub async fn validate(c: &Client, cat: &Catalog) -> anyhow::Result<()> {
    for fk in &cat.incoming {
        let valid: Option<bool> = c
            .query_opt(
                "SELECT convalidated FROM pg_constraint WHERE conrelid = to_regclass($1) AND conname = $2",
                &[&fk.on, &fk.name],
            )
            .await
            .map_err(pgerr)?
            .map(|r| r.get(0));
        if valid == Some(false) {
            c.batch_execute(&format!(
                "ALTER TABLE {} VALIDATE CONSTRAINT {}",
                fk.on,
                quote_ident(&fk.name)
            ))
            .await
            .map_err(|e| anyhow::anyhow!("validating {} on {}: {}", fk.name, fk.on, pgerr(e)))?;
        }
    }
    Ok(())
}

/// `stage = "cleanup"`: drops `<table>_old` and the change capture (copy), or the now
/// redundant range CHECK (attach). Irreversible: the conversion's rollback refuses after it.
pub async fn cleanup(pt: &PartitionTable, cx: &StepCx, c: &Client) -> anyhow::Result<()> {
    if catalog::relkind(c, &pt.schema, &pt.table).await? != Some('p') {
        bail!(
            "{}.{} is not partitioned: there is no conversion to clean up",
            pt.schema,
            pt.table
        );
    }
    let t = pt.q(&pt.table);
    let mut sql = drop_changes_sql(pt, Some(&t));
    sql.push_str(&format!(
        "DROP TABLE IF EXISTS {};\n",
        pt.q(&pt.names().old)
    ));
    let p0 = pt.q(&pt.part_name(0));
    if exists(c, &p0).await? {
        sql.push_str(&format!(
            "ALTER TABLE {p0} DROP CONSTRAINT IF EXISTS {};\n",
            quote_ident(&pt.names().check)
        ));
    }
    // The table (its partitions: DROP TRIGGER recurses), the change capture HAPI writes,
    // and the old table, all up front.
    let mut rels = vec![t];
    rels.extend(existing(pt, c, &[pt.names().changes, pt.names().old]).await?);
    let x = locked(pt, cx, c, &rels, "ACCESS EXCLUSIVE", &sql, "the cleanup").await?;
    cx.log(
        Level::Info,
        format!(
            "cleanup: {} ms with its locks held ({} locks taken up front at attempt {}, waited {} ms)",
            x.held.as_millis(),
            rels.len(),
            x.attempt,
            x.waited.as_millis()
        ),
    );
    Ok(())
}

pub async fn verify_cleanup(pt: &PartitionTable, c: &Client) -> anyhow::Result<()> {
    for name in [pt.names().old, pt.names().changes] {
        if exists(c, &pt.q(&name)).await? {
            bail!("{name} is still there after the cleanup");
        }
    }
    Ok(())
}
