//! The Docker Engine API over its Unix socket (bollard 0.21, classic builder): connect,
//! version, image build/tag/remove/inspect/push, and a compose service's replicas.
//!
//! Thin and typed, no policy: callers decide what a missing image or a failed push means.
//! Invariants:
//! - Every build and push stream is drained to its end; the first item that carries an
//!   error (bollard turns `errorDetail` into a stream `Err`) fails the call with the
//!   daemon's message, and every progress line goes to the caller's callback first.
//! - The host is the target's `docker.host`, else `DOCKER_HOST`, else the default socket:
//!   the target file says where the deployment is, so it wins over the operator's shell.
//!   Only `unix://` hosts are supported (no TCP, hence no second TLS stack).

mod build;
mod containers;
mod lifecycle;
mod network;

use std::collections::HashMap;

use anyhow::{Context, anyhow, bail};
use bollard::auth::DockerCredentials;
use bollard::query_parameters::TagImageOptionsBuilder;
use bollard::query_parameters::{PushImageOptionsBuilder, RemoveImageOptionsBuilder};
use futures_util::StreamExt;

pub use build::{BuildRequest, dockerfile_args};
pub use containers::{NUMBER, Replica};
pub use lifecycle::ContainerInfo;

pub const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";
/// Seconds bollard waits on one request; builds and pushes stream, so this bounds silence.
const TIMEOUT_SECS: u64 = 900;

/// The host ferry talks to: the target's `docker.host`, else `DOCKER_HOST`, else the default.
pub fn host(target_host: Option<&str>) -> String {
    target_host
        .map(str::to_owned)
        .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| DEFAULT_HOST.to_owned())
}

#[derive(Debug, Clone)]
pub struct Docker {
    docker: bollard::Docker,
    pub host: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub version: String,
    pub api_version: String,
}

/// What ferry needs of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// `sha256:…`
    pub id: String,
    pub labels: HashMap<String, String>,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
}

/// Registry credentials, sent as `X-Registry-Auth`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    pub server: String,
}

/// `repo[:tag]` split at the tag's colon (a registry's `host:port` is not a tag).
pub fn split_reference(reference: &str) -> (&str, &str) {
    let name = reference.split('@').next().unwrap_or(reference);
    match name.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (name, "latest"),
    }
}

fn describe(e: bollard::errors::Error) -> anyhow::Error {
    match e {
        bollard::errors::Error::DockerResponseServerError {
            status_code,
            message,
        } => anyhow!("Docker engine: {} (HTTP {status_code})", message.trim()),
        bollard::errors::Error::DockerStreamError { error } => {
            anyhow!("Docker engine: {}", error.trim())
        }
        other => anyhow!(other),
    }
}

fn not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

impl Docker {
    /// Connects and negotiates the API version (one round trip: fails fast when the
    /// socket is absent or nobody answers).
    pub async fn connect(host: &str) -> anyhow::Result<Docker> {
        let Some(path) = host.strip_prefix("unix://") else {
            bail!("Docker host `{host}`: only unix:// sockets are supported");
        };
        if !std::path::Path::new(path).exists() {
            bail!("cannot reach the Docker engine at {host}: no such socket");
        }
        let docker =
            bollard::Docker::connect_with_unix(host, TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
                .map_err(describe)
                .with_context(|| format!("cannot connect to the Docker engine at {host}"))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(describe)
            .with_context(|| format!("cannot reach the Docker engine at {host}"))?;
        Ok(Docker {
            docker,
            host: host.to_owned(),
        })
    }

    pub async fn version(&self) -> anyhow::Result<Version> {
        let v = self.docker.version().await.map_err(describe)?;
        Ok(Version {
            version: v.version.unwrap_or_default(),
            api_version: v.api_version.unwrap_or_default(),
        })
    }

    /// A network's driver options and the gateways of its IPAM config (the default
    /// `bridge` network usually lists none: its address is docker0's). None when absent.
    pub async fn network_options(
        &self,
        name: &str,
    ) -> anyhow::Result<Option<(HashMap<String, String>, Vec<String>)>> {
        match self.docker.inspect_network(name, None).await {
            Ok(n) => {
                let gateways = n
                    .ipam
                    .and_then(|i| i.config)
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|c| c.gateway)
                    .collect();
                Ok(Some((n.options.unwrap_or_default(), gateways)))
            }
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(describe(e)).with_context(|| format!("inspect network {name}")),
        }
    }

    /// None when there is no such image.
    pub async fn inspect_image(&self, reference: &str) -> anyhow::Result<Option<ImageInfo>> {
        match self.docker.inspect_image(reference).await {
            Ok(i) => Ok(Some(ImageInfo {
                id: i.id.unwrap_or_default(),
                labels: i.config.and_then(|c| c.labels).unwrap_or_default(),
                repo_tags: i.repo_tags.unwrap_or_default(),
                repo_digests: i.repo_digests.unwrap_or_default(),
            })),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(describe(e)).with_context(|| format!("inspect image {reference}")),
        }
    }

    /// Points `target` (`repo[:tag]`) at `source` (a reference or an image id).
    pub async fn tag_image(&self, source: &str, target: &str) -> anyhow::Result<()> {
        let (repo, tag) = split_reference(target);
        let opts = TagImageOptionsBuilder::default()
            .repo(repo)
            .tag(tag)
            .build();
        self.docker
            .tag_image(source, Some(opts))
            .await
            .map_err(describe)
            .with_context(|| format!("tag {source} as {target}"))
    }

    /// Removes a tag (the image itself only when it was the last reference). Ok(false):
    /// there was no such tag.
    pub async fn remove_image(&self, reference: &str) -> anyhow::Result<bool> {
        let opts = RemoveImageOptionsBuilder::default().build();
        match self.docker.remove_image(reference, Some(opts), None).await {
            Ok(_) => Ok(true),
            Err(e) if not_found(&e) => Ok(false),
            Err(e) => Err(describe(e)).with_context(|| format!("remove image {reference}")),
        }
    }

    /// Pushes `reference` (`registry/repo:tag`). Progress lines go to `on_line`. Returns
    /// the manifest digest the daemon reported (`<tag>: digest: sha256:… size: N`).
    pub async fn push_image(
        &self,
        reference: &str,
        creds: Option<&Credentials>,
        mut on_line: impl FnMut(String),
    ) -> anyhow::Result<Option<String>> {
        let (repo, tag) = split_reference(reference);
        let opts = PushImageOptionsBuilder::default().tag(tag).build();
        let creds = creds.map(|c| DockerCredentials {
            username: Some(c.username.clone()),
            password: Some(c.password.clone()),
            serveraddress: Some(c.server.clone()),
            ..Default::default()
        });
        let mut stream = self.docker.push_image(repo, Some(opts), creds);
        let mut digest = None;
        while let Some(item) = stream.next().await {
            let info = item
                .map_err(describe)
                .with_context(|| format!("push {reference}"))?;
            if let Some(e) = info.error_detail {
                bail!("push {reference}: {}", e.message.unwrap_or_default());
            }
            let Some(status) = info.status else { continue };
            if let Some(d) = status
                .split_whitespace()
                .skip_while(|w| *w != "digest:")
                .nth(1)
            {
                digest = Some(d.to_owned());
            }
            // Per-layer byte counts are noise in a log; keep the state changes.
            if info.progress_detail.is_none_or(|p| p.total.is_none()) {
                on_line(status);
            }
        }
        Ok(digest)
    }
}
