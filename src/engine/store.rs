//! The journal as the steps' `CheckpointStore`: checkpoints are synced before `save`
//! returns; child records are written at once (they must survive a kill of ferry, and a
//! lost machine takes the children with it).

use std::sync::{Arc, Mutex};

use super::journal::Journal;
use super::records::Record;
use crate::report::redact;
use crate::steps::CheckpointStore;

#[derive(Clone)]
pub struct JournalStore(pub Arc<Mutex<Journal>>);

impl JournalStore {
    pub fn write(&self, rec: &Record, durable: bool) -> anyhow::Result<()> {
        let mut j = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if durable {
            j.append_durable(rec)
        } else {
            j.append(rec)
        }
    }
}

impl CheckpointStore for JournalStore {
    fn save(&self, step: &str, value: &serde_json::Value) -> anyhow::Result<()> {
        let mut data = value.clone();
        redact::redact_json(&mut data);
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
