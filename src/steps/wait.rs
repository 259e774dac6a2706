//! kind = "wait": a fixed pause, or poll until an HTTP GET returns 2xx or a SQL query returns
//! true, within the step's `timeout` (default 5m). Changes nothing, so there is nothing to undo.

use std::time::{Duration, Instant};

use anyhow::bail;
use serde::Deserialize;

use super::{Check, Reversibility, Step, StepCx};
use crate::infra::{http, postgres};
use crate::report::Unit;
use crate::util::duration::{self, fmt_duration};

pub const KEYS: &[&str] = &["duration", "http", "sql", "database", "interval"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wait {
    pub duration: Option<duration::Duration>,
    pub http: Option<String>,
    pub sql: Option<String>,
    pub database: Option<String>,
    pub interval: Option<duration::Duration>,
}

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

impl Wait {
    fn interval(&self) -> Duration {
        self.interval
            .as_ref()
            .map_or(Duration::from_secs(2), duration::Duration::get)
    }

    /// One poll: Ok(true) when the condition holds; Err carries what was seen, for the
    /// timeout message.
    async fn poll(&self, cx: &StepCx, remaining: Duration) -> anyhow::Result<bool> {
        if let Some(url) = &self.http {
            let resp = http::client(Duration::from_secs(10))?
                .get(url)
                .send()
                .await?;
            if resp.status().is_success() {
                return Ok(true);
            }
            bail!("HTTP {}", resp.status());
        }
        if let (Some(q), Some(db)) = (&self.sql, &self.database) {
            // Cancelled on the server when the time is up (a dropped query keeps running).
            let mut client = cx.postgres(db).await?;
            postgres::set_statement_timeout(&client, remaining).await?;
            let token = client.cancel_token();
            let r = postgres::cancellable(
                token,
                Some(remaining),
                cx.hard.cancelled(),
                postgres::query_bool_read_only(&mut client, q),
            )
            .await;
            if r.is_err() {
                postgres::rollback(&client).await;
            }
            return r;
        }
        Ok(true)
    }
}

impl Step for Wait {
    fn validate(&self) -> Vec<(Option<&'static str>, String)> {
        let mut out = vec![];
        let n = [
            self.duration.is_some(),
            self.http.is_some(),
            self.sql.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if n != 1 {
            out.push((
                None,
                "a `wait` step needs exactly one of `duration`, `http`, `sql`".into(),
            ));
        }
        if self.sql.is_some() && self.database.is_none() {
            out.push((
                Some("sql"),
                "`sql` needs `database` (a name under [postgres.*] in the target)".into(),
            ));
        }
        if let Some(u) = &self.http
            && reqwest::Url::parse(u).is_err()
        {
            out.push((Some("http"), format!("`{u}` is not a URL")));
        }
        out
    }
    fn describe(&self) -> String {
        match (&self.duration, &self.http, &self.sql) {
            (Some(d), _, _) => format!("wait {d}"),
            (_, Some(u), _) => format!("wait until GET {u} returns 2xx"),
            (_, _, Some(q)) => format!(
                "wait until `{q}` is true on {}",
                self.database.as_deref().unwrap_or("?")
            ),
            _ => "wait".into(),
        }
    }

    fn reversibility(&self) -> Reversibility {
        Reversibility::NothingToUndo
    }

    async fn check(&self, cx: &StepCx) -> anyhow::Result<Vec<Check>> {
        if let Some(db) = &self.database
            && let Err(e) = cx
                .target()
                .map_err(|e| e.to_string())
                .and_then(|t| t.postgres(db).map(|_| ()))
        {
            return Ok(vec![Check::fail("database", e)]);
        }
        Ok(vec![])
    }

    async fn apply(&self, cx: &StepCx) -> anyhow::Result<()> {
        if let Some(d) = &self.duration {
            let d = d.get();
            // Report progress each second so a long pause shows a bar with its ETA.
            let start = Instant::now();
            let total = d.as_secs().max(1);
            while start.elapsed() < d {
                cx.progress(start.elapsed().as_secs().min(total), total, Unit::Seconds);
                cx.cancel
                    .sleep((d - start.elapsed()).min(Duration::from_secs(1)))
                    .await?;
            }
            cx.progress(total, total, Unit::Seconds);
            return Ok(());
        }
        let limit = cx.timeout.unwrap_or(DEFAULT_TIMEOUT);
        let start = Instant::now();
        let mut last = String::from("no answer yet");
        loop {
            let remaining = limit.saturating_sub(start.elapsed());
            // A query is stopped by `poll` itself (cancelled on the server), given the time
            // to get the server's answer.
            let outer = if self.sql.is_some() {
                remaining + Duration::from_secs(35)
            } else {
                remaining
            };
            match tokio::time::timeout(outer, self.poll(cx, remaining)).await {
                Ok(Ok(true)) => return Ok(()),
                Ok(Ok(false)) => last = "false".into(),
                Ok(Err(e)) => last = format!("{e:#}"),
                Err(_) => {}
            }
            if start.elapsed() + self.interval() > limit {
                bail!(
                    "{} did not happen within {} (last: {last})",
                    self.describe(),
                    fmt_duration(limit)
                );
            }
            cx.cancel.sleep(self.interval()).await?;
        }
    }

    async fn rollback(&self, _cx: &StepCx) -> anyhow::Result<()> {
        Ok(())
    }

    fn owns_timeout(&self) -> bool {
        true
    }
}
