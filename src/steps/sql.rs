//! kind = "sql": a statement against one of the target's `[postgres.NAME]` databases, with an
//! optional rollback statement, a boolean precondition (`check`), an idempotency probe
//! (`done_if`) and a post-condition (`verify`). Statements run in one transaction unless
//! `transaction = false` (needed for `CREATE INDEX CONCURRENTLY`, `VACUUM`, `CALL … COMMIT`).

use anyhow::{Context, anyhow};
use serde::Deserialize;
use tokio_postgres::Client;

use super::exec::one_line;
use super::{Check, Interrupted, Reversibility, Step, StepCx};
use crate::infra::postgres;

pub const KEYS: &[&str] = &[
    "database",
    "statement",
    "rollback",
    "check",
    "done_if",
    "verify",
    "transaction",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sql {
    pub database: String,
    pub statement: String,
    pub rollback: Option<String>,
    pub check: Option<String>,
    pub done_if: Option<String>,
    pub verify: Option<String>,
    #[serde(default = "yes")]
    pub transaction: bool,
}

fn yes() -> bool {
    true
}

impl Sql {
    /// A session for this step; with a step `timeout`, its `statement_timeout` is set just
    /// above it (the server's own stop, should the cancel in `postgres::cancellable` not get through).
    async fn connect(&self, cx: &StepCx) -> anyhow::Result<Client> {
        let client = cx.postgres(&self.database).await?;
        if let Some(t) = cx.timeout {
            postgres::set_statement_timeout(&client, t).await?;
        }
        Ok(client)
    }

    /// After a read-only query under `postgres::cancellable`: a stopped one has its
    /// transaction rolled back on the server; the hard stop is `Interrupted`.
    async fn stopped<T>(client: &Client, r: anyhow::Result<T>) -> anyhow::Result<T> {
        let stopped = r
            .as_ref()
            .err()
            .and_then(|e| e.downcast_ref::<postgres::StoppedError>())
            .map(|s| (s.why, s.gone));
        if stopped.is_some() {
            postgres::rollback(client).await;
        }
        if stopped == Some((postgres::Stopped::Stop, true)) {
            return Err(Interrupted.into());
        }
        r
    }

    /// A boolean query (`done_if`, `verify`) in a READ ONLY transaction, cancelled on the
    /// server by the step timeout or the hard stop.
    async fn read_only_bool(&self, cx: &StepCx, q: &str) -> anyhow::Result<bool> {
        let mut client = self.connect(cx).await?;
        let token = client.cancel_token();
        let r = postgres::cancellable(
            token,
            cx.timeout,
            cx.hard.cancelled(),
            postgres::query_bool_read_only(&mut client, q),
        )
        .await;
        Self::stopped(&client, r).await
    }

    async fn exec(&self, cx: &StepCx, sql: &str, what: &str) -> anyhow::Result<()> {
        let mut client = self.connect(cx).await?;
        let token = client.cancel_token();
        let transaction = self.transaction;
        let work = async {
            if transaction {
                let tx = client
                    .transaction()
                    .await
                    .map_err(|e| anyhow!(postgres::describe(&e)))?;
                tx.batch_execute(sql)
                    .await
                    .map_err(|e| anyhow!(postgres::describe(&e)))?;
                tx.commit()
                    .await
                    .map_err(|e| anyhow!(postgres::describe(&e)))
            } else {
                client
                    .batch_execute(sql)
                    .await
                    .map_err(|e| anyhow!(postgres::describe(&e)))
            }
        };
        let r = postgres::cancellable(token, cx.timeout, cx.hard.cancelled(), work).await;
        let stopped = r
            .as_ref()
            .err()
            .and_then(|e| e.downcast_ref::<postgres::StoppedError>())
            .map(|s| (s.why, s.gone));
        if r.is_err() && transaction {
            // The dropped transaction queued a ROLLBACK; wait until the server ran it, so
            // that its locks are gone before an undo runs.
            postgres::rollback(&client).await;
        }
        if stopped == Some((postgres::Stopped::Stop, true)) {
            return Err(Interrupted.into());
        }
        let r = r.with_context(|| format!("{what} `{}` on {}", one_line(sql), self.database));
        if stopped.is_some() && transaction {
            return r.context("the transaction was rolled back");
        }
        r
    }
}

impl Step for Sql {
    fn describe(&self) -> String {
        format!("on {}: `{}`", self.database, one_line(&self.statement))
    }

    fn reversibility(&self) -> Reversibility {
        match &self.rollback {
            Some(r) => {
                Reversibility::Reversible(format!("on {}: `{}`", self.database, one_line(r)))
            }
            None => Reversibility::Irreversible("no `rollback` statement".into()),
        }
    }

    async fn check(&self, cx: &StepCx) -> anyhow::Result<Vec<Check>> {
        let mut client = match self.connect(cx).await {
            Ok(c) => c,
            Err(e) => return Ok(vec![Check::fail("connect", format!("{e:#}"))]),
        };
        let version: String = client
            .query_one("SHOW server_version", &[])
            .await
            .map(|r| r.get(0))
            .unwrap_or_else(|_| "?".into());
        let mut checks = vec![Check::pass(
            "connect",
            format!("{} (PostgreSQL {version})", self.database),
        )];
        if let Some(q) = &self.check {
            checks.push(match postgres::query_bool_read_only(&mut client, q).await {
                Ok(true) => Check::pass("check", format!("`{}` is true", one_line(q))),
                Ok(false) => Check::fail("check", format!("`{}` is false", one_line(q))),
                Err(e) => Check::fail("check", format!("`{}`: {e:#}", one_line(q))),
            });
        }
        Ok(checks)
    }

    async fn done(&self, cx: &StepCx) -> anyhow::Result<bool> {
        let Some(q) = &self.done_if else {
            return Ok(false);
        };
        self.read_only_bool(cx, q).await.context("done_if")
    }

    async fn apply(&self, cx: &StepCx) -> anyhow::Result<()> {
        self.exec(cx, &self.statement, "statement").await
    }

    async fn verify(&self, cx: &StepCx) -> anyhow::Result<()> {
        let Some(q) = &self.verify else { return Ok(()) };
        match self.read_only_bool(cx, q).await? {
            true => Ok(()),
            false => Err(anyhow!(
                "verify `{}` is false after the statement",
                one_line(q)
            )),
        }
    }

    async fn rollback(&self, cx: &StepCx) -> anyhow::Result<()> {
        match &self.rollback {
            Some(r) => self.exec(cx, r, "rollback").await,
            None => Ok(()),
        }
    }

    /// The statement is cancelled on the server, not dropped (see `postgres::cancellable`).
    fn owns_timeout(&self) -> bool {
        true
    }

    fn owns_stop(&self) -> bool {
        true
    }
}
