//! kind = "env_set": set KEY=VALUE lines in a dotenv file, keeping every other byte as it
//! was. The lines it replaces (and the lines it wrote over them) go to a 0600 backup file in
//! the run directory (they may hold secrets, and checkpoints are redacted); the checkpoint
//! holds only that file's path and sha256, so rollback restores the file byte for byte
//! without ever journaling a value. Rollback finds each line it wrote by key, wherever it is
//! now, and refuses one edited since (see `dotenv::Edit`).
//! Values of keys that look secret (PASSWORD, SECRET, TOKEN, KEY, CREDENTIAL, …) are shown
//! as `***` and registered with the redactor, like every target secret.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, anyhow, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Check, Reversibility, Step, StepCx};
use crate::infra::dotenv::{self, Edit};
use crate::report::redact;

pub const KEYS: &[&str] = &["file", "set"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvSet {
    /// Default: the target's `files.root` / `files.env_file`.
    pub file: Option<PathBuf>,
    pub set: BTreeMap<String, String>,
}

impl EnvSet {
    /// Old and new values of secret-looking keys are secrets from now on: masked wherever
    /// they surface (a child echoing one, an error quoting one).
    /// Short or flag-like values (`true`, `8080`) are only masked where env_set shows them:
    /// masking them everywhere would garble every other message.
    fn register(&self, current: &BTreeMap<String, String>) {
        let worth = |v: &str| v.len() >= 8 && !v.chars().all(|c| c.is_ascii_digit());
        for (k, v) in &self.set {
            if secret_key(k) {
                for v in std::iter::once(v).chain(current.get(k)) {
                    if worth(v) {
                        redact::register(v);
                    }
                }
            }
        }
    }

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

/// Parts of a key name that say its value is a secret (compared upper-case).
const SECRET_WORDS: &[&str] = &[
    "PASSWORD",
    "PASSWD",
    "PWD",
    "SECRET",
    "TOKEN",
    "KEY",
    "CREDENTIAL",
    "PRIVATE",
    "AUTH",
    "CERT",
];

pub fn secret_key(key: &str) -> bool {
    let k = key.to_ascii_uppercase();
    SECRET_WORDS.iter().any(|w| k.contains(w))
}

/// A value as env_set shows it: `***` for a secret-looking key or a registered secret.
fn shown(key: &str, v: &str) -> String {
    if secret_key(key) || redact::redact(v) != v {
        "***".into()
    } else {
        v.to_owned()
    }
}

/// What the journal holds for an edit: where the replaced lines are, never the lines.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Saved {
    /// The replaced lines as JSON `[[index, line], …]`, 0600, in the run directory.
    backup: PathBuf,
    sha256: String,
    /// The keys of the replaced lines (names only).
    replaced_keys: Vec<String>,
    appended: Vec<String>,
    had_final_newline: bool,
    original_len: usize,
}

/// Journals written before the backup file held the edit itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Checkpoint {
    Saved(Saved),
    Legacy(Edit),
}

