//! `ferry plan`: the steps in order, what each does and how it is undone (or that it
//! cannot be). JSON: `{playbook, path, target, hash, steps: [{id, kind, does, undo,
//! reversible (yes | no | nothing), timeout_ms, retries, on_failure, fingerprint}]}`.

use std::time::Duration;

use serde::Serialize;

use crate::report::view::{View, line};
use crate::util::duration::fmt_duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reversible {
    Yes,
    No,
    /// Changes nothing (a check, a wait, an approval).
    Nothing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    Rollback,
    Stop,
}

#[derive(Debug, Serialize)]
pub struct PlanStep {
    pub id: String,
    pub kind: String,
    pub does: String,
    /// How it is undone, or why it cannot be (empty when there is nothing to undo).
    pub undo: String,
    pub reversible: Reversible,
    pub timeout_ms: Option<u64>,
    pub retries: u32,
    #[serde(skip)]
    pub retry_delay: Duration,
    pub on_failure: OnFailure,
    pub fingerprint: String,
}

#[derive(Debug, Serialize)]
pub struct PlanView {
    pub playbook: String,
    #[serde(skip)]
    pub description: String,
    pub path: String,
    pub target: Option<String>,
    #[serde(skip)]
    pub production: bool,
    pub hash: String,
    pub steps: Vec<PlanStep>,
}

impl View for PlanView {
    fn human(&self, out: &mut String) {
        let on = self
            .target
            .as_ref()
            .map(|t| {
                let prod = if self.production { " (PRODUCTION)" } else { "" };
                format!(" on {t}{prod}")
            })
            .unwrap_or_default();
        line!(
            out,
            "plan: {}{on}, {} steps",
            self.playbook,
            self.steps.len()
        );
        if !self.description.is_empty() {
            line!(out, "  {}", self.description);
        }
        for (i, s) in self.steps.iter().enumerate() {
            line!(out);
            line!(out, "{:>3}. {} [{}]", i + 1, s.id, s.kind);
            line!(out, "     does: {}", s.does);
            match s.reversible {
                Reversible::Yes => line!(out, "     undo: {}", s.undo),
                Reversible::No => line!(out, "     undo: CANNOT BE UNDONE ({})", s.undo),
                Reversible::Nothing => line!(out, "     undo: nothing to undo"),
            }
            let mut extra = vec![];
            if let Some(t) = s.timeout_ms {
                extra.push(format!(
                    "timeout {}",
                    fmt_duration(Duration::from_millis(t))
                ));
            }
            if s.retries > 0 {
                extra.push(format!(
                    "{} retries every {}",
                    s.retries,
                    fmt_duration(s.retry_delay)
                ));
            }
            if s.on_failure == OnFailure::Stop {
                extra.push("on failure: stop (no automatic rollback)".into());
            }
            if !extra.is_empty() {
                line!(out, "     {}", extra.join(", "));
            }
        }
    }
}
