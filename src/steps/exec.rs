//! kind = "exec": a shell command with an optional undo, an idempotency probe (`done_if`)
//! and a read-only precondition (`check`). Playbook variables reach the command as
//! upper-case environment variables, and `{{ name }}` puts a value into the command text
//! itself (which is `sh -c`'s argv), single-quoted by the resolver (`'\''` for a quote;
//! `steps::text_context`), so a value is one shell word and never more commands; output
//! becomes events.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::bail;
use serde::Deserialize;

use super::{Check, Reversibility, Step, StepCx};
use crate::infra::process::{self, Exit, Shell};
use crate::report::CheckStatus;

pub const KEYS: &[&str] = &[
    "run",
    "undo",
    "done_if",
    "check",
    "env",
    "dir",
    "defer_check",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exec {
    pub run: String,
    pub undo: Option<String>,
    pub done_if: Option<String>,
    pub check: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub dir: Option<PathBuf>,
    /// The check depends on an earlier step's effect: dry-run reports it as deferred.
    #[serde(default)]
    pub defer_check: bool,
}

impl Exec {
    async fn sh(&self, cx: &StepCx, command: &str, with_timeout: bool) -> anyhow::Result<Exit> {
        let cwd = self
            .dir
            .as_deref()
            .map_or_else(|| cx.workdir.clone(), |d| cx.path(d));
        let mut env: Vec<(String, String)> = cx
            .vars
            .iter()
            .map(|(k, v)| (k.to_uppercase().replace(['-', '.'], "_"), v.clone()))
            .collect();
        env.extend(self.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env.push(("FERRY_RUN_ID".into(), cx.run_id.clone()));
        env.push(("FERRY_STEP_ID".into(), cx.step_id.clone()));
        let shell = Shell {
            command,
            cwd: &cwd,
            env,
            timeout: if with_timeout { cx.timeout } else { None },
        };
        let mut spawned = None;
        let out = process::run(
            &shell,
            &mut |stream, line| cx.output(stream, line),
            &mut |pid, ticks| {
                spawned = Some(pid);
                let _ = cx.store.child_started(&cx.step_id, pid, ticks);
            },
        )
        .await;
        if let Some(pid) = spawned {
            let _ = cx.store.child_exited(&cx.step_id, pid);
        }
        out
    }
}

impl Step for Exec {
    fn describe(&self) -> String {
        format!("run `{}`", one_line(&self.run))
    }

    fn reversibility(&self) -> Reversibility {
        match &self.undo {
            Some(u) => Reversibility::Reversible(format!("run `{}`", one_line(u))),
            None => Reversibility::Irreversible("no `undo` command".into()),
        }
    }

    async fn check(&self, cx: &StepCx) -> anyhow::Result<Vec<Check>> {
        let Some(check) = &self.check else {
            return Ok(vec![]);
        };
        if self.defer_check && cx.preflight {
            return Ok(vec![Check::new(
                "check",
                CheckStatus::Deferred,
                format!("`{}` runs after the earlier steps", one_line(check)),
            )]);
        }
        let out = self.sh(cx, check, true).await?;
        Ok(vec![if out.success() {
            Check::pass("check", format!("`{}` succeeded", one_line(check)))
        } else {
            Check::fail(
                "check",
                format!("`{}` failed ({})", one_line(check), out.describe()),
            )
        }])
    }

    async fn done(&self, cx: &StepCx) -> anyhow::Result<bool> {
        match &self.done_if {
            Some(probe) => Ok(self.sh(cx, probe, true).await?.success()),
            None => Ok(false),
        }
    }

    async fn apply(&self, cx: &StepCx) -> anyhow::Result<()> {
        let out = self.sh(cx, &self.run, true).await?;
        if !out.success() {
            bail!("`{}` failed with {}", one_line(&self.run), out.describe());
        }
        Ok(())
    }

    async fn rollback(&self, cx: &StepCx) -> anyhow::Result<()> {
        let Some(undo) = &self.undo else {
            return Ok(());
        };
        let out = self.sh(cx, undo, true).await?;
        if !out.success() {
            bail!("undo `{}` failed with {}", one_line(undo), out.describe());
        }
        Ok(())
    }

    fn owns_timeout(&self) -> bool {
        // The group is killed by the process layer with a message that names it.
        true
    }
}

pub fn one_line(s: &str) -> String {
    let s = s.trim();
    let first = s.lines().next().unwrap_or("");
    let mut out: String = first.chars().take(80).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}
