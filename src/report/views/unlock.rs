//! `ferry unlock`: what happened to the state dir's lock and, with `--target`, to the
//! deployment's database lock. A live owner is not a view: the command fails (exit 4).

use serde::Serialize;

use crate::report::view::{View, line};

#[derive(Debug, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum StateDirUnlock {
    NotLocked,
    /// The owner record named a process that is gone; it was cleared.
    ClearedStale {
        owner: String,
    },
}

#[derive(Debug, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum DatabaseUnlock {
    /// The target has no `[postgres.fhir]`, so ferry holds no database lock there.
    NoDatabase,
    Free,
    /// The holder's session was ended (`terminated` false: it was already gone).
    Released {
        holder: String,
        backend: i32,
        terminated: bool,
    },
}

#[derive(Debug, Serialize)]
pub struct UnlockView {
    pub state_dir: StateDirUnlock,
    pub database: Option<DatabaseUnlock>,
}

impl View for UnlockView {
    fn human(&self, out: &mut String) {
        match &self.state_dir {
            StateDirUnlock::NotLocked => line!(out, "the state dir was not locked"),
            StateDirUnlock::ClearedStale { owner } => {
                line!(out, "cleared a stale lock: {owner} is no longer running")
            }
        }
        match &self.database {
            None => {}
            Some(DatabaseUnlock::NoDatabase) => {
                line!(out, "the target has no [postgres.fhir]: no database lock")
            }
            Some(DatabaseUnlock::Free) => line!(out, "the database lock is free"),
            Some(DatabaseUnlock::Released {
                holder,
                backend,
                terminated,
            }) => {
                let how = if *terminated {
                    "terminated"
                } else {
                    "was already gone"
                };
                line!(
                    out,
                    "released the database lock of {holder}: backend {backend} {how}"
                )
            }
        }
    }
}
