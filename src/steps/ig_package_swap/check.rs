//! `check` of `ig_package_swap`: read-only, and every failure names its cause — the new
//! package's soundness and id, exactly one installed package (or a swap this run already
//! started), version order, FHIR release, and the vendor-notice gate for tightenings.

use anyhow::Context;

use super::{IgPackageSwap, Swap, VERSION_KEY, files, notice, yaml};
use crate::ig::{self, Class};
use crate::infra::dotenv;
use crate::report::CheckStatus;
use crate::steps::{Check, StepCx};

/// Tightenings listed in a failed check before "and N more".
const LIST_CAP: usize = 20;

impl IgPackageSwap {
    pub(super) fn checks(&self, cx: &StepCx) -> anyhow::Result<Vec<Check>> {
        let mut out = vec![];
        let new = match self.read_new(cx) {
            Ok(p) => p,
            Err(e) => return Ok(vec![Check::fail("package", e.to_string())]),
        };
        out.push(Check::pass(
            "package",
            format!(
                "{} is {} {} (FHIR {}), sha256 {}",
                new.file_name,
                new.id,
                new.version,
                new.fhir_versions.join(", "),
                &new.sha256[..12]
            ),
        ));
        if new.id != self.expect_id {
            out.push(Check::fail(
                "id",
                format!(
                    "{} is package {}, expected {}",
                    new.file_name, new.id, self.expect_id
                ),
            ));
            return Ok(out);
        }
        let dir = self.packages_dir(cx)?;
        let present = files::packages_of(&dir, &self.expect_id)
            .with_context(|| format!("listing {}", dir.display()))?;
        let new_file = files::file_name(&new.id, &new.version);
        let version = new.version.to_string();
        let resuming = cx.checkpoint::<Swap>()?;

        // Where the current package is: in the directory, or (mid-swap) in the backup.
        let current_path = match &resuming {
            Some(s) if s.new_sha256 == new.sha256 => {
                if let Some(stray) = present
                    .iter()
                    .find(|f| **f != s.old_file && **f != s.new_file)
                {
                    out.push(Check::fail(
                        "packages",
                        format!(
                            "resuming the swap, but {stray} appeared in {}",
                            dir.display()
                        ),
                    ));
                    return Ok(out);
                }
                out.push(Check::pass(
                    "packages",
                    format!("resuming the swap {} → {}", s.old_file, s.new_file),
                ));
                let in_dir = dir.join(&s.old_file);
                if in_dir.exists() {
                    in_dir
                } else {
                    s.backup.clone()
                }
            }
            Some(s) => {
                out.push(Check::fail(
                    "package",
                    format!(
                        "{} changed since this run started (sha256 {} then, {} now)",
                        new.file_name, s.new_sha256, new.sha256
                    ),
                ));
                return Ok(out);
            }
            None if present == [new_file.clone()]
                && files::sha256_file(&dir.join(&new_file))?.as_deref()
                    == Some(new.sha256.as_str()) =>
            {
                out.push(Check::pass(
                    "packages",
                    format!("already swapped: {new_file} is the only {} package", new.id),
                ));
                return Ok(out);
            }
            None => match present.as_slice() {
                [one] => dir.join(one),
                [] => {
                    out.push(Check::fail(
                        "packages",
                        format!(
                            "no {} package (<id>-<version>.tgz) in {}; expected exactly one",
                            self.expect_id,
                            dir.display()
                        ),
                    ));
                    return Ok(out);
                }
                many => {
                    out.push(Check::fail(
                        "packages",
                        format!(
                            "{} {} packages in {}: {}; one IG version per image, remove all but one",
                            many.len(),
                            self.expect_id,
                            dir.display(),
                            many.join(", ")
                        ),
                    ));
                    return Ok(out);
                }
            },
        };
        let cur = match ig::read_package(&current_path, &ig::Limits::default()) {
            Ok(p) => p,
            Err(e) => {
                out.push(Check::fail(
                    "current",
                    format!("the installed package: {e}"),
                ));
                return Ok(out);
            }
        };
        if cur.id != new.id
            || current_path.file_name().and_then(|n| n.to_str())
                != Some(&files::file_name(&cur.id, &cur.version))
        {
            out.push(Check::fail(
                "current",
                format!(
                    "{} holds {} {}, which its file name does not say",
                    current_path.display(),
                    cur.id,
                    cur.version
                ),
            ));
            return Ok(out);
        }
        out.push(if new.version > cur.version {
            Check::pass("version", format!("{} → {}", cur.version, new.version))
        } else if new.version == cur.version {
            Check::fail(
                "version",
                format!(
                    "already at {} {} (with other bytes than {})",
                    cur.id, cur.version, new.file_name
                ),
            )
        } else if self.allow_downgrade {
            Check::new(
                "version",
                CheckStatus::Warn,
                format!("downgrade {} → {} (allow_downgrade)", cur.version, new.version),
            )
        } else {
            Check::fail(
                "version",
                format!(
                    "{} {} is older than the installed {}: a downgrade (set allow_downgrade = true to allow it)",
                    new.id, new.version, cur.version
                ),
            )
        });
        if cur.fhir_releases() != new.fhir_releases() {
            out.push(Check::fail(
                "fhir",
                format!(
                    "{} is for FHIR {} but the installed {} is for FHIR {}",
                    new.file_name,
                    new.fhir_versions.join(", "),
                    cur.file_name,
                    cur.fhir_versions.join(", ")
                ),
            ));
            return Ok(out);
        }
        out.push(Check::pass(
            "fhir",
            format!("FHIR {}", new.fhir_versions.join(", ")),
        ));
        let d = ig::diff(&cur, &new);
        let counts = d.counts();
        let n = |c: Class| counts.get(&c).copied().unwrap_or(0);
        out.push(Check::pass(
            "diff",
            format!(
                "{} tightening(s), {} loosening(s), {} info",
                n(Class::Tightening),
                n(Class::Loosening),
                n(Class::Info)
            ),
        ));
        if n(Class::Tightening) > 0 {
            out.push(self.notice_check(cx, &d, &version));
        }
        out.push(self.env_check(cx));
        if let Some(c) = self.yaml_check(cx) {
            out.push(c);
        }
        Ok(out)
    }
    fn notice_check(&self, cx: &StepCx, d: &ig::Diff, version: &str) -> Check {
        let t: Vec<&ig::Finding> = d.tightenings().collect();
        let mut list: Vec<String> = t
            .iter()
            .take(LIST_CAP)
            .map(|f| {
                format!(
                    "\n    - {} {}{}",
                    f.kind,
                    f.profile,
                    f.element
                        .as_deref()
                        .map_or(String::new(), |e| format!(" {e}"))
                )
            })
            .collect();
        if t.len() > LIST_CAP {
            list.push(format!("\n    … and {} more", t.len() - LIST_CAP));
        }
        let head = format!(
            "{} → {} has {} SHALL tightening(s), so vendors must be notified at least {} day(s) before",
            d.old.version,
            d.new.version,
            t.len(),
            self.min_notice_days
        );
        let today = notice::today();
        let record = format!("{}-{version}.toml", self.expect_id);
        let why = match &self.vendor_notice_dir {
            None => format!(
                "no vendor_notice_dir is configured to hold {record}; if vendors are notified today, the upgrade may run from {}",
                notice::fmt(notice::first_allowed(today, self.min_notice_days))
            ),
            Some(nd) => {
                let path = match self.under_root(cx, nd, "vendor_notice_dir") {
                    Ok(p) => p.join(&record),
                    Err(e) => return Check::fail("notice", format!("{e:#}")),
                };
                match notice::evaluate(&path, today, self.min_notice_days) {
                    notice::Notice::Ok {
                        path,
                        notified_on,
                        channel,
                        reference,
                    } => {
                        return Check::pass(
                            "notice",
                            format!(
                                "{head}: notified on {} via {channel} ({reference}), {}",
                                notice::fmt(notified_on),
                                path.display()
                            ),
                        );
                    }
                    notice::Notice::Missing { path } => format!(
                        "no notice record {} (notified_on = YYYY-MM-DD, channel, reference); if vendors are notified today, the upgrade may run from {}",
                        path.display(),
                        notice::fmt(notice::first_allowed(today, self.min_notice_days))
                    ),
                    notice::Notice::Invalid { path, why } => {
                        format!("the notice record {} is invalid: {why}", path.display())
                    }
                    notice::Notice::TooRecent { path, notified_on } => format!(
                        "vendors were notified on {} ({}), so the upgrade may run from {}",
                        notice::fmt(notified_on),
                        path.display(),
                        notice::fmt(notice::first_allowed(notified_on, self.min_notice_days))
                    ),
                }
            }
        };
        Check::fail(
            "notice",
            format!("{head}: {why}; tightenings:{}", list.concat()),
        )
    }

    fn env_check(&self, cx: &StepCx) -> Check {
        let f = match self.env_file(cx) {
            Ok(f) => f,
            Err(e) => return Check::fail("env", format!("{e:#}")),
        };
        match dotenv::read(&f) {
            Ok(m) => Check::pass(
                "env",
                format!(
                    "{}: {VERSION_KEY}={}",
                    f.display(),
                    m.get(VERSION_KEY).map_or("(unset)", String::as_str)
                ),
            ),
            Err(e) => Check::fail("env", format!("{}: {e}", f.display())),
        }
    }

    fn yaml_check(&self, cx: &StepCx) -> Option<Check> {
        let y = match self.yaml_file(cx) {
            Ok(y) => y?,
            Err(e) => return Some(Check::fail("application_yaml", format!("{e:#}"))),
        };
        let r = std::fs::read_to_string(&y)
            .map_err(|e| e.to_string())
            .and_then(|t| yaml::values(&t, &self.expect_id));
        Some(match r {
            Ok((url, v)) => Check::pass(
                "application_yaml",
                format!("{}: packageUrl {url}, version {v}", y.display()),
            ),
            Err(e) => Check::fail("application_yaml", format!("{}: {e}", y.display())),
        })
    }
}
