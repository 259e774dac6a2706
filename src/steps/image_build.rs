//! kind = "image_build": build an image from a context directory with the classic builder,
//! the way the seed does (`docker build --build-arg IG_PACKAGE=… --build-arg
//! BUILD_VERSION=… --build-arg GIT_COMMIT=… -t … -f hapi-overlay/Dockerfile`), and tag it.
//!
//! Invariants:
//! - Every build arg must be declared by an `ARG` in the Dockerfile (a typo would
//!   otherwise be ignored by the builder): an error at validate when the Dockerfile can be
//!   read then, a failed check otherwise.
//! - Labels identify the build: the OCI version/revision from `BUILD_VERSION`/`GIT_COMMIT`,
//!   the IG's id/version/sha256 when `ig_package` is given, and `ferry.build.sha256` over
//!   the Dockerfile, the build args and the labels. Every tag carrying that image with
//!   those labels = done (skipped). Other context changes are not seen: bump the version.
//! - Before building, the checkpoint records which tags existed and their image ids;
//!   rollback removes the tags this run created and points moved tags back at their old
//!   image. Nothing else is touched.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Check, Reversibility, Step, StepCx};
use crate::infra::docker::{BuildRequest, Docker, dockerfile_args};
use crate::report::{CheckStatus, Level, Stream};
use crate::util::image_ref;

pub const KEYS: &[&str] = &[
    "context",
    "dockerfile",
    "build_args",
    "tags",
    "labels",
    "ig_package",
];

pub const LABEL_VERSION: &str = "org.opencontainers.image.version";
pub const LABEL_REVISION: &str = "org.opencontainers.image.revision";
pub const LABEL_IG_ID: &str = "bd.gov.dghs.ig.id";
pub const LABEL_IG_VERSION: &str = "bd.gov.dghs.ig.version";
pub const LABEL_IG_SHA256: &str = "bd.gov.dghs.ig.sha256";
pub const LABEL_BUILD: &str = "ferry.build.sha256";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageBuild {
    /// The build context; absolute or relative to ferry's working directory.
    pub context: PathBuf,
    /// Relative to the context.
    #[serde(default = "default_dockerfile")]
    pub dockerfile: String,
    #[serde(default)]
    pub build_args: BTreeMap<String, String>,
    pub tags: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The IG package baked in (for its labels); relative to ferry's working directory.
    pub ig_package: Option<PathBuf>,
}

fn default_dockerfile() -> String {
    "Dockerfile".into()
}

/// Tag → the image id it pointed at before this run (None: it did not exist).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Cp {
    before: BTreeMap<String, Option<String>>,
    built: Option<String>,
}

impl ImageBuild {
    fn dockerfile_path(&self, workdir: &Path) -> PathBuf {
        workdir.join(&self.context).join(&self.dockerfile)
    }

    fn args_declared(&self, dockerfile: &str) -> Result<(), String> {
        let declared = dockerfile_args(dockerfile);
        let unknown: Vec<&str> = self
            .build_args
            .keys()
            .filter(|k| !declared.contains(k))
            .map(String::as_str)
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        Err(format!(
            "unknown build arg(s) {}: {} declares only {}",
            unknown.join(", "),
            self.dockerfile,
            if declared.is_empty() {
                "no ARG".to_owned()
            } else {
                declared.join(", ")
            }
        ))
    }

    /// Every label the image must carry: the playbook's, the OCI ones, the IG's, ours.
    fn labels(&self, cx: &StepCx) -> anyhow::Result<BTreeMap<String, String>> {
        let mut l = self.labels.clone();
        if let Some(v) = self.build_args.get("BUILD_VERSION") {
            l.insert(LABEL_VERSION.into(), v.clone());
        }
        if let Some(v) = self.build_args.get("GIT_COMMIT") {
            l.insert(LABEL_REVISION.into(), v.clone());
        }
        if let Some(p) = &self.ig_package {
            let pkg = crate::ig::read_package(&cx.path(p), &Default::default())?;
            l.insert(LABEL_IG_ID.into(), pkg.id);
            l.insert(LABEL_IG_VERSION.into(), pkg.version.to_string());
            l.insert(LABEL_IG_SHA256.into(), pkg.sha256);
        }
        let df = std::fs::read(self.dockerfile_path(&cx.workdir))
            .with_context(|| format!("read {}", self.dockerfile))?;
        let mut h = Sha256::new();
        h.update(&df);
        h.update(serde_json::to_vec(&(&self.build_args, &l))?);
        l.insert(LABEL_BUILD.into(), hex::encode(h.finalize()));
        Ok(l)
    }

    /// Tag → image id, for the tags present now.
    async fn tag_ids(&self, eng: &Docker) -> anyhow::Result<BTreeMap<String, Option<String>>> {
        let mut out = BTreeMap::new();
        for t in &self.tags {
            out.insert(t.clone(), eng.inspect_image(t).await?.map(|i| i.id));
        }
        Ok(out)
    }
}

