//! Command output: every command other than run/resume/rollback (whose output is the event
//! stream) answers with one typed value, a `View`, that renders as human text or as one JSON
//! document (`--format json`). Both forms come from the same value, and both pass through
//! the redactor, so no command can print a secret in one format and mask it in the other.

use std::io::Write;

use serde::Serialize;

/// How a command's answer is shown (the global `--format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Human,
    Json,
}

pub trait View: Serialize {
    /// The human form: complete lines, each ending in `\n`.
    fn human(&self, out: &mut String);
    /// Pretty-printed JSON (a document a person may read) or one line (for scripts and
    /// pagers that read one line per call, like `ferry check`).
    fn pretty(&self) -> bool {
        true
    }
}

/// The view as text in `format`, redacted.
pub fn render(view: &impl View, format: Format) -> String {
    let text = match format {
        Format::Human => {
            let mut s = String::new();
            view.human(&mut s);
            s
        }
        Format::Json => {
            // Views are plain data: serialising them cannot fail.
            let json = if view.pretty() {
                serde_json::to_string_pretty(view)
            } else {
                serde_json::to_string(view)
            };
            json.unwrap_or_default() + "\n"
        }
    };
    super::redact::redact(&text).into_owned()
}

/// Writes the view to stdout.
pub fn print(view: &impl View, format: Format) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(render(view, format).as_bytes())?;
    out.flush()
}

/// `line!(out, "…", args)`: one formatted line onto a human rendering.
macro_rules! line {
    ($out:expr) => {
        $out.push('\n')
    };
    ($out:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($out, $($arg)*);
    }};
}
pub(crate) use line;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::views::check::{CheckView, Report};

    #[test]
    fn one_value_two_forms_both_redacted() {
        assert!(crate::report::redact::register("s3cr3t-view-pw"));
        let report = Report::alert("login failed for s3cr3t-view-pw")
            .details(vec!["detail s3cr3t-view-pw".into()])
            .data(serde_json::json!({"dsn": "postgres://u:s3cr3t-view-pw@h/db"}));
        let v = CheckView {
            report,
            verbose: false,
        };
        let human = render(&v, Format::Human);
        assert_eq!(human, "ALERT: login failed for ***\n  detail ***\n");
        let json = render(&v, Format::Json);
        assert_eq!(json.lines().count(), 1, "ferry check's JSON is one line");
        assert!(!json.contains("s3cr3t"), "{json}");
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed["status"], "alert");
        assert_eq!(parsed["summary"], "login failed for ***");
        assert_eq!(parsed["data"]["dsn"], "postgres://u:***@h/db");
    }
}
