//! kind = "pool_capacity": can the connection pools carry `replicas` HAPI replicas? A check
//! usable as a precondition (scaling, a rolling redeploy's surge):
//!   replicas × hikari_pool_size + headroom ≤ pgBouncer's pool for the HAPI database, and
//!   pgBouncer's pool + PostgreSQL's superuser_reserved_connections ≤ max_connections,
//! with pgBouncer's numbers read live from its admin console (`SHOW DATABASES`, `SHOW
//! CONFIG`, simple-query protocol only) and PostgreSQL's from `pg_settings`. It says the
//! arithmetic the way the seed does: "3 × 5 = 15 ≤ 20, 5 headroom".

use anyhow::{Context, anyhow, bail};
use serde::Deserialize;
use tokio_postgres::SimpleQueryMessage;

use super::replicas::count::{self, Count};
use super::{Check, Reversibility, Step, StepCx};
use crate::infra::postgres;
use crate::report::{CheckStatus, Level};

pub const KEYS: &[&str] = &[
    "replicas",
    "surge",
    "hikari_pool_size",
    "headroom",
    "database",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolCapacity {
    /// How many replicas must fit: a number, or "current" (the service's replicas now).
    #[serde(deserialize_with = "count::replicas_or_current")]
    pub replicas: Count,
    /// Extra replicas that run at once during a rolling redeploy (its max_surge).
    #[serde(default = "no_surge", deserialize_with = "count::surge")]
    pub surge: Count,
    /// HikariCP's maximumPoolSize per replica (HAPI's default here: 5).
    #[serde(default = "five")]
    pub hikari_pool_size: u32,
    #[serde(default)]
    pub headroom: u32,
    /// The target's [postgres.NAME] behind pgBouncer.
    #[serde(default = "fhir")]
    pub database: String,
}

fn no_surge() -> Count {
    Count::Fixed(0)
}
fn five() -> u32 {
    5
}
fn fhir() -> String {
    "fhir".into()
}

pub struct Numbers {
    pub replicas: u32,
    pub surge: u32,
    pub pool: u32,
    pub bouncer_pool: u32,
    pub max_connections: u32,
    pub reserved: u32,
}

impl PoolCapacity {
    async fn replicas(&self, cx: &StepCx) -> anyhow::Result<u32> {
        match self.replicas.fixed()? {
            Some(n) => Ok(n),
            None => crate::steps::replicas::current_replicas(cx).await,
        }
    }

    pub async fn numbers(&self, cx: &StepCx) -> anyhow::Result<Numbers> {
        let t = cx.target()?;
        let pg = t.postgres(&self.database).map_err(|e| anyhow!(e))?;
        let dbname = pg
            .url
            .rsplit('/')
            .next()
            .unwrap_or("")
            .split('?')
            .next()
            .unwrap_or("")
            .to_owned();
        let bouncer = t
            .pgbouncer
            .as_ref()
            .context("the target has no [pgbouncer] admin_url")?;
        let bpw = t
            .secret(&bouncer.password_env, &bouncer.password_file)
            .map_err(|e| anyhow!(e))?;
        let admin = postgres::connect(&bouncer.admin_url, bpw.as_deref())
            .await
            .context("pgBouncer admin console")?;
        let dbs = rows(&admin, "SHOW DATABASES").await?;
        let config = rows(&admin, "SHOW CONFIG").await?;
        let default_pool: u32 = config
            .iter()
            .find(|r| r.get("key").map(String::as_str) == Some("default_pool_size"))
            .and_then(|r| r.get("value")?.parse().ok())
            .context("pgBouncer's SHOW CONFIG has no default_pool_size")?;
        let bouncer_pool = dbs
            .iter()
            .find(|r| r.get("name") == Some(&dbname))
            .and_then(|r| r.get("pool_size")?.parse().ok())
            .filter(|p: &u32| *p > 0)
            .unwrap_or(default_pool);
        let surge = self.surge.fixed()?.unwrap_or(0);
        let client = cx.postgres(&self.database).await?;
        let row = client
            .query_one(
                "SELECT current_setting('max_connections')::int, current_setting('superuser_reserved_connections')::int",
                &[],
            )
            .await
            .map_err(|e| anyhow!("{}", postgres::describe(&e)))?;
        Ok(Numbers {
            replicas: self.replicas(cx).await? + surge,
            surge,
            pool: self.hikari_pool_size,
            bouncer_pool,
            max_connections: row.get::<_, i32>(0) as u32,
            reserved: row.get::<_, i32>(1) as u32,
        })
    }

    /// (fits, the seed-style arithmetic).
    pub fn judge(&self, n: &Numbers) -> (bool, String) {
        // In u64: a count is at most 2 × count::MAX, but a pool size is any u32.
        let need = u64::from(n.replicas) * u64::from(n.pool);
        let fits_bouncer = need + u64::from(self.headroom) <= u64::from(n.bouncer_pool);
        let fits_pg =
            u64::from(n.bouncer_pool) + u64::from(n.reserved) <= u64::from(n.max_connections);
        let left = n.bouncer_pool as i64 - need as i64;
        let count = if n.surge > 0 {
            format!("({} + {} surge)", n.replicas - n.surge, n.surge)
        } else {
            n.replicas.to_string()
        };
        let mut s = format!(
            "{count} × {} = {need} {} {} (pgBouncer pool), {} headroom",
            n.pool,
            if need <= u64::from(n.bouncer_pool) {
                "≤"
            } else {
                ">"
            },
            n.bouncer_pool,
            left
        );
        if self.headroom > 0 {
            s += &format!(" (at least {} wanted)", self.headroom);
        }
        s += &format!(
            "; pool {} + {} reserved = {} {} {} max_connections",
            n.bouncer_pool,
            n.reserved,
            u64::from(n.bouncer_pool) + u64::from(n.reserved),
            if fits_pg { "≤" } else { ">" },
            n.max_connections
        );
        if !fits_bouncer {
            let want = need + u64::from(self.headroom);
            s += &format!(
                "; raise pgBouncer's default_pool_size to at least {want} (and max_connections to at least {})",
                want + u64::from(n.reserved)
            );
        } else if !fits_pg {
            s += &format!(
                "; raise max_connections to at least {}",
                u64::from(n.bouncer_pool) + u64::from(n.reserved)
            );
        }
        (fits_bouncer && fits_pg, s)
    }
}

pub(crate) async fn rows(
    client: &tokio_postgres::Client,
    q: &str,
) -> anyhow::Result<Vec<std::collections::HashMap<String, String>>> {
    let msgs = client
        .simple_query(q)
        .await
        .map_err(|e| anyhow!("pgBouncer `{q}`: {}", postgres::describe(&e)))?;
    Ok(msgs
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                r.columns()
                    .iter()
                    .enumerate()
                    .filter_map(|(i, c)| Some((c.name().to_owned(), r.get(i)?.to_owned())))
                    .collect(),
            ),
            _ => None,
        })
        .collect())
}

