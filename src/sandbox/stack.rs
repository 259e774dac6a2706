//! The sandbox's containers: the stand-in HAPI image (built from the files root's overlay
//! with the seed's build args and pushed to the sandbox registry), the proxy image, and the
//! docker-compose project, started with the real `docker-compose`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::{State, proc};
use crate::infra::docker::{self, BuildRequest, Credentials, Docker};

pub const DOCKERFILE: &str = include_str!("../../fixtures/hapi-standin/Dockerfile");
const LB_DOCKERFILE: &str = "# Round-robin TCP proxy in front of the hapi replicas (the stand-in's `proxy` mode).\n\
FROM scratch\nCOPY hapi-standin /app/hapi-standin\nENTRYPOINT [\"/app/hapi-standin\"]\n";
pub const LABEL: &str = "ferry.sandbox";

async fn engine() -> anyhow::Result<Docker> {
    Docker::connect(&docker::host(None)).await
}

fn files_root(st: &State) -> std::path::PathBuf {
    st.dir.join("files")
}

pub async fn build_and_start(
    st: &State,
    standin: &Path,
    registry_password: &str,
) -> anyhow::Result<()> {
    build_hapi_image(st, registry_password).await?;
    let engine = engine().await?;
    let mut labels = BTreeMap::from([(LABEL.to_owned(), st.id.clone())]);
    labels.extend(st.labels.iter().cloned());
    let lb = st.dir.join("lb");
    std::fs::create_dir_all(&lb)?;
    std::fs::write(lb.join("Dockerfile"), LB_DOCKERFILE)?;
    std::fs::copy(standin, lb.join("hapi-standin"))?;
    let req = BuildRequest {
        context: lb,
        dockerfile: "Dockerfile".into(),
        build_args: BTreeMap::new(),
        labels,
        tags: vec![st.lb_image.clone()],
    };
    engine
        .build_image(&req, |_| {})
        .await
        .context("building the proxy image")?;
    compose_up(st).await
}

/// The stand-in HAPI image, built from the files root's overlay with the seed's build args
/// (the overlay once per content hash: image_cache.rs) and pushed to the sandbox registry (as
/// `HAPI_IMAGE` in `.env` names it).
pub async fn build_hapi_image(st: &State, registry_password: &str) -> anyhow::Result<()> {
    let engine = engine().await?;
    let root = files_root(st);
    let mut git = Command::new(super::deps::bin("git"));
    git.arg("-C")
        .arg(&root)
        .args(["rev-parse", "--short", "HEAD"]);
    let commit = proc::run(git, "git rev-parse")?.trim().to_owned();
    let args = BTreeMap::from([
        (
            "IG_PACKAGE".to_owned(),
            super::files::IG_BASELINE_FILE.to_owned(),
        ),
        ("BUILD_VERSION".to_owned(), "1.0.0".to_owned()),
    ]);
    let base =
        super::image_cache::ensure(&engine, &root.join("hapi-overlay"), &args, &st.labels).await?;
    // GIT_COMMIT only labels the image: this sandbox's layer says it (image_cache.rs).
    let mut labels = BTreeMap::from([
        (LABEL.to_owned(), st.id.clone()),
        (crate::steps::image_build::LABEL_REVISION.to_owned(), commit),
    ]);
    labels.extend(st.labels.iter().cloned());
    let context = st.dir.join("hapi-image");
    std::fs::create_dir_all(&context)?;
    std::fs::write(
        context.join("Dockerfile"),
        super::image_cache::dockerfile(&base, &labels),
    )?;
    let req = BuildRequest {
        context,
        dockerfile: "Dockerfile".into(),
        build_args: BTreeMap::new(),
        labels: BTreeMap::new(),
        tags: vec![st.image.clone()],
    };
    engine
        .build_image(&req, |_| {})
        .await
        .context("building the stand-in HAPI image")?;
    let creds = Credentials {
        username: super::REGISTRY_USER.into(),
        password: registry_password.into(),
        server: format!("127.0.0.1:{}", st.registry_port),
    };
    engine
        .push_image(&st.image, Some(&creds), |_| {})
        .await
        .context("pushing to the sandbox registry")?;
    Ok(())
}

