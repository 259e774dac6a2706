//! After the conversion: FK validation (online, HAPI may serve) and the verification —
//! the table is partitioned; per partition and in total, row counts and an
//! order-independent checksum of every column equal the old table (copy; keys changed
//! since the swap are left out of the comparison; in the window only the totals are
//! counted, the checksums wait for the validate stage, which runs while HAPI serves); the FK set (names, columns, actions,
//! deferrability) equals the snapshot; every original index name is on the new table;
//! storage parameters and statistics targets kept; sequences untouched; the guard holds
//! one row per table row; `EXPLAIN` of a key lookup touches exactly one partition.

use anyhow::{bail, ensure};
use tokio_postgres::Client;

use super::catalog::{self, Catalog};
use super::{PartitionTable, State, StepCx, guard, pgerr, quote_ident};
use crate::report::Level;

pub async fn validate_fks(pt: &PartitionTable, cx: &StepCx, c: &Client) -> anyhow::Result<()> {
    let t = pt.q(&pt.table);
    if catalog::relkind(c, &pt.schema, &pt.table).await? != Some('p') {
        bail!("{t} is not partitioned: nothing to validate (run the conversion first)");
    }
    // The offline copy left ANALYZE out of the window: done first here, HAPI serving (the
    // online copy and a resumed run already have the parent's statistics).
    let no_stats: bool = c
        .query_one(
            "SELECT NOT EXISTS (SELECT 1 FROM pg_stats WHERE schemaname = $1 AND tablename = $2)",
            &[&pt.schema, &pt.table],
        )
        .await
        .map_err(pgerr)?
        .get(0);
    if no_stats && copied(pt, c).await? {
        super::twin::analyze(cx, c, &t).await?;
    }
    let fks = catalog::incoming(c, &t).await?;
    let cat = Catalog {
        incoming: fks,
        ..empty(pt)
    };
    // The window budget: each VALIDATE scans its referencing table; the rate is sampled on
    // the largest of them.
    super::budget::start(cx);
    if pt.window.is_some() {
        let mut sizes = vec![];
        for fk in &cat.incoming {
            sizes.push((super::budget::heap_bytes(c, &fk.on).await?, fk.on.clone()));
        }
        sizes.sort();
        if let Some((_, big)) = sizes.last() {
            let rate = super::budget::scan_rate(pt, c, big).await?;
            let total = sizes.iter().map(|(b, _)| b).sum();
            super::budget::fits(
                pt,
                cx,
                super::budget::scan(total, rate),
                "the FK validations",
            )?;
        }
    }
    let t0 = std::time::Instant::now();
    super::rollback::validate(c, &cat).await?;
    cx.log(
        Level::Info,
        format!(
            "{} FKs into {t} validated in {} ms",
            cat.incoming.len(),
            t0.elapsed().as_millis()
        ),
    );
    Ok(())
}

fn empty(pt: &PartitionTable) -> Catalog {
    Catalog {
        schema: pt.schema.clone(),
        table: pt.table.clone(),
        owner: String::new(),
        columns: vec![],
        reloptions: vec![],
        indexes: vec![],
        incoming: vec![],
        other_constraints: vec![],
        triggers: vec![],
        grants: vec![],
        sequences: vec![],
        bytes: 0,
        rows: 0,
        max_key: None,
    }
}

async fn sum(c: &Client, rel: &str, filter: &str) -> anyhow::Result<(i64, String)> {
    let r = c
        .query_one(
            &format!("SELECT count(*), coalesce(sum(hashtextextended(x::text, 0)::numeric), 0)::text FROM {rel} x WHERE {filter}"),
            &[],
        )
        .await
        .map_err(pgerr)?;
    Ok((r.get(0), r.get(1)))
}

