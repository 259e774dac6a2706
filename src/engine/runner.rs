//! The step loop: preflight checks, then for each step check → probe → apply → verify, with
//! journal records written before each effect and after it. On failure the completed steps
//! are undone in reverse (see `rollback.rs`); on a stop request the run ends at the next
//! checkpoint or step boundary and can be resumed.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::anyhow;

use super::journal::Journal;
use super::lock::{Owner, PgLock, StateLock, acquire_pg};
use super::records::{Outcome, Phase, Record, RunMeta, RunState, StepMeta, StepRun, StepState};
use super::signal::Stop;
use super::store::JournalStore;
use crate::error::{Error, code};
use crate::infra::process;
use crate::playbook::model::fmt_duration;
use crate::playbook::{OnFailure, Playbook, StepDef};
use crate::report::{CheckStatus, Event, Sink, StepStatus};
use crate::steps::{Approvals, Check, Interrupted, Prompter, Step, StepCx};
use crate::target::Target;

pub struct Engine {
    pub state_dir: PathBuf,
    pub sink: Arc<dyn Sink>,
    pub stop: Stop,
    pub prompter: Arc<dyn Prompter>,
    pub command: String,
}

pub struct RunRequest {
    pub playbook: Playbook,
    pub target: Option<Arc<Target>>,
    pub approvals: Approvals,
    pub run_id: String,
    pub cli_vars: Vec<(String, String)>,
}

pub(super) struct Run<'e> {
    pub e: &'e Engine,
    pub req: RunRequest,
    pub store: JournalStore,
    pub state: RunState,
    /// Steps whose preflight check said "deferred": checked again right before apply.
    pub recheck: HashSet<String>,
    /// A fresh run checked every step before the first apply; a resumed one did not.
    pub checked_upfront: bool,
}

pub fn is_interrupted(e: &anyhow::Error) -> bool {
    e.downcast_ref::<Interrupted>().is_some()
}

impl Engine {
    fn owner(&self, run_id: &str) -> Owner {
        Owner {
            host: super::hostname(),
            pid: std::process::id(),
            run_id: run_id.into(),
            command: self.command.clone(),
            started_at: crate::report::now_rfc3339(),
        }
    }

    /// The state-dir lock, then (when the target has a fhir database) the database lock.
    async fn lock(
        &self,
        req: &RunRequest,
        run_id: &str,
    ) -> Result<(StateLock, Option<PgLock>), Error> {
        let owner = self.owner(run_id);
        let local = StateLock::acquire(&self.state_dir, &owner)?;
        let remote = match &req.target {
            Some(t) => acquire_pg(t, &owner).await?,
            None => None,
        };
        Ok((local, remote))
    }

    pub(super) fn cx(
        &self,
        req: &RunRequest,
        step: &StepDef,
        store: Option<JournalStore>,
        cp: Option<serde_json::Value>,
        workdir: Option<&PathBuf>,
    ) -> StepCx {
        let store: Arc<dyn crate::steps::CheckpointStore> = match store {
            Some(s) => Arc::new(s),
            None => Arc::new(NoStore),
        };
        let mut cx = StepCx::new(
            req.run_id.clone(),
            step.id.clone(),
            req.target.clone(),
            Arc::new(req.playbook.vars.clone()),
            Arc::new(req.approvals.clone()),
            self.prompter.clone(),
            self.stop.soft.clone(),
            self.sink.clone(),
            store,
        )
        .with_checkpoint(cp);
        cx.timeout = step.timeout;
        cx.state_dir = self.state_dir.clone();
        if let Some(w) = workdir {
            cx.workdir = w.clone();
        }
        cx
    }

    fn started(&self, req: &RunRequest, mode: &str) {
        self.sink.emit(Event::RunStarted {
            run_id: req.run_id.clone(),
            playbook: req.playbook.name.clone(),
            target: req.target.as_ref().map(|t| t.name.clone()),
            mode: mode.into(),
            steps: req.playbook.steps.len(),
        });
    }

    pub(super) fn finished(
        &self,
        run_id: &str,
        started: Instant,
        r: &Result<(), Error>,
        ok_outcome: &str,
    ) {
        let (outcome, message, hint) = match r {
            Ok(()) => (ok_outcome.to_owned(), None, None),
            Err(e) => {
                let outcome = match e.exit_code() {
                    code::FAILED => "failed",
                    code::INVALID => "invalid",
                    code::PRECONDITION => "precondition_failed",
                    code::LOCKED => "locked",
                    code::INTERRUPTED => "interrupted",
                    _ => "rollback_incomplete",
                };
                (outcome.to_owned(), Some(e.to_string()), e.hint())
            }
        };
        let exit_code = r.as_ref().map_or_else(Error::exit_code, |_| 0);
        self.sink.emit(Event::RunFinished {
            run_id: run_id.into(),
            outcome,
            exit_code,
            elapsed_ms: started.elapsed().as_millis() as u64,
            message,
            hint,
        });
    }

