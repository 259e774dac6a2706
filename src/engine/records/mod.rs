//! Journal records and their fold into a run's state. The state of a run is exactly the
//! fold of its records: nothing else is consulted to decide what `resume` does.
//! This file: the records (what the journal holds); `fold.rs`: the fold.

mod fold;
#[cfg(test)]
mod tests;

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
    /// Who started it (the login name of ferry's user; absent in older journals).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub pid: u32,
    pub started_at: String,
    pub workdir: PathBuf,
}

#[cfg(test)]
impl RunMeta {
    /// A run of `steps` (kind exec, fingerprint `fp-<id>`) for the tests of the folds.
    pub(crate) fn example(steps: &[&str]) -> RunMeta {
        RunMeta {
            run_id: "20260101-000000.000-abcd".into(),
            playbook_name: "pb".into(),
            playbook: "pb.toml".into(),
            playbook_hash: "h".into(),
            target: None,
            target_hash: None,
            cli_vars: vec![],
            steps: steps
                .iter()
                .map(|s| StepMeta {
                    id: (*s).into(),
                    kind: "exec".into(),
                    fingerprint: format!("fp-{s}"),
                })
                .collect(),
            host: "host".into(),
            user: None,
            pid: 1,
            started_at: "2026-01-01T00:00:00Z".into(),
            workdir: "/".into(),
        }
    }
}

/// How a finished run ended, as its journal records it (`run_finished`'s `outcome` is the
/// event vocabulary, `report::RunOutcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
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
        /// Who continued the run (absent in older journals).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
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
        outcome: Ending,
    },
    /// A step's read-only checks as they answered (for the record; the fold ignores them):
    /// before the first apply of a run, or when a resumed or deferred step was reached.
    Checked {
        step: String,
        checks: Vec<CheckRecord>,
    },
    /// An attempt of a step's apply or verify failed and it is tried again (`retries`).
    Retrying {
        step: String,
        attempt: u32,
        error: String,
    },
    /// How many replicas of a service run now that a step changed them: `running = 0` starts
    /// a downtime, the next record with more ends it (what `ferry report` marks).
    Replicas {
        step: String,
        service: String,
        running: u32,
    },
}

pub use crate::report::views::record::CheckRecord;

/// Where a step stands; the same vocabulary `ferry status` shows.
pub use crate::report::views::status::StepState;

pub use fold::{Phase, RunState, StepRun};
