//! kind = "pgbouncer_pool": set pgBouncer's `default_pool_size` live and persistently.
//! Persistently first, in what the target names: `[pgbouncer] ini_path` (the pgbouncer.ini
//! pgBouncer reads) and/or `pool_size_key` in the target's env file (the compose variable,
//! `PGBOUNCER_DEFAULT_POOL_SIZE`, read when the container is recreated). Then live on the
//! admin console: `SET default_pool_size = N`, and `RELOAD` when the ini was written (a
//! RELOAD re-reads the ini, so without the ini edit it would undo the SET). A larger pool
//! takes effect for the next server connection pgBouncer opens; a smaller one as surplus
//! connections are released.
//!
//! Before raising, check refuses a pool PostgreSQL cannot serve: pool + reserved ≤
//! max_connections (raise max_connections first, with `pg_setting`). The checkpoint holds
//! the previous live value, the previous ini value and the env edit (values of this one key
//! only: the ini's other lines may hold connection strings); rollback restores them the same
//! way.

use std::path::PathBuf;

use anyhow::{Context, anyhow, bail};
use serde::{Deserialize, Serialize};

use super::{Bouncer, bouncer_db, connection_limits, fits, ini};
use crate::infra::dotenv::{self, Edit};
use crate::report::{CheckStatus, Level};
use crate::steps::{Check, Reversibility, Step, StepCx};

pub const KEYS: &[&str] = &["default_pool_size", "database"];

const KEY: &str = "default_pool_size";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgBouncerPool {
    #[serde(deserialize_with = "size")]
    pub default_pool_size: Size,
    /// The target's [postgres.NAME] behind pgBouncer (its pool and max_connections).
    #[serde(default = "super::fhir")]
    pub database: String,
}

/// A pool size: a TOML integer or a string of digits (what a `{{ var }}` renders as).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Size {
    N(u32),
    /// A variable not given yet while validating.
    Later(String),
    Invalid(String),
}

fn size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
    let v = toml::Value::deserialize(d)?;
    let bad = || {
        Size::Invalid(format!(
            "`default_pool_size` must be a whole number, not {v}"
        ))
    };
    Ok(match &v {
        toml::Value::Integer(n) => u32::try_from(*n).map_or_else(|_| bad(), Size::N),
        toml::Value::String(s) if crate::util::is_placeholder(s) => Size::Later(s.clone()),
        toml::Value::String(s) => s.parse().map_or_else(|_| bad(), Size::N),
        _ => bad(),
    })
}

const ZERO: &str = "a pool of 0 lets no query through: give at least 1";

