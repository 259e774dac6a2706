//! kind = "partition_table": turn HAPI's `hfj_resource` (or any table keyed by one bigint
//! column) into a table partitioned by that key, keeping every name, FK, storage
//! parameter and statistics target, and global uniqueness (a guard table kept by
//! triggers for unique keys PostgreSQL cannot keep on a partitioned table).
//!
//! Two ways (`existing`): `attach` (range only, zero copy: the table becomes the first
//! partition after a validated CHECK; one short window transaction) and `copy` (a twin
//! filled by keyset batches, indexed, then swapped in one short transaction).
//! `stage` splits the work so the playbook can serve between parts: `prepare` (online:
//! CHECK, guard), `convert` (HAPI down: the window), `validate` (online: FK VALIDATE),
//! `cleanup` (drops `<table>_old`; rollback is refused after it), `all` (the first three).
//!
//! Invariants: each phase ends with a checkpoint and probes the database before acting,
//! so `apply` re-enters anywhere after kill -9; the window/swap is one transaction, so it
//! either happened or not; rollback from any phase loses no row (see rollback.rs).

mod attach;
mod budget;
pub mod catalog;
mod check;
mod copy;
mod ddl;
mod defaults;
mod disk;
mod guard;
mod online;
mod rollback;
mod twin;
mod verify;

use anyhow::anyhow;
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use super::{Check, Interrupted, Reversibility, Step, StepCx};
pub use crate::infra::postgres::quote_ident;
use crate::util::duration::Duration;
use catalog::Catalog;

pub const KEYS: &[&str] = &[
    "database",
    "schema",
    "table",
    "key",
    "strategy",
    "modulus",
    "interval",
    "premake",
    "existing",
    "batch_rows",
    "throttle",
    "stage",
    "window",
    "on_window",
    "lock_timeout",
    "lock_retries",
    "online",
    "max_rows_per_s",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionTable {
    #[serde(default = "defaults::fhir")]
    pub database: String,
    #[serde(default = "defaults::public")]
    pub schema: String,
    #[serde(default = "defaults::hfj_resource")]
    pub table: String,
    /// The partition key; HAPI's HAPI-2563 check needs the PK to stay exactly (res_id).
    #[serde(default = "defaults::res_id")]
    pub key: String,
    #[serde(default = "defaults::range")]
    pub strategy: String,
    #[serde(default = "defaults::sixteen", deserialize_with = "defaults::int")]
    pub modulus: i64,
    #[serde(default = "defaults::million", deserialize_with = "defaults::int")]
    pub interval: i64,
    #[serde(default = "defaults::four", deserialize_with = "defaults::int")]
    pub premake: i64,
    #[serde(default = "defaults::attach_")]
    pub existing: String,
    #[serde(default = "defaults::batch", deserialize_with = "defaults::int")]
    pub batch_rows: i64,
    pub throttle: Option<Duration>,
    #[serde(default = "defaults::all")]
    pub stage: String,
    /// The time the window has; a phase estimated not to fit stops (or rolls back).
    pub window: Option<Duration>,
    #[serde(default = "defaults::stop")]
    pub on_window: String,
    #[serde(default = "defaults::lock_timeout")]
    pub lock_timeout: Duration,
    #[serde(default = "defaults::five", deserialize_with = "online::count")]
    pub lock_retries: u32,
    /// HAPI keeps serving: no stop is required, `copy` runs with change capture (online/).
    #[serde(default, deserialize_with = "online::boolean")]
    pub online: bool,
    /// online copy: at most this many rows per second (0: no limit but the probe back-off).
    #[serde(default, deserialize_with = "defaults::int")]
    pub max_rows_per_s: i64,
}

/// Where the conversion is; each value is reached by a journaled checkpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    #[default]
    Start,
    Snapshot,
    Prepared,
    Twin,
    Copied,
    Indexed,
    Swapped,
    Validated,
    Verified,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    pub phase: Phase,
    pub catalog: Option<Catalog>,
    /// attach: the first partition's upper bound (exclusive).
    pub hi: Option<i64>,
    /// copy: the last key copied into the twin (keyset checkpoint).
    pub last_key: Option<i64>,
    pub copied: i64,
    /// Measured copy rate, rows/s.
    pub rate: Option<f64>,
    /// How long the window transaction (attach) or the swap (copy) held its locks.
    pub window_ms: Option<u64>,
    /// attach: the measured sequential-scan rate, bytes/s (the window budget's estimates).
    #[serde(default)]
    pub scan_rate: Option<f64>,
    /// online copy: the largest key when the change capture started (the copy's bound).
    #[serde(default)]
    pub upto: Option<i64>,
    /// online copy: logged keys replayed into the twin so far.
    #[serde(default)]
    pub replayed: i64,
    /// What blocked the window's or swap's lock requests before they were granted
    /// (pid, query, age, from pg_locks and pg_stat_activity), journaled with the state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocked: Vec<String>,
}

pub fn pgerr(e: tokio_postgres::Error) -> anyhow::Error {
    anyhow!(crate::infra::postgres::describe(&e))
}

/// The names ferry gives its own objects, derived from the table (all ≤ 63 bytes for
/// HAPI's names; PostgreSQL would truncate longer ones consistently anyway).
pub struct Names {
    pub twin: String,
    pub old: String,
    pub guard: String,
    pub changes: String,
    pub check: String,
}

