//! kind = "scale": set a compose service's replica count. Up: create replicas in the next
//! container numbers (named as compose names them, every compose label kept) and
//! wait for each to turn healthy; down: stop and remove the highest-numbered ones. Rollback
//! restores the recorded count the same way. Put a `pool_capacity` check before it.
//! A new replica is what compose would create for the service now (`docker-compose config`:
//! image, environment, ports, volumes, networks…, `replicas::spec`), not a copy of the
//! newest one's settings. To 0 and back (`replicas = "recorded"`): `replicas::window`.

use anyhow::Context;
use bollard::models::NetworkingConfig;
use serde::{Deserialize, Serialize};

use super::replicas::count::Count;
use super::replicas::spec::{self, ServiceSpec};
use super::replicas::swap::{Body, CONFIG_HASH, Gate, clone_body, compose_hash, gate};
use super::replicas::{
    all_replicas, fhir_path, project_service, reconcile, running_replicas, traffic, window,
};
use super::{Check, Reversibility, Step, StepCx};
use crate::infra::docker::{Docker, NUMBER, Replica};
use crate::report::{Level, Unit};
use crate::util::duration::Duration;

pub const KEYS: &[&str] = &["service", "replicas", "health_timeout"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scale {
    pub service: Option<String>,
    /// A number (or a `{{ var }}` that renders as one): see `replicas::count`; or
    /// `"recorded"` (held as `Count::Current`): the count before this run scaled it to 0.
    #[serde(deserialize_with = "window::replicas_or_recorded")]
    pub replicas: Count,
    #[serde(default = "two_minutes")]
    pub health_timeout: Duration,
}

fn two_minutes() -> Duration {
    Duration::new(std::time::Duration::from_secs(120), "2m")
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Scaled {
    previous: u32,
    /// The number of the replica being created (journaled before its create): a re-entry
    /// starts, gates or removes that one (`replicas::reconcile::settle_new`).
    #[serde(default)]
    creating: Option<u32>,
    /// The number of the replica being stopped and removed: a re-entry finishes that.
    #[serde(default)]
    removing: Option<u32>,
}

/// `<project>_<service>_7` for number 7, from a sibling's name.
fn name_for(sibling: &Replica, number: u32) -> String {
    match sibling.name.rsplit_once('_') {
        Some((base, n)) if n.parse::<u32>().is_ok() => format!("{base}_{number}"),
        _ => format!("{}_{number}", sibling.name),
    }
}

impl Scale {
    /// What compose gives a new replica of the service now, and its config hash; None
    /// (with a warning) when compose cannot say.
    fn spec(
        &self,
        cx: &StepCx,
        project: &str,
        service: &str,
    ) -> Option<(ServiceSpec, Option<String>)> {
        let dir = cx.target().ok()?.files_root()?;
        match spec::load(&dir, project, service) {
            Ok(s) => Some((s, compose_hash(&dir, project, service))),
            Err(e) => {
                cx.log(
                    Level::Warn,
                    format!("{e:#}: new replicas copy the newest one's settings"),
                );
                None
            }
        }
    }

    /// The count to reach, at run time.
    fn want(&self, cx: &StepCx) -> anyhow::Result<u32> {
        if let Some(n) = self.replicas.fixed()? {
            return Ok(n);
        }
        let (_, service) = project_service(cx, self.service.as_deref())?;
        window::recorded(cx, &service)
    }

    /// Brings the service to `want` running replicas; safe to re-enter.
    async fn converge(
        &self,
        e: &Docker,
        cx: &StepCx,
        cp: &mut Scaled,
        want: u32,
    ) -> anyhow::Result<()> {
        let (project, service) = project_service(cx, self.service.as_deref())?;
        let path = fhir_path(cx);
        let g = Gate {
            health_timeout: self.health_timeout.get(),
            verify_version: None,
            fhir_path: &path,
            stop_timeout: 10,
            spec: None,
            drain: std::time::Duration::ZERO,
        };
        let mut spec = None;
        if let Some(k) = cp.creating {
            // Its aliases, once gated, are compose's for the service.
            let spec = spec.get_or_insert_with(|| self.spec(cx, &project, &service));
            let g = Gate {
                spec: spec.as_ref().map(|(s, _)| s),
                ..g
            };
            reconcile::settle_new(e, cx, (&project, &service), k, want, &g).await?;
            cp.creating = None;
            cx.save_checkpoint(cp)?;
        }
        if let Some(k) = cp.removing {
            // Its removal was decided: a stopped one is not left behind (nor started).
            if let Some(r) = all_replicas(e, &project, &service)
                .await?
                .into_iter()
                .find(|r| r.number == k)
            {
                cx.log(Level::Info, format!("{}: finishing its removal", r.name));
                e.remove_container(&r.name).await?;
            }
            cp.removing = None;
            cx.save_checkpoint(cp)?;
        }
        if want > 0 && running_replicas(e, &project, &service).await?.is_empty() {
            window::compose_up(e, cx, (&project, &service), want, &g).await?;
        }
        loop {
            let now = running_replicas(e, &project, &service).await?;
            let n = now.len() as u32;
            cx.progress(n.min(want) as u64, want as u64, Unit::Replicas);
            if n == want {
                return Ok(());
            }
            let newest = now
                .last()
                .with_context(|| format!("service `{service}` has no running replica to clone"))?
                .clone();
            if n < want {
                // Any container (even stopped) holding a number is skipped, as compose does.
                let taken: Vec<u32> = e
                    .replicas(&project, &service)
                    .await?
                    .iter()
                    .map(|r| r.number)
                    .collect();
                let number = (1..).find(|k| !taken.contains(k)).unwrap_or(n + 1);
                let name = name_for(&newest, number);
                let old = e
                    .inspect_container(&newest.id)
                    .await?
                    .context("the replica to clone vanished")?;
                // What compose would create for the service now (its image, environment,
                // ports, volumes, networks…), as `up --scale` would; the newest replica's
                // own settings only when compose's view is unavailable.
                let spec = spec.get_or_insert_with(|| self.spec(cx, &project, &service));
                let (image, hash) = match spec {
                    Some((s, hash)) => (
                        s.image.clone().unwrap_or_else(|| newest.image.clone()),
                        hash.clone(),
                    ),
                    None => (newest.image.clone(), None),
                };
                let hash = hash.or_else(|| {
                    old.config
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(CONFIG_HASH))
                        .cloned()
                });
                let Body { mut body, nets } = clone_body(
                    e,
                    &old,
                    &image,
                    hash.as_deref(),
                    spec.as_ref().map(|(s, _)| s),
                    false,
                )
                .await?;
                if let Some(l) = body.labels.as_mut() {
                    l.insert(NUMBER.into(), number.to_string());
                }
                // Created with no alias: it joins the service's rotation only once its
                // gate passed on its own port (as a rollout's clone, `replicas::traffic`).
                let bare = traffic::unaliased(&nets);
                body.networking_config = bare.first().map(|(n, ep)| NetworkingConfig {
                    endpoints_config: Some([(n.clone(), ep.clone())].into_iter().collect()),
                });
                cx.log(Level::Info, format!("starting {name}"));
                cp.creating = Some(number);
                cx.save_checkpoint(cp)?;
                let id = e.create_container(&name, body).await?;
                for (net, ep) in bare.into_iter().skip(1) {
                    e.connect_network(&net, &id, ep).await?;
                }
                e.start_container(&name).await?;
                let joined = async {
                    gate(e, cx, &name, &g).await?;
                    traffic::join(e, &name, &nets).await
                };
                if let Err(err) = joined.await {
                    let _ = e.remove_container(&name).await;
                    return Err(err);
                }
                cp.creating = None;
                cx.save_checkpoint(cp)?;
            } else {
                cx.log(Level::Info, format!("stopping {}", newest.name));
                cp.removing = Some(newest.number);
                cx.save_checkpoint(cp)?;
                e.stop_container(&newest.name, 10).await?;
                e.remove_container(&newest.name).await?;
                cp.removing = None;
                cx.save_checkpoint(cp)?;
            }
        }
    }
}

impl Step for Scale {
    fn validate(&self) -> Vec<(Option<&'static str>, String)> {
        let mut out = vec![];
        if let Some(e) = self.replicas.error() {
            out.push((Some("replicas"), e));
        }
        out
    }
    fn describe(&self) -> String {
        let svc = self.service.as_deref().unwrap_or("the service");
        match self.replicas {
            Count::Current => format!("scale {svc} back to its recorded replica count"),
            ref n => format!("scale {svc} to {n} replicas"),
        }
    }

    fn reversibility(&self) -> Reversibility {
        Reversibility::Reversible("scale back to the recorded replica count".into())
    }

    async fn check(&self, cx: &StepCx) -> anyhow::Result<Vec<Check>> {
        let e = match cx.docker().await {
            Ok(e) => e,
            Err(err) => return Ok(vec![Check::fail("docker", format!("{err:#}"))]),
        };
        let (project, service) = match project_service(cx, self.service.as_deref()) {
            Ok(ps) => ps,
            Err(err) => return Ok(vec![Check::fail("service", format!("{err:#}"))]),
        };
        let now = match cx.checkpoint::<Scaled>().ok().flatten() {
            // Re-entered: the replica being created may not run yet.
            Some(cp) => {
                let in_flight = cp.creating.or(cp.removing);
                reconcile::replicas_on_reentry(&e, &project, &service, in_flight).await
            }
            None => running_replicas(&e, &project, &service).await,
        };
        let up_from_zero = self.replicas != Count::Fixed(0);
        Ok(vec![match now {
            Ok(r) if r.is_empty() && up_from_zero && cx.target()?.files_root().is_some() => {
                Check::pass(
                    "service",
                    format!("{project}/{service}: 0 running, docker-compose creates them"),
                )
            }
            Ok(r) if r.is_empty() => Check::fail(
                "service",
                format!("no running replica of `{service}` in `{project}` to scale from"),
            ),
            Ok(r) => Check::pass(
                "service",
                format!(
                    "{project}/{service}: {} → {} replicas",
                    r.len(),
                    self.replicas
                ),
            ),
            Err(err) => Check::fail("service", format!("{err:#}")),
        }])
    }

    async fn done(&self, cx: &StepCx) -> anyhow::Result<bool> {
        if cx.checkpoint::<Scaled>()?.is_some() {
            return Ok(false);
        }
        let (project, service) = project_service(cx, self.service.as_deref())?;
        Ok(running_replicas(&cx.docker().await?, &project, &service)
            .await?
            .len() as u32
            == self.want(cx)?)
    }

    async fn apply(&self, cx: &StepCx) -> anyhow::Result<()> {
        let e = cx.docker().await?;
        let mut cp = match cx.checkpoint::<Scaled>()? {
            Some(cp) => cp,
            None => {
                let (project, service) = project_service(cx, self.service.as_deref())?;
                let previous = running_replicas(&e, &project, &service).await?.len() as u32;
                if self.replicas == Count::Fixed(0) && previous > 0 {
                    std::fs::write(window::recorded_path(cx, &service), previous.to_string())
                        .context("keeping the replica count in the run's directory")?;
                }
                let cp = Scaled {
                    previous,
                    ..Default::default()
                };
                cx.save_checkpoint(&cp)?;
                cp
            }
        };
        let want = self.want(cx)?;
        self.converge(&e, cx, &mut cp, want).await?;
        let (_, service) = project_service(cx, self.service.as_deref())?;
        window::journal_downtime(cx, &service, cp.previous, want)
    }

    async fn rollback(&self, cx: &StepCx) -> anyhow::Result<()> {
        let Some(mut s) = cx.checkpoint::<Scaled>()? else {
            return Ok(());
        };
        let previous = s.previous;
        let e = cx.docker().await?;
        // Counted without `running_replicas`' refusal: a replica a killed run left created
        // (not started) is `converge`'s to settle, not a reason to stop here.
        let now = {
            let (project, service) = project_service(cx, self.service.as_deref())?;
            let all = e.replicas(&project, &service).await?;
            all.iter().filter(|r| r.state == "running").count() as u32
        };
        self.converge(&e, cx, &mut s, previous).await?;
        let (_, service) = project_service(cx, self.service.as_deref())?;
        window::journal_downtime(cx, &service, now, previous)
    }
}
