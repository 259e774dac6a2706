//! The top-level error and its mapping to the documented exit codes (README "Exit codes").
//!
//! Invariant: every failure that reaches `main` is one of these variants, so the exit code a
//! script sees is decided here and only here.

use std::fmt;

/// Exit codes of run/resume/rollback (DESIGN §3). `check` uses 0/1/3 with its own meaning.
pub mod code {
    pub const DONE: i32 = 0;
    pub const FAILED: i32 = 1;
    pub const INVALID: i32 = 2;
    pub const PRECONDITION: i32 = 3;
    pub const LOCKED: i32 = 4;
    pub const INTERRUPTED: i32 = 5;
    pub const ROLLBACK_INCOMPLETE: i32 = 6;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input: nothing ran. The message is already fully rendered (diagnostics included).
    #[error("{0}")]
    Invalid(String),
    /// A read-only check failed before anything changed.
    #[error("{0}")]
    Precondition(String),
    /// A step failed; the run was rolled back or stopped per `on_failure`.
    #[error("{message}")]
    StepFailed {
        message: String,
        hint: Option<String>,
    },
    /// Another run holds the lock.
    #[error("{0}")]
    Locked(String),
    /// Stopped at a checkpoint by a signal; resumable.
    #[error("run {run_id} interrupted; resume with `ferry resume {run_id}`")]
    Interrupted { run_id: String },
    /// Rollback could not finish; a person must look.
    #[error("{message}")]
    RollbackIncomplete { message: String, hint: String },
    /// Anything else (I/O on the state dir, a bug): treated as a failure.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Invalid(_) => code::INVALID,
            Error::Precondition(_) => code::PRECONDITION,
            Error::StepFailed { .. } | Error::Other(_) => code::FAILED,
            Error::Locked(_) => code::LOCKED,
            Error::Interrupted { .. } => code::INTERRUPTED,
            Error::RollbackIncomplete { .. } => code::ROLLBACK_INCOMPLETE,
        }
    }

    pub fn hint(&self) -> Option<String> {
        match self {
            Error::StepFailed { hint, .. } => hint.clone(),
            Error::RollbackIncomplete { hint, .. } => Some(hint.clone()),
            Error::Locked(_) => {
                Some("wait for the other run, or `ferry unlock` if its owner is dead".into())
            }
            _ => None,
        }
    }

    pub fn invalid(msg: impl fmt::Display) -> Self {
        Error::Invalid(msg.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
