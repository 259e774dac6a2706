//! Typed events: the only way the engine and steps tell the world anything.
//!
//! The JSON form (`--format json`, one object per line) is a stable interface: field names
//! are documented in the README and only ever added to. Every event carries `event` (the
//! variant, snake_case) and `ts` (RFC 3339, UTC).

use serde::{Deserialize, Serialize};

/// Also journaled (`checked` records), hence Deserialize.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

/// Which command a run is (`run_started.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Run,
    Resume,
    Rollback,
    #[serde(rename = "dry-run")]
    DryRun,
}

/// What a `step_started` begins: the step's apply, its undo, or (dry-run) its checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Apply,
    Rollback,
    Check,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Info,
    Warn,
    Error,
}

/// How a run ended (`run_finished.outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    Done,
    RolledBack,
    /// Dry-run: every check passed.
    ChecksPassed,
    Failed,
    Invalid,
    PreconditionFailed,
    Locked,
    Interrupted,
    RollbackIncomplete,
}

/// What a `progress` event counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    Replicas,
    #[serde(rename = "s")]
    Seconds,
    Rows,
}

/// The name each value has in the JSON events, for the human reporter.
macro_rules! wire_names {
    ($($ty:ty { $($v:ident => $s:literal),+ $(,)? })+) => {$(
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$v => $s),+
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )+};
}

wire_names! {
    Mode { Run => "run", Resume => "resume", Rollback => "rollback", DryRun => "dry-run" }
    Phase { Apply => "apply", Rollback => "rollback", Check => "check" }
    Level { Info => "info", Warn => "warn", Error => "error" }
    RunOutcome {
        Done => "done",
        RolledBack => "rolled_back",
        ChecksPassed => "checks_passed",
        Failed => "failed",
        Invalid => "invalid",
        PreconditionFailed => "precondition_failed",
        Locked => "locked",
        Interrupted => "interrupted",
        RollbackIncomplete => "rollback_incomplete",
    }
    Unit { Replicas => "replicas", Seconds => "s", Rows => "rows" }
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    RunStarted {
        run_id: String,
        playbook: String,
        target: Option<String>,
        mode: Mode,
        steps: usize,
    },
    StepStarted {
        step: String,
        kind: String,
        index: usize,
        total: usize,
        description: String,
        phase: Phase,
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
        unit: Unit,
    },
    Log {
        step: Option<String>,
        level: Level,
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
        outcome: RunOutcome,
        exit_code: i32,
        elapsed_ms: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        message: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        hint: Option<String>,
    },
}

impl Event {
    pub fn log(step: Option<&str>, level: Level, message: impl Into<String>) -> Self {
        Event::Log {
            step: step.map(str::to_owned),
            level,
            message: message.into(),
        }
    }
}

/// Where events go. Implemented by the reporter fan-out in `report/mod.rs` and by test sinks.
pub trait Sink: Send + Sync {
    fn emit(&self, event: Event);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's names, and the human reporter's `as_str` agrees with the JSON.
    #[test]
    fn wire_names_match_serde() {
        fn check<T: Serialize + std::fmt::Display>(all: &[T], want: &[&str]) {
            let got: Vec<String> = all.iter().map(|v| v.to_string()).collect();
            assert_eq!(got, want);
            for v in all {
                assert_eq!(serde_json::to_value(v).unwrap(), v.to_string());
            }
        }
        use Mode as M;
        check(
            &[M::Run, M::Resume, M::Rollback, M::DryRun],
            &["run", "resume", "rollback", "dry-run"],
        );
        check(
            &[Phase::Apply, Phase::Rollback, Phase::Check],
            &["apply", "rollback", "check"],
        );
        check(
            &[Level::Info, Level::Warn, Level::Error],
            &["info", "warn", "error"],
        );
        use RunOutcome as O;
        check(
            &[
                O::Done,
                O::RolledBack,
                O::ChecksPassed,
                O::Failed,
                O::Invalid,
                O::PreconditionFailed,
                O::Locked,
                O::Interrupted,
                O::RollbackIncomplete,
            ],
            &[
                "done",
                "rolled_back",
                "checks_passed",
                "failed",
                "invalid",
                "precondition_failed",
                "locked",
                "interrupted",
                "rollback_incomplete",
            ],
        );
        check(
            &[Unit::Replicas, Unit::Seconds, Unit::Rows],
            &["replicas", "s", "rows"],
        );
    }
}
