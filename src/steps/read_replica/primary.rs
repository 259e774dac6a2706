//! The primary's side of a physical replica: the replication role, a pg_hba rule letting
//! it connect for replication, the physical slot, and what pg_stat_replication says of the
//! standby on that slot. Every statement is a probe or idempotent; the role's password is
//! bound as a literal built by `sql_literal` (CREATE/ALTER ROLE take no bind parameters) and
//! never logged.

use anyhow::{Context, anyhow};
use tokio_postgres::Client;

use crate::infra::postgres::describe;
use crate::playbook::interpolate::{sql_ident, sql_literal};

fn pg(e: tokio_postgres::Error) -> anyhow::Error {
    anyhow!("{}", describe(&e))
}

/// (exists, has REPLICATION and LOGIN).
pub async fn role(c: &Client, user: &str) -> anyhow::Result<(bool, bool)> {
    let r = c
        .query_opt(
            "SELECT rolreplication AND rolcanlogin FROM pg_roles WHERE rolname = $1",
            &[&user],
        )
        .await
        .map_err(pg)?;
    Ok(match r {
        Some(r) => (true, r.get(0)),
        None => (false, false),
    })
}

/// Creates the role (or gives an existing one REPLICATION LOGIN) with `password`.
pub async fn ensure_role(
    c: &Client,
    user: &str,
    password: &str,
    exists: bool,
) -> anyhow::Result<()> {
    let ident = sql_ident(user).map_err(|e| anyhow!(e))?;
    let pw = sql_literal(password).map_err(|e| anyhow!(e))?;
    let verb = if exists { "ALTER" } else { "CREATE" };
    c.batch_execute(&format!(
        "{verb} ROLE {ident} WITH REPLICATION LOGIN PASSWORD {pw}"
    ))
    .await
    .map_err(|e| anyhow!("{verb} ROLE {user}: {}", describe(&e)))
}

pub async fn drop_role(c: &Client, user: &str) -> anyhow::Result<()> {
    let ident = sql_ident(user).map_err(|e| anyhow!(e))?;
    c.batch_execute(&format!("DROP ROLE IF EXISTS {ident}"))
        .await
        .map_err(|e| anyhow!("DROP ROLE {user}: {}", describe(&e)))
}

/// Whether pg_hba.conf (as loaded) has a `host`-type rule for the replication pseudo-database
/// covering `user` from beyond loopback (initdb's loopback-only rules do not let a replica on
/// the compose network in), and the file's path.
pub async fn hba(c: &Client, user: &str) -> anyhow::Result<(bool, String)> {
    let covered: bool = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_hba_file_rules WHERE error IS NULL \
               AND type LIKE 'host%' AND 'replication' = ANY(database) \
               AND (user_name && ARRAY[$1::text, 'all']) AND auth_method <> 'reject' \
               AND coalesce(address, 'all') NOT IN ('127.0.0.1', '::1'))",
            &[&user],
        )
        .await
        .map_err(pg)?
        .get(0);
    let file: String = c
        .query_one("SELECT current_setting('hba_file')", &[])
        .await
        .map_err(pg)?
        .get(0);
    Ok((covered, file))
}

pub async fn reload(c: &Client) -> anyhow::Result<()> {
    c.batch_execute("SELECT pg_reload_conf()").await.map_err(pg)
}

/// The slot: None when absent, else (physical, active).
pub async fn slot(c: &Client, name: &str) -> anyhow::Result<Option<(bool, bool)>> {
    Ok(c.query_opt(
        "SELECT slot_type = 'physical', active FROM pg_replication_slots WHERE slot_name = $1",
        &[&name],
    )
    .await
    .map_err(pg)?
    .map(|r| (r.get(0), r.get(1))))
}

/// Creates the physical slot reserving WAL now, so nothing the base backup needs is recycled.
pub async fn create_slot(c: &Client, name: &str) -> anyhow::Result<()> {
    c.execute(
        "SELECT pg_create_physical_replication_slot($1, true)",
        &[&name],
    )
    .await
    .map(|_| ())
    .map_err(|e| anyhow!("creating slot {name}: {}", describe(&e)))
}

/// Drops the slot once no walsender holds it (a standby just stopped lets go within
/// seconds); absent is success.
pub async fn drop_slot(c: &Client, name: &str, cx: &crate::steps::StepCx) -> anyhow::Result<()> {
    for _ in 0..60 {
        match slot(c, name).await? {
            None => return Ok(()),
            Some((_, true)) => {
                // A walsender of a stopped standby or killed base backup: end it.
                let _ = c
                    .execute(
                        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL",
                        &[&name],
                    )
                    .await;
                cx.cancel
                    .sleep(std::time::Duration::from_millis(500))
                    .await?;
            }
            Some((_, false)) => {
                return c
                    .execute("SELECT pg_drop_replication_slot($1)", &[&name])
                    .await
                    .map(|_| ())
                    .map_err(|e| anyhow!("dropping slot {name}: {}", describe(&e)));
            }
        }
    }
    Err(anyhow!(
        "slot {name} stayed active for 30s: drop it with SELECT pg_drop_replication_slot('{name}') once its standby is gone"
    ))
}

/// The standby on the slot, as the primary sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Standby {
    /// pg_stat_replication.state (`streaming`, `catchup`, …); None: no walsender on the slot.
    pub state: Option<String>,
    /// Bytes between the primary's current WAL position and the standby's replay position.
    pub lag_bytes: Option<i64>,
    /// pg_stat_replication.replay_lag in seconds (NULL when idle: no lag to measure).
    pub lag_seconds: Option<f64>,
}

pub async fn standby(c: &Client, slot: &str) -> anyhow::Result<Standby> {
    let r = c
        .query_opt(
            "SELECT r.state, pg_wal_lsn_diff(pg_current_wal_lsn(), r.replay_lsn)::bigint, \
                    extract(epoch FROM r.replay_lag)::float8 \
             FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid \
             WHERE s.slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(pg)
        .context("reading pg_stat_replication")?;
    Ok(match r {
        Some(r) => Standby {
            state: r.get(0),
            lag_bytes: r.get(1),
            lag_seconds: r.get(2),
        },
        None => Standby {
            state: None,
            lag_bytes: None,
            lag_seconds: None,
        },
    })
}

impl Standby {
    /// Streaming, and replayed to within `max_bytes` (and `max_seconds` when measured).
    pub fn caught_up(&self, max_bytes: i64, max_seconds: f64) -> bool {
        self.state.as_deref() == Some("streaming")
            && self.lag_bytes.is_some_and(|b| b <= max_bytes)
            && self.lag_seconds.is_none_or(|s| s <= max_seconds)
    }

    pub fn describe(&self) -> String {
        match &self.state {
            None => "no standby connected on the slot".into(),
            Some(s) => format!(
                "{s}, replay lag {} ({})",
                self.lag_bytes
                    .map(|b| crate::checks::params::pretty_bytes(b.max(0) as u64))
                    .unwrap_or_else(|| "unknown".into()),
                self.lag_seconds
                    .map(|s| format!("{s:.1}s"))
                    .unwrap_or_else(|| "idle".into())
            ),
        }
    }
}