    /// Reports a run that ended before its first step (lock, preflight) and returns why.
    fn ended_early(&self, run_id: &str, started: Instant, e: Error) -> Result<(), Error> {
        let r = Err(e);
        self.finished(run_id, started, &r, "");
        r
    }

    /// Every step's `check`, for real; nothing applied, nothing journaled, no lock taken.
    pub async fn dry_run(&self, req: RunRequest) -> Result<(), Error> {
        let started = Instant::now();
        self.started(&req, "dry-run");
        let (failed, _) = self.preflight(&req, true).await;
        let r = if failed.is_empty() {
            Ok(())
        } else {
            Err(Error::Precondition(format!(
                "{} check(s) failed: {}; nothing was changed",
                failed.len(),
                failed.join(", ")
            )))
        };
        self.finished(&req.run_id, started, &r, "checks_passed");
        r
    }

    /// Runs every step's checks in order, reporting each; returns failed step ids and the
    /// ids whose checks were deferred.
    async fn preflight(&self, req: &RunRequest, dry_run: bool) -> (Vec<String>, HashSet<String>) {
        let mut failed = vec![];
        let mut deferred = HashSet::new();
        let total = req.playbook.steps.len();
        let mut changes_before = false;
        for (i, step) in req.playbook.steps.iter().enumerate() {
            let mut cx = self.cx(req, step, None, None, None);
            cx.dry_run = dry_run;
            cx.preflight = true;
            cx.after_changes = changes_before;
            changes_before |=
                step.spec.reversibility() != crate::steps::Reversibility::NothingToUndo;
            let t0 = Instant::now();
            if dry_run {
                self.sink.emit(Event::StepStarted {
                    step: step.id.clone(),
                    kind: step.kind.clone(),
                    index: i,
                    total,
                    description: step
                        .description
                        .clone()
                        .unwrap_or_else(|| step.spec.describe()),
                    phase: "check".into(),
                });
            }
            let checks = run_checks(&cx, &step.spec).await;
            let bad = checks.iter().any(|c| c.status == CheckStatus::Fail);
            if checks.iter().any(|c| c.status == CheckStatus::Deferred) {
                deferred.insert(step.id.clone());
            }
            for c in checks {
                self.sink.emit(Event::Check {
                    step: step.id.clone(),
                    check: c.name,
                    status: c.status,
                    detail: c.detail,
                });
            }
            if bad {
                failed.push(step.id.clone());
            }
            if dry_run {
                self.sink.emit(Event::StepFinished {
                    step: step.id.clone(),
                    status: if bad {
                        StepStatus::Failed
                    } else {
                        StepStatus::Checked
                    },
                    elapsed_ms: t0.elapsed().as_millis() as u64,
                    error: bad.then(|| "a check failed".to_owned()),
                });
            }
        }
        (failed, deferred)
    }

    /// A new run: lock, preflight, journal, steps.
    pub async fn run(&self, req: RunRequest) -> Result<(), Error> {
        let started = Instant::now();
        self.started(&req, "run");
        self.run_inner(req.run_id.clone(), req, started).await
    }

