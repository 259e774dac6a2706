//! `ferry sandbox up|down|status`: a disposable local staging shaped like the national
//! deployment, for rehearsing playbooks (and for CI and the README's first command). By
//! default (`--stack compose`, compose.rs) it is the seed's compose stack: nginx,
//! pgbouncer-fhir, postgres-fhir (`fhirdb` with HAPI's schema and generated data) and
//! postgres-audit (`auditdb` with the partitioned audit schema) as containers next to N HAPI
//! stand-in replicas, plus Debian's docker-registry (htpasswd, deletes) on the host and a
//! files root like the production checkout. `--stack host` runs PostgreSQL 15 (both
//! databases in one cluster) and pgBouncer as host processes instead, with a round-robin
//! proxy on a loopback port in front of the replicas.
//!
//! Invariants: everything it starts is recorded in `<dir>/sandbox.json` (PIDs, ports, image
//! tags, the compose project), every container and image carries `ferry.sandbox=<id>`, and
//! `down` removes exactly that. `up` on a running sandbox only restarts what is not running.

mod base;
mod compose;
mod compose_files;
mod deps;
mod files;
mod image_cache;
mod net;
mod pg;
mod proc;
mod registry;
mod stack;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::report::views::sandbox::{Component, SandboxDown, SandboxStatus, SandboxUp};

/// Where the databases, pgBouncer and the front door run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Stack {
    /// PostgreSQL and pgBouncer as host processes, the stand-in's proxy in front.
    Host,
    /// The seed's compose stack: nginx, pgbouncer-fhir, postgres-fhir, postgres-audit.
    #[default]
    Compose,
}

impl Stack {
    /// The stack of a `sandbox.json` written before it recorded one: only the host stack
    /// existed then (so not `Default`, which is what `sandbox up` builds now).
    fn unrecorded() -> Stack {
        Stack::Host
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub id: String,
    pub dir: PathBuf,
    pub project: String,
    pub replicas: u32,
    pub pg_port: u16,
    pub bouncer_port: u16,
    pub bouncer_pid: u32,
    pub registry_port: u16,
    pub registry_pid: u32,
    pub http_port: u16,
    pub image: String,
    pub lb_image: String,
    #[serde(default)]
    pub labels: Vec<(String, String)>,
    /// Where PostgreSQL and pgBouncer keep their files when `dir` is out of the `postgres`
    /// user's reach (e.g. under a 0700 home): a world-searchable temp dir, removed by `down`.
    #[serde(default)]
    pub service_dir: Option<PathBuf>,
    #[serde(default = "Stack::unrecorded")]
    pub stack: Stack,
    /// auditdb's published port (compose; the host stack has one cluster on `pg_port`).
    #[serde(default)]
    pub audit_port: u16,
    /// The base image of the compose stack's nginx/pgBouncer/PostgreSQL (base.rs).
    #[serde(default)]
    pub base_image: Option<String>,
}

pub struct UpOptions {
    pub dir: PathBuf,
    pub replicas: u32,
    /// The static stand-in binary (scripts/build-standin prints its path).
    pub standin: Option<PathBuf>,
    /// Extra labels for every container, network and image (tests add `ferry.test=1`).
    pub labels: Vec<(String, String)>,
    /// Generated HAPI resources in fhirdb (fixtures/hapi-datagen.sql).
    pub resources: u64,
    pub stack: Stack,
}

const STATE: &str = "sandbox.json";
pub const REGISTRY_USER: &str = "sandbox";
/// The label of what sandboxes share and `down` leaves: the data cache volumes (value `fhir`
/// or `audit`: compose.rs) and the HAPI overlay image (`hapi`: image_cache.rs).
pub const CACHE_LABEL: &str = "ferry.sandbox-cache";

impl State {
    fn load(dir: &Path) -> Option<State> {
        serde_json::from_slice(&std::fs::read(dir.join(STATE)).ok()?).ok()
    }

    fn save(&self) -> anyhow::Result<()> {
        crate::infra::dotenv::write_atomic(
            &self.dir.join(STATE),
            &serde_json::to_vec_pretty(self)?,
        )?;
        Ok(())
    }

