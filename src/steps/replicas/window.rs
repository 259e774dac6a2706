//! `scale` to 0 and back (a maintenance window): the count a scale to 0 had is kept in the
//! run's directory for a later `replicas = "recorded"`; up from 0 there is no replica to
//! clone, so compose creates them (`docker-compose up --no-deps --scale`), from the files
//! and the env file as they are now; going to or from 0 running is journaled (`replicas`
//! records), which `ferry report` marks as the downtime.

use anyhow::{Context, bail};
use serde::Deserialize;

use super::count::{self, Count};
use super::running_replicas;
use super::swap::{Gate, gate};
use crate::infra::docker::Docker;
use crate::report::Level;
use crate::steps::StepCx;

/// `deserialize_with` for `scale`'s `replicas`: a count (`count::replicas`) or
/// `"recorded"` (held as `Count::Current`).
pub fn replicas_or_recorded<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Count, D::Error> {
    let v = toml::Value::deserialize(d)?;
    Ok(match v.as_str() {
        Some("recorded") => Count::Current,
        _ => count::replicas(v).map_err(serde::de::Error::custom)?,
    })
}

/// Where a scale to 0 keeps the count it had, for `replicas = "recorded"`.
pub fn recorded_path(cx: &StepCx, service: &str) -> std::path::PathBuf {
    cx.run_dir().join(format!("replicas-before-0-{service}"))
}

/// The count a scale to 0 of `service` recorded earlier in this run.
pub fn recorded(cx: &StepCx, service: &str) -> anyhow::Result<u32> {
    let p = recorded_path(cx, service);
    let text = std::fs::read_to_string(&p).with_context(|| {
        format!(
            "`replicas = \"recorded\"`: no count recorded for `{service}` in this run \
             ({}); scale it to 0 in an earlier step of the same run",
            p.display()
        )
    })?;
    text.trim()
        .parse()
        .with_context(|| format!("{}: not a replica count", p.display()))
}

/// Up from 0: compose creates the replicas from the files and the env file as they are
/// now (no container to clone), then each must pass the health gate.
pub async fn compose_up(
    e: &Docker,
    cx: &StepCx,
    (project, service): (&str, &str),
    want: u32,
    g: &Gate<'_>,
) -> anyhow::Result<()> {
    let dir = cx
        .target()?
        .files_root()
        .context("scaling up from 0 needs the target's [files] root (the compose directory)")?;
    cx.log(
        Level::Info,
        format!("docker-compose up {service} with {want} replicas"),
    );
    let scale = format!("{service}={want}");
    let out = tokio::process::Command::new("docker-compose")
        .current_dir(&dir)
        .args(["-p", project, "up", "-d", "--no-deps", "--no-recreate"])
        .args(["--scale", &scale, service])
        .output()
        .await
        .with_context(|| format!("running docker-compose in {}", dir.display()))?;
    if !out.status.success() {
        bail!(
            "`docker-compose -p {project} up --scale {scale}` in {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    for r in running_replicas(e, project, service).await? {
        gate(e, cx, &r.name, g).await?;
    }
    Ok(())
}

/// A change to or from 0 running is journaled: `ferry report` marks the downtime.
pub fn journal_downtime(cx: &StepCx, service: &str, from: u32, to: u32) -> anyhow::Result<()> {
    if (from == 0) != (to == 0) {
        cx.replicas(service, to)?;
    }
    Ok(())
}
