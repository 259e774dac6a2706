//! Leaving a network: the other half of `connect_network`, for moving a replica in and out
//! of its service's DNS rotation (Docker cannot change an endpoint's aliases in place).

use anyhow::Context;
use bollard::models::NetworkDisconnectRequest;

use super::{Docker, describe};

impl Docker {
    pub async fn disconnect_network(&self, network: &str, container: &str) -> anyhow::Result<()> {
        let req = NetworkDisconnectRequest {
            container: container.to_owned(),
            force: Some(false),
        };
        self.docker
            .disconnect_network(network, req)
            .await
            .map_err(describe)
            .with_context(|| format!("disconnect {container} from {network}"))
    }
}
