//! Replacing one replica the way docker-compose (v1 and v2) still recognises it: a clone with
//! every `com.docker.compose.*` label (container number kept, `config-hash` recomputed, v2's
//! `com.docker.compose.image` set), and what compose derives from the files *now*
//! (environment, labels, command, healthcheck…, ports, volumes, restart policy, networks
//! and aliases: `spec` and `host`, from `docker-compose config`), never the old
//! container's values of those, which came from the old files and `.env`; its data
//! volumes are carried over as compose carries them. Without a spec (compose unavailable)
//! the old container's own settings are kept, minus the old image's ENV.
//! The clone is started under a temporary name with no alias, must turn healthy (and report
//! the expected version) on its own port, and only then joins the service's aliases and
//! takes the old one's place; the old one leaves the aliases, drains, and is stopped
//! (`traffic`). A replica that fails its gate is removed and the old one kept.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bollard::models::{ContainerCreateBody, EndpointSettings, NetworkingConfig};

use super::refs;
use super::spec::{self, ServiceSpec};
use super::{TEMP_SUFFIX, replica_url, traffic};
use crate::infra::docker::{ContainerInfo, Docker};
use crate::steps::StepCx;

pub const CONFIG_HASH: &str = "com.docker.compose.config-hash";
pub const IMAGE_ID: &str = "com.docker.compose.image";

pub struct Gate<'a> {
    pub health_timeout: Duration,
    pub verify_version: Option<&'a str>,
    pub fhir_path: &'a str,
    pub stop_timeout: i32,
    /// What compose gives a container of the service now; None: keep the old one's.
    pub spec: Option<&'a ServiceSpec>,
    /// How long the old replica serves its requests in flight after leaving the rotation.
    pub drain: Duration,
}

pub fn temp_name(name: &str) -> String {
    format!("{name}{TEMP_SUFFIX}")
}

/// A container to create: its request (the first network in it) and every network.
pub struct Body {
    pub body: ContainerCreateBody,
    /// Every endpoint, the first one's included, with the aliases it serves under.
    pub nets: Vec<(String, EndpointSettings)>,
}

/// What to create: `old` run on `image`, its own settings kept, the old image's dropped;
/// then, with a `spec`, every field compose derives from the files replaced by compose's
/// (environment, labels, command…, ports, volumes, restart policy, networks and aliases).
/// `replaces`: the new container takes `old`'s place (and its data volumes), rather than
/// a new replica number modelled on it.
pub async fn clone_body(
    engine: &Docker,
    old: &ContainerInfo,
    image: &str,
    config_hash: Option<&str>,
    spec: Option<&ServiceSpec>,
    replaces: bool,
) -> anyhow::Result<Body> {
    let old_img = engine
        .image_config(&old.image_id)
        .await?
        .unwrap_or_default();
    let new_id = engine
        .inspect_image(image)
        .await?
        .with_context(|| format!("image {image} is not on this Docker host"))?
        .id;
    let c = &old.config;
    let minus = |mine: &Option<Vec<String>>, theirs: &Option<Vec<String>>| -> Option<Vec<String>> {
        let theirs = theirs.clone().unwrap_or_default();
        mine.as_ref()
            .map(|m| m.iter().filter(|e| !theirs.contains(e)).cloned().collect())
    };
    let own = |mine: &Option<Vec<String>>, theirs: &Option<Vec<String>>| {
        if mine == theirs { None } else { mine.clone() }
    };
    let mut labels: std::collections::HashMap<String, String> = c
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, v)| old_img.labels.as_ref().and_then(|l| l.get(k)) != Some(v))
        .collect();
    if let Some(h) = config_hash {
        labels.insert(CONFIG_HASH.into(), h.into());
    }
    labels.insert(IMAGE_ID.into(), new_id);
    let short = &old.id[..old.id.len().min(12)];
    let mut nets: Vec<(String, EndpointSettings)> = old
        .networks
        .iter()
        .map(|(n, e)| {
            let aliases = e
                .aliases
                .as_ref()
                .map(|a| a.iter().filter(|x| x.as_str() != short).cloned().collect());
            (
                n.clone(),
                EndpointSettings {
                    aliases,
                    links: e.links.clone(),
                    driver_opts: e.driver_opts.clone(),
                    ..Default::default()
                },
            )
        })
        .collect();
    nets.sort_by(|a, b| a.0.cmp(&b.0));
    let mut body = ContainerCreateBody {
        image: Some(image.to_owned()),
        env: minus(&c.env, &old_img.env),
        cmd: own(&c.cmd, &old_img.cmd),
        entrypoint: own(&c.entrypoint, &old_img.entrypoint),
        healthcheck: if c.healthcheck == old_img.healthcheck {
            None
        } else {
            c.healthcheck.clone()
        },
        working_dir: c
            .working_dir
            .clone()
            .filter(|w| Some(w) != old_img.working_dir.as_ref() && !w.is_empty()),
        user: c
            .user
            .clone()
            .filter(|u| Some(u) != old_img.user.as_ref() && !u.is_empty()),
        stop_signal: c
            .stop_signal
            .clone()
            .filter(|s| Some(s) != old_img.stop_signal.as_ref()),
        exposed_ports: c.exposed_ports.clone(),
        labels: Some(labels),
        host_config: Some(old.host_config.clone()),
        ..Default::default()
    };
    if let Some(spec) = spec {
        spec::apply(
            &mut body,
            spec,
            replaces.then_some(old),
            old_img.volumes.as_deref().unwrap_or_default(),
        );
        if let Some(want) = &spec.host.networks {
            // Compose's networks and aliases (and links, by `refs`).
            nets = want.clone();
        }
        let project = c
            .labels
            .as_ref()
            .and_then(|l| l.get("com.docker.compose.project"))
            .cloned()
            .unwrap_or_default();
        refs::apply(engine, &project, &spec.refs, &mut body, &mut nets).await?;
    }
    body.networking_config = nets.first().map(|(n, e)| NetworkingConfig {
        endpoints_config: Some([(n.clone(), e.clone())].into_iter().collect()),
    });
    Ok(Body { body, nets })
}

