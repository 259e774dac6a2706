//! `--junit FILE`: one testcase per step and one per check, so CI systems show dry-run and
//! run results natively. Written once, at `finish`, through a temp file and a rename.

use std::path::PathBuf;
use std::time::Instant;

use super::{CheckStatus, Event, Reporter, StepStatus};

struct Case {
    name: String,
    secs: f64,
    outcome: Verdict,
    out: String,
}

enum Verdict {
    Pass,
    Fail(String),
    Skip(String),
}

pub struct JunitReporter {
    path: PathBuf,
    suite: String,
    cases: Vec<Case>,
    started: Instant,
    running: Option<(String, Instant)>,
}

impl JunitReporter {
    pub fn new(path: PathBuf) -> Self {
        JunitReporter {
            path,
            suite: "ferry".into(),
            cases: vec![],
            started: Instant::now(),
            running: None,
        }
    }
}

impl Reporter for JunitReporter {
    fn event(&mut self, _ts: &str, event: &Event) {
        match event {
            Event::RunStarted { playbook, .. } => self.suite = format!("ferry.{playbook}"),
            Event::StepStarted { step, .. } => self.running = Some((step.clone(), Instant::now())),
            Event::Check {
                step,
                check,
                status,
                detail,
            } => {
                let outcome = match status {
                    CheckStatus::Pass | CheckStatus::Warn => Verdict::Pass,
                    CheckStatus::Fail => Verdict::Fail(detail.clone()),
                    CheckStatus::Deferred | CheckStatus::Pending => Verdict::Skip(detail.clone()),
                };
                let out = if *status == CheckStatus::Warn {
                    format!("WARN: {detail}")
                } else {
                    detail.clone()
                };
                self.cases.push(Case {
                    name: format!("{step} check: {check}"),
                    secs: 0.0,
                    outcome,
                    out,
                });
            }
            Event::StepFinished {
                step,
                status,
                error,
                elapsed_ms,
            } => {
                let outcome = match status {
                    StepStatus::Done | StepStatus::Checked | StepStatus::Undone => Verdict::Pass,
                    StepStatus::Skipped => Verdict::Skip("already applied".into()),
                    StepStatus::Interrupted => Verdict::Skip("interrupted".into()),
                    StepStatus::Failed | StepStatus::UndoFailed => {
                        Verdict::Fail(error.clone().unwrap_or_default())
                    }
                };
                let name = match status {
                    StepStatus::Undone | StepStatus::UndoFailed => format!("{step} rollback"),
                    _ => step.clone(),
                };
                self.running = None;
                let secs = *elapsed_ms as f64 / 1000.0;
                self.cases.push(Case {
                    name,
                    secs,
                    outcome,
                    out: String::new(),
                });
            }
            _ => {}
        }
    }

    fn finish(&mut self) -> std::io::Result<()> {
        let failures = self
            .cases
            .iter()
            .filter(|c| matches!(c.outcome, Verdict::Fail(_)))
            .count();
        let skipped = self
            .cases
            .iter()
            .filter(|c| matches!(c.outcome, Verdict::Skip(_)))
            .count();
        let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        x += &format!(
            "<testsuites tests=\"{n}\" failures=\"{failures}\" time=\"{t:.3}\">\n<testsuite name=\"{s}\" tests=\"{n}\" failures=\"{failures}\" skipped=\"{skipped}\" time=\"{t:.3}\">\n",
            n = self.cases.len(),
            t = self.started.elapsed().as_secs_f64(),
            s = esc(&self.suite)
        );
        for c in &self.cases {
            x += &format!(
                "  <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\">",
                esc(&self.suite),
                esc(&c.name),
                c.secs
            );
            match &c.outcome {
                Verdict::Pass => {}
                Verdict::Fail(m) => x += &format!("<failure message=\"{}\"/>", esc(m)),
                Verdict::Skip(m) => x += &format!("<skipped message=\"{}\"/>", esc(m)),
            }
            if !c.out.is_empty() {
                x += &format!("<system-out>{}</system-out>", esc(&c.out));
            }
            x += "</testcase>\n";
        }
        x += "</testsuite>\n</testsuites>\n";
        let tmp = self.path.with_extension("xml.tmp");
        std::fs::write(&tmp, x)?;
        std::fs::rename(tmp, &self.path)
    }
}

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            // XML 1.0 forbids most control characters even when escaped.
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\t' | '\r') => o.push('?'),
            c => o.push(c),
        }
    }
    o
}
