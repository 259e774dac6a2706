//! `ferry doctor --target T`: one line per component the target names, each saying what was
//! found or what is wrong and how to fix it. Exit 0 when every line is ok, 3 otherwise.
//! JSON: `{target, name, ok, timeout_ms, components: [{component, status, detail, fix}]}`.

use serde::Serialize;

use crate::report::view::{View, line};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Ok,
    /// Something a playbook will trip over: the line says what and how to fix it.
    Problem,
    /// Not looked at: its section is absent from the target (never makes doctor fail).
    Skipped,
}

impl Health {
    fn label(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Problem => "FAIL",
            Health::Skipped => "skip",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// `docker`, `compose`, `registry`, `postgres.fhir`, `pgbouncer`, `fhir`, `files`.
    pub component: String,
    pub status: Health,
    /// What was found (version, counts, the answer) or what is wrong.
    pub detail: String,
    /// How to fix it; set on every problem.
    pub fix: Option<String>,
}

impl Finding {
    pub fn ok(component: impl Into<String>, detail: impl Into<String>) -> Finding {
        Finding {
            component: component.into(),
            status: Health::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    pub fn problem(
        component: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Finding {
        Finding {
            component: component.into(),
            status: Health::Problem,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    pub fn skipped(component: impl Into<String>, detail: impl Into<String>) -> Finding {
        Finding {
            component: component.into(),
            status: Health::Skipped,
            detail: detail.into(),
            fix: None,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct DoctorView {
    /// The target file's path.
    pub target: String,
    /// Its `name`.
    pub name: String,
    pub ok: bool,
    /// How long each probe waited for an answer.
    pub timeout_ms: u64,
    pub components: Vec<Finding>,
}

impl DoctorView {
    pub fn new(target: String, name: String, timeout_ms: u64, components: Vec<Finding>) -> Self {
        DoctorView {
            ok: components.iter().all(|c| c.status != Health::Problem),
            target,
            name,
            timeout_ms,
            components,
        }
    }
}

impl View for DoctorView {
    fn human(&self, out: &mut String) {
        line!(
            out,
            "ferry doctor: target `{}` ({})",
            self.name,
            self.target
        );
        let width = self
            .components
            .iter()
            .map(|c| c.component.len())
            .max()
            .unwrap_or(0);
        for c in &self.components {
            let fix = c
                .fix
                .as_deref()
                .map(|f| format!(" — fix: {f}"))
                .unwrap_or_default();
            line!(
                out,
                "{:<4} {:<width$}  {}{fix}",
                c.status.label(),
                c.component,
                c.detail
            );
        }
        let bad = self
            .components
            .iter()
            .filter(|c| c.status == Health::Problem)
            .count();
        if bad == 0 {
            line!(out, "all good: every component the target names answered");
        } else {
            line!(
                out,
                "{bad} of {} components need attention (exit 3)",
                self.components.len()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::view::{Format, render};

    #[test]
    fn one_line_per_component_and_the_verdict() {
        let v = DoctorView::new(
            "t.toml".into(),
            "staging".into(),
            5,
            vec![
                Finding::ok("docker", "Docker Engine 24.0.7"),
                Finding::problem("fhir", "GET /metadata answered 404", "fix the base_url"),
                Finding::skipped("registry", "no [registry] in the target"),
            ],
        );
        assert!(!v.ok);
        let human = render(&v, Format::Human);
        let lines: Vec<&str> = human.lines().collect();
        assert_eq!(lines.len(), 5, "{human}");
        assert_eq!(lines[1], "ok   docker    Docker Engine 24.0.7");
        assert_eq!(
            lines[2],
            "FAIL fhir      GET /metadata answered 404 — fix: fix the base_url"
        );
        assert!(lines[4].contains("1 of 3"), "{human}");
        let json: serde_json::Value = serde_json::from_str(&render(&v, Format::Json)).unwrap();
        assert_eq!(json["ok"], false);
        assert_eq!(json["components"][1]["status"], "problem");
        assert_eq!(json["components"][1]["fix"], "fix the base_url");
        assert_eq!(json["components"][2]["status"], "skipped");
    }
}
