//! The replica as a compose service of the target's project, and the one-shot base backup
//! container. The service is defined in an override file ferry owns
//! (`docker-compose.<service>.yml` in the files root), listed in the env file's
//! `COMPOSE_FILE` so that every later `docker-compose` in that directory (an operator's
//! `ps`, `up -d`, `down -v`) sees it; ferry's own commands pass the same list explicitly.
//!
//! Everything runs through the `docker` and `docker-compose` clients (DOCKER_HOST from the
//! target's `[docker] host`), inside the compose network: the host never connects to a
//! container address. Secrets never go into argv: the base backup's password reaches the
//! container by name (`-e PGPASSWORD`), from the client's environment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use tokio::process::Command;

use crate::steps::StepCx;

/// The data directory inside the base image (Debian's layout, as the sandbox's primary).
pub const DATA: &str = "/var/lib/postgresql/data";
pub const CONF: &str = "/etc/postgresql/postgresql.conf";

/// What ferry needs to address the replica's objects.
pub struct Names {
    pub project: String,
    pub service: String,
    /// The compose files root (docker-compose.yml, the env file).
    pub root: PathBuf,
    pub env_file: PathBuf,
    /// `docker-compose.<service>.yml`, relative to `root`.
    pub override_file: String,
}

impl Names {
    pub fn volume_key(&self) -> String {
        format!("{}-data", self.service)
    }
    pub fn backup_container(&self) -> String {
        format!("{}_{}_basebackup", self.project, self.service)
    }
}

fn docker_host(cx: &StepCx) -> Option<String> {
    cx.target
        .as_deref()
        .and_then(|t| t.docker.as_ref())
        .and_then(|d| d.host.clone())
}

