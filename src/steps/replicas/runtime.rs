//! The rest of what compose derives from the files for a container of the service, beside
//! `spec` (environment, labels, command…) and `host` (ports, volumes, restart, networks):
//! the runtime and resource settings of the create request — extra_hosts, logging, ulimits,
//! devices, cpu and memory limits, dns, capabilities, privileged, init, shm_size, sysctls,
//! security_opt, pid/ipc, read_only, tty/stdin_open, hostname/domainname, group_add, oom
//! settings, runtime, userns… Built as compose 1.29 builds them (compose/service.py
//! `_get_container_create_options`, `_get_container_host_config`, through docker-py's
//! `create_host_config`: `mem_limit` parsed as bytes, `cpus` as nano-CPUs, a mapping of
//! `extra_hosts` as sorted `host:ip`), so a replica ferry creates is the one `up` creates.
//! Invariants: a field the file omits gets compose's default, never the old container's
//! value (no `logging`: the daemon's default log driver; no `mem_limit`: unlimited); the
//! host config is built anew (blkio_config, `deploy…devices` as device requests and
//! isolation included), nothing taken from the old container: what names other
//! containers (links, volumes_from, `service:`/`container:` modes) is `refs`' to resolve.

use std::collections::HashMap;

use anyhow::{Context, bail};
use bollard::models::{
    ContainerCreateBody, DeviceMapping, DeviceRequest, HostConfig, HostConfigIsolationEnum,
    HostConfigLogConfig, ResourcesBlkioWeightDevice, ResourcesUlimits, ThrottleDevice,
};
use serde_yaml::Value;

/// The compose-derived runtime part: the host config's fields and the create body's own.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuntimeSpec {
    /// Every host-config field below, as compose sends it (None: compose sends nothing).
    pub host: HostConfig,
    pub hostname: Option<String>,
    pub domainname: Option<String>,
    pub tty: Option<bool>,
    pub open_stdin: Option<bool>,
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A list field (`dns: 8.8.8.8` is a one-element list, as compose's `to_list`).
fn list(v: Option<&Value>) -> Option<Vec<String>> {
    match v? {
        Value::Sequence(s) => Some(s.iter().filter_map(scalar).collect()),
        Value::Null => None,
        other => scalar(other).map(|s| vec![s]),
    }
}

/// A `KEY: value` mapping or a `KEY=value` list.
fn map(v: Option<&Value>, sep: char) -> Option<HashMap<String, String>> {
    match v? {
        Value::Mapping(m) => Some(
            m.iter()
                .filter_map(|(k, v)| Some((scalar(k)?, scalar(v).unwrap_or_default())))
                .collect(),
        ),
        Value::Sequence(s) => Some(
            s.iter()
                .filter_map(scalar)
                .map(|e| match e.split_once(sep) {
                    Some((k, v)) => (k.to_owned(), v.to_owned()),
                    None => (e, String::new()),
                })
                .collect(),
        ),
        _ => None,
    }
}

/// docker-py's `parse_bytes`: `512m`, `1g`, `100000`, `1.5k`, `64mb` → bytes.
pub fn bytes(s: &str) -> anyhow::Result<i64> {
    let bad = || anyhow::anyhow!("`{s}` is not a size (e.g. 512m, 1g, 100000)");
    let mut t = s.trim();
    if t.is_empty() {
        return Ok(0);
    }
    let b = t.as_bytes();
    if b.len() >= 2 && b[b.len() - 2].is_ascii_alphabetic() && matches!(b[b.len() - 1], b'b' | b'B')
    {
        t = &t[..t.len() - 1];
    }
    let last = t.chars().last().ok_or_else(bad)?.to_ascii_lowercase();
    let (digits, unit) = if last.is_ascii_digit() {
        (t, 1f64)
    } else {
        let unit = match last {
            'b' => 1f64,
            'k' => 1024f64,
            'm' => 1024f64 * 1024.0,
            'g' => 1024f64 * 1024.0 * 1024.0,
            _ => return Err(bad()),
        };
        (&t[..t.len() - 1], unit)
    };
    let n: f64 = digits.parse().map_err(|_| bad())?;
    if !n.is_finite() || n < 0.0 {
        return Err(bad());
    }
    Ok((n * unit) as i64)
}

fn size(svc: &Value, k: &str) -> anyhow::Result<Option<i64>> {
    match svc.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(Some(
            n.as_i64()
                .or_else(|| n.as_f64().map(|f| f as i64))
                .with_context(|| format!("`{k}: {n}`"))?,
        )),
        Some(v) => {
            let s = scalar(v).with_context(|| format!("`{k}` is not a size"))?;
            bytes(&s).with_context(|| format!("`{k}`")).map(Some)
        }
    }
}

