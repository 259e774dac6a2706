//! The resolved playbook: typed steps with every variable already interpolated. Nothing in
//! here refers back to TOML text; a `Playbook` is what the engine runs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::steps::{Step, StepSpec};

#[derive(Debug, Clone)]
pub struct Playbook {
    pub name: String,
    pub description: String,
    pub path: PathBuf,
    /// sha256 of the file's bytes: a resumed run refuses a changed playbook by default.
    pub hash: String,
    /// Every variable's final value (defaults overridden by `--var`).
    pub vars: BTreeMap<String, String>,
    pub steps: Vec<StepDef>,
    /// Rendered `warning: …` diagnostics (`| raw` in shell or SQL text); `validate` shows them.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct StepDef {
    pub id: String,
    pub kind: String,
    pub description: Option<String>,
    pub timeout: Option<Duration>,
    pub retries: u32,
    pub retry_delay: Duration,
    pub on_failure: OnFailure,
    pub spec: StepSpec,
    /// sha256 over kind, resolved parameters and the common settings.
    pub fingerprint: String,
}

impl StepDef {
    /// This step's failure, as the run reports it: which step, its kind and what it does,
    /// why it failed, and what the run did about it (`hint`).
    pub fn failed(&self, error: String, hint: String) -> Error {
        Error::StepFailed {
            step: self.id.clone(),
            kind: self.kind.clone(),
            describe: self.spec.describe(),
            error,
            hint,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    #[default]
    Rollback,
    Stop,
}
