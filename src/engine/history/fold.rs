//! The timed fold behind the change record: each record, at the time it was written,
//! opens or closes a span of a step (apply, undo), or notes a check, retry, rollback,
//! interruption, resume or change of the service's replicas.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{step_outcome, target_name};
use crate::engine::journal::{self, Entry};
use crate::engine::records::{Record, RunMeta, RunState};
use crate::report::views::record::{
    ChangeRecord, Downtime, Interruption, Named, Retry, Rollback, Session, Span, SpanEnd, SpanKind,
    StepRecord,
};
use crate::report::views::status::RunStatus;

fn ms_between(a: &str, b: &str) -> Option<u64> {
    let a = OffsetDateTime::parse(a, &Rfc3339).ok()?;
    let b = OffsetDateTime::parse(b, &Rfc3339).ok()?;
    Some((b - a).whole_milliseconds().max(0) as u64)
}

/// The fold with times; `state` and the outcome are filled in by [`load`].
pub(super) fn fold(run_id: &str, entries: &[Entry], st: Option<&RunState>) -> ChangeRecord {
    let meta: Option<&RunMeta> = st.map(|s| &s.meta);
    let t0 = entries.iter().find_map(|e| e.at.clone());
    let mut now = 0u64;
    let mut r = empty(run_id, meta, t0.is_none());
    r.steps = meta
        .map(|m| {
            m.steps
                .iter()
                .map(|s| StepRecord {
                    id: s.id.clone(),
                    kind: s.kind.clone(),
                    state: crate::report::views::status::StepState::Pending,
                    checks: vec![],
                    spans: vec![],
                    retries: vec![],
                    error: None,
                    undo_note: None,
                    outcome: "not run".into(),
                })
                .collect()
        })
        .unwrap_or_default();
    for e in entries.iter().skip(1) {
        if let (Some(t0), Some(at)) = (&t0, &e.at) {
            now = ms_between(t0, at).unwrap_or(now).max(now);
        }
        apply(&mut r, e, now);
    }
    for s in r.steps.iter_mut() {
        for sp in s.spans.iter_mut().filter(|sp| sp.end == SpanEnd::Open) {
            sp.to_ms = now;
        }
    }
    if let Some(st) = st {
        for (rec, s) in r.steps.iter_mut().zip(&st.steps) {
            rec.state = s.state;
            rec.error = s.error.clone();
            rec.outcome = step_outcome(rec);
        }
    }
    r.ended_at = entries.iter().rev().find_map(|e| e.at.clone());
    r.duration_ms = (t0.is_some()).then_some(now);
    r.started_at = t0.or_else(|| meta.map(|m| m.started_at.clone()));
    r
}

fn empty(run_id: &str, meta: Option<&RunMeta>, untimed: bool) -> ChangeRecord {
    ChangeRecord {
        run_id: run_id.into(),
        state: RunStatus::Corrupt,
        exit_code: None,
        outcome: String::new(),
        next: None,
        last_error: None,
        corrupt: None,
        user: meta.and_then(|m| m.user.clone()),
        host: meta.map_or("?".into(), |m| m.host.clone()),
        pid: meta.map_or(0, |m| m.pid),
        started_at: None,
        ended_at: None,
        duration_ms: None,
        playbook: Named {
            name: meta.map_or("?".into(), |m| m.playbook_name.clone()),
            path: meta.map_or(String::new(), |m| m.playbook.display().to_string()),
            hash: meta.map(|m| m.playbook_hash.clone()),
        },
        target: meta.and_then(|m| {
            let path = m.target.as_ref()?;
            Some(Named {
                name: target_name(path),
                path: path.display().to_string(),
                hash: m.target_hash.clone(),
            })
        }),
        vars: vec![],
        steps: vec![],
        rollbacks: vec![],
        sessions: vec![],
        interruptions: vec![],
        downtime: vec![],
        untimed,
        generated_at: journal::now_ms(),
    }
}

fn open(r: &mut ChangeRecord, step: &str, kind: SpanKind, now: u64, at: &Option<String>) {
    if let Some(s) = r.steps.iter_mut().find(|s| s.id == step) {
        s.spans.push(Span {
            kind,
            from_ms: now,
            to_ms: now,
            at: at.clone(),
            end: SpanEnd::Open,
        });
    }
}