impl Step for ImageBuild {
    fn validate(&self) -> Vec<(Option<&'static str>, String)> {
        let mut out = vec![];
        if self.tags.is_empty() {
            out.push((Some("tags"), "`tags` must name at least one tag".into()));
        }
        for t in &self.tags {
            if let Err(e) = image_ref::check(t, image_ref::Digest::Refused) {
                out.push((Some("tags"), e));
            }
        }
        // A newline in a build arg would reach a label (BUILD_VERSION → the OCI version)
        // or the build unseen.
        for (k, v) in &self.build_args {
            if let Err(e) = image_ref::check_text(
                &format!("build arg `{}`", k.escape_debug()),
                &format!("{k}{v}"),
            ) {
                out.push((Some("build_args"), e));
            }
        }
        for (k, v) in &self.labels {
            if let Err(e) =
                image_ref::check_text(&format!("label `{}`", k.escape_debug()), &format!("{k}{v}"))
            {
                out.push((Some("labels"), e));
            }
        }
        // Read now only when the path is already real (not `<target.…>` in `validate`
        // without a target); otherwise `check` does it.
        let cwd = std::env::current_dir().unwrap_or_default();
        if let Ok(text) = std::fs::read_to_string(cwd.join(self.dockerfile_path(&cwd)))
            && let Err(e) = self.args_declared(&text)
        {
            out.push((Some("build_args"), e));
        }
        out
    }
    fn describe(&self) -> String {
        format!(
            "build {} from {}",
            self.tags.join(", "),
            self.context.join(&self.dockerfile).display()
        )
    }

    fn reversibility(&self) -> Reversibility {
        Reversibility::Reversible(
            "remove the tags this run created; point moved tags back at their old image".into(),
        )
    }

    async fn check(&self, cx: &StepCx) -> anyhow::Result<Vec<Check>> {
        let mut checks = vec![];
        match cx.docker().await {
            Ok(eng) => {
                let v = eng.version().await?;
                checks.push(Check::pass(
                    "docker",
                    format!("{} (Engine {}, API {})", eng.host, v.version, v.api_version),
                ));
            }
            Err(e) => checks.push(Check::fail("docker", format!("{e:#}"))),
        }
        let df = self.dockerfile_path(&cx.workdir);
        match std::fs::read_to_string(&df) {
            Ok(text) => checks.push(match self.args_declared(&text) {
                Ok(()) => Check::pass(
                    "dockerfile",
                    format!("{} declares every build arg", df.display()),
                ),
                Err(e) => Check::fail("dockerfile", e),
            }),
            Err(e) => checks.push(Check::fail("dockerfile", format!("{}: {e}", df.display()))),
        }
        if let Some(p) = &self.ig_package {
            let path = cx.path(p);
            checks.push(match crate::ig::read_package(&path, &Default::default()) {
                Ok(pkg) => Check::pass("ig_package", format!("{}#{}", pkg.id, pkg.version)),
                Err(_) if cx.preflight && !path.exists() => Check::new(
                    "ig_package",
                    CheckStatus::Deferred,
                    format!("{} is put in place by an earlier step", path.display()),
                ),
                Err(e) => Check::fail("ig_package", e.to_string()),
            });
        }
        Ok(checks)
    }

    async fn done(&self, cx: &StepCx) -> anyhow::Result<bool> {
        let eng = cx.docker().await?;
        let want = self.labels(cx)?;
        let mut id = None;
        for t in &self.tags {
            let Some(img) = eng.inspect_image(t).await? else {
                return Ok(false);
            };
            if id.get_or_insert_with(|| img.id.clone()) != &img.id
                || want.iter().any(|(k, v)| img.labels.get(k) != Some(v))
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn apply(&self, cx: &StepCx) -> anyhow::Result<()> {
        let eng = cx.docker().await?;
        let mut cp = match cx.checkpoint::<Cp>()? {
            Some(cp) => cp,
            None => {
                let cp = Cp {
                    before: self.tag_ids(&eng).await?,
                    built: None,
                };
                cx.save_checkpoint(&cp)?;
                cp
            }
        };
        let req = BuildRequest {
            context: cx.path(&self.context),
            dockerfile: self.dockerfile.clone(),
            build_args: self.build_args.clone(),
            labels: self.labels(cx)?,
            tags: self.tags.clone(),
        };
        let id = eng
            .build_image(&req, |line| cx.output(Stream::Stdout, line))
            .await?;
        cx.log(
            Level::Info,
            format!("built {id} as {}", self.tags.join(", ")),
        );
        cp.built = Some(id);
        cx.save_checkpoint(&cp)
    }

    async fn verify(&self, cx: &StepCx) -> anyhow::Result<()> {
        if self.done(cx).await? {
            Ok(())
        } else {
            bail!("after the build, not every tag carries the new image with its labels")
        }
    }

    async fn rollback(&self, cx: &StepCx) -> anyhow::Result<()> {
        let Some(cp) = cx.checkpoint::<Cp>()? else {
            return Ok(()); // nothing was recorded, so nothing was built
        };
        let eng = cx.docker().await?;
        for (tag, before) in &cp.before {
            let now = eng.inspect_image(tag).await?.map(|i| i.id);
            match before {
                None if now.is_some() => {
                    eng.remove_image(tag).await?;
                    cx.log(Level::Info, format!("removed {tag}"));
                }
                Some(old) if now.as_ref() != Some(old) => {
                    eng.tag_image(old, tag).await.map_err(|e| {
                        anyhow!("{e:#}; {tag} pointed at {old} before this run and could not be restored")
                    })?;
                    cx.log(Level::Info, format!("{tag} points at {old} again"));
                }
                _ => {}
            }
        }
        Ok(())
    }
}