pub async fn docker(cx: &StepCx, args: &[&str], env: &[(&str, String)]) -> anyhow::Result<String> {
    let mut c = Command::new("docker");
    c.args(args).kill_on_drop(true);
    if let Some(h) = docker_host(cx) {
        c.env("DOCKER_HOST", h);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().await.context("running the docker client")?;
    if !out.status.success() {
        bail!(
            "`docker {}` failed: {}",
            args.first().copied().unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `docker-compose -p PROJECT ARGS` in the files root with `COMPOSE_FILE` = `files`.
pub async fn compose(cx: &StepCx, n: &Names, files: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut c = Command::new("docker-compose");
    c.current_dir(&n.root)
        .args(["-p", &n.project])
        .args(args)
        .env("COMPOSE_FILE", files)
        .kill_on_drop(true);
    if let Some(h) = docker_host(cx) {
        c.env("DOCKER_HOST", h);
    }
    let out = c.output().await.context("running docker-compose")?;
    if !out.status.success() {
        bail!(
            "`docker-compose {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The one container of `service` in `project` (any state), if there is one.
pub async fn container_of(
    cx: &StepCx,
    project: &str,
    service: &str,
) -> anyhow::Result<Option<String>> {
    let out = docker(
        cx,
        &[
            "ps",
            "-a",
            "--filter",
            &format!("label=com.docker.compose.project={project}"),
            "--filter",
            &format!("label=com.docker.compose.service={service}"),
            "--format",
            "{{.Names}}",
        ],
        &[],
    )
    .await?;
    Ok(out.lines().next().map(str::to_owned))
}

/// A compose object's Docker name by its labels (`network` or `volume` key in the project).
pub async fn object_named(
    cx: &StepCx,
    what: &str,
    project: &str,
    key: &str,
) -> anyhow::Result<Option<String>> {
    let out = docker(
        cx,
        &[
            what,
            "ls",
            "--filter",
            &format!("label=com.docker.compose.project={project}"),
            "--filter",
            &format!("label=com.docker.compose.{what}={key}"),
            "--format",
            "{{.Name}}",
        ],
        &[],
    )
    .await?;
    Ok(out.lines().next().map(str::to_owned))
}

/// (image, labels other than compose's) of a container.
pub async fn image_and_labels(
    cx: &StepCx,
    container: &str,
) -> anyhow::Result<(String, BTreeMap<String, String>)> {
    let out = docker(
        cx,
        &[
            "inspect",
            "--format",
            "{{json .Config.Image}} {{json .Config.Labels}}",
            container,
        ],
        &[],
    )
    .await?;
    let (img, labels) = out.split_once(' ').context("docker inspect's output")?;
    let image: String = serde_json::from_str(img)?;
    let all: BTreeMap<String, String> = serde_json::from_str(labels).unwrap_or_default();
    let own = all
        .into_iter()
        .filter(|(k, _)| !k.starts_with("com.docker.compose."))
        .collect();
    Ok((image, own))
}

/// The `version:` of the main compose file (override files must use the same).
pub fn compose_version(root: &Path) -> String {
    std::fs::read_to_string(root.join("docker-compose.yml"))
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("version:")
                    .map(|v| v.trim().trim_matches(['"', '\'']).to_owned())
            })
        })
        .unwrap_or_else(|| "2.4".into())
}

pub struct ServiceDef<'a> {
    pub version: &'a str,
    pub service: &'a str,
    pub image: &'a str,
    pub network: &'a str,
    /// A postgresql.conf (relative to the files root) mounted at [`CONF`].
    pub config_file: Option<&'a str>,
    pub labels: &'a BTreeMap<String, String>,
    pub run_id: &'a str,
}

fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// The override file defining the replica: it starts only on a base backup (standby.signal
/// present), never initdb's a primary of its own.
pub fn override_yaml(d: &ServiceDef) -> String {
    let conf = if d.config_file.is_some() {
        format!(" -c config_file={CONF}")
    } else {
        String::new()
    };
    let script = format!(
        "test -e {DATA}/standby.signal || {{ echo 'no base backup in {DATA} (standby.signal missing): run the read_replica step' >&2; exit 1; }}; \
         exec runuser -u postgres -- postgres -D {DATA}{conf} -c listen_addresses=* -c hot_standby=on"
    );
    let labels: String = d
        .labels
        .iter()
        .map(|(k, v)| format!("\n      {}: {}", q(k), q(v)))
        .collect();
    let labels = if labels.is_empty() {
        " {}".into()
    } else {
        labels
    };
    let vkey = format!("{}-data", d.service);
    let mount = d
        .config_file
        .map(|c| format!("\n      - {}", q(&format!("./{c}:{CONF}:ro"))))
        .unwrap_or_default();
    format!(
        "# The read replica of ferry's read_replica step (run {run}): a hot standby streaming from\n\
         # the primary through a physical replication slot. Listed in the env file's COMPOSE_FILE;\n\
         # `ferry rollback {run}` removes the service, its volume, this file and that line.\n\
         version: {version}\n\
         services:\n  {svc}:\n    image: {image}\n    entrypoint: [\"bash\", \"-c\", {script}]\n\
         \x20   volumes:\n      - {vol}{mount}\n    networks:\n      - {net}\n\
         \x20   healthcheck:\n      test: [\"CMD\", \"pg_isready\", \"-q\", \"-h\", \"127.0.0.1\", \"-U\", \"postgres\"]\n\
         \x20     interval: 1s\n      timeout: 3s\n      retries: 10\n      start_period: 600s\n\
         \x20   stop_grace_period: 30s\n    restart: unless-stopped\n    labels:{labels}\n\
         volumes:\n  {vkey}:\n    labels:{labels2}\n",
        run = d.run_id,
        version = q(d.version),
        svc = d.service,
        image = q(d.image),
        script = q(&script),
        vol = q(&format!("{}-data:{DATA}", d.service)),
        net = d.network,
        vkey = vkey,
        labels2 = labels,
    )
}

/// The base backup's script, run as root in a container of the primary's image: empty the
/// volume (a killed attempt leaves a partial copy), then `pg_basebackup -R -X stream` as
/// postgres through the slot, retried while the primary still holds the slot for a killed
/// attempt's walsender.
pub fn backup_script(host: &str, port: u16, user: &str, app: &str, slot: &str) -> String {
    format!(
        "set -u; d={DATA}; clean() {{ find \"$d\" -mindepth 1 -delete; }}; clean; chown postgres:postgres \"$d\"; chmod 700 \"$d\"; \
         for i in $(seq 1 15); do \
           runuser -u postgres -- pg_basebackup -d 'host={host} port={port} user={user} application_name={app}' \
             -D \"$d\" -S {slot} -X stream -R -c fast -w && exit 0; \
           clean; sleep 2; \
         done; exit 1"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_override_defines_the_service_with_its_volume_network_and_labels() {
        let labels: BTreeMap<String, String> = [("ferry.test".to_owned(), "1".to_owned())]
            .into_iter()
            .collect();
        let y = override_yaml(&ServiceDef {
            version: "2.4",
            service: "postgres-fhir-replica",
            image: "base:1",
            network: "backend-fhir",
            config_file: Some("postgres/fhir/postgresql.conf"),
            labels: &labels,
            run_id: "r1",
        });
        let doc: serde_yaml::Value = serde_yaml::from_str(&y).unwrap();
        let svc = &doc["services"]["postgres-fhir-replica"];
        assert_eq!(svc["image"].as_str(), Some("base:1"));
        assert_eq!(svc["networks"][0].as_str(), Some("backend-fhir"));
        assert_eq!(svc["labels"]["ferry.test"].as_str(), Some("1"));
        assert_eq!(
            svc["volumes"][0].as_str(),
            Some("postgres-fhir-replica-data:/var/lib/postgresql/data")
        );
        assert!(
            svc["entrypoint"][2]
                .as_str()
                .unwrap()
                .contains("standby.signal")
        );
        assert_eq!(
            doc["volumes"]["postgres-fhir-replica-data"]["labels"]["ferry.test"].as_str(),
            Some("1")
        );
        let s = backup_script("postgres-fhir", 5432, "replicator", "r", "slot1");
        assert!(s.contains("-S slot1 -X stream -R"), "{s}");
    }
}