impl PartitionTable {
    pub fn names(&self) -> Names {
        let t = &self.table;
        Names {
            twin: format!("{t}_ferry_twin"),
            old: format!("{t}_old"),
            guard: format!("{t}_ferry_guard"),
            changes: format!("{t}_ferry_changes"),
            check: format!("{t}_ferry_range"),
        }
    }
    pub fn q(&self, name: &str) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(name))
    }
    pub fn part_name(&self, n: i64) -> String {
        format!("{}_p{n}", self.table)
    }
    pub fn attach(&self) -> bool {
        self.existing == "attach"
    }
    pub async fn client(&self, cx: &StepCx) -> anyhow::Result<Client> {
        cx.postgres(&self.database).await
    }
    fn state(cx: &StepCx) -> anyhow::Result<State> {
        Ok(cx.checkpoint::<State>()?.unwrap_or_default())
    }
    fn stages(&self) -> (bool, bool, bool) {
        match self.stage.as_str() {
            "prepare" => (true, false, false),
            "convert" => (true, true, false),
            "validate" => (false, false, true),
            "cleanup" => (false, false, false),
            _ => (true, true, true),
        }
    }
}

impl Step for PartitionTable {
    fn describe(&self) -> String {
        let how = match self.strategy.as_str() {
            "hash" => format!("hash ({}) modulus {}", self.key, self.modulus),
            _ => format!("range ({}) interval {}", self.key, self.interval),
        };
        format!(
            "{} {}.{} on {}: {how}, existing rows by {}",
            self.stage, self.schema, self.table, self.database, self.existing
        )
    }

    fn validate(&self) -> Vec<(Option<&'static str>, String)> {
        defaults::invalid(self)
    }

    fn reversibility(&self) -> Reversibility {
        match self.stage.as_str() {
            "cleanup" => Reversibility::Irreversible(format!(
                "drops {}; the conversion can no longer be rolled back",
                self.names().old
            )),
            "validate" => Reversibility::NothingToUndo,
            _ => Reversibility::Reversible(format!(
                "the original {} back with every row written since, its names and FKs",
                self.table
            )),
        }
    }

    async fn check(&self, cx: &StepCx) -> anyhow::Result<Vec<Check>> {
        check::run(self, cx).await
    }

    async fn apply(&self, cx: &StepCx) -> anyhow::Result<()> {
        let client = self.client(cx).await?;
        if self.stage == "cleanup" {
            return rollback::cleanup(self, cx, &client).await;
        }
        let mut st = Self::state(cx)?;
        let (prepare, convert, validate) = self.stages();
        if st.catalog.is_none() && (prepare || convert) {
            if catalog::relkind(&client, &self.schema, &self.table).await? == Some('p') {
                anyhow::bail!(
                    "{}.{} is already partitioned: nothing to convert (a finished conversion is verified by `stage = \"validate\"`)",
                    self.schema,
                    self.table
                );
            }
            // An exact count is a scan of the table: not inside the window (offline, HAPI
            // down), where the planner's estimate serves the budget and the progress.
            let exact = self.online || self.stage == "prepare";
            st.catalog =
                Some(catalog::read(&client, &self.schema, &self.table, &self.key, exact).await?);
            st.phase = Phase::Snapshot;
            cx.save_checkpoint(&st)?;
        }
        if prepare && st.phase < Phase::Prepared {
            if self.attach() {
                attach::prepare(self, cx, &client, &mut st).await?;
            }
            guard::install(self, cx, &client, st.catalog.as_ref().expect("snapshot")).await?;
            st.phase = Phase::Prepared;
            cx.save_checkpoint(&st)?;
        }
        if convert && st.phase < Phase::Swapped {
            if self.attach() {
                attach::window(self, cx, &client, &mut st).await?;
            } else if self.online {
                online::run(self, cx, &client, &mut st).await?;
            } else {
                copy::run(self, cx, &client, &mut st).await?;
            }
            let blocked = ddl::take_blocked();
            if !blocked.is_empty() {
                st.blocked.extend(blocked);
                cx.save_checkpoint(&st)?;
            }
        }
        if validate {
            verify::validate_fks(self, cx, &client).await?;
            if st.phase < Phase::Validated && st.phase >= Phase::Swapped {
                st.phase = Phase::Validated;
                cx.save_checkpoint(&st)?;
            }
        }
        Ok(())
    }

    async fn verify(&self, cx: &StepCx) -> anyhow::Result<()> {
        let (_, convert, validate) = self.stages();
        let client = self.client(cx).await?;
        if self.stage == "cleanup" {
            return rollback::verify_cleanup(self, &client).await;
        }
        let st = Self::state(cx)?;
        if convert || validate {
            verify::run(self, cx, &client, &st, validate).await?;
        }
        Ok(())
    }

    async fn rollback(&self, cx: &StepCx) -> anyhow::Result<()> {
        match self.stage.as_str() {
            "validate" | "cleanup" => Ok(()),
            _ => {
                let st = Self::state(cx)?;
                let client = self.client(cx).await?;
                rollback::run(self, cx, &client, &st).await
            }
        }
    }
}
