//! Rollback: undo the run's steps newest first, from the step that failed (its partial work
//! too) back to the first. Journaled like apply, so a killed rollback resumes; idempotent
//! steps make a repeated undo harmless. A step that cannot be undone is left and reported;
//! a step whose undo fails stops the rollback, because undoing earlier steps on top of a
//! half-undone later one can make things worse: a person decides (exit 6).

use std::time::Instant;

use super::records::{Ending, Record, StepState};
use super::runner::{Run, is_interrupted};
use crate::error::Error;
use crate::report::{Event, Level, Phase, StepStatus};
use crate::steps::{Reversibility, Step};

impl Run<'_> {
    pub(super) async fn rollback_all(&mut self, reason: &str) -> Result<(), Error> {
        if self.state.phase != super::records::Phase::RollingBack {
            self.rec(
                Record::RollbackStarted {
                    reason: reason.into(),
                },
                true,
            )?;
        }
        self.e.sink.emit(Event::RollbackStarted {
            run_id: self.req.run_id.clone(),
            reason: reason.into(),
        });
        for i in (0..self.req.playbook.steps.len()).rev() {
            let st = self.state.steps[i].state;
            if !matches!(
                st,
                StepState::Done
                    | StepState::Failed
                    | StepState::Started
                    | StepState::Undoing
                    | StepState::UndoFailed
            ) {
                continue;
            }
            if self.e.stop.soft.is_cancelled() {
                self.rec(Record::Interrupted { step: None }, true)?;
                return Err(Error::Interrupted {
                    run_id: self.req.run_id.clone(),
                });
            }
            self.undo_step(i).await?;
        }
        self.rec(
            Record::RunFinished {
                outcome: Ending::RolledBack,
            },
            true,
        )?;
        Ok(())
    }

    async fn undo_step(&mut self, i: usize) -> Result<(), Error> {
        let def = self.req.playbook.steps[i].clone();
        let t0 = Instant::now();
        if def.spec.reversibility() == Reversibility::NothingToUndo {
            // Observed or waited, changed nothing: journaled as undone, not shown.
            let why = "changes nothing".to_owned();
            return self.rec(
                Record::UndoSkipped {
                    step: def.id.clone(),
                    why,
                },
                false,
            );
        }
        if let Reversibility::Irreversible(why) = def.spec.reversibility() {
            self.rec(
                Record::UndoSkipped {
                    step: def.id.clone(),
                    why: why.clone(),
                },
                false,
            )?;
            self.e.sink.emit(Event::log(
                Some(&def.id),
                Level::Warn,
                format!("cannot be undone ({why}); left as it is"),
            ));
            return Ok(());
        }
        self.reap_leftovers(i)?;
        self.e.sink.emit(Event::StepStarted {
            step: def.id.clone(),
            kind: def.kind.clone(),
            index: i,
            total: self.req.playbook.steps.len(),
            description: match def.spec.reversibility() {
                Reversibility::Reversible(how) => how,
                _ => "nothing to undo".into(),
            },
            phase: Phase::Rollback,
        });
        self.rec(
            Record::UndoStarted {
                step: def.id.clone(),
            },
            true,
        )?;
        let cx = self.step_cx(i);
        match self.guarded(i, def.spec.rollback(&cx)).await {
            Ok(()) => {
                self.rec(
                    Record::StepUndone {
                        step: def.id.clone(),
                    },
                    false,
                )?;
                self.emit_end(i, StepStatus::Undone, t0, None);
                Ok(())
            }
            Err(e) if is_interrupted(&e) => {
                self.rec(
                    Record::Interrupted {
                        step: Some(def.id.clone()),
                    },
                    true,
                )?;
                self.emit_end(i, StepStatus::Interrupted, t0, None);
                Err(Error::Interrupted {
                    run_id: self.req.run_id.clone(),
                })
            }
            Err(e) if super::forward::journal_failed(&e).is_some() => {
                Err(Error::journal(e, Some(&self.req.run_id)))
            }
            Err(e) => {
                let msg = crate::report::redact::redact(&format!("{e:#}")).into_owned();
                self.rec(
                    Record::UndoFailed {
                        step: def.id.clone(),
                        error: msg.clone(),
                    },
                    true,
                )?;
                self.emit_end(i, StepStatus::UndoFailed, t0, Some(msg.clone()));
                self.rec(
                    Record::RunFinished {
                        outcome: Ending::RollbackIncomplete,
                    },
                    true,
                )?;
                let run_id = &self.req.run_id;
                let earlier: Vec<&str> = self.state.steps[..i]
                    .iter()
                    .filter(|s| {
                        matches!(
                            s.state,
                            StepState::Done | StepState::Failed | StepState::Started
                        )
                    })
                    .map(|s| s.id.as_str())
                    .collect();
                Err(Error::RollbackIncomplete {
                    message: format!(
                        "rollback stopped: undoing step `{}` failed: {msg}; still applied: {}",
                        def.id,
                        if earlier.is_empty() {
                            "nothing else".into()
                        } else {
                            earlier.join(", ")
                        }
                    ),
                    hint: format!(
                        "undo what step `{}` did by hand (or fix what blocks its undo), then run `ferry rollback {run_id}` to finish",
                        def.id
                    ),
                })
            }
        }
    }
}
