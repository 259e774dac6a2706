//! `ferry report RUN_ID`: the change record of one run, as plain data folded from its
//! journal with the time of every record (`engine::history` builds it; `report::record`
//! renders it as HTML, Markdown or JSON). Every string in it is as the journal has it;
//! the renderers escape and redact.

use serde::{Deserialize, Serialize};

pub use super::status::{RunStatus, StepState};
use crate::report::CheckStatus;

/// One check's answer, as journaled (`checked` records; details redacted before they are
/// written) and shown.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckRecord {
    pub name: String,
    pub status: CheckStatus,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct ChangeRecord {
    pub run_id: String,
    pub state: RunStatus,
    /// What ferry exited with for the last command that worked on the run (None: not
    /// known, e.g. still running, killed, or a corrupt journal).
    pub exit_code: Option<i32>,
    /// One sentence: how the run ended.
    pub outcome: String,
    pub next: Option<String>,
    pub last_error: Option<String>,
    /// Why the journal cannot be trusted past some line (the record shows what came before).
    pub corrupt: Option<String>,
    pub user: Option<String>,
    pub host: String,
    pub pid: u32,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    pub duration_ms: Option<u64>,
    pub playbook: Named,
    pub target: Option<Named>,
    pub vars: Vec<VarValue>,
    pub steps: Vec<StepRecord>,
    /// Every rollback begun on the run (after a failure, `ferry rollback`, a resumed one).
    pub rollbacks: Vec<Rollback>,
    /// Later commands on the run (`ferry resume`, `ferry rollback`).
    pub sessions: Vec<Session>,
    pub interruptions: Vec<Interruption>,
    pub downtime: Vec<Downtime>,
    /// The journal has no times (format 1): no durations, no timeline.
    pub untimed: bool,
    pub generated_at: String,
}

/// A file the run used: its name (playbook name, target `name`), path and sha256.
#[derive(Debug, Serialize)]
pub struct Named {
    pub name: String,
    pub path: String,
    pub hash: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct VarValue {
    pub name: String,
    pub value: String,
    /// `--var`, `default`, or `not set`.
    pub source: &'static str,
}

#[derive(Debug, Serialize)]
pub struct StepRecord {
    pub id: String,
    pub kind: String,
    pub state: StepState,
    pub checks: Vec<CheckRecord>,
    /// Apply and undo, in the order they happened (a resumed step has several applies).
    pub spans: Vec<Span>,
    pub retries: Vec<Retry>,
    pub error: Option<String>,
    /// Why an undo was skipped (the step cannot be undone, nothing to undo).
    pub undo_note: Option<String>,
    /// The state in words, with what became of a failed or undone step.
    pub outcome: String,
}

impl StepRecord {
    /// Time spent applying (all attempts), when the journal has times.
    pub fn apply_ms(&self) -> Option<u64> {
        self.total(SpanKind::Apply)
    }

    pub fn undo_ms(&self) -> Option<u64> {
        self.total(SpanKind::Undo)
    }

    /// The apply time as a person should read it: an unended span (ferry killed, or still
    /// running) only says how long it ran at least.
    pub fn apply_text(&self, fmt: impl Fn(u64) -> String) -> String {
        match self.apply_ms() {
            None => "–".into(),
            Some(ms) if self.spans.iter().any(|s| s.end == SpanEnd::Open) => {
                format!("≥ {} (end not recorded)", fmt(ms))
            }
            Some(ms) => fmt(ms),
        }
    }

    fn total(&self, kind: SpanKind) -> Option<u64> {
        let spans: Vec<&Span> = self.spans.iter().filter(|s| s.kind == kind).collect();
        (!spans.is_empty()).then(|| spans.iter().map(|s| s.to_ms - s.from_ms).sum())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SpanKind {
    Apply,
    Undo,
}

/// How a span ended: the colour of its bar on the timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SpanEnd {
    Done,
    Skipped,
    Failed,
    Interrupted,
    Undone,
    UndoFailed,
    /// No record ends it: still running, or ferry was killed.
    Open,
}

impl SpanEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            SpanEnd::Done => "done",
            SpanEnd::Skipped => "skipped",
            SpanEnd::Failed => "failed",
            SpanEnd::Interrupted => "interrupted",
            SpanEnd::Undone => "rolled back",
            SpanEnd::UndoFailed => "undo failed",
            SpanEnd::Open => "unfinished",
        }
    }
}

/// Times are milliseconds since the run's first record; `at` is the UTC time it began.
#[derive(Debug, Serialize)]
pub struct Span {
    pub kind: SpanKind,
    pub from_ms: u64,
    pub to_ms: u64,
    pub at: Option<String>,
    pub end: SpanEnd,
}

#[derive(Debug, Serialize)]
pub struct Retry {
    pub attempt: u32,
    pub error: String,
    pub at: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Rollback {
    pub reason: String,
    pub at: Option<String>,
    pub at_ms: u64,
}

#[derive(Debug, Serialize)]
pub struct Session {
    pub at_ms: u64,
    pub user: Option<String>,
    pub host: String,
    pub pid: u32,
    pub at: String,
    pub accepted_changes: bool,
}

#[derive(Debug, Serialize)]
pub struct Interruption {
    pub step: Option<String>,
    pub at: Option<String>,
    pub at_ms: u64,
}

/// The service had no running replica from `from_ms` to `to_ms` (None: not started again
/// by the end of the journal).
#[derive(Debug, Serialize)]
pub struct Downtime {
    pub service: String,
    pub from_ms: u64,
    pub to_ms: Option<u64>,
    pub stopped_by: String,
    pub started_by: Option<String>,
}
