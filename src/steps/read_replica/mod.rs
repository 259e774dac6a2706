//! kind = "read_replica": the seed's `postgres-fhir-replica`, a hot standby streaming from
//! the primary, added as a compose service of the target's project. Phases, each
//! checkpointed before its effect so `ferry resume` re-enters any of them:
//! 1. probe what exists (role, a pg_hba replication rule, the slot): rollback undoes only
//!    what this step made;
//! 2. the primary: the replication role (REPLICATION LOGIN, password from `password_env`),
//!    a `host replication USER all scram-sha-256` line in its pg_hba.conf when none covers
//!    the role (written inside the primary's container, then `pg_reload_conf()`), and a
//!    physical slot that reserves WAL from now on;
//! 3. the service: an override file ferry owns, listed in the env file's `COMPOSE_FILE`,
//!    and `docker-compose up --no-start` (the container and its named volume);
//! 4. the base backup: `pg_basebackup -R -X stream -S SLOT` in a one-shot container of the
//!    primary's image on the compose network, into the replica's volume. A re-entered backup
//!    removes the one a killed run left (it may still be running), empties the volume and
//!    starts again;
//! 5. start the replica and wait until pg_stat_replication shows it `streaming` on the slot
//!    with replay lag ≤ `max_lag` (bytes) and ≤ `max_lag_seconds`.
//!
//! HAPI's read datasource is the playbook's business (env_set + rolling_redeploy; see
//! playbooks/add-read-replica.toml). Rollback: the container, the backup container and
//! the volume removed, the override file and the COMPOSE_FILE edit undone, the slot dropped
//! (a forgotten slot retains WAL until the primary's disk is full), the pg_hba line and the
//! role removed if this step made them.

pub mod compose;
pub mod primary;

use std::time::{Duration as StdDuration, Instant};

use anyhow::{Context, anyhow, bail};
use serde::{Deserialize, Serialize};

use super::{Check, Reversibility, Step, StepCx};
use crate::checks::params::parse_bytes;
use crate::infra::dotenv::{self, Edit};
use crate::report::{CheckStatus, Level};
use crate::util::duration::Duration;
use compose::Names;

