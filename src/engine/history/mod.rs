//! The change record of a run (`ferry report`): the journal's records folded with the time
//! each was written, into what happened when — each step's applies and undos as spans,
//! its checks and retries, the rollback, resumes, interruptions and the downtime spans
//! (`replicas` records). Where the run stands comes from `status` (the same fold `ferry
//! status` shows), so the two never disagree.
//!
//! Invariants: a journal that is unfinished, corrupt or has no times still gives a record;
//! it says so (`state`, `corrupt`, `untimed`) instead of guessing. Spans never end before
//! they begin, and an unended span ends at the journal's last record (`SpanEnd::Open`).

mod fold;
#[cfg(test)]
mod tests;

use std::path::Path;

use super::journal::{self, Entry};
use super::records::{Ending, Phase, Record, RunState};
use super::status::{self, LoadError};
use crate::report::views::record::{ChangeRecord, StepRecord, VarValue};
use crate::report::views::status::RunStatus;

/// Reads run `run_id` of `state_dir`; only a missing run or an unreadable file is an error.
pub fn load(state_dir: &Path, run_id: &str) -> Result<ChangeRecord, LoadError> {
    let summary = match status::load(state_dir, run_id) {
        Ok(st) => status::summarize(state_dir, &st),
        Err(e @ LoadError::Corrupt { .. }) => status::summarize_corrupt(state_dir, &e).ok_or(e)?,
        Err(e) => return Err(e),
    };
    let path = crate::engine::runs_dir(state_dir)
        .join(run_id)
        .join("journal.jsonl");
    let entries = match journal::read_entries(&path) {
        Ok(es) => es,
        Err(e) => match e.downcast::<journal::Corrupt>() {
            Ok(c) => c
                .valid
                .into_iter()
                .zip(c.valid_at)
                .map(|(rec, at)| Entry { at, rec })
                .collect(),
            Err(e) => return Err(LoadError::Io(e)),
        },
    };
    let recs: Vec<Record> = entries.iter().map(|e| e.rec.clone()).collect();
    let folded = RunState::fold(&recs);
    let mut r = fold::fold(run_id, &entries, folded.as_ref());
    r.state = summary.state;
    r.next = summary.next;
    r.last_error = summary.last_error.clone();
    if summary.state == RunStatus::Corrupt {
        r.corrupt = summary.last_error;
    }
    if let Some(st) = &folded {
        r.vars = vars(&path.with_file_name("playbook.toml"), &st.meta.cli_vars);
    }
    r.exit_code = exit_code(r.state, folded.as_ref());
    r.outcome = outcome(r.state, folded.as_ref());
    Ok(r)
}

/// The playbook's declared vars (from the copy the run kept) with the value the run used:
/// `--var` as given, else the default. Values are shown redacted, and any var whose name
/// says it is a secret is masked whatever its value.
fn vars(copy: &Path, given: &[(String, String)]) -> Vec<VarValue> {
    use crate::report::redact::redact;
    let declared: Vec<(String, Option<String>)> = std::fs::read_to_string(copy)
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok())
        .and_then(|t| t.get("vars")?.as_table().cloned())
        .map(|vars| {
            vars.into_iter()
                .map(|(k, v)| {
                    let default = match &v {
                        toml::Value::Table(t) => t.get("default").cloned(),
                        v => Some(v.clone()),
                    };
                    let text = default.map(|d| match d {
                        toml::Value::String(s) => s,
                        d => d.to_string(),
                    });
                    (k, text)
                })
                .collect()
        })
        .unwrap_or_default();
    let mut out: Vec<VarValue> = declared
        .into_iter()
        .map(|(name, default)| {
            let cli = given.iter().rev().find(|(k, _)| *k == name);
            let (value, source) = match (cli, default) {
                (Some((_, v)), _) => (v.clone(), "--var"),
                (None, Some(d)) => (d, "default"),
                (None, None) => (String::new(), "not set"),
            };
            VarValue {
                name,
                value,
                source,
            }
        })
        .collect();
    for (k, v) in given {
        if !out.iter().any(|o| &o.name == k) {
            out.push(VarValue {
                name: k.clone(),
                value: v.clone(),
                source: "--var",
            });
        }
    }
    for v in out.iter_mut() {
        let lower = v.name.to_ascii_lowercase();
        if ["password", "secret", "token", "passwd"]
            .iter()
            .any(|w| lower.contains(w))
        {
            v.value = "***".into();
        }
        v.value = redact(&v.value).into_owned();
    }
    out
}

