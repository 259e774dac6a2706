//! The change record as Markdown (for tickets that take text): the same sections as the
//! HTML page, the timeline as a table of spans. Values are escaped by [`esc`] so that a
//! step id with `|`, `<script>` or a newline neither breaks a table nor becomes HTML in a
//! renderer that passes HTML through.

use std::fmt::Write as _;

use super::fmt_ms;
use super::rows::{self, Value};
use crate::report::views::record::{ChangeRecord, SpanKind};

pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '|' => out.push_str("\\|"),
            '\\' | '`' | '*' | '_' | '[' | ']' | '#' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' => out.push(' '),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

pub fn page(r: &ChangeRecord) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Change record: {}\n", esc(&r.playbook.name));
    let _ = writeln!(
        s,
        "Run {} — **{}**: {}\n",
        esc(&r.run_id),
        esc(&r.state.as_str().replace('_', " ")),
        esc(&r.outcome)
    );
    if let Some(c) = &r.corrupt {
        let _ = writeln!(
            s,
            "> **The journal is corrupt.** {} This record shows the records before the damage only.\n",
            esc(c)
        );
    }
    if let Some(n) = &r.next {
        let _ = writeln!(s, "Next: {}\n", esc(n));
    }
    s.push_str("## Summary\n\n| | |\n|---|---|\n");
    for (k, v) in rows::summary(r) {
        let v = match v {
            Value::Text(t) | Value::Error(t) => t,
            Value::File { name, path, hash } => format!("{name} ({path}), sha256 {hash}"),
        };
        let _ = writeln!(s, "| {k} | {} |", esc(&v));
    }
    if !r.vars.is_empty() {
        s.push_str("\n## Variables\n\n| name | value | from |\n|---|---|---|\n");
        for v in &r.vars {
            let _ = writeln!(s, "| {} | {} | {} |", esc(&v.name), esc(&v.value), v.source);
        }
    }
    s.push_str("\n## Steps\n\n| # | step | kind | outcome | apply | undo | checks | retries, errors |\n|---|---|---|---|---|---|---|---|\n");
    for row in rows::steps(r) {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            row.n,
            esc(&row.step.id),
            esc(&row.step.kind),
            esc(&row.step.outcome),
            esc(&row.apply),
            esc(&row.undo),
            esc(&row.checks),
            esc(&row.notes.join("; ")),
        );
    }
    events(&mut s, r);
    timeline(&mut s, r);
    s
}

/// Rollbacks (what each undid), interruptions and resumes, as a list.
fn events(s: &mut String, r: &ChangeRecord) {
    let events = rows::events(r);
    if events.is_empty() {
        return;
    }
    s.push_str("\n## Rollback, interruptions and resumes\n\n");
    for e in events {
        let text = match e.note {
            Some(n) => format!("{}, {n}", e.text),
            None => e.text,
        };
        let _ = writeln!(s, "- {} {}", e.what, esc(&text));
    }
}

/// The timeline as text: every span in time order.
fn timeline(s: &mut String, r: &ChangeRecord) {
    s.push_str("\n## Timeline\n\n");
    if r.untimed {
        s.push_str("This journal (format 1) has no times: no timeline.\n");
        return;
    }
    let mut spans: Vec<(u64, String)> = vec![];
    for st in &r.steps {
        for sp in &st.spans {
            let what = match sp.kind {
                SpanKind::Apply => "apply",
                SpanKind::Undo => "undo",
            };
            let line = format!(
                "| +{} | {} | {what} | {} | {} |",
                fmt_ms(sp.from_ms),
                esc(&st.id),
                fmt_ms(sp.to_ms - sp.from_ms),
                sp.end.as_str()
            );
            spans.push((sp.from_ms, line));
        }
    }
    for rb in &r.rollbacks {
        let line = format!(
            "| +{} | – | rollback started | | {} |",
            fmt_ms(rb.at_ms),
            esc(&rb.reason)
        );
        spans.push((rb.at_ms, line));
    }
    for i in &r.interruptions {
        let line = format!(
            "| +{} | {} | interrupted | | |",
            fmt_ms(i.at_ms),
            esc(i.step.as_deref().unwrap_or("–"))
        );
        spans.push((i.at_ms, line));
    }
    for d in &r.downtime {
        let end = d.to_ms.map_or("not started again".into(), |t| {
            format!("down for {}", fmt_ms(t - d.from_ms))
        });
        let line = format!(
            "| +{} | {} | {} stopped | | {end} |",
            fmt_ms(d.from_ms),
            esc(&d.stopped_by),
            esc(&d.service)
        );
        spans.push((d.from_ms, line));
    }
    spans.sort_by_key(|(t, _)| *t);
    s.push_str("| at | step | what | took | outcome |\n|---|---|---|---|---|\n");
    for (_, l) in spans {
        s.push_str(&l);
        s.push('\n');
    }
}
