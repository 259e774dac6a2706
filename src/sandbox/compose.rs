//! `ferry sandbox up --stack compose`: the seed's compose stack itself. nginx, pgbouncer-fhir,
//! postgres-fhir and postgres-audit are containers of the base image (base.rs) on the seed's
//! networks (frontend, backend-fhir, backend-audit), next to the `hapi` stand-in replicas; the
//! replicas reach pgBouncer by its service name. Only the registry stays a host process:
//! the Docker engine pushes and pulls `127.0.0.1:<port>/…` from the host's network namespace,
//! where a loopback registry is trusted without TLS (a containerised one would need its port
//! published anyway, so it would add a container and change nothing the playbooks see).
//!
//! Invariants: as for the host stack, `sandbox.json` is saved before anything starts, so
//! `down` can clean up a failed `up`; every container, network and volume carries
//! `ferry.sandbox=<id>` and `down` (`docker-compose down -v`) removes them with the images.

use std::path::Path;

use anyhow::Context;

use super::compose_files::{self, DbSecrets, Ports};
use super::files::{self, Layout};
use super::{State, registry, stack};
use crate::infra::docker::{self, Docker};
use crate::report::views::sandbox::Component;

/// The services other than `hapi`, with what each is for (for `status`).
const SERVICES: &[(&str, &str)] = &[
    ("nginx", "frontend"),
    ("pgbouncer-fhir", "admin console"),
    ("postgres-fhir", "fhirdb"),
    ("postgres-audit", "auditdb"),
];

/// The services `up` starts first, in the background: the databases' first start (initdb
/// and the init scripts) is most of `up`'s time, and needs neither the registry nor the
/// hapi image. None of them waits for another (pgbouncer-fhir connects to postgres-fhir on
/// demand), so this `docker-compose up` returns once they are started; the one for the
/// replicas then waits for postgres-fhir and pgbouncer-fhir to be healthy.
const FIRST: &[&str] = &["postgres-fhir", "postgres-audit", "pgbouncer-fhir", "nginx"];

/// Everything after the state and the secrets are recorded: files root, then at once the
/// databases (`docker-compose up` of [`FIRST`], in the background) and the registry with the
/// hapi image built and pushed to it; then the hapi replicas. `secrets` are those of
/// secrets.env, in its order.
pub async fn start_new(
    st: &mut State,
    standin: &Path,
    secrets: &[(&str, String)],
    resources: u64,
) -> anyhow::Result<()> {
    let t0 = std::time::Instant::now();
    let base = super::base::ensure(&st.dir).context("the base image")?;
    st.base_image = Some(base.clone());
    timing(t0, "base image");
    let caches = compose_files::cache_volumes(&super::base::id(&base)?, resources);
    for (db, name) in ["fhir", "audit"].iter().zip(&caches) {
        cache_volume(st, db, name)?;
    }
    write_files(st, standin, secrets, resources, &caches)?;
    timing(t0, "files");
    let first = stack::compose_spawn(st, &[&["up", "-d"][..], FIRST].concat())?;
    st.registry_pid = registry::start(
        &st.dir.join("registry"),
        st.registry_port,
        super::REGISTRY_USER,
        &secrets[5].1,
    )
    .context("docker-registry")?;
    st.save()?;
    timing(t0, "registry");
    let built = stack::build_hapi_image(st, &secrets[5].1).await;
    timing(t0, "hapi image built and pushed");
    // Waited for even when the build failed, so no compose process outlives `up`.
    let first = first.wait().await;
    timing(t0, "databases, pgbouncer and nginx up");
    built?;
    first?;
    stack::compose_up(st).await?;
    timing(t0, "hapi replicas healthy");
    Ok(())
}

/// `FERRY_SANDBOX_TIMING=1`: each stage's time since `up` began, on stderr.
fn timing(t0: std::time::Instant, what: &str) {
    if std::env::var_os("FERRY_SANDBOX_TIMING").is_some() {
        #[allow(clippy::print_stderr)]
        {
            eprintln!("sandbox up: {:>5.1}s {what}", t0.elapsed().as_secs_f64());
        }
    }
}

/// The data cache volume `name` of database `db` (postgres-entrypoint.sh fills it on its
/// first use). Made with the sandbox's extra labels (tests': `ferry.test=1`) but not its
/// `ferry.sandbox`, so `down` leaves it for the next sandbox; `docker volume create` of an
/// existing volume is a no-op, so concurrent `up`s agree on one.
fn cache_volume(st: &State, db: &str, name: &str) -> anyhow::Result<()> {
    let mut c = std::process::Command::new("docker");
    c.args(["volume", "create", "--label"])
        .arg(format!("{}={db}", super::CACHE_LABEL));
    for (k, v) in &st.labels {
        c.arg("--label").arg(format!("{k}={v}"));
    }
    c.arg(name);
    super::proc::run(c, "docker volume create").map(|_| ())
}

fn write_files(
    st: &State,
    standin: &Path,
    secrets: &[(&str, String)],
    resources: u64,
    caches: &[String; 2],
) -> anyhow::Result<()> {
    let layout = Layout {
        project: &st.project,
        image: &st.image,
        lb_image: "",
        http_port: st.http_port,
        sandbox_id: &st.id,
        labels: &st.labels,
        bouncer_port: st.bouncer_port,
        host_address: std::net::Ipv4Addr::LOCALHOST,
    };
    let ports = Ports {
        http: st.http_port,
        pg: st.pg_port,
        audit: st.audit_port,
        bouncer: st.bouncer_port,
    };
    let root = st.dir.join("files");
    compose_files::write(
        &root,
        &DbSecrets {
            superuser: &secrets[0].1,
            hapi: &secrets[1].1,
            audit: &secrets[2].1,
            bouncer_admin: &secrets[3].1,
        },
        resources,
    )?;
    files::write(
        &root,
        &layout,
        stack::DOCKERFILE,
        standin,
        &secrets[1].1,
        &compose_files::compose_file(&layout, &ports, caches),
        &compose_files::env_extra(st.base_image.as_deref().unwrap_or_default()),
    )
    .context("files root")?;
    std::fs::write(
        st.dir.join("target.toml"),
        files::target_toml(&files::TargetSpec {
            project: &st.project,
            registry_port: st.registry_port,
            http_port: st.http_port,
            pg_port: st.pg_port,
            audit_port: st.audit_port,
            bouncer_port: st.bouncer_port,
            compose: true,
        }),
    )?;
    Ok(())
}

/// Each non-hapi service as a status line: up when its one container is healthy.
pub async fn components(st: &State) -> Vec<Component> {
    let engine = Docker::connect(&docker::host(None)).await.ok();
    let mut out = vec![];
    for (svc, what) in SERVICES {
        let list = match &engine {
            Some(e) => e.replicas(&st.project, svc).await.unwrap_or_default(),
            None => vec![],
        };
        let port = match *svc {
            "nginx" => st.http_port,
            "pgbouncer-fhir" => st.bouncer_port,
            "postgres-fhir" => st.pg_port,
            _ => st.audit_port,
        };
        let up = !list.is_empty()
            && list
                .iter()
                .all(|r| r.status.contains("(healthy)") && !r.status.contains("unhealthy"));
        let seen: Vec<String> = list
            .iter()
            .map(|r| format!("{} {}", r.name, r.status))
            .collect();
        out.push(Component {
            name: svc,
            up,
            detail: format!(
                "127.0.0.1:{port} ({what}): {}",
                if seen.is_empty() {
                    "no container".to_owned()
                } else {
                    seen.join(", ")
                }
            ),
        });
    }
    out
}