    async fn run_inner(
        &self,
        run_id: String,
        req: RunRequest,
        started: Instant,
    ) -> Result<(), Error> {
        let lock = match self.lock(&req, &run_id).await {
            Ok(l) => l,
            Err(e) => return self.ended_early(&run_id, started, e),
        };
        let (failed, deferred) = self.preflight(&req, false).await;
        if !failed.is_empty() {
            let why = format!(
                "precondition failed for {}; nothing was changed",
                failed.join(", ")
            );
            return self.ended_early(&run_id, started, Error::Precondition(why));
        }
        let dir = super::runs_dir(&self.state_dir).join(&run_id);
        let mk = || -> anyhow::Result<Journal> {
            use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)?;
            let copy = dir.join("playbook.toml");
            std::fs::copy(&req.playbook.path, &copy)?;
            std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o600))?;
            Journal::create(&dir.join("journal.jsonl"))
        };
        let journal = mk().map_err(Error::Other)?;
        let meta = RunMeta {
            run_id: run_id.clone(),
            playbook_name: req.playbook.name.clone(),
            playbook: std::fs::canonicalize(&req.playbook.path)
                .unwrap_or(req.playbook.path.clone()),
            playbook_hash: req.playbook.hash.clone(),
            target: req
                .target
                .as_ref()
                .map(|t| std::fs::canonicalize(&t.path).unwrap_or(t.path.clone())),
            cli_vars: req.cli_vars.clone(),
            steps: req
                .playbook
                .steps
                .iter()
                .map(|s| StepMeta {
                    id: s.id.clone(),
                    kind: s.kind.clone(),
                    fingerprint: s.fingerprint.clone(),
                })
                .collect(),
            host: super::hostname(),
            pid: std::process::id(),
            started_at: crate::report::now_rfc3339(),
            workdir: std::env::current_dir().unwrap_or_default(),
        };
        let first = Record::RunStarted(meta);
        let state = RunState::fold(std::slice::from_ref(&first))
            .ok_or_else(|| Error::Other(anyhow!("bad run record")))?;
        let store = JournalStore::new(journal);
        store.write(&first, true).map_err(Error::Other)?;
        let mut run = Run {
            e: self,
            req,
            store,
            state,
            recheck: deferred,
            checked_upfront: true,
        };
        let r = run.forward().await;
        self.finished(&run_id, started, &r, "done");
        drop(lock);
        r
    }

    /// Continues a run from its journal: forward, or the rollback it was doing.
    pub async fn resume(
        &self,
        req: RunRequest,
        state: RunState,
        accepted_changes: bool,
    ) -> Result<(), Error> {
        self.continue_run(req, state, accepted_changes, false).await
    }

    /// Undoes a run (finished, stopped, interrupted or half rolled back), newest step first.
    pub async fn rollback(
        &self,
        req: RunRequest,
        state: RunState,
        accepted_changes: bool,
    ) -> Result<(), Error> {
        self.continue_run(req, state, accepted_changes, true).await
    }

    async fn continue_run(
        &self,
        req: RunRequest,
        state: RunState,
        accepted: bool,
        undo: bool,
    ) -> Result<(), Error> {
        let started = Instant::now();
        let run_id = req.run_id.clone();
        self.started(&req, if undo { "rollback" } else { "resume" });
        let lock = match self.lock(&req, &run_id).await {
            Ok(l) => l,
            Err(e) => return self.ended_early(&run_id, started, e),
        };
        let path = super::runs_dir(&self.state_dir)
            .join(&run_id)
            .join("journal.jsonl");
        let journal = Journal::open(&path).map_err(Error::Other)?;
        let store = JournalStore::new(journal);
        let state = align(state, &req.playbook);
        let mut run = Run {
            e: self,
            req,
            store,
            state,
            recheck: HashSet::new(),
            checked_upfront: false,
        };
        run.rec(
            Record::Resumed {
                pid: std::process::id(),
                host: super::hostname(),
                at: crate::report::now_rfc3339(),
                accepted_changes: accepted,
            },
            true,
        )?;
        let r = match (run.state.phase, undo) {
            (Phase::Finished(Outcome::RolledBack), _) => Ok(()),
            (Phase::Finished(_), false) => Err(Error::invalid(format!(
                "run {run_id} has finished; nothing to resume"
            ))),
            (Phase::RollingBack, _) | (_, true) => {
                let reason = run
                    .state
                    .rollback_reason
                    .clone()
                    .unwrap_or_else(|| "requested with `ferry rollback`".into());
                run.rollback_all(&reason).await
            }
            (Phase::Forward, false) => run.forward().await,
        };
        let ok = if undo { "rolled_back" } else { "done" };
        self.finished(&run_id, started, &r, ok);
        drop(lock);
        r
    }
}

/// Lines the journal's step states up with the (possibly changed, accepted) playbook.
fn align(mut state: RunState, pb: &Playbook) -> RunState {
    let mut old: BTreeMap<String, StepRun> =
        state.steps.drain(..).map(|s| (s.id.clone(), s)).collect();
    state.steps = pb
        .steps
        .iter()
        .map(|s| {
            old.remove(&s.id).unwrap_or(StepRun {
                id: s.id.clone(),
                state: StepState::Pending,
                checkpoint: None,
                error: None,
                children: BTreeMap::new(),
            })
        })
        .collect();
    state
}

