//! `ferry status`: runs, newest first, with the command that continues each.

use serde::Serialize;

use crate::report::view::{View, line};

/// Where one run stands (`state` in `ferry status --format json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Interrupted,
    Stopped,
    RollingBack,
    Done,
    RolledBack,
    RollbackIncomplete,
    /// The journal is corrupt (a bad line before the last), empty or without a run record:
    /// never resumed nor rolled back; `next` says how to inspect it.
    Corrupt,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Interrupted => "interrupted",
            RunStatus::Stopped => "stopped",
            RunStatus::RollingBack => "rolling_back",
            RunStatus::Done => "done",
            RunStatus::RolledBack => "rolled_back",
            RunStatus::RollbackIncomplete => "rollback_incomplete",
            RunStatus::Corrupt => "corrupt",
        }
    }
}

/// Where one step of a run stands, as its journal says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    Pending,
    /// Apply began and did not finish: resume re-enters it with its checkpoint.
    Started,
    Skipped,
    Done,
    Failed,
    Undoing,
    Undone,
    UndoFailed,
}

impl StepState {
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Pending => "pending",
            StepState::Started => "started",
            StepState::Skipped => "skipped",
            StepState::Done => "done",
            StepState::Failed => "failed",
            StepState::Undoing => "undoing",
            StepState::Undone => "undone",
            StepState::UndoFailed => "undo_failed",
        }
    }
}

#[derive(Debug, Serialize)]
pub struct RunSummary {
    pub run_id: String,
    pub playbook: String,
    pub playbook_path: String,
    pub target: Option<String>,
    pub started_at: String,
    pub state: RunStatus,
    pub current_step: Option<String>,
    pub last_error: Option<String>,
    /// The exact command that continues (or undoes) the run.
    pub next: Option<String>,
    pub steps: Vec<StepSummary>,
}

#[derive(Debug, Serialize)]
pub struct StepSummary {
    pub id: String,
    pub state: StepState,
    pub error: Option<String>,
}

/// The answer of `ferry status [RUN_ID]`. JSON: the array of runs.
#[derive(Debug)]
pub struct StatusView {
    pub state_dir: String,
    pub runs: Vec<RunSummary>,
    /// One run was asked for: list its steps too.
    pub detail: bool,
}

impl Serialize for StatusView {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.runs.serialize(s)
    }
}

impl View for StatusView {
    fn human(&self, out: &mut String) {
        if self.runs.is_empty() {
            line!(out, "no runs in {}", self.state_dir);
        }
        for r in &self.runs {
            let cur = r
                .current_step
                .as_deref()
                .map(|s| format!(" at {s}"))
                .unwrap_or_default();
            line!(
                out,
                "{}  {:<20} {}{cur}  ({})",
                r.run_id,
                r.state.as_str(),
                r.playbook,
                r.started_at
            );
            if let Some(e) = &r.last_error {
                line!(out, "    error: {e}");
            }
            if let Some(n) = &r.next {
                line!(out, "    next:  {n}");
            }
            if self.detail {
                for s in &r.steps {
                    line!(out, "    {:<12} {}", s.state.as_str(), s.id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_name(v: impl Serialize) -> String {
        serde_json::to_value(v)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    #[test]
    fn human_names_are_the_json_names() {
        use RunStatus as R;
        use StepState as S;
        for r in [
            R::Running,
            R::Interrupted,
            R::Stopped,
            R::RollingBack,
            R::Done,
            R::RolledBack,
            R::RollbackIncomplete,
            R::Corrupt,
        ] {
            assert_eq!(json_name(r), r.as_str());
        }
        for s in [
            S::Pending,
            S::Started,
            S::Skipped,
            S::Done,
            S::Failed,
            S::Undoing,
            S::Undone,
            S::UndoFailed,
        ] {
            assert_eq!(json_name(s), s.as_str());
        }
    }
}
