//! Range partitions ahead of the writes. HAPI keeps writing while an online copy runs, and
//! its keys climb past the partitions the twin was made with (from the snapshot's largest
//! key): a replayed row above them would have no partition. So before the copy, before
//! every replay round and before the swap, the twin gets every partition up to `premake`
//! intervals above the highest key that can be written next — the larger of the table's
//! current `max(key)` and the key's sequence position plus one increment (HAPI's ids come
//! from pooled blocks of 50: a JVM may hold ids up to the sequence's last value, and the
//! next block any of them fetches reaches one increment above it). The attach window
//! makes its premade partitions up to the same bound, and prepare puts the range CHECK's
//! bound above it too (an insert above the CHECK would fail until the window).

use tokio_postgres::Client;

use super::super::ddl::with_options;
use super::super::{PartitionTable, StepCx, pgerr, quote_ident};
use crate::report::Level;

/// The sequence the key's values come from: the column's own (serial, identity, or a
/// default's `nextval`), else HAPI's naming (`hfj_resource` → `seq_resource_id`).
async fn sequence(pt: &PartitionTable, c: &Client, t: &str) -> anyhow::Result<Option<String>> {
    let row = c
        .query_one(
            "SELECT coalesce(pg_get_serial_sequence($1, $2), \
               (SELECT d.refobjid::regclass::text FROM pg_depend d JOIN pg_attrdef a ON a.oid = d.objid \
                 WHERE d.classid = 'pg_attrdef'::regclass AND d.refclassid = 'pg_class'::regclass \
                   AND a.adrelid = to_regclass($1) \
                   AND a.adnum = (SELECT attnum FROM pg_attribute WHERE attrelid = to_regclass($1) AND attname = $2) LIMIT 1), \
               to_regclass($3)::text)",
            &[
                &t,
                &pt.key,
                &pt.q(&format!(
                    "seq_{}_id",
                    pt.table.strip_prefix("hfj_").unwrap_or(&pt.table)
                )),
            ],
        )
        .await
        .map_err(pgerr)?;
    Ok(row.get(0))
}

/// The highest key that may be written soon on `t`: its `max(key)`, or the sequence's
/// position plus one increment when that is higher.
pub async fn high(pt: &PartitionTable, c: &Client, t: &str) -> anyhow::Result<i64> {
    let k = quote_ident(&pt.key);
    let max: Option<i64> = c
        .query_one(&format!("SELECT max({k}) FROM {t}"), &[])
        .await
        .map_err(pgerr)?
        .get(0);
    let mut high = max.unwrap_or(0);
    if let Some(seq) = sequence(pt, c, t).await? {
        let next: Option<i64> = c
            .query_one(
                // pg_sequence by oid, not the pg_sequences view cast to regclass: that
                // resolves every sequence's name, and a schema without USAGE fails it.
                "SELECT coalesce(pg_sequence_last_value(s.seqrelid), s.seqstart) + s.seqincrement \
                   FROM pg_sequence s WHERE s.seqrelid = to_regclass($1)",
                &[&seq],
            )
            .await
            .map_err(pgerr)?
            .get(0);
        high = high.max(next.unwrap_or(0));
    }
    Ok(high)
}

/// The exclusive upper bound the range partitions must reach for keys up to `high`:
/// `premake` whole intervals above the one `high` falls in.
pub fn upper(pt: &PartitionTable, high: i64) -> i64 {
    (high.max(0) / pt.interval + 1 + pt.premake) * pt.interval
}

/// How many partitions the attach window makes above the first partition's bound `hi`:
/// `premake`, or more when the writes are already closer than that to `hi`.
pub fn attach_count(pt: &PartitionTable, hi: i64, high: i64) -> i64 {
    let need = (upper(pt, high) - hi + pt.interval - 1) / pt.interval;
    need.max(pt.premake)
}

/// Range only: gives the twin (`twin`, quoted) every missing partition up to
/// [`upper`] of the current [`high`] of the table `t` (partitions `<table>_p<n>` cover
/// `[n·interval, (n+1)·interval)`, as `twin::twin_sql` makes them).
pub async fn ensure(
    pt: &PartitionTable,
    cx: &StepCx,
    c: &Client,
    cat: &super::super::catalog::Catalog,
    twin: &str,
) -> anyhow::Result<()> {
    if pt.strategy == "hash" {
        return Ok(());
    }
    let high = high(pt, c, &cat.qualified()).await?;
    let want = upper(pt, high) / pt.interval;
    let have: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = to_regclass($1)",
            &[&twin],
        )
        .await
        .map_err(pgerr)?
        .get(0);
    if have >= want {
        return Ok(());
    }
    let mut sql = String::from("BEGIN;\n");
    for p in have..want {
        sql.push_str(&format!(
            "CREATE TABLE IF NOT EXISTS {} PARTITION OF {twin} FOR VALUES FROM ({}) TO ({}){};\n",
            pt.q(&pt.part_name(p)),
            p * pt.interval,
            (p + 1) * pt.interval,
            with_options(cat)
        ));
    }
    sql.push_str("COMMIT;\n");
    c.batch_execute(&sql)
        .await
        .map_err(|e| anyhow::anyhow!("making partitions {have}..{want} of {twin}: {}", pgerr(e)))?;
    cx.log(
        Level::Info,
        format!(
            "{} more partitions of {twin} (up to {} {}): writes reach {} {high}",
            want - have,
            pt.key,
            want * pt.interval,
            pt.key
        ),
    );
    Ok(())
}
