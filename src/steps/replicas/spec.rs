//! What compose itself would give a new container of the service, read from
//! `docker-compose -p PROJECT config` in the compose directory (Debian's docker-compose v1,
//! with the project's files and `.env`, interpolated the way `up` does it): the environment,
//! the service's labels, command, entrypoint, user, working dir, stop signal, stop grace
//! period and healthcheck. A replacement takes these from here, never from the container it
//! replaces: the old container carries the *old* `.env`'s values (issue 11, item 3), and its
//! `config-hash` label would then claim a match compose never made.
//! Invariant: a field the file does not set is left to the image (None), as compose does.
//! The image, the host side (ports, volumes, restart policy, networks: `host`) and the
//! runtime and resource settings (extra_hosts, logging, ulimits, limits…: `runtime`) too.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use bollard::models::{ContainerCreateBody, HealthConfig};
use serde_yaml::Value;

use super::host::{self, HostSpec};
use super::refs::{self, Refs};
use super::runtime::{self, RuntimeSpec};
use crate::infra::docker::ContainerInfo;

/// The compose-derived part of a container of the service.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceSpec {
    /// `KEY=VALUE` (a key with no value: `KEY`), sorted by key as compose passes them.
    pub env: Vec<String>,
    /// The service's own labels (`labels:`), not compose's `com.docker.compose.*` ones.
    pub labels: BTreeMap<String, String>,
    pub command: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub user: Option<String>,
    pub working_dir: Option<String>,
    pub stop_signal: Option<String>,
    /// `stop_grace_period` (compose's default is 10 s when unset).
    pub stop_grace: Option<Duration>,
    pub healthcheck: Option<HealthConfig>,
    /// `image:` as interpolated (what `up` would run).
    pub image: Option<String>,
    /// Ports, volumes, restart policy, networks.
    pub host: HostSpec,
    /// Logging, limits, capabilities, dns, extra_hosts, hostname, tty… (`runtime`).
    pub runtime: RuntimeSpec,
    /// Links, volumes_from, `service:`/`container:` modes: resolved at create (`refs`).
    pub refs: Refs,
}

/// Runs `docker-compose -p PROJECT config` in `dir` and takes `service` out of it.
pub fn load(dir: &Path, project: &str, service: &str) -> anyhow::Result<ServiceSpec> {
    let out = std::process::Command::new("docker-compose")
        .current_dir(dir)
        .args(["-p", project, "config"])
        .output()
        .with_context(|| format!("running docker-compose config in {}", dir.display()))?;
    if !out.status.success() {
        bail!(
            "`docker-compose -p {project} config` in {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse(&String::from_utf8_lossy(&out.stdout), project, service)
}

/// The service's part of compose's `config` output.
pub fn parse(yaml: &str, project: &str, service: &str) -> anyhow::Result<ServiceSpec> {
    let doc: Value = serde_yaml::from_str(yaml).context("reading docker-compose config")?;
    let Some(svc) = doc.get("services").and_then(|s| s.get(service)) else {
        bail!("the compose files define no service `{service}` (docker-compose config)");
    };
    let text = |k: &str| svc.get(k).and_then(scalar);
    let mut env: Vec<String> = match svc.get("environment") {
        Some(Value::Mapping(m)) => m
            .iter()
            .filter_map(|(k, v)| {
                let k = scalar(k)?;
                Some(match scalar(v) {
                    Some(v) => format!("{k}={v}"),
                    None => k,
                })
            })
            .collect(),
        Some(Value::Sequence(s)) => s.iter().filter_map(scalar).collect(),
        _ => vec![],
    };
    env.sort_by(|a, b| key(a).cmp(key(b)));
    let labels = match svc.get("labels") {
        Some(Value::Mapping(m)) => m
            .iter()
            .filter_map(|(k, v)| Some((scalar(k)?, scalar(v).unwrap_or_default())))
            .collect(),
        Some(Value::Sequence(s)) => s
            .iter()
            .filter_map(scalar)
            .map(|l| match l.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (l, String::new()),
            })
            .collect(),
        _ => BTreeMap::new(),
    };
    Ok(ServiceSpec {
        env,
        labels,
        command: svc.get("command").map(words),
        entrypoint: svc.get("entrypoint").map(words),
        user: text("user"),
        working_dir: text("working_dir"),
        stop_signal: text("stop_signal"),
        stop_grace: text("stop_grace_period")
            .map(|d| duration(&d))
            .transpose()?,
        healthcheck: svc.get("healthcheck").map(health).transpose()?,
        image: text("image"),
        host: host::parse(&doc, svc, project, service)?,
        runtime: runtime::parse(svc, service)?,
        refs: refs::parse(svc),
    })
}

fn key(e: &str) -> &str {
    e.split_once('=').map_or(e, |(k, _)| k)
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A command as compose hands it to Docker: a list as is, a string split like a shell.
fn words(v: &Value) -> Vec<String> {
    match v {
        Value::Sequence(s) => s.iter().filter_map(scalar).collect(),
        other => split_shell(&scalar(other).unwrap_or_default()),
    }
}

/// Minimal `shlex.split` (what docker-py applies to a string command): whitespace,
/// single and double quotes, backslash escapes.
fn split_shell(s: &str) -> Vec<String> {
    let (mut out, mut cur, mut any) = (vec![], String::new(), false);
    let mut chars = s.chars();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') | (None, '\\') => cur.extend(chars.next()),
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                any = true;
            }
            (None, c) if c.is_whitespace() => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                any = false;
            }
            (None, c) => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn health(v: &Value) -> anyhow::Result<HealthConfig> {
    let d = |k: &str| -> anyhow::Result<Option<i64>> {
        v.get(k)
            .and_then(scalar)
            .map(|s| duration(&s).map(|d| d.as_nanos() as i64))
            .transpose()
    };
    let test = if v.get("disable").and_then(Value::as_bool) == Some(true) {
        Some(vec!["NONE".to_owned()])
    } else {
        v.get("test").map(|t| match t {
            Value::Sequence(_) => words(t),
            other => vec!["CMD-SHELL".into(), scalar(other).unwrap_or_default()],
        })
    };
    Ok(HealthConfig {
        test,
        interval: d("interval")?,
        timeout: d("timeout")?,
        retries: v.get("retries").and_then(Value::as_i64),
        start_period: d("start_period")?,
        ..Default::default()
    })
}

/// A compose duration: `1m30s`, `2s`, `500ms`, `1.5s`, `10us`, `1h`.
pub fn duration(s: &str) -> anyhow::Result<Duration> {
    let bad = || anyhow::anyhow!("`{s}` is not a compose duration (e.g. 10s, 1m30s, 500ms)");
    let mut total = 0f64;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let num: f64 = rest[..n].parse().map_err(|_| bad())?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..u] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(bad()),
        };
        total += num * unit;
        rest = &rest[u..];
    }
    Ok(Duration::from_secs_f64(total))
}

