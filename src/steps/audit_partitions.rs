//! kind = "audit_partitions": make sure `audit.audit_events` has partitions for this month and
//! the next `months_ahead`. As the maintainer login it calls the database's own
//! `audit.create_partitions_ahead(n)` (or the seed's `create_next_month_partitions()` when
//! only next month is wanted and that is all the function offers); a login allowed to
//! create tables gets them made directly. Idempotent. Rollback drops only the partitions
//! this run created, and only while they are still empty.

use anyhow::{anyhow, bail};
use serde::{Deserialize, Serialize};

use super::{Check, Reversibility, Step, StepCx};
use crate::checks::audit_partitions::{covered, months, partitions};
use crate::infra::postgres;
use crate::infra::postgres::quote_ident;
use crate::report::Level;

pub const KEYS: &[&str] = &["database", "months_ahead", "schema", "table"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditPartitions {
    #[serde(default = "audit")]
    pub database: String,
    #[serde(default = "one")]
    pub months_ahead: i64,
    #[serde(default = "audit")]
    pub schema: String,
    #[serde(default = "audit_events")]
    pub table: String,
}

fn audit() -> String {
    "audit".into()
}
fn one() -> i64 {
    1
}
fn audit_events() -> String {
    "audit_events".into()
}

/// The partitions this step created (journaled before and after the change).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Created {
    missing_before: Vec<String>,
    created: Vec<String>,
}

impl AuditPartitions {
    async fn client(&self, cx: &StepCx) -> anyhow::Result<tokio_postgres::Client> {
        cx.postgres(&self.database).await
    }

    /// Conventional names of the months not covered by any partition.
    async fn missing(
        &self,
        client: &tokio_postgres::Client,
    ) -> anyhow::Result<Vec<(i64, i64, String)>> {
        let parts = partitions(client, &self.schema, &self.table).await?;
        if parts.is_empty() {
            bail!(
                "{}.{} has no partitions or does not exist",
                self.schema,
                self.table
            );
        }
        let want = months(client, &self.table, self.months_ahead).await?;
        Ok(want
            .into_iter()
            .filter(|(s, e, _)| !covered(&parts, *s, *e))
            .collect())
    }

    async fn can_execute(&self, client: &tokio_postgres::Client, f: &str) -> bool {
        client
            .query_one("SELECT to_regprocedure($1) IS NOT NULL AND has_function_privilege(to_regprocedure($1), 'EXECUTE')", &[&f])
            .await
            .map(|r| r.get::<_, bool>(0))
            .unwrap_or(false)
    }
}

impl Step for AuditPartitions {
    fn validate(&self) -> Vec<(Option<&'static str>, String)> {
        if !(0..=120).contains(&self.months_ahead) {
            return vec![(
                Some("months_ahead"),
                "`months_ahead` must be between 0 and 120".into(),
            )];
        }
        vec![]
    }
    fn describe(&self) -> String {
        format!(
            "ensure {}.{} partitions for this month and the next {} on {}",
            self.schema, self.table, self.months_ahead, self.database
        )
    }

    fn reversibility(&self) -> Reversibility {
        Reversibility::Reversible("drop the partitions this run created, if still empty".into())
    }

