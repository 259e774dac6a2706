//! The uniqueness guard: PostgreSQL cannot put a UNIQUE index on a partitioned table
//! unless it contains the partition key, and HAPI's `idx_res_type_fhir_id (res_type,
//! fhir_id)` does not. Weakening it to per-partition would let two partitions hold the
//! same client-assigned id, so each such index gets a guard table (the key columns + the
//! partition key) with a real global unique index, kept by a row trigger.
//!
//! Invariant: the trigger is installed in the same transaction that fills the guard in
//! bulk (under a SHARE ROW EXCLUSIVE lock), so no write is missed and none is counted
//! twice; the guard's unique index is named `<original>_guard`, so a duplicate's error
//! still names the original constraint (HAPI matches the name in the message).

use tokio_postgres::Client;

use super::catalog::{Catalog, Index};
use super::{PartitionTable, pgerr, quote_ident};

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
        ins.push_str(&format!(
            "INSERT INTO {} ({k}, {}) VALUES (NEW.{k}, {});\n",
            pt.q(&g),
            cols.join(", "),
            new.join(", ")
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

/// Creates and fills the guards, trigger first, in one transaction. Probes first: a
/// guard already there (a resumed run) is left as it is.
pub async fn install(pt: &PartitionTable, c: &Client, cat: &Catalog) -> anyhow::Result<()> {
    let guards = guarded(pt, cat);
    let Some((_, first)) = guards.first() else {
        return Ok(());
    };
    let exists: bool = c
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&pt.q(first)])
        .await
        .map_err(pgerr)?
        .get(0);
    if exists {
        return Ok(());
    }
    let t = cat.qualified();
    let k = quote_ident(&pt.key);
    let mut sql = format!(
        "BEGIN;\nSET LOCAL lock_timeout = {};\nLOCK TABLE {t} IN SHARE ROW EXCLUSIVE MODE;\n",
        pt.lock_timeout.get().as_millis()
    );
    for (ix, g) in &guards {
        let cols: Vec<String> = ix.key_cols.iter().map(|c| quote_ident(c)).collect();
        let cols = cols.join(", ");
        sql.push_str(&format!(
            "CREATE TABLE {g} AS SELECT {k}, {cols} FROM {t};\n\
             ALTER TABLE {g} ALTER COLUMN {k} SET NOT NULL;\n\
             CREATE UNIQUE INDEX {u} ON {g} ({cols});\n\
             CREATE UNIQUE INDEX {kx} ON {g} ({k});\n",
            g = pt.q(g),
            u = quote_ident(&format!("{}_guard", ix.name)),
            kx = quote_ident(&format!("{g}_key")),
        ));
    }
    sql.push_str(&trigger_sql(pt, cat, &t));
    sql.push_str("COMMIT;\n");
    if let Err(e) = c.batch_execute(&sql).await {
        crate::infra::postgres::rollback(c).await;
        anyhow::bail!(
            "cannot build the uniqueness guard for {}: {}",
            cat.table,
            pgerr(e)
        );
    }
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
