//! The compose service's replicas, as `rolling_redeploy`, `scale`, `pool_capacity` and
//! `metadata_check` see them: the project and service the target names, the replicas that
//! are running, and each replica's own URL on its published 127.0.0.1 port (never a
//! container's private address). `swap` replaces one replica.

pub mod count;
pub mod swap;

use anyhow::{Context, anyhow};

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

/// Running replicas, without the temporary clones of a replacement in progress.
pub async fn running_replicas(
    engine: &Docker,
    project: &str,
    service: &str,
) -> anyhow::Result<Vec<Replica>> {
    Ok(engine
        .replicas(project, service)
        .await?
        .into_iter()
        .filter(|r| r.state == "running" && !r.name.ends_with(TEMP_SUFFIX))
        .collect())
}

pub async fn current_replicas(cx: &StepCx) -> anyhow::Result<u32> {
    let (project, service) = project_service(cx, None)?;
    Ok(running_replicas(&cx.docker().await?, &project, &service)
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

/// Every running replica with its own base URL.
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
