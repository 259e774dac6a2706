//! Renders a run's change record (`ferry report`): one self-contained HTML file (inline CSS,
//! an inline SVG timeline, no scripts, nothing fetched: a Content-Security-Policy forbids
//! it even if something slipped through), a Markdown file, or the JSON of the view.
//!
//! Invariants: every value from the journal is escaped for where it goes (`html::esc`,
//! `md::esc`) — a step id or error holding `<script>` stays text — and the whole document
//! passes through the redactor before it is written, as every other output does.

mod html;
mod md;
mod svg;

use crate::report::redact::redact;
use crate::report::views::record::{ChangeRecord, RunStatus, SpanEnd};

/// The document kinds `ferry report` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Html,
    Markdown,
    Json,
}

impl Kind {
    /// The default file's extension: `ferry-report-<RUN_ID>.<ext>`.
    pub fn extension(self) -> &'static str {
        match self {
            Kind::Html => "html",
            Kind::Markdown => "md",
            Kind::Json => "json",
        }
    }
}

/// The document, redacted.
pub fn render(r: &ChangeRecord, kind: Kind) -> String {
    let text = match kind {
        Kind::Html => html::page(r),
        Kind::Markdown => md::page(r),
        Kind::Json => serde_json::to_string_pretty(r).unwrap_or_default() + "\n",
    };
    redact(&text).into_owned()
}

/// Writes the document to `dest` (`-`: stdout) and, for a file, says where on stdout (one
/// line, the path, for scripts: `f=$(ferry report ID)`).
pub fn write(doc: &str, dest: &std::path::Path) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if dest == std::path::Path::new("-") {
        out.write_all(doc.as_bytes())?;
    } else {
        std::fs::write(dest, doc)?;
        writeln!(out, "{}", dest.display())?;
    }
    out.flush()
}

/// `1.234 s`, `2 min 5 s`, `850 ms`: what a person reads in a ticket.
pub(crate) fn fmt_ms(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{} min {} s", ms / 60_000, ms % 60_000 / 1000),
        _ => format!("{} h {} min", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

/// The outcome's words and its badge class (`ok`, `bad`, `warn`).
pub(crate) fn state_class(s: RunStatus) -> &'static str {
    match s {
        RunStatus::Done => "ok",
        RunStatus::RolledBack | RunStatus::RollbackIncomplete | RunStatus::Stopped => "bad",
        RunStatus::Corrupt => "bad",
        RunStatus::Running | RunStatus::Interrupted | RunStatus::RollingBack => "warn",
    }
}

/// The colour of a span's bar: the same in the SVG, the legend and the steps table.
pub(crate) fn colour(end: SpanEnd) -> &'static str {
    match end {
        SpanEnd::Done => "#2e7d32",
        SpanEnd::Skipped => "#9e9e9e",
        SpanEnd::Failed => "#c62828",
        SpanEnd::Interrupted => "#f9a825",
        SpanEnd::Undone => "#6a1b9a",
        SpanEnd::UndoFailed => "#e65100",
        SpanEnd::Open => "#1565c0",
    }
}

/// Every bar colour, in legend order.
pub(crate) const LEGEND: [SpanEnd; 7] = [
    SpanEnd::Done,
    SpanEnd::Skipped,
    SpanEnd::Failed,
    SpanEnd::Interrupted,
    SpanEnd::Undone,
    SpanEnd::UndoFailed,
    SpanEnd::Open,
];

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

/// What rollback `i` undid, in the order it did (newest step first): `two rolled back at 2026-…Z (150 ms)`, from the
/// undo spans that began between it and the next rollback.
pub(crate) fn undos_of(r: &ChangeRecord, i: usize) -> Vec<String> {
    use crate::report::views::record::SpanKind;
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
pub(crate) fn checks_line(checks: &[crate::report::views::record::CheckRecord]) -> String {
    checks
        .iter()
        .map(|c| format!("{} {}: {}", check_word(c.status), c.name, c.detail))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_a_person_writes_them() {
        assert_eq!(fmt_ms(850), "850 ms");
        assert_eq!(fmt_ms(1_234), "1.2 s");
        assert_eq!(fmt_ms(125_000), "2 min 5 s");
        assert_eq!(fmt_ms(3_720_000), "1 h 2 min");
    }
}