fn int(svc: &Value, k: &str) -> anyhow::Result<Option<i64>> {
    match svc.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            let s = scalar(v).with_context(|| format!("`{k}` is not a number"))?;
            s.trim()
                .parse()
                .with_context(|| format!("`{k}: {s}` is not a whole number"))
                .map(Some)
        }
    }
}

fn flag(svc: &Value, k: &str) -> anyhow::Result<Option<bool>> {
    match svc.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => bail!("`{k}: {v:?}` is not true or false"),
    }
}

fn ulimits(v: Option<&Value>) -> anyhow::Result<Option<Vec<ResourcesUlimits>>> {
    let Some(Value::Mapping(m)) = v else {
        return Ok(None);
    };
    let mut out = vec![];
    for (name, lim) in m {
        let name = scalar(name).context("a ulimit without a name")?;
        let n = |v: Option<&Value>| -> anyhow::Result<Option<i64>> {
            v.map(|v| {
                scalar(v)
                    .and_then(|s| s.parse().ok())
                    .with_context(|| format!("ulimit `{name}`: {v:?} is not a number"))
            })
            .transpose()
        };
        let (soft, hard) = match lim {
            Value::Mapping(_) => (n(lim.get("soft"))?, n(lim.get("hard"))?),
            v => {
                let x = n(Some(v))?;
                (x, x)
            }
        };
        out.push(ResourcesUlimits {
            name: Some(name),
            soft,
            hard,
        });
    }
    Ok((!out.is_empty()).then_some(out))
}

/// docker-py's `parse_devices`: `host[:container[:permissions]]`.
fn devices(v: Option<&Value>) -> Option<Vec<DeviceMapping>> {
    let d = list(v)?;
    Some(
        d.iter()
            .map(|d| {
                let p: Vec<&str> = d.split(':').collect();
                DeviceMapping {
                    path_on_host: Some(p[0].to_owned()),
                    path_in_container: Some(p.get(1).unwrap_or(&p[0]).to_string()),
                    cgroup_permissions: Some(p.get(2).unwrap_or(&"rwm").to_string()),
                }
            })
            .collect(),
    )
}

/// `pid`/`ipc`: a plain mode (`host`, `shareable`…) as is; one that names another service
/// or container is `refs`' to resolve.
fn mode(svc: &Value, k: &str) -> Option<String> {
    svc.get(k)
        .and_then(scalar)
        .filter(|m| !(m.starts_with("service:") || m.starts_with("container:")))
}

/// compose's `convert_blkio_config`: the weight, and each device list with its keys
/// capitalised (`path`/`rate` → `Path`/`Rate`); rates are bytes in `config`'s output.
fn blkio(svc: &Value, h: &mut HostConfig) -> anyhow::Result<()> {
    let Some(b) = svc.get("blkio_config").filter(|b| !b.is_null()) else {
        return Ok(());
    };
    h.blkio_weight = int(b, "weight")?
        .map(u16::try_from)
        .transpose()
        .context("blkio_config.weight")?;
    let items = |k: &str| b.get(k).and_then(Value::as_sequence);
    let num = |d: &Value, k: &str, f: &str| -> anyhow::Result<i64> {
        d.get(k)
            .and_then(scalar)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("blkio_config.{f}: `{k}` is not a number"))
    };
    let path = |d: &Value| d.get("path").and_then(scalar);
    if let Some(ds) = items("weight_device") {
        let mut v = vec![];
        for d in ds {
            v.push(ResourcesBlkioWeightDevice {
                path: path(d),
                weight: Some(num(d, "weight", "weight_device")? as usize),
            });
        }
        h.blkio_weight_device = Some(v);
    }
    for (k, slot) in [
        ("device_read_bps", &mut h.blkio_device_read_bps),
        ("device_read_iops", &mut h.blkio_device_read_iops),
        ("device_write_bps", &mut h.blkio_device_write_bps),
        ("device_write_iops", &mut h.blkio_device_write_iops),
    ] {
        if let Some(ds) = items(k) {
            let mut v = vec![];
            for d in ds {
                v.push(ThrottleDevice {
                    path: path(d),
                    rate: Some(num(d, "rate", k)?),
                });
            }
            *slot = Some(v);
        }
    }
    Ok(())
}

