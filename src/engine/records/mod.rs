//! Journal records and their fold into a run's state. The state of a run is exactly the
//! fold of its records: nothing else is consulted to decide what `resume` does.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepMeta {
    pub id: String,
    pub kind: String,
    pub fingerprint: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunMeta {
    pub run_id: String,
    pub playbook_name: String,
    pub playbook: PathBuf,
    pub playbook_hash: String,
    pub target: Option<PathBuf>,
    /// sha256 of the target file when the run started (absent in journals written before
    /// ferry recorded it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_hash: Option<String>,
    /// `--var` values as given (the playbook is re-resolved from them on resume).
    pub cli_vars: Vec<(String, String)>,
    pub steps: Vec<StepMeta>,
    pub host: String,
    /// Who started it (the login name of ferry's user; absent in older journals).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub pid: u32,
    pub started_at: String,
    pub workdir: PathBuf,
}

/// How a finished run ended, as its journal records it (`run_finished`'s `outcome` is the
/// event vocabulary, `report::RunOutcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    Done,
    RolledBack,
    RollbackIncomplete,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    RunStarted(Box<RunMeta>),
    Resumed {
        pid: u32,
        host: String,
        /// Who continued the run (absent in older journals).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        at: String,
        accepted_changes: bool,
    },
    StepStarted {
        step: String,
    },
    StepSkipped {
        step: String,
    },
    Checkpoint {
        step: String,
        data: serde_json::Value,
    },
    ChildStarted {
        step: String,
        pid: u32,
        ticks: u64,
    },
    ChildExited {
        step: String,
        pid: u32,
    },
    StepDone {
        step: String,
    },
    StepFailed {
        step: String,
        error: String,
    },
    RollbackStarted {
        reason: String,
    },
    UndoStarted {
        step: String,
    },
    StepUndone {
        step: String,
    },
    UndoSkipped {
        step: String,
        why: String,
    },
    UndoFailed {
        step: String,
        error: String,
    },
    Interrupted {
        step: Option<String>,
    },
    RunFinished {
        outcome: Ending,
    },
    /// A step's read-only checks as they answered (for the record; the fold ignores them):
    /// before the first apply of a run, or when a resumed or deferred step was reached.
    Checked {
        step: String,
        checks: Vec<CheckRecord>,
    },
    /// An attempt of a step's apply or verify failed and it is tried again (`retries`).
    Retrying {
        step: String,
        attempt: u32,
        error: String,
    },
    /// How many replicas of a service run now that a step changed them: `running = 0` starts
    /// a downtime, the next record with more ends it (what `ferry report` marks).
    Replicas {
        step: String,
        service: String,
        running: u32,
    },
}

pub use crate::report::views::record::CheckRecord;

/// Where a step stands; the same vocabulary `ferry status` shows.
pub use crate::report::views::status::StepState;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Forward,
    RollingBack,
    Finished(Ending),
}

#[derive(Debug, Clone)]
pub struct StepRun {
    pub id: String,
    pub state: StepState,
    pub checkpoint: Option<serde_json::Value>,
    pub error: Option<String>,
    /// Children started and not seen to exit: (pid, start ticks).
    pub children: BTreeMap<u32, u64>,
}