pub fn compose(st: &State, args: &[&str]) -> anyhow::Result<String> {
    let mut c = Command::new(super::deps::bin("docker-compose"));
    c.current_dir(files_root(st))
        .args(["-p", &st.project])
        .args(args);
    proc::run(c, &format!("docker-compose {}", args.join(" ")))
}

/// A docker-compose command running in the background ([`Spawned::wait`] for its end).
pub struct Spawned {
    child: tokio::process::Child,
    what: String,
}

impl Spawned {
    pub async fn wait(self) -> anyhow::Result<()> {
        let out = self
            .child
            .wait_with_output()
            .await
            .with_context(|| format!("{}: no exit status", self.what))?;
        if !out.status.success() {
            bail!(
                "{} failed ({}): {}",
                self.what,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

pub fn compose_spawn(st: &State, args: &[&str]) -> anyhow::Result<Spawned> {
    let what = format!("docker-compose {}", args.join(" "));
    let child = tokio::process::Command::new(super::deps::bin("docker-compose"))
        .current_dir(files_root(st))
        .args(["-p", &st.project])
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("{what}: cannot start"))?;
    Ok(Spawned { child, what })
}

/// `docker-compose up -d --scale hapi=N`, then waits until every replica is healthy and the
/// metadata answers through the proxy.
pub async fn compose_up(st: &State) -> anyhow::Result<()> {
    compose(
        st,
        &["up", "-d", "--scale", &format!("hapi={}", st.replicas)],
    )?;
    let t = Instant::now();
    loop {
        let (replicas, version) = observe(st).await;
        let healthy = replicas.iter().filter(|r| r.ends_with("(healthy)")).count();
        if healthy >= st.replicas as usize && version.is_some() {
            return Ok(());
        }
        if t.elapsed() > Duration::from_secs(90) {
            bail!(
                "the sandbox's hapi replicas did not become healthy within 90s: {}",
                replicas.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Each replica as "name status", and the version the proxy's metadata reports.
pub async fn observe(st: &State) -> (Vec<String>, Option<String>) {
    let replicas = match engine().await {
        Ok(e) => e.replicas(&st.project, "hapi").await.unwrap_or_default(),
        Err(_) => vec![],
    };
    let list = replicas
        .iter()
        .map(|r| format!("{} {}", r.name, r.status))
        .collect();
    (list, metadata_version(&st.base_url()).await)
}

pub async fn metadata_version(base_url: &str) -> Option<String> {
    let client = crate::infra::http::client(Duration::from_secs(3)).ok()?;
    let resp = client
        .get(format!("{base_url}/metadata"))
        .header("Accept", "application/fhir+json")
        .send()
        .await
        .ok()?;
    let v: serde_json::Value = resp.error_for_status().ok()?.json().await.ok()?;
    v["software"]["version"].as_str().map(str::to_owned)
}

/// Containers and networks (compose down), then every image of the sandbox.
pub async fn remove(st: &State) -> anyhow::Result<Vec<String>> {
    let mut done = vec![];
    if files_root(st).join("docker-compose.yml").exists() {
        // -v: the compose stack's named volumes (the databases) go too.
        let args = ["down", "--remove-orphans", "-v", "--timeout", "5"];
        if compose(st, &args).is_err() {
            // The engine can report a network's endpoints a moment after their containers are
            // gone ("has active endpoints"); `down` is idempotent, so a second one finishes.
            tokio::time::sleep(Duration::from_secs(2)).await;
            compose(st, &args)?;
        }
        done.push(format!(
            "removed the compose project {} (containers, networks, volumes)",
            st.project
        ));
    }
    let engine = engine().await?;
    let registry = format!("127.0.0.1:{}/", st.registry_port);
    for image in engine.list_images().await? {
        let ours = image.labels.get(LABEL) == Some(&st.id)
            || image.repo_tags.iter().any(|t| t.starts_with(&registry));
        if ours {
            for tag in &image.repo_tags {
                engine.remove_image(tag).await?;
            }
            if image.repo_tags.is_empty() {
                engine.remove_image(&image.id).await?;
            }
            done.push(format!(
                "removed image {}",
                image.repo_tags.first().unwrap_or(&image.id)
            ));
        }
    }
    Ok(done)
}
