//! Container lifecycle for replacing replicas: inspect (config, networks, health, published
//! ports), create, start, stop, remove, rename, connect to a network; list images. Thin: the
//! policy of what a replacement copies lives in `steps/replicas/swap.rs`.

use std::collections::HashMap;

use anyhow::Context;
use bollard::models::{
    ContainerConfig, ContainerCreateBody, EndpointSettings, HostConfig, ImageConfig, MountPoint,
    NetworkConnectRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListImagesOptionsBuilder, RemoveContainerOptionsBuilder,
    RenameContainerOptionsBuilder, StopContainerOptionsBuilder,
};

use super::{Docker, ImageInfo, describe, not_found};

#[derive(Debug, Clone, Default)]
pub struct ContainerInfo {
    pub id: String,
    /// Without the leading `/`.
    pub name: String,
    pub image_id: String,
    pub config: ContainerConfig,
    pub host_config: HostConfig,
    pub networks: HashMap<String, EndpointSettings>,
    pub running: bool,
    /// Docker's health status (`starting`, `healthy`, `unhealthy`); None without a healthcheck.
    pub health: Option<String>,
    /// The last health probe's output, for error messages.
    pub health_log: Option<String>,
    pub exit_code: Option<i64>,
    /// Host ports published on 127.0.0.1 (or any address), by container port ("8080/tcp").
    pub host_ports: HashMap<String, u16>,
    /// Its mounts (a data volume's name, for the replacement to bind it again).
    pub mounts: Vec<MountPoint>,
}

impl Docker {
    pub async fn inspect_container(&self, name: &str) -> anyhow::Result<Option<ContainerInfo>> {
        let c = match self.docker.inspect_container(name, None).await {
            Ok(c) => c,
            Err(e) if not_found(&e) => return Ok(None),
            Err(e) => return Err(describe(e)).with_context(|| format!("inspect container {name}")),
        };
        let state = c.state.unwrap_or_default();
        let health = state.health.as_ref();
        let net = c.network_settings.unwrap_or_default();
        let mut host_ports = HashMap::new();
        for (port, bindings) in net.ports.unwrap_or_default() {
            if let Some(p) = bindings
                .into_iter()
                .flatten()
                .find_map(|b| b.host_port.and_then(|p| p.parse::<u16>().ok()))
            {
                host_ports.insert(port, p);
            }
        }
        Ok(Some(ContainerInfo {
            id: c.id.unwrap_or_default(),
            name: c
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_owned(),
            image_id: c.image.unwrap_or_default(),
            config: c.config.unwrap_or_default(),
            host_config: c.host_config.unwrap_or_default(),
            networks: net.networks.unwrap_or_default(),
            running: state.running.unwrap_or(false),
            health: health
                .and_then(|h| h.status)
                .map(|s| s.to_string())
                .filter(|s| !s.is_empty() && s != "none"),
            health_log: health
                .and_then(|h| h.log.as_ref())
                .and_then(|l| l.last())
                .and_then(|r| r.output.clone())
                .map(|o| o.trim().to_owned()),
            exit_code: state.exit_code,
            host_ports,
            mounts: c.mounts.unwrap_or_default(),
        }))
    }

    /// (id, running, when it was last started: RFC 3339 as Docker says it, kept through a
    /// stop and changed by every start) of a container; None when there is none.
    pub async fn run_state(&self, name: &str) -> anyhow::Result<Option<(String, bool, String)>> {
        match self.docker.inspect_container(name, None).await {
            Ok(c) => {
                let state = c.state.unwrap_or_default();
                Ok(Some((
                    c.id.unwrap_or_default(),
                    state.running.unwrap_or(false),
                    state.started_at.unwrap_or_default(),
                )))
            }
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(describe(e)).with_context(|| format!("inspect container {name}")),
        }
    }

    /// The image's own config (ENV, CMD, labels, healthcheck): what a container inherits.
    pub async fn image_config(&self, reference: &str) -> anyhow::Result<Option<ImageConfig>> {
        match self.docker.inspect_image(reference).await {
            Ok(i) => Ok(Some(i.config.unwrap_or_default())),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(describe(e)).with_context(|| format!("inspect image {reference}")),
        }
    }

    pub async fn create_container(
        &self,
        name: &str,
        body: ContainerCreateBody,
    ) -> anyhow::Result<String> {
        let opts = CreateContainerOptionsBuilder::default().name(name).build();
        let r = self
            .docker
            .create_container(Some(opts), body)
            .await
            .map_err(describe)
            .with_context(|| format!("create container {name}"))?;
        Ok(r.id)
    }

    pub async fn connect_network(
        &self,
        network: &str,
        container: &str,
        endpoint: EndpointSettings,
    ) -> anyhow::Result<()> {
        let req = NetworkConnectRequest {
            container: container.to_owned(),
            endpoint_config: Some(endpoint),
        };
        self.docker
            .connect_network(network, req)
            .await
            .map_err(describe)
            .with_context(|| format!("connect {container} to {network}"))
    }

    pub async fn start_container(&self, name: &str) -> anyhow::Result<()> {
        self.docker
            .start_container(name, None)
            .await
            .map_err(describe)
            .with_context(|| format!("start container {name}"))
    }

    /// Graceful stop (SIGTERM, then SIGKILL after `timeout_s`); a stopped one is fine.
    pub async fn stop_container(&self, name: &str, timeout_s: i32) -> anyhow::Result<()> {
        let opts = StopContainerOptionsBuilder::default().t(timeout_s).build();
        match self.docker.stop_container(name, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(describe(e)).with_context(|| format!("stop container {name}")),
        }
    }

    /// Removes (forcing a running one); false when it was already gone.
    pub async fn remove_container(&self, name: &str) -> anyhow::Result<bool> {
        let opts = RemoveContainerOptionsBuilder::default().force(true).build();
        match self.docker.remove_container(name, Some(opts)).await {
            Ok(()) => Ok(true),
            Err(e) if not_found(&e) => Ok(false),
            Err(e) => Err(describe(e)).with_context(|| format!("remove container {name}")),
        }
    }

    pub async fn rename_container(&self, name: &str, new_name: &str) -> anyhow::Result<()> {
        let opts = RenameContainerOptionsBuilder::default()
            .name(new_name)
            .build();
        self.docker
            .rename_container(name, opts)
            .await
            .map_err(describe)
            .with_context(|| format!("rename {name} to {new_name}"))
    }

    pub async fn list_images(&self) -> anyhow::Result<Vec<ImageInfo>> {
        let opts = ListImagesOptionsBuilder::default().all(false).build();
        let list = self
            .docker
            .list_images(Some(opts))
            .await
            .map_err(describe)
            .context("list images")?;
        Ok(list
            .into_iter()
            .map(|i| ImageInfo {
                id: i.id,
                labels: i.labels,
                repo_tags: i
                    .repo_tags
                    .into_iter()
                    .filter(|t| t != "<none>:<none>")
                    .collect(),
                repo_digests: i.repo_digests,
            })
            .collect())
    }
}
