//! The Docker engine (`[docker] host`: socket reachable, engine version) and the compose
//! service (`compose_project`/`service`: how many replicas, each running and healthy).
//! Image steps, scale and rolling_redeploy all go through these two.

use std::time::Duration;

use crate::infra::docker::{self as infra, Docker, Replica};
use crate::report::views::doctor::Finding;
use crate::target::Target;

use super::within;

/// The `docker` line, then the `compose` line.
pub async fn probe(target: &Target, timeout: Duration) -> Vec<Finding> {
    let Some(d) = &target.docker else {
        return vec![Finding::skipped(
            "docker",
            "no [docker] in the target: image_build, image_push, scale and rolling_redeploy steps cannot run",
        )];
    };
    let host = infra::host(d.host.as_deref());
    let what = format!("the Docker engine at {host}");
    let compose = async {
        match (&d.compose_project, &d.service) {
            (Some(project), Some(service)) => {
                within("compose", timeout, &what, compose(&host, project, service)).await
            }
            _ => Finding::skipped(
                "compose",
                "[docker] names no compose_project and service: scale and rolling_redeploy steps cannot run",
            ),
        }
    };
    let (engine, compose) = tokio::join!(within("docker", timeout, &what, engine(&host)), compose);
    vec![engine, compose]
}

/// Why the engine cannot be reached, and the fix that goes with that reason.
fn unreachable(component: &str, host: &str, e: &anyhow::Error) -> Finding {
    let why = format!("{e:#}");
    let fix = if why.contains("only unix://") {
        "set [docker] host to the engine's Unix socket, e.g. host = \"unix:///var/run/docker.sock\""
            .to_owned()
    } else if why.contains("no such socket") {
        format!(
            "no engine listens at {host}: fix [docker] host in the target (or DOCKER_HOST), or start the engine (`systemctl start docker`)"
        )
    } else if why.to_ascii_lowercase().contains("permission denied") {
        format!(
            "this user may not use {host}: add it to the `docker` group (`usermod -aG docker $USER`, then log in again) or run ferry as a user who can"
        )
    } else {
        format!("check the engine behind {host} is running (`docker info`) and [docker] host")
    };
    Finding::problem(component, why, fix)
}

async fn engine(host: &str) -> Finding {
    let docker = match Docker::connect(host).await {
        Ok(d) => d,
        Err(e) => return unreachable("docker", host, &e),
    };
    match docker.version().await {
        Ok(v) => Finding::ok(
            "docker",
            format!(
                "{host}: Docker Engine {} (API {})",
                v.version, v.api_version
            ),
        ),
        Err(e) => unreachable("docker", host, &e),
    }
}

async fn compose(host: &str, project: &str, service: &str) -> Finding {
    let docker = match Docker::connect(host).await {
        Ok(d) => d,
        Err(e) => {
            let mut f = unreachable("compose", host, &e);
            f.detail = format!("cannot list {project}/{service}: {}", f.detail);
            return f;
        }
    };
    match docker.replicas(project, service).await {
        Ok(r) => judge(project, service, &r),
        Err(e) => unreachable("compose", host, &e),
    }
}

/// `running, healthy` / `paused` / `exited (Exited (1) 3 minutes ago)` …
fn health(r: &Replica) -> Result<&'static str, String> {
    let s = r.status.to_ascii_lowercase();
    match r.state.as_str() {
        "running" if s.contains("unhealthy") => Err("running but unhealthy".into()),
        "running" if s.contains("health: starting") => Err("running, health check starting".into()),
        "running" if s.contains("healthy") => Ok("healthy"),
        "running" => Ok("running (no health check)"),
        other => Err(format!("{other} ({})", r.status)),
    }
}

