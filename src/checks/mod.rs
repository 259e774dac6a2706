//! Monitoring checks, shared by `ferry check NAME` (cron: exit 0 OK, 1 ALERT, 3 UNKNOWN, one
//! summary line) and the `check` step kind (a playbook precondition). Every check is
//! read-only. Thresholds default to the seed's values, can be set per target under
//! `[checks.NAME]` and overridden per call (`--set K=V`, or keys of a `check` step).
//! A check that cannot look (database down, wrong password, malformed page) is UNKNOWN,
//! never OK.

pub mod audit_partitions;
pub mod connections;
pub mod dead_tuples;
pub mod explain;
pub mod exposition;
pub mod params;
pub mod partition_sizes;
pub mod prometheus;
pub mod rejection_rate;
pub mod replication;
pub mod seqscan;
pub mod unused_indexes;

use std::path::PathBuf;

use anyhow::anyhow;

/// What a check answers; the vocabulary lives with its rendering in `report`.
pub use crate::report::views::check::{Report, Status};
pub use params::Params;

use crate::target::Target;

pub struct CheckCx<'a> {
    pub target: &'a Target,
    pub params: Params,
    /// Where checks that compare with their previous run keep state (`prometheus`).
    pub state_dir: PathBuf,
}

impl CheckCx<'_> {
    /// A connection to the target database named by the `database` parameter.
    pub async fn db(&self, default: &str) -> anyhow::Result<tokio_postgres::Client> {
        let name = self.params.string("database", default)?;
        let pg = self.target.postgres(&name).map_err(|e| anyhow!(e))?;
        let pw = self
            .target
            .secret(&pg.password_env, &pg.password_file)
            .map_err(|e| anyhow!(e))?;
        crate::infra::postgres::connect(&pg.url, pw.as_deref()).await
    }
}

/// Every check: name, the parameter keys it accepts, one line on what it watches.
pub const CHECKS: &[(&str, &[&str], &str)] = &[
    (
        "audit-partitions",
        audit_partitions::KEYS,
        "next months' audit partitions exist, bounds contiguous, default partition empty",
    ),
    (
        "connections",
        connections::KEYS,
        "active connections / max_connections below max_pct (80)",
    ),
    (
        "dead-tuples",
        dead_tuples::KEYS,
        "dead-tuple ratio of the hot HAPI tables below max_dead_pct (10)",
    ),
    (
        "unused-indexes",
        unused_indexes::KEYS,
        "hfj_% indexes that were never scanned",
    ),
    (
        "audit-partition-sizes",
        partition_sizes::KEYS,
        "no audit partition above max_size (10GB)",
    ),
    (
        "rejection-rate",
        rejection_rate::KEYS,
        "no vendor above max_pct (10) REJECTED over the window (7d)",
    ),
    (
        "seqscan",
        seqscan::KEYS,
        "EXPLAIN ANALYZE of a representative search shows no Seq Scan on HFJ_RESOURCE",
    ),
    (
        "replication-lag",
        replication::LAG_KEYS,
        "every standby streaming with replay lag below max_lag (16MB) and max_lag_seconds (30); at least min_standbys (1)",
    ),
    (
        "replication-slots",
        replication::SLOT_KEYS,
        "no replication slot inactive while retaining more than max_retained (256MB) of WAL, none lost",
    ),
    (
        "prometheus",
        prometheus::KEYS,
        "HAPI /actuator/prometheus: pool pending/timeouts, slow requests (30s), heap (85%), restarts",
    ),
];

pub fn keys(name: &str) -> Option<&'static [&'static str]> {
    CHECKS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, k, _)| *k)
}

/// Runs one check; an error while looking is an UNKNOWN report naming the cause.
pub async fn run(name: &str, cx: &CheckCx<'_>) -> Report {
    let r = match name {
        "audit-partitions" => audit_partitions::run(cx).await,
        "connections" => connections::run(cx).await,
        "dead-tuples" => dead_tuples::run(cx).await,
        "unused-indexes" => unused_indexes::run(cx).await,
        "audit-partition-sizes" => partition_sizes::run(cx).await,
        "rejection-rate" => rejection_rate::run(cx).await,
        "seqscan" => seqscan::run(cx).await,
        "prometheus" => prometheus::run(cx).await,
        "replication-lag" => replication::lag(cx).await,
        "replication-slots" => replication::slots(cx).await,
        other => Err(anyhow!("unknown check `{other}`")),
    };
    let mut report = r.unwrap_or_else(|e| Report::new(Status::Unknown, format!("{name}: {e:#}")));
    report.check = name.into();
    report
}
