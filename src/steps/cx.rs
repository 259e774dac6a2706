//! `StepCx`: what a step may use while it runs: its checkpoint, the event sink, the target,
//! the cancellation flag, and the run's approvals. The engine owns the implementations of
//! `CheckpointStore` (the journal) and `Prompter` (the terminal).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::report::{Event, Level, Sink, Stream, Unit};
use crate::target::Target;

/// Durable storage of step progress; `save` returns only once the record is on disk.
pub trait CheckpointStore: Send + Sync {
    fn save(&self, step: &str, value: &serde_json::Value) -> anyhow::Result<()>;
    /// A child process group was started (so a resume can find leftovers).
    fn child_started(&self, step: &str, pid: u32, start_ticks: u64) -> anyhow::Result<()>;
    fn child_exited(&self, step: &str, pid: u32) -> anyhow::Result<()>;
    /// A step changed how many replicas of `service` run (journal `replicas` record).
    fn replicas(&self, _step: &str, _service: &str, _running: u32) -> anyhow::Result<()> {
        Ok(())
    }
}

pub use crate::report::prompt::Prompter;

/// Returned (as an anyhow error) by anything that stopped because of a signal.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

#[derive(Clone, Default)]
pub struct Cancel {
    flag: Arc<AtomicBool>,
    notify: Arc<tokio::sync::Notify>,
}

