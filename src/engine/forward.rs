//! The forward step loop of a run (and the helpers rollback shares): for each step, checks
//! when they were not run up front, the `done` probe, a durable `step_started` record before
//! `apply`, retries, `verify`, and `step_done`; on failure the run is rolled back or stopped
//! per `on_failure`; on a stop request it ends at the next boundary, resumable.

use std::future::Future;
use std::time::Instant;

use anyhow::anyhow;

use super::preflight::run_checks;
use super::records::{Ending, Record, StepState};
use super::runner::{Run, is_interrupted};
use crate::error::Error;
use crate::infra::process;
use crate::playbook::OnFailure;
use crate::report::{CheckStatus, Event, Level, Phase, StepStatus};
use crate::steps::{Interrupted, Step, StepCx};
use crate::util::duration::fmt_duration;

impl Run<'_> {
    pub(super) fn rec(&mut self, r: Record, durable: bool) -> Result<(), Error> {
        self.store
            .write(&r, durable)
            .map_err(|e| Error::journal(e, Some(&self.req.run_id)))?;
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
    /// stop (unless the step stops itself); dropping `fut` kills any child process group it
    /// started.
    pub(super) async fn guarded<T>(
        &self,
        i: usize,
        fut: impl Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        let def = &self.req.playbook.steps[i];
        let timeout = def.timeout.filter(|_| !def.spec.owns_timeout());
        let hard = self.e.stop.hard.clone();
        let owns_stop = def.spec.owns_stop();
        let timed = async {
            match timeout {
                Some(t) => tokio::time::timeout(t, fut)
                    .await
                    .map_err(|_| anyhow!("timed out after {}", fmt_duration(t)))?,
                None => fut.await,
            }
        };
        if owns_stop {
            return timed.await;
        }
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
                    Level::Warn,
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

    fn emit_start(&self, i: usize, phase: Phase) {
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
            phase,
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
            self.emit_start(i, Phase::Apply);
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
                // A checkpoint that could not be written: the journal cannot record a
                // failure or a rollback either; stop here.
                Err(e) if journal_failed(&e).is_some() => {
                    return Err(Error::journal(e, Some(&self.req.run_id)));
                }
                Err(e) => return self.fail(i, t0, e).await,
            }
        }
        self.rec(
            Record::RunFinished {
                outcome: Ending::Done,
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
            // The second signal stops a check at once (the first waits for the boundary).
            let Some(checks) = run_checks(&cx, &def.spec, &self.e.stop.hard).await else {
                return Err(Interrupted.into());
            };
            if let Some(rec) = super::preflight::checked(&def.id, &checks) {
                self.rec(rec, false)?;
            }
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
                    let error = crate::report::redact::redact(&format!("{e:#}")).into_owned();
                    self.rec(
                        Record::Retrying {
                            step: def.id.clone(),
                            attempt,
                            error,
                        },
                        false,
                    )?;
                    self.e.sink.emit(Event::log(
                        Some(&def.id),
                        Level::Warn,
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
        let failed = |hint: String| def.failed(msg.clone(), hint);
        if def.on_failure == OnFailure::Stop {
            return Err(failed(format!(
                "the run stopped there (on_failure = \"stop\"): fix the cause and `ferry resume {run_id}`, or undo it with `ferry rollback {run_id}`"
            )));
        }
        let e = failed(format!(
            "the completed steps were rolled back; `ferry status {run_id}` shows each one"
        ));
        self.rollback_all(&e.to_string()).await?;
        Err(e)
    }
}

/// The journal write failure inside a step's error (a checkpoint that could not be saved).
pub(super) fn journal_failed(e: &anyhow::Error) -> Option<&super::journal::WriteFailed> {
    e.downcast_ref::<super::journal::WriteFailed>()
}
