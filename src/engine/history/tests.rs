//! The timed fold on hand-made journals: spans, their ends, the downtime, untimed journals.

use super::fold::fold;
use super::{exit_code, step_outcome};
use crate::engine::journal::Entry;
use crate::engine::records::{Ending, Record, RunMeta, RunState};
use crate::report::views::record::{ChangeRecord, SpanEnd, SpanKind};
use crate::report::views::status::RunStatus;

fn meta() -> RunMeta {
    RunMeta {
        user: Some("dba".into()),
        ..RunMeta::example(&["a", "b"])
    }
}

/// Records at the given seconds past midnight (None: a format 1 line without a time).
fn record(timed: &[(Option<f64>, Record)]) -> (ChangeRecord, RunState) {
    let mut entries = vec![Entry {
        at: timed.first().and_then(|t| t.0).map(|_| ts(0.0)),
        rec: Record::RunStarted(Box::new(meta())),
    }];
    entries.extend(timed.iter().map(|(t, rec)| Entry {
        at: t.map(ts),
        rec: rec.clone(),
    }));
    let recs: Vec<Record> = entries.iter().map(|e| e.rec.clone()).collect();
    let st = RunState::fold(&recs).unwrap();
    (fold("r", &entries, Some(&st)), st)
}

fn ts(secs: f64) -> String {
    format!("2026-01-01T00:00:{secs:06.3}Z")
}

fn s(step: &str) -> String {
    step.into()
}

#[test]
fn applies_and_undos_become_spans_with_their_ends() {
    let (r, st) = record(&[
        (Some(1.0), Record::StepStarted { step: s("a") }),
        (Some(2.5), Record::StepDone { step: s("a") }),
        (Some(2.5), Record::StepStarted { step: s("b") }),
        (
            Some(3.0),
            Record::StepFailed {
                step: s("b"),
                error: s("exit 3"),
            },
        ),
        (
            Some(3.1),
            Record::RollbackStarted {
                reason: s("b failed"),
            },
        ),
        (Some(3.2), Record::UndoStarted { step: s("a") }),
        (Some(4.2), Record::StepUndone { step: s("a") }),
        (
            Some(4.3),
            Record::RunFinished {
                outcome: Ending::RolledBack,
            },
        ),
    ]);
    let a = &r.steps[0];
    assert_eq!(a.spans.len(), 2);
    assert_eq!(
        (a.spans[0].from_ms, a.spans[0].to_ms, a.spans[0].end),
        (1000, 2500, SpanEnd::Done)
    );
    assert_eq!(
        (a.spans[1].kind, a.spans[1].end),
        (SpanKind::Undo, SpanEnd::Undone)
    );
    assert_eq!((a.apply_ms(), a.undo_ms()), (Some(1500), Some(1000)));
    assert_eq!(r.steps[1].spans[0].end, SpanEnd::Failed);
    assert_eq!(r.rollbacks[0].at_ms, 3100);
    assert_eq!(r.duration_ms, Some(4300));
    assert_eq!(r.user.as_deref(), Some("dba"));
    assert_eq!(step_outcome(&r.steps[0]), "rolled back");
    assert_eq!(step_outcome(&r.steps[1]), "failed");
    assert_eq!(exit_code(RunStatus::RolledBack, Some(&st)), Some(1));
}

#[test]
fn an_unended_span_is_open_to_the_last_record_and_an_interrupt_ends_it() {
    let (r, st) = record(&[
        (Some(1.0), Record::StepStarted { step: s("a") }),
        (
            Some(4.0),
            Record::ChildStarted {
                step: s("a"),
                pid: 9,
                ticks: 1,
            },
        ),
    ]);
    let sp = &r.steps[0].spans[0];
    assert_eq!((sp.from_ms, sp.to_ms, sp.end), (1000, 4000, SpanEnd::Open));
    assert_eq!(
        exit_code(RunStatus::Interrupted, Some(&st)),
        None,
        "killed: no code"
    );
    let (r, st) = record(&[
        (Some(1.0), Record::StepStarted { step: s("a") }),
        (Some(2.0), Record::Interrupted { step: Some(s("a")) }),
    ]);
    assert_eq!(r.steps[0].spans[0].end, SpanEnd::Interrupted);
    assert_eq!(r.interruptions[0].at_ms, 2000);
    assert_eq!(exit_code(RunStatus::Interrupted, Some(&st)), Some(5));
}

#[test]
fn replicas_at_zero_open_a_downtime_and_the_next_start_closes_it() {
    let rep = |step: &str, running| Record::Replicas {
        step: s(step),
        service: s("hapi"),
        running,
    };
    let (r, _) = record(&[
        (Some(1.0), rep("a", 0)),
        (Some(1.5), rep("a", 0)),
        (Some(5.0), rep("b", 2)),
    ]);
    assert_eq!(r.downtime.len(), 1, "a second 0 does not open another");
    let d = &r.downtime[0];
    assert_eq!((d.from_ms, d.to_ms), (1000, Some(5000)));
    assert_eq!(
        (d.stopped_by.as_str(), d.started_by.as_deref()),
        ("a", Some("b"))
    );
    let (r, _) = record(&[(Some(1.0), rep("a", 0))]);
    assert_eq!(
        r.downtime[0].to_ms, None,
        "still down at the end of the journal"
    );
}

#[test]
fn a_journal_without_times_has_no_durations() {
    let (r, _) = record(&[
        (None, Record::StepStarted { step: s("a") }),
        (None, Record::StepDone { step: s("a") }),
    ]);
    assert!(r.untimed);
    assert_eq!(r.duration_ms, None);
    assert_eq!(r.steps[0].spans[0].end, SpanEnd::Done);
    assert_eq!(r.started_at.as_deref(), Some("2026-01-01T00:00:00Z"));
}
