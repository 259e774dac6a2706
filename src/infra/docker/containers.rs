//! A docker-compose service's replicas, found the way compose finds them: by the labels
//! `com.docker.compose.project`, `.service` and `.oneoff=False` (one-off `run` containers
//! are not replicas), ordered by `com.docker.compose.container-number`.

use std::collections::HashMap;

use anyhow::Context;
use bollard::query_parameters::ListContainersOptionsBuilder;

use super::{Docker, describe};

pub const PROJECT: &str = "com.docker.compose.project";
pub const SERVICE: &str = "com.docker.compose.service";
pub const NUMBER: &str = "com.docker.compose.container-number";
pub const ONEOFF: &str = "com.docker.compose.oneoff";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    pub id: String,
    /// Without the leading `/`.
    pub name: String,
    /// `com.docker.compose.container-number`; 0 when the label is missing or not a number.
    pub number: u32,
    /// The image reference the container was created from.
    pub image: String,
    pub image_id: String,
    /// `running`, `exited`, …
    pub state: String,
    /// `Up 2 minutes (healthy)`, …
    pub status: String,
    pub labels: HashMap<String, String>,
}

impl Docker {
    /// Every container (running or not) of `project`/`service`, by container number.
    pub async fn replicas(&self, project: &str, service: &str) -> anyhow::Result<Vec<Replica>> {
        let filters = HashMap::from([(
            "label",
            vec![
                format!("{PROJECT}={project}"),
                format!("{SERVICE}={service}"),
                format!("{ONEOFF}=False"),
            ],
        )]);
        let opts = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(describe)
            .with_context(|| format!("list containers of {project}/{service}"))?;
        let mut out: Vec<Replica> = list
            .into_iter()
            .map(|c| {
                let labels = c.labels.unwrap_or_default();
                Replica {
                    id: c.id.unwrap_or_default(),
                    name: c
                        .names
                        .and_then(|n| n.into_iter().next())
                        .unwrap_or_default()
                        .trim_start_matches('/')
                        .to_owned(),
                    number: labels.get(NUMBER).and_then(|n| n.parse().ok()).unwrap_or(0),
                    image: c.image.unwrap_or_default(),
                    image_id: c.image_id.unwrap_or_default(),
                    state: c.state.map(|s| s.to_string()).unwrap_or_default(),
                    status: c.status.unwrap_or_default(),
                    labels,
                }
            })
            .collect();
        out.sort_by(|a, b| a.number.cmp(&b.number).then_with(|| a.name.cmp(&b.name)));
        Ok(out)
    }
}
