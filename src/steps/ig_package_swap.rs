//! kind = "ig_package_swap": replace the FHIR IG package baked into the HAPI overlay image
//! (one version per image), point `HAPI_IG_PACKAGE_CLASSPATH`/`HAPI_IG_VERSION` (and
//! optionally `application.yaml`) at it, and refuse an upgrade that tightens SHALL
//! constraints unless vendors were notified `min_notice_days` ago.
//!
//! Invariants:
//! - `check` is read-only and names every cause: unsound package, wrong id, not exactly
//!   one current package, not newer, another FHIR release, tightenings without notice.
//! - Before the first change `apply` journals everything rollback needs (file names and
//!   sha256s, the env and yaml line edits — never whole files, which may hold secrets).
//!   The old package is *moved*, not deleted, to `<files.root>/.ferry-backup/<run-id>/`:
//!   outside `src/main/resources` so it is never baked into an image, on the same
//!   filesystem so the move is a rename. It stays after a successful run (so
//!   `ferry rollback` can restore it) and is removed by rollback.
//! - Each action probes first (right bytes already there? old already backed up?), so a
//!   crash anywhere resumes cleanly; rollback is idempotent in the same way.

mod check;
mod files;
mod notice;
mod yaml;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail, ensure};
use serde::{Deserialize, Serialize};

use super::{Check, Reversibility, Step, StepCx};
use crate::ig::{self, Package};
use crate::infra::dotenv::{self, Edit};
use crate::report::Level;

pub const KEYS: &[&str] = &[
    "package",
    "packages_dir",
    "expect_id",
    "env_file",
    "vendor_notice_dir",
    "min_notice_days",
    "allow_downgrade",
    "application_yaml",
];

const URL_KEY: &str = "HAPI_IG_PACKAGE_CLASSPATH";
const VERSION_KEY: &str = "HAPI_IG_VERSION";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IgPackageSwap {
    /// The new `.tgz`; relative to ferry's working directory.
    pub package: PathBuf,
    /// Relative to the target's `files.root` unless absolute.
    pub packages_dir: PathBuf,
    pub expect_id: String,
    /// Default: the target's `files.root` / `files.env_file`.
    pub env_file: Option<PathBuf>,
    pub vendor_notice_dir: Option<PathBuf>,
    #[serde(default = "default_notice_days")]
    pub min_notice_days: u32,
    #[serde(default)]
    pub allow_downgrade: bool,
    pub application_yaml: Option<PathBuf>,
}

fn default_notice_days() -> u32 {
    30
}

/// The checkpoint, saved once before the first change.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Swap {
    packages_dir: PathBuf,
    old_file: String,
    old_sha256: String,
    new_file: String,
    new_sha256: String,
    new_version: String,
    backup: PathBuf,
    env_file: PathBuf,
    env_edit: Edit,
    yaml: Option<(PathBuf, yaml::Replaced)>,
}

impl IgPackageSwap {
    fn root(&self, cx: &StepCx) -> Option<PathBuf> {
        cx.target.as_deref().and_then(|t| t.files_root())
    }

    /// A path of the deployment: absolute, or relative to the target's `files.root`.
    fn under_root(&self, cx: &StepCx, p: &Path, what: &str) -> anyhow::Result<PathBuf> {
        if p.is_absolute() {
            return Ok(p.to_path_buf());
        }
        let root = self.root(cx).ok_or_else(|| {
            anyhow!("`{what}` is relative, so this step needs a target with [files] root")
        })?;
        Ok(root.join(p))
    }

    fn packages_dir(&self, cx: &StepCx) -> anyhow::Result<PathBuf> {
        self.under_root(cx, &self.packages_dir, "packages_dir")
    }

    fn env_file(&self, cx: &StepCx) -> anyhow::Result<PathBuf> {
        match &self.env_file {
            Some(f) => self.under_root(cx, f, "env_file"),
            None => cx
                .target()?
                .env_file()
                .ok_or_else(|| anyhow!("no `env_file` given and the target has no [files]")),
        }
    }

    fn yaml_file(&self, cx: &StepCx) -> anyhow::Result<Option<PathBuf>> {
        self.application_yaml
            .as_deref()
            .map(|p| self.under_root(cx, p, "application_yaml"))
            .transpose()
    }

    fn backup_path(&self, cx: &StepCx, dir: &Path, old_file: &str) -> PathBuf {
        let base = self
            .root(cx)
            .or_else(|| dir.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| dir.to_path_buf());
        base.join(".ferry-backup").join(&cx.run_id).join(old_file)
    }

    fn read_new(&self, cx: &StepCx) -> Result<Package, ig::IgError> {
        ig::read_package(&cx.path(&self.package), &ig::Limits::default())
    }

