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
}

impl View for ValidateView {
    fn human(&self, out: &mut String) {
        line!(out, "{}: ok ({} steps)", self.playbook, self.steps);
        if let Some(t) = &self.target {
            line!(out, "{}: ok ({})", t.path, t.summary);
        }
    }
}