    /// The directory holding `pg/` and `pgbouncer/`.
    pub fn services(&self) -> PathBuf {
        self.service_dir.clone().unwrap_or_else(|| self.dir.clone())
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/fhir", self.http_port)
    }
}

/// Whether the `postgres` user can search `dir` (every parent included).
fn postgres_reaches(dir: &Path) -> bool {
    let mut c = std::process::Command::new(deps::bin("runuser"));
    c.args(["-u", "postgres", "--", "test", "-x"]).arg(dir);
    proc::run(c, "access check").is_ok()
}

fn standin_binary(opt: Option<&Path>) -> anyhow::Result<PathBuf> {
    let candidates: Vec<PathBuf> = match (opt, std::env::var_os("FERRY_STANDIN")) {
        (Some(p), _) => vec![p.to_path_buf()],
        (None, Some(p)) => vec![p.into()],
        (None, None) => {
            let base = std::env::var_os("CARGO_TARGET_DIR")
                .map_or_else(|| PathBuf::from("target"), PathBuf::from);
            vec![base.join("x86_64-unknown-linux-gnu/standin/hapi-standin")]
        }
    };
    candidates.into_iter().find(|p| p.is_file()).context(
        "the HAPI stand-in binary is not built: run scripts/build-standin (or pass --standin PATH / set FERRY_STANDIN)",
    )
}

/// Starts (or restarts the missing parts of) the sandbox; answers with its status.
pub async fn up(opts: &UpOptions) -> anyhow::Result<SandboxUp> {
    let dir = std::path::absolute(&opts.dir)?;
    let recorded = State::load(&dir);
    // A recorded sandbox keeps its stack, whatever --stack says.
    let stack = recorded.as_ref().map_or(opts.stack, |s| s.stack);
    deps::check(proc::is_root(), stack)?;
    if let Some(state) = recorded {
        ensure_running(&state).await?;
        let status = status(&dir).await?;
        return Ok(SandboxUp {
            already: true,
            status,
        });
    }
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        bail!(
            "{} exists and is not a sandbox (no {STATE}): choose another --dir",
            dir.display()
        );
    }
    let standin = standin_binary(opts.standin.as_deref())?;
    std::fs::create_dir_all(&dir)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    let id = proc::password()[4..14].to_owned();
    let project = format!("ferrysbx{}", &id[..8]);
    let secrets = [
        ("SANDBOX_PG_SUPERUSER_PASSWORD", proc::password()),
        ("SANDBOX_FHIR_DB_PASSWORD", proc::password()),
        ("SANDBOX_AUDIT_DB_PASSWORD", proc::password()),
        ("SANDBOX_PGBOUNCER_PASSWORD", proc::password()),
        ("SANDBOX_REGISTRY_USER", REGISTRY_USER.to_owned()),
        ("SANDBOX_REGISTRY_PASSWORD", proc::password()),
    ];
    let body: String = secrets.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    std::fs::write(dir.join("secrets.env"), body)?;
    std::fs::set_permissions(
        dir.join("secrets.env"),
        std::fs::Permissions::from_mode(0o600),
    )?;
    let (pg_port, bouncer_port, registry_port, http_port, audit_port) = (
        proc::free_port()?,
        proc::free_port()?,
        proc::free_port()?,
        proc::free_port()?,
        proc::free_port()?,
    );
    let mut state = State {
        id: id.clone(),
        dir: dir.clone(),
        project: project.clone(),
        replicas: opts.replicas,
        pg_port,
        bouncer_port,
        bouncer_pid: 0,
        registry_port,
        registry_pid: 0,
        http_port,
        image: format!("127.0.0.1:{registry_port}/bd-fhir-hapi:1.0.0"),
        lb_image: format!("ferry-sandbox-lb:{id}"),
        labels: opts.labels.clone(),
        service_dir: None,
        stack: opts.stack,
        audit_port: if opts.stack == Stack::Compose {
            audit_port
        } else {
            pg_port
        },
        base_image: None,
    };
    if opts.stack == Stack::Compose {
        state.lb_image = String::new();
        // Recorded first, so that `down` can clean up after a failed `up`.
        state.save()?;
        let secrets: Vec<(&str, String)> = secrets.to_vec();
        compose::start_new(&mut state, &standin, &secrets, opts.resources).await?;
        let status = status(&dir).await?;
        return Ok(SandboxUp {
            already: false,
            status,
        });
    }
    if proc::is_root() && !postgres_reaches(&dir) {
        // PostgreSQL and pgBouncer run as `postgres`, which cannot reach `dir`: keep their
        // files in a world-searchable temp dir instead (recorded, and removed by `down`).
        let d = std::env::temp_dir().join(format!("ferry-sandbox-{id}"));
        std::fs::create_dir_all(&d)?;
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))?;
        state.service_dir = Some(d);
    }
    // Recorded first, so that `down` can clean up after a failed `up`.
    state.save()?;
    let s = pg::Secrets {
        superuser: &secrets[0].1,
        hapi: &secrets[1].1,
        audit: &secrets[2].1,
        bouncer_admin: &secrets[3].1,
    };
    let svc = state.services();
    let host_address = net::bridge_address().await?;
    pg::init(&svc.join("pg"), pg_port, &s, opts.resources).context("PostgreSQL")?;
    state.bouncer_pid = pg::start_bouncer(
        &svc.join("pgbouncer"),
        pg_port,
        bouncer_port,
        host_address,
        &s,
    )
    .context("pgBouncer")?;
    state.save()?;
    state.registry_pid = registry::start(
        &dir.join("registry"),
        registry_port,
        REGISTRY_USER,
        &secrets[5].1,
    )
    .context("docker-registry")?;
    state.save()?;
    let layout = files::Layout {
        project: &project,
        image: &state.image,
        lb_image: &state.lb_image,
        http_port,
        sandbox_id: &id,
        labels: &state.labels,
        bouncer_port,
        host_address,
    };
    files::write(
        &dir.join("files"),
        &layout,
        stack::DOCKERFILE,
        &standin,
        &secrets[1].1,
        &files::compose_file(&layout),
        "",
    )
    .context("files root")?;
    std::fs::write(
        dir.join("target.toml"),
        files::target_toml(&files::TargetSpec {
            project: &project,
            registry_port,
            http_port,
            pg_port,
            audit_port: pg_port,
            bouncer_port,
            compose: false,
        }),
    )?;
    stack::build_and_start(&state, &standin, &secrets[5].1).await?;
    let status = status(&dir).await?;
    Ok(SandboxUp {
        already: false,
        status,
    })
}

