//! The host side of what compose gives a container of the service, from the same
//! `docker-compose config` as `spec`: published ports, volumes (binds, long-syntax mounts,
//! tmpfs), the restart policy and the networks with their aliases. Built the way compose
//! 1.29 builds a create request (compose/service.py `_get_container_create_options`,
//! `_get_container_host_config`, `merge_volume_bindings`; project.py `get_networks`), so a
//! replica ferry creates is the container `docker-compose up` would create, and a change of
//! these fields in the compose file reaches the new replicas (issue 11, item 3).
//! Invariants: a named volume or network is qualified as compose qualifies it
//! (`<project>_<name>` unless the file gives a `name`); a data volume (anonymous, or
//! declared by the old image) is carried over from the old container, as compose carries
//! it on a recreate, so its data survives the replacement; with `network_mode` the service
//! has no networks of its own and the old container's network settings are kept.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use anyhow::{Context, bail};
use bollard::models::{ContainerCreateBody, EndpointSettings, Mount, PortBinding, RestartPolicy};
use serde_yaml::Value;

use crate::infra::docker::ContainerInfo;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostSpec {
    /// `8080/tcp` → its bindings, as docker-py converts compose's port list.
    pub port_bindings: BTreeMap<String, Vec<PortBinding>>,
    /// Every container port of `ports` and `expose` (`8080/tcp`).
    pub exposed: BTreeSet<String>,
    /// Short-syntax volumes: (host path or qualified volume name, None for an anonymous
    /// one; container path; mode).
    pub volumes: Vec<(Option<String>, String, String)>,
    /// Long-syntax volumes (API >= 1.30: compose sends these as Mounts).
    pub mounts: Vec<Mount>,
    pub tmpfs: HashMap<String, String>,
    pub restart: Option<RestartPolicy>,
    /// The networks by full name, in compose's order (priority, then name), each with its
    /// aliases (the service's name first); None with `network_mode`.
    pub networks: Option<Vec<(String, EndpointSettings)>>,
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The full name of a top-level `networks`/`volumes` entry, as compose names it.
fn full_name(doc: &Value, section: &str, name: &str, project: &str) -> String {
    let def = doc.get(section).and_then(|s| s.get(name));
    match def.and_then(|d| d.get("name")).and_then(scalar) {
        Some(n) => n,
        None => format!("{}_{name}", project.trim_start_matches(['-', '_'])),
    }
}

/// The service's part; `doc` is the whole `config` output (for the top-level sections).
pub fn parse(doc: &Value, svc: &Value, project: &str, service: &str) -> anyhow::Result<HostSpec> {
    let mut h = HostSpec::default();
    for p in svc
        .get("ports")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        for (key, b) in port(p)? {
            h.exposed.insert(key.clone());
            h.port_bindings.entry(key).or_default().push(b);
        }
    }
    for e in svc
        .get("expose")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        let e = scalar(e).unwrap_or_default();
        for (k, _) in expand(&e, "")? {
            h.exposed.insert(k);
        }
    }
    for v in svc
        .get("volumes")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        match v {
            Value::String(s) => h.volumes.push(short_volume(doc, s, project)),
            Value::Mapping(_) => h.mounts.push(mount(doc, v, project)?),
            _ => bail!("service `{service}`: a volume that is neither a string nor a mapping"),
        }
    }
    let tmpfs: Vec<String> = match svc.get("tmpfs") {
        Some(Value::Sequence(s)) => s.iter().filter_map(scalar).collect(),
        Some(v) => scalar(v).into_iter().collect(),
        None => vec![],
    };
    for t in tmpfs {
        let (path, opts) = t.split_once(':').unwrap_or((&t, ""));
        h.tmpfs.insert(path.to_owned(), opts.to_owned());
    }
    if let Some(r) = svc.get("restart").and_then(scalar) {
        let (name, n) = r.split_once(':').unwrap_or((&r, "0"));
        let n: i64 = n
            .parse()
            .with_context(|| format!("service `{service}`: restart `{r}`"))?;
        h.restart = Some(
            serde_json::from_value(serde_json::json!({"Name": name, "MaximumRetryCount": n}))
                .with_context(|| format!("service `{service}`: restart `{r}`"))?,
        );
    }
    h.networks = if svc.get("network_mode").is_some() {
        None
    } else {
        Some(networks(doc, svc, project, service))
    };
    Ok(h)
}

