//! PostgreSQL connections from a target's `[postgres.NAME]` entry. Plain TCP (no TLS yet: the
//! deployments ferry drives reach PostgreSQL over a private network or loopback).

use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, anyhow};
use tokio_postgres::{Client, Config, NoTls};

/// Connects; the password comes from the caller (read from env/file at use), never the URL.
pub async fn connect(url: &str, password: Option<&str>) -> anyhow::Result<Client> {
    let mut cfg = Config::from_str(url).with_context(|| format!("invalid PostgreSQL URL {url}"))?;
    if let Some(p) = password {
        cfg.password(p);
    }
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(Duration::from_secs(10));
    }
    cfg.application_name("ferry");
    let (client, conn) = cfg
        .connect(NoTls)
        .await
        .map_err(|e| anyhow!("cannot connect to {url}: {}", describe(&e)))?;
    tokio::spawn(async move {
        // Errors surface on the client's next query; nothing to do here.
        let _ = conn.await;
    });
    Ok(client)
}

/// The server's own message (e.g. "password authentication failed for user …") when there
/// is one, else the client error.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s = format!("{s}: {inner}");
                src = inner.source();
            }
            s
        }
    }
}

/// Runs a query that must return a single boolean (checks, `done_if`, `wait … sql`).
pub async fn query_bool(
    client: &impl tokio_postgres::GenericClient,
    sql: &str,
) -> anyhow::Result<bool> {
    let row = client
        .query_opt(sql, &[])
        .await
        .map_err(|e| anyhow!("query failed: {}", describe(&e)))?
        .ok_or_else(|| anyhow!("query returned no row (it must return one boolean)"))?;
    row.try_get::<_, bool>(0).map_err(|_| {
        anyhow!("query must return one boolean column, e.g. `SELECT count(*) > 0 FROM …`")
    })
}

/// Runs a read-only boolean query inside a READ ONLY transaction that is always rolled back.
pub async fn query_bool_read_only(client: &mut Client, sql: &str) -> anyhow::Result<bool> {
    let tx = client
        .build_transaction()
        .read_only(true)
        .start()
        .await
        .map_err(|e| anyhow!("cannot start a read-only transaction: {}", describe(&e)))?;
    let r = query_bool(&tx, sql).await;
    let _ = tx.rollback().await;
    r
}

pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}