impl StepRun {
    pub fn pending(id: &str) -> StepRun {
        StepRun {
            id: id.into(),
            state: StepState::Pending,
            checkpoint: None,
            error: None,
            children: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RunState {
    pub meta: RunMeta,
    pub steps: Vec<StepRun>,
    pub phase: Phase,
    pub interrupted: bool,
    pub rollback_reason: Option<String>,
    pub last_error: Option<String>,
}

impl RunState {
    pub fn fold(records: &[Record]) -> Option<RunState> {
        let Some(Record::RunStarted(meta)) = records.first() else {
            return None;
        };
        let steps = meta.steps.iter().map(|s| StepRun::pending(&s.id)).collect();
        let mut st = RunState {
            meta: (**meta).clone(),
            steps,
            phase: Phase::Forward,
            interrupted: false,
            rollback_reason: None,
            last_error: None,
        };
        for r in &records[1..] {
            st.apply(r);
        }
        Some(st)
    }

    pub fn step_mut(&mut self, id: &str) -> Option<&mut StepRun> {
        self.steps.iter_mut().find(|s| s.id == id)
    }

    /// A finished step's children have exited (its command returned): nothing to reap.
    fn clear_children(&mut self, id: &str) {
        if let Some(s) = self.step_mut(id) {
            s.children.clear();
        }
    }

    fn set(&mut self, id: &str, state: StepState) {
        if let Some(s) = self.step_mut(id) {
            s.state = state;
        }
    }

    pub fn apply(&mut self, r: &Record) {
        match r {
            Record::RunStarted(_) => {}
            Record::Resumed { .. } => self.interrupted = false,
            Record::StepStarted { step } => self.set(step, StepState::Started),
            Record::StepSkipped { step } => self.set(step, StepState::Skipped),
            Record::Checkpoint { step, data } => {
                if let Some(s) = self.step_mut(step) {
                    s.checkpoint = Some(data.clone());
                }
            }
            Record::ChildStarted { step, pid, ticks } => {
                if let Some(s) = self.step_mut(step) {
                    s.children.insert(*pid, *ticks);
                }
            }
            Record::ChildExited { step, pid } => {
                if let Some(s) = self.step_mut(step) {
                    s.children.remove(pid);
                }
            }
            Record::StepDone { step } => {
                self.set(step, StepState::Done);
                self.clear_children(step);
            }
            Record::StepFailed { step, error } => {
                self.set(step, StepState::Failed);
                if let Some(s) = self.step_mut(step) {
                    s.error = Some(error.clone());
                }
                self.last_error = Some(format!("{step}: {error}"));
            }
            Record::RollbackStarted { reason } => {
                self.phase = Phase::RollingBack;
                self.rollback_reason = Some(reason.clone());
            }
            Record::UndoStarted { step } => self.set(step, StepState::Undoing),
            Record::StepUndone { step } | Record::UndoSkipped { step, .. } => {
                self.set(step, StepState::Undone)
            }
            Record::UndoFailed { step, error } => {
                self.set(step, StepState::UndoFailed);
                self.last_error = Some(format!("{step}: rollback failed: {error}"));
            }
            Record::Interrupted { .. } => self.interrupted = true,
            Record::RunFinished { outcome } => self.phase = Phase::Finished(*outcome),
            // What the run saw, not where it stands.
            Record::Checked { .. } | Record::Retrying { .. } | Record::Replicas { .. } => {}
        }
    }

    /// The step a person would call "current": the first not finished one.
    pub fn current_step(&self) -> Option<&StepRun> {
        match self.phase {
            Phase::RollingBack => self.steps.iter().rev().find(|s| {
                matches!(
                    s.state,
                    StepState::Done
                        | StepState::Failed
                        | StepState::Started
                        | StepState::Undoing
                        | StepState::UndoFailed
                )
            }),
            _ => self
                .steps
                .iter()
                .find(|s| !matches!(s.state, StepState::Done | StepState::Skipped)),
        }
    }

    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Finished(_))
    }

    /// Forward, stopped after a failure with `on_failure = "stop"`.
    pub fn is_stopped(&self) -> bool {
        self.phase == Phase::Forward && self.steps.iter().any(|s| s.state == StepState::Failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta(steps: &[&str]) -> RunMeta {
        RunMeta {
            run_id: "20260101-000000.000-abcd".into(),
            playbook_name: "pb".into(),
            playbook: "pb.toml".into(),
            playbook_hash: "h".into(),
            target: None,
            target_hash: None,
            cli_vars: vec![],
            steps: steps
                .iter()
                .map(|s| StepMeta {
                    id: (*s).into(),
                    kind: "exec".into(),
                    fingerprint: format!("fp-{s}"),
                })
                .collect(),
            host: "host".into(),
            user: None,
            pid: 1,
            started_at: "2026-01-01T00:00:00Z".into(),
            workdir: "/".into(),
        }
    }

    /// A run of steps a, b, c followed by `rest`.
    fn fold(rest: Vec<Record>) -> RunState {
        let mut recs = vec![Record::RunStarted(Box::new(meta(&["a", "b", "c"])))];
        recs.extend(rest);
        RunState::fold(&recs).expect("a run record comes first")
    }

    fn started(s: &str) -> Record {
        Record::StepStarted { step: s.into() }
    }
    fn done(s: &str) -> Record {
        Record::StepDone { step: s.into() }
    }
    fn failed(s: &str, e: &str) -> Record {
        Record::StepFailed {
            step: s.into(),
            error: e.into(),
        }
    }
    fn undo_started(s: &str) -> Record {
        Record::UndoStarted { step: s.into() }
    }
    fn undone(s: &str) -> Record {
        Record::StepUndone { step: s.into() }
    }
    fn rollback(reason: &str) -> Record {
        Record::RollbackStarted {
            reason: reason.into(),
        }
    }
    fn finished(outcome: Ending) -> Record {
        Record::RunFinished { outcome }
    }

    fn states(st: &RunState) -> Vec<StepState> {
        st.steps.iter().map(|s| s.state).collect()
    }

    fn current(st: &RunState) -> Option<&str> {
        st.current_step().map(|s| s.id.as_str())
    }

    use StepState::*;

    #[test]
    fn no_records_or_no_run_record_first_is_no_run() {
        assert!(RunState::fold(&[]).is_none());
        assert!(
            RunState::fold(&[started("a"), Record::RunStarted(Box::new(meta(&["a"])))]).is_none()
        );
    }

    #[test]
    fn run_started_alone_is_a_fresh_forward_run_with_every_step_pending() {
        let st = fold(vec![]);
        assert_eq!(st.meta.run_id, "20260101-000000.000-abcd");
        assert_eq!(
            st.steps.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(states(&st), [Pending, Pending, Pending]);
        assert_eq!(st.phase, Phase::Forward);
        assert!(!st.interrupted && !st.is_finished() && !st.is_stopped());
        assert!(st.rollback_reason.is_none() && st.last_error.is_none());
        assert!(
            st.steps
                .iter()
                .all(|s| s.checkpoint.is_none() && s.error.is_none() && s.children.is_empty())
        );
        assert_eq!(current(&st), Some("a"));
    }

    #[test]
    fn step_started_then_done_moves_the_current_step_on() {
        let st = fold(vec![started("a")]);
        assert_eq!(states(&st), [Started, Pending, Pending]);
        assert_eq!(current(&st), Some("a"), "an unfinished step is re-entered");
        let st = fold(vec![started("a"), done("a")]);
        assert_eq!(states(&st), [Done, Pending, Pending]);
        assert_eq!(current(&st), Some("b"));
        let st = fold(vec![started("a"), done("a"), started("b"), done("b")]);
        assert_eq!(current(&st), Some("c"));
    }

    #[test]
    fn skipped_steps_count_as_finished() {
        let st = fold(vec![
            Record::StepSkipped { step: "a".into() },
            started("b"),
            done("b"),
            Record::StepSkipped { step: "c".into() },
        ]);
        assert_eq!(states(&st), [Skipped, Done, Skipped]);
        assert_eq!(current(&st), None);
        assert!(!st.is_finished(), "only run_finished finishes a run");
    }

    #[test]
    fn the_last_checkpoint_wins_and_survives_done() {
        let st = fold(vec![
            started("a"),
            Record::Checkpoint {
                step: "a".into(),
                data: json!({"replica": 1}),
            },
            Record::Checkpoint {
                step: "a".into(),
                data: json!({"replica": 2}),
            },
        ]);
        assert_eq!(st.steps[0].checkpoint, Some(json!({"replica": 2})));
        assert_eq!(st.steps[0].state, Started);
        assert!(st.steps[1].checkpoint.is_none());
        // Rollback reads the checkpoint of a done step to undo it.
        let st = fold(vec![
            started("a"),
            Record::Checkpoint {
                step: "a".into(),
                data: json!("old-env-line"),
            },
            done("a"),
        ]);
        assert_eq!(st.steps[0].checkpoint, Some(json!("old-env-line")));
    }

    #[test]
    fn children_are_tracked_until_they_exit_or_the_step_finishes() {
        let child = |pid, ticks| Record::ChildStarted {
            step: "a".into(),
            pid,
            ticks,
        };
        let st = fold(vec![started("a"), child(10, 100), child(11, 110)]);
        assert_eq!(st.steps[0].children, BTreeMap::from([(10, 100), (11, 110)]));
        let st = fold(vec![
            started("a"),
            child(10, 100),
            child(11, 110),
            Record::ChildExited {
                step: "a".into(),
                pid: 10,
            },
        ]);
        assert_eq!(st.steps[0].children, BTreeMap::from([(11, 110)]));
        // A killed ferry leaves the child journaled: resume must reap it.
        let st = fold(vec![
            started("a"),
            child(10, 100),
            Record::Interrupted { step: None },
        ]);
        assert_eq!(st.steps[0].children.len(), 1);
        // A finished step's command has returned: nothing to reap.
        let st = fold(vec![started("a"), child(10, 100), done("a")]);
        assert!(st.steps[0].children.is_empty());
    }

    #[test]
    fn step_failed_records_the_error_on_the_step_and_the_run() {
        let st = fold(vec![
            started("a"),
            done("a"),
            started("b"),
            failed("b", "exit 3"),
        ]);
        assert_eq!(states(&st), [Done, Failed, Pending]);
        assert_eq!(st.steps[1].error.as_deref(), Some("exit 3"));
        assert_eq!(st.last_error.as_deref(), Some("b: exit 3"));
        assert_eq!(st.phase, Phase::Forward);
        // Failed in the forward phase without a rollback: stopped (on_failure = "stop").
        assert!(st.is_stopped());
        assert_eq!(current(&st), Some("b"));
    }

    #[test]
    fn a_resumed_stopped_step_can_still_finish() {
        let st = fold(vec![
            started("a"),
            failed("a", "not yet"),
            Record::Resumed {
                pid: 2,
                host: "host".into(),
                user: None,
                at: "later".into(),
                accepted_changes: false,
            },
            started("a"),
            done("a"),
        ]);
        assert_eq!(states(&st), [Done, Pending, Pending]);
        assert!(!st.is_stopped());
        assert_eq!(
            st.steps[0].error.as_deref(),
            Some("not yet"),
            "the step keeps its last error"
        );
    }

    #[test]
    fn rollback_started_switches_phase_and_walks_back_from_the_newest_step() {
        let st = fold(vec![
            started("a"),
            done("a"),
            started("b"),
            done("b"),
            started("c"),
            failed("c", "boom"),
            rollback("step c failed"),
        ]);
        assert_eq!(st.phase, Phase::RollingBack);
        assert_eq!(st.rollback_reason.as_deref(), Some("step c failed"));
        assert!(!st.is_stopped(), "rolling back is not stopped");
        assert_eq!(
            current(&st),
            Some("c"),
            "the failed step's partial work first"
        );
        let st = fold(vec![
            started("a"),
            done("a"),
            started("b"),
            done("b"),
            started("c"),
            failed("c", "boom"),
            rollback("step c failed"),
            undo_started("c"),
        ]);
        assert_eq!(states(&st), [Done, Done, Undoing]);
        assert_eq!(current(&st), Some("c"), "an undo in progress is re-entered");
        let st = fold(vec![
            started("a"),
            done("a"),
            started("b"),
            done("b"),
            started("c"),
            failed("c", "boom"),
            rollback("step c failed"),
            undo_started("c"),
            undone("c"),
            undo_started("b"),
            undone("b"),
        ]);
        assert_eq!(states(&st), [Done, Undone, Undone]);
        assert_eq!(current(&st), Some("a"));
    }

    #[test]
    fn an_interrupted_apply_is_rolled_back_from_the_started_step() {
        let st = fold(vec![
            started("a"),
            done("a"),
            started("b"),
            rollback("by request"),
        ]);
        assert_eq!(current(&st), Some("b"));
        // Pending and skipped steps are never undone.
        let st = fold(vec![
            started("a"),
            done("a"),
            Record::StepSkipped { step: "b".into() },
            rollback("by request"),
        ]);
        assert_eq!(current(&st), Some("a"));
    }

    #[test]
    fn undo_skipped_counts_as_undone() {
        let st = fold(vec![
            started("a"),
            done("a"),
            rollback("r"),
            undo_started("a"),
            Record::UndoSkipped {
                step: "a".into(),
                why: "cannot be undone".into(),
            },
        ]);
        assert_eq!(states(&st), [Undone, Pending, Pending]);
        assert_eq!(current(&st), None);
    }

    #[test]
    fn undo_failed_keeps_the_step_current_and_names_it() {
        let st = fold(vec![
            started("a"),
            done("a"),
            started("b"),
            done("b"),
            started("c"),
            failed("c", "boom"),
            rollback("step c failed"),
            undo_started("c"),
            undone("c"),
            undo_started("b"),
            Record::UndoFailed {
                step: "b".into(),
                error: "permission denied".into(),
            },
            finished(Ending::RollbackIncomplete),
        ]);
        assert_eq!(states(&st), [Done, UndoFailed, Undone]);
        assert_eq!(
            st.last_error.as_deref(),
            Some("b: rollback failed: permission denied")
        );
        assert_eq!(st.phase, Phase::Finished(Ending::RollbackIncomplete));
        assert!(st.is_finished());
        // `ferry rollback` again: the failed undo is retried, then the rest.
        let st = fold(vec![
            started("a"),
            done("a"),
            started("b"),
            done("b"),
            rollback("r"),
            undo_started("b"),
            Record::UndoFailed {
                step: "b".into(),
                error: "x".into(),
            },
            rollback("ferry rollback"),
        ]);
        assert_eq!(st.phase, Phase::RollingBack);
        assert_eq!(st.rollback_reason.as_deref(), Some("ferry rollback"));
        assert_eq!(current(&st), Some("b"));
    }

    #[test]
    fn interrupted_is_cleared_by_resumed() {
        let st = fold(vec![
            started("a"),
            Record::Interrupted {
                step: Some("a".into()),
            },
        ]);
        assert!(st.interrupted);
        assert_eq!(st.phase, Phase::Forward);
        assert_eq!(states(&st), [Started, Pending, Pending]);
        assert!(!st.is_finished());
        let st = fold(vec![
            started("a"),
            Record::Interrupted {
                step: Some("a".into()),
            },
            Record::Resumed {
                pid: 2,
                host: "host".into(),
                user: None,
                at: "later".into(),
                accepted_changes: true,
            },
        ]);
        assert!(!st.interrupted);
        assert_eq!(current(&st), Some("a"));
        // Interrupted between steps (no step named).
        let st = fold(vec![
            started("a"),
            done("a"),
            Record::Interrupted { step: None },
        ]);
        assert!(st.interrupted);
        assert_eq!(current(&st), Some("b"));
    }

    #[test]
    fn run_finished_sets_the_outcome() {
        for outcome in [Ending::Done, Ending::RolledBack, Ending::RollbackIncomplete] {
            let st = fold(vec![finished(outcome)]);
            assert_eq!(st.phase, Phase::Finished(outcome));
            assert!(st.is_finished());
            assert!(!st.is_stopped());
        }
        let st = fold(vec![
            started("a"),
            done("a"),
            started("b"),
            done("b"),
            started("c"),
            done("c"),
            finished(Ending::Done),
        ]);
        assert_eq!(states(&st), [Done, Done, Done]);
        assert_eq!(current(&st), None);
        // A done run rolled back later: rollback_started reopens it.
        let st = fold(vec![
            started("a"),
            done("a"),
            finished(Ending::Done),
            rollback("ferry rollback"),
        ]);
        assert_eq!(st.phase, Phase::RollingBack);
        let st = fold(vec![
            started("a"),
            done("a"),
            finished(Ending::Done),
            rollback("ferry rollback"),
            undo_started("a"),
            undone("a"),
            finished(Ending::RolledBack),
        ]);
        assert_eq!(st.phase, Phase::Finished(Ending::RolledBack));
        assert_eq!(states(&st), [Undone, Pending, Pending]);
    }

    #[test]
    fn records_for_unknown_steps_change_nothing() {
        let base = fold(vec![started("a")]);
        let st = fold(vec![
            started("a"),
            started("zz"),
            done("zz"),
            Record::Checkpoint {
                step: "zz".into(),
                data: json!(1),
            },
            Record::ChildStarted {
                step: "zz".into(),
                pid: 1,
                ticks: 1,
            },
            undo_started("zz"),
        ]);
        assert_eq!(states(&st), states(&base));
        assert!(
            st.steps
                .iter()
                .all(|s| s.checkpoint.is_none() && s.children.is_empty())
        );
        // A failure of an unknown step is still the run's last error.
        let st = fold(vec![failed("zz", "e")]);
        assert_eq!(st.last_error.as_deref(), Some("zz: e"));
        assert!(!st.is_stopped());
    }

    #[test]
    fn a_later_run_started_record_is_ignored() {
        let mut recs = vec![Record::RunStarted(Box::new(meta(&["a"]))), started("a")];
        recs.push(Record::RunStarted(Box::new(meta(&["x", "y"]))));
        let st = RunState::fold(&recs).unwrap();
        assert_eq!(st.steps.len(), 1);
        assert_eq!(states(&st), [Started]);
    }

    #[test]
    fn fold_equals_apply_one_by_one() {
        let recs = [
            Record::RunStarted(Box::new(meta(&["a", "b", "c"]))),
            started("a"),
            done("a"),
            started("b"),
            failed("b", "e"),
            rollback("r"),
            undo_started("b"),
            undone("b"),
        ];
        for n in 1..=recs.len() {
            let mut st = RunState::fold(&recs[..1]).unwrap();
            for r in &recs[1..n] {
                st.apply(r);
            }
            let folded = RunState::fold(&recs[..n]).unwrap();
            assert_eq!(states(&st), states(&folded));
            assert_eq!(st.phase, folded.phase);
        }
    }

    /// The fold after a journal round trip, with a torn last line as a kill mid-write
    /// leaves it: the torn record is not seen, the state is that of the records before it.
    #[test]
    fn a_torn_tail_folds_to_the_state_before_it() {
        use crate::engine::journal::{Journal, read};
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("journal.jsonl");
        let mut j = Journal::create(&p).unwrap();
        for r in [
            Record::RunStarted(Box::new(meta(&["a", "b", "c"]))),
            started("a"),
            done("a"),
            started("b"),
        ] {
            j.append(&r).unwrap();
        }
        j.sync().unwrap();
        drop(j);
        let whole = RunState::fold(&read(&p).unwrap()).unwrap();
        // Overwrite the preallocated zeros after the last record with half a step_done.
        let bytes = std::fs::read(&p).unwrap();
        let end = bytes.iter().position(|b| *b == 0).unwrap();
        let mut f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(end as u64)).unwrap();
        f.write_all(b"{\"v\":1,\"type\":\"step_done\",\"st")
            .unwrap();
        drop(f);
        let recs = read(&p).unwrap();
        assert_eq!(recs.len(), 4);
        let torn = RunState::fold(&recs).unwrap();
        assert_eq!(states(&torn), states(&whole));
        assert_eq!(states(&torn), [Done, Started, Pending]);
        assert_eq!(current(&torn), Some("b"));
    }
}