    fn env_vars(new_file: &str, version: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (URL_KEY.to_owned(), class_path(new_file)),
            (VERSION_KEY.to_owned(), version.to_owned()),
        ])
    }

    /// Whether the deployment already points at `new_file` / `version` everywhere.
    fn config_set(&self, cx: &StepCx, new_file: &str, version: &str) -> anyhow::Result<bool> {
        let env = dotenv::read(&self.env_file(cx)?)?;
        let env_ok = Self::env_vars(new_file, version)
            .iter()
            .all(|(k, v)| env.get(k) == Some(v));
        let yaml_ok = match self.yaml_file(cx)? {
            None => true,
            Some(y) => {
                let text = std::fs::read_to_string(&y)?;
                yaml::values(&text, &self.expect_id).map_err(|e| anyhow!("{}: {e}", y.display()))?
                    == (class_path(new_file), version.to_owned())
            }
        };
        Ok(env_ok && yaml_ok)
    }
}

fn class_path(file: &str) -> String {
    format!("classpath:packages/{file}")
}

impl Step for IgPackageSwap {
    fn validate(&self) -> Vec<(Option<&'static str>, String)> {
        let mut out = vec![];
        let id_ok = !self.expect_id.is_empty()
            && self
                .expect_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !id_ok {
            out.push((
                Some("expect_id"),
                format!("`{}` is not an NPM package id", self.expect_id),
            ));
        }
        if self.packages_dir.as_os_str().is_empty() {
            out.push((Some("packages_dir"), "`packages_dir` is empty".into()));
        }
        out
    }
    fn describe(&self) -> String {
        format!(
            "swap the {} IG package in {} for {}",
            self.expect_id,
            self.packages_dir.display(),
            self.package.display()
        )
    }

    fn reversibility(&self) -> Reversibility {
        Reversibility::Reversible(format!(
            "restore the previous {} package and the previous {URL_KEY}/{VERSION_KEY} lines{}",
            self.expect_id,
            if self.application_yaml.is_some() {
                " and application.yaml values"
            } else {
                ""
            }
        ))
    }

    async fn check(&self, cx: &StepCx) -> anyhow::Result<Vec<Check>> {
        self.checks(cx)
    }

    async fn done(&self, cx: &StepCx) -> anyhow::Result<bool> {
        let new = self.read_new(cx)?;
        let dir = self.packages_dir(cx)?;
        let new_file = files::file_name(&new.id, &new.version);
        Ok(
            files::packages_of(&dir, &self.expect_id)? == [new_file.clone()]
                && files::sha256_file(&dir.join(&new_file))?.as_deref() == Some(&new.sha256)
                && self.config_set(cx, &new_file, &new.version.to_string())?,
        )
    }

    async fn apply(&self, cx: &StepCx) -> anyhow::Result<()> {
        let s = match cx.checkpoint::<Swap>()? {
            Some(s) => s,
            None => {
                let s = self.plan(cx)?;
                cx.save_checkpoint(&s)?;
                s
            }
        };
        let dir = &s.packages_dir;
        // 1. The new package in (temp file, fsync, rename) unless its bytes are there.
        let dest = dir.join(&s.new_file);
        if files::sha256_file(&dest)?.as_deref() != Some(&s.new_sha256) {
            let src = cx.path(&self.package);
            let bytes =
                std::fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
            ensure!(
                files::sha256_bytes(&bytes) == s.new_sha256,
                "{} changed since the run started (sha256 differs from the checked one)",
                src.display()
            );
            dotenv::write_atomic(&dest, &bytes)
                .with_context(|| format!("writing {}", dest.display()))?;
            cx.log(Level::Info, format!("installed {}", s.new_file));
        }
        // 2. The old package out, into the backup (a rename: it is never lost).
        let old = dir.join(&s.old_file);
        if old.exists() {
            if files::sha256_file(&s.backup)?.as_deref() == Some(&s.old_sha256) {
                files::remove_if_present(&old)?;
            } else {
                let bdir = s.backup.parent().unwrap_or(dir);
                std::fs::create_dir_all(bdir)
                    .with_context(|| format!("creating {}", bdir.display()))?;
                files::move_file(&old, &s.backup).with_context(|| {
                    format!("moving {} to {}", old.display(), s.backup.display())
                })?;
            }
            cx.log(
                Level::Info,
                format!("removed {} (kept in {})", s.old_file, s.backup.display()),
            );
        } else if files::sha256_file(&s.backup)?.as_deref() != Some(&s.old_sha256) {
            bail!(
                "{} is gone and its backup {} is missing or differs",
                old.display(),
                s.backup.display()
            );
        }
        // 3. The env file and application.yaml: `set`/`plan` are no-ops once applied.
        dotenv::set(&s.env_file, &Self::env_vars(&s.new_file, &s.new_version))
            .with_context(|| format!("editing {}", s.env_file.display()))?;
        if let Some((y, _)) = &s.yaml {
            let text = std::fs::read_to_string(y)?;
            let (_, new) = yaml::plan(
                &text,
                &self.expect_id,
                &class_path(&s.new_file),
                &s.new_version,
            )
            .map_err(|e| anyhow!("{}: {e}", y.display()))?;
            if let Some(new) = new {
                dotenv::write_atomic(y, new.as_bytes())?;
            }
        }
        Ok(())
    }