impl Saved {
    fn store(cx: &StepCx, edit: &Edit) -> anyhow::Result<Saved> {
        let dir = cx.run_dir().join("backup");
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .with_context(|| format!("creating {}", dir.display()))?;
        }
        let backup = dir.join(format!("{}.env-lines.json", cx.step_id));
        // The whole edit: the replaced lines and the lines written over them, which the undo
        // checks before restoring (both may hold secrets: they stay in this 0600 file).
        let bytes = serde_json::to_vec(edit)?;
        // A new file is created 0600 (O_EXCL, random temp name, rename).
        dotenv::write_atomic(&backup, &bytes)
            .with_context(|| format!("writing {}", backup.display()))?;
        Ok(Saved {
            backup,
            sha256: hex::encode(Sha256::digest(&bytes)),
            replaced_keys: edit
                .replaced
                .iter()
                .filter_map(|(_, l)| dotenv::key_of(l).map(str::to_owned))
                .collect(),
            appended: edit.appended.clone(),
            had_final_newline: edit.had_final_newline,
            original_len: edit.original_len,
        })
    }

    /// The edit back from its backup; None when the backup is gone (removed by a finished
    /// rollback).
    fn load(&self) -> anyhow::Result<Option<Edit>> {
        let bytes = match std::fs::read(&self.backup) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.backup.display())),
        };
        if hex::encode(Sha256::digest(&bytes)) != self.sha256 {
            bail!(
                "{} does not match the sha256 journaled for it: not restoring from it",
                self.backup.display()
            );
        }
        if let Ok(edit) = serde_json::from_slice::<Edit>(&bytes) {
            return Ok(Some(edit));
        }
        // Older runs kept only the replaced lines, `[[index, line], …]`.
        Ok(Some(Edit {
            replaced: serde_json::from_slice(&bytes)
                .with_context(|| format!("reading {}", self.backup.display()))?,
            written: vec![],
            appended: self.appended.clone(),
            appended_lines: vec![],
            had_final_newline: self.had_final_newline,
            original_len: self.original_len,
        }))
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
                self.register(&current);
                let changes: Vec<String> = self
                    .set
                    .iter()
                    .filter(|(k, v)| current.get(*k) != Some(v))
                    .map(|(k, v)| {
                        let old = current.get(k).map_or("(unset)".into(), |o| shown(k, o));
                        format!("{k}: {old} → {}", shown(k, v))
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
        if cx.checkpoint::<Checkpoint>()?.is_some() {
            dotenv::set(&f, &self.set).with_context(what)?;
            return Ok(());
        }
        // Back up and journal what will be replaced before the file changes, so a crash in
        // between leaves a record to undo from (reverting an edit that never landed is a
        // no-op).
        let text = std::fs::read_to_string(&f).with_context(what)?;
        self.register(&dotenv::read(&f).unwrap_or_default());
        let (edit, new) = dotenv::plan_set(&text, &self.set);
        cx.save_checkpoint(&Saved::store(cx, &edit)?)?;
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
                    "{} has {k}={} after the edit, expected {:?}",
                    f.display(),
                    now.get(k)
                        .map_or("(unset)".into(), |n| format!("{:?}", shown(k, n))),
                    shown(k, v)
                );
            }
        }
        Ok(())
    }

    async fn rollback(&self, cx: &StepCx) -> anyhow::Result<()> {
        let Some(cp) = cx.checkpoint::<Checkpoint>()? else {
            return Ok(());
        };
        let f = self.file(cx)?;
        let restoring = || format!("restoring {}", f.display());
        match cp {
            Checkpoint::Legacy(edit) => dotenv::revert(&f, &edit).with_context(restoring),
            Checkpoint::Saved(saved) => match saved.load()? {
                Some(edit) => {
                    dotenv::revert(&f, &edit).with_context(restoring)?;
                    // The old values are back in place: do not keep a second copy of them.
                    let _ = std::fs::remove_file(&saved.backup);
                    Ok(())
                }
                None => {
                    // Gone after a finished revert: nothing of ours left means undone.
                    let now = dotenv::read(&f).with_context(restoring)?;
                    let ours = saved
                        .replaced_keys
                        .iter()
                        .any(|k| now.contains_key(k) && now.get(k) == self.set.get(k));
                    if ours {
                        bail!(
                            "{}: the backup of the replaced lines ({}) is missing; restore them by hand",
                            f.display(),
                            saved.backup.display()
                        );
                    }
                    dotenv::revert(
                        &f,
                        &Edit {
                            replaced: vec![],
                            written: vec![],
                            appended: saved.appended.clone(),
                            appended_lines: saved
                                .appended
                                .iter()
                                .map(|k| Some(dotenv::line_for(k, self.set.get(k)?)))
                                .collect::<Option<Vec<_>>>()
                                .unwrap_or_default(),
                            had_final_newline: saved.had_final_newline,
                            original_len: saved.original_len,
                        },
                    )
                    .with_context(restoring)
                }
            },
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_looking_keys_are_masked() {
        for k in [
            "SPRING_DATASOURCE_PASSWORD",
            "db_passwd",
            "API_TOKEN",
            "client_secret",
            "SIGNING_KEY",
            "AwsCredentials",
        ] {
            assert!(secret_key(k), "{k}");
            assert_eq!(shown(k, "value-1"), "***");
        }
        assert!(!secret_key("HAPI_IMAGE"));
        assert_eq!(shown("HAPI_IMAGE", "reg/hapi:1"), "reg/hapi:1");
        assert!(redact::register("registered-env-secret"));
        assert_eq!(shown("HAPI_IMAGE", "registered-env-secret"), "***");
    }
}
