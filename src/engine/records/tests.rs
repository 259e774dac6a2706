use std::collections::BTreeMap;

use super::*;
use serde_json::json;

/// A run of steps a, b, c followed by `rest`.
fn fold(rest: Vec<Record>) -> RunState {
    let mut recs = vec![Record::RunStarted(Box::new(RunMeta::example(&[
        "a", "b", "c",
    ])))];
    recs.extend(rest);
    RunState::fold(&recs).expect("a run record comes first")
}

/// Steps a and b done, c failed, and the rollback started; then `rest`.
fn c_failed_rolling_back(rest: Vec<Record>) -> RunState {
    let mut recs = vec![
        started("a"),
        done("a"),
        started("b"),
        done("b"),
        started("c"),
        failed("c", "boom"),
        rollback("step c failed"),
    ];
    recs.extend(rest);
    fold(recs)
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
        RunState::fold(&[
            started("a"),
            Record::RunStarted(Box::new(RunMeta::example(&["a"])))
        ])
        .is_none()
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
    let st = c_failed_rolling_back(vec![]);
    assert_eq!(st.phase, Phase::RollingBack);
    assert_eq!(st.rollback_reason.as_deref(), Some("step c failed"));
    assert!(!st.is_stopped(), "rolling back is not stopped");
    assert_eq!(
        current(&st),
        Some("c"),
        "the failed step's partial work first"
    );
    let st = c_failed_rolling_back(vec![undo_started("c")]);
    assert_eq!(states(&st), [Done, Done, Undoing]);
    assert_eq!(current(&st), Some("c"), "an undo in progress is re-entered");
    let st = c_failed_rolling_back(vec![
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
    let st = c_failed_rolling_back(vec![
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
    let mut recs = vec![
        Record::RunStarted(Box::new(RunMeta::example(&["a"]))),
        started("a"),
    ];
    recs.push(Record::RunStarted(Box::new(RunMeta::example(&["x", "y"]))));
    let st = RunState::fold(&recs).unwrap();
    assert_eq!(st.steps.len(), 1);
    assert_eq!(states(&st), [Started]);
}

#[test]
fn fold_equals_apply_one_by_one() {
    let recs = [
        Record::RunStarted(Box::new(RunMeta::example(&["a", "b", "c"]))),
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
        Record::RunStarted(Box::new(RunMeta::example(&["a", "b", "c"]))),
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
