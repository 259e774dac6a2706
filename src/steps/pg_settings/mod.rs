//! The pools behind HAPI, changed live: pgBouncer's pool size (`pgbouncer_pool`, pool.rs)
//! and PostgreSQL settings (`pg_setting`, setting.rs), the latter restarting the server
//! behind pgBouncer's PAUSE when a setting needs it (restart.rs).
//!
//! Shared here: pgBouncer's admin console and the arithmetic both kinds check before they
//! change anything (pgBouncer's pool + superuser_reserved_connections ≤ max_connections,
//! as `pool_capacity` states it). The admin console speaks the simple-query protocol only,
//! so nothing can be bound: every value put into an admin command is a number or a database
//! name checked to be a plain identifier ([`bouncer_name`]).

pub mod ini;
pub mod pg_info;
pub mod pool;
pub mod restart;
pub mod setting;

use std::collections::HashMap;

use anyhow::{Context, anyhow, bail};

use super::StepCx;
use crate::infra::postgres;

/// A connection to the target's pgBouncer admin console.
pub struct Bouncer {
    client: tokio_postgres::Client,
}

impl Bouncer {
    pub async fn connect(cx: &StepCx) -> anyhow::Result<Bouncer> {
        let t = cx.target()?;
        let b = t
            .pgbouncer
            .as_ref()
            .context("the target has no [pgbouncer] admin_url")?;
        let pw = t
            .secret(&b.password_env, &b.password_file)
            .map_err(|e| anyhow!(e))?;
        let client = postgres::connect(&b.admin_url, pw.as_deref())
            .await
            .context("pgBouncer admin console")?;
        Ok(Bouncer { client })
    }

    pub async fn rows(&self, q: &str) -> anyhow::Result<Vec<HashMap<String, String>>> {
        super::pool_capacity::rows(&self.client, q).await
    }

    /// An admin command (`RELOAD`, `PAUSE fhirdb`, …) that returns no rows.
    pub async fn command(&self, q: &str) -> anyhow::Result<()> {
        self.client
            .simple_query(q)
            .await
            .map(|_| ())
            .map_err(|e| anyhow!("pgBouncer `{q}`: {}", postgres::describe(&e)))
    }

    /// `SHOW CONFIG`'s value of `key`.
    pub async fn config(&self, key: &str) -> anyhow::Result<String> {
        self.rows("SHOW CONFIG")
            .await?
            .into_iter()
            .find(|r| r.get("key").map(String::as_str) == Some(key))
            .and_then(|mut r| r.remove("value"))
            .with_context(|| format!("pgBouncer's SHOW CONFIG has no {key}"))
    }

    pub async fn default_pool_size(&self) -> anyhow::Result<u32> {
        let v = self.config("default_pool_size").await?;
        v.parse()
            .with_context(|| format!("pgBouncer's default_pool_size is `{v}`"))
    }

    /// The pool pgBouncer gives `db` (`SHOW DATABASES`: its own pool_size, or the default).
    pub async fn pool_of(&self, db: &str) -> anyhow::Result<u32> {
        let dbs = self.rows("SHOW DATABASES").await?;
        let own = dbs
            .iter()
            .find(|r| r.get("name").map(String::as_str) == Some(db))
            .with_context(|| format!("pgBouncer has no database `{db}` (SHOW DATABASES)"))?
            .get("pool_size")
            .and_then(|p| p.parse().ok())
            .filter(|p: &u32| *p > 0);
        match own {
            Some(p) => Ok(p),
            None => self.default_pool_size().await,
        }
    }
}

/// A pgBouncer database name fit for an admin command: letters, digits, `_`, `-`.
pub fn bouncer_name(db: &str) -> anyhow::Result<&str> {
    if db.is_empty()
        || !db
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        bail!(
            "`{db}` cannot be named in a pgBouncer admin command (letters, digits, _ and - only)"
        );
    }
    Ok(db)
}

/// The database name of a PostgreSQL URL (`…/fhirdb?x=y` → `fhirdb`).
pub fn dbname(url: &str) -> String {
    url.rsplit('/')
        .next()
        .unwrap_or("")
        .split('?')
        .next()
        .unwrap_or("")
        .to_owned()
}

/// The pgBouncer database in front of the target's `[postgres.NAME]`.
pub fn bouncer_db(cx: &StepCx, name: &str) -> anyhow::Result<String> {
    let pg = cx.target()?.postgres(name).map_err(|e| anyhow!(e))?;
    Ok(bouncer_name(&dbname(&pg.url))?.to_owned())
}

/// (fits, "pool 30 + 3 reserved = 33 ≤ 40 max_connections").
pub fn fits(pool: u32, reserved: u32, max_connections: u32) -> (bool, String) {
    let need = u64::from(pool) + u64::from(reserved);
    let ok = need <= u64::from(max_connections);
    let op = if ok { "≤" } else { ">" };
    (
        ok,
        format!(
            "pool {pool} + {reserved} reserved = {need} {op} {max_connections} max_connections"
        ),
    )
}

/// (max_connections, superuser_reserved_connections) of the target's `[postgres.NAME]`.
pub async fn connection_limits(cx: &StepCx, name: &str) -> anyhow::Result<(u32, u32)> {
    let client = cx.postgres(name).await?;
    let row = client
        .query_one(
            "SELECT current_setting('max_connections')::int, current_setting('superuser_reserved_connections')::int",
            &[],
        )
        .await
        .map_err(|e| anyhow!("[postgres.{name}]: {}", postgres::describe(&e)))?;
    Ok((row.get::<_, i32>(0) as u32, row.get::<_, i32>(1) as u32))
}

fn fhir() -> String {
    "fhir".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_arithmetic_reads_like_the_seed() {
        assert_eq!(
            fits(30, 3, 40),
            (
                true,
                "pool 30 + 3 reserved = 33 ≤ 40 max_connections".into()
            )
        );
        assert!(!fits(30, 3, 30).0);
        assert_eq!(dbname("postgres://u@h:1/fhirdb?sslmode=disable"), "fhirdb");
        assert!(bouncer_name("fhir db").is_err());
        assert!(bouncer_name("fhirdb").is_ok());
    }
}