/// The target's `name` as its file says now (its stem when the file is gone or unreadable).
pub(super) fn target_name(path: &Path) -> String {
    let stem = || {
        path.file_stem()
            .map_or("?".into(), |s| s.to_string_lossy().into_owned())
    };
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok())
        .and_then(|t| t.get("name")?.as_str().map(str::to_owned))
        .unwrap_or_else(stem)
}

/// What ferry exited with for the last command on the run (the documented exit codes).
fn exit_code(state: RunStatus, st: Option<&RunState>) -> Option<i32> {
    let failed = st.is_some_and(|s| s.steps.iter().any(|s| s.error.is_some()));
    match state {
        RunStatus::Done => Some(0),
        // A step failed and the run was undone (1); undone by request, `ferry rollback` (0).
        RunStatus::RolledBack => Some(if failed { 1 } else { 0 }),
        RunStatus::RollbackIncomplete => Some(6),
        RunStatus::Stopped => Some(1),
        RunStatus::Interrupted if st.is_some_and(|s| s.interrupted) => Some(5),
        RunStatus::RollingBack if st.is_some_and(|s| s.interrupted) => Some(5),
        _ => None,
    }
}

fn outcome(state: RunStatus, st: Option<&RunState>) -> String {
    let interrupted = st.is_some_and(|s| s.interrupted);
    match (state, st.map(|s| s.phase)) {
        (RunStatus::Done, _) => "done: every step completed".into(),
        (RunStatus::RolledBack, _) => "rolled back: the completed steps were undone".into(),
        (RunStatus::RollbackIncomplete, _) => {
            "rollback incomplete: a step could not be undone; it needs a person".into()
        }
        (RunStatus::Stopped, _) => "stopped after a failed step (on_failure = \"stop\")".into(),
        (RunStatus::Running, _) => "still running: this record is not final".into(),
        (RunStatus::Corrupt, _) => {
            "unknown: the journal is corrupt; the record shows what came before the damage".into()
        }
        (_, Some(Phase::RollingBack)) if interrupted => {
            "interrupted during the rollback; resumable".into()
        }
        (_, Some(Phase::RollingBack)) => {
            "unfinished rollback: ferry stopped without a record of why (killed?)".into()
        }
        (_, Some(Phase::Finished(Ending::Done))) => "done".into(),
        _ if interrupted => "interrupted at a checkpoint; resumable".into(),
        _ => "unfinished: ferry stopped without a record of why (killed?)".into(),
    }
}

/// A step's outcome in words: its state, and what became of a failed or undone step.
pub(super) fn step_outcome(s: &StepRecord) -> String {
    use crate::report::views::status::StepState as S;
    let base = match s.state {
        S::Pending => "not run".to_owned(),
        S::Started => "unfinished (interrupted or killed during apply)".into(),
        S::Skipped => "skipped (already applied)".into(),
        S::Done => "done".into(),
        S::Failed => "failed".into(),
        S::Undoing => "undo unfinished".into(),
        S::Undone => match &s.undo_note {
            Some(why) => format!("not undone: {why}"),
            None => "rolled back".into(),
        },
        S::UndoFailed => "undo failed".into(),
    };
    match s.state {
        S::Failed | S::Pending | S::Skipped => base,
        _ if s.error.is_some() => format!("failed, then {base}"),
        _ => base,
    }
}
