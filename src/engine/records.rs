//! Journal records and their fold into a run's state. The state of a run is exactly the
//! fold of its records: nothing else is consulted to decide what `resume` does.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepMeta {
    pub id: String,
    pub kind: String,
    pub fingerprint: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunMeta {
    pub run_id: String,
    pub playbook_name: String,
    pub playbook: PathBuf,
    pub playbook_hash: String,
    pub target: Option<PathBuf>,
    /// sha256 of the target file when the run started (absent in journals written before
    /// ferry recorded it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_hash: Option<String>,
    /// `--var` values as given (the playbook is re-resolved from them on resume).
    pub cli_vars: Vec<(String, String)>,
    pub steps: Vec<StepMeta>,
    pub host: String,
    pub pid: u32,
    pub started_at: String,
    pub workdir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Done,
    RolledBack,
    RollbackIncomplete,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    RunStarted(Box<RunMeta>),
    Resumed {
        pid: u32,
        host: String,
        at: String,
        accepted_changes: bool,
    },
    StepStarted {
        step: String,
    },
    StepSkipped {
        step: String,
    },
    Checkpoint {
        step: String,
        data: serde_json::Value,
    },
    ChildStarted {
        step: String,
        pid: u32,
        ticks: u64,
    },
    ChildExited {
        step: String,
        pid: u32,
    },
    StepDone {
        step: String,
    },
    StepFailed {
        step: String,
        error: String,
    },
    RollbackStarted {
        reason: String,
    },
    UndoStarted {
        step: String,
    },
    StepUndone {
        step: String,
    },
    UndoSkipped {
        step: String,
        why: String,
    },
    UndoFailed {
        step: String,
        error: String,
    },
    Interrupted {
        step: Option<String>,
    },
    RunFinished {
        outcome: Outcome,
    },
}

/// Where a step stands; the same vocabulary `ferry status` shows.
pub use crate::report::views::status::StepState;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Forward,
    RollingBack,
    Finished(Outcome),
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