/// Checks never abort a run by erroring: an error is a failed check with its message.
pub(super) async fn run_checks(cx: &StepCx, step: &impl Step) -> Vec<Check> {
    match step.check(cx).await {
        Ok(c) => c,
        Err(e) => vec![Check::fail("check", format!("{e:#}"))],
    }
}

struct NoStore;
impl crate::steps::CheckpointStore for NoStore {
    fn save(&self, _: &str, _: &serde_json::Value) -> anyhow::Result<()> {
        Err(anyhow!("checks must not save checkpoints"))
    }
    fn child_started(&self, _: &str, _: u32, _: u64) -> anyhow::Result<()> {
        Ok(())
    }
    fn child_exited(&self, _: &str, _: u32) -> anyhow::Result<()> {
        Ok(())
    }
}

impl Run<'_> {
    pub(super) fn rec(&mut self, r: Record, durable: bool) -> Result<(), Error> {
        self.store.write(&r, durable).map_err(Error::Other)?;
        self.state.apply(&r);
        Ok(())
    }

    pub(super) fn step_cx(&self, i: usize) -> StepCx {
        let def = &self.req.playbook.steps[i];
        let cp = self
            .store
            .checkpoint(&def.id)
            .or_else(|| self.state.steps[i].checkpoint.clone());
        self.e.cx(
            &self.req,
            def,
            Some(self.store.clone()),
            cp,
            Some(&self.state.meta.workdir),
        )
    }

    /// Runs `fut` under the step's timeout (unless the step enforces it itself) and the hard
    /// stop; dropping `fut` kills any child process group it started.
    pub(super) async fn guarded<T>(
        &self,
        i: usize,
        fut: impl Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        let def = &self.req.playbook.steps[i];
        let timeout = def.timeout.filter(|_| !def.spec.owns_timeout());
        let hard = self.e.stop.hard.clone();
        let timed = async {
            match timeout {
                Some(t) => tokio::time::timeout(t, fut)
                    .await
                    .map_err(|_| anyhow!("timed out after {}", fmt_duration(t)))?,
                None => fut.await,
            }
        };
        tokio::select! {
            r = timed => r,
            _ = hard.cancelled() => Err(Interrupted.into()),
        }
    }

    /// Kills child process groups left by an earlier, killed ferry for step `i`.
    pub(super) fn reap_leftovers(&mut self, i: usize) -> Result<(), Error> {
        let id = self.state.steps[i].id.clone();
        let children: Vec<(u32, u64)> = self.state.steps[i]
            .children
            .iter()
            .map(|(p, t)| (*p, *t))
            .collect();
        for (pid, ticks) in children {
            let killed = process::kill_leftover_group(pid, ticks);
            if !killed.is_empty() {
                self.e.sink.emit(Event::log(
                    Some(&id),
                    "warn",
                    format!(
                        "killed {} leftover process(es) of an earlier attempt (group {pid})",
                        killed.len()
                    ),
                ));
            }
            self.rec(
                Record::ChildExited {
                    step: id.clone(),
                    pid,
                },
                false,
            )?;
        }
        Ok(())
    }

    fn emit_start(&self, i: usize, phase: &str) {
        let def = &self.req.playbook.steps[i];
        self.e.sink.emit(Event::StepStarted {
            step: def.id.clone(),
            kind: def.kind.clone(),
            index: i,
            total: self.req.playbook.steps.len(),
            description: def
                .description
                .clone()
                .unwrap_or_else(|| def.spec.describe()),
            phase: phase.into(),
        });
    }

    pub(super) fn emit_end(
        &self,
        i: usize,
        status: StepStatus,
        t0: Instant,
        error: Option<String>,
    ) {
        self.e.sink.emit(Event::StepFinished {
            step: self.req.playbook.steps[i].id.clone(),
            status,
            elapsed_ms: t0.elapsed().as_millis() as u64,
            error,
        });
    }

    pub(super) async fn forward(&mut self) -> Result<(), Error> {
        for i in 0..self.req.playbook.steps.len() {
            if matches!(
                self.state.steps[i].state,
                StepState::Done | StepState::Skipped
            ) {
                continue;
            }
            if self.e.stop.soft.is_cancelled() {
                self.rec(Record::Interrupted { step: None }, true)?;
                return Err(Error::Interrupted {
                    run_id: self.req.run_id.clone(),
                });
            }
            let t0 = Instant::now();
            self.emit_start(i, "apply");
            match self.forward_step(i).await {
                Ok(status) => self.emit_end(i, status, t0, None),
                Err(e) if is_interrupted(&e) => {
                    let id = self.req.playbook.steps[i].id.clone();
                    self.rec(Record::Interrupted { step: Some(id) }, true)?;
                    self.emit_end(i, StepStatus::Interrupted, t0, None);
                    return Err(Error::Interrupted {
                        run_id: self.req.run_id.clone(),
                    });
                }
                Err(e) => return self.fail(i, t0, e).await,
            }
        }
        self.rec(
            Record::RunFinished {
                outcome: Outcome::Done,
            },
            true,
        )?;
        Ok(())
    }

    async fn forward_step(&mut self, i: usize) -> anyhow::Result<StepStatus> {
        let def = self.req.playbook.steps[i].clone();
        let resumed = matches!(
            self.state.steps[i].state,
            StepState::Started | StepState::Failed
        );
        if resumed {
            self.reap_leftovers(i)?;
        }
        // Checks ran in preflight for a fresh run; a resumed step or a deferred check runs
        // them now, against the world as the earlier steps left it.
        if resumed || !self.checked_upfront || self.recheck.contains(&def.id) {
            let cx = self.step_cx(i);
            let checks = run_checks(&cx, &def.spec).await;
            let failed: Vec<String> = checks
                .iter()
                .filter(|c| c.status == CheckStatus::Fail)
                .map(|c| format!("{}: {}", c.name, c.detail))
                .collect();
            for c in checks {
                self.e.sink.emit(Event::Check {
                    step: def.id.clone(),
                    check: c.name,
                    status: c.status,
                    detail: c.detail,
                });
            }
            if !failed.is_empty() {
                return Err(anyhow!("precondition failed: {}", failed.join("; ")));
            }
        }
        let cx = self.step_cx(i);
        if self.guarded(i, def.spec.done(&cx)).await? {
            // Applied by this run before an interruption: done (and undone on rollback).
            // Applied before this run: skipped, and never undone by it.
            let (rec, status) = if resumed {
                (
                    Record::StepDone {
                        step: def.id.clone(),
                    },
                    StepStatus::Done,
                )
            } else {
                (
                    Record::StepSkipped {
                        step: def.id.clone(),
                    },
                    StepStatus::Skipped,
                )
            };
            self.rec(rec, false)?;
            return Ok(status);
        }
        self.rec(
            Record::StepStarted {
                step: def.id.clone(),
            },
            true,
        )?;
        let mut attempt = 0;
        loop {
            let cx = self.step_cx(i);
            let r = async {
                self.guarded(i, def.spec.apply(&cx)).await?;
                self.guarded(i, def.spec.verify(&cx)).await
            }
            .await;
            match r {
                Ok(()) => break,
                Err(e) if !is_interrupted(&e) && attempt < def.retries => {
                    attempt += 1;
                    self.e.sink.emit(Event::log(
                        Some(&def.id),
                        "warn",
                        format!(
                            "attempt {attempt} failed: {e:#}; retrying in {}",
                            fmt_duration(def.retry_delay)
                        ),
                    ));
                    self.e.stop.soft.sleep(def.retry_delay).await?;
                }
                Err(e) => return Err(e),
            }
        }
        self.rec(
            Record::StepDone {
                step: def.id.clone(),
            },
            false,
        )?;
        Ok(StepStatus::Done)
    }

    async fn fail(&mut self, i: usize, t0: Instant, e: anyhow::Error) -> Result<(), Error> {
        let def = self.req.playbook.steps[i].clone();
        let msg = crate::report::redact::redact(&format!("{e:#}")).into_owned();
        self.rec(
            Record::StepFailed {
                step: def.id.clone(),
                error: msg.clone(),
            },
            true,
        )?;
        self.emit_end(i, StepStatus::Failed, t0, Some(msg.clone()));
        let run_id = self.req.run_id.clone();
        if def.on_failure == OnFailure::Stop {
            return Err(Error::StepFailed {
                message: format!("step `{}` failed: {msg}", def.id),
                hint: Some(format!(
                    "the run stopped there (on_failure = \"stop\"): fix the cause and `ferry resume {run_id}`, or undo it with `ferry rollback {run_id}`"
                )),
            });
        }
        let reason = format!("step `{}` failed: {msg}", def.id);
        self.rollback_all(&reason).await?;
        Err(Error::StepFailed {
            message: reason,
            hint: Some(format!(
                "the completed steps were rolled back; `ferry status {run_id}` shows each one"
            )),
        })
    }
}