impl Step for PoolCapacity {
    fn validate(&self) -> Vec<(Option<&'static str>, String)> {
        [("replicas", &self.replicas), ("surge", &self.surge)]
            .into_iter()
            .filter_map(|(k, c)| Some((Some(k), c.error()?)))
            .collect()
    }
    fn describe(&self) -> String {
        let r = &self.replicas;
        let surge = if self.surge != Count::Fixed(0) {
            format!(" (+{} surge)", self.surge)
        } else {
            String::new()
        };
        format!(
            "pool capacity for {r} replicas{surge} × {} connections",
            self.hikari_pool_size
        )
    }

    fn reversibility(&self) -> Reversibility {
        Reversibility::NothingToUndo
    }

    async fn check(&self, cx: &StepCx) -> anyhow::Result<Vec<Check>> {
        let n = match self.numbers(cx).await {
            Ok(n) => n,
            Err(e) => return Ok(vec![Check::fail("pools", format!("{e:#}"))]),
        };
        let (ok, s) = self.judge(&n);
        Ok(vec![if ok {
            Check::pass("pools", s)
        } else if cx.preflight && cx.after_changes {
            // playbooks/phase2-scale.toml raises the pools in earlier steps: judged again,
            // with the numbers then, when the run reaches this step.
            Check::new(
                "pools",
                CheckStatus::Deferred,
                format!("{s} now; an earlier step may raise the pools"),
            )
        } else {
            Check::fail("pools", s)
        }])
    }

    async fn apply(&self, cx: &StepCx) -> anyhow::Result<()> {
        let (ok, s) = self.judge(&self.numbers(cx).await?);
        if !ok {
            bail!(s);
        }
        cx.log(Level::Info, s);
        Ok(())
    }

    async fn rollback(&self, _cx: &StepCx) -> anyhow::Result<()> {
        Ok(())
    }
}
