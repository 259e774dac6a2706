//! The rows the HTML page and the Markdown file share, as plain text: the summary, one row
//! per step, and the rollbacks, interruptions and resumes. Built once here so the two
//! documents cannot drift apart; each renderer only marks them up and escapes them.
//!
//! Invariant: nothing here is escaped or marked up (a value is the journal's text).

use super::fmt_ms;
use crate::report::views::record::{ChangeRecord, CheckRecord, SpanEnd, SpanKind, StepRecord};

/// A value of the summary table.
pub(crate) enum Value {
    Text(String),
    /// The playbook or the target file: its name, its path and its sha256.
    File {
        name: String,
        path: String,
        hash: String,
    },
    /// The run's last error (the page shows it in red).
    Error(String),
}

/// The summary table, in order: (key, value).
pub(crate) fn summary(r: &ChangeRecord) -> Vec<(&'static str, Value)> {
    let text = |k, v: String| (k, Value::Text(v));
    let mut rows = vec![
        text("outcome", r.outcome.clone()),
        text(
            "exit code",
            r.exit_code.map_or("unknown".into(), |c| c.to_string()),
        ),
        text(
            "run by",
            format!(
                "{} on {} (pid {})",
                r.user.as_deref().unwrap_or("?"),
                r.host,
                r.pid
            ),
        ),
        text(
            "when (UTC)",
            format!(
                "{} → {}",
                r.started_at.as_deref().unwrap_or("?"),
                r.ended_at.as_deref().unwrap_or("?")
            ),
        ),
    ];
    if let Some(d) = r.duration_ms {
        rows.push(text("duration", fmt_ms(d)));
    }
    rows.push((
        "playbook",
        Value::File {
            name: r.playbook.name.clone(),
            path: r.playbook.path.clone(),
            hash: r.playbook.hash.clone().unwrap_or_else(|| "?".into()),
        },
    ));
    rows.push((
        "target",
        match &r.target {
            Some(t) => Value::File {
                name: t.name.clone(),
                path: t.path.clone(),
                hash: t.hash.clone().unwrap_or_else(|| "not recorded".into()),
            },
            None => Value::Text("none (local commands only)".into()),
        },
    ));
    if let Some(e) = &r.last_error {
        rows.push(("last error", Value::Error(e.clone())));
    }
    for d in &r.downtime {
        let dur = d.to_ms.map_or("until the end of the journal".into(), |t| {
            fmt_ms(t - d.from_ms)
        });
        let until = d
            .started_by
            .as_ref()
            .map_or("not started again".into(), |b| {
                format!("started again by {b}")
            });
        rows.push(text(
            "downtime",
            format!(
                "{} had no running replica for {dur}: stopped by {}, {until}",
                d.service, d.stopped_by
            ),
        ));
    }
    rows
}

/// One row of the steps table.
pub(crate) struct StepRow<'a> {
    pub n: usize,
    pub step: &'a StepRecord,
    /// The apply time ([`StepRecord::apply_text`]).
    pub apply: String,
    /// How many times it was applied (a resumed step is applied again).
    pub applies: usize,
    pub undo: String,
    pub checks: String,
    /// Each failed attempt, then the error it ended with.
    pub notes: Vec<String>,
}

pub(crate) fn steps(r: &ChangeRecord) -> impl Iterator<Item = StepRow<'_>> {
    r.steps.iter().enumerate().map(|(i, st)| {
        let mut notes: Vec<String> = st
            .retries
            .iter()
            .map(|t| format!("attempt {} failed: {}", t.attempt, t.error))
            .collect();
        notes.extend(st.error.iter().map(|e| format!("error: {e}")));
        StepRow {
            n: i + 1,
            step: st,
            apply: st.apply_text(fmt_ms),
            applies: st
                .spans
                .iter()
                .filter(|s| s.kind == SpanKind::Apply && s.end != SpanEnd::Skipped)
                .count(),
            undo: st.undo_ms().map_or("–".into(), fmt_ms),
            checks: checks_line(&st.checks),
            notes,
        }
    })
}

/// A rollback, an interruption or a resume, in that order of kinds.
pub(crate) struct Event {
    /// `rollback`, `interrupted`, `continued`.
    pub what: &'static str,
    pub text: String,
    /// What else a resume did (`playbook changes accepted`).
    pub note: Option<&'static str>,
}

pub(crate) fn events(r: &ChangeRecord) -> Vec<Event> {
    let mut out = vec![];
    for (i, rb) in r.rollbacks.iter().enumerate() {
        let undone = undos_of(r, i);
        let undone = if undone.is_empty() {
            "nothing".into()
        } else {
            undone.join("; ")
        };
        let at = rb.at.as_deref().unwrap_or("?");
        out.push(Event {
            what: "rollback",
            text: format!("at {at}: {}. Undone, newest first: {undone}", rb.reason),
            note: None,
        });
    }
    for i in &r.interruptions {
        let step = i.step.as_ref().map(|s| format!(", in step {s}"));
        out.push(Event {
            what: "interrupted",
            text: format!(
                "at {}{}",
                i.at.as_deref().unwrap_or("?"),
                step.unwrap_or_default()
            ),
            note: None,
        });
    }
    for se in &r.sessions {
        let who = se.user.as_deref().unwrap_or("?");
        out.push(Event {
            what: "continued",
            text: format!("at {} by {who} on {} (pid {})", se.at, se.host, se.pid),
            note: se.accepted_changes.then_some("playbook changes accepted"),
        });
    }
    out
}

/// What rollback `i` undid, in the order it did (newest step first): `two rolled back at 2026-…Z (150 ms)`, from the
/// undo spans that began between it and the next rollback.
fn undos_of(r: &ChangeRecord, i: usize) -> Vec<String> {
    let from = r.rollbacks[i].at_ms;
    let to = r.rollbacks.get(i + 1).map_or(u64::MAX, |n| n.at_ms);
    let mut out: Vec<(u64, String)> = r
        .steps
        .iter()
        .flat_map(|st| st.spans.iter().map(move |sp| (st, sp)))
        .filter(|(_, sp)| sp.kind == SpanKind::Undo && sp.from_ms >= from && sp.from_ms < to)
        .map(|(st, sp)| {
            let at = sp.at.as_deref().unwrap_or("?");
            let took = fmt_ms(sp.to_ms - sp.from_ms);
            (
                sp.from_ms,
                format!("{} {} at {at} ({took})", st.id, sp.end.as_str()),
            )
        })
        .collect();
    out.sort_by_key(|(t, _)| *t);
    let mut out: Vec<String> = out.into_iter().map(|(_, s)| s).collect();
    // Steps the (last) rollback passed over: they cannot be undone, or had nothing to undo.
    if i + 1 == r.rollbacks.len() {
        out.extend(r.steps.iter().rev().filter_map(|st| {
            let why = st.undo_note.as_ref()?;
            Some(format!("{} not undone: {why}", st.id))
        }));
    }
    out
}

/// The checks of a step in one line: `pass writable: …; fail reachable: …`.
fn checks_line(checks: &[CheckRecord]) -> String {
    checks
        .iter()
        .map(|c| format!("{} {}: {}", check_word(c.status), c.name, c.detail))
        .collect::<Vec<_>>()
        .join("; ")
}

fn check_word(s: crate::report::CheckStatus) -> &'static str {
    use crate::report::CheckStatus as C;
    match s {
        C::Pass => "pass",
        C::Fail => "FAIL",
        C::Warn => "warn",
        C::Deferred => "deferred",
        C::Pending => "pending",
    }
}
