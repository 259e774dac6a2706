//! Source-located errors: `file:line:col`, the offending line, a caret under the span, and
//! an optional help line ("did you mean …?"). Every validation error of a playbook or target
//! is one of these, and all of them are reported at once.

use std::ops::Range;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub message: String,
    pub span: Range<usize>,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn new(message: impl Into<String>, span: Range<usize>) -> Self {
        Diagnostic {
            message: message.into(),
            span,
            help: None,
        }
    }

    pub fn help(mut self, help: Option<String>) -> Self {
        self.help = help;
        self
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

pub fn render(path: &str, text: &str, d: &Diagnostic) -> String {
    let (line, col) = line_col(text, d.span.start);
    let start = text[..d.span.start.min(text.len())]
        .rfind('\n')
        .map_or(0, |i| i + 1);
    let end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let src_line = &text[start..end];
    let span_end = d.span.end.clamp(d.span.start, end);
    let width = text[d.span.start.min(end)..span_end].chars().count().max(1);
    let gutter = line.to_string().len();
    let pad = " ".repeat(gutter);
    let mut out = format!(
        "error: {}\n{pad}--> {path}:{line}:{col}\n{pad} |\n",
        d.message
    );
    out += &format!("{line} | {src_line}\n");
    out += &format!("{pad} | {}{}", " ".repeat(col - 1), "^".repeat(width));
    if let Some(h) = &d.help {
        out += &format!(" {h}");
    }
    out.push('\n');
    out
}

pub fn render_all(path: &str, text: &str, ds: &[Diagnostic]) -> String {
    let mut out: String = ds
        .iter()
        .map(|d| render(path, text, d))
        .collect::<Vec<_>>()
        .join("\n");
    out += &format!(
        "\n{} error{} in {path}\n",
        ds.len(),
        if ds.len() == 1 { "" } else { "s" }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::suggest::did_you_mean;

    #[test]
    fn caret_points_at_the_span() {
        let text = "a = 1\nkind = \"exce\"\n";
        let d = Diagnostic::new("unknown step kind `exce`", 13..19)
            .help(did_you_mean("exce", ["exec", "sql"]));
        let r = render("p.toml", text, &d);
        assert!(r.contains("--> p.toml:2:8"), "{r}");
        assert!(
            r.contains("2 | kind = \"exce\"\n  |        ^^^^^^ did you mean `exec`?"),
            "{r}"
        );
    }
}
