//! PostgreSQL connections from a target's `[postgres.NAME]` entry. Plain TCP (no TLS yet: the
//! deployments ferry drives reach PostgreSQL over a private network or loopback).

use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, anyhow};
use tokio_postgres::{CancelToken, Client, Config, NoTls};

/// Connects; the password comes from the caller (read from env/file at use), never the URL.
pub async fn connect(url: &str, password: Option<&str>) -> anyhow::Result<Client> {
    // Errors surface on the client's next query; the connection task's end is not watched.
    connect_with(url, password, |_| {}).await.map(|(c, _)| c)
}

/// Connects with `tune` applied to the configuration; the returned task ends when the
/// connection does, with the reason (the server's message when it closed it).
pub async fn connect_with(
    url: &str,
    password: Option<&str>,
    tune: impl FnOnce(&mut Config),
) -> anyhow::Result<(Client, tokio::task::JoinHandle<String>)> {
    let mut cfg = Config::from_str(url).with_context(|| format!("invalid PostgreSQL URL {url}"))?;
    if let Some(p) = password {
        cfg.password(p);
    }
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(Duration::from_secs(10));
    }
    cfg.application_name("ferry");
    tune(&mut cfg);
    let (client, conn) = cfg
        .connect(NoTls)
        .await
        .map_err(|e| anyhow!("cannot connect to {url}: {}", describe(&e)))?;
    let task = tokio::spawn(async move {
        match conn.await {
            Ok(()) => "the connection was closed".to_owned(),
            Err(e) => describe(&e),
        }
    });
    Ok((client, task))
}

/// The server's own message (e.g. "password authentication failed for user …") when there
/// is one, else the client error.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s = format!("{s}: {inner}");
                src = inner.source();
            }
            s
        }
    }
}

/// Runs a query that must return a single boolean (checks, `done_if`, `wait … sql`).
pub async fn query_bool(
    client: &impl tokio_postgres::GenericClient,
    sql: &str,
) -> anyhow::Result<bool> {
    let row = client
        .query_opt(sql, &[])
        .await
        .map_err(|e| anyhow!("query failed: {}", describe(&e)))?
        .ok_or_else(|| anyhow!("query returned no row (it must return one boolean)"))?;
    row.try_get::<_, bool>(0).map_err(|_| {
        anyhow!("query must return one boolean column, e.g. `SELECT count(*) > 0 FROM …`")
    })
}

/// Runs a read-only boolean query inside a READ ONLY transaction that is always rolled back.
pub async fn query_bool_read_only(client: &mut Client, sql: &str) -> anyhow::Result<bool> {
    let tx = client
        .build_transaction()
        .read_only(true)
        .start()
        .await
        .map_err(|e| anyhow!("cannot start a read-only transaction: {}", describe(&e)))?;
    let r = query_bool(&tx, sql).await;
    let _ = tx.rollback().await;
    r
}

pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Why [`cancellable`] stopped the work before it finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    Timeout(Duration),
    Stop,
}

/// How long [`cancellable`] waits for the server to answer a cancel, asking again every 2 s.
const CANCEL_WAIT: Duration = Duration::from_secs(30);

/// Runs `work` (queries on the connection `token` belongs to) until it ends, `timeout`
/// passes or `stop` resolves. In the last two cases dropping `work` would leave the
/// statement running on the server (and committing later, or holding its locks): instead
/// the backend's query is cancelled and `work` is awaited until the server has answered,
/// i.e. until the statement is gone. `Err(StoppedError)` then, unless `work` still
/// succeeded (it finished before the cancel reached it); `work`'s own result otherwise.
/// The caller rolls back a transaction `work` left open (see [`rollback`]).
pub async fn cancellable<T>(
    token: CancelToken,
    timeout: Option<Duration>,
    stop: impl Future<Output = ()>,
    work: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::pin!(work);
    let deadline = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    let why = tokio::select! {
        r = &mut work => return r,
        _ = deadline => Stopped::Timeout(timeout.unwrap_or_default()),
        _ = stop => Stopped::Stop,
    };
    let t0 = std::time::Instant::now();
    loop {
        let _ = token.cancel_query(NoTls).await;
        match tokio::time::timeout(Duration::from_secs(2), &mut work).await {
            // It finished before the cancel took effect (a COMMIT already under way): the
            // truth is that it succeeded.
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(_)) => return Err(anyhow::Error::new(StoppedError { why, gone: true })),
            Err(_) => {}
        }
        if t0.elapsed() >= CANCEL_WAIT {
            return Err(anyhow::Error::new(StoppedError { why, gone: false }));
        }
    }
}

/// The error [`cancellable`] returns when it stopped the work.
#[derive(Debug, thiserror::Error)]
pub struct StoppedError {
    pub why: Stopped,
    /// The server answered the cancel: the statement is no longer running.
    pub gone: bool,
}

impl std::fmt::Display for StoppedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.why {
            Stopped::Timeout(t) => write!(
                f,
                "timed out after {}",
                crate::util::duration::fmt_duration(t)
            )?,
            Stopped::Stop => write!(f, "stopped")?,
        }
        if self.gone {
            write!(f, " (the statement was cancelled on the server)")
        } else {
            write!(
                f,
                " (the server did not answer the cancel within {}s: the statement may still be running)",
                CANCEL_WAIT.as_secs()
            )
        }
    }
}

/// Ends a transaction the work may have left open (after an error or a cancel), waiting for
/// the server so that its locks are released before anything else (an undo) runs.
pub async fn rollback(client: &Client) {
    let _ = tokio::time::timeout(Duration::from_secs(10), client.batch_execute("ROLLBACK")).await;
}

/// `statement_timeout` for a session whose work has a client-side `timeout`: slightly above
/// it, so the server stops the statement even if the client cannot (a second line of
/// defence behind [`cancellable`]).
pub async fn set_statement_timeout(client: &Client, timeout: Duration) -> anyhow::Result<()> {
    let ms = timeout.as_millis() + 1000;
    client
        .batch_execute(&format!("SET statement_timeout = {ms}"))
        .await
        .map_err(|e| anyhow!("cannot set statement_timeout: {}", describe(&e)))
}

/// How many controlled restarts of a PostgreSQL server are under way in this process.
static RESTARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Held while a step restarts a PostgreSQL server on purpose (behind pgBouncer's PAUSE):
/// sessions that end meanwhile are expected to, and holders of session state (the run's
/// database lock) take it again once the server is back instead of giving up.
pub struct PlannedRestart(());

impl PlannedRestart {
    pub fn begin() -> PlannedRestart {
        RESTARTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        PlannedRestart(())
    }
}

impl Drop for PlannedRestart {
    fn drop(&mut self) {
        RESTARTS.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// True while a [`PlannedRestart`] is held.
pub fn restart_planned() -> bool {
    RESTARTS.load(std::sync::atomic::Ordering::SeqCst) > 0
}