/// One `ports` entry: `[ip:][host:]container[/proto]` (ranges allowed) or a mapping.
fn port(p: &Value) -> anyhow::Result<Vec<(String, PortBinding)>> {
    let bind = |ip: &str, host: String| PortBinding {
        host_ip: Some(ip.to_owned()),
        host_port: Some(host),
    };
    if let Value::Mapping(_) = p {
        // Compose 1.29 builds the binding from published/target/protocol only.
        let target = p
            .get("target")
            .and_then(scalar)
            .context("a port without target")?;
        let proto = p.get("protocol").and_then(scalar).unwrap_or("tcp".into());
        let published = p.get("published").and_then(scalar).unwrap_or_default();
        return Ok(vec![(format!("{target}/{proto}"), bind("", published))]);
    }
    let s = scalar(p).context("a port that is not a string")?;
    if s.contains('[') {
        bail!("port `{s}`: IPv6 host addresses are not supported");
    }
    let (spec, proto) = s.split_once('/').unwrap_or((&s, "tcp"));
    let parts: Vec<&str> = spec.split(':').collect();
    let (ip, host, container) = match parts[..] {
        [c] => ("", "", c),
        [h, c] => ("", h, c),
        [ip, h, c] => (ip, h, c),
        _ => bail!("port `{s}` is not [ip:][host:]container[/protocol]"),
    };
    let inner = expand(container, proto)?;
    let hosts: Vec<String> = if host.is_empty() {
        vec![String::new(); inner.len()]
    } else {
        expand(host, proto)?
            .into_iter()
            .map(|(k, _)| k.split('/').next().unwrap_or_default().to_owned())
            .collect()
    };
    if hosts.len() != inner.len() {
        bail!("port `{s}`: the host and container ranges differ in length");
    }
    Ok(inner
        .into_iter()
        .zip(hosts)
        .map(|((k, _), h)| (k, bind(ip, h)))
        .collect())
}

/// `8080` or `8080-8082` (with `/proto` or `proto`) → `8080/tcp`…
fn expand(ports: &str, proto: &str) -> anyhow::Result<Vec<(String, ())>> {
    let (ports, proto) = match ports.split_once('/') {
        Some((p, pr)) => (p, pr),
        None => (ports, if proto.is_empty() { "tcp" } else { proto }),
    };
    let n = |x: &str| {
        x.parse::<u16>()
            .with_context(|| format!("`{x}` is not a port number"))
    };
    let (a, b) = match ports.split_once('-') {
        Some((a, b)) => (n(a)?, n(b)?),
        None => (n(ports)?, n(ports)?),
    };
    Ok((a..=b).map(|p| (format!("{p}/{proto}"), ())).collect())
}

/// A short-syntax volume as compose's config prints it (`ext:int:mode`, `int`), with a
/// named volume qualified.
fn short_volume(doc: &Value, s: &str, project: &str) -> (Option<String>, String, String) {
    let parts: Vec<&str> = s.split(':').collect();
    let (ext, int, mode) = match parts[..] {
        [int] => (None, int, "rw"),
        [ext, int] => (Some(ext), int, "rw"),
        [ext, int, mode, ..] => (Some(ext), int, mode),
        [] => (None, s, "rw"),
    };
    let ext = ext.map(|e| {
        if e.starts_with(['/', '.', '~']) {
            e.to_owned()
        } else {
            full_name(doc, "volumes", e, project)
        }
    });
    (ext, int.to_owned(), mode.to_owned())
}

/// A long-syntax volume as docker-py's `Mount` (compose's `build_mount`).
fn mount(doc: &Value, v: &Value, project: &str) -> anyhow::Result<Mount> {
    let t = |k: &str| v.get(k).and_then(scalar);
    let typ = t("type").unwrap_or("volume".into());
    let mut source = t("source");
    if typ == "volume" {
        source = source.map(|s| full_name(doc, "volumes", &s, project));
    }
    let mut m = serde_json::json!({
        "Type": typ,
        "Target": t("target").context("a volume without target")?,
        "ReadOnly": v.get("read_only").and_then(Value::as_bool).unwrap_or(false),
    });
    if let Some(s) = source {
        m["Source"] = s.into();
    }
    if let Some(c) = t("consistency") {
        m["Consistency"] = c.into();
    }
    if let Some(p) = v
        .get("bind")
        .and_then(|b| b.get("propagation"))
        .and_then(scalar)
    {
        m["BindOptions"] = serde_json::json!({ "Propagation": p });
    }
    if let Some(n) = v
        .get("volume")
        .and_then(|b| b.get("nocopy"))
        .and_then(Value::as_bool)
    {
        m["VolumeOptions"] = serde_json::json!({ "NoCopy": n });
    }
    if let Some(n) = v
        .get("tmpfs")
        .and_then(|b| b.get("size"))
        .and_then(Value::as_i64)
    {
        m["TmpfsOptions"] = serde_json::json!({ "SizeBytes": n });
    }
    serde_json::from_value(m).context("a long-syntax volume")
}

