//! The top-level error and its mapping to the documented exit codes (README "Exit codes").
//!
//! Invariant: every failure that reaches `main` is one of these variants, so the exit code a
//! script sees is decided here and only here.

use std::fmt;

use crate::report::RunOutcome;

/// Exit codes of run/resume/rollback (DESIGN §3). `check` uses 0/1/3 with its own meaning.
pub mod code {
    pub const DONE: i32 = 0;
    pub const FAILED: i32 = 1;
    pub const INVALID: i32 = 2;
    pub const PRECONDITION: i32 = 3;
    pub const LOCKED: i32 = 4;
    pub const INTERRUPTED: i32 = 5;
    pub const ROLLBACK_INCOMPLETE: i32 = 6;
    pub const JOURNAL: i32 = 7;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input: nothing ran. `main` prints it as `error: {message}`, then the hint.
    #[error("{message}")]
    Invalid {
        message: String,
        hint: Option<String>,
    },
    /// Bad input: nothing ran. Diagnostics already rendered for the terminal (each starts
    /// with `error: `, a summary line ends them): `main` prints them as they are.
    #[error("{0}")]
    Diagnostics(String),
    /// A read-only check failed before anything changed.
    #[error("{0}")]
    Precondition(String),
    /// A step failed; the run was rolled back or stopped per `on_failure`.
    #[error("step `{step}` failed: {error}")]
    StepFailed {
        step: String,
        kind: String,
        /// The step's `describe()`.
        describe: String,
        /// Why it failed (redacted).
        error: String,
        /// What the run did about it and what to run next.
        hint: String,
    },
    /// Another run holds the lock.
    #[error("{0}")]
    Locked(String),
    /// Stopped at a checkpoint by a signal; resumable.
    #[error("run {run_id} interrupted; resume with `ferry resume {run_id}`")]
    Interrupted { run_id: String },
    /// Stopped by a signal in preflight (or a dry-run's checks), before any step ran:
    /// nothing changed, no journal was written, nothing to resume.
    #[error(
        "run {run_id} stopped by a signal during its checks, before any step ran; nothing was changed and there is nothing to resume"
    )]
    StoppedInChecks { run_id: String },
    /// The deployment's database lock was lost mid-run (its session ended or stopped
    /// answering): stopped at the next checkpoint or step boundary, as on a signal, since
    /// another operator's run may now start.
    #[error(
        "run {run_id} stopped: the database lock in the fhir database was lost ({why}); another ferry run could start against this deployment"
    )]
    LockLost {
        run_id: String,
        why: String,
        /// Whether a step had started (resume continues), or it stopped during the checks.
        resumable: bool,
    },
    /// The run's journal could not be written (no space left on device, an I/O error):
    /// stopped before the next effect, nothing rolled back (that could not be journaled).
    #[error("{message}")]
    JournalWrite {
        message: String,
        /// The run exists and `ferry resume` continues it once the cause is fixed; None: it
        /// could not even start (nothing ran, nothing was kept).
        run_id: Option<String>,
    },
    /// Rollback could not finish; a person must look.
    #[error("{message}")]
    RollbackIncomplete { message: String, hint: String },
    /// Anything else (I/O on the state dir, a bug): treated as a failure.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl Error {
    /// An error from the journal: [`Error::JournalWrite`] when it is a write failure.
    pub fn journal(e: anyhow::Error, run_id: Option<&str>) -> Error {
        match e.downcast_ref::<crate::engine::journal::WriteFailed>() {
            Some(w) => Error::journal_write(w, run_id),
            None => Error::Other(e),
        }
    }

    pub fn journal_write(w: &crate::engine::journal::WriteFailed, run_id: Option<&str>) -> Error {
        let message = match run_id {
            Some(id) => format!(
                "run {id} stopped: {w}; it stopped before the next effect and rolled nothing back (that could not be journaled)"
            ),
            None => format!("cannot start the run: {w}; nothing ran"),
        };
        Error::JournalWrite {
            message,
            run_id: run_id.map(str::to_owned),
        }
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Invalid { .. } | Error::Diagnostics(_) => code::INVALID,
            Error::Precondition(_) => code::PRECONDITION,
            Error::StepFailed { .. } | Error::Other(_) => code::FAILED,
            Error::Locked(_) => code::LOCKED,
            Error::Interrupted { .. } | Error::StoppedInChecks { .. } | Error::LockLost { .. } => {
                code::INTERRUPTED
            }
            Error::RollbackIncomplete { .. } => code::ROLLBACK_INCOMPLETE,
            Error::JournalWrite { .. } => code::JOURNAL,
        }
    }

    /// The `run_finished` outcome of a run that ended with this error.
    pub fn outcome(&self) -> RunOutcome {
        match self {
            Error::Invalid { .. } | Error::Diagnostics(_) => RunOutcome::Invalid,
            Error::Precondition(_) => RunOutcome::PreconditionFailed,
            Error::StepFailed { .. } | Error::Other(_) => RunOutcome::Failed,
            Error::Locked(_) => RunOutcome::Locked,
            Error::Interrupted { .. } | Error::StoppedInChecks { .. } | Error::LockLost { .. } => {
                RunOutcome::Interrupted
            }
            Error::RollbackIncomplete { .. } => RunOutcome::RollbackIncomplete,
            Error::JournalWrite { .. } => RunOutcome::Failed,
        }
    }

    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Invalid { hint, .. } => hint.clone(),
            Error::StepFailed { hint, .. } | Error::RollbackIncomplete { hint, .. } => {
                Some(hint.clone())
            }
            Error::Locked(_) => {
                Some("wait for the other run, or `ferry unlock` if its owner is dead".into())
            }
            Error::JournalWrite { run_id, .. } => Some(match run_id {
                Some(id) => format!(
                    "free space on (or repair) the state dir's file system, then `ferry resume {id}`; the step that was running when the journal failed is re-entered (its probe decides whether it runs again)"
                ),
                None => {
                    "free space on (or repair) the state dir's file system and run again".into()
                }
            }),
            Error::LockLost {
                run_id, resumable, ..
            } => Some(if *resumable {
                format!(
                    "make sure no other ferry is running against this deployment (`ferry status`, and sessions named `ferry pid …` in pg_stat_activity) and that the database is reachable, then `ferry resume {run_id}`"
                )
            } else {
                "nothing ran; make sure the database is reachable and no other ferry is running against this deployment, then run again".into()
            }),
            _ => None,
        }
    }

    /// Whether the text is printed as it is (rendered diagnostics) rather than after
    /// `error: `.
    pub fn is_rendered(&self) -> bool {
        matches!(self, Error::Diagnostics(_))
    }

    pub fn invalid(msg: impl fmt::Display) -> Self {
        Error::Invalid {
            message: msg.to_string(),
            hint: None,
        }
    }

    pub fn invalid_with_hint(msg: impl fmt::Display, hint: impl fmt::Display) -> Self {
        Error::Invalid {
            message: msg.to_string(),
            hint: Some(hint.to_string()),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