pub async fn run(
    pt: &PartitionTable,
    cx: &StepCx,
    c: &Client,
    st: &State,
    validated: bool,
) -> anyhow::Result<()> {
    let t = pt.q(&pt.table);
    ensure!(
        catalog::relkind(c, &pt.schema, &pt.table).await? == Some('p'),
        "{t} is not partitioned after the conversion"
    );
    let now = catalog::incoming(c, &t).await?;
    if validated {
        let open: i64 = c
            .query_one("SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND confrelid = to_regclass($1) AND NOT convalidated", &[&t])
            .await
            .map_err(pgerr)?
            .get(0);
        ensure!(open == 0, "{open} FK(s) into {t} are still NOT VALID");
    }
    let k = quote_ident(&pt.key);
    let parts: Vec<(String, String)> = c
        .query(
            "SELECT c.relname::text, pg_get_partition_constraintdef(c.oid) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass($1) ORDER BY 1",
            &[&t],
        )
        .await
        .map_err(pgerr)?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let plan: serde_json::Value = c
        .query_one(
            &format!("EXPLAIN (FORMAT JSON) SELECT 1 FROM {t} WHERE {k} = 1"),
            &[],
        )
        .await
        .map_err(pgerr)?
        .get(0);
    let scanned = plan.to_string().matches("\"Relation Name\"").count();
    ensure!(
        scanned == 1,
        "a lookup by {} on {t} scans {scanned} partitions, not one: {plan}",
        pt.key
    );
    let Some(cat) = &st.catalog else {
        // stage = "validate": the snapshot is the conversion step's; after a copy, the rows
        // are compared with `<table>_old` here, while HAPI serves.
        if validated && copied(pt, c).await? {
            return rows_match(pt, cx, c, &parts).await;
        }
        return Ok(());
    };
    let mut want = cat.incoming.clone();
    let mut have = now;
    want.sort_by(|a, b| (&a.on, &a.name).cmp(&(&b.on, &b.name)));
    have.sort_by(|a, b| (&a.on, &a.name).cmp(&(&b.on, &b.name)));
    ensure!(
        want == have,
        "the FKs into {t} differ from before the conversion: before {want:?}, now {have:?}"
    );
    for ix in &cat.indexes {
        let on: Option<String> = c
            .query_opt(
                "SELECT indrelid::regclass::text FROM pg_index WHERE indexrelid = to_regclass($1)",
                &[&pt.q(&ix.name)],
            )
            .await
            .map_err(pgerr)?
            .map(|r| r.get(0));
        ensure!(
            on.as_deref()
                .is_some_and(|o| o.trim_matches('"').ends_with(&pt.table)),
            "index {} is not on {t} after the conversion (on {on:?})",
            ix.name
        );
    }
    for (name, _) in &parts {
        let opts: Vec<String> = c
            .query_one(
                "SELECT coalesce(reloptions, '{}') FROM pg_class WHERE oid = to_regclass($1)",
                &[&pt.q(name)],
            )
            .await
            .map_err(pgerr)?
            .get(0);
        ensure!(
            opts == cat.reloptions,
            "partition {name} has storage parameters {opts:?}, the table had {:?}",
            cat.reloptions
        );
    }
    for col in cat.columns.iter().filter(|c| c.stattarget >= 0) {
        let n: i32 = c
            .query_one("SELECT attstattarget::int FROM pg_attribute WHERE attrelid = to_regclass($1) AND attname = $2", &[&t, &col.name])
            .await
            .map_err(pgerr)?
            .get(0);
        ensure!(
            n == col.stattarget,
            "statistics target of {t}.{} is {n}, was {}",
            col.name,
            col.stattarget
        );
    }
    for (seq, last) in &cat.sequences {
        let now: Option<i64> = c
            .query_opt("SELECT coalesce(last_value, 0) FROM pg_sequences WHERE schemaname = $1 AND sequencename = $2", &[&pt.schema, seq])
            .await
            .map_err(pgerr)?
            .map(|r| r.get(0));
        ensure!(
            now.is_some_and(|n| n >= *last),
            "sequence {seq} went from {last} to {now:?}"
        );
    }
    // One snapshot for every count and checksum below: HAPI may write while this runs
    // (online, or after the window), and two statements must see the same rows.
    c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(pgerr)?;
    let r = compare(pt, cx, c, cat, (&t, &k), &parts, validated).await;
    let _ = c.batch_execute("COMMIT").await;
    r
}

