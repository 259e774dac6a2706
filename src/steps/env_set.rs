//! kind = "env_set": set KEY=VALUE lines in a dotenv file, keeping every other byte as it
//! was. The checkpoint records only the lines it replaced (the rest of the file may hold
//! secrets), so rollback restores the file byte for byte without ever journaling it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, anyhow, bail};
use serde::Deserialize;

use super::{Check, Reversibility, Step, StepCx};
use crate::infra::dotenv::{self, Edit};

pub const KEYS: &[&str] = &["file", "set"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvSet {
    /// Default: the target's `files.root` / `files.env_file`.
    pub file: Option<PathBuf>,
    pub set: BTreeMap<String, String>,
}

impl EnvSet {
    fn file(&self, cx: &StepCx) -> anyhow::Result<PathBuf> {
        match &self.file {
            Some(f) if f.is_absolute() => Ok(f.clone()),
            Some(f) => match cx.target.as_deref().and_then(|t| t.files_root()) {
                Some(root) => Ok(root.join(f)),
                None => Ok(cx.path(f)),
            },
            None => cx
                .target()?
                .env_file()
                .ok_or_else(|| anyhow!("no `file` given and the target has no [files]")),
        }
    }
}

fn keys(vars: &BTreeMap<String, String>) -> String {
    vars.keys().cloned().collect::<Vec<_>>().join(", ")
}

impl Step for EnvSet {
    fn validate(&self) -> Vec<(Option<&'static str>, String)> {
        let mut out = vec![];
        if self.set.is_empty() {
            out.push((
                Some("set"),
                "`set` must name at least one KEY = \"value\"".into(),
            ));
        }
        for k in self.set.keys() {
            if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                out.push((
                    Some("set"),
                    format!("`{k}` is not a valid environment variable name"),
                ));
            }
        }
        out
    }
    fn describe(&self) -> String {
        let f = self
            .file
            .as_ref()
            .map_or("the target's env file".into(), |f| f.display().to_string());
        format!("set {} in {f}", keys(&self.set))
    }

    fn reversibility(&self) -> Reversibility {
        Reversibility::Reversible(format!(
            "restore the previous {} lines byte for byte",
            keys(&self.set)
        ))
    }

    async fn check(&self, cx: &StepCx) -> anyhow::Result<Vec<Check>> {
        let f = match self.file(cx) {
            Ok(f) => f,
            Err(e) => return Ok(vec![Check::fail("file", format!("{e:#}"))]),
        };
        let meta = std::fs::metadata(&f);
        let dir_writable = f.parent().is_some_and(writable);
        Ok(vec![match meta {
            Ok(m) if m.is_file() && !m.permissions().readonly() && dir_writable => {
                let current = dotenv::read(&f).unwrap_or_default();
                let changes: Vec<String> = self
                    .set
                    .iter()
                    .filter(|(k, v)| current.get(*k) != Some(v))
                    .map(|(k, v)| {
                        format!(
                            "{k}: {} → {v}",
                            current.get(k).map_or("(unset)", String::as_str)
                        )
                    })
                    .collect();
                let what = if changes.is_empty() {
                    "already set".into()
                } else {
                    changes.join("; ")
                };
                Check::pass("file", format!("{} is writable; {what}", f.display()))
            }
            Ok(_) => Check::fail(
                "file",
                format!(
                    "{} is not a writable file in a writable directory",
                    f.display()
                ),
            ),
            Err(e) => Check::fail("file", format!("{}: {e}", f.display())),
        }])
    }

    async fn apply(&self, cx: &StepCx) -> anyhow::Result<()> {
        let f = self.file(cx)?;
        let what = || format!("editing {}", f.display());
        // Re-entry after a crash: the edit is journaled, and it may or may not have reached
        // the file; setting the same values again is a no-op when it did.
        if cx.checkpoint::<Edit>()?.is_some() {
            dotenv::set(&f, &self.set).with_context(what)?;
            return Ok(());
        }
        // Journal what will be replaced before the file changes, so a crash in between
        // leaves a record to undo from (reverting an edit that never landed is a no-op).
        let text = std::fs::read_to_string(&f).with_context(what)?;
        let (edit, new) = dotenv::plan_set(&text, &self.set);
        cx.save_checkpoint(&edit)?;
        if let Some(new) = new {
            dotenv::write_atomic(&f, new.as_bytes()).with_context(what)?;
        }
        Ok(())
    }

    async fn verify(&self, cx: &StepCx) -> anyhow::Result<()> {
        let f = self.file(cx)?;
        let now = dotenv::read(&f)?;
        for (k, v) in &self.set {
            if now.get(k) != Some(v) {
                bail!(
                    "{} has {k}={:?} after the edit, expected {v:?}",
                    f.display(),
                    now.get(k)
                );
            }
        }
        Ok(())
    }

    async fn rollback(&self, cx: &StepCx) -> anyhow::Result<()> {
        let Some(edit) = cx.checkpoint::<Edit>()? else {
            return Ok(());
        };
        let f = self.file(cx)?;
        dotenv::revert(&f, &edit).with_context(|| format!("restoring {}", f.display()))
    }
}

fn writable(dir: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a valid C string; access(2) has no other preconditions.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}
