//! One run per state dir: an flock on `<state-dir>/lock` (released by the kernel when the
//! process dies, however it dies) plus an owner record in the same file (host, pid, run id,
//! start) so that a refused operator is told who holds it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::report::views::unlock::{DatabaseUnlock, StateDirUnlock};
use crate::steps::Cancel;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Owner {
    pub host: String,
    pub pid: u32,
    pub run_id: String,
    pub command: String,
    pub started_at: String,
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`ferry {}` (run {}) pid {} on {} since {}",
            self.command, self.run_id, self.pid, self.host, self.started_at
        )
    }
}

/// Held while a run, resume or rollback is in progress. Dropping it clears the owner record
/// and releases the flock.
pub struct StateLock {
    file: File,
}

fn open(state_dir: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(state_dir.join("lock"))
}

pub fn read_owner(state_dir: &Path) -> Option<Owner> {
    let mut s = String::new();
    File::open(state_dir.join("lock"))
        .ok()?
        .read_to_string(&mut s)
        .ok()?;
    serde_json::from_str(&s).ok()
}

impl StateLock {
    pub fn acquire(state_dir: &Path, owner: &Owner) -> Result<StateLock, Error> {
        let mut file = open(state_dir).map_err(|e| Error::Other(e.into()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let who =
                    read_owner(state_dir).map_or("another ferry process".into(), |o| o.to_string());
                return Err(Error::Locked(format!(
                    "{} is locked by {who}",
                    state_dir.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::Other(e.into())),
        }
        let body = serde_json::to_string(owner).map_err(|e| Error::Other(e.into()))?;
        (|| -> std::io::Result<()> {
            file.set_len(0)?;
            file.rewind()?;
            file.write_all(body.as_bytes())?;
            file.sync_data()
        })()
        .map_err(|e| Error::Other(e.into()))?;
        Ok(StateLock { file })
    }
}

impl Drop for StateLock {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

/// `ferry unlock`: clears the owner record when nobody holds the lock; refuses a live owner
/// (an flock is only ever held by a live process: the kernel drops it when its owner dies).
pub fn unlock(state_dir: &Path) -> Result<StateDirUnlock, Error> {
    if !state_dir.join("lock").exists() {
        // No run ever took the lock here (or no state dir at all): nothing to clear, and
        // nothing to create for the database lock that `--target` may still have to release.
        return Ok(StateDirUnlock::NotLocked);
    }
    let file = open(state_dir).map_err(|e| Error::Other(e.into()))?;
    let owner = read_owner(state_dir);
    match file.try_lock() {
        Ok(()) => {
            file.set_len(0).map_err(|e| Error::Other(e.into()))?;
            let _ = file.unlock();
            Ok(match owner {
                Some(o) => StateDirUnlock::ClearedStale {
                    owner: o.to_string(),
                },
                None => StateDirUnlock::NotLocked,
            })
        }
        Err(_) => {
            let who = owner
                .as_ref()
                .map_or("a live ferry process".into(), |o| o.to_string());
            Err(Error::Locked(format!(
                "refusing to unlock: held by {who}, which is alive"
            )))
        }
    }
}

/// The advisory-lock key ferry holds in the target's `fhir` database ("ferry" in ASCII).
const PG_LOCK_KEY: i64 = 0x66_65_72_72_79;

/// How often the lock's session is checked (and kept from looking idle).
const HEARTBEAT: Duration = Duration::from_secs(2);
/// A heartbeat that gets no answer this long means the lock can no longer be trusted.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(10);

/// Held for the length of a run when the target has a `[postgres.fhir]`: two operators on
/// two machines (two state dirs) cannot run against the same deployment at once. The lock is
/// a session-level advisory lock, so it dies with ferry's connection; the session's
/// `application_name` names the owner for whoever is refused.
///
/// The session is kept alive (TCP keepalives, `idle_session_timeout` and
/// `idle_in_transaction_session_timeout` off for it, a heartbeat query every [`HEARTBEAT`]
/// that also checks the lock is still granted). When the session ends or a heartbeat fails,
/// the lock is lost: [`PgLock::lost`] says why and `on_lost` (the engine's soft stop) is
/// cancelled, so the run stops at its next checkpoint or step boundary. Except while a step
/// restarts the server on purpose (`infra::postgres::PlannedRestart`): the session then
/// ends as planned and the lock is taken again on a new one once the server is back; if
/// another session took it meanwhile, the lock is lost as above.
pub struct PgLock {
    lost: Arc<Mutex<Option<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl PgLock {
    /// Why the lock was lost, once it was.
    pub fn lost(&self) -> Option<String> {
        self.lost.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for PgLock {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The host as it appears in the lock session's `application_name`: at most 24 characters
/// of it and a hash of the whole name, so that a name cut short still identifies its host.
pub fn host_tag(host: &str) -> String {
    use sha2::Digest;
    let short: String = host.chars().take(24).collect();
    let hash = hex::encode(sha2::Sha256::digest(host.as_bytes()));
    format!("{short}#{}", &hash[..8])
}

/// `s` cut to at most `max` bytes on a character boundary.
fn truncate_bytes(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

pub async fn acquire_pg(
    target: &crate::target::Target,
    owner: &Owner,
    on_lost: Cancel,
) -> Result<Option<PgLock>, Error> {
    let Ok(pg) = target.postgres("fhir") else {
        return Ok(None);
    };
    let pw = target
        .secret(&pg.password_env, &pg.password_file)
        .map_err(|e| Error::Precondition(format!("database lock: {e}")))?;
    // Parsed back by `unlock_pg`: "ferry pid PID on HOSTTAG: COMMAND run RUN_ID", cut to the
    // server's 63 bytes (the pid and the host tag always fit; see `host_tag`).
    let me = format!(
        "ferry pid {} on {}: {} run {}",
        owner.pid,
        host_tag(&owner.host),
        owner.command,
        owner.run_id
    );
    let session = Session {
        url: pg.url.clone(),
        password: pw,
        name: truncate_bytes(&me, 63).to_owned(),
    };
    let (client, conn) = session.open().await?;
    if session.take(&client).await? {
        let lost = Arc::new(Mutex::new(None::<String>));
        let mark = {
            let lost = lost.clone();
            move |why: String| {
                let mut l = lost.lock().unwrap_or_else(|e| e.into_inner());
                if l.is_none() {
                    *l = Some(why);
                }
                drop(l);
                on_lost.cancel();
            }
        };
        let keeper = tokio::spawn(async move {
            let (mut client, mut conn) = (client, conn);
            loop {
                let why = watch(&client, &mut conn).await;
                if !crate::infra::postgres::restart_planned() {
                    return mark(why);
                }
                // A step restarts the server on purpose: take the lock again once it is back.
                match session.retake().await {
                    Ok((c, k)) => (client, conn) = (c, k),
                    Err(e) => return mark(format!("{why}; after the planned restart: {e}")),
                }
            }
        });
        return Ok(Some(PgLock {
            lost,
            tasks: vec![keeper],
        }));
    }

    let holder = pg_holder(&client).await?;
    Err(Error::Locked(format!(
        "the deployment's fhir database is locked by {}",
        holder.map_or_else(
            || "another ferry run".into(),
            |(pid, name, client)| format!("{name} (backend {pid}, client {client})")
        )
    )))
}

/// How the lock's session is opened (again, after a planned restart of the server).
struct Session {
    url: String,
    password: Option<String>,
    name: String,
}

/// How long after a planned restart ends the lock may still be taken again.
const RETAKE_GRACE: Duration = Duration::from_secs(30);

impl Session {
    async fn open(
        &self,
    ) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<String>), Error> {
        let (client, conn) =
            crate::infra::postgres::connect_with(&self.url, self.password.as_deref(), |c| {
                c.keepalives(true)
                    .keepalives_idle(Duration::from_secs(10))
                    .keepalives_interval(Duration::from_secs(5))
                    .keepalives_retries(3);
            })
            .await
            .map_err(|e| {
                Error::Precondition(format!(
                    "cannot take the run lock in the fhir database: {e:#}"
                ))
            })?;
        client
            .execute(
                "SELECT set_config('application_name', $1, false)",
                &[&self.name],
            )
            .await
            .map_err(lock_error)?;
        // The server must not end this session for being idle: that would free the lock.
        // idle_session_timeout exists from PostgreSQL 14; an older server has none to turn off.
        client
            .batch_execute("SET idle_in_transaction_session_timeout = 0")
            .await
            .map_err(lock_error)?;
        let _ = client.batch_execute("SET idle_session_timeout = 0").await;
        Ok((client, conn))
    }

    async fn take(&self, client: &tokio_postgres::Client) -> Result<bool, Error> {
        Ok(client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&PG_LOCK_KEY])
            .await
            .map_err(lock_error)?
            .get(0))
    }

    /// Opens a new session and takes the lock, retrying while the server is down (during
    /// the planned restart and [`RETAKE_GRACE`] after it). Refused if another session took
    /// the lock meanwhile.
    async fn retake(
        &self,
    ) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<String>), String> {
        let mut ended: Option<tokio::time::Instant> = None;
        loop {
            let last = match self.open().await {
                Ok((c, k)) => match self.take(&c).await {
                    Ok(true) => return Ok((c, k)),
                    Ok(false) => {
                        let holder = pg_holder(&c).await.ok().flatten();
                        return Err(format!(
                            "another session took the lock meanwhile{}",
                            holder.map_or_else(String::new, |(pid, n, _)| format!(
                                " ({n}, backend {pid})"
                            ))
                        ));
                    }
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            if !crate::infra::postgres::restart_planned() {
                let since = *ended.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= RETAKE_GRACE {
                    return Err(format!("the lock could not be taken again: {last}"));
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Keeps the lock's session alive until it is lost; returns why.
async fn watch(
    client: &tokio_postgres::Client,
    conn: &mut tokio::task::JoinHandle<String>,
) -> String {
    loop {
        tokio::select! {
            why = &mut *conn => {
                return format!("its session ended ({})", why.unwrap_or_else(|e| e.to_string()));
            }
            _ = tokio::time::sleep(HEARTBEAT) => {}
        }
        let r =
            tokio::time::timeout(HEARTBEAT_TIMEOUT, client.query_one(HELD, &[&PG_LOCK_KEY])).await;
        return match r {
            Ok(Ok(row)) if row.get::<_, bool>(0) => continue,
            Ok(Ok(_)) => "its session no longer holds it".to_owned(),
            Ok(Err(e)) => format!(
                "its session failed ({})",
                crate::infra::postgres::describe(&e)
            ),
            Err(_) => format!(
                "its session did not answer within {}s",
                HEARTBEAT_TIMEOUT.as_secs()
            ),
        };
    }
}

fn lock_error(e: tokio_postgres::Error) -> Error {
    Error::Other(anyhow::anyhow!(
        "database lock: {}",
        crate::infra::postgres::describe(&e)
    ))
}

/// True while this session holds ferry's advisory lock.
const HELD: &str = "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted \
     AND pid = pg_backend_pid() AND ((classid::bigint << 32) | objid::bigint) = $1)";

/// (backend pid, application_name, client address) of the session holding ferry's lock.
async fn pg_holder(
    client: &tokio_postgres::Client,
) -> Result<Option<(i32, String, String)>, Error> {
    let row = client
        .query_opt(
            "SELECT a.pid, a.application_name, coalesce(host(a.client_addr), 'local') \
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted AND ((l.classid::bigint << 32) | l.objid::bigint) = $1",
            &[&PG_LOCK_KEY],
        )
        .await
        .map_err(|e| Error::Other(anyhow::anyhow!("database lock: {}", crate::infra::postgres::describe(&e))))?;
    Ok(row.map(|r| (r.get(0), r.get(1), r.get(2))))
}

/// `ferry unlock --target T`: ends the database session holding ferry's lock when its ferry
/// is dead (same host, pid gone) or, with `--force`, when it runs on another host that the
/// operator says is gone (a lost machine's TCP session can linger for hours).
pub async fn unlock_pg(
    target: &crate::target::Target,
    force: bool,
) -> Result<DatabaseUnlock, Error> {
    let Ok(pg) = target.postgres("fhir") else {
        return Ok(DatabaseUnlock::NoDatabase);
    };
    let pw = target
        .secret(&pg.password_env, &pg.password_file)
        .map_err(Error::Precondition)?;
    let client = crate::infra::postgres::connect(&pg.url, pw.as_deref())
        .await
        .map_err(|e| Error::Precondition(format!("{e:#}")))?;
    let Some((backend, name, addr)) = pg_holder(&client).await? else {
        return Ok(DatabaseUnlock::Free);
    };
    let words: Vec<&str> = name.split_whitespace().collect();
    let (pid, host) = match words.as_slice() {
        ["ferry", "pid", pid, "on", host, ..] => (
            pid.parse::<u32>().ok(),
            host.trim_end_matches(':').to_owned(),
        ),
        _ => (None, String::new()),
    };
    // The host tag carries a hash of the whole host name, so a long name cut short by the
    // server's 63 bytes is still recognised (and never taken for another host).
    // A name without a tag (an older ferry) is trusted only when it was not cut short.
    let me = super::hostname();
    let here = if host.contains('#') {
        host == host_tag(&me)
    } else {
        host == me && name.len() < 63
    };
    let dead_here = here && pid.is_some_and(|p| !crate::infra::process::pid_alive(p));
    if !(dead_here || force && !here) {
        let why = if here {
            "its ferry is alive on this host"
        } else {
            "it is held from another host; if that machine is gone, add --force"
        };
        return Err(Error::Locked(format!(
            "refusing to release the database lock held by {name} (backend {backend}, client {addr}): {why}"
        )));
    }
    let ended: bool = client
        .query_one("SELECT pg_terminate_backend($1)", &[&backend])
        .await
        .map_err(|e| {
            Error::Other(anyhow::anyhow!(
                "pg_terminate_backend: {}",
                crate::infra::postgres::describe(&e)
            ))
        })?
        .get(0);
    Ok(DatabaseUnlock::Released {
        holder: name,
        backend,
        terminated: ended,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_tag_survives_the_63_byte_cut_and_tells_long_hosts_apart() {
        let a = "ferry-test-a-rather-long-host-name-for-lock-owner.example.int";
        let b = "ferry-test-a-rather-long-host-name-for-lock-owner.example.org";
        assert_ne!(host_tag(a), host_tag(b));
        let name = format!(
            "ferry pid 4194304 on {}: run --dry-run run 20261201-205503.123-abcd",
            host_tag(a)
        );
        let cut = truncate_bytes(&name, 63);
        let words: Vec<&str> = cut.split_whitespace().collect();
        assert_eq!(words[4].trim_end_matches(':'), host_tag(a));
        assert_eq!(truncate_bytes("héllo", 2), "h");
    }
}