fn networks(
    doc: &Value,
    svc: &Value,
    project: &str,
    service: &str,
) -> Vec<(String, EndpointSettings)> {
    let defs: Vec<(String, Option<&Value>)> = match svc.get("networks") {
        Some(Value::Mapping(m)) => m
            .iter()
            .filter_map(|(k, v)| Some((scalar(k)?, Some(v).filter(|v| !v.is_null()))))
            .collect(),
        Some(Value::Sequence(s)) => s.iter().filter_map(scalar).map(|n| (n, None)).collect(),
        _ => vec![("default".into(), None)],
    };
    let mut out: Vec<(i64, String, EndpointSettings)> = defs
        .into_iter()
        .map(|(name, def)| {
            let get = |k: &str| def.and_then(|d| d.get(k));
            let mut aliases = vec![service.to_owned()];
            for a in get("aliases")
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
            {
                if let Some(a) = scalar(a).filter(|a| !aliases.contains(a)) {
                    aliases.push(a);
                }
            }
            let ipv4 = get("ipv4_address").and_then(scalar);
            let ipv6 = get("ipv6_address").and_then(scalar);
            let ep = EndpointSettings {
                aliases: Some(aliases),
                ipam_config: (ipv4.is_some() || ipv6.is_some()).then(|| {
                    bollard::models::EndpointIpamConfig {
                        ipv4_address: ipv4,
                        ipv6_address: ipv6,
                        ..Default::default()
                    }
                }),
                ..Default::default()
            };
            let priority = get("priority").and_then(Value::as_i64).unwrap_or(0);
            (priority, full_name(doc, "networks", &name, project), ep)
        })
        .collect();
    // Highest priority first, then by name (compose's stable primary network).
    out.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    out.into_iter().map(|(_, n, e)| (n, e)).collect()
}