    async fn verify(&self, cx: &StepCx) -> anyhow::Result<()> {
        let s: Swap = cx
            .checkpoint()?
            .ok_or_else(|| anyhow!("no checkpoint: the swap did not start"))?;
        let present = files::packages_of(&s.packages_dir, &self.expect_id)?;
        ensure!(
            present == [s.new_file.clone()],
            "expected only {} in {}, found: {}",
            s.new_file,
            s.packages_dir.display(),
            present.join(", ")
        );
        let sha = files::sha256_file(&s.packages_dir.join(&s.new_file))?;
        ensure!(
            sha.as_deref() == Some(&s.new_sha256),
            "{} does not have the expected sha256 {}",
            s.new_file,
            s.new_sha256
        );
        ensure!(
            self.config_set(cx, &s.new_file, &s.new_version)?,
            "{URL_KEY}/{VERSION_KEY}{} do not point at {} {}",
            if s.yaml.is_some() {
                " or application.yaml"
            } else {
                ""
            },
            s.new_file,
            s.new_version
        );
        Ok(())
    }

    async fn rollback(&self, cx: &StepCx) -> anyhow::Result<()> {
        let Some(s) = cx.checkpoint::<Swap>()? else {
            return Ok(());
        };
        let dir = &s.packages_dir;
        // Old package back first, so the directory never lacks a package.
        let old = dir.join(&s.old_file);
        if files::sha256_file(&old)?.as_deref() != Some(&s.old_sha256) {
            ensure!(
                files::sha256_file(&s.backup)?.as_deref() == Some(&s.old_sha256),
                "cannot restore {}: its backup {} is missing or differs",
                old.display(),
                s.backup.display()
            );
            files::move_file(&s.backup, &old)?;
        }
        files::remove_if_present(&dir.join(&s.new_file))?;
        files::remove_if_present(&dir.join(format!(".{}.ferry-tmp", s.new_file)))?;
        dotenv::revert(&s.env_file, &s.env_edit)
            .with_context(|| format!("restoring {}", s.env_file.display()))?;
        if let Some((y, replaced)) = &s.yaml {
            let text = std::fs::read_to_string(y)?;
            let orig = yaml::revert(&text, replaced);
            if orig != text {
                dotenv::write_atomic(y, orig.as_bytes())?;
            }
        }
        // The backup last: until here a crash can still find it.
        files::remove_if_present(&s.backup)?;
        for d in s.backup.ancestors().skip(1).take(2) {
            // Only empty directories go (ferry's own; an operator's files stay).
            let _ = std::fs::remove_dir(d);
        }
        Ok(())
    }
}

impl IgPackageSwap {
    /// Everything rollback will need, computed before anything changes.
    fn plan(&self, cx: &StepCx) -> anyhow::Result<Swap> {
        let new = self.read_new(cx)?;
        ensure!(
            new.id == self.expect_id,
            "{} is package {}",
            new.file_name,
            new.id
        );
        let dir = self.packages_dir(cx)?;
        let new_file = files::file_name(&new.id, &new.version);
        let present = files::packages_of(&dir, &self.expect_id)?;
        let [old_file] = present.as_slice() else {
            bail!(
                "expected exactly one {} package in {}, found: {}",
                self.expect_id,
                dir.display(),
                present.join(", ")
            );
        };
        ensure!(*old_file != new_file, "{new_file} is already installed");
        let old_sha256 = files::sha256_file(&dir.join(old_file))?
            .ok_or_else(|| anyhow!("{old_file} vanished"))?;
        let version = new.version.to_string();
        let env_file = self.env_file(cx)?;
        let env_text = std::fs::read_to_string(&env_file)
            .with_context(|| format!("reading {}", env_file.display()))?;
        let (env_edit, _) = dotenv::plan_set(&env_text, &Self::env_vars(&new_file, &version));
        let yaml = match self.yaml_file(cx)? {
            None => None,
            Some(y) => {
                let text = std::fs::read_to_string(&y)
                    .with_context(|| format!("reading {}", y.display()))?;
                let (replaced, _) =
                    yaml::plan(&text, &self.expect_id, &class_path(&new_file), &version)
                        .map_err(|e| anyhow!("{}: {e}", y.display()))?;
                Some((y, replaced))
            }
        };
        Ok(Swap {
            backup: self.backup_path(cx, &dir, old_file),
            old_file: old_file.clone(),
            old_sha256,
            new_file,
            new_sha256: new.sha256,
            new_version: version,
            packages_dir: dir,
            env_file,
            env_edit,
            yaml,
        })
    }
}
