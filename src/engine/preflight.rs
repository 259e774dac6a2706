//! Preflight and dry-run: every step's read-only `check`, run for real and reported, before
//! anything changes (a run) or instead of changing anything (`--dry-run`). Checks whose
//! inputs come from earlier steps answer "deferred" and are checked again when reached.

use std::collections::HashSet;
use std::time::Instant;

use super::records::{CheckRecord, Record};
use super::runner::{Engine, RunRequest};
use crate::error::Error;
use crate::report::{CheckStatus, Event, Mode, Phase, RunOutcome, StepStatus};
use crate::steps::{Cancel, Check, Step, StepCx};

impl Engine {
    /// Every step's `check`, for real; nothing applied, nothing journaled, no lock taken.
    pub async fn dry_run(&self, req: RunRequest) -> Result<(), Error> {
        let started = Instant::now();
        self.started(&req, Mode::DryRun);
        let (failed, _, _) = match self.preflight(&req, true).await {
            Some(r) => r,
            None => {
                let r = Err(Error::StoppedInChecks {
                    run_id: req.run_id.clone(),
                });
                self.finished(&req.run_id, started, &r, RunOutcome::ChecksPassed);
                return r;
            }
        };
        let r = if failed.is_empty() {
            Ok(())
        } else {
            Err(Error::Precondition(format!(
                "{} check(s) failed: {}; nothing was changed",
                failed.len(),
                failed.join(", ")
            )))
        };
        self.finished(&req.run_id, started, &r, RunOutcome::ChecksPassed);
        r
    }

    /// Runs every step's checks in order, reporting each; returns failed step ids, the
    /// ids whose checks were deferred and the `checked` records for the journal (written
    /// once it exists), or None when a signal stopped it (the first one cancels the running
    /// check: checks change nothing, so nothing is lost; dropping it kills its process
    /// group).
    pub(super) async fn preflight(
        &self,
        req: &RunRequest,
        dry_run: bool,
    ) -> Option<(Vec<String>, HashSet<String>, Vec<Record>)> {
        let mut failed = vec![];
        let mut records = vec![];
        let mut deferred = HashSet::new();
        let total = req.playbook.steps.len();
        let mut changes_before = false;
        for (i, step) in req.playbook.steps.iter().enumerate() {
            if self.stop.soft.is_cancelled() {
                return None;
            }
            let mut cx = self.cx(req, step, None, None, None);
            cx.dry_run = dry_run;
            cx.preflight = true;
            cx.after_changes = changes_before;
            changes_before |=
                step.spec.reversibility() != crate::steps::Reversibility::NothingToUndo;
            let t0 = Instant::now();
            if dry_run {
                self.sink.emit(Event::StepStarted {
                    step: step.id.clone(),
                    kind: step.kind.clone(),
                    index: i,
                    total,
                    description: step
                        .description
                        .clone()
                        .unwrap_or_else(|| step.spec.describe()),
                    phase: Phase::Check,
                });
            }
            let Some(checks) = run_checks(&cx, &step.spec, &self.stop.soft).await else {
                if dry_run {
                    self.sink.emit(Event::StepFinished {
                        step: step.id.clone(),
                        status: StepStatus::Interrupted,
                        elapsed_ms: t0.elapsed().as_millis() as u64,
                        error: None,
                    });
                }
                return None;
            };
            let bad = checks.iter().any(|c| c.status == CheckStatus::Fail);
            if checks.iter().any(|c| c.status == CheckStatus::Deferred) {
                deferred.insert(step.id.clone());
            }
            records.extend(checked(&step.id, &checks));
            for c in checks {
                self.sink.emit(Event::Check {
                    step: step.id.clone(),
                    check: c.name,
                    status: c.status,
                    detail: c.detail,
                });
            }
            if bad {
                failed.push(step.id.clone());
            }
            if dry_run {
                self.sink.emit(Event::StepFinished {
                    step: step.id.clone(),
                    status: if bad {
                        StepStatus::Failed
                    } else {
                        StepStatus::Checked
                    },
                    elapsed_ms: t0.elapsed().as_millis() as u64,
                    error: bad.then(|| "a check failed".to_owned()),
                });
            }
        }
        if self.stop.soft.is_cancelled() {
            return None;
        }
        Some((failed, deferred, records))
    }
}

/// The `checked` record of a step's checks (none when the step has no checks), redacted
/// before it reaches the journal.
pub(super) fn checked(step: &str, checks: &[Check]) -> Option<Record> {
    use crate::report::redact::redact;
    (!checks.is_empty()).then(|| Record::Checked {
        step: step.into(),
        checks: checks
            .iter()
            .map(|c| CheckRecord {
                name: c.name.clone(),
                status: c.status,
                detail: redact(&c.detail).into_owned(),
            })
            .collect(),
    })
}

/// Checks never abort a run by erroring: an error is a failed check with its message.
/// None: `stop` fired first and the checks were dropped (their process groups killed).
pub(super) async fn run_checks(cx: &StepCx, step: &impl Step, stop: &Cancel) -> Option<Vec<Check>> {
    tokio::select! {
        r = step.check(cx) => Some(match r {
            Ok(c) => c,
            Err(e) => vec![Check::fail("check", format!("{e:#}"))],
        }),
        _ = stop.cancelled() => None,
    }
}