/// Restarts whatever of a recorded sandbox is not running (a reboot, a killed process).
async fn ensure_running(st: &State) -> anyhow::Result<()> {
    if st.stack == Stack::Compose {
        let mut st = st.clone();
        restart_registry(&mut st)?;
        st.save()?;
        return stack::compose_up(&st).await;
    }
    let pgdir = st.services().join("pg");
    if !pg::running(&pgdir) {
        pg::start(&pgdir, st.pg_port)?;
    }
    let mut st = st.clone();
    if !proc::alive(st.bouncer_pid) {
        let mut c = proc::as_service_user(&deps::bin("pgbouncer"));
        c.arg("-d")
            .arg(st.services().join("pgbouncer/pgbouncer.ini"));
        proc::run(c, "pgbouncer")?;
        proc::wait_port(st.bouncer_port, Duration::from_secs(10))?;
        st.bouncer_pid = proc::read_pidfile(
            &st.services().join("pgbouncer/pgbouncer.pid"),
            Duration::from_secs(10),
        )?;
    }
    restart_registry(&mut st)?;
    st.save()?;
    stack::compose_up(&st).await
}

fn restart_registry(st: &mut State) -> anyhow::Result<()> {
    if !proc::alive(st.registry_pid) {
        let mut c = std::process::Command::new(deps::bin("docker-registry"));
        c.arg("serve").arg(st.dir.join("registry/config.yml"));
        st.registry_pid = proc::spawn_daemon(c, &st.dir.join("registry/registry.log"))?;
        proc::wait_port(st.registry_port, Duration::from_secs(15))?;
    }
    Ok(())
}