impl Size {
    fn get(&self) -> anyhow::Result<u32> {
        match self {
            Size::N(0) => bail!(ZERO),
            Size::N(n) => Ok(*n),
            Size::Later(s) | Size::Invalid(s) => bail!("not a pool size: {s}"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Saved {
    live: u32,
    /// The ini's value before (None: the key was not in the file), when an ini is named.
    ini: Option<Option<String>>,
    env: Option<Edit>,
}

/// Where the pool is persisted.
struct Places {
    ini: Option<PathBuf>,
    env: Option<(PathBuf, String)>,
}

fn places(cx: &StepCx) -> anyhow::Result<Places> {
    let t = cx.target()?;
    let b = t
        .pgbouncer
        .as_ref()
        .context("the target has no [pgbouncer] admin_url")?;
    let env = match &b.pool_size_key {
        Some(k) => Some((
            t.env_file()
                .context("[pgbouncer] pool_size_key needs the target's [files] (its env file)")?,
            k.clone(),
        )),
        None => None,
    };
    Ok(Places {
        ini: b.ini_path.as_ref().map(|p| t.resolve_path(p)),
        env,
    })
}

fn env_value(path: &std::path::Path, key: &str) -> anyhow::Result<Option<String>> {
    Ok(dotenv::read(path)
        .with_context(|| format!("read {}", path.display()))?
        .remove(key))
}

impl PgBouncerPool {
    /// Sets the value everywhere the target names, and live.
    async fn put(
        &self,
        cx: &StepCx,
        p: &Places,
        live: u32,
        ini_v: Option<&str>,
    ) -> anyhow::Result<()> {
        if let Some(path) = &p.ini {
            ini::set_file(path, "pgbouncer", KEY, ini_v)?;
        }
        let b = Bouncer::connect(cx).await?;
        // RELOAD re-reads the whole ini (a key it lacks falls back to pgBouncer's default),
        // so it goes first and the SET after it: the live value is ours either way.
        if p.ini.is_some() {
            b.command("RELOAD").await?;
        }
        b.command(&format!("SET {KEY} = {live}")).await
    }

    fn persist_checks(&self, p: &Places) -> Vec<Check> {
        let mut out = vec![];
        if let Some(path) = &p.ini {
            out.push(match std::fs::read_to_string(path) {
                Ok(t) => match ini::set(&t, "pgbouncer", KEY, Some("1")) {
                    Ok(_) => Check::pass(
                        "ini",
                        format!(
                            "{}: {KEY} = {}",
                            path.display(),
                            ini::get(&t, "pgbouncer", KEY).unwrap_or_else(|| "(not set)".into())
                        ),
                    ),
                    Err(e) => Check::fail("ini", format!("{}: {e}", path.display())),
                },
                Err(e) => Check::fail("ini", format!("cannot read {}: {e}", path.display())),
            });
        }
        if let Some((path, key)) = &p.env {
            out.push(match env_value(path, key) {
                Ok(v) => Check::pass(
                    "env",
                    format!(
                        "{}: {key}={}",
                        path.display(),
                        v.unwrap_or_else(|| "(not set)".into())
                    ),
                ),
                Err(e) => Check::fail("env", format!("{e:#}")),
            });
        }
        if p.ini.is_none() && p.env.is_none() {
            out.push(Check::new(
                "persist",
                CheckStatus::Warn,
                "the target names neither [pgbouncer] ini_path nor pool_size_key: the pool is set live only and a pgBouncer restart loses it",
            ));
        }
        out
    }
}

impl Step for PgBouncerPool {
    fn describe(&self) -> String {
        let n = match &self.default_pool_size {
            Size::N(n) => n.to_string(),
            Size::Later(s) | Size::Invalid(s) => s.clone(),
        };
        format!("set pgBouncer's {KEY} to {n}")
    }

    fn validate(&self) -> Vec<(Option<&'static str>, String)> {
        match &self.default_pool_size {
            Size::N(0) => vec![(Some("default_pool_size"), ZERO.into())],
            Size::Invalid(m) => vec![(Some("default_pool_size"), m.clone())],
            _ => vec![],
        }
    }

    fn reversibility(&self) -> Reversibility {
        Reversibility::Reversible("the previous pool size, live and in the files".into())
    }

    async fn check(&self, cx: &StepCx) -> anyhow::Result<Vec<Check>> {
        let n = match self.default_pool_size.get() {
            Ok(n) => n,
            Err(e) => return Ok(vec![Check::fail("pool", e.to_string())]),
        };
        let p = match places(cx) {
            Ok(p) => p,
            Err(e) => return Ok(vec![Check::fail("pgbouncer", format!("{e:#}"))]),
        };
        let live = async {
            let b = Bouncer::connect(cx).await?;
            let db = bouncer_db(cx, &self.database)?;
            anyhow::Ok((b.default_pool_size().await?, b.pool_of(&db).await?, db))
        };
        let (now, of_db, db) = match live.await {
            Ok(v) => v,
            Err(e) => return Ok(vec![Check::fail("pgbouncer", format!("{e:#}"))]),
        };
        let mut out = vec![Check::pass(
            "pool",
            format!("{KEY} {now} → {n} (pool of {db} now {of_db})"),
        )];
        out.push(match connection_limits(cx, &self.database).await {
            Ok((max, reserved)) => match fits(n, reserved, max) {
                (true, s) => Check::pass("max_connections", s),
                (false, s) if cx.preflight && cx.after_changes => Check::new(
                    "max_connections",
                    CheckStatus::Deferred,
                    format!("{s} now; an earlier step may raise max_connections"),
                ),
                (false, s) => Check::fail(
                    "max_connections",
                    format!("{s}: raise max_connections first (kind = \"pg_setting\")"),
                ),
            },
            Err(e) => Check::fail("max_connections", format!("{e:#}")),
        });
        out.extend(self.persist_checks(&p));
        Ok(out)
    }

    async fn done(&self, cx: &StepCx) -> anyhow::Result<bool> {
        let p = places(cx)?;
        let n = self.default_pool_size.get()?.to_string();
        if let Some(path) = &p.ini
            && ini::get(&std::fs::read_to_string(path)?, "pgbouncer", KEY).as_deref() != Some(&n)
        {
            return Ok(false);
        }
        if let Some((path, key)) = &p.env
            && env_value(path, key)?.as_deref() != Some(&n)
        {
            return Ok(false);
        }
        Ok(Bouncer::connect(cx).await?.default_pool_size().await?
            == self.default_pool_size.get()?)
    }

    async fn apply(&self, cx: &StepCx) -> anyhow::Result<()> {
        let n = self.default_pool_size.get()?;
        let p = places(cx)?;
        let saved = match cx.checkpoint::<Saved>()? {
            Some(s) => s,
            None => {
                let live = Bouncer::connect(cx).await?.default_pool_size().await?;
                let ini = match &p.ini {
                    Some(path) => Some(ini::get(&std::fs::read_to_string(path)?, "pgbouncer", KEY)),
                    None => None,
                };
                let env = match &p.env {
                    Some((path, key)) => {
                        let text = std::fs::read_to_string(path)
                            .with_context(|| format!("read {}", path.display()))?;
                        let vars = [(key.clone(), n.to_string())].into();
                        Some(dotenv::plan_set(&text, &vars).0)
                    }
                    None => None,
                };
                let s = Saved { live, ini, env };
                cx.save_checkpoint(&s)?;
                s
            }
        };
        if let Some((path, key)) = &p.env
            && env_value(path, key)?.as_deref() != Some(&n.to_string())
        {
            dotenv::set(path, &[(key.clone(), n.to_string())].into())
                .with_context(|| format!("write {}", path.display()))?;
        }
        self.put(cx, &p, n, Some(&n.to_string())).await?;
        cx.log(Level::Info, format!("pgBouncer {KEY} {} → {n}", saved.live));
        Ok(())
    }

    async fn verify(&self, cx: &StepCx) -> anyhow::Result<()> {
        let n = self.default_pool_size.get()?;
        let b = Bouncer::connect(cx).await?;
        let live = b.default_pool_size().await?;
        if live != n {
            bail!("pgBouncer's SHOW CONFIG says {KEY} = {live}, not {n}");
        }
        let db = bouncer_db(cx, &self.database)?;
        let of_db = b.pool_of(&db).await?;
        if of_db != n {
            bail!(
                "pgBouncer gives {db} a pool of {of_db}, not {n}: it has its own pool_size in [databases]; change it there"
            );
        }
        if !self.done(cx).await? {
            bail!("{KEY} = {n} is not in every file the target names");
        }
        Ok(())
    }

    async fn rollback(&self, cx: &StepCx) -> anyhow::Result<()> {
        let Some(s) = cx.checkpoint::<Saved>()? else {
            return Ok(());
        };
        let p = places(cx)?;
        if let (Some((path, key)), Some(edit)) = (&p.env, &s.env)
            && env_value(path, key)?.as_deref() == Some(&self.default_pool_size.get()?.to_string())
        {
            dotenv::revert(path, edit).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        }
        let ini_v = s.ini.clone().flatten();
        self.put(cx, &p, s.live, ini_v.as_deref()).await?;
        cx.log(Level::Info, format!("pgBouncer {KEY} back to {}", s.live));
        Ok(())
    }
}
