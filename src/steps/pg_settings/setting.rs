//! kind = "pg_setting": set a PostgreSQL setting with `ALTER SYSTEM SET` + `pg_reload_conf()`.
//! A setting that only takes effect at server start (`pending_restart` in pg_settings, e.g.
//! max_connections) is applied by a controlled restart behind pgBouncer (restart.rs); a
//! failure or timeout in any of its stages resumes pgBouncer and the engine rolls back
//! (ALTER SYSTEM back, restarting again behind PAUSE when that needs it).
//!
//! "In effect" is decided by the server, never by comparing value spellings ("1GB" vs
//! "131072"): the setting is applied when pg_settings' source line is the last line for
//! it in postgresql.auto.conf (pg_file_settings) and no restart is pending. The checkpoint
//! holds the auto.conf value before (None: none) and whether pgBouncer may be paused, so
//! a resumed or rolled-back run RESUMEs it first.
//!
//! Check (read-only): the setting exists, the value fits its type and pg_settings'
//! min/max/enum values, the connection is a superuser's, the setting is not pinned by the
//! server's command line (ALTER SYSTEM cannot override it), a restart method is known when
//! one is needed, and for max_connections: pgBouncer's pool + reserved ≤ the new value.

use anyhow::{Context, anyhow, bail};
use serde::{Deserialize, Serialize};

use super::pg_info::{Info, bad_value, conf_load_time, info};
use super::restart::{self, Method, Stopping};
use super::{Bouncer, bouncer_db, fits};
use crate::infra::postgres;
use crate::playbook::interpolate::{sql_ident, sql_literal};
use crate::report::Level;
use crate::steps::{Check, Reversibility, Step, StepCx};
use crate::util::duration::Duration;

