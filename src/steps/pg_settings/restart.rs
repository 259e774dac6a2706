//! A controlled restart of PostgreSQL behind pgBouncer, so that clients' queries wait
//! instead of failing: `PAUSE db` (pgBouncer lets in-flight transactions finish, closes its
//! server connections and holds every new query) → restart → wait until the server accepts
//! connections → `RESUME db`. Each stage has the same time limit. On any failure pgBouncer
//! is RESUMEd before the error is returned: ferry never leaves clients blocked behind a
//! pause it cannot finish (their queries then fail fast on a down server, which is visible,
//! rather than hang).
//!
//! How the server restarts comes from its `[postgres.NAME]` in the target: a shell command
//! (`restart_command`, e.g. `pg_ctl -D … -l … -w restart`) or a docker-compose service
//! (`restart_service`: its container is stopped and started). A command must give the
//! postmaster its own log (`-l`): ferry waits for the command's output to end.

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde::{Deserialize, Serialize};

use super::Bouncer;
use crate::infra::process::{self, Shell};
use crate::steps::StepCx;

/// The container a service restart stops, as it was right before the stop, and whether the
/// stop has returned. Docker keeps `started_at` through a stop and changes it on every start,
/// so a resumed run can tell "still stopped by this run" from anything that happened since.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stopping {
    pub container: String,
    pub started_at: String,
    pub stopped: bool,
}

/// Told of each stage of a service restart's stop (before it, after it): the caller journals
/// it, so that a run killed in between can be recovered (see [`start_own_stop`]).
pub type OnStop<'a> = &'a mut (dyn FnMut(&Stopping) -> anyhow::Result<()> + Send);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    Command(String),
    Service { project: String, service: String },
}

impl Method {
    /// The restart method the target gives `[postgres.NAME]`, if any.
    pub fn of(cx: &StepCx, name: &str) -> anyhow::Result<Option<Method>> {
        let t = cx.target()?;
        let pg = t.postgres(name).map_err(|e| anyhow!(e))?;
        Ok(match (&pg.restart_command, &pg.restart_service) {
            (Some(_), Some(_)) => {
                bail!("[postgres.{name}] has both restart_command and restart_service: keep one")
            }
            (Some(c), None) => Some(Method::Command(c.clone())),
            (None, Some(s)) => {
                let project = t
                    .docker
                    .as_ref()
                    .and_then(|d| d.compose_project.clone())
                    .with_context(|| {
                        format!("[postgres.{name}] restart_service needs [docker] compose_project")
                    })?;
                Some(Method::Service {
                    project,
                    service: s.clone(),
                })
            }
            (None, None) => None,
        })
    }

    pub fn describe(&self) -> String {
        match self {
            Method::Command(c) => format!("`{c}`"),
            Method::Service { project, service } => {
                format!("a restart of the container of {project}/{service}")
            }
        }
    }

    async fn run(&self, cx: &StepCx, limit: Duration, on_stop: OnStop<'_>) -> anyhow::Result<()> {
        match self {
            Method::Command(command) => {
                let shell = Shell {
                    command,
                    cwd: &cx.workdir,
                    env: vec![],
                    timeout: Some(limit),
                };
                let mut spawned = None;
                let exit = process::run(
                    &shell,
                    &mut |stream, line| cx.output(stream, line),
                    &mut |pid, ticks| {
                        spawned = Some(pid);
                        let _ = cx.store.child_started(&cx.step_id, pid, ticks);
                    },
                )
                .await;
                if let Some(pid) = spawned {
                    let _ = cx.store.child_exited(&cx.step_id, pid);
                }
                let exit = exit?;
                if !exit.success() {
                    bail!("the restart command failed ({})", exit.describe());
                }
                Ok(())
            }
            Method::Service { project, service } => {
                let docker = cx.docker().await?;
                let c = docker
                    .replicas(project, service)
                    .await?
                    .into_iter()
                    .next()
                    .with_context(|| format!("no container of {project}/{service}"))?;
                let (id, _, started_at) = docker
                    .run_state(&c.name)
                    .await?
                    .with_context(|| format!("{} is gone", c.name))?;
                let mut s = Stopping {
                    container: id,
                    started_at,
                    stopped: false,
                };
                on_stop(&s)?;
                let work = async {
                    // PostgreSQL's SIGTERM is a smart shutdown (it waits for sessions); the
                    // pause closed pgBouncer's, so only direct sessions can hold it.
                    docker.stop_container(&c.name, 30).await?;
                    s.stopped = true;
                    on_stop(&s)?;
                    docker.start_container(&c.name).await
                };
                tokio::time::timeout(limit, work)
                    .await
                    .map_err(|_| anyhow!("timed out after {}s", limit.as_secs()))?
            }
        }
    }
}

/// After a run was killed between PAUSE and RESUME: a compose service left stopped (killed
/// between the stop and the start; `restart: unless-stopped` does not start a container the
/// API stopped) is started and waited for, so the RESUME that follows lets clients reach a
/// server. True when it was started. A command cannot be asked, and is not re-run.
pub async fn ensure_started(
    cx: &StepCx,
    method: &Method,
    pg: &str,
    limit: Duration,
) -> anyhow::Result<bool> {
    let Method::Service { project, service } = method else {
        return Ok(false);
    };
    let docker = cx.docker().await?;
    let Some(c) = docker.replicas(project, service).await?.into_iter().next() else {
        bail!("no container of {project}/{service}");
    };
    if c.state == "running" {
        return Ok(false);
    }
    start_and_wait(cx, &docker, &c.name, pg, limit).await?;
    Ok(true)
}

