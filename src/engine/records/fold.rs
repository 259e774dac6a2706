//! The fold of a run's records into its state ([`RunState`]): what `resume`, `rollback` and
//! `status` act on. Invariant: a record never changes a step the run did not declare, and
//! records that only say what the run saw (checks, retries, replicas) change nothing.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Ending, Record, RunMeta, StepState};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Forward,
    RollingBack,
    Finished(Ending),
}

#[derive(Debug, Clone)]
pub struct StepRun {
    pub id: String,
    pub state: StepState,
    pub checkpoint: Option<serde_json::Value>,
    pub error: Option<String>,
    /// Children started and not seen to exit: (pid, start ticks).
    pub children: BTreeMap<u32, u64>,
}

impl StepRun {
    pub fn pending(id: &str) -> StepRun {
        StepRun {
            id: id.into(),
            state: StepState::Pending,
            checkpoint: None,
            error: None,
            children: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RunState {
    pub meta: RunMeta,
    pub steps: Vec<StepRun>,
    pub phase: Phase,
    pub interrupted: bool,
    pub rollback_reason: Option<String>,
    pub last_error: Option<String>,
}

impl RunState {
    pub fn fold(records: &[Record]) -> Option<RunState> {
        let Some(Record::RunStarted(meta)) = records.first() else {
            return None;
        };
        let steps = meta.steps.iter().map(|s| StepRun::pending(&s.id)).collect();
        let mut st = RunState {
            meta: (**meta).clone(),
            steps,
            phase: Phase::Forward,
            interrupted: false,
            rollback_reason: None,
            last_error: None,
        };
        for r in &records[1..] {
            st.apply(r);
        }
        Some(st)
    }

    pub fn step_mut(&mut self, id: &str) -> Option<&mut StepRun> {
        self.steps.iter_mut().find(|s| s.id == id)
    }

    /// A finished step's children have exited (its command returned): nothing to reap.
    fn clear_children(&mut self, id: &str) {
        if let Some(s) = self.step_mut(id) {
            s.children.clear();
        }
    }

    fn set(&mut self, id: &str, state: StepState) {
        if let Some(s) = self.step_mut(id) {
            s.state = state;
        }
    }

    pub fn apply(&mut self, r: &Record) {
        match r {
            Record::RunStarted(_) => {}
            Record::Resumed { .. } => self.interrupted = false,
            Record::StepStarted { step } => self.set(step, StepState::Started),
            Record::StepSkipped { step } => self.set(step, StepState::Skipped),
            Record::Checkpoint { step, data } => {
                if let Some(s) = self.step_mut(step) {
                    s.checkpoint = Some(data.clone());
                }
            }
            Record::ChildStarted { step, pid, ticks } => {
                if let Some(s) = self.step_mut(step) {
                    s.children.insert(*pid, *ticks);
                }
            }
            Record::ChildExited { step, pid } => {
                if let Some(s) = self.step_mut(step) {
                    s.children.remove(pid);
                }
            }
            Record::StepDone { step } => {
                self.set(step, StepState::Done);
                self.clear_children(step);
            }
            Record::StepFailed { step, error } => {
                self.set(step, StepState::Failed);
                if let Some(s) = self.step_mut(step) {
                    s.error = Some(error.clone());
                }
                self.last_error = Some(format!("{step}: {error}"));
            }
            Record::RollbackStarted { reason } => {
                self.phase = Phase::RollingBack;
                self.rollback_reason = Some(reason.clone());
            }
            Record::UndoStarted { step } => self.set(step, StepState::Undoing),
            Record::StepUndone { step } | Record::UndoSkipped { step, .. } => {
                self.set(step, StepState::Undone)
            }
            Record::UndoFailed { step, error } => {
                self.set(step, StepState::UndoFailed);
                self.last_error = Some(format!("{step}: rollback failed: {error}"));
            }
            Record::Interrupted { .. } => self.interrupted = true,
            Record::RunFinished { outcome } => self.phase = Phase::Finished(*outcome),
            // What the run saw, not where it stands.
            Record::Checked { .. } | Record::Retrying { .. } | Record::Replicas { .. } => {}
        }
    }

    /// The step a person would call "current": the first not finished one.
    pub fn current_step(&self) -> Option<&StepRun> {
        match self.phase {
            Phase::RollingBack => self.steps.iter().rev().find(|s| {
                matches!(
                    s.state,
                    StepState::Done
                        | StepState::Failed
                        | StepState::Started
                        | StepState::Undoing
                        | StepState::UndoFailed
                )
            }),
            _ => self
                .steps
                .iter()
                .find(|s| !matches!(s.state, StepState::Done | StepState::Skipped)),
        }
    }

    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Finished(_))
    }

    /// Forward, stopped after a failure with `on_failure = "stop"`.
    pub fn is_stopped(&self) -> bool {
        self.phase == Phase::Forward && self.steps.iter().any(|s| s.state == StepState::Failed)
    }
}
