//! Runs, resumes and rollbacks from the outside: lock (state dir, then the deployment's
//! database), preflight, the journal's first record, then the step loop (`forward.rs`) or the
//! rollback (`rollback.rs`); and the run-level events (`run_started`, `run_finished`).
//! A resumed run's journal state is lined up with the (possibly changed, accepted) playbook.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::anyhow;

use super::journal::Journal;
use super::lock::{Owner, PgLock, StateLock, acquire_pg};
use super::records::{Ending, Phase, Record, RunMeta, RunState, StepMeta, StepRun};
use super::signal::Stop;
use super::store::{JournalStore, NoStore};
use crate::error::Error;
use crate::playbook::{Playbook, StepDef};
use crate::report::{Event, Mode, RunOutcome, Sink};
use crate::steps::{Approvals, Interrupted, Prompter, StepCx};
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
            Some(t) => acquire_pg(t, &owner, self.stop.soft.clone()).await?,
            None => None,
        };
        Ok((local, remote))
    }

    /// Each step with a checkpoint may first undo what its interruption left in the way of
    /// the database lock (`Step::recover`). Run under the state-dir lock only: the steps act
    /// only on what the journal proves this run did, so a second operator (another state
    /// dir) who holds the database lock meanwhile is never disturbed, and the database lock
    /// taken next still decides who runs. A failure is a warning: taking the lock says the rest.
    async fn recover(&self, req: &RunRequest, state: &RunState) {
        for (def, run) in req.playbook.steps.iter().zip(&state.steps) {
            if run.id != def.id || run.checkpoint.is_none() {
                continue;
            }
            let cx = self.cx(
                req,
                def,
                None,
                run.checkpoint.clone(),
                Some(&state.meta.workdir),
            );
            if let Err(e) = crate::steps::Step::recover(&def.spec, &cx).await {
                cx.log(
                    crate::report::Level::Warn,
                    format!("recovering the interrupted step before taking the locks: {e:#}"),
                );
            }
        }
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
        cx.hard = self.stop.hard.clone();
        cx.state_dir = self.state_dir.clone();
        if let Some(w) = workdir {
            cx.workdir = w.clone();
        }
        cx
    }

    pub(super) fn started(&self, req: &RunRequest, mode: Mode) {
        self.sink.emit(Event::RunStarted {
            run_id: req.run_id.clone(),
            playbook: req.playbook.name.clone(),
            target: req.target.as_ref().map(|t| t.name.clone()),
            mode,
            steps: req.playbook.steps.len(),
        });
    }

    pub(super) fn finished(
        &self,
        run_id: &str,
        started: Instant,
        r: &Result<(), Error>,
        ok: RunOutcome,
    ) {
        let (outcome, exit_code, message, hint) = match r {
            Ok(()) => (ok, 0, None, None),
            Err(e) => (e.outcome(), e.exit_code(), Some(e.to_string()), e.hint()),
        };
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
        let outcome = e.outcome();
        let r = Err(e);
        self.finished(run_id, started, &r, outcome);
        r
    }

    /// A new run: lock, preflight, journal, steps.
    pub async fn run(&self, req: RunRequest) -> Result<(), Error> {
        let started = Instant::now();
        self.started(&req, Mode::Run);
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
        // Stopped in preflight: nothing ran, so no journal is written (nothing to resume).
        let Some((failed, deferred, checked)) = self.preflight(&req, false).await else {
            let e = Error::StoppedInChecks {
                run_id: run_id.clone(),
            };
            let e = lock_lost(Err(e), &lock, &run_id)
                .err()
                .unwrap_or(Error::StoppedInChecks {
                    run_id: run_id.clone(),
                });
            return self.ended_early(&run_id, started, e);
        };
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
            let j = Journal::create(&dir.join("journal.jsonl"))?;
            // The names of the directory, the journal and the copy must survive a power loss
            // as surely as the journal's first (synced) record.
            super::journal::sync_dir(&dir)?;
            super::journal::sync_dir(dir.parent().unwrap_or(&dir))?;
            Ok(j)
        };
        // A journal that cannot be started leaves nothing behind: nothing ran.
        let abandon = |e: anyhow::Error| {
            let _ = std::fs::remove_dir_all(&dir);
            match Error::journal(e, None) {
                Error::Other(e) => Error::JournalWrite {
                    message: format!(
                        "cannot start the run in {}: {e:#}; nothing ran",
                        dir.display()
                    ),
                    run_id: None,
                },
                e => e,
            }
        };
        let journal = match mk() {
            Ok(j) => j,
            Err(e) => return self.ended_early(&run_id, started, abandon(e)),
        };
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
            target_hash: req.target.as_ref().map(|t| t.hash.clone()),
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
            user: Some(super::username()),
            pid: std::process::id(),
            started_at: crate::report::now_rfc3339(),
            workdir: std::env::current_dir().unwrap_or_default(),
        };
        let first = Record::RunStarted(Box::new(meta));
        let state = RunState::fold(std::slice::from_ref(&first))
            .ok_or_else(|| Error::Other(anyhow!("bad run record")))?;
        let store = JournalStore::new(journal);
        if let Err(e) = store.write(&first, true) {
            return self.ended_early(&run_id, started, abandon(e));
        }
        // The preflight's answers, for the record: synced with the first step's record.
        for rec in &checked {
            if let Err(e) = store.write(rec, false) {
                let e = Error::journal(e, Some(&run_id));
                return self.ended_early(&run_id, started, e);
            }
        }
        let mut run = Run {
            e: self,
            req,
            store,
            state,
            recheck: deferred,
            checked_upfront: true,
        };
        let r = lock_lost(run.forward().await, &lock, &run_id);
        self.finished(&run_id, started, &r, RunOutcome::Done);
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
        self.started(&req, if undo { Mode::Rollback } else { Mode::Resume });
        let owner = self.owner(&run_id);
        let local = match StateLock::acquire(&self.state_dir, &owner) {
            Ok(l) => l,
            Err(e) => return self.ended_early(&run_id, started, e),
        };
        // What the run is now: read again under the lock (the caller's copy may be stale).
        let state = match super::status::load(&self.state_dir, &run_id) {
            Ok(fresh) => fresh,
            Err(_) => state,
        };
        self.recover(&req, &state).await;
        let remote = match &req.target {
            Some(t) => match acquire_pg(t, &owner, self.stop.soft.clone()).await {
                Ok(l) => l,
                Err(e) => return self.ended_early(&run_id, started, e),
            },
            None => None,
        };
        let lock = (local, remote);
        if !undo && let Err(e) = resumable(&state, &run_id) {
            return self.ended_early(&run_id, started, e);
        }
        let path = super::runs_dir(&self.state_dir)
            .join(&run_id)
            .join("journal.jsonl");
        let journal = match Journal::open(&path) {
            Ok(j) => j,
            Err(e) => return self.ended_early(&run_id, started, Error::journal(e, Some(&run_id))),
        };
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
                user: Some(super::username()),
                at: crate::report::now_rfc3339(),
                accepted_changes: accepted,
            },
            true,
        )?;
        let r = match (run.state.phase, undo) {
            // Rolling back a rolled-back run again is harmless; resuming it is not a thing.
            (Phase::Finished(Ending::RolledBack), true) => Ok(()),
            (Phase::Finished(_), false) => resumable(&run.state, &run_id),
            (Phase::RollingBack, _) | (_, true) => {
                let reason = run
                    .state
                    .rollback_reason
                    .clone()
                    .unwrap_or_else(|| REQUESTED_ROLLBACK.into());
                let r = run.rollback_all(&reason).await;
                // `resume` finishing the rollback a failed step started (not one asked for
                // with `ferry rollback`) ends as that run would have: failed (exit 1), so CI
                // never reads a failed upgrade as done.
                let failed = reason != REQUESTED_ROLLBACK;
                match r {
                    Ok(()) if !undo && failed => {
                        // The step whose failure started the rollback: the last with an error.
                        let at = run.state.steps.iter().rposition(|s| s.error.is_some());
                        let error = at
                            .and_then(|i| run.state.steps[i].error.clone())
                            .unwrap_or(reason);
                        let hint = format!(
                            "the rollback is complete: the completed steps were undone; `ferry status {run_id}` shows each one"
                        );
                        Err(match at.and_then(|i| run.req.playbook.steps.get(i)) {
                            Some(def) => def.failed(error, hint),
                            None => Error::StepFailed {
                                step: String::new(),
                                kind: String::new(),
                                describe: String::new(),
                                error,
                                hint,
                            },
                        })
                    }
                    r => r,
                }
            }
            (Phase::Forward, false) => run.forward().await,
        };
        let r = lock_lost(r, &lock, &run_id);
        let ok = if undo {
            RunOutcome::RolledBack
        } else {
            RunOutcome::Done
        };
        self.finished(&run_id, started, &r, ok);
        drop(lock);
        r
    }
}