/// Sets the create request's ports, volumes, restart policy and network mode from `h`.
/// `previous` is the container being replaced (None for a new replica number): its data
/// volumes at the container paths of anonymous volumes and of `old_image_volumes` are bound
/// again, as compose does on a recreate, with compose's `affinity:container` hint in the
/// environment when it does so.
pub fn apply(
    body: &mut ContainerCreateBody,
    h: &HostSpec,
    previous: Option<&ContainerInfo>,
    old_image_volumes: &[String],
) {
    let none = ContainerInfo::default();
    let old = previous.unwrap_or(&none);
    let hc = body.host_config.get_or_insert_with(Default::default);
    hc.port_bindings = Some(
        h.port_bindings
            .iter()
            .map(|(k, v)| (k.clone(), Some(v.clone())))
            .collect(),
    );
    body.exposed_ports = Some(h.exposed.iter().cloned().collect());
    let mut binds: Vec<String> = h
        .volumes
        .iter()
        .filter_map(|(ext, int, mode)| ext.as_ref().map(|e| format!("{e}:{int}:{mode}")))
        .collect();
    let anonymous = h
        .volumes
        .iter()
        .filter(|(ext, _, _)| ext.is_none())
        .map(|(_, int, _)| int.clone())
        .chain(old_image_volumes.iter().cloned());
    let mut carried = false;
    let mut seen = BTreeSet::new();
    for int in anonymous {
        if !seen.insert(int.clone())
            || h.tmpfs.contains_key(&int)
            || h.mounts.iter().any(|m| m.target.as_deref() == Some(&int))
        {
            continue;
        }
        let named = old
            .mounts
            .iter()
            .find(|m| m.destination.as_deref() == Some(&int))
            .and_then(|m| m.name.clone());
        if let Some(name) = named {
            binds.retain(|b| b.split(':').nth(1) != Some(&int));
            binds.push(format!("{name}:{int}:rw"));
            carried = true;
        }
    }
    let mut mounts = h.mounts.clone();
    for m in &mut mounts {
        let volume = m.typ.as_ref().is_some_and(|t| t.to_string() == "volume");
        if !volume {
            continue;
        }
        if let Some(name) = old
            .mounts
            .iter()
            .find(|o| o.destination == m.target)
            .and_then(|o| o.name.clone())
        {
            m.source = Some(name);
            carried = true;
        }
    }
    hc.binds = Some(binds);
    hc.mounts = (!mounts.is_empty()).then_some(mounts);
    hc.tmpfs = (!h.tmpfs.is_empty()).then(|| h.tmpfs.clone());
    hc.restart_policy = h.restart.clone();
    body.volumes = Some(h.volumes.iter().map(|(_, int, _)| int.clone()).collect());
    if carried {
        body.env
            .get_or_insert_with(Vec::new)
            .push(format!("affinity:container=={}", old.id));
    }
    if let Some(nets) = &h.networks
        && let Some((first, _)) = nets.first()
    {
        hc.network_mode = Some(first.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "networks:\n  other:\n    external: true\n    name: ext\nservices:\n  hapi:\n    networks:\n      default:\n        aliases:\n        - api\n      other: null\n    ports:\n    - 127.0.0.1::8080/tcp\n    - 127.0.0.1:9000-9001:7000-7001/udp\n    - target: 8081\n    - 8083/tcp\n    restart: on-failure:3\n    tmpfs:\n    - /run:size=1m\n    volumes:\n    - /srv/data:/data:ro\n    - named:/named:rw\n    - /anon\n    - source: /srv/x\n      target: /x\n      type: bind\n      read_only: true\n  lb:\n    network_mode: bridge\nvolumes:\n  named: {}\n";

    fn parsed(service: &str) -> HostSpec {
        let doc: Value = serde_yaml::from_str(CONFIG).unwrap();
        let svc = &doc["services"][service];
        parse(&doc, svc, "proj", service).unwrap()
    }

    #[test]
    fn ports_volumes_restart_and_networks_are_read_as_compose_builds_them() {
        let h = parsed("hapi");
        let b = |ip: &str, p: &str| PortBinding {
            host_ip: Some(ip.into()),
            host_port: Some(p.into()),
        };
        assert_eq!(h.port_bindings["8080/tcp"], [b("127.0.0.1", "")]);
        assert_eq!(h.port_bindings["7001/udp"], [b("127.0.0.1", "9001")]);
        assert_eq!(h.port_bindings["8081/tcp"], [b("", "")]);
        assert_eq!(h.port_bindings["8083/tcp"], [b("", "")]);
        assert_eq!(h.exposed.len(), 5);
        assert_eq!(
            h.volumes,
            [
                (Some("/srv/data".into()), "/data".into(), "ro".into()),
                (Some("proj_named".into()), "/named".into(), "rw".into()),
                (None, "/anon".into(), "rw".into()),
            ]
        );
        assert_eq!(h.mounts[0].source.as_deref(), Some("/srv/x"));
        assert_eq!(h.mounts[0].read_only, Some(true));
        assert_eq!(h.tmpfs["/run"], "size=1m");
        let r = h.restart.unwrap();
        assert_eq!(r.maximum_retry_count, Some(3));
        assert_eq!(r.name.unwrap().to_string(), "on-failure");
        let nets = h.networks.unwrap();
        assert_eq!(nets[0].0, "ext");
        assert_eq!(nets[0].1.aliases.as_deref(), Some(&["hapi".to_owned()][..]));
        assert_eq!(nets[1].0, "proj_default");
        assert_eq!(
            nets[1].1.aliases.as_deref(),
            Some(&["hapi".to_owned(), "api".to_owned()][..])
        );
        assert_eq!(
            parsed("lb").networks,
            None,
            "network_mode: the old one's kept"
        );
    }

    #[test]
    fn data_volumes_are_carried_from_the_old_container() {
        let h = parsed("hapi");
        let old = ContainerInfo {
            id: "abc".into(),
            mounts: vec![bollard::models::MountPoint {
                destination: Some("/anon".into()),
                name: Some("f00".into()),
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut body = ContainerCreateBody::default();
        apply(&mut body, &h, Some(&old), &[]);
        let hc = body.host_config.unwrap();
        assert_eq!(
            hc.binds.unwrap(),
            ["/srv/data:/data:ro", "proj_named:/named:rw", "f00:/anon:rw"]
        );
        assert_eq!(hc.network_mode.as_deref(), Some("ext"));
        assert_eq!(body.env.unwrap(), ["affinity:container==abc"]);
    }
}
