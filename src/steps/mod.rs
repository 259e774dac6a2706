//! The Step trait, the context the engine hands a step (`StepCx`), and `StepSpec`: one
//! variant per kind with match dispatch. Steps never import the engine; the engine
//! implements `CheckpointStore` and `Prompter` and passes them in.
//!
//! Contract of a step (DESIGN §5): `check` is read-only and may run any number of times;
//! `apply` must be safe to re-enter at any point (probe before acting), with the last
//! checkpoint available through `cx.checkpoint()`; `rollback` is idempotent ("already
//! undone" is success) and also sees the checkpoint.

pub mod approval;
pub mod audit_partitions;
pub mod check;
pub mod cx;
pub mod docker_util;
pub mod env_set;
pub mod exec;
pub mod explain_seqscan;
pub mod ig_package_swap;
pub mod image_build;
pub mod image_push;
pub mod metadata_check;
pub mod pool_capacity;
pub mod replace;
pub mod rolling_redeploy;
pub mod scale;
pub mod sql;
pub mod wait;

use serde::de::DeserializeOwned;

pub use cx::{Approvals, Cancel, CheckpointStore, Interrupted, Prompter, StepCx};

use crate::report::CheckStatus;

#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub status: CheckStatus,
    pub detail: String,
}

impl Check {
    pub fn new(name: impl Into<String>, status: CheckStatus, detail: impl Into<String>) -> Self {
        Check {
            name: name.into(),
            status,
            detail: detail.into(),
        }
    }
    pub fn pass(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(name, CheckStatus::Pass, detail)
    }
    pub fn fail(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(name, CheckStatus::Fail, detail)
    }
}

/// How a step is undone, as `plan` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reversibility {
    Reversible(String),
    /// Cannot be undone; rollback leaves it and says so.
    Irreversible(String),
    /// Changes nothing (a check, a wait, an approval).
    NothingToUndo,
}

#[allow(async_fn_in_trait)]
pub trait Step {
    fn describe(&self) -> String;
    fn reversibility(&self) -> Reversibility;
    /// Read-only preconditions; run in dry-run, before a run, and again right before `apply`.
    async fn check(&self, cx: &StepCx) -> anyhow::Result<Vec<Check>>;
    /// A read-only probe: is the effect already there? (`done_if` for exec.)
    async fn done(&self, _cx: &StepCx) -> anyhow::Result<bool> {
        Ok(false)
    }
    async fn apply(&self, cx: &StepCx) -> anyhow::Result<()>;
    async fn verify(&self, _cx: &StepCx) -> anyhow::Result<()> {
        Ok(())
    }
    async fn rollback(&self, cx: &StepCx) -> anyhow::Result<()>;
    /// True when the step enforces the step `timeout` itself (to give a better error).
    fn owns_timeout(&self) -> bool {
        false
    }
    /// True when the step stops itself on the hard stop (`cx.hard`) instead of being
    /// dropped by the engine (a dropped SQL future leaves its statement running).
    fn owns_stop(&self) -> bool {
        false
    }
}

#[derive(Debug, Clone)]
pub enum StepSpec {
    Exec(exec::Exec),
    Sql(sql::Sql),
    EnvSet(env_set::EnvSet),
    Approval(approval::Approval),
    Wait(wait::Wait),
    Check(check::CheckStep),
    ExplainSeqscan(explain_seqscan::ExplainSeqscan),
    AuditPartitions(audit_partitions::AuditPartitions),
    IgPackageSwap(ig_package_swap::IgPackageSwap),
    ImageBuild(image_build::ImageBuild),
    ImagePush(image_push::ImagePush),
    RollingRedeploy(rolling_redeploy::RollingRedeploy),
    Scale(scale::Scale),
    PoolCapacity(pool_capacity::PoolCapacity),
    MetadataCheck(metadata_check::MetadataCheck),
}

/// Every kind with the keys it accepts (besides the common ones).
pub const KINDS: &[(&str, &[&str])] = &[
    ("exec", exec::KEYS),
    ("sql", sql::KEYS),
    ("env_set", env_set::KEYS),
    ("approval", approval::KEYS),
    ("wait", wait::KEYS),
    ("check", check::KEYS),
    ("explain_seqscan", explain_seqscan::KEYS),
    ("audit_partitions", audit_partitions::KEYS),
    ("ig_package_swap", ig_package_swap::KEYS),
    ("image_build", image_build::KEYS),
    ("image_push", image_push::KEYS),
    ("rolling_redeploy", rolling_redeploy::KEYS),
    ("scale", scale::KEYS),
    ("pool_capacity", pool_capacity::KEYS),
    ("metadata_check", metadata_check::KEYS),
];

