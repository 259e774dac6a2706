//! `ferry validate`: the playbook (and target) parsed, resolved and validated. Errors are
//! not a view: they fail the command with its diagnostics.

use serde::Serialize;

use crate::report::view::{View, line};

#[derive(Debug, Serialize)]
pub struct ValidTarget {
    pub path: String,
    /// What the target names, in one line (compose project, databases, registry…).
    pub summary: String,
}

#[derive(Debug, Serialize)]
pub struct ValidateView {
    pub playbook: String,
    pub steps: usize,
    pub target: Option<ValidTarget>,
    /// Rendered `warning: …` diagnostics (file:line:col); they do not fail validation.
    pub warnings: Vec<String>,
}

impl View for ValidateView {
    fn human(&self, out: &mut String) {
        for w in &self.warnings {
            out.push_str(w);
            out.push('\n');
        }
        line!(out, "{}: ok ({} steps)", self.playbook, self.steps);
        if let Some(t) = &self.target {
            line!(out, "{}: ok ({})", t.path, t.summary);
        }
    }
}