/// Sets on `body` every field compose derives from the files. `compose_labels` are the old
/// container's `com.docker.compose.*` labels (number, project, service…), kept as compose
/// keeps them; its other labels came from the old files and are replaced by the spec's.
/// `previous` is the container replaced (None: a new replica number), whose data volumes
/// are carried over (`host::apply`), with `old_image_volumes` (the VOLUMEs its image declares).
pub fn apply(
    body: &mut ContainerCreateBody,
    spec: &ServiceSpec,
    previous: Option<&ContainerInfo>,
    old_image_volumes: &[String],
) {
    let mut labels: HashMap<String, String> = body
        .labels
        .take()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k.starts_with("com.docker.compose."))
        .collect();
    labels.extend(spec.labels.clone());
    body.labels = Some(labels);
    body.env = Some(spec.env.clone());
    body.cmd = spec.command.clone();
    body.entrypoint = spec.entrypoint.clone();
    body.user = spec.user.clone();
    body.working_dir = spec.working_dir.clone();
    body.stop_signal = spec.stop_signal.clone();
    // Compose (API >= 1.25) sets StopTimeout only when the file has stop_grace_period.
    body.stop_timeout = spec.stop_grace.map(|d| d.as_secs() as i64);
    body.healthcheck = spec.healthcheck.clone();
    runtime::apply(body, &spec.runtime);
    host::apply(body, &spec.host, previous, old_image_volumes);
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "services:\n  hapi:\n    command: proxy --listen '0.0.0.0:80' \"a b\"\n    environment:\n      A: '5'\n      HAPI_IG_VERSION: 0.2.2\n      EMPTY: ''\n      UNSET: null\n    healthcheck:\n      interval: 2s\n      start_period: 1m30s\n      retries: 3\n      test:\n      - CMD\n      - x\n    image: foo:1\n    labels:\n      ferry.sandbox: x\n    stop_grace_period: 1m30s\nversion: '2.4'\n";

    #[test]
    fn the_service_is_read_as_compose_interpolated_it() {
        let s = parse(CONFIG, "p", "hapi").unwrap();
        assert_eq!(
            s.env,
            ["A=5", "EMPTY=", "HAPI_IG_VERSION=0.2.2", "UNSET"].map(String::from)
        );
        assert_eq!(s.labels.get("ferry.sandbox").map(String::as_str), Some("x"));
        assert_eq!(
            s.command.unwrap(),
            ["proxy", "--listen", "0.0.0.0:80", "a b"].map(String::from)
        );
        assert_eq!(s.entrypoint, None);
        assert_eq!(s.stop_grace, Some(Duration::from_secs(90)));
        let h = s.healthcheck.unwrap();
        assert_eq!(h.test.unwrap(), ["CMD", "x"].map(String::from));
        assert_eq!(h.interval, Some(2_000_000_000));
        assert_eq!(h.start_period, Some(90_000_000_000));
        assert_eq!(h.retries, Some(3));
        assert_eq!(h.timeout, None);
        let e = parse(CONFIG, "p", "web").unwrap_err().to_string();
        assert_eq!(
            e,
            "the compose files define no service `web` (docker-compose config)"
        );
    }

    #[test]
    fn durations_are_compose_durations() {
        assert_eq!(duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(duration("1h2m").unwrap(), Duration::from_secs(3720));
        for bad in ["", "10", "s", "1x", "1m-2s"] {
            assert!(duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn apply_replaces_the_old_files_fields_and_keeps_composes_labels() {
        let mut body = ContainerCreateBody {
            env: Some(vec!["HAPI_IG_VERSION=0.2.1".into()]),
            labels: Some(HashMap::from([
                ("com.docker.compose.container-number".into(), "2".into()),
                ("old.label".into(), "1".into()),
            ])),
            cmd: Some(vec!["old".into()]),
            ..Default::default()
        };
        apply(&mut body, &parse(CONFIG, "p", "hapi").unwrap(), None, &[]);
        assert!(
            body.env
                .as_ref()
                .unwrap()
                .contains(&"HAPI_IG_VERSION=0.2.2".to_owned())
        );
        let l = body.labels.unwrap();
        assert_eq!(l["com.docker.compose.container-number"], "2");
        assert_eq!(l["ferry.sandbox"], "x");
        assert!(!l.contains_key("old.label"));
        assert_eq!(body.stop_timeout, Some(90));
    }
}