pub fn kind_keys(kind: &str) -> Option<&'static [&'static str]> {
    KINDS
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, keys)| *keys)
}

fn typed<T: DeserializeOwned>(t: toml::Table) -> Result<T, String> {
    toml::Value::Table(t)
        .try_into()
        .map_err(|e: toml::de::Error| e.message().trim().to_owned())
}

macro_rules! dispatch {
    ($self:expr, $s:ident => $e:expr) => {
        match $self {
            StepSpec::Exec($s) => $e,
            StepSpec::Sql($s) => $e,
            StepSpec::EnvSet($s) => $e,
            StepSpec::Approval($s) => $e,
            StepSpec::Wait($s) => $e,
            StepSpec::Check($s) => $e,
            StepSpec::ExplainSeqscan($s) => $e,
            StepSpec::AuditPartitions($s) => $e,
            StepSpec::IgPackageSwap($s) => $e,
            StepSpec::ImageBuild($s) => $e,
            StepSpec::ImagePush($s) => $e,
            StepSpec::RollingRedeploy($s) => $e,
            StepSpec::Scale($s) => $e,
            StepSpec::PoolCapacity($s) => $e,
            StepSpec::MetadataCheck($s) => $e,
        }
    };
}

impl StepSpec {
    pub fn from_toml(kind: &str, params: toml::Table) -> Result<StepSpec, String> {
        Ok(match kind {
            "exec" => StepSpec::Exec(typed(params)?),
            "sql" => StepSpec::Sql(typed(params)?),
            "env_set" => StepSpec::EnvSet(typed(params)?),
            "approval" => StepSpec::Approval(typed(params)?),
            "wait" => StepSpec::Wait(typed(params)?),
            "check" => StepSpec::Check(typed(params)?),
            "explain_seqscan" => StepSpec::ExplainSeqscan(typed(params)?),
            "audit_partitions" => StepSpec::AuditPartitions(typed(params)?),
            "ig_package_swap" => StepSpec::IgPackageSwap(typed(params)?),
            "image_build" => StepSpec::ImageBuild(typed(params)?),
            "image_push" => StepSpec::ImagePush(typed(params)?),
            "rolling_redeploy" => StepSpec::RollingRedeploy(typed(params)?),
            "scale" => StepSpec::Scale(typed(params)?),
            "pool_capacity" => StepSpec::PoolCapacity(typed(params)?),
            "metadata_check" => StepSpec::MetadataCheck(typed(params)?),
            other => return Err(format!("unknown step kind `{other}`")),
        })
    }

    /// Semantic checks that need no I/O: `(offending key, message)`.
    pub fn validate(&self) -> Vec<(Option<&'static str>, String)> {
        match self {
            StepSpec::Wait(w) => w.validate(),
            StepSpec::EnvSet(e) => e.validate(),
            StepSpec::Check(c) => c.validate(),
            StepSpec::ExplainSeqscan(e) => e.validate(),
            StepSpec::AuditPartitions(a) => a.validate(),
            StepSpec::IgPackageSwap(s) => s.validate(),
            StepSpec::ImageBuild(s) => s.validate(),
            StepSpec::ImagePush(s) => s.validate(),
            StepSpec::RollingRedeploy(s) => s.validate(),
            StepSpec::Scale(s) => s.validate(),
            StepSpec::PoolCapacity(s) => s.validate(),
            _ => vec![],
        }
    }
}

impl Step for StepSpec {
    fn describe(&self) -> String {
        dispatch!(self, s => s.describe())
    }
    fn reversibility(&self) -> Reversibility {
        dispatch!(self, s => s.reversibility())
    }
    async fn check(&self, cx: &StepCx) -> anyhow::Result<Vec<Check>> {
        dispatch!(self, s => s.check(cx).await)
    }
    async fn done(&self, cx: &StepCx) -> anyhow::Result<bool> {
        dispatch!(self, s => s.done(cx).await)
    }
    async fn apply(&self, cx: &StepCx) -> anyhow::Result<()> {
        dispatch!(self, s => s.apply(cx).await)
    }
    async fn verify(&self, cx: &StepCx) -> anyhow::Result<()> {
        dispatch!(self, s => s.verify(cx).await)
    }
    async fn rollback(&self, cx: &StepCx) -> anyhow::Result<()> {
        dispatch!(self, s => s.rollback(cx).await)
    }
    fn owns_timeout(&self) -> bool {
        dispatch!(self, s => s.owns_timeout())
    }
    fn owns_stop(&self) -> bool {
        dispatch!(self, s => s.owns_stop())
    }
}
