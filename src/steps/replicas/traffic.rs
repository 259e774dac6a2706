//! Who gets the service's traffic during a replacement. A compose service is reached by its
//! network aliases (Docker's DNS answers `hapi` with every container holding the alias, and
//! the proxy in front resolves it for each connection), so:
//! - a clone is created with no alias and gated on its own published 127.0.0.1 port; it
//!   joins the aliases only once its gate passed ([`join`]): a clone that never turns
//!   healthy never gets a user's request (issue 11, item 5);
//! - the old replica leaves the aliases first ([`leave`]), is given a drain period for the
//!   requests it already has, and only then is stopped (SIGTERM, which HAPI answers with
//!   Spring's graceful shutdown) ([`drain_and_stop`], item 6).
//!
//! Docker cannot change an endpoint's aliases in place: leaving and joining are a
//! disconnect and a connect. A connection in flight survives that only if the container
//! gets the same IP back (Docker's IPAM hands out the lowest free address, so it does when
//! nothing else took it meanwhile; a static IP is refused on compose's default network).
//! [`leave`] reports when the address changed: requests in flight on it are then lost.

use std::time::Duration;

use anyhow::Context;
use bollard::models::EndpointSettings;

use super::spec::ServiceSpec;
use crate::infra::docker::{ContainerInfo, Docker};
use crate::report::Level;
use crate::steps::StepCx;

/// Endpoints as they are created: no alias at all (the engine adds the container's short
/// id by itself, which no client resolves for the service).
pub fn unaliased(nets: &[(String, EndpointSettings)]) -> Vec<(String, EndpointSettings)> {
    nets.iter()
        .map(|(n, e)| {
            (
                n.clone(),
                EndpointSettings {
                    aliases: None,
                    ..e.clone()
                },
            )
        })
        .collect()
}

/// Connects a created, not yet started container to each network of its service it is not
/// on, with no alias (it joins the aliases after its gate): the networks compose gives the
/// service (`spec`), else `fallback` (a sibling's or the original's). A new container is
/// created on its first network and connected to the others before its start; a kill in
/// between leaves it on the first only, and started so it cannot reach what is on the
/// others (compose's hapi reaches pgBouncer on its second network) and never turns healthy.
pub async fn complete_unaliased(
    engine: &Docker,
    name: &str,
    spec: Option<&ServiceSpec>,
    fallback: &[String],
) -> anyhow::Result<()> {
    let Some(info) = engine.inspect_container(name).await? else {
        return Ok(());
    };
    let want = match spec.and_then(|s| s.host.networks.as_ref()) {
        Some(nets) => unaliased(nets),
        None => fallback
            .iter()
            .map(|n| (n.clone(), EndpointSettings::default()))
            .collect(),
    };
    for (net, ep) in want {
        if !info.networks.contains_key(&net) {
            engine
                .connect_network(&net, name, ep)
                .await
                .with_context(|| format!("connecting {name} to {net} before its start"))?;
        }
    }
    Ok(())
}

/// Puts `name` into the rotation: each network is reconnected with its full endpoint
/// (the service's aliases). Called only after the container's gate passed.
pub async fn join(
    engine: &Docker,
    name: &str,
    nets: &[(String, EndpointSettings)],
) -> anyhow::Result<()> {
    for (net, ep) in nets {
        if ep.aliases.as_ref().is_none_or(Vec::is_empty) {
            continue;
        }
        engine.disconnect_network(net, name).await?;
        engine
            .connect_network(net, name, ep.clone())
            .await
            .with_context(|| format!("{name} could not join the service's alias on {net}"))?;
    }
    Ok(())
}

/// Takes `old` out of the rotation: on every network where it holds an alias other than
/// its short id, it is reconnected without aliases. It stays reachable on its published
/// port and by container name, and keeps its requests in flight when its address is kept.
/// Returns the endpoints it had, for [`join`] to put it back (a failed replacement).
pub async fn leave(
    engine: &Docker,
    cx: &StepCx,
    old: &ContainerInfo,
) -> anyhow::Result<Vec<(String, EndpointSettings)>> {
    let short = &old.id[..old.id.len().min(12)];
    let mut had = vec![];
    let mut nets: Vec<_> = old.networks.iter().collect();
    nets.sort_by(|a, b| a.0.cmp(b.0));
    for (net, ep) in nets {
        let aliases: Vec<String> = ep
            .aliases
            .iter()
            .flatten()
            .filter(|a| a.as_str() != short)
            .cloned()
            .collect();
        if aliases.is_empty() {
            continue;
        }
        let keep = EndpointSettings {
            links: ep.links.clone(),
            driver_opts: ep.driver_opts.clone(),
            ..Default::default()
        };
        had.push((
            net.clone(),
            EndpointSettings {
                aliases: Some(aliases),
                ..keep.clone()
            },
        ));
        engine.disconnect_network(net, &old.name).await?;
        engine
            .connect_network(net, &old.name, keep)
            .await
            .with_context(|| {
                format!(
                    "{} left the service's alias on {net} but could not reconnect: `docker network connect {net} {}`",
                    old.name, old.name
                )
            })?;
        let now = engine
            .inspect_container(&old.name)
            .await?
            .and_then(|i| i.networks.get(net).and_then(|e| e.ip_address.clone()));
        if now != ep.ip_address {
            cx.log(
                Level::Warn,
                format!(
                    "{} got a new address on {net} ({} → {}) while leaving the rotation: requests in flight on it may be cut",
                    old.name,
                    ep.ip_address.as_deref().unwrap_or("?"),
                    now.as_deref().unwrap_or("?")
                ),
            );
        }
    }
    Ok(had)
}

