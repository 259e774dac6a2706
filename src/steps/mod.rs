//! The Step trait, the context the engine hands a step (`StepCx`), and `StepSpec`: one
//! variant per kind, generated with its dispatch from the one list in `step_kinds!`. Steps never import the engine; the engine
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
pub mod env_set;
pub mod exec;
pub mod explain_seqscan;
pub mod ig_package_swap;
pub mod image_build;
pub mod image_push;
pub mod metadata_check;
pub mod partition_table;
pub mod pg_settings;
pub mod pool_capacity;
pub mod read_replica;
pub mod replicas;
pub mod rolling_redeploy;
pub mod scale;
pub mod sql;
pub mod wait;

use serde::de::DeserializeOwned;

use pg_settings::{pool as pg_pool, setting as pg_setting};

pub use cx::{Approvals, Cancel, CheckpointStore, Interrupted, Prompter, StepCx};

use crate::playbook::interpolate::Context;
use crate::report::CheckStatus;
use crate::util::duration::parse_duration;

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
    /// Semantic checks of the parameters that need no I/O: `(offending key, message)`.
    fn validate(&self) -> Vec<(Option<&'static str>, String)> {
        vec![]
    }
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
    /// Before a resume or rollback takes the deployment's database lock (under the state-dir
    /// lock only): undo what an interrupted apply or rollback left that keeps that lock from
    /// being taken (pg_setting: the server it stopped to restart). Only what the journal
    /// (`cx`'s checkpoint) proves this run did and nobody has touched since: another
    /// operator may hold the database lock meanwhile.
    async fn recover(&self, _cx: &StepCx) -> anyhow::Result<()> {
        Ok(())
    }
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

/// The one list of step kinds: `"name" => Variant(module::Type)`. Each module has `KEYS`
/// (the parameters it accepts besides the common ones) and a `Type` that deserializes from
/// them and implements `Step`. Adding a kind is one line here and its module.
macro_rules! step_kinds {
    ($($name:literal => $variant:ident($module:ident :: $ty:ident),)*) => {
        /// A typed step: one variant per kind.
        #[derive(Debug, Clone)]
        pub enum StepSpec {
            $($variant($module::$ty),)*
        }

        /// Every kind with the keys it accepts (besides the common ones).
        pub const KINDS: &[(&str, &[&str])] = &[$(($name, $module::KEYS),)*];

        impl StepSpec {
            pub fn from_toml(kind: &str, params: toml::Table) -> Result<StepSpec, ParamError> {
                match kind {
                    $($name => Ok(StepSpec::$variant(typed(params)?)),)*
                    other => Err(ParamError::Invalid(format!("unknown step kind `{other}`"))),
                }
            }
        }

        /// Calls the same method on whichever kind `self` is.
        macro_rules! dispatch {
            ($self_:expr, $s:ident => $e:expr) => {
                match $self_ {
                    $(StepSpec::$variant($s) => $e,)*
                }
            };
        }
    };
}

step_kinds! {
    "exec" => Exec(exec::Exec),
    "sql" => Sql(sql::Sql),
    "env_set" => EnvSet(env_set::EnvSet),
    "approval" => Approval(approval::Approval),
    "wait" => Wait(wait::Wait),
    "check" => Check(check::CheckStep),
    "explain_seqscan" => ExplainSeqscan(explain_seqscan::ExplainSeqscan),
    "audit_partitions" => AuditPartitions(audit_partitions::AuditPartitions),
    "ig_package_swap" => IgPackageSwap(ig_package_swap::IgPackageSwap),
    "image_build" => ImageBuild(image_build::ImageBuild),
    "image_push" => ImagePush(image_push::ImagePush),
    "rolling_redeploy" => RollingRedeploy(rolling_redeploy::RollingRedeploy),
    "scale" => Scale(scale::Scale),
    "pool_capacity" => PoolCapacity(pool_capacity::PoolCapacity),
    "metadata_check" => MetadataCheck(metadata_check::MetadataCheck),
    "partition_table" => PartitionTable(partition_table::PartitionTable),
    "pgbouncer_pool" => PgBouncerPool(pg_pool::PgBouncerPool),
    "pg_setting" => PgSetting(pg_setting::PgSetting),
    "read_replica" => ReadReplica(read_replica::ReadReplica),
}

/// The one place that says which keys are shell or SQL text, where `{{ … }}` is inserted
/// quoted (shell: `'…'`; SQL: a string literal, `| ident` an identifier; `| raw` as is).
/// Every other key (paths, URLs, image tags, messages) gets the value as it is.
const TEXT_KEYS: &[(&str, Context, &[&str])] = &[
    ("exec", Context::Shell, &["run", "undo", "check", "done_if"]),
    (
        "sql",
        Context::Sql,
        &["statement", "rollback", "check", "done_if", "verify"],
    ),
    ("wait", Context::Sql, &["sql"]),
    ("explain_seqscan", Context::Sql, &["query"]),
    ("check", Context::Sql, &["query"]),
];

pub fn text_context(kind: &str, key: &str) -> Context {
    TEXT_KEYS
        .iter()
        .find(|(k, _, keys)| *k == kind && keys.contains(&key))
        .map_or(Context::Plain, |(_, ctx, _)| *ctx)
}

pub fn kind_keys(kind: &str) -> Option<&'static [&'static str]> {
    KINDS
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, keys)| *keys)
}

/// Why a step's parameters do not type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamError {
    /// serde's message (reported as "invalid `<kind>` step: …").
    Invalid(String),
    /// A malformed duration: the parse error, reported at its key.
    Duration { key: String, message: String },
}

fn typed<T: DeserializeOwned>(t: toml::Table) -> Result<T, ParamError> {
    toml::Value::Table(t.clone())
        .try_into()
        .map_err(|e: toml::de::Error| {
            let message = e.message().trim().to_owned();
            // toml names the offending key on the error's last line: "in `key`".
            let shown = e.to_string();
            let key = shown
                .lines()
                .last()
                .and_then(|l| l.strip_prefix("in `")?.strip_suffix('`'));
            let bad_duration = |k: &str| {
                t.get(k)
                    .and_then(toml::Value::as_str)
                    .and_then(|s| parse_duration(s).err())
                    .is_some_and(|d| d == message)
            };
            match key {
                Some(k) if bad_duration(k) => ParamError::Duration {
                    key: k.to_owned(),
                    message,
                },
                _ => ParamError::Invalid(message),
            }
        })
}

impl Step for StepSpec {
    fn describe(&self) -> String {
        dispatch!(self, s => s.describe())
    }
    fn validate(&self) -> Vec<(Option<&'static str>, String)> {
        dispatch!(self, s => s.validate())
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
    async fn recover(&self, cx: &StepCx) -> anyhow::Result<()> {
        dispatch!(self, s => s.recover(cx).await)
    }
    fn owns_timeout(&self) -> bool {
        dispatch!(self, s => s.owns_timeout())
    }
    fn owns_stop(&self) -> bool {
        dispatch!(self, s => s.owns_stop())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn a_malformed_duration_is_reported_at_its_key() {
        let e = StepSpec::from_toml("scale", params("replicas = 2\nhealth_timeout = \"soon\""));
        assert_eq!(
            e.err(),
            Some(ParamError::Duration {
                key: "health_timeout".into(),
                message: "`soon` is not a duration (try \"30s\", \"4h\")".into(),
            })
        );
        let e = StepSpec::from_toml("wait", params("interval = 2\nhttp = \"http://h/\""));
        assert_eq!(
            e.err(),
            Some(ParamError::Invalid(
                "invalid type: integer `2`, expected a string".into()
            ))
        );
    }
}
