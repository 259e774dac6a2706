//! kind = "explain_seqscan": EXPLAIN ANALYZE one SELECT (read-only transaction, always rolled
//! back) and pass or fail on whether the plan has a Seq Scan on `tables`. The partitioning
//! window's trigger (`expect = "seqscan"`: run only when it is overdue) and its post-check
//! (`expect = "no_seqscan"`). Anything but a single SELECT is refused before it is sent.

use anyhow::{anyhow, bail};
use serde::Deserialize;

use super::{Check, Reversibility, Step, StepCx};
use crate::checks::explain::{explain, on_tables, only_select};
use crate::report::{CheckStatus, Level};

pub const KEYS: &[&str] = &["database", "query", "tables", "expect"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainSeqscan {
    pub database: String,
    pub query: String,
    #[serde(default = "hfj_resource")]
    pub tables: Vec<String>,
    #[serde(default = "no_seqscan")]
    pub expect: String,
}

fn hfj_resource() -> Vec<String> {
    vec!["hfj_resource".into()]
}
fn no_seqscan() -> String {
    "no_seqscan".into()
}

impl ExplainSeqscan {
    /// Ok(detail) when the plan matches `expect`, Err(detail) when it does not.
    async fn judge(&self, cx: &StepCx) -> anyhow::Result<Result<String, String>> {
        only_select(&self.query).map_err(|e| anyhow!(e))?;
        let mut client = cx.postgres(&self.database).await?;
        let limit = cx.timeout.unwrap_or(std::time::Duration::from_secs(300));
        let e = explain(&mut client, &self.query, limit).await?;
        let hits = on_tables(&e.scans, &self.tables);
        let mut seen = if hits.is_empty() {
            format!("no Seq Scan on {}", self.tables.join(", "))
        } else {
            hits.iter()
                .map(|s| s.describe())
                .collect::<Vec<_>>()
                .join("; ")
        };
        if let Some(n) = &e.not_analyzed {
            seen += &format!(" ({n})");
        }
        let want_scan = self.expect == "seqscan";
        Ok(if hits.is_empty() != want_scan {
            Ok(seen)
        } else {
            Err(format!("{seen} (expected {})", self.expect))
        })
    }
}

impl Step for ExplainSeqscan {
    fn validate(&self) -> Vec<(Option<&'static str>, String)> {
        if self.expect != "seqscan" && self.expect != "no_seqscan" {
            return vec![(
                Some("expect"),
                format!(
                    "`expect` must be \"seqscan\" or \"no_seqscan\", not `{}`",
                    self.expect
                ),
            )];
        }
        vec![]
    }
    fn describe(&self) -> String {
        format!(
            "EXPLAIN ANALYZE on {}: expect {} on {}",
            self.database,
            self.expect,
            self.tables.join(", ")
        )
    }

    fn reversibility(&self) -> Reversibility {
        Reversibility::NothingToUndo
    }

    async fn check(&self, cx: &StepCx) -> anyhow::Result<Vec<Check>> {
        Ok(vec![match self.judge(cx).await {
            Ok(Ok(d)) => Check::pass("plan", d),
            Ok(Err(d)) if cx.preflight && cx.after_changes => Check::new(
                "plan",
                CheckStatus::Deferred,
                format!("{d} now; judged after the earlier steps run"),
            ),
            Ok(Err(d)) => Check::fail("plan", d),
            Err(e) => Check::fail("plan", format!("{e:#}")),
        }])
    }

    async fn apply(&self, cx: &StepCx) -> anyhow::Result<()> {
        match self.judge(cx).await? {
            Ok(d) => {
                cx.log(Level::Info, d);
                Ok(())
            }
            Err(d) => bail!(d),
        }
    }

    async fn rollback(&self, _cx: &StepCx) -> anyhow::Result<()> {
        Ok(())
    }
}