pub const KEYS: &[&str] = &["setting", "value", "postgres", "database", "stage_timeout"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgSetting {
    pub setting: String,
    #[serde(deserialize_with = "text_or_number")]
    pub value: String,
    /// The target's [postgres.NAME] to ALTER SYSTEM through: a superuser's connection.
    #[serde(default = "super::fhir")]
    pub postgres: String,
    /// The target's [postgres.NAME] behind pgBouncer: the database PAUSEd for a restart.
    #[serde(default = "super::fhir")]
    pub database: String,
    /// The limit of each stage of a restart (PAUSE, restart, back up).
    #[serde(default = "one_minute")]
    pub stage_timeout: Duration,
}

fn one_minute() -> Duration {
    Duration::new(std::time::Duration::from_secs(60), "1m")
}

fn text_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum V {
        S(String),
        I(i64),
        F(f64),
        B(bool),
    }
    Ok(match V::deserialize(d)? {
        V::S(s) => s,
        V::I(i) => i.to_string(),
        V::F(f) => f.to_string(),
        V::B(b) => if b { "on" } else { "off" }.into(),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Stage {
    Altered,
    /// pgBouncer may be paused: RESUME before anything else.
    Paused,
    Restarted,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Saved {
    /// postgresql.auto.conf's value before (None: the setting was not in it).
    previous: Option<String>,
    /// The value in effect before, as pg_settings showed it (for messages).
    was: String,
    stage: Stage,
    /// While a compose service is restarted: its container before the stop (restart.rs).
    #[serde(default)]
    stopping: Option<Stopping>,
}

impl PgSetting {
    fn name(&self) -> String {
        self.setting.trim().to_ascii_lowercase()
    }

    async fn client(&self, cx: &StepCx) -> anyhow::Result<tokio_postgres::Client> {
        cx.postgres(&self.postgres)
            .await
            .with_context(|| format!("[postgres.{}]", self.postgres))
    }

    async fn read(&self, c: &tokio_postgres::Client) -> anyhow::Result<Info> {
        let name = self.name();
        info(c, &name)
            .await?
            .with_context(|| format!("PostgreSQL has no setting `{name}`"))
    }

    /// ALTER SYSTEM to `want` (None: RESET), reload, and wait until the server has read it.
    async fn alter(&self, c: &tokio_postgres::Client, want: Option<&str>) -> anyhow::Result<Info> {
        let name = sql_ident(&self.name()).map_err(|e| anyhow!(e))?;
        let sql = match want {
            Some(v) => format!(
                "ALTER SYSTEM SET {name} = {}",
                sql_literal(v).map_err(|e| anyhow!(e))?
            ),
            None => format!("ALTER SYSTEM RESET {name}"),
        };
        let t0 = conf_load_time(c).await?;
        c.batch_execute(&sql)
            .await
            .map_err(|e| anyhow!("`{sql}`: {}", postgres::describe(&e)))?;
        c.batch_execute("SELECT pg_reload_conf()")
            .await
            .map_err(|e| anyhow!("pg_reload_conf(): {}", postgres::describe(&e)))?;
        // The reload is a signal: this session has read the files once its
        // pg_conf_load_time() moves, and only then does pg_settings say what they hold.
        let started = std::time::Instant::now();
        while conf_load_time(c).await? == t0 {
            if started.elapsed().as_secs() >= 10 {
                bail!("PostgreSQL did not reload its configuration within 10s of pg_reload_conf()");
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        self.read(c).await
    }

    /// Brings the setting to `want`, restarting behind pgBouncer when it needs that.
    async fn converge(
        &self,
        cx: &StepCx,
        saved: &mut Saved,
        want: Option<&str>,
    ) -> anyhow::Result<Info> {
        let c = self.client(cx).await?;
        let i = self.alter(&c, want).await?;
        if !i.pending_restart {
            return Ok(i);
        }
        drop(c);
        let method = Method::of(cx, &self.postgres)?.with_context(|| {
            format!(
                "{} needs a restart and [postgres.{}] has no restart_command or restart_service",
                self.name(),
                self.postgres
            )
        })?;
        let db = bouncer_db(cx, &self.database)?;
        saved.stage = Stage::Paused;
        cx.save_checkpoint(&*saved)?;
        let r = {
            let mut on_stop = |s: &Stopping| {
                saved.stopping = Some(s.clone());
                cx.save_checkpoint(&*saved)
            };
            restart::behind_pause(
                cx,
                &method,
                &db,
                &self.postgres,
                self.stage_timeout.get(),
                &mut on_stop,
            )
            .await?
        };
        saved.stage = Stage::Restarted;
        saved.stopping = None;
        cx.save_checkpoint(&*saved)?;
        cx.log(
            Level::Info,
            format!(
                "PostgreSQL restarted behind `PAUSE {db}`: pgBouncer held queries for {:.1}s",
                r.paused.as_secs_f64()
            ),
        );
        self.read(&self.client(cx).await?).await
    }

    /// An interrupted restart may have left pgBouncer paused.
    async fn resume_if_paused(&self, cx: &StepCx, saved: &Saved) -> anyhow::Result<()> {
        if saved.stage == Stage::Paused {
            let db = bouncer_db(cx, &self.database)?;
            // The server first (it may be stopped mid-restart), so that resumed clients find
            // it; pgBouncer is RESUMEd whatever that gives.
            let started = match Method::of(cx, &self.postgres)? {
                Some(m) => {
                    restart::ensure_started(cx, &m, &self.postgres, self.stage_timeout.get()).await
                }
                None => Ok(false),
            };
            restart::resume(cx, &db).await?;
            if started? {
                cx.log(
                    Level::Warn,
                    format!(
                        "PostgreSQL ([postgres.{}]) was stopped by the interrupted restart: started it again",
                        self.postgres
                    ),
                );
            }
            cx.log(
                Level::Warn,
                format!("pgBouncer {db} RESUMEd after an interrupted restart"),
            );
        }
        Ok(())
    }

    async fn checks(&self, cx: &StepCx) -> anyhow::Result<Vec<Check>> {
        let name = self.name();
        let c = self.client(cx).await?;
        let superuser: bool = c
            .query_one(
                "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
                &[],
            )
            .await
            .map_err(|e| anyhow!(postgres::describe(&e)))?
            .get(0);
        if !superuser {
            return Ok(vec![Check::fail(
                "privilege",
                format!(
                    "ALTER SYSTEM needs a superuser: [postgres.{}] connects as a role that is not one; name a superuser's [postgres.NAME] in `postgres`",
                    self.postgres
                ),
            )]);
        }
        let Some(i) = info(&c, &name).await? else {
            let names: Vec<String> = c
                .query("SELECT name FROM pg_settings", &[])
                .await
                .map_err(|e| anyhow!(postgres::describe(&e)))?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let help = crate::util::suggest::did_you_mean(&name, names.iter().map(String::as_str))
                .map(|h| format!(" ({h})"))
                .unwrap_or_default();
            return Ok(vec![Check::fail(
                "setting",
                format!("PostgreSQL has no setting `{name}`{help}"),
            )]);
        };
        let mut out = vec![];
        let fail = |out: &mut Vec<Check>, what: &str, m: String| out.push(Check::fail(what, m));
        if let Some(m) = bad_value(&name, &i, &self.value) {
            fail(&mut out, "value", m);
        }
        match i.context.as_str() {
            "internal" => fail(
                &mut out,
                "setting",
                format!("{name} is fixed when the cluster is built; it cannot be set"),
            ),
            _ if ["command line", "override"].contains(&i.source.as_str()) => fail(
                &mut out,
                "setting",
                format!(
                    "{name} is set on the server's command line (source: {}), which ALTER SYSTEM cannot override: move it to postgresql.conf",
                    i.source
                ),
            ),
            "postmaster" => match Method::of(cx, &self.postgres) {
                Ok(Some(m)) => out.push(Check::pass(
                    "restart",
                    format!(
                        "{name} needs a restart: behind pgBouncer's PAUSE {}, by {}",
                        bouncer_db(cx, &self.database).unwrap_or_else(|e| format!("? ({e})")),
                        m.describe()
                    ),
                )),
                Ok(None) => fail(
                    &mut out,
                    "restart",
                    format!(
                        "{name} needs a restart and [postgres.{}] has no restart_command or restart_service: add one to the target",
                        self.postgres
                    ),
                ),
                Err(e) => fail(&mut out, "restart", format!("{e:#}")),
            },
            _ => {}
        }
        if name == "max_connections" && out.iter().all(|c| c.name != "value") {
            out.push(self.pool_arithmetic(cx, &c).await);
        }
        let now = if i.is(Some(self.value.as_str())) {
            "already in effect"
        } else {
            "to set"
        };
        out.insert(
            0,
            Check::pass(
                "setting",
                format!("{name} = {} → {} ({now})", i.shown(), self.value),
            ),
        );
        Ok(out)
    }

    /// pgBouncer's pool + reserved connections must fit under the new max_connections.
    async fn pool_arithmetic(&self, cx: &StepCx, c: &tokio_postgres::Client) -> Check {
        let r = async {
            let v: u32 = self
                .value
                .trim()
                .parse()
                .context("max_connections is a whole number")?;
            let reserved: String = c
                .query_one(
                    "SELECT current_setting('superuser_reserved_connections')",
                    &[],
                )
                .await
                .map_err(|e| anyhow!(postgres::describe(&e)))?
                .get(0);
            let db = bouncer_db(cx, &self.database)?;
            let pool = Bouncer::connect(cx).await?.pool_of(&db).await?;
            anyhow::Ok(fits(pool, reserved.parse()?, v))
        };
        match r.await {
            Ok((true, s)) => Check::pass("pools", s),
            Ok((false, s)) => Check::fail(
                "pools",
                format!("{s}: lower pgBouncer's pool first (kind = \"pgbouncer_pool\")"),
            ),
            Err(e) => Check::fail("pools", format!("{e:#}")),
        }
    }
}

impl Step for PgSetting {
    fn describe(&self) -> String {
        format!("set PostgreSQL's {} to {}", self.name(), self.value)
    }

    fn validate(&self) -> Vec<(Option<&'static str>, String)> {
        let n = self.name();
        if crate::util::is_placeholder(&self.setting) {
            return vec![];
        }
        if n.is_empty()
            || !n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            return vec![(
                Some("setting"),
                format!("`{}` is not a setting name", self.setting),
            )];
        }
        vec![]
    }

    fn reversibility(&self) -> Reversibility {
        Reversibility::Reversible("ALTER SYSTEM back to the previous value (restarting behind pgBouncer's PAUSE if needed)".into())
    }

    async fn check(&self, cx: &StepCx) -> anyhow::Result<Vec<Check>> {
        Ok(self
            .checks(cx)
            .await
            .unwrap_or_else(|e| vec![Check::fail("setting", format!("{e:#}"))]))
    }

    async fn recover(&self, cx: &StepCx) -> anyhow::Result<()> {
        let Some(Saved {
            stage: Stage::Paused,
            stopping: Some(s),
            ..
        }) = cx.checkpoint::<Saved>()?
        else {
            return Ok(());
        };
        if restart::start_own_stop(cx, &s, &self.postgres, self.stage_timeout.get()).await? {
            cx.log(
                Level::Warn,
                format!(
                    "PostgreSQL ([postgres.{}]) was left stopped by the interrupted restart: started it again",
                    self.postgres
                ),
            );
        }
        Ok(())
    }

    async fn done(&self, cx: &StepCx) -> anyhow::Result<bool> {
        if cx
            .checkpoint::<Saved>()?
            .is_some_and(|s| s.stage == Stage::Paused)
        {
            return Ok(false);
        }
        Ok(self
            .read(&self.client(cx).await?)
            .await?
            .is(Some(&self.value)))
    }

    async fn apply(&self, cx: &StepCx) -> anyhow::Result<()> {
        let cp = cx.checkpoint::<Saved>()?;
        if let Some(s) = &cp {
            self.resume_if_paused(cx, s).await?;
        }
        let i = self.read(&self.client(cx).await?).await?;
        if i.is(Some(&self.value)) {
            return Ok(());
        }
        let mut saved = match cp {
            Some(s) => s,
            None => {
                let s = Saved {
                    previous: i.auto.clone(),
                    was: i.shown(),
                    stage: Stage::Altered,
                    stopping: None,
                };
                cx.save_checkpoint(&s)?;
                s
            }
        };
        let now = self.converge(cx, &mut saved, Some(&self.value)).await?;
        if !now.is(Some(&self.value)) {
            bail!(
                "{} is {} after ALTER SYSTEM (source: {}): something overrides postgresql.auto.conf",
                self.name(),
                now.shown(),
                now.source
            );
        }
        cx.log(
            Level::Info,
            format!("{} {} → {}", self.name(), saved.was, now.shown()),
        );
        Ok(())
    }

    async fn verify(&self, cx: &StepCx) -> anyhow::Result<()> {
        let i = self.read(&self.client(cx).await?).await?;
        if !i.is(Some(&self.value)) {
            bail!(
                "{} is {} (pending restart: {}), not {}",
                self.name(),
                i.shown(),
                i.pending_restart,
                self.value
            );
        }
        Ok(())
    }

    async fn rollback(&self, cx: &StepCx) -> anyhow::Result<()> {
        let Some(mut saved) = cx.checkpoint::<Saved>()? else {
            return Ok(());
        };
        self.resume_if_paused(cx, &saved).await?;
        let want = saved.previous.clone();
        if self
            .read(&self.client(cx).await?)
            .await?
            .is(want.as_deref())
        {
            return Ok(());
        }
        let now = self.converge(cx, &mut saved, want.as_deref()).await?;
        if !now.is(want.as_deref()) {
            bail!(
                "{} is {} after ALTER SYSTEM back (source: {})",
                self.name(),
                now.shown(),
                now.source
            );
        }
        cx.log(
            Level::Info,
            format!("{} back to {}", self.name(), now.shown()),
        );
        Ok(())
    }
}
