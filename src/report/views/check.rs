//! `ferry check`: one monitoring check's answer (exit 0 OK, 1 ALERT, 3 UNKNOWN), and the
//! list of checks.

use serde::Serialize;

use crate::report::view::{View, line};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Alert,
    Unknown,
}

impl Status {
    pub fn exit_code(self) -> i32 {
        match self {
            Status::Ok => 0,
            Status::Alert => 1,
            Status::Unknown => 3,
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Alert => "ALERT",
            Status::Unknown => "UNKNOWN",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub check: String,
    pub status: Status,
    /// One line, as cron mails and pagers show it.
    pub summary: String,
    pub details: Vec<String>,
    /// Measured values, for `--format json` consumers.
    pub data: serde_json::Value,
}

impl Report {
    pub fn new(status: Status, summary: impl Into<String>) -> Self {
        Report {
            check: String::new(),
            status,
            summary: summary.into(),
            details: vec![],
            data: serde_json::Value::Null,
        }
    }
    pub fn ok(summary: impl Into<String>) -> Self {
        Self::new(Status::Ok, summary)
    }
    pub fn alert(summary: impl Into<String>) -> Self {
        Self::new(Status::Alert, summary)
    }
    pub fn details(mut self, d: Vec<String>) -> Self {
        self.details = d;
        self
    }
    pub fn data(mut self, d: serde_json::Value) -> Self {
        self.data = d;
        self
    }
    /// `ALERT: Missing audit partition for next month: audit_events_2026_12`
    pub fn line(&self) -> String {
        format!("{}: {}", self.status.label(), self.summary)
    }
}

/// `ferry check NAME`: one line (`OK: …`), then the details under an alert (or with `-v`).
/// JSON: `{check, status, summary, details, data}` on one line.
#[derive(Debug, Serialize)]
pub struct CheckView {
    #[serde(flatten)]
    pub report: Report,
    #[serde(skip)]
    pub verbose: bool,
}

impl View for CheckView {
    fn human(&self, out: &mut String) {
        line!(out, "{}", self.report.line());
        if self.verbose || self.report.status != Status::Ok {
            for d in &self.report.details {
                line!(out, "  {d}");
            }
        }
    }
    fn pretty(&self) -> bool {
        false
    }
}

#[derive(Debug, Serialize)]
pub struct CheckInfo {
    pub name: &'static str,
    pub keys: &'static [&'static str],
    pub description: &'static str,
}

/// `ferry check` alone: every check with what it watches. JSON: an array of
/// `{name, keys, description}`.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct CheckList(pub Vec<CheckInfo>);

impl View for CheckList {
    fn human(&self, out: &mut String) {
        for c in &self.0 {
            line!(out, "{:<22} {}", c.name, c.description);
        }
    }
}
