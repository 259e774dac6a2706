//! Human output on stderr: a spinner line per running step with its elapsed time, a bar with
//! rate and ETA for steps that report `(done, total)`, and a closing summary with hints.
//! When stderr is not a terminal the same information comes as plain lines.
#![allow(clippy::print_stderr)] // the human reporter is where progress reaches the terminal

use std::collections::HashMap;
use std::time::Duration;

use console::{Style, Term, style};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{CheckStatus, Event, Level, Phase, Reporter, StepStatus, Stream};

/// The live progress display, so a prompt can hide it while a person types.
static LIVE: std::sync::Mutex<Option<MultiProgress>> = std::sync::Mutex::new(None);

/// Runs `f` with the progress display hidden (and redrawn after).
pub fn suspend<R>(f: impl FnOnce() -> R) -> R {
    let mp = LIVE.lock().unwrap_or_else(|e| e.into_inner()).clone();
    match mp {
        Some(mp) => mp.suspend(f),
        None => f(),
    }
}

pub struct HumanReporter {
    mp: Option<MultiProgress>,
    bars: HashMap<String, ProgressBar>,
    quiet: bool,
    verbose: bool,
    counts: HashMap<&'static str, usize>,
}

impl HumanReporter {
    pub fn new(quiet: bool, verbose: bool) -> Self {
        let tty = Term::stderr().is_term() && !quiet;
        let mp = tty.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        *LIVE.lock().unwrap_or_else(|e| e.into_inner()) = mp.clone();
        HumanReporter {
            mp,
            bars: HashMap::new(),
            quiet,
            verbose,
            counts: HashMap::new(),
        }
    }

    fn line(&self, text: String) {
        match &self.mp {
            Some(mp) => {
                let _ = mp.println(text);
            }
            None => eprintln!("{text}"),
        }
    }
}

fn mark(status: CheckStatus) -> String {
    match status {
        CheckStatus::Pass => style("pass").green().to_string(),
        CheckStatus::Fail => style("FAIL").red().bold().to_string(),
        CheckStatus::Warn => style("warn").yellow().to_string(),
        CheckStatus::Deferred => style("deferred").dim().to_string(),
        CheckStatus::Pending => style("pending").cyan().to_string(),
    }
}