/// Removes everything the sandbox made: containers, networks, images, processes, files.
pub async fn down(dir: &Path) -> anyhow::Result<SandboxDown> {
    let dir = std::path::absolute(dir)?;
    let Some(st) = State::load(&dir) else {
        bail!("no sandbox in {} (no {STATE})", dir.display());
    };
    let mut done = vec![];
    done.extend(stack::remove(&st).await?);
    if st.registry_pid != 0 && proc::alive(st.registry_pid) {
        proc::stop_pid(st.registry_pid, Duration::from_secs(5));
        done.push(format!("stopped docker-registry (pid {})", st.registry_pid));
    }
    if st.bouncer_pid != 0 && proc::alive(st.bouncer_pid) {
        proc::stop_pid(st.bouncer_pid, Duration::from_secs(5));
        done.push(format!("stopped pgbouncer (pid {})", st.bouncer_pid));
    }
    if st.stack == Stack::Host {
        pg::stop(&st.services().join("pg"))?;
        done.push("stopped PostgreSQL".into());
    }
    if let Some(svc) = &st.service_dir {
        std::fs::remove_dir_all(svc).with_context(|| format!("removing {}", svc.display()))?;
        done.push(format!("removed {}", svc.display()));
    }
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    done.push(format!("removed {}", dir.display()));
    Ok(SandboxDown {
        dir: dir.display().to_string(),
        done,
    })
}

/// Every component and whether it is up.
pub async fn status(dir: &Path) -> anyhow::Result<SandboxStatus> {
    let dir = std::path::absolute(dir)?;
    let Some(st) = State::load(&dir) else {
        return Ok(SandboxStatus::missing(dir.display().to_string()));
    };
    let c = |name, up, detail| Component { name, up, detail };
    let (replicas, version) = stack::observe(&st).await;
    let healthy = replicas
        .iter()
        .filter(|r| r.contains("healthy") && !r.contains("unhealthy"))
        .count();
    if st.stack == Stack::Compose {
        let mut components = compose::components(&st).await;
        components.extend(hapi_components(&st, &replicas, healthy, version));
        components.push(c(
            "registry",
            proc::alive(st.registry_pid),
            format!("127.0.0.1:{} pid {}", st.registry_port, st.registry_pid),
        ));
        return Ok(SandboxStatus::new(
            st.id.clone(),
            dir.display().to_string(),
            components,
            dir.join("target.toml").display().to_string(),
        ));
    }
    let mut components = vec![
        c(
            "postgresql",
            pg::running(&st.services().join("pg")),
            format!("127.0.0.1:{} (fhirdb, auditdb)", st.pg_port),
        ),
        c(
            "pgbouncer",
            proc::alive(st.bouncer_pid),
            format!("127.0.0.1:{} pid {}", st.bouncer_port, st.bouncer_pid),
        ),
        c(
            "registry",
            proc::alive(st.registry_pid),
            format!("127.0.0.1:{} pid {}", st.registry_port, st.registry_pid),
        ),
    ];
    components.extend(hapi_components(&st, &replicas, healthy, version));
    Ok(SandboxStatus::new(
        st.id.clone(),
        dir.display().to_string(),
        components,
        dir.join("target.toml").display().to_string(),
    ))
}

fn hapi_components(
    st: &State,
    replicas: &[String],
    healthy: usize,
    version: Option<String>,
) -> [Component; 2] {
    [
        Component {
            name: "hapi",
            up: healthy >= st.replicas as usize,
            detail: format!("{healthy}/{} healthy: {}", st.replicas, replicas.join(", ")),
        },
        Component {
            name: "fhir",
            up: version.is_some(),
            detail: format!(
                "{} software.version {}",
                st.base_url(),
                version.as_deref().unwrap_or("unreachable")
            ),
        },
    ]
}
