//! Renders a run's change record (`ferry report`): one self-contained HTML file (inline CSS,
//! an inline SVG timeline, no scripts, nothing fetched: a Content-Security-Policy forbids
//! it even if something slipped through), a Markdown file, or the JSON of the view.
//!
//! Invariants: every value from the journal is escaped for where it goes (`html::esc`,
//! `md::esc`) — a step id or error holding `<script>` stays text — and the whole document
//! passes through the redactor before it is written, as every other output does.

mod html;
mod md;
mod rows;
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