/// compose's `get_device_requests` (`deploy.resources.reservations.devices`) through
/// docker-py's `DeviceRequest`: driver `""`, count 0 (`all`: -1), no ids, capabilities
/// `[[...]]` and options `{}` when the file omits them.
fn device_requests(svc: &Value) -> anyhow::Result<Option<Vec<DeviceRequest>>> {
    let Some(devs) = svc
        .get("deploy")
        .and_then(|d| d.get("resources"))
        .and_then(|r| r.get("reservations"))
        .and_then(|r| r.get("devices"))
        .and_then(Value::as_sequence)
        .filter(|d| !d.is_empty())
    else {
        return Ok(None);
    };
    let mut out = vec![];
    for d in devs {
        let count = match d.get("count") {
            None | Some(Value::Null) => 0,
            Some(Value::String(s)) if s == "all" => -1,
            Some(Value::Number(n)) => n.as_i64().context("devices: count")?,
            Some(v) => bail!("devices: count {v:?} (expected a whole number or \"all\")"),
        };
        out.push(DeviceRequest {
            driver: Some(d.get("driver").and_then(scalar).unwrap_or_default()),
            count: Some(count),
            device_ids: Some(list(d.get("device_ids")).unwrap_or_default()),
            capabilities: Some(
                list(d.get("capabilities"))
                    .map(|c| vec![c])
                    .unwrap_or_default(),
            ),
            options: Some(map(d.get("options"), '=').unwrap_or_default()),
        });
    }
    Ok(Some(out))
}

/// The service's runtime part of `docker-compose config`.
pub fn parse(svc: &Value, service: &str) -> anyhow::Result<RuntimeSpec> {
    let ctx = || format!("service `{service}`");
    let text = |k: &str| svc.get(k).and_then(scalar);
    let pid_mode = mode(svc, "pid");
    let ipc_mode = mode(svc, "ipc");
    let logging = svc.get("logging");
    let log_config = logging.map(|l| HostConfigLogConfig {
        typ: Some(l.get("driver").and_then(scalar).unwrap_or_default()),
        config: map(l.get("options"), '='),
    });
    let extra_hosts = match svc.get("extra_hosts") {
        Some(Value::Mapping(_)) => {
            // docker-py's format_extra_hosts: `host:ip`, sorted by host.
            let mut m: Vec<(String, String)> = map(svc.get("extra_hosts"), ':')
                .unwrap_or_default()
                .into_iter()
                .collect();
            m.sort();
            Some(m.into_iter().map(|(k, v)| format!("{k}:{v}")).collect())
        }
        other => list(other),
    };
    let nano_cpus = match svc.get("cpus") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let c: f64 = scalar(v)
                .and_then(|s| s.parse().ok())
                .with_context(|| format!("{}: `cpus: {v:?}` is not a number", ctx()))?;
            Some((c * 1e9) as i64)
        }
    };
    let init = match svc.get("init") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        // A path to an init binary: compose turns init on (the path needs API < 1.25).
        Some(_) => Some(true),
    };
    let isolation = match text("isolation") {
        Some(i) => Some(
            i.parse::<HostConfigIsolationEnum>()
                .map_err(|e| anyhow::anyhow!("{}: isolation: {e}", ctx()))?,
        ),
        None => None,
    };
    let mut host = HostConfig {
        cap_add: list(svc.get("cap_add")),
        cap_drop: list(svc.get("cap_drop")),
        cgroup_parent: text("cgroup_parent"),
        cpu_count: int(svc, "cpu_count").with_context(ctx)?.filter(|c| *c != 0),
        cpu_percent: int(svc, "cpu_percent")
            .with_context(ctx)?
            .filter(|c| *c != 0),
        cpu_period: int(svc, "cpu_period").with_context(ctx)?,
        cpu_quota: int(svc, "cpu_quota").with_context(ctx)?,
        cpu_realtime_period: int(svc, "cpu_rt_period").with_context(ctx)?,
        cpu_realtime_runtime: int(svc, "cpu_rt_runtime").with_context(ctx)?,
        cpu_shares: int(svc, "cpu_shares").with_context(ctx)?,
        cpuset_cpus: text("cpuset"),
        nano_cpus,
        device_cgroup_rules: list(svc.get("device_cgroup_rules")),
        devices: devices(svc.get("devices")),
        dns: list(svc.get("dns")),
        dns_search: list(svc.get("dns_search")),
        dns_options: list(svc.get("dns_opt")),
        extra_hosts,
        group_add: list(svc.get("group_add")).filter(|g| !g.is_empty()),
        init,
        ipc_mode,
        pid_mode,
        readonly_rootfs: flag(svc, "read_only").with_context(ctx)?,
        log_config,
        memory: size(svc, "mem_limit").with_context(ctx)?,
        memory_reservation: size(svc, "mem_reservation").with_context(ctx)?,
        memory_swap: size(svc, "memswap_limit").with_context(ctx)?,
        memory_swappiness: int(svc, "mem_swappiness").with_context(ctx)?,
        // docker-py sends these two only when true.
        oom_kill_disable: flag(svc, "oom_kill_disable")
            .with_context(ctx)?
            .filter(|b| *b),
        privileged: flag(svc, "privileged").with_context(ctx)?.filter(|b| *b),
        oom_score_adj: int(svc, "oom_score_adj").with_context(ctx)?,
        pids_limit: int(svc, "pids_limit")
            .with_context(ctx)?
            .filter(|p| *p != 0),
        runtime: text("runtime"),
        security_opt: list(svc.get("security_opt")),
        shm_size: size(svc, "shm_size").with_context(ctx)?,
        sysctls: map(svc.get("sysctls"), '=').filter(|m| !m.is_empty()),
        storage_opt: map(svc.get("storage_opt"), '='),
        userns_mode: text("userns_mode"),
        volume_driver: text("volume_driver"),
        ulimits: ulimits(svc.get("ulimits")).with_context(ctx)?,
        device_requests: device_requests(svc).with_context(ctx)?,
        isolation,
        ..Default::default()
    };
    blkio(svc, &mut host).with_context(ctx)?;
    Ok(RuntimeSpec {
        host,
        hostname: text("hostname"),
        domainname: text("domainname"),
        tty: flag(svc, "tty").with_context(ctx)?,
        open_stdin: flag(svc, "stdin_open").with_context(ctx)?,
    })
}

