//! Typed events: the only way the engine and steps tell the world anything.
//!
//! The JSON form (`--format json`, one object per line) is a stable interface: field names
//! are documented in the README and only ever added to. Every event carries `event` (the
//! variant, snake_case) and `ts` (RFC 3339, UTC).

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Pass,
    Fail,
    Warn,
    /// Its inputs only exist after an earlier step ran.
    Deferred,
    /// Waits for a person (approval steps in dry-run).
    Pending,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Done,
    /// Dry-run: every check of the step passed (or was deferred/pending).
    Checked,
    /// Already applied before this run (its `done_if` probe said so); never undone.
    Skipped,
    Failed,
    Undone,
    UndoFailed,
    Interrupted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    RunStarted {
        run_id: String,
        playbook: String,
        target: Option<String>,
        mode: String,
        steps: usize,
    },
    StepStarted {
        step: String,
        kind: String,
        index: usize,
        total: usize,
        description: String,
        phase: String,
    },
    Check {
        step: String,
        check: String,
        status: CheckStatus,
        detail: String,
    },
    Output {
        step: String,
        stream: Stream,
        line: String,
    },
    Progress {
        step: String,
        done: u64,
        total: u64,
        unit: String,
    },
    Log {
        step: Option<String>,
        level: String,
        message: String,
    },
    StepFinished {
        step: String,
        status: StepStatus,
        elapsed_ms: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    RollbackStarted {
        run_id: String,
        reason: String,
    },
    RunFinished {
        run_id: String,
        outcome: String,
        exit_code: i32,
        elapsed_ms: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        message: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        hint: Option<String>,
    },
}

impl Event {
    pub fn log(step: Option<&str>, level: &str, message: impl Into<String>) -> Self {
        Event::Log {
            step: step.map(str::to_owned),
            level: level.into(),
            message: message.into(),
        }
    }
}

/// Where events go. Implemented by the reporter fan-out in `report/mod.rs` and by test sinks.
pub trait Sink: Send + Sync {
    fn emit(&self, event: Event);
}
