//! The journal as the steps' `CheckpointStore`: checkpoints are synced before `save`
//! returns; child records are written at once (they must survive a kill of ferry, and a
//! lost machine takes the children with it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::anyhow;

use super::journal::Journal;
use super::records::Record;
use crate::report::redact;
use crate::steps::CheckpointStore;

/// The journal plus an in-memory mirror of the checkpoints it holds, so that a rollback in
/// the same process sees what `apply` saved (a resumed process gets them from the fold).
#[derive(Clone)]
pub struct JournalStore {
    journal: Arc<Mutex<Journal>>,
    checkpoints: Arc<Mutex<HashMap<String, serde_json::Value>>>,
}

impl JournalStore {
    pub fn new(journal: Journal) -> Self {
        JournalStore {
            journal: Arc::new(Mutex::new(journal)),
            checkpoints: Default::default(),
        }
    }

    /// The newest checkpoint saved through this store for `step`, if any.
    pub fn checkpoint(&self, step: &str) -> Option<serde_json::Value> {
        self.checkpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(step)
            .cloned()
    }

    pub fn write(&self, rec: &Record, durable: bool) -> anyhow::Result<()> {
        let mut j = self.journal.lock().unwrap_or_else(|e| e.into_inner());
        if durable {
            j.append_durable(rec)?;
        } else {
            j.append(rec)?;
        }
        failpoint(rec);
        Ok(())
    }
}

/// Crash-test aid: `FERRY_FAILPOINT=<record type>:<step id>[#N]` (e.g. `step_done:s3`, or
/// `checkpoint:rollout#3` for the third checkpoint of that step) makes ferry SIGKILL itself
/// right after writing that record, so tests can stop a run at exact boundaries (before an
/// effect, during it, after it) and prove `resume` handles each.
fn failpoint(rec: &Record) {
    static POINT: OnceLock<Option<(String, usize)>> = OnceLock::new();
    static SEEN: AtomicUsize = AtomicUsize::new(0);
    let Some((point, nth)) = POINT.get_or_init(|| {
        let p = std::env::var("FERRY_FAILPOINT").ok()?;
        Some(match p.split_once('#') {
            Some((at, n)) => (at.to_owned(), n.parse().unwrap_or(1)),
            None => (p, 1),
        })
    }) else {
        return;
    };
    let v = serde_json::to_value(rec).unwrap_or_default();
    let here = format!(
        "{}:{}",
        v["type"].as_str().unwrap_or(""),
        v["step"].as_str().unwrap_or("")
    );
    if &here == point && SEEN.fetch_add(1, Ordering::SeqCst) + 1 == *nth {
        // SAFETY: signalling ourselves; SIGKILL cannot be caught, like a real crash.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}

impl CheckpointStore for JournalStore {
    fn save(&self, step: &str, value: &serde_json::Value) -> anyhow::Result<()> {
        let mut data = value.clone();
        redact::redact_json(&mut data);
        self.checkpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(step.into(), data.clone());
        self.write(
            &Record::Checkpoint {
                step: step.into(),
                data,
            },
            true,
        )
    }

    fn child_started(&self, step: &str, pid: u32, ticks: u64) -> anyhow::Result<()> {
        self.write(
            &Record::ChildStarted {
                step: step.into(),
                pid,
                ticks,
            },
            false,
        )
    }

    fn replicas(&self, step: &str, service: &str, running: u32) -> anyhow::Result<()> {
        let rec = Record::Replicas {
            step: step.into(),
            service: service.into(),
            running,
        };
        self.write(&rec, true)
    }

    fn child_exited(&self, step: &str, pid: u32) -> anyhow::Result<()> {
        self.write(
            &Record::ChildExited {
                step: step.into(),
                pid,
            },
            false,
        )
    }
}

/// What checks get (preflight, dry-run): saving a checkpoint there is a bug.
pub(super) struct NoStore;
impl CheckpointStore for NoStore {
    fn save(&self, _: &str, _: &serde_json::Value) -> anyhow::Result<()> {
        Err(anyhow!("checks must not save checkpoints"))
    }
    fn child_started(&self, _: &str, _: u32, _: u64) -> anyhow::Result<()> {
        Ok(())
    }
    fn child_exited(&self, _: &str, _: u32) -> anyhow::Result<()> {
        Ok(())
    }
}
