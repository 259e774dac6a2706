//! kind = "rolling_redeploy": replace a compose service's replicas one at a time, in
//! container-number order, behind health gates (Docker's `healthy`, then the expected
//! `/fhir/metadata` version on the replica's own port). The seed's
//! `docker-compose up -d --no-deps hapi` recreates every replica at once; this keeps the
//! service up and rolls back by itself.
//!
//! It also sets `HAPI_IMAGE` in the env file (journaled before the edit, like `env_set`), so
//! that a later `docker-compose up -d` agrees, and recomputes compose's config hash from it.
//! A replica is done when it runs the new image id and carries that hash (a new tag of the
//! running image is still rolled out).
//! Checkpoint after every replica: resume continues with the next one. Rollback puts every
//! replaced replica back on its previous image the same way, then restores the env file.

use std::path::PathBuf;

use anyhow::{Context, anyhow, bail};
use serde::{Deserialize, Serialize};

use super::replicas::reconcile::{self, Want};
use super::replicas::spec::{self, ServiceSpec};
use super::replicas::swap::{self, CONFIG_HASH, Gate, compose_hash};
use super::replicas::{all_replicas, fhir_path, not_running, project_service, running_replicas};
use super::{Check, Reversibility, Step, StepCx};
use crate::infra::docker::{Docker, Replica};
use crate::infra::dotenv::{self, Edit};
use crate::report::{CheckStatus, Level, Unit};
use crate::util::duration::Duration;
use crate::util::image_ref;

pub const KEYS: &[&str] = &[
    "service",
    "image",
    "max_unavailable",
    "max_surge",
    "health_timeout",
    "verify_version",
    "env_key",
    "env_file",
    "stop_timeout",
    "drain",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollingRedeploy {
    pub service: Option<String>,
    /// The image to roll out; omitted: the one `env_key` names in the env file now (the
    /// same image again, so only replicas whose compose configuration changed — an env
    /// file edited by an earlier step — are recreated).
    pub image: Option<String>,
    #[serde(default)]
    pub max_unavailable: u32,
    #[serde(default = "one")]
    pub max_surge: u32,
    #[serde(default = "two_minutes")]
    pub health_timeout: Duration,
    pub verify_version: Option<String>,
    #[serde(default = "hapi_image")]
    pub env_key: String,
    pub env_file: Option<PathBuf>,
    #[serde(default = "ten")]
    pub stop_timeout: i32,
    /// How long an old replica keeps serving its requests in flight after it left the
    /// service's alias, before it is stopped; default: the service's stop_grace_period.
    pub drain: Option<Duration>,
}

fn one() -> u32 {
    1
}
fn ten() -> i32 {
    10
}
fn two_minutes() -> Duration {
    Duration::new(std::time::Duration::from_secs(120), "2m")
}
fn hapi_image() -> String {
    "HAPI_IMAGE".into()
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Rollout {
    /// The image every replica ran before (what rollback restores).
    previous_image: String,
    env_edit: Option<Edit>,
    /// Container numbers already on the new image.
    done: Vec<u32>,
    /// The replica being replaced (by the rollout, or by its rollback): a re-entry knows a
    /// stopped one with no clone is ferry's doing (see `replicas::reconcile`).
    #[serde(default)]
    in_flight: Option<u32>,
}

impl RollingRedeploy {
    /// The image to roll out (see `image`).
    fn image(&self, cx: &StepCx) -> anyhow::Result<String> {
        if let Some(i) = &self.image {
            return Ok(i.clone());
        }
        let env = self.env_path(cx)?;
        dotenv::read(&env)
            .with_context(|| format!("reading {}", env.display()))?
            .remove(&self.env_key)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                anyhow!(
                    "{} does not set {}: set the step's `image`",
                    env.display(),
                    self.env_key
                )
            })
    }

    fn compose_dir(&self, cx: &StepCx) -> anyhow::Result<PathBuf> {
        cx.target()?
            .files_root()
            .context("the target has no [files] root (where docker-compose.yml and .env are)")
    }

    fn env_path(&self, cx: &StepCx) -> anyhow::Result<PathBuf> {
        match &self.env_file {
            Some(f) if f.is_absolute() => Ok(f.clone()),
            Some(f) => Ok(self.compose_dir(cx)?.join(f)),
            None => cx
                .target()?
                .env_file()
                .context("the target has no [files] root (where docker-compose.yml and .env are)"),
        }
    }

    /// The replicas the check expects running: all of them on a first attempt; on a
    /// re-entry, one an interrupted replacement stopped is left to `reconcile::settle`.
    async fn replicas_to_check(
        &self,
        cx: &StepCx,
        e: &Docker,
        project: &str,
        service: &str,
    ) -> anyhow::Result<Vec<Replica>> {
        match cx.checkpoint::<Rollout>().ok().flatten() {
            Some(cp) => reconcile::replicas_on_reentry(e, project, service, cp.in_flight).await,
            None => running_replicas(e, project, service).await,
        }
    }

    fn gate<'a>(
        &'a self,
        path: &'a str,
        version: Option<&'a str>,
        spec: Option<&'a ServiceSpec>,
    ) -> Gate<'a> {
        Gate {
            health_timeout: self.health_timeout.get(),
            verify_version: version,
            fhir_path: path,
            stop_timeout: self.stop_timeout,
            spec,
            drain: self.drain.as_ref().map_or_else(
                || {
                    spec.and_then(|s| s.stop_grace)
                        .unwrap_or(std::time::Duration::from_secs(10))
                },
                Duration::get,
            ),
        }
    }

    /// What compose gives a container of the service with the env file as it is now.
    fn spec(&self, cx: &StepCx, project: &str, service: &str) -> Option<ServiceSpec> {
        let dir = self.compose_dir(cx).ok()?;
        match spec::load(&dir, project, service) {
            Ok(s) => Some(s),
            Err(e) => {
                cx.log(
                    Level::Warn,
                    format!("{e:#}: new replicas keep the old ones' environment and command"),
                );
                None
            }
        }
    }
}