/// Replaces `body`'s host config by compose's (`r.host`): nothing of the old container's
/// is kept (`refs` then resolves what names other containers); sets the body's hostname,
/// domainname, tty and stdin. `host::apply` then adds ports, volumes, tmpfs, restart
/// policy and network mode.
pub fn apply(body: &mut ContainerCreateBody, r: &RuntimeSpec) {
    body.host_config = Some(r.host.clone());
    body.hostname = r.hostname.clone();
    body.domainname = r.domainname.clone();
    body.tty = r.tty;
    body.open_stdin = r.open_stdin;
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVC: &str = "cap_add:\n- NET_ADMIN\ncap_drop:\n- MKNOD\ncpu_shares: 512\ncpus: 0.5\ncpuset: '0'\ndevices:\n- /dev/null:/dev/xnull:rw\n- /dev/zero\ndns:\n- 8.8.8.8\ndns_opt:\n- ndots:2\ndns_search:\n- example.com\ndomainname: d.example\nextra_hosts:\n- somehost:162.242.195.82\ngroup_add:\n- users\nhostname: h1\ninit: true\nipc: shareable\nlogging:\n  driver: json-file\n  options:\n    max-size: 10m\nmem_limit: 512m\nmem_reservation: 100000\nmemswap_limit: 1g\noom_score_adj: 100\npid: host\npids_limit: 100\nprivileged: false\nread_only: true\nsecurity_opt:\n- no-new-privileges\nshm_size: 64m\nstdin_open: true\nsysctls:\n  net.core.somaxconn: '1024'\ntty: true\nulimits:\n  nofile:\n    hard: 40000\n    soft: 20000\n  nproc: 65535\n";

    fn parsed(yaml: &str) -> RuntimeSpec {
        parse(&serde_yaml::from_str(yaml).unwrap(), "hapi").unwrap()
    }

    #[test]
    fn the_runtime_fields_are_read_as_compose_and_docker_py_send_them() {
        let r = parsed(SVC);
        let h = &r.host;
        assert_eq!(h.cap_add.as_deref(), Some(&["NET_ADMIN".to_owned()][..]));
        assert_eq!(h.cap_drop.as_deref(), Some(&["MKNOD".to_owned()][..]));
        assert_eq!(h.cpu_shares, Some(512));
        assert_eq!(h.nano_cpus, Some(500_000_000));
        assert_eq!(h.cpuset_cpus.as_deref(), Some("0"));
        let d = h.devices.as_ref().unwrap();
        assert_eq!(d[0].path_in_container.as_deref(), Some("/dev/xnull"));
        assert_eq!(d[0].cgroup_permissions.as_deref(), Some("rw"));
        assert_eq!(d[1].path_in_container.as_deref(), Some("/dev/zero"));
        assert_eq!(d[1].cgroup_permissions.as_deref(), Some("rwm"));
        assert_eq!(h.dns.as_deref(), Some(&["8.8.8.8".to_owned()][..]));
        assert_eq!(h.dns_options.as_deref(), Some(&["ndots:2".to_owned()][..]));
        assert_eq!(
            h.dns_search.as_deref(),
            Some(&["example.com".to_owned()][..])
        );
        assert_eq!(
            h.extra_hosts.as_deref(),
            Some(&["somehost:162.242.195.82".to_owned()][..])
        );
        assert_eq!(h.group_add.as_deref(), Some(&["users".to_owned()][..]));
        assert_eq!(h.init, Some(true));
        assert_eq!(h.ipc_mode.as_deref(), Some("shareable"));
        assert_eq!(h.pid_mode.as_deref(), Some("host"));
        let l = h.log_config.as_ref().unwrap();
        assert_eq!(l.typ.as_deref(), Some("json-file"));
        assert_eq!(l.config.as_ref().unwrap()["max-size"], "10m");
        assert_eq!(h.memory, Some(512 << 20));
        assert_eq!(h.memory_reservation, Some(100_000));
        assert_eq!(h.memory_swap, Some(1 << 30));
        assert_eq!(h.oom_score_adj, Some(100));
        assert_eq!(h.pids_limit, Some(100));
        assert_eq!(
            h.privileged, None,
            "docker-py sends privileged only when true"
        );
        assert_eq!(h.readonly_rootfs, Some(true));
        assert_eq!(
            h.security_opt.as_deref(),
            Some(&["no-new-privileges".to_owned()][..])
        );
        assert_eq!(h.shm_size, Some(64 << 20));
        assert_eq!(h.sysctls.as_ref().unwrap()["net.core.somaxconn"], "1024");
        let u = h.ulimits.as_ref().unwrap();
        let nofile = u
            .iter()
            .find(|u| u.name.as_deref() == Some("nofile"))
            .unwrap();
        assert_eq!((nofile.soft, nofile.hard), (Some(20000), Some(40000)));
        let nproc = u
            .iter()
            .find(|u| u.name.as_deref() == Some("nproc"))
            .unwrap();
        assert_eq!((nproc.soft, nproc.hard), (Some(65535), Some(65535)));
        assert_eq!(r.hostname.as_deref(), Some("h1"));
        assert_eq!(r.domainname.as_deref(), Some("d.example"));
        assert_eq!((r.tty, r.open_stdin), (Some(true), Some(true)));
    }

    #[test]
    fn other_spellings_compose_accepts_are_read_alike() {
        let r = parsed(
            "extra_hosts:\n  zeta: 1.2.3.4\n  alpha: 5.6.7.8\nsysctls:\n- net.core.somaxconn=1024\ndns: 1.1.1.1\nlogging:\n  driver: none\ninit: /sbin/tini\nmem_limit: 1000000\nshm_size: 128mb\nprivileged: true\npid: service:db\n",
        );
        let h = &r.host;
        assert_eq!(
            h.extra_hosts.as_deref(),
            Some(&["alpha:5.6.7.8".to_owned(), "zeta:1.2.3.4".to_owned()][..])
        );
        assert_eq!(h.sysctls.as_ref().unwrap()["net.core.somaxconn"], "1024");
        assert_eq!(h.dns.as_deref(), Some(&["1.1.1.1".to_owned()][..]));
        assert_eq!(h.log_config.as_ref().unwrap().typ.as_deref(), Some("none"));
        assert_eq!(h.log_config.as_ref().unwrap().config, None);
        assert_eq!(h.init, Some(true));
        assert_eq!(h.memory, Some(1_000_000));
        assert_eq!(h.shm_size, Some(128 << 20));
        assert_eq!(h.privileged, Some(true));
        assert_eq!(h.pid_mode, None);
    }

    #[test]
    fn sizes_are_docker_py_sizes() {
        assert_eq!(bytes("512m").unwrap(), 512 << 20);
        assert_eq!(bytes("1g").unwrap(), 1 << 30);
        assert_eq!(bytes("1GB").unwrap(), 1 << 30);
        assert_eq!(bytes("1.5k").unwrap(), 1536);
        assert_eq!(bytes("100").unwrap(), 100);
        assert_eq!(bytes("100b").unwrap(), 100);
        for bad in ["m", "12x", "1.2.3m", "-1m"] {
            assert!(bytes(bad).is_err(), "{bad:?}");
        }
        let e = parse(&serde_yaml::from_str("mem_limit: lots\n").unwrap(), "hapi").unwrap_err();
        assert!(format!("{e:#}").contains("mem_limit"), "{e:#}");
    }

    #[test]
    fn what_the_file_omits_is_composes_default_not_the_old_containers() {
        let old = HostConfig {
            extra_hosts: Some(vec!["old:1.1.1.1".into()]),
            log_config: Some(HostConfigLogConfig {
                typ: Some("syslog".into()),
                config: None,
            }),
            memory: Some(1 << 30),
            cap_add: Some(vec!["SYS_ADMIN".into()]),
            privileged: Some(true),
            network_mode: Some("proj_default".into()),
            links: Some(vec!["/db:/proj_hapi_1/db".into()]),
            pid_mode: Some("container:abc".into()),
            ..Default::default()
        };
        let mut body = ContainerCreateBody {
            hostname: Some("old".into()),
            tty: Some(true),
            host_config: Some(old.clone()),
            ..Default::default()
        };
        apply(&mut body, &parsed("pid: service:db\n"));
        let hc = body.host_config.unwrap();
        assert_eq!(hc.extra_hosts, None);
        assert_eq!(hc.log_config, None, "the daemon's default log driver");
        assert_eq!(hc.memory, None);
        assert_eq!(hc.cap_add, None);
        assert_eq!(hc.privileged, None);
        assert_eq!(body.hostname, None);
        assert_eq!(body.tty, None);
        // Not even what names other containers: `refs` resolves that as compose does.
        assert_eq!(hc.network_mode, None);
        assert_eq!(hc.links, None);
        assert_eq!(hc.pid_mode, None);
    }

    #[test]
    fn blkio_device_requests_and_isolation_are_composes() {
        let r = parsed(
            "blkio_config:\n  device_read_bps:\n  - path: /dev/vda\n    rate: 12582912\n  device_write_iops:\n  - path: /dev/vda\n    rate: 30\n  weight: 300\n  weight_device:\n  - path: /dev/vda\n    weight: 400\nisolation: default\ndeploy:\n  resources:\n    reservations:\n      devices:\n      - capabilities: [gpu]\n        count: all\n      - driver: nvidia\n        device_ids: ['0']\n",
        );
        let h = &r.host;
        assert_eq!(h.blkio_weight, Some(300));
        let w = h.blkio_weight_device.as_ref().unwrap();
        assert_eq!(
            (w[0].path.as_deref(), w[0].weight),
            (Some("/dev/vda"), Some(400))
        );
        let b = h.blkio_device_read_bps.as_ref().unwrap();
        assert_eq!(
            (b[0].path.as_deref(), b[0].rate),
            (Some("/dev/vda"), Some(12582912))
        );
        assert_eq!(
            h.blkio_device_write_iops.as_ref().unwrap()[0].rate,
            Some(30)
        );
        assert_eq!(h.blkio_device_write_bps, None);
        assert_eq!(h.isolation, Some(HostConfigIsolationEnum::DEFAULT));
        let d = h.device_requests.as_ref().unwrap();
        assert_eq!(d[0].count, Some(-1));
        assert_eq!(d[0].capabilities, Some(vec![vec!["gpu".to_owned()]]));
        assert_eq!(d[0].driver.as_deref(), Some(""));
        assert_eq!(d[1].count, Some(0));
        assert_eq!(d[1].device_ids, Some(vec!["0".to_owned()]));
        assert_eq!(d[1].capabilities, Some(vec![]));
        assert_eq!(d[1].options, Some(HashMap::new()));
        let none = parsed("image: x\n");
        assert_eq!(none.host.blkio_weight, None);
        assert_eq!(none.host.device_requests, None);
        assert_eq!(none.host.isolation, None);
    }
}
