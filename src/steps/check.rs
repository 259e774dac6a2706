//! kind = "check": a monitoring check (see `src/checks/`) as a playbook precondition. It
//! passes when the check's status is `expect` ("ok" by default; "alert" lets a playbook run
//! only when something needs doing). It changes nothing; `apply` looks again, because the
//! world may have moved since the preflight.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail};
use serde::Deserialize;

use super::{Check, Reversibility, Step, StepCx};
use crate::checks::{self, CheckCx, Params, Status};
use crate::report::{CheckStatus, Level};

/// `name`, `expect`, plus every threshold any check takes (validated against the named one).
pub const KEYS: &[&str] = &[
    "name",
    "expect",
    "database",
    "schema",
    "table",
    "months_ahead",
    "max_pct",
    "count",
    "tables",
    "max_dead_pct",
    "min_rows",
    "pattern",
    "min_stats_age",
    "max_size",
    "window",
    "min_events",
    "event_types",
    "query",
    "query_timeout",
    "url",
    "pending_for",
    "max_request_s",
    "max_heap_pct",
    "max_lag",
    "max_lag_seconds",
    "min_standbys",
    "standby",
    "max_retained",
];

#[derive(Debug, Clone, Deserialize)]
pub struct CheckStep {
    pub name: String,
    #[serde(default = "ok")]
    pub expect: String,
    #[serde(flatten)]
    pub thresholds: BTreeMap<String, toml::Value>,
}

fn ok() -> String {
    "ok".into()
}

impl CheckStep {
    async fn look(&self, cx: &StepCx) -> anyhow::Result<checks::Report> {
        let target = cx.target()?;
        let keys =
            checks::keys(&self.name).ok_or_else(|| anyhow!("unknown check `{}`", self.name))?;
        let mine: toml::Table = self.thresholds.clone().into_iter().collect();
        let empty = toml::Table::new();
        let from_target = target.checks.get(&self.name).unwrap_or(&empty);
        let params = Params::merge(&self.name, keys, &[from_target, &mine])?;
        let ccx = CheckCx {
            target,
            params,
            state_dir: cx.state_dir.clone(),
        };
        Ok(checks::run(&self.name, &ccx).await)
    }

    fn expected(&self) -> Status {
        if self.expect == "alert" {
            Status::Alert
        } else {
            Status::Ok
        }
    }
}

impl Step for CheckStep {
    fn validate(&self) -> Vec<(Option<&'static str>, String)> {
        let mut out = vec![];
        match checks::keys(&self.name) {
            None => {
                let names = checks::CHECKS.iter().map(|c| c.0);
                let help = crate::util::suggest::did_you_mean(&self.name, names)
                    .map(|h| format!(" ({h})"))
                    .unwrap_or_default();
                out.push((Some("name"), format!("unknown check `{}`{help}", self.name)));
            }
            Some(keys) => {
                for k in self.thresholds.keys() {
                    if !keys.contains(&k.as_str()) {
                        out.push((
                            None,
                            format!(
                                "check `{}` has no setting `{k}`; it takes: {}",
                                self.name,
                                keys.join(", ")
                            ),
                        ));
                    }
                }
            }
        }
        if self.expect != "ok" && self.expect != "alert" {
            out.push((
                Some("expect"),
                format!(
                    "`expect` must be \"ok\" or \"alert\", not `{}`",
                    self.expect
                ),
            ));
        }
        out
    }
    fn describe(&self) -> String {
        format!(
            "check {} (expect {})",
            self.name,
            self.expect.to_uppercase()
        )
    }

    fn reversibility(&self) -> Reversibility {
        Reversibility::NothingToUndo
    }

    async fn check(&self, cx: &StepCx) -> anyhow::Result<Vec<Check>> {
        let r = self.look(cx).await?;
        let mut detail = r.line();
        if !r.details.is_empty() && r.status != Status::Ok {
            detail += &format!(" [{}]", r.details.join("; "));
        }
        Ok(vec![if r.status == self.expected() {
            Check::pass(self.name.clone(), detail)
        } else if cx.preflight && cx.after_changes {
            Check::new(
                self.name.clone(),
                CheckStatus::Deferred,
                format!("{detail} now; judged after the earlier steps run"),
            )
        } else {
            Check::fail(
                self.name.clone(),
                format!("{detail} (expected {})", self.expect.to_uppercase()),
            )
        }])
    }

    async fn apply(&self, cx: &StepCx) -> anyhow::Result<()> {
        let r = self.look(cx).await?;
        if r.status != self.expected() {
            bail!("{} (expected {})", r.line(), self.expect.to_uppercase());
        }
        cx.log(Level::Info, r.line());
        Ok(())
    }

    async fn rollback(&self, _cx: &StepCx) -> anyhow::Result<()> {
        Ok(())
    }
}