/// Out of the rotation, then `drain` for the requests it has, then a graceful stop.
pub async fn drain_and_stop(
    engine: &Docker,
    cx: &StepCx,
    old: &ContainerInfo,
    drain: Duration,
    stop_timeout: i32,
) -> anyhow::Result<Vec<(String, EndpointSettings)>> {
    let had = leave(engine, cx, old).await?;
    if !drain.is_zero() {
        cx.log(
            Level::Info,
            format!(
                "{} is out of the rotation; draining its requests for {drain:.0?}",
                old.name
            ),
        );
        cx.cancel.sleep(drain).await?;
    }
    engine.stop_container(&old.name, stop_timeout).await?;
    Ok(had)
}

/// Puts `name` back into its service's alias on every network where it lacks it (a clone
/// finished after a crash, an old replica left out of the rotation when ferry died between
/// [`leave`] and its stop): the alias compose gives, the service name from its label.
/// With a `spec`, a network's aliases are compose's for it (the service's and the file's).
/// Returns whether anything changed.
pub async fn ensure_joined(
    engine: &Docker,
    name: &str,
    spec: Option<&ServiceSpec>,
) -> anyhow::Result<bool> {
    let Some(info) = engine.inspect_container(name).await? else {
        return Ok(false);
    };
    joined(engine, &info, spec).await
}

/// [`ensure_joined`] for a container just inspected.
pub async fn joined(
    engine: &Docker,
    info: &ContainerInfo,
    spec: Option<&ServiceSpec>,
) -> anyhow::Result<bool> {
    let name = info.name.as_str();
    let Some(service) = info
        .config
        .labels
        .as_ref()
        .and_then(|l| l.get("com.docker.compose.service"))
        .cloned()
    else {
        return Ok(false);
    };
    let mut changed = false;
    let mut nets: Vec<_> = info.networks.iter().collect();
    nets.sort_by(|a, b| a.0.cmp(b.0));
    for (net, ep) in nets {
        let want = spec
            .and_then(|s| s.host.networks.as_ref())
            .and_then(|ns| ns.iter().find(|(n, _)| n == net))
            .and_then(|(_, e)| e.aliases.clone())
            .unwrap_or_else(|| vec![service.clone()]);
        if want
            .iter()
            .all(|w| ep.aliases.iter().flatten().any(|a| a == w))
        {
            continue;
        }
        let full = EndpointSettings {
            aliases: Some(want),
            links: ep.links.clone(),
            driver_opts: ep.driver_opts.clone(),
            ..Default::default()
        };
        engine.disconnect_network(net, name).await?;
        engine.connect_network(net, name, full).await?;
        changed = true;
    }
    Ok(changed)
}

/// Connects `name` (with its service's alias) to each of `nets` it is not on. A kill between
/// [`leave`]'s disconnect and its connect leaves a replica on no network at all; started so,
/// it cannot reach its database and never turns healthy. `nets` are those of a container of
/// the same service (its clone, or a sibling).
pub async fn reattach(engine: &Docker, name: &str, nets: &[String]) -> anyhow::Result<()> {
    let Some(info) = engine.inspect_container(name).await? else {
        return Ok(());
    };
    reattached(engine, &info, nets).await.map(drop)
}

/// [`reattach`] for a container just inspected; whether it was connected anywhere.
pub async fn reattached(
    engine: &Docker,
    info: &ContainerInfo,
    nets: &[String],
) -> anyhow::Result<bool> {
    let name = info.name.as_str();
    let mut changed = false;
    let service = info
        .config
        .labels
        .as_ref()
        .and_then(|l| l.get("com.docker.compose.service"))
        .cloned();
    for net in nets.iter().filter(|n| !info.networks.contains_key(*n)) {
        let ep = EndpointSettings {
            aliases: service.clone().map(|s| vec![s]),
            ..Default::default()
        };
        engine
            .connect_network(net, name, ep)
            .await
            .with_context(|| format!("reconnecting {name} to {net}"))?;
        changed = true;
    }
    Ok(changed)
}