/// Starts `container` and waits until PostgreSQL `[postgres.pg]` accepts connections.
async fn start_and_wait(
    cx: &StepCx,
    docker: &crate::infra::docker::Docker,
    container: &str,
    pg: &str,
    limit: Duration,
) -> anyhow::Result<()> {
    docker.start_container(container).await?;
    tokio::time::timeout(limit, ready(cx, pg))
        .await
        .map_err(|_| {
            anyhow!(
                "PostgreSQL ([postgres.{pg}]) did not accept connections within {}s of starting {container}",
                limit.as_secs(),
            )
        })
}

/// Before a resumed run or a rollback takes the database lock (which lives in this server):
/// the container this run's restart stopped (`s`, from the journal) is started again and
/// waited for, when it is still stopped and nothing started it since (its `started_at` is
/// the one recorded before the stop). Only then is the server's being down this run's own
/// doing; a container started since may be stopped again by another operator's run, which
/// holds the database lock, and is left alone. True when it was started.
pub async fn start_own_stop(
    cx: &StepCx,
    s: &Stopping,
    pg: &str,
    limit: Duration,
) -> anyhow::Result<bool> {
    let docker = cx.docker().await?;
    let Some((_, running, started_at)) = docker.run_state(&s.container).await? else {
        return Ok(false);
    };
    if running || started_at != s.started_at {
        return Ok(false);
    }
    start_and_wait(cx, &docker, &s.container, pg, limit).await?;
    Ok(true)
}

async fn ready(cx: &StepCx, pg: &str) {
    loop {
        if let Ok(c) = cx.postgres(pg).await
            && c.simple_query("SELECT 1").await.is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How long the clients waited, as measured by ferry.
#[derive(Debug, Clone, Copy)]
pub struct Restarted {
    /// From PAUSE sent to RESUME answered.
    pub paused: Duration,
}

/// PAUSE → restart → ready → RESUME, each stage within `limit`. On failure pgBouncer has
/// been RESUMEd and the error names the stage.
pub async fn behind_pause(
    cx: &StepCx,
    method: &Method,
    db: &str,
    pg: &str,
    limit: Duration,
    on_stop: OnStop<'_>,
) -> anyhow::Result<Restarted> {
    let t0 = Instant::now();
    let r = stages(cx, method, db, pg, limit, on_stop).await;
    let resumed = resume(cx, db).await;
    match (r, resumed) {
        (Ok(()), Ok(())) => Ok(Restarted {
            paused: t0.elapsed(),
        }),
        (Ok(()), Err(e)) => Err(e.context(format!(
            "the server restarted but pgBouncer could not be RESUMEd: run `RESUME {db}` on its admin console"
        ))),
        (Err(e), Ok(())) => Err(e.context(format!("pgBouncer {db} was RESUMEd"))),
        (Err(e), Err(r)) => Err(e.context(format!(
            "pgBouncer could not be RESUMEd either ({r:#}): run `RESUME {db}` on its admin console"
        ))),
    }
}

async fn stages(
    cx: &StepCx,
    method: &Method,
    db: &str,
    pg: &str,
    limit: Duration,
    on_stop: OnStop<'_>,
) -> anyhow::Result<()> {
    let secs = limit.as_secs_f64();
    let b = Bouncer::connect(cx).await?;
    tokio::time::timeout(limit, b.command(&format!("PAUSE {db}")))
        .await
        .map_err(|_| {
            anyhow!(
                "`PAUSE {db}` did not finish within {secs}s (a long transaction through pgBouncer?)"
            )
        })??;
    cx.log(
        crate::report::Level::Info,
        format!(
            "pgBouncer {db} paused; restarting PostgreSQL by {}",
            method.describe()
        ),
    );
    // Until the server is back, sessions that end (the run's database lock) end as planned.
    let _planned = crate::infra::postgres::PlannedRestart::begin();
    method
        .run(cx, limit, on_stop)
        .await
        .with_context(|| format!("restarting PostgreSQL by {}", method.describe()))?;
    tokio::time::timeout(limit, ready(cx, pg)).await.map_err(|_| {
        anyhow!(
            "PostgreSQL ([postgres.{pg}]) did not accept connections within {secs}s of its restart"
        )
    })
}

/// `RESUME db` on a fresh admin connection (the one that sent PAUSE may still wait on it);
/// "not paused" is success.
pub async fn resume(cx: &StepCx, db: &str) -> anyhow::Result<()> {
    let work = async {
        let b = Bouncer::connect(cx).await?;
        match b.command(&format!("RESUME {db}")).await {
            Err(e) if format!("{e:#}").contains("not paused") => Ok(()),
            r => r,
        }
    };
    tokio::time::timeout(Duration::from_secs(15), work)
        .await
        .map_err(|_| anyhow!("`RESUME {db}` got no answer within 15s"))?
}