/// Waits for Docker's health status `healthy` (or running, for an image without a
/// healthcheck), then for the expected version on the replica's own port.
pub async fn gate(engine: &Docker, cx: &StepCx, name: &str, g: &Gate<'_>) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut seen = String::from("not started");
    loop {
        let info = engine
            .inspect_container(name)
            .await?
            .with_context(|| format!("{name} vanished"))?;
        if !info.running {
            bail!(
                "{name} exited (code {}) before turning healthy",
                info.exit_code.unwrap_or(-1)
            );
        }
        let ready = match info.health.as_deref() {
            Some("healthy") | None => true,
            Some(h) => {
                seen = format!(
                    "health {h}{}",
                    info.health_log
                        .as_deref()
                        .map(|l| format!(": {l}"))
                        .unwrap_or_default()
                );
                false
            }
        };
        if ready {
            let Some(want) = g.verify_version else {
                return Ok(());
            };
            let url = replica_url(&info, g.fhir_path)?;
            match crate::steps::metadata_check::fetch(&url).await {
                Ok((v, _)) if v == want => return Ok(()),
                Ok((v, _)) => {
                    seen =
                        format!("{url}/metadata reports software.version {v:?}, expected {want:?}")
                }
                Err(e) => seen = format!("{e:#}"),
            }
        }
        if start.elapsed() > g.health_timeout {
            bail!(
                "{name} did not pass its gate within {:.0?} (last seen: {seen})",
                g.health_timeout
            );
        }
        cx.cancel.sleep(Duration::from_millis(300)).await?;
    }
}

/// Replaces `old_name` by a container of `image`. Safe to re-enter: a clone left by an
/// interrupted attempt is finished (old already gone) or discarded (old still there).
pub async fn replace(
    engine: &Docker,
    cx: &StepCx,
    old_name: &str,
    image: &str,
    config_hash: Option<&str>,
    surge: bool,
    g: &Gate<'_>,
) -> anyhow::Result<()> {
    let tmp = temp_name(old_name);
    let old = engine.inspect_container(old_name).await?;
    let leftover = engine.inspect_container(&tmp).await?;
    let Some(old) = old else {
        if leftover.is_some() {
            gate(engine, cx, &tmp, g).await?;
            traffic::ensure_joined(engine, &tmp, g.spec).await?;
            return engine.rename_container(&tmp, old_name).await;
        }
        bail!("replica {old_name} does not exist");
    };
    if leftover.is_some() {
        engine.remove_container(&tmp).await?;
    }
    // Every endpoint, with the aliases the clone joins once its gate passed.
    let Body { mut body, nets } =
        clone_body(engine, &old, image, config_hash, g.spec, true).await?;
    let bare = traffic::unaliased(&nets);
    body.networking_config = bare.first().map(|(n, e)| NetworkingConfig {
        endpoints_config: Some([(n.clone(), e.clone())].into_iter().collect()),
    });
    let mut had = vec![];
    if !surge {
        // No room for an extra replica: this one is down while its successor starts.
        had = traffic::drain_and_stop(engine, cx, &old, g.drain, g.stop_timeout).await?;
    }
    let attempt = async {
        let id = engine.create_container(&tmp, body).await?;
        for (net, ep) in bare.into_iter().skip(1) {
            engine.connect_network(&net, &id, ep).await?;
        }
        engine.start_container(&tmp).await?;
        gate(engine, cx, &tmp, g).await?;
        traffic::join(engine, &tmp, &nets).await
    };
    if let Err(e) = attempt.await {
        let _ = engine.remove_container(&tmp).await;
        if !surge {
            let _ = engine.start_container(old_name).await;
            let _ = traffic::join(engine, old_name, &had).await;
        }
        return Err(e.context(format!("replica {old_name} kept on its old image")));
    }
    if surge {
        traffic::drain_and_stop(engine, cx, &old, g.drain, g.stop_timeout).await?;
    }
    promote(engine, cx, old_name, g).await
}

/// The gated clone of `old_name` takes its place: it is in the service's aliases, the old
/// replica (if still there) leaves them, drains and is stopped, then is removed and the
/// clone renamed. Also how a re-entered replacement finishes (`reconcile`), so both go
/// through the same last steps, drain included.
pub async fn promote(
    engine: &Docker,
    cx: &StepCx,
    old_name: &str,
    g: &Gate<'_>,
) -> anyhow::Result<()> {
    traffic::ensure_joined(engine, &temp_name(old_name), g.spec).await?;
    match engine.inspect_container(old_name).await? {
        Some(old) if old.running => {
            traffic::drain_and_stop(engine, cx, &old, g.drain, g.stop_timeout).await?;
        }
        _ => engine.stop_container(old_name, g.stop_timeout).await?,
    }
    engine.remove_container(old_name).await?;
    engine
        .rename_container(&temp_name(old_name), old_name)
        .await
}

/// `docker-compose -p PROJECT config --hash=SERVICE` in the compose directory: the hash
/// compose compares to decide a container is up to date. None when compose is unavailable.
pub fn compose_hash(dir: &std::path::Path, project: &str, service: &str) -> Option<String> {
    let out = std::process::Command::new("docker-compose")
        .current_dir(dir)
        .args(["-p", project, "config", &format!("--hash={service}")])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .map(str::to_owned)
}
