//! The fields of a container of the service that compose resolves against *other*
//! containers when it creates one: `links` and `external_links`, `volumes_from`, and a
//! `network_mode`, `pid` or `ipc` of the form `service:NAME` / `container:NAME`. Read from
//! the same `docker-compose config` as `spec`, resolved at create time as compose 1.29 does
//! (compose/service.py `_get_links`, `build_volume_from`, `ServiceNetworkMode`,
//! `ServicePidMode`; project.py `get_network_mode`), so a new replica is linked to, shares
//! the namespaces of and mounts the volumes of the containers compose would pick *now*,
//! never the old replica's choices (which may name a container since recreated).
//! Invariants: a service is looked up in the project, its running containers only (its
//! stopped ones too for `volumes_from`), as compose's `containers()`; with none running, a
//! `service:` mode is left unset as compose leaves it; a container that does not exist is
//! an error naming it. Only files that use these fields cost Docker calls.

use anyhow::{Context, bail};
use bollard::models::{ContainerCreateBody, EndpointSettings};
use serde_yaml::Value;

use crate::infra::docker::Docker;

/// The raw references of the service's `docker-compose config`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Refs {
    /// `links`: (service, alias).
    pub links: Vec<(String, Option<String>)>,
    /// `external_links`: (container, alias).
    pub external_links: Vec<(String, String)>,
    /// `volumes_from` as compose prints it: `service:NAME:MODE` / `container:NAME:MODE`.
    pub volumes_from: Vec<String>,
    /// `network_mode` (None: the service's networks).
    pub network_mode: Option<String>,
    /// `pid`/`ipc` of the `service:`/`container:` form (a plain mode is `runtime`'s).
    pub pid: Option<String>,
    pub ipc: Option<String>,
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(str::to_owned))
        .collect()
}

fn elsewhere(m: Option<String>) -> Option<String> {
    m.filter(|m| m.starts_with("service:") || m.starts_with("container:"))
}

pub fn parse(svc: &Value) -> Refs {
    let text = |k: &str| svc.get(k).and_then(Value::as_str).map(str::to_owned);
    Refs {
        links: strings(svc.get("links"))
            .into_iter()
            .map(|l| match l.split_once(':') {
                Some((s, a)) => (s.to_owned(), Some(a.to_owned())),
                None => (l, None),
            })
            .collect(),
        external_links: strings(svc.get("external_links"))
            .into_iter()
            .map(|l| match l.split_once(':') {
                Some((c, a)) => (c.to_owned(), a.to_owned()),
                None => (l.clone(), l),
            })
            .collect(),
        volumes_from: strings(svc.get("volumes_from")),
        network_mode: text("network_mode"),
        pid: elsewhere(text("pid")),
        ipc: elsewhere(text("ipc")),
    }
}

impl Refs {
    pub fn is_empty(&self) -> bool {
        *self == Refs::default()
    }
}

/// A container of the project's `service`, as compose's `Service.containers()` lists them:
/// (name, id, number), running ones only unless `stopped`.
async fn containers(
    engine: &Docker,
    project: &str,
    service: &str,
    stopped: bool,
) -> anyhow::Result<Vec<(String, String, u32)>> {
    Ok(engine
        .replicas(project, service)
        .await?
        .into_iter()
        .filter(|r| stopped || r.state == "running")
        .map(|r| (r.name, r.id, r.number))
        .collect())
}

async fn container_id(engine: &Docker, name: &str, what: &str) -> anyhow::Result<String> {
    Ok(engine
        .inspect_container(name)
        .await?
        .with_context(|| format!("{what}: container `{name}` does not exist"))?
        .id)
}

/// `service:X` / `container:X` → `container:<id>` (None: the service runs no container).
async fn mode_of(
    engine: &Docker,
    project: &str,
    m: &str,
    what: &str,
) -> anyhow::Result<Option<String>> {
    if let Some(s) = m.strip_prefix("service:") {
        let c = containers(engine, project, s, false).await?;
        return Ok(c.first().map(|(_, id, _)| format!("container:{id}")));
    }
    if let Some(c) = m.strip_prefix("container:") {
        return Ok(Some(format!(
            "container:{}",
            container_id(engine, c, what).await?
        )));
    }
    Ok(Some(m.to_owned()))
}