fn secs(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

impl Reporter for HumanReporter {
    fn event(&mut self, _ts: &str, event: &Event) {
        match event {
            Event::RunStarted {
                run_id,
                playbook,
                target,
                mode,
                steps,
            } => {
                if !self.quiet {
                    let on = target
                        .as_deref()
                        .map(|t| format!(" on {t}"))
                        .unwrap_or_default();
                    self.line(format!(
                        "{} {playbook}{on}: {steps} steps, run {run_id}",
                        style(format!("ferry {mode}")).bold()
                    ));
                }
            }
            Event::StepStarted {
                step,
                index,
                total,
                description,
                phase,
                ..
            } => {
                if self.quiet {
                    return;
                }
                let prefix = format!("[{}/{}] {step}", index + 1, total);
                let verb = if *phase == Phase::Rollback {
                    "undo: "
                } else {
                    ""
                };
                match &self.mp {
                    Some(mp) => {
                        let pb = mp.add(ProgressBar::new_spinner());
                        pb.set_style(
                            ProgressStyle::with_template(
                                "{spinner:.cyan} {prefix:.bold} {msg} {elapsed:.dim}",
                            )
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                        );
                        pb.set_prefix(prefix);
                        pb.set_message(format!("{verb}{description}"));
                        pb.enable_steady_tick(Duration::from_millis(120));
                        self.bars.insert(step.clone(), pb);
                    }
                    None => eprintln!("{prefix} {verb}{description}"),
                }
            }
            Event::Progress {
                step,
                done,
                total,
                unit,
            } => {
                if let Some(pb) = self.bars.get(step) {
                    if pb.length() != Some(*total) {
                        pb.set_length(*total);
                        pb.set_style(
                            ProgressStyle::with_template(&format!(
                                "{{spinner:.cyan}} {{prefix:.bold}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{per_sec}} ETA {{eta}}"
                            ))
                            .unwrap_or_else(|_| ProgressStyle::default_bar()),
                        );
                    }
                    pb.set_position(*done);
                } else if self.verbose {
                    eprintln!("  {step}: {done}/{total} {unit}");
                }
            }
            Event::Check {
                step,
                check,
                status,
                detail,
            } => {
                if !self.quiet || *status == CheckStatus::Fail {
                    self.line(format!("  {} {step} · {check}: {detail}", mark(*status)));
                }
            }
            Event::Output { step, stream, line } => {
                if self.verbose {
                    let s = if *stream == Stream::Stderr {
                        Style::new().yellow()
                    } else {
                        Style::new().dim()
                    };
                    self.line(format!("  {} {}", s.apply_to(format!("{step} |")), line));
                }
            }
            Event::Log {
                step,
                level,
                message,
            } => {
                if self.quiet && *level != Level::Error {
                    return;
                }
                let who = step
                    .as_deref()
                    .map(|s| format!("{s}: "))
                    .unwrap_or_default();
                let lvl = match level {
                    Level::Error => style("error").red().bold(),
                    Level::Warn => style("warning").yellow(),
                    Level::Info => style("note").dim(),
                };
                self.line(format!("  {lvl}: {who}{message}"));
            }
            Event::StepFinished {
                step,
                status,
                elapsed_ms,
                error,
            } => {
                let key = match status {
                    StepStatus::Done => "done",
                    StepStatus::Checked => "checked",
                    StepStatus::Skipped => "skipped",
                    StepStatus::Failed => "failed",
                    StepStatus::Undone => "undone",
                    StepStatus::UndoFailed => "undo failed",
                    StepStatus::Interrupted => "interrupted",
                };
                *self.counts.entry(key).or_default() += 1;
                let text = match status {
                    StepStatus::Done | StepStatus::Checked => {
                        style(format!("✓ {step}")).green().to_string()
                    }
                    StepStatus::Skipped => style(format!("= {step} (already applied)"))
                        .dim()
                        .to_string(),
                    StepStatus::Undone => style(format!("↶ {step} undone")).yellow().to_string(),
                    StepStatus::Interrupted => {
                        style(format!("‖ {step} interrupted")).yellow().to_string()
                    }
                    _ => style(format!("✗ {step} {key}")).red().bold().to_string(),
                };
                let err = error
                    .as_deref()
                    .map(|e| format!("\n    {e}"))
                    .unwrap_or_default();
                let msg = format!("{text} {}{err}", style(secs(*elapsed_ms)).dim());
                match self.bars.remove(step) {
                    Some(pb) => {
                        pb.finish_and_clear();
                        if let Some(mp) = &self.mp {
                            mp.remove(&pb);
                        }
                        self.line(msg);
                    }
                    None if !self.quiet || error.is_some() => eprintln!("{msg}"),
                    None => {}
                }
            }
            Event::RollbackStarted { reason, .. } => {
                self.line(format!(
                    "{} {reason}",
                    style("rolling back:").yellow().bold()
                ));
            }
            Event::RunFinished {
                run_id,
                outcome,
                exit_code,
                elapsed_ms,
                message,
                hint,
            } => {
                for (_, pb) in self.bars.drain() {
                    pb.finish_and_clear();
                }
                let mut parts: Vec<String> = self
                    .counts
                    .iter()
                    .map(|(k, v)| format!("{v} {k}"))
                    .collect();
                parts.sort();
                let head = match *exit_code {
                    0 => style(outcome.to_string()).green().bold(),
                    5 => style(outcome.to_string()).yellow().bold(),
                    _ => style(outcome.to_string()).red().bold(),
                };
                eprintln!(
                    "{head}: run {run_id} in {} ({}) exit {exit_code}",
                    secs(*elapsed_ms),
                    if parts.is_empty() {
                        "no steps".into()
                    } else {
                        parts.join(", ")
                    }
                );
                if let Some(m) = message {
                    eprintln!("  {m}");
                }
                if let Some(h) = hint {
                    eprintln!("  {} {h}", style("hint:").cyan());
                }
            }
        }
    }
}
