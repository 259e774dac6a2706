//! `ferry status`: every run in the state dir, newest first, folded from its journal, with
//! the exact command that continues a failed, stopped or interrupted run.

use std::path::{Path, PathBuf};

use super::journal;
use super::lock::read_owner;
use super::records::{Ending, Phase, RunState};
use crate::infra::process::pid_alive;
use crate::report::views::status::{RunStatus, RunSummary, StepSummary};

/// Why a run cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("no run `{run_id}` in {state_dir}")]
    Missing { run_id: String, state_dir: String },
    /// The journal is corrupt (a bad line before the last one), empty, or has no run record:
    /// what the run did cannot be known from it, so it is neither resumed nor rolled back.
    #[error("run {run_id}'s journal is corrupt: {reason}")]
    Corrupt {
        run_id: String,
        path: PathBuf,
        reason: String,
        /// The records before the corruption, folded (for status), when there is a run record.
        partial: Option<Box<RunState>>,
    },
    #[error(transparent)]
    Io(#[from] anyhow::Error),
}

impl LoadError {
    /// How to look at a corrupt journal (and what ferry will not do with it).
    pub fn inspect_hint(path: &Path) -> String {
        format!(
            "inspect it with `cat -A {}`; ferry will neither resume nor roll back this run: \
             undo or finish its steps by hand, then move its directory out of {}",
            path.display(),
            path.parent()
                .and_then(Path::parent)
                .unwrap_or(Path::new("runs"))
                .display()
        )
    }
}

pub fn load(state_dir: &Path, run_id: &str) -> Result<RunState, LoadError> {
    let p = super::runs_dir(state_dir)
        .join(run_id)
        .join("journal.jsonl");
    if !p.exists() {
        return Err(LoadError::Missing {
            run_id: run_id.into(),
            state_dir: state_dir.display().to_string(),
        });
    }
    let corrupt = |reason: String, partial: Option<RunState>| LoadError::Corrupt {
        run_id: run_id.into(),
        path: p.clone(),
        reason,
        partial: partial.map(Box::new),
    };
    let recs = match journal::read(&p) {
        Ok(recs) => recs,
        Err(e) => {
            return Err(match e.downcast::<journal::Corrupt>() {
                Ok(c) => corrupt(c.to_string(), RunState::fold(&c.valid)),
                Err(e) => LoadError::Io(e),
            });
        }
    };
    if recs.is_empty() {
        return Err(corrupt(format!("{} is empty", p.display()), None));
    }
    RunState::fold(&recs).ok_or_else(|| {
        corrupt(
            format!("{} does not start with a run record", p.display()),
            None,
        )
    })
}

/// Run ids, newest first (ids sort by their start time).
pub fn run_ids(state_dir: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(super::runs_dir(state_dir))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("journal.jsonl").exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    ids.sort();
    ids.reverse();
    ids
}

pub fn summarize(state_dir: &Path, st: &RunState) -> RunSummary {
    let id = &st.meta.run_id;
    let live = read_owner(state_dir)
        .is_some_and(|o| &o.run_id == id && pid_alive(o.pid) && o.host == super::hostname());
    let state = match st.phase {
        Phase::Finished(Ending::Done) => RunStatus::Done,
        Phase::Finished(Ending::RolledBack) => RunStatus::RolledBack,
        Phase::Finished(Ending::RollbackIncomplete) => RunStatus::RollbackIncomplete,
        _ if live => RunStatus::Running,
        Phase::RollingBack => RunStatus::RollingBack,
        Phase::Forward if st.is_stopped() => RunStatus::Stopped,
        Phase::Forward => RunStatus::Interrupted,
    };
    let next = match state {
        RunStatus::Interrupted | RunStatus::RollingBack => Some(format!("ferry resume {id}")),
        RunStatus::Stopped => Some(format!("ferry resume {id}   # or: ferry rollback {id}")),
        RunStatus::RollbackIncomplete => Some(format!(
            "ferry rollback {id}   # after fixing the step that failed to undo"
        )),
        RunStatus::Done => Some(format!("ferry rollback {id}   # to undo it")),
        RunStatus::Running | RunStatus::RolledBack | RunStatus::Corrupt => None,
    };
    RunSummary {
        run_id: id.clone(),
        playbook: st.meta.playbook_name.clone(),
        playbook_path: st.meta.playbook.display().to_string(),
        target: st.meta.target.as_ref().map(|t| t.display().to_string()),
        started_at: st.meta.started_at.clone(),
        state,
        current_step: if st.is_finished() {
            None
        } else {
            st.current_step().map(|s| s.id.clone())
        },
        last_error: st.last_error.clone(),
        next,
        steps: st
            .steps
            .iter()
            .map(|s| StepSummary {
                id: s.id.clone(),
                state: s.state,
                error: s.error.clone(),
            })
            .collect(),
    }
}

/// The summary of a run whose journal is corrupt: what the records before the corruption
/// say, state `corrupt`, and how to inspect it.
pub fn summarize_corrupt(state_dir: &Path, e: &LoadError) -> Option<RunSummary> {
    let LoadError::Corrupt {
        run_id,
        path,
        reason,
        partial,
    } = e
    else {
        return None;
    };
    let mut s = match partial {
        Some(st) => summarize(state_dir, st),
        None => RunSummary {
            run_id: run_id.clone(),
            playbook: "?".into(),
            playbook_path: String::new(),
            target: None,
            started_at: "?".into(),
            state: RunStatus::Corrupt,
            current_step: None,
            last_error: None,
            next: None,
            steps: vec![],
        },
    };
    s.state = RunStatus::Corrupt;
    s.current_step = None;
    s.last_error = Some(reason.clone());
    s.next = Some(LoadError::inspect_hint(path));
    Some(s)
}

/// The newest run that is not finished (what `ferry resume` picks with no id). A corrupt
/// run newer than it is an error: what it did is unknown, and silently continuing an older
/// run (perhaps of another playbook) instead is not what the operator meant.
pub fn newest_unfinished(state_dir: &Path) -> Result<Option<String>, LoadError> {
    for id in run_ids(state_dir) {
        match load(state_dir, &id) {
            Ok(s) if s.is_finished() => {}
            Ok(_) => return Ok(Some(id)),
            Err(e @ LoadError::Corrupt { .. }) => return Err(e),
            Err(_) => {}
        }
    }
    Ok(None)
}