/// A replica already as the rollout leaves it: on `image_id` and, when compose's hash of
/// the service is known, labelled with it. A tag of the image that is already running (a
/// promotion) still changes the hash (`.env` names the new tag), so those replicas are
/// replaced too: otherwise the next `docker-compose up -d` would recreate them all at once.
fn up_to_date(r: &Replica, image_id: &str, hash: Option<&str>) -> bool {
    r.image_id == image_id
        && hash.is_none_or(|h| r.labels.get(CONFIG_HASH).map(String::as_str) == Some(h))
}

impl Step for RollingRedeploy {
    fn validate(&self) -> Vec<(Option<&'static str>, String)> {
        let mut out = vec![];
        if self.max_surge > 1
            || self.max_unavailable > 1
            || self.max_surge + self.max_unavailable == 0
        {
            out.push((
                Some("max_surge"),
                "one replica at a time: max_surge and max_unavailable are 0 or 1, not both 0"
                    .into(),
            ));
        }
        if let Some(image) = &self.image
            && let Err(e) = image_ref::check(image, image_ref::Digest::Allowed)
        {
            out.push((Some("image"), e));
        }
        out
    }
    fn describe(&self) -> String {
        let v = self
            .verify_version
            .as_deref()
            .map(|v| format!(", each must report {v}"))
            .unwrap_or_default();
        format!(
            "replace {} replicas one at a time with {}{v}",
            self.service.as_deref().unwrap_or("the service's"),
            self.image.as_deref().map_or_else(
                || format!(
                    "the image {} names (compose configuration changes)",
                    self.env_key
                ),
                str::to_owned
            )
        )
    }

    fn reversibility(&self) -> Reversibility {
        Reversibility::Reversible(format!(
            "put every replaced replica back on its previous image, restore {}",
            self.env_key
        ))
    }