impl Cancel {
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }
    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
    /// Resolves once cancelled.
    pub async fn cancelled(&self) {
        let notified = self.notify.notified();
        if self.is_cancelled() {
            return;
        }
        notified.await
    }
    /// Sleeps, waking early with `Interrupted` when cancelled.
    pub async fn sleep(&self, d: Duration) -> Result<(), Interrupted> {
        let notified = self.notify.notified();
        if self.is_cancelled() {
            return Err(Interrupted);
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => Ok(()),
            _ = notified => Err(Interrupted),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Approvals {
    pub yes: bool,
    pub ids: Vec<String>,
    pub production: bool,
}

impl Approvals {
    /// On a production target `--yes` is not enough: each approval step is named.
    pub fn approved(&self, step: &str) -> Option<String> {
        if self.ids.iter().any(|i| i == step) {
            Some(format!("--approve {step}"))
        } else if self.yes && !self.production {
            Some("--yes".into())
        } else {
            None
        }
    }
}

pub struct StepCx {
    pub run_id: String,
    pub step_id: String,
    pub dry_run: bool,
    /// True while checks run before any step has applied (dry-run, or a run's preflight):
    /// checks whose inputs come from earlier steps answer `Deferred`.
    pub preflight: bool,
    /// In preflight: an earlier step of the playbook changes something, so what this step
    /// observes may only hold after those steps ran (observation steps then say deferred).
    pub after_changes: bool,
    pub target: Option<Arc<Target>>,
    pub vars: Arc<BTreeMap<String, String>>,
    pub workdir: PathBuf,
    /// ferry's state dir (checks that compare with their last run keep state there).
    pub state_dir: PathBuf,
    pub timeout: Option<Duration>,
    pub approvals: Arc<Approvals>,
    pub prompter: Arc<dyn Prompter>,
    pub cancel: Cancel,
    /// The second signal: stop the current step now. Steps that own it (`owns_stop`) must
    /// end their effect themselves (e.g. cancel a running SQL statement on the server).
    pub hard: Cancel,
    pub sink: Arc<dyn Sink>,
    pub store: Arc<dyn CheckpointStore>,
    checkpoint: Mutex<Option<serde_json::Value>>,
}

impl StepCx {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        run_id: String,
        step_id: String,
        target: Option<Arc<Target>>,
        vars: Arc<BTreeMap<String, String>>,
        approvals: Arc<Approvals>,
        prompter: Arc<dyn Prompter>,
        cancel: Cancel,
        sink: Arc<dyn Sink>,
        store: Arc<dyn CheckpointStore>,
    ) -> Self {
        StepCx {
            run_id,
            step_id,
            dry_run: false,
            preflight: false,
            after_changes: false,
            target,
            vars,
            // The engine sets the run's directory; "." is the same place until it does.
            workdir: PathBuf::from("."),
            state_dir: ".ferry".into(),
            timeout: None,
            approvals,
            prompter,
            cancel,
            hard: Cancel::default(),
            sink,
            store,
            checkpoint: Mutex::new(None),
        }
    }

    pub fn with_checkpoint(self, cp: Option<serde_json::Value>) -> Self {
        *self.checkpoint.lock().unwrap_or_else(|e| e.into_inner()) = cp;
        self
    }

    /// The last saved checkpoint, typed; None on a first attempt.
    pub fn checkpoint<T: DeserializeOwned>(&self) -> anyhow::Result<Option<T>> {
        let cp = self
            .checkpoint
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Ok(match cp {
            Some(v) => Some(serde_json::from_value(v)?),
            None => None,
        })
    }

    /// Saves progress durably. A pending stop request takes effect here: the checkpoint is
    /// on disk, so `Interrupted` is returned and the run can resume from exactly this point.
    pub fn save_checkpoint<T: Serialize>(&self, value: &T) -> anyhow::Result<()> {
        let v = serde_json::to_value(value)?;
        self.store.save(&self.step_id, &v)?;
        *self.checkpoint.lock().unwrap_or_else(|e| e.into_inner()) = Some(v);
        if self.cancel.is_cancelled() {
            return Err(Interrupted.into());
        }
        Ok(())
    }

    /// The Docker engine the target's `[docker] host` names (the local socket by default).
    pub async fn docker(&self) -> anyhow::Result<crate::infra::docker::Docker> {
        let host = self
            .target
            .as_deref()
            .and_then(|t| t.docker.as_ref())
            .and_then(|d| d.host.as_deref());
        crate::infra::docker::Docker::connect(&crate::infra::docker::host(host)).await
    }

    /// A connection to the target's `[postgres.NAME]`, its password read at use.
    pub async fn postgres(&self, name: &str) -> anyhow::Result<tokio_postgres::Client> {
        let t = self.target()?;
        let pg = t.postgres(name).map_err(anyhow::Error::msg)?;
        let pw = t
            .secret(&pg.password_env, &pg.password_file)
            .map_err(anyhow::Error::msg)?;
        crate::infra::postgres::connect(&pg.url, pw.as_deref()).await
    }

    pub fn target(&self) -> anyhow::Result<&Target> {
        self.target
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("this step needs a target (--target FILE)"))
    }

    pub fn output(&self, stream: Stream, line: String) {
        self.sink.emit(Event::Output {
            step: self.step_id.clone(),
            stream,
            line,
        });
    }

    pub fn progress(&self, done: u64, total: u64, unit: Unit) {
        self.sink.emit(Event::Progress {
            step: self.step_id.clone(),
            done,
            total,
            unit,
        });
    }

    /// Journals that `service` now runs `running` replicas (0 opens a downtime in the
    /// change record, more closes it); durable, like a checkpoint.
    pub fn replicas(&self, service: &str, running: u32) -> anyhow::Result<()> {
        self.store.replicas(&self.step_id, service, running)
    }

    pub fn log(&self, level: Level, message: impl Into<String>) {
        self.sink
            .emit(Event::log(Some(&self.step_id), level, message));
    }

    /// This run's directory (`<state-dir>/runs/<run-id>`, 0700): where a step keeps what
    /// it needs for rollback but must not journal.
    pub fn run_dir(&self) -> PathBuf {
        self.state_dir.join("runs").join(&self.run_id)
    }

    /// A path from the playbook: absolute, or relative to ferry's working directory.
    pub fn path(&self, p: &std::path::Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.workdir.join(p)
        }
    }
}
