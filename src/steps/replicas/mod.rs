//! The compose service's replicas, as `rolling_redeploy`, `scale`, `pool_capacity` and
//! `metadata_check` see them: the project and service the target names, every replica of
//! it (all of which must be running: none is skipped), and each replica's own URL on its
//! published 127.0.0.1 port (never a container's private address). `swap` replaces one
//! replica; `spec` is what compose gives a container of the service (with `host` and
//! `runtime`), `traffic` moves a replica in and out of its aliases.

pub mod count;
pub mod host;
pub mod reconcile;
pub mod refs;
pub mod runtime;
pub mod spec;
pub mod swap;
pub mod traffic;
pub mod window;

use anyhow::{Context, anyhow, bail};

use super::StepCx;
use crate::infra::docker::{self, Docker, Replica};

/// The name ending of a replica's temporary clone while it is being replaced.
pub const TEMP_SUFFIX: &str = "-ferry-next";

/// (compose project, service): the step's `service` overrides the target's.
pub fn project_service(cx: &StepCx, service: Option<&str>) -> anyhow::Result<(String, String)> {
    let d = cx
        .target()?
        .docker
        .as_ref()
        .context("the target has no [docker] section")?;
    let project = d
        .compose_project
        .clone()
        .context("the target's [docker] has no compose_project")?;
    let service = service
        .map(str::to_owned)
        .or_else(|| d.service.clone())
        .context("no service: set `service` or the target's docker.service")?;
    Ok((project, service))
}

/// Every replica of the service whatever its state (running, paused, exited, created…),
/// without the temporary clones of a replacement in progress: a clone is not a replica.
pub async fn all_replicas(
    engine: &Docker,
    project: &str,
    service: &str,
) -> anyhow::Result<Vec<Replica>> {
    Ok(engine
        .replicas(project, service)
        .await?
        .into_iter()
        .filter(|r| !r.name.ends_with(TEMP_SUFFIX))
        .collect())
}

/// Every replica of the service, each of which must be running. A paused, exited or
/// created (never started) one is never skipped: it would keep its old image and serve it
/// once it runs again. The error names each such replica, its state and what to do.
pub async fn running_replicas(
    engine: &Docker,
    project: &str,
    service: &str,
) -> anyhow::Result<Vec<Replica>> {
    let all = all_replicas(engine, project, service).await?;
    if let Some(msg) = not_running(&all, all.len(), project, service) {
        bail!(msg);
    }
    Ok(all)
}

/// The message for the replicas among `these` that are not running, if any; `n` is the
/// service's replica count (for the compose command it suggests).
pub fn not_running(these: &[Replica], n: usize, project: &str, service: &str) -> Option<String> {
    let compose = format!(
        "`docker-compose -p {project} up -d --no-recreate --scale {service}={n} {service}` in the compose directory"
    );
    let each: Vec<String> = these
        .iter()
        .filter(|r| r.state != "running")
        .map(|r| {
            let name = &r.name;
            let status = if r.status.is_empty() {
                String::new()
            } else {
                format!(" ({})", r.status)
            };
            match r.state.as_str() {
                "paused" => format!("{name} is paused: unpause it with `docker unpause {name}`"),
                "created" => format!(
                    "{name} is created but was never started: start it with `docker start {name}` (or {compose}), or remove it with `docker rm {name}`"
                ),
                "exited" => format!(
                    "{name} is exited{status}: start it with `docker start {name}` (or {compose}), or remove it with `docker rm {name}`"
                ),
                "restarting" => format!(
                    "{name} is restarting{status}: see `docker logs {name}`, then fix it or remove it with `docker rm -f {name}`"
                ),
                other => format!(
                    "{name} is {}{status}: remove it with `docker rm -f {name}`",
                    if other.is_empty() { "in an unknown state" } else { other }
                ),
            }
        })
        .collect();
    if each.is_empty() {
        return None;
    }
    Some(format!(
        "not every replica of {project}/{service} is running, and none is skipped (one left out keeps its old image and serves it once it runs again): {}; then run again",
        each.join("; ")
    ))
}

/// The replica count `pool_capacity` means by "current": every replica, running or not
/// (a stopped or paused one takes its pool again once it runs).
pub async fn current_replicas(cx: &StepCx) -> anyhow::Result<u32> {
    let (project, service) = project_service(cx, None)?;
    Ok(all_replicas(&cx.docker().await?, &project, &service)
        .await?
        .len() as u32)
}

/// The path part of the target's FHIR base URL (`/fhir`), to address a replica directly.
pub fn fhir_path(cx: &StepCx) -> String {
    cx.target
        .as_deref()
        .and_then(|t| t.fhir.as_ref())
        .and_then(|f| reqwest::Url::parse(&f.base_url).ok())
        .map_or_else(
            || "/fhir".into(),
            |u| u.path().trim_end_matches('/').to_owned(),
        )
}

/// A replica's base URL on its published loopback port.
pub fn replica_url(info: &docker::ContainerInfo, path: &str) -> anyhow::Result<String> {
    let port = info
        .host_ports
        .iter()
        .min_by_key(|(k, _)| (*k).clone())
        .map(|(_, p)| *p)
        .ok_or_else(|| anyhow!("replica {} publishes no port on the host", info.name))?;
    Ok(format!("http://127.0.0.1:{port}{path}"))
}

/// Every replica with its own base URL (an error when one is not running).
pub async fn replica_urls(cx: &StepCx) -> anyhow::Result<Vec<(String, String)>> {
    let (project, service) = project_service(cx, None)?;
    let engine = cx.docker().await?;
    let path = fhir_path(cx);
    let mut out = vec![];
    for r in running_replicas(&engine, &project, &service).await? {
        let info = engine
            .inspect_container(&r.id)
            .await?
            .with_context(|| format!("replica {} vanished", r.name))?;
        out.push((r.name.clone(), replica_url(&info, &path)?));
    }
    Ok(out)
}