    async fn check(&self, cx: &StepCx) -> anyhow::Result<Vec<Check>> {
        let client = match self.client(cx).await {
            Ok(c) => c,
            Err(e) => return Ok(vec![Check::fail("connect", format!("{e:#}"))]),
        };
        let missing = match self.missing(&client).await {
            Ok(m) => m,
            Err(e) => return Ok(vec![Check::fail("partitions", format!("{e:#}"))]),
        };
        let via = if self
            .can_execute(
                &client,
                &format!("{}.create_partitions_ahead(integer)", self.schema),
            )
            .await
        {
            format!(
                "{}.create_partitions_ahead({})",
                self.schema, self.months_ahead
            )
        } else {
            "CREATE TABLE … PARTITION OF (the function is not executable by this login)".into()
        };
        Ok(vec![Check::pass(
            "partitions",
            if missing.is_empty() {
                "all present; nothing to create".into()
            } else {
                format!(
                    "to create: {} via {via}",
                    missing
                        .iter()
                        .map(|m| m.2.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
        )])
    }

    async fn done(&self, cx: &StepCx) -> anyhow::Result<bool> {
        // Re-entry after a crash must still record what this run created: only probe
        // "already there" on a first attempt.
        if cx.checkpoint::<Created>()?.is_some() {
            return Ok(false);
        }
        Ok(self.missing(&self.client(cx).await?).await?.is_empty())
    }

    async fn apply(&self, cx: &StepCx) -> anyhow::Result<()> {
        let client = self.client(cx).await?;
        let mut state: Created = cx.checkpoint()?.unwrap_or_default();
        let missing = self.missing(&client).await?;
        if state.missing_before.is_empty() {
            state.missing_before = missing.iter().map(|m| m.2.clone()).collect();
            cx.save_checkpoint(&state)?;
        }
        let q = |e: tokio_postgres::Error| anyhow!("{}", postgres::describe(&e));
        if !missing.is_empty() {
            let f = format!("{}.create_partitions_ahead(integer)", self.schema);
            if self.can_execute(&client, &f).await {
                let sql = format!(
                    "SELECT {}.create_partitions_ahead($1)",
                    quote_ident(&self.schema)
                );
                client
                    .query(sql.as_str(), &[&(self.months_ahead as i32)])
                    .await
                    .map_err(q)?;
            } else {
                for (start, end, name) in &missing {
                    let sql = format!(
                        "CREATE TABLE IF NOT EXISTS {s}.{n} PARTITION OF {s}.{t} FOR VALUES FROM (to_timestamp({start})) TO (to_timestamp({end}))",
                        s = quote_ident(&self.schema),
                        n = quote_ident(name),
                        t = quote_ident(&self.table),
                    );
                    client
                        .batch_execute(&sql)
                        .await
                        .map_err(|e| anyhow!("creating {name}: {}", postgres::describe(&e)))?;
                }
            }
        }
        let still = self.missing(&client).await?;
        state.created = state
            .missing_before
            .iter()
            .filter(|n| !still.iter().any(|m| &m.2 == *n))
            .cloned()
            .collect();
        cx.save_checkpoint(&state)?;
        Ok(())
    }

    async fn verify(&self, cx: &StepCx) -> anyhow::Result<()> {
        let missing = self.missing(&self.client(cx).await?).await?;
        if !missing.is_empty() {
            bail!(
                "still missing after creation: {}",
                missing
                    .iter()
                    .map(|m| m.2.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        Ok(())
    }

    async fn rollback(&self, cx: &StepCx) -> anyhow::Result<()> {
        let Some(state) = cx.checkpoint::<Created>()? else {
            return Ok(());
        };
        let client = self.client(cx).await?;
        let q = |e: tokio_postgres::Error| anyhow!("{}", postgres::describe(&e));
        for name in state.missing_before.iter().rev() {
            let qualified = format!("{}.{}", quote_ident(&self.schema), quote_ident(name));
            let exists: bool = client
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[&qualified])
                .await
                .map_err(q)?
                .get(0);
            if !exists {
                continue;
            }
            let has_rows: bool = client
                .query_one(&format!("SELECT EXISTS (SELECT 1 FROM {qualified})"), &[])
                .await
                .map_err(|e| {
                    anyhow!(
                        "cannot check {name} for rows (drop it by hand if it is empty): {}",
                        postgres::describe(&e)
                    )
                })?
                .get(0);
            if has_rows {
                cx.log(
                    Level::Warn,
                    format!("{name} already holds rows: left in place"),
                );
                continue;
            }
            client
                .batch_execute(&format!("DROP TABLE {qualified}"))
                .await
                .map_err(|e| anyhow!("dropping {name}: {} (the maintainer login may not own it; drop it as the owner)", postgres::describe(&e)))?;
        }
        Ok(())
    }
}