pub const KEYS: &[&str] = &[
    "service",
    "primary_service",
    "primary_port",
    "postgres",
    "user",
    "password_env",
    "slot",
    "network",
    "config_file",
    "max_lag",
    "max_lag_seconds",
    "wait_timeout",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadReplica {
    #[serde(default = "replica_service")]
    pub service: String,
    #[serde(default = "primary_service")]
    pub primary_service: String,
    #[serde(default = "pg_port")]
    pub primary_port: u16,
    /// The target's [postgres.NAME] on the primary: a superuser's connection.
    #[serde(default = "fhir")]
    pub postgres: String,
    #[serde(default = "replicator")]
    pub user: String,
    #[serde(default = "password_env")]
    pub password_env: String,
    /// Default: the service name with `-` → `_`.
    pub slot: Option<String>,
    /// The compose network (key in the compose file) the replica and the backup join.
    #[serde(default = "network")]
    pub network: String,
    /// A postgresql.conf for the replica, relative to the files root.
    pub config_file: Option<String>,
    #[serde(default = "max_lag")]
    pub max_lag: String,
    #[serde(default = "max_lag_seconds")]
    pub max_lag_seconds: f64,
    #[serde(default = "wait_timeout")]
    pub wait_timeout: Duration,
}

fn replica_service() -> String {
    "postgres-fhir-replica".into()
}
fn primary_service() -> String {
    "postgres-fhir".into()
}
fn pg_port() -> u16 {
    5432
}
fn fhir() -> String {
    "fhir".into()
}
fn replicator() -> String {
    "replicator".into()
}
fn password_env() -> String {
    "FHIR_REPLICA_PASSWORD".into()
}
fn network() -> String {
    "backend-fhir".into()
}
fn max_lag() -> String {
    "16MB".into()
}
fn max_lag_seconds() -> f64 {
    30.0
}
fn wait_timeout() -> Duration {
    Duration::new(StdDuration::from_secs(600), "10m")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
enum Stage {
    Probed,
    Primary,
    Defined,
    BackingUp,
    BackedUp,
    Started,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Saved {
    stage: Stage,
    role_existed: bool,
    slot_existed: bool,
    /// The pg_hba.conf line this step adds (None: a rule already covered the role).
    hba_line: Option<String>,
    hba_file: String,
    /// COMPOSE_FILE's edit, planned on the env file before it was written.
    compose_edit: Option<Edit>,
    /// COMPOSE_FILE's value with the override in it.
    compose_files: String,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

impl ReadReplica {
    fn slot(&self) -> String {
        self.slot
            .clone()
            .unwrap_or_else(|| self.service.replace('-', "_"))
    }

    fn max_lag_bytes(&self) -> anyhow::Result<i64> {
        parse_bytes(&self.max_lag)
            .map(|b| b as i64)
            .ok_or_else(|| anyhow!("`max_lag` must be a size such as \"16MB\""))
    }

    fn names(&self, cx: &StepCx) -> anyhow::Result<Names> {
        let (project, _) = super::replicas::project_service(cx, Some(&self.service))?;
        let t = cx.target()?;
        let root = t
            .files_root()
            .context("the target has no [files] root (where docker-compose.yml and .env are)")?;
        let env_file = t.env_file().context("the target has no [files] env_file")?;
        Ok(Names {
            project,
            service: self.service.clone(),
            root,
            env_file,
            override_file: format!("docker-compose.{}.yml", self.service),
        })
    }

    fn password(&self, cx: &StepCx) -> anyhow::Result<String> {
        cx.target()?
            .secret(&Some(self.password_env.clone()), &None)
            .map_err(|e| anyhow!(e))?
            .filter(|p| !p.is_empty())
            .with_context(|| {
                format!(
                    "{} (the replication role's password) is empty",
                    self.password_env
                )
            })
    }

    async fn primary_container(&self, cx: &StepCx, n: &Names) -> anyhow::Result<String> {
        compose::container_of(cx, &n.project, &self.primary_service)
            .await?
            .with_context(|| format!("no container of {}/{}", n.project, self.primary_service))
    }

    fn hba_line(&self) -> String {
        format!(
            "host replication {} all scram-sha-256 # ferry read_replica {}",
            self.user,
            self.slot()
        )
    }

    async fn probe(&self, cx: &StepCx, n: &Names) -> anyhow::Result<Saved> {
        let c = cx.postgres(&self.postgres).await?;
        let (role_existed, _) = primary::role(&c, &self.user).await?;
        let (covered, hba_file) = primary::hba(&c, &self.user).await?;
        let slot_existed = primary::slot(&c, &self.slot()).await?.is_some();
        let current = dotenv::read(&n.env_file)
            .with_context(|| format!("reading {}", n.env_file.display()))?
            .remove("COMPOSE_FILE");
        let compose_files = match current {
            Some(v) if v.split(':').any(|f| f == n.override_file) => v,
            Some(v) => format!("{v}:{}", n.override_file),
            None => format!("docker-compose.yml:{}", n.override_file),
        };
        Ok(Saved {
            stage: Stage::Probed,
            role_existed,
            slot_existed,
            hba_line: (!covered).then(|| self.hba_line()),
            hba_file,
            compose_edit: None,
            compose_files,
        })
    }

    async fn edit_hba(&self, cx: &StepCx, n: &Names, s: &Saved, add: bool) -> anyhow::Result<()> {
        let Some(line) = &s.hba_line else {
            return Ok(());
        };
        let Some(container) = compose::container_of(cx, &n.project, &self.primary_service).await?
        else {
            bail!(
                "no container of {}/{} to edit pg_hba.conf in",
                n.project,
                self.primary_service
            )
        };
        let script = if add {
            r#"grep -qxF -- "$1" "$2" || printf '%s\n' "$1" >> "$2""#
        } else {
            r#"grep -qxF -- "$1" "$2" || exit 0; t=$(mktemp); grep -vxF -- "$1" "$2" > "$t"; cat "$t" > "$2"; rm -f "$t""#
        };
        compose::docker(
            cx,
            &[
                "exec",
                "-u",
                "postgres",
                &container,
                "bash",
                "-c",
                script,
                "_",
                line,
                &s.hba_file,
            ],
            &[],
        )
        .await
        .context("editing the primary's pg_hba.conf")?;
        primary::reload(&cx.postgres(&self.postgres).await?).await
    }

    async fn base_backup(&self, cx: &StepCx, n: &Names, s: &mut Saved) -> anyhow::Result<()> {
        let name = n.backup_container();
        remove_container(cx, &name).await?;
        let primary_c = self.primary_container(cx, n).await?;
        let (image, mut labels) = compose::image_and_labels(cx, &primary_c).await?;
        labels.insert("ferry.read-replica".into(), n.service.clone());
        let volume = compose::object_named(cx, "volume", &n.project, &n.volume_key())
            .await?
            .with_context(|| {
                format!("the volume {} of {} is missing", n.volume_key(), n.project)
            })?;
        let net = compose::object_named(cx, "network", &n.project, &self.network)
            .await?
            .with_context(|| format!("the network {} of {} is missing", self.network, n.project))?;
        let script = compose::backup_script(
            &self.primary_service,
            self.primary_port,
            &self.user,
            &n.service,
            &self.slot(),
        );
        let mount = format!("{volume}:{}", compose::DATA);
        let mut args: Vec<String> = [
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            &net,
            "-v",
            &mount,
            "-e",
            "PGPASSWORD",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for (k, v) in &labels {
            args.push("--label".into());
            args.push(format!("{k}={v}"));
        }
        args.extend([image, "bash".into(), "-c".into(), script]);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        cx.log(
            Level::Info,
            format!(
                "pg_basebackup from {} into {volume} ({name})",
                self.primary_service
            ),
        );
        compose::docker(cx, &argv, &[("PGPASSWORD", self.password(cx)?)]).await?;
        s.stage = Stage::BackingUp;
        cx.save_checkpoint(&*s)?;
        let wait = ["wait", name.as_str()];
        let code = tokio::select! {
            r = compose::docker(cx, &wait, &[]) => r?,
            _ = cx.cancel.cancelled() => return Err(super::Interrupted.into()),
        };
        if code.trim() != "0" {
            let logs = compose::docker(cx, &["logs", "--tail", "20", &name], &[])
                .await
                .unwrap_or_default();
            let _ = remove_container(cx, &name).await;
            bail!("pg_basebackup failed (exit {code}): {logs}");
        }
        remove_container(cx, &name).await?;
        s.stage = Stage::BackedUp;
        cx.save_checkpoint(&*s)
    }

    async fn wait_streaming(&self, cx: &StepCx, limit: StdDuration) -> anyhow::Result<()> {
        let max = self.max_lag_bytes()?;
        let t0 = Instant::now();
        let mut last_log = Instant::now();
        loop {
            let st = match cx.postgres(&self.postgres).await {
                Ok(c) => primary::standby(&c, &self.slot()).await.ok(),
                Err(_) => None,
            };
            if let Some(st) = &st
                && st.caught_up(max, self.max_lag_seconds)
            {
                cx.log(Level::Info, format!("{}: {}", self.service, st.describe()));
                return Ok(());
            }
            if t0.elapsed() > limit {
                let logs = match self.names(cx) {
                    Ok(n) => match compose::container_of(cx, &n.project, &n.service).await {
                        Ok(Some(c)) => compose::docker(cx, &["logs", "--tail", "15", &c], &[])
                            .await
                            .unwrap_or_else(|e| format!("{e:#}")),
                        _ => "no container".into(),
                    },
                    Err(e) => format!("{e:#}"),
                };
                bail!(
                    "{} did not stream within {}s with replay lag ≤ {} and ≤ {}s: {}; its log: {}",
                    self.service,
                    limit.as_secs(),
                    self.max_lag,
                    self.max_lag_seconds,
                    st.map(|s| s.describe())
                        .unwrap_or_else(|| "the primary did not answer".into()),
                    logs
                );
            }
            if last_log.elapsed() > StdDuration::from_secs(5) {
                last_log = Instant::now();
                if let Some(st) = &st {
                    cx.log(
                        Level::Info,
                        format!("waiting for {}: {}", self.service, st.describe()),
                    );
                }
            }
            cx.cancel.sleep(StdDuration::from_millis(300)).await?;
        }
    }
}

async fn remove_container(cx: &StepCx, name: &str) -> anyhow::Result<()> {
    match compose::docker(cx, &["rm", "-f", "-v", name], &[]).await {
        Err(e) if format!("{e:#}").contains("No such container") => Ok(()),
        r => r.map(|_| ()),
    }
}

impl Step for ReadReplica {
    fn describe(&self) -> String {
        format!(
            "add {} streaming from {} (slot {}, replay lag ≤ {})",
            self.service,
            self.primary_service,
            self.slot(),
            self.max_lag
        )
    }

    fn validate(&self) -> Vec<(Option<&'static str>, String)> {
        let mut out = vec![];
        for (key, v) in [
            ("service", &self.service),
            ("primary_service", &self.primary_service),
            ("network", &self.network),
        ] {
            if !valid_name(v) {
                out.push((
                    Some(key),
                    format!("`{v}` is not a compose name (a-z, 0-9, _ and -)"),
                ));
            }
        }
        let slot = self.slot();
        if !valid_name(&slot) || slot.contains('-') {
            out.push((
                Some("slot"),
                format!("`{slot}` is not a slot name (a-z, 0-9 and _)"),
            ));
        }
        if !valid_name(&self.user) {
            out.push((
                Some("user"),
                format!("`{}` is not a plain role name", self.user),
            ));
        }
        if let Some(c) = &self.config_file
            && (c.starts_with('/') || c.split('/').any(|p| p == ".."))
        {
            out.push((Some("config_file"), "a path inside the files root".into()));
        }
        if parse_bytes(&self.max_lag).is_none() {
            out.push((
                Some("max_lag"),
                format!("`{}` is not a size such as \"16MB\"", self.max_lag),
            ));
        }
        out
    }

    fn reversibility(&self) -> Reversibility {
        Reversibility::Reversible(format!(
            "remove {} with its volume, drop slot {} (and the role and pg_hba line if this step made them)",
            self.service,
            self.slot()
        ))
    }

    async fn check(&self, cx: &StepCx) -> anyhow::Result<Vec<Check>> {
        let mut out = vec![];
        let n = match self.names(cx) {
            Ok(n) => n,
            Err(e) => return Ok(vec![Check::fail("target", format!("{e:#}"))]),
        };
        out.push(match self.password(cx) {
            Ok(_) => Check::pass("password", format!("{} is set", self.password_env)),
            Err(e) => Check::fail("password", format!("{e:#}")),
        });
        match self.primary_container(cx, &n).await {
            Ok(c) => out.push(Check::pass(
                "primary",
                format!("{c} runs {}", self.primary_service),
            )),
            Err(e) => out.push(Check::fail("primary", format!("{e:#}"))),
        }
        if let Some(f) = &self.config_file {
            let p = n.root.join(f);
            out.push(if p.is_file() {
                Check::pass("config_file", p.display().to_string())
            } else {
                Check::fail("config_file", format!("{} is not a file", p.display()))
            });
        }
        let c = match cx.postgres(&self.postgres).await {
            Ok(c) => c,
            Err(e) => {
                out.push(Check::fail(
                    "postgres",
                    format!("[postgres.{}]: {e:#}", self.postgres),
                ));
                return Ok(out);
            }
        };
        let row = c
            .query_one(
                "SELECT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user), \
                        current_setting('wal_level'), current_setting('max_wal_senders')::int, \
                        (SELECT count(*)::int FROM pg_stat_replication), \
                        current_setting('max_replication_slots')::int, \
                        (SELECT count(*)::int FROM pg_replication_slots)",
                &[],
            )
            .await
            .map_err(|e| anyhow!("{}", crate::infra::postgres::describe(&e)))?;
        let (su, wal_level, senders, used_senders, slots, used_slots): (
            bool,
            String,
            i32,
            i32,
            i32,
            i32,
        ) = (
            row.get(0),
            row.get(1),
            row.get(2),
            row.get(3),
            row.get(4),
            row.get(5),
        );
        out.push(if su {
            Check::pass(
                "superuser",
                format!("[postgres.{}] is a superuser's", self.postgres),
            )
        } else {
            Check::fail(
                "superuser",
                format!(
                    "[postgres.{}] is not a superuser's: roles, slots and pg_hba need one",
                    self.postgres
                ),
            )
        });
        out.push(if wal_level == "replica" || wal_level == "logical" {
            Check::pass("wal_level", wal_level)
        } else {
            Check::fail(
                "wal_level",
                format!("{wal_level}: streaming needs replica (a restart: pg_setting)"),
            )
        });
        let resumed = cx.checkpoint::<Saved>().ok().flatten().is_some();
        out.push(if used_senders < senders || resumed {
            Check::pass(
                "max_wal_senders",
                format!("{used_senders} of {senders} in use"),
            )
        } else {
            Check::fail("max_wal_senders", format!("all {senders} in use"))
        });
        match primary::slot(&c, &self.slot()).await? {
            None if used_slots >= slots => out.push(Check::fail(
                "slot",
                format!("all {slots} max_replication_slots are in use"),
            )),
            None => out.push(Check::pass("slot", format!("{} is free", self.slot()))),
            Some((false, _)) => out.push(Check::fail(
                "slot",
                format!("{} exists and is a logical slot", self.slot()),
            )),
            Some((true, true)) if !resumed => out.push(Check::fail(
                "slot",
                format!(
                    "{} is in use by another standby: choose another `slot`",
                    self.slot()
                ),
            )),
            Some(_) => out.push(Check::new(
                "slot",
                if resumed {
                    CheckStatus::Pass
                } else {
                    CheckStatus::Warn
                },
                format!(
                    "{} exists (inactive): it will be used and kept on rollback",
                    self.slot()
                ),
            )),
        }
        Ok(out)
    }

    async fn apply(&self, cx: &StepCx) -> anyhow::Result<()> {
        let n = self.names(cx)?;
        let mut s = match cx.checkpoint::<Saved>()? {
            Some(s) => s,
            None => {
                let s = self.probe(cx, &n).await?;
                cx.save_checkpoint(&s)?;
                s
            }
        };
        if s.stage < Stage::Primary {
            let c = cx.postgres(&self.postgres).await?;
            let (exists, can) = primary::role(&c, &self.user).await?;
            if !s.role_existed {
                primary::ensure_role(&c, &self.user, &self.password(cx)?, exists).await?;
            } else if !can {
                bail!(
                    "role {} exists without REPLICATION LOGIN: grant them or choose another `user`",
                    self.user
                );
            }
            self.edit_hba(cx, &n, &s, true).await?;
            if primary::slot(&c, &self.slot()).await?.is_none() {
                primary::create_slot(&c, &self.slot()).await?;
            }
            let text = std::fs::read_to_string(&n.env_file)?;
            let vars = [("COMPOSE_FILE".to_owned(), s.compose_files.clone())]
                .into_iter()
                .collect();
            s.compose_edit = Some(dotenv::plan_set(&text, &vars).0);
            s.stage = Stage::Primary;
            cx.save_checkpoint(&s)?;
        }
        if s.stage < Stage::Defined {
            let (image, labels) =
                compose::image_and_labels(cx, &self.primary_container(cx, &n).await?).await?;
            let yaml = compose::override_yaml(&compose::ServiceDef {
                version: &compose::compose_version(&n.root),
                service: &n.service,
                image: &image,
                network: &self.network,
                config_file: self.config_file.as_deref(),
                labels: &labels,
                run_id: &cx.run_id,
            });
            dotenv::write_atomic(&n.root.join(&n.override_file), yaml.as_bytes())?;
            let vars = [("COMPOSE_FILE".to_owned(), s.compose_files.clone())]
                .into_iter()
                .collect();
            dotenv::set(&n.env_file, &vars)?;
            compose::compose(
                cx,
                &n,
                &s.compose_files,
                &["up", "--no-start", "--no-deps", &n.service],
            )
            .await?;
            s.stage = Stage::Defined;
            cx.save_checkpoint(&s)?;
        }
        if s.stage < Stage::BackedUp {
            self.base_backup(cx, &n, &mut s).await?;
        }
        if s.stage < Stage::Started {
            compose::compose(
                cx,
                &n,
                &s.compose_files,
                &["up", "-d", "--no-deps", &n.service],
            )
            .await?;
            s.stage = Stage::Started;
            cx.save_checkpoint(&s)?;
        }
        self.wait_streaming(cx, self.wait_timeout.get()).await
    }

    async fn verify(&self, cx: &StepCx) -> anyhow::Result<()> {
        self.wait_streaming(cx, StdDuration::from_secs(30)).await
    }

    async fn rollback(&self, cx: &StepCx) -> anyhow::Result<()> {
        let Some(s) = cx.checkpoint::<Saved>()? else {
            return Ok(());
        };
        let n = self.names(cx)?;
        if let Some(c) = compose::container_of(cx, &n.project, &n.service).await? {
            cx.log(Level::Info, format!("removing {c}"));
            remove_container(cx, &c).await?;
        }
        remove_container(cx, &n.backup_container()).await?;
        if let Some(v) = compose::object_named(cx, "volume", &n.project, &n.volume_key()).await? {
            compose::docker(cx, &["volume", "rm", &v], &[]).await?;
        }
        if let Some(edit) = &s.compose_edit {
            dotenv::revert(&n.env_file, edit)?;
        }
        match std::fs::remove_file(n.root.join(&n.override_file)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        let c = cx.postgres(&self.postgres).await?;
        if !s.slot_existed {
            primary::drop_slot(&c, &self.slot(), cx).await?;
        }
        self.edit_hba(cx, &n, &s, false).await?;
        if !s.role_existed {
            primary::drop_role(&c, &self.user).await?;
        }
        Ok(())
    }
}