/// The journaled reason of a rollback asked for with `ferry rollback` (any other reason is
/// the failure of a step).
const REQUESTED_ROLLBACK: &str = "requested with `ferry rollback`";

/// A run stopped because the database lock was lost (the lock's watcher asked for the
/// stop) says so, rather than that a signal interrupted it.
fn lock_lost(
    r: Result<(), Error>,
    lock: &(StateLock, Option<PgLock>),
    run_id: &str,
) -> Result<(), Error> {
    match (r, lock.1.as_ref().and_then(PgLock::lost)) {
        (Err(Error::Interrupted { .. }), Some(why)) => Err(Error::LockLost {
            run_id: run_id.into(),
            why,
            resumable: true,
        }),
        (Err(Error::StoppedInChecks { .. }), Some(why)) => Err(Error::LockLost {
            run_id: run_id.into(),
            why,
            resumable: false,
        }),
        (r, _) => r,
    }
}

/// Whether `resume` can continue a run; the error says what it was and what to run instead.
fn resumable(state: &RunState, run_id: &str) -> Result<(), Error> {
    match state.phase {
        Phase::Finished(Ending::RollbackIncomplete) => Err(Error::invalid(format!(
            "run {run_id} stopped in the middle of its rollback; finish it with `ferry rollback {run_id}`"
        ))),
        Phase::Finished(o) => {
            let how = if o == Ending::Done {
                "finished"
            } else {
                "was rolled back"
            };
            Err(Error::invalid(format!(
                "run {run_id} {how}; nothing to resume"
            )))
        }
        _ => Ok(()),
    }
}

/// Lines the journal's step states up with the (possibly changed, accepted) playbook.
fn align(mut state: RunState, pb: &Playbook) -> RunState {
    let mut old: BTreeMap<String, StepRun> =
        state.steps.drain(..).map(|s| (s.id.clone(), s)).collect();
    state.steps = pb
        .steps
        .iter()
        .map(|s| old.remove(&s.id).unwrap_or_else(|| StepRun::pending(&s.id)))
        .collect();
    state
}