/// Ends the step's open span of `kind` (or, when it has none, marks the instant: a step
/// skipped by its probe, an undo with nothing to do).
fn close(
    r: &mut ChangeRecord,
    step: &str,
    kind: SpanKind,
    end: SpanEnd,
    now: u64,
    at: &Option<String>,
) {
    let Some(s) = r.steps.iter_mut().find(|s| s.id == step) else {
        return;
    };
    match s
        .spans
        .iter_mut()
        .rev()
        .find(|sp| sp.kind == kind && sp.end == SpanEnd::Open)
    {
        Some(sp) => {
            sp.to_ms = now;
            sp.end = end;
        }
        None => s.spans.push(Span {
            kind,
            from_ms: now,
            to_ms: now,
            at: at.clone(),
            end,
        }),
    }
}

fn apply(r: &mut ChangeRecord, e: &Entry, now: u64) {
    use SpanKind::{Apply, Undo};
    let at = &e.at;
    match &e.rec {
        Record::StepStarted { step } => open(r, step, Apply, now, at),
        Record::StepSkipped { step } => close(r, step, Apply, SpanEnd::Skipped, now, at),
        Record::StepDone { step } => close(r, step, Apply, SpanEnd::Done, now, at),
        Record::StepFailed { step, .. } => close(r, step, Apply, SpanEnd::Failed, now, at),
        Record::UndoStarted { step } => open(r, step, Undo, now, at),
        Record::StepUndone { step } => close(r, step, Undo, SpanEnd::Undone, now, at),
        // Nothing was undone: no bar, unless an undo had begun (it found nothing to do).
        Record::UndoSkipped { step, why } => {
            if let Some(s) = r.steps.iter_mut().find(|s| &s.id == step) {
                s.undo_note = Some(why.clone());
                if let Some(sp) = s
                    .spans
                    .iter_mut()
                    .rev()
                    .find(|sp| sp.kind == Undo && sp.end == SpanEnd::Open)
                {
                    sp.to_ms = now;
                    sp.end = SpanEnd::Undone;
                }
            }
        }
        Record::UndoFailed { step, .. } => close(r, step, Undo, SpanEnd::UndoFailed, now, at),
        Record::Interrupted { step } => {
            for s in r.steps.iter_mut() {
                for sp in s.spans.iter_mut().filter(|sp| sp.end == SpanEnd::Open) {
                    sp.to_ms = now;
                    sp.end = SpanEnd::Interrupted;
                }
            }
            r.interruptions.push(Interruption {
                step: step.clone(),
                at: at.clone(),
                at_ms: now,
            });
        }
        Record::Resumed {
            pid,
            host,
            user,
            at: when,
            accepted_changes,
        } => r.sessions.push(Session {
            at_ms: now,
            user: user.clone(),
            host: host.clone(),
            pid: *pid,
            at: when.clone(),
            accepted_changes: *accepted_changes,
        }),
        Record::RollbackStarted { reason } => r.rollbacks.push(Rollback {
            reason: reason.clone(),
            at: at.clone(),
            at_ms: now,
        }),
        Record::Checked { step, checks } => {
            if let Some(s) = r.steps.iter_mut().find(|s| &s.id == step) {
                s.checks = checks.clone();
            }
        }
        Record::Retrying {
            step,
            attempt,
            error,
        } => {
            if let Some(s) = r.steps.iter_mut().find(|s| &s.id == step) {
                s.retries.push(Retry {
                    attempt: *attempt,
                    error: error.clone(),
                    at: at.clone(),
                });
            }
        }
        Record::Replicas {
            step,
            service,
            running,
        } => downtime(r, step, service, *running, now),
        Record::RunStarted(_)
        | Record::Checkpoint { .. }
        | Record::ChildStarted { .. }
        | Record::ChildExited { .. }
        | Record::RunFinished { .. } => {}
    }
}

/// `running = 0` opens a downtime of the service (unless one is open); more closes it.
fn downtime(r: &mut ChangeRecord, step: &str, service: &str, running: u32, now: u64) {
    let open = r
        .downtime
        .iter_mut()
        .find(|d| d.service == service && d.to_ms.is_none());
    match (open, running) {
        (None, 0) => r.downtime.push(Downtime {
            service: service.into(),
            from_ms: now,
            to_ms: None,
            stopped_by: step.into(),
            started_by: None,
        }),
        (Some(d), n) if n > 0 => {
            d.to_ms = Some(now);
            d.started_by = Some(step.into());
        }
        _ => {}
    }
}