/// compose's `_get_links(link_to_self=False)`: `container:alias`, in compose's order.
async fn links(engine: &Docker, project: &str, r: &Refs) -> anyhow::Result<Vec<String>> {
    let mut m: Vec<(String, String)> = vec![];
    let mut put = |alias: String, name: String| match m.iter_mut().find(|(a, _)| *a == alias) {
        Some(e) => e.1 = name,
        None => m.push((alias, name)),
    };
    for (service, alias) in &r.links {
        for (name, _, number) in containers(engine, project, service, false).await? {
            put(
                alias.clone().unwrap_or_else(|| service.clone()),
                name.clone(),
            );
            put(name.clone(), name.clone());
            let short = if name.starts_with(&format!("{project}_{service}")) {
                format!("{service}_{number}")
            } else {
                name.clone()
            };
            put(short, name);
        }
    }
    for (container, alias) in &r.external_links {
        put(alias.clone(), container.clone());
    }
    // docker-py's `normalize_links`: sorted by (container, alias).
    let mut m: Vec<(String, String)> = m.into_iter().map(|(a, n)| (n, a)).collect();
    m.sort();
    Ok(m.into_iter().map(|(n, a)| format!("{n}:{a}")).collect())
}

/// compose's `build_volume_from`: `<container id>:<mode>`.
async fn volumes_from(engine: &Docker, project: &str, r: &Refs) -> anyhow::Result<Vec<String>> {
    let mut out = vec![];
    for v in &r.volumes_from {
        let (kind, rest) = v.split_once(':').unwrap_or(("service", v));
        let (source, mode) = rest.rsplit_once(':').unwrap_or((rest, "rw"));
        let id = match kind {
            "service" => match containers(engine, project, source, true).await?.first() {
                Some((_, id, _)) => id.clone(),
                None => bail!(
                    "volumes_from `{v}`: service `{source}` has no container (compose would create one: run `docker-compose up -d {source}` first)"
                ),
            },
            _ => container_id(engine, source, "volumes_from").await?,
        };
        out.push(format!("{id}:{mode}"));
    }
    Ok(out)
}

/// Sets what `r` resolves to on `body`'s host config, and the links on each endpoint
/// (where the engine and compose's `connect_container_to_networks` put them). With a
/// `network_mode`, the container has no endpoint of its own: `nets` is emptied.
pub async fn apply(
    engine: &Docker,
    project: &str,
    r: &Refs,
    body: &mut ContainerCreateBody,
    nets: &mut Vec<(String, EndpointSettings)>,
) -> anyhow::Result<()> {
    let hc = body.host_config.get_or_insert_with(Default::default);
    hc.links = None;
    hc.volumes_from = None;
    if r.is_empty() {
        return Ok(());
    }
    let links = links(engine, project, r).await?;
    let volumes_from = volumes_from(engine, project, r).await?;
    let network_mode = match &r.network_mode {
        // docker-py sends `default` when compose has no mode (a service not running).
        Some(m) => Some(
            mode_of(engine, project, m, "network_mode")
                .await?
                .unwrap_or_else(|| "default".into()),
        ),
        None => None,
    };
    let pid = match &r.pid {
        Some(m) => mode_of(engine, project, m, "pid").await?,
        None => None,
    };
    let ipc = match &r.ipc {
        Some(m) => mode_of(engine, project, m, "ipc").await?,
        None => None,
    };
    let hc = body.host_config.get_or_insert_with(Default::default);
    hc.links = (!links.is_empty()).then(|| links.clone());
    hc.volumes_from = (!volumes_from.is_empty()).then_some(volumes_from);
    if r.pid.is_some() {
        hc.pid_mode = pid;
    }
    if r.ipc.is_some() {
        hc.ipc_mode = ipc;
    }
    if let Some(m) = network_mode {
        hc.network_mode = Some(m);
        nets.clear();
        body.networking_config = None;
    }
    // On a user-defined network the engine moves the host config's links to the first
    // endpoint; compose gives them to each further one it connects. Every endpoint gets
    // them here, since a clone's endpoints are reconnected when it joins the aliases.
    for (_, ep) in nets.iter_mut() {
        ep.links = (!links.is_empty()).then(|| links.clone());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_references_are_read_as_compose_config_prints_them() {
        let svc: Value = serde_yaml::from_str(
            "links:\n- db\n- db:database\nexternal_links:\n- foo_bar_1\n- other:al\nvolumes_from:\n- service:db:ro\n- container:xyz:rw\nnetwork_mode: service:db\npid: container:abc\nipc: shareable\n",
        )
        .unwrap();
        let r = parse(&svc);
        assert_eq!(
            r.links,
            [("db".into(), None), ("db".into(), Some("database".into()))]
        );
        assert_eq!(
            r.external_links,
            [
                ("foo_bar_1".into(), "foo_bar_1".into()),
                ("other".into(), "al".into())
            ]
        );
        assert_eq!(r.volumes_from, ["service:db:ro", "container:xyz:rw"]);
        assert_eq!(r.network_mode.as_deref(), Some("service:db"));
        assert_eq!(r.pid.as_deref(), Some("container:abc"));
        assert_eq!(r.ipc, None, "a plain mode is runtime's");
        assert!(parse(&serde_yaml::from_str("image: x\n").unwrap()).is_empty());
    }
}