    async fn check(&self, cx: &StepCx) -> anyhow::Result<Vec<Check>> {
        let e = match cx.docker().await {
            Ok(e) => e,
            Err(e) => return Ok(vec![Check::fail("docker", format!("{e:#}"))]),
        };
        let mut checks = vec![];
        match project_service(cx, self.service.as_deref()) {
            Err(err) => checks.push(Check::fail("service", format!("{err:#}"))),
            Ok((p, s)) => match self.replicas_to_check(cx, &e, &p, &s).await {
                Ok(r) if r.is_empty() => checks.push(Check::fail(
                    "service",
                    format!("no running replica of service `{s}` in compose project `{p}`"),
                )),
                Ok(r) => checks.push(Check::pass(
                    "service",
                    format!(
                        "{} running replicas of {p}/{s}: {}",
                        r.len(),
                        r.iter()
                            .map(|x| x.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )),
                Err(err) => checks.push(Check::fail("service", format!("{err:#}"))),
            },
        }
        let image = match self.image(cx) {
            Ok(i) => i,
            Err(err) => {
                checks.push(Check::fail("image", format!("{err:#}")));
                return Ok(checks);
            }
        };
        checks.push(match e.inspect_image(&image).await {
            Ok(Some(i)) => Check::pass(
                "image",
                format!("{image} is here ({})", &i.id[..i.id.len().min(19)]),
            ),
            Ok(None) if cx.preflight && cx.after_changes => Check::new(
                "image",
                CheckStatus::Deferred,
                format!("{image} is built by an earlier step"),
            ),
            Ok(None) => Check::fail("image", format!("image {image} is not on this Docker host")),
            Err(err) => Check::fail("image", format!("{err:#}")),
        });
        match self.env_path(cx) {
            Ok(p) if p.is_file() => checks.push(Check::pass(
                "env",
                format!("{} sets {}", p.display(), self.env_key),
            )),
            Ok(p) => checks.push(Check::fail(
                "env",
                format!("{} does not exist", p.display()),
            )),
            Err(err) => checks.push(Check::fail("env", format!("{err:#}"))),
        }
        Ok(checks)
    }

    async fn apply(&self, cx: &StepCx) -> anyhow::Result<()> {
        let e = cx.docker().await?;
        let (project, service) = project_service(cx, self.service.as_deref())?;
        let image = self.image(cx)?;
        let new_id = e
            .inspect_image(&image)
            .await?
            .ok_or_else(|| anyhow!("image {image} is not on this Docker host"))?
            .id;
        let mut cp: Rollout = cx.checkpoint()?.unwrap_or_default();
        if cp.previous_image.is_empty() {
            // First attempt: nothing touched yet, so every replica must be running.
            let replicas = running_replicas(&e, &project, &service).await?;
            if replicas.is_empty() {
                bail!("no running replica of service `{service}` in compose project `{project}`");
            }
            cp.previous_image = replicas
                .iter()
                .find(|r| r.image_id != new_id)
                .map_or_else(|| replicas[0].image.clone(), |r| r.image.clone());
            cx.save_checkpoint(&cp)?;
        }
        let env = self.env_path(cx)?;
        let text =
            std::fs::read_to_string(&env).with_context(|| format!("reading {}", env.display()))?;
        let vars = [(self.env_key.clone(), image.clone())]
            .into_iter()
            .collect();
        let (edit, new) = dotenv::plan_set(&text, &vars);
        // The edit is journaled before the file is written; a re-entry after a kill between
        // the two writes it again (the journaled edit, planned on the original, stays).
        if cp.env_edit.is_none() {
            cp.env_edit = Some(edit);
            cx.save_checkpoint(&cp)?;
        }
        if let Some(new) = new {
            dotenv::write_atomic(&env, new.as_bytes())?;
        }
        let hash = compose_hash(&self.compose_dir(cx)?, &project, &service);
        if hash.is_none() {
            cx.log(Level::Warn, "docker-compose config --hash failed: replicas keep their old config-hash label, so compose will recreate them on its next `up`");
        }
        let path = fhir_path(cx);
        let spec = self.spec(cx, &project, &service);
        let gate = self.gate(&path, self.verify_version.as_deref(), spec.as_ref());
        let want = Want {
            image_id: &new_id,
            hash: hash.as_deref(),
        };
        reconcile::settle(&e, cx, (&project, &service), &want, cp.in_flight, &gate).await?;
        let replicas = running_replicas(&e, &project, &service).await?;
        let total = replicas.len() as u64;
        for (i, r) in replicas.iter().enumerate() {
            cx.progress(i as u64, total, Unit::Replicas);
            if cp.done.contains(&r.number) || up_to_date(r, &new_id, hash.as_deref()) {
                if !cp.done.contains(&r.number) {
                    cp.done.push(r.number);
                    cx.save_checkpoint(&cp)?;
                }
                continue;
            }
            cx.log(
                Level::Info,
                format!("replacing {} ({} → {image})", r.name, r.image),
            );
            cp.in_flight = Some(r.number);
            cx.save_checkpoint(&cp)?;
            swap::replace(
                &e,
                cx,
                &r.name,
                &image,
                hash.as_deref(),
                self.max_surge > 0,
                &gate,
            )
            .await?;
            cp.done.push(r.number);
            cp.in_flight = None;
            cx.save_checkpoint(&cp)?;
        }
        cx.progress(total, total, Unit::Replicas);
        Ok(())
    }

    async fn verify(&self, cx: &StepCx) -> anyhow::Result<()> {
        let e = cx.docker().await?;
        let (project, service) = project_service(cx, self.service.as_deref())?;
        let new_id = e
            .inspect_image(&self.image(cx)?)
            .await?
            .map(|i| i.id)
            .unwrap_or_default();
        let hash = compose_hash(&self.compose_dir(cx)?, &project, &service);
        let stale: Vec<String> = running_replicas(&e, &project, &service)
            .await?
            .into_iter()
            .filter(|r| !up_to_date(r, &new_id, hash.as_deref()))
            .map(|r| r.name)
            .collect();
        if !stale.is_empty() {
            bail!(
                "replicas still on another image or compose configuration: {}",
                stale.join(", ")
            );
        }
        Ok(())
    }

    async fn rollback(&self, cx: &StepCx) -> anyhow::Result<()> {
        let Some(mut cp) = cx.checkpoint::<Rollout>()? else {
            return Ok(());
        };
        let e = cx.docker().await?;
        let (project, service) = project_service(cx, self.service.as_deref())?;
        if let Some(edit) = &cp.env_edit {
            dotenv::revert(&self.env_path(cx)?, edit)?;
        }
        let hash = compose_hash(&self.compose_dir(cx)?, &project, &service);
        let prev_id = e
            .inspect_image(&cp.previous_image)
            .await?
            .ok_or_else(|| {
                anyhow!(
                    "the previous image {} is gone from this Docker host: cannot roll back",
                    cp.previous_image
                )
            })?
            .id;
        let path = fhir_path(cx);
        let spec = self.spec(cx, &project, &service);
        let gate = self.gate(&path, None, spec.as_ref());
        // The rollout's clones are unwanted here, the rollback's own (re-entered) wanted.
        let want = Want {
            image_id: &prev_id,
            hash: hash.as_deref(),
        };
        reconcile::settle(&e, cx, (&project, &service), &want, cp.in_flight, &gate).await?;
        // Every replica not on the previous image (or not labelled with the restored .env's
        // config hash), newest first: also one replaced just before ferry died, whose number
        // the checkpoint never got. One of them that is not
        // running is not skipped: the rollback stops, saying what to do.
        let every = all_replicas(&e, &project, &service).await?;
        let n = every.len();
        let todo: Vec<_> = every
            .into_iter()
            .rev()
            .filter(|r| !up_to_date(r, &prev_id, hash.as_deref()))
            .collect();
        if let Some(msg) = not_running(&todo, n, &project, &service) {
            bail!(msg);
        }
        for r in &todo {
            cx.log(
                Level::Info,
                format!("restoring {} to {}", r.name, cp.previous_image),
            );
            cp.in_flight = Some(r.number);
            cx.save_checkpoint(&cp)?;
            swap::replace(
                &e,
                cx,
                &r.name,
                &cp.previous_image,
                hash.as_deref(),
                self.max_surge > 0,
                &gate,
            )
            .await?;
            cp.in_flight = None;
            cx.save_checkpoint(&cp)?;
        }
        Ok(())
    }

    fn owns_timeout(&self) -> bool {
        false
    }
}