/// What a replica in `state` needs, as a command.
fn remedy(r: &Replica) -> String {
    match r.state.as_str() {
        "paused" => format!("docker unpause {}", r.name),
        "running" => format!(
            "wait for its health check, or read why it fails: docker inspect --format '{{{{json .State.Health}}}}' {}",
            r.name
        ),
        _ => format!(
            "docker start {} (docker logs {} says why it stopped)",
            r.name, r.name
        ),
    }
}

fn judge(project: &str, service: &str, replicas: &[Replica]) -> Finding {
    if replicas.is_empty() {
        return Finding::problem(
            "compose",
            format!("no container of service `{service}` in compose project `{project}`"),
            format!(
                "check compose_project and service in the target (`docker ps --filter label=com.docker.compose.project={project}`), or start it: docker-compose -p {project} up -d {service}"
            ),
        );
    }
    let mut bad = vec![];
    let mut fixes = vec![];
    let mut healthy = 0;
    let mut unchecked = 0;
    for r in replicas {
        match health(r) {
            Ok("healthy") => healthy += 1,
            Ok(_) => unchecked += 1,
            Err(why) => {
                bad.push(format!("{} is {why}", r.name));
                fixes.push(remedy(r));
            }
        }
    }
    let n = replicas.len();
    if bad.is_empty() {
        Finding::ok(
            "compose",
            format!(
                "{project}/{service}: {n} replica(s) running, {healthy} healthy{}",
                if unchecked > 0 {
                    format!(", {unchecked} without a health check")
                } else {
                    String::new()
                }
            ),
        )
    } else {
        Finding::problem(
            "compose",
            format!(
                "{project}/{service}: {} of {n} replica(s) ready; {}",
                healthy + unchecked,
                bad.join("; ")
            ),
            fixes.join("; "),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(n: u32, state: &str, status: &str) -> Replica {
        Replica {
            id: format!("id{n}"),
            name: format!("p_hapi_{n}"),
            number: n,
            image: "img".into(),
            image_id: "sha256:1".into(),
            state: state.into(),
            status: status.into(),
            labels: Default::default(),
        }
    }

    #[test]
    fn every_replica_not_ready_is_named_with_its_command() {
        let f = judge(
            "p",
            "hapi",
            &[
                replica(1, "running", "Up 2 minutes (healthy)"),
                replica(2, "paused", "Up 2 minutes (Paused)"),
                replica(3, "exited", "Exited (137) 5 seconds ago"),
                replica(4, "running", "Up 1 second (health: starting)"),
                replica(5, "running", "Up 9 minutes (unhealthy)"),
                replica(6, "running", "Up 9 minutes"),
            ],
        );
        assert_eq!(f.status, crate::report::views::doctor::Health::Problem);
        assert!(
            f.detail.starts_with("p/hapi: 2 of 6 replica(s) ready"),
            "{}",
            f.detail
        );
        for s in [
            "p_hapi_2 is paused",
            "p_hapi_3 is exited (Exited (137)",
            "p_hapi_4 is running, health check starting",
            "p_hapi_5 is running but unhealthy",
        ] {
            assert!(f.detail.contains(s), "{s}: {}", f.detail);
        }
        let fix = f.fix.unwrap();
        assert!(fix.contains("docker unpause p_hapi_2"), "{fix}");
        assert!(fix.contains("docker start p_hapi_3"), "{fix}");
        assert!(fix.contains("{{json .State.Health}}' p_hapi_5"), "{fix}");
    }

    #[test]
    fn no_replica_is_a_problem_and_ready_ones_are_counted() {
        let none = judge("p", "hapi", &[]);
        assert!(none.fix.unwrap().contains("docker-compose -p p up -d hapi"));
        let ok = judge(
            "p",
            "hapi",
            &[
                replica(1, "running", "Up 2 minutes (healthy)"),
                replica(2, "running", "Up 2 minutes"),
            ],
        );
        assert_eq!(
            ok.detail,
            "p/hapi: 2 replica(s) running, 1 healthy, 1 without a health check"
        );
    }
}
