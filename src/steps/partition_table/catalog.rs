//! What `partition_table` knows about the table, read from the catalog (pg_class,
//! pg_attribute, pg_index, pg_constraint, pg_trigger, pg_sequence) — never from a list
//! of HAPI's names. The snapshot is taken once, before anything changes, and kept in the
//! step's checkpoint: after the swap the catalog no longer shows the original shape, and
//! rollback and verify need it (names, definitions, actions, deferrability).

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use super::pgerr;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Column {
    pub name: String,
    /// `attstattarget`; -1 is the default.
    pub stattarget: i32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Index {
    pub name: String,
    /// `pg_get_indexdef` from ` USING ` on: method, columns, INCLUDE, WITH, WHERE.
    pub tail: String,
    pub unique: bool,
    pub primary: bool,
    /// The constraint this index backs (`p` / `u` / `x`), with its definition.
    pub constraint: Option<(char, String)>,
    /// Key columns (without INCLUDE); empty when a key is an expression.
    pub key_cols: Vec<String>,
    pub has_expr: bool,
    pub partial: bool,
}

impl Index {
    /// A unique index that PostgreSQL cannot put on a table partitioned by `key`.
    pub fn needs_guard(&self, key: &str) -> bool {
        self.unique && !self.key_cols.iter().any(|c| c == key)
    }
}

/// A foreign key of another table that references ours.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Fk {
    pub name: String,
    /// The referencing table, as `regclass` text (schema-qualified when needed).
    pub on: String,
    /// `pg_get_constraintdef`, without any ` NOT VALID`: columns, actions, deferrability.
    pub def: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Catalog {
    pub schema: String,
    pub table: String,
    pub owner: String,
    pub columns: Vec<Column>,
    /// `reloptions` as `name=value` (autovacuum_vacuum_scale_factor=0.01).
    pub reloptions: Vec<String>,
    pub indexes: Vec<Index>,
    pub incoming: Vec<Fk>,
    /// Outgoing FKs, CHECK and exclusion constraints: not handled (a refusal names them).
    pub other_constraints: Vec<String>,
    /// User triggers (not ferry's): a refusal names them.
    pub triggers: Vec<String>,
    /// `GRANT … TO …` pairs: (privilege, grantee or PUBLIC).
    pub grants: Vec<(String, String)>,
    /// Every sequence of the schema with its last value: untouched, checked by verify.
    pub sequences: Vec<(String, i64)>,
    pub bytes: i64,
    pub rows: i64,
    pub max_key: Option<i64>,
}

impl Catalog {
    pub fn qualified(&self) -> String {
        format!(
            "{}.{}",
            super::quote_ident(&self.schema),
            super::quote_ident(&self.table)
        )
    }
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
    pub fn pk(&self) -> Option<&Index> {
        self.indexes.iter().find(|i| i.primary)
    }
}

/// `relkind` of `schema.table`, None when missing.
pub async fn relkind(c: &Client, schema: &str, table: &str) -> anyhow::Result<Option<char>> {
    let row = c
        .query_opt(
            "SELECT c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&schema, &table],
        )
        .await
        .map_err(pgerr)?;
    Ok(row.and_then(|r| r.get::<_, String>(0).chars().next()))
}

/// Reads everything about `schema.table` the conversion must keep. `exact`: `rows` is a
/// `count(*)` (a scan of the table); otherwise the planner's `reltuples` (what the budget
/// and the progress need, read inside the window without a scan), unless the table was
/// never analyzed.
pub async fn read(
    c: &Client,
    schema: &str,
    table: &str,
    key: &str,
    exact: bool,
) -> anyhow::Result<Catalog> {
    let Some(row) = c
        .query_opt(
            "SELECT c.oid, pg_get_userbyid(c.relowner), coalesce(c.reloptions, '{}'), \
             pg_total_relation_size(c.oid), greatest(c.reltuples, 0)::bigint \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&schema, &table],
        )
        .await
        .map_err(pgerr)?
    else {
        bail!(
            "table {schema}.{table} does not exist: check `table` (and the search_path's schema)"
        );
    };
    let oid: u32 = row.get(0);
    let owner: String = row.get(1);
    let reloptions: Vec<String> = row.get(2);
    let bytes: i64 = row.get(3);
    let q = |sql: &'static str| async move { c.query(sql, &[&oid]).await.map_err(pgerr) };
    let columns = q(
        "SELECT attname::text, attstattarget::int FROM pg_attribute \
         WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
    )
    .await?
    .iter()
    .map(|r| Column {
        name: r.get(0),
        stattarget: r.get(1),
    })
    .collect();
    let mut indexes = vec![];
    for r in q("SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid), i.indisunique, \
         i.indisprimary, con.contype::text, pg_get_constraintdef(con.oid), \
         i.indexprs IS NOT NULL, i.indpred IS NOT NULL, \
         ARRAY(SELECT a.attname::text FROM unnest(i.indkey[:i.indnkeyatts - 1]) WITH ORDINALITY u(k, o) \
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = u.k ORDER BY u.o), \
         (SELECT relname::text FROM pg_class WHERE oid = i.indexrelid) \
         FROM pg_index i LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid \
         WHERE i.indrelid = $1 AND (SELECT relname::text FROM pg_class WHERE oid = i.indexrelid) NOT LIKE 'ferry%' \
         ORDER BY i.indisprimary DESC, 10")
    .await?
    {
        let def: String = r.get(1);
        let tail = def
            .split_once(" USING ")
            .map(|(_, t)| t.to_owned())
            .with_context(|| format!("unexpected index definition {def}"))?;
        let contype: Option<String> = r.get(4);
        indexes.push(Index {
            name: r.get(9),
            tail,
            unique: r.get(2),
            primary: r.get(3),
            constraint: contype.and_then(|t| t.chars().next()).map(|t| (t, r.get(5))),
            key_cols: r.get(8),
            has_expr: r.get(6),
            partial: r.get(7),
        });
    }
    let incoming = q("SELECT conname::text, conrelid::regclass::text, \
         replace(pg_get_constraintdef(oid), ' NOT VALID', '') FROM pg_constraint \
         WHERE contype = 'f' AND confrelid = $1 ORDER BY conrelid::regclass::text, conname")
    .await?
    .iter()
    .map(|r| Fk {
        name: r.get(0),
        on: r.get(1),
        def: r.get(2),
    })
    .collect();
    let other_constraints = q(
        "SELECT conname::text || ' (' || pg_get_constraintdef(oid) || ')' \
         FROM pg_constraint WHERE conrelid = $1 AND contype IN ('f', 'c', 'x', 't') \
         AND conname::text NOT LIKE '%ferry%' ORDER BY conname",
    )
    .await?
    .iter()
    .map(|r| r.get(0))
    .collect();
    let triggers = q(
        "SELECT tgname::text FROM pg_trigger WHERE tgrelid = $1 AND NOT tgisinternal \
         AND tgname::text NOT LIKE 'ferry%' ORDER BY tgname",
    )
    .await?
    .iter()
    .map(|r| r.get(0))
    .collect();
    let grants = q(
        "SELECT a.privilege_type, coalesce(quote_ident(r.rolname), 'PUBLIC') \
         FROM pg_class c, aclexplode(c.relacl) a LEFT JOIN pg_roles r ON r.oid = a.grantee \
         WHERE c.oid = $1 AND a.grantee <> c.relowner ORDER BY 2, 1",
    )
    .await?
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect();
    let sequences = c
        .query(
            "SELECT s.sequencename::text, coalesce(s.last_value, 0) FROM pg_sequences s \
             WHERE s.schemaname = $1 ORDER BY 1",
            &[&schema],
        )
        .await
        .map_err(pgerr)?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let estimate: i64 = row.get(4);
    let stats = format!(
        "SELECT {}, max({k})::text FROM {}.{}",
        if exact || estimate <= 0 {
            "count(*)".to_owned()
        } else {
            format!("{estimate}::bigint")
        },
        super::quote_ident(schema),
        super::quote_ident(table),
        k = super::quote_ident(key)
    );
    let (rows, max_key) = match c.query_one(stats.as_str(), &[]).await {
        Ok(r) => (
            r.get::<_, i64>(0),
            r.get::<_, Option<String>>(1)
                .and_then(|m| m.parse::<i64>().ok()),
        ),
        Err(e) => bail!("cannot read {table}.{key}: {}", pgerr(e)),
    };
    Ok(Catalog {
        schema: schema.into(),
        table: table.into(),
        owner,
        columns,
        reloptions,
        indexes,
        incoming,
        other_constraints,
        triggers,
        grants,
        sequences,
        bytes,
        rows,
        max_key,
    })
}

/// The incoming FKs as they are now (names, referencing table, definition).
pub async fn incoming(c: &Client, qualified: &str) -> anyhow::Result<Vec<Fk>> {
    Ok(c.query(
        "SELECT conname::text, conrelid::regclass::text, \
             replace(pg_get_constraintdef(oid), ' NOT VALID', '') FROM pg_constraint \
             WHERE contype = 'f' AND confrelid = to_regclass($1) \
             ORDER BY conrelid::regclass::text, conname",
        &[&qualified],
    )
    .await
    .map_err(pgerr)?
    .iter()
    .map(|r| Fk {
        name: r.get(0),
        on: r.get(1),
        def: r.get(2),
    })
    .collect())
}