async fn compare(
    pt: &PartitionTable,
    cx: &StepCx,
    c: &Client,
    cat: &Catalog,
    (t, k): (&str, &str),
    parts: &[(String, String)],
    validated: bool,
) -> anyhow::Result<()> {
    let (t, k) = (t.to_owned(), k.to_owned());
    // Counts only (the checksums of every row are the validate stage's, outside the window).
    let total = count(c, &t, "true").await?;
    for (ix, g) in guard::guarded(pt, cat) {
        let n = count(c, &pt.q(&g), "true").await?;
        ensure!(
            n == total,
            "guard {g} of {} holds {n} rows for {total} in {t}",
            ix.name
        );
    }
    if pt.attach() {
        return Ok(());
    }
    if validated {
        return rows_match_in(pt, cx, c, parts).await; // already in compare's snapshot
    }
    // In the window (`stage = "convert"`), only the totals: the per-partition checksums
    // scan both tables once per partition and wait for `stage = "validate"`, which runs
    // while HAPI serves (keys written since the swap are left out of the comparison).
    let same = format!("{k} NOT IN (SELECT {k} FROM {})", pt.q(&pt.names().changes));
    let (a, b) = (
        count(c, &pt.q(&pt.names().old), &same).await?,
        count(c, &t, &same).await?,
    );
    ensure!(
        a == b,
        "{t} holds {b} rows, {} {a}: the copy is incomplete",
        pt.names().old
    );
    cx.log(
        Level::Info,
        format!(
            "{b} rows in {t} as in {}; checksums per partition are compared by the validate stage",
            pt.names().old
        ),
    );
    Ok(())
}

/// Whether the table came by copy: `<table>_old` and the change capture are there.
async fn copied(pt: &PartitionTable, c: &Client) -> anyhow::Result<bool> {
    let n = pt.names();
    Ok(c.query_one(
        "SELECT to_regclass($1) IS NOT NULL AND to_regclass($2) IS NOT NULL",
        &[&pt.q(&n.old), &pt.q(&n.changes)],
    )
    .await
    .map_err(pgerr)?
    .get(0))
}

async fn count(c: &Client, rel: &str, filter: &str) -> anyhow::Result<i64> {
    Ok(
        c.query_one(&format!("SELECT count(*) FROM {rel} WHERE {filter}"), &[])
            .await
            .map_err(pgerr)?
            .get(0),
    )
}

/// copy: per partition and in total, row counts and checksums equal `<table>_old`'s, keys
/// changed since the swap (the change capture) left out.
async fn rows_match(
    pt: &PartitionTable,
    cx: &StepCx,
    c: &Client,
    parts: &[(String, String)],
) -> anyhow::Result<()> {
    // One snapshot for every sum: HAPI writes on; a PUT committed between the old table's
    // sum and the partition's would add its key to the change capture in between, leaving
    // the row in one sum and out of the other.
    c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(pgerr)?;
    let r = rows_match_in(pt, cx, c, parts).await;
    crate::infra::postgres::rollback(c).await;
    r
}

async fn rows_match_in(
    pt: &PartitionTable,
    cx: &StepCx,
    c: &Client,
    parts: &[(String, String)],
) -> anyhow::Result<()> {
    let t = pt.q(&pt.table);
    let k = quote_ident(&pt.key);
    let old = pt.q(&pt.names().old);
    let ch = pt.q(&pt.names().changes);
    let same = format!("{k} NOT IN (SELECT {k} FROM {ch})");
    for (name, bound) in parts {
        let a = sum(c, &old, &format!("{bound} AND {same}")).await?;
        let b = sum(c, &pt.q(name), &same).await?;
        ensure!(
            a == b,
            "partition {name}: {} rows (checksum {}) but the old table has {} (checksum {}) for its bounds",
            b.0,
            b.1,
            a.0,
            a.1
        );
    }
    let a = sum(c, &old, &same).await?;
    let b = sum(c, &t, &same).await?;
    ensure!(
        a == b,
        "{t} holds {} rows (checksum {}), {} {} (checksum {})",
        b.0,
        b.1,
        pt.names().old,
        a.0,
        a.1
    );
    cx.log(
        Level::Info,
        format!(
            "verified: {} rows in {} partitions, checksums equal to {}",
            b.0,
            parts.len(),
            pt.names().old
        ),
    );
    Ok(())
}
