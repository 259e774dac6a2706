//! The change record as Markdown (for tickets that take text): the same sections as the
//! HTML page, the timeline as a table of spans. Values are escaped by [`esc`] so that a
//! step id with `|`, `<script>` or a newline neither breaks a table nor becomes HTML in a
//! renderer that passes HTML through.

use std::fmt::Write as _;

use super::{checks_line, fmt_ms, undos_of};
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
    let mut kv = |k: &str, v: String| {
        let _ = writeln!(s, "| {k} | {} |", esc(&v));
    };
    kv("outcome", r.outcome.clone());
    kv(
        "exit code",
        r.exit_code.map_or("unknown".into(), |c| c.to_string()),
    );
    kv(
        "run by",
        format!(
            "{} on {} (pid {})",
            r.user.as_deref().unwrap_or("?"),
            r.host,
            r.pid
        ),
    );
    kv(
        "when (UTC)",
        format!(
            "{} → {}",
            r.started_at.as_deref().unwrap_or("?"),
            r.ended_at.as_deref().unwrap_or("?")
        ),
    );
    if let Some(d) = r.duration_ms {
        kv("duration", fmt_ms(d));
    }
    kv(
        "playbook",
        format!(
            "{} ({}), sha256 {}",
            r.playbook.name,
            r.playbook.path,
            r.playbook.hash.as_deref().unwrap_or("?")
        ),
    );
    kv(
        "target",
        match &r.target {
            Some(t) => format!(
                "{} ({}), sha256 {}",
                t.name,
                t.path,
                t.hash.as_deref().unwrap_or("not recorded")
            ),
            None => "none (local commands only)".into(),
        },
    );
    if let Some(e) = &r.last_error {
        kv("last error", e.clone());
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
        kv(
            "downtime",
            format!(
                "{} had no running replica for {dur}: stopped by {}, {until}",
                d.service, d.stopped_by
            ),
        );
    }
    if !r.vars.is_empty() {
        s.push_str("\n## Variables\n\n| name | value | from |\n|---|---|---|\n");
        for v in &r.vars {
            let _ = writeln!(s, "| {} | {} | {} |", esc(&v.name), esc(&v.value), v.source);
        }
    }
    s.push_str("\n## Steps\n\n| # | step | kind | outcome | apply | undo | checks | retries, errors |\n|---|---|---|---|---|---|---|---|\n");
    for (i, st) in r.steps.iter().enumerate() {
        let mut notes: Vec<String> = st
            .retries
            .iter()
            .map(|t| format!("attempt {} failed: {}", t.attempt, t.error))
            .collect();
        notes.extend(st.error.iter().map(|e| format!("error: {e}")));
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            i + 1,
            esc(&st.id),
            esc(&st.kind),
            esc(&st.outcome),
            st.apply_text(fmt_ms),
            st.undo_ms().map_or("–".into(), fmt_ms),
            esc(&checks_line(&st.checks)),
            esc(&notes.join("; ")),
        );
    }
    events(&mut s, r);
    timeline(&mut s, r);
    s
}

/// Rollbacks (what each undid), interruptions and resumes, as a list.
fn events(s: &mut String, r: &ChangeRecord) {
    if r.rollbacks.is_empty() && r.sessions.is_empty() && r.interruptions.is_empty() {
        return;
    }
    s.push_str("\n## Rollback, interruptions and resumes\n\n");
    for (i, rb) in r.rollbacks.iter().enumerate() {
        let undone = undos_of(r, i);
        let undone = if undone.is_empty() {
            "nothing".into()
        } else {
            undone.join("; ")
        };
        let at = rb.at.as_deref().unwrap_or("?");
        let text = format!("at {at}: {}. Undone, newest first: {undone}", rb.reason);
        let _ = writeln!(s, "- rollback {}", esc(&text));
    }
    for i in &r.interruptions {
        let step = i.step.as_ref().map(|s| format!(", in step {s}"));
        let text = format!(
            "at {}{}",
            i.at.as_deref().unwrap_or("?"),
            step.unwrap_or_default()
        );
        let _ = writeln!(s, "- interrupted {}", esc(&text));
    }
    for se in &r.sessions {
        let who = se.user.as_deref().unwrap_or("?");
        let text = format!("at {} by {who} on {} (pid {})", se.at, se.host, se.pid);
        let _ = writeln!(s, "- continued {}", esc(&text));
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
