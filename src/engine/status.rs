//! `ferry status`: every run in the state dir, newest first, folded from its journal, with
//! the exact command that continues a failed, stopped or interrupted run.

use std::path::Path;

use super::journal;
use super::lock::read_owner;
use super::records::{Ending, Phase, RunState};
use crate::infra::process::pid_alive;
use crate::report::views::status::{RunStatus, RunSummary, StepSummary};

pub fn load(state_dir: &Path, run_id: &str) -> anyhow::Result<RunState> {
    let p = super::runs_dir(state_dir)
        .join(run_id)
        .join("journal.jsonl");
    if !p.exists() {
        anyhow::bail!("no run `{run_id}` in {}", state_dir.display());
    }
    let recs = journal::read(&p)?;
    RunState::fold(&recs).ok_or_else(|| anyhow::anyhow!("{} has no run record", p.display()))
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
        RunStatus::Running | RunStatus::RolledBack => None,
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

/// The newest run that is not finished (what `ferry resume` picks with no id).
pub fn newest_unfinished(state_dir: &Path) -> Option<String> {
    run_ids(state_dir)
        .into_iter()
        .find(|id| load(state_dir, id).is_ok_and(|s| !s.is_finished()))
}
