//! kind = "metadata_check": `GET {fhir.base_url}/metadata` (Accept: application/fhir+json)
//! must report `software.version` = `expect_version` (and `fhirVersion` = `fhir_version` when
//! given; without `expect_version` it only has to answer, and the version is reported), retried with backoff within the step's timeout (default 2m). With
//! `per_replica = true` every replica of the service is also asked directly, on its
//! published 127.0.0.1 port, and the error names the replica that answered wrong; a replica
//! that is not running (paused, exited, created) fails the check, naming it.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use serde::Deserialize;

use super::{Check, Reversibility, Step, StepCx};
use crate::infra::http;
use crate::report::CheckStatus;

pub const KEYS: &[&str] = &["expect_version", "fhir_version", "per_replica", "base_url"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataCheck {
    pub expect_version: Option<String>,
    pub fhir_version: Option<String>,
    #[serde(default)]
    pub per_replica: bool,
    /// Default: the target's `fhir.base_url`.
    pub base_url: Option<String>,
}

/// What one endpoint said: (software.version, fhirVersion).
pub async fn fetch(base_url: &str) -> anyhow::Result<(String, String)> {
    let url = format!("{}/metadata", base_url.trim_end_matches('/'));
    let resp = http::client(Duration::from_secs(10))?
        .get(&url)
        .header("Accept", "application/fhir+json")
        .send()
        .await
        .map_err(|e| anyhow!("GET {url}: {e}"))?;
    let status = resp.status();
    if !status.is_success() {
        bail!("GET {url}: HTTP {status}");
    }
    let v: serde_json::Value = resp
        .json()
        .await
        .map_err(|e| anyhow!("GET {url}: not JSON: {e}"))?;
    let sw = v["software"]["version"]
        .as_str()
        .ok_or_else(|| anyhow!("GET {url}: no software.version in the CapabilityStatement"))?;
    Ok((
        sw.to_owned(),
        v["fhirVersion"].as_str().unwrap_or("").to_owned(),
    ))
}

impl MetadataCheck {
    fn base(&self, cx: &StepCx) -> anyhow::Result<String> {
        if let Some(b) = &self.base_url {
            return Ok(b.clone());
        }
        Ok(cx
            .target()?
            .fhir
            .as_ref()
            .ok_or_else(|| anyhow!("the target has no [fhir] base_url"))?
            .base_url
            .clone())
    }

    /// Every endpoint to ask: ("the service", base url) and each replica's own.
    async fn endpoints(&self, cx: &StepCx) -> anyhow::Result<Vec<(String, String)>> {
        let mut out = vec![("the service".to_owned(), self.base(cx)?)];
        if self.per_replica {
            for (name, url) in crate::steps::replicas::replica_urls(cx).await? {
                out.push((format!("replica {name}"), url));
            }
        }
        Ok(out)
    }

    fn wrong(&self, sw: &str, fv: &str) -> Option<String> {
        if let Some(want) = &self.expect_version
            && sw != want
        {
            return Some(format!("software.version is {sw:?}, expected {want:?}"));
        }
        match &self.fhir_version {
            Some(want) if want != fv => Some(format!("fhirVersion is {fv:?}, expected {want:?}")),
            _ => None,
        }
    }
}

impl Step for MetadataCheck {
    fn describe(&self) -> String {
        let each = if self.per_replica {
            " (and each replica)"
        } else {
            ""
        };
        match &self.expect_version {
            Some(v) => format!("GET /metadata reports software.version {v}{each}"),
            None => format!("GET /metadata answers{each}"),
        }
    }

    fn reversibility(&self) -> Reversibility {
        Reversibility::NothingToUndo
    }

    async fn check(&self, cx: &StepCx) -> anyhow::Result<Vec<Check>> {
        let base = match self.base(cx) {
            Ok(b) => b,
            Err(e) => return Ok(vec![Check::fail("metadata", format!("{e:#}"))]),
        };
        let mut checks = vec![];
        if self.per_replica {
            // Every replica is asked: one that is not running is a failure, never skipped.
            checks.push(match crate::steps::replicas::replica_urls(cx).await {
                Ok(r) if r.is_empty() => Check::fail("replicas", "the service has no replica"),
                Ok(r) => Check::pass(
                    "replicas",
                    format!(
                        "{} replicas to ask: {}",
                        r.len(),
                        r.iter()
                            .map(|x| x.0.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ),
                Err(e) => Check::fail("replicas", format!("{e:#}")),
            });
        }
        checks.push(match fetch(&base).await {
            Ok((sw, fv)) => match self.wrong(&sw, &fv) {
                None => Check::pass(
                    "metadata",
                    format!("{base}/metadata: software.version {sw}, fhirVersion {fv}"),
                ),
                // Before the redeploy the old version answering is expected.
                Some(w) if cx.preflight && cx.after_changes => Check::new(
                    "metadata",
                    CheckStatus::Deferred,
                    format!("now {w}; judged after the earlier steps"),
                ),
                Some(w) => Check::fail("metadata", format!("{base}/metadata: {w}")),
            },
            Err(e) => Check::fail("metadata", format!("{e:#}")),
        });
        Ok(checks)
    }

    async fn apply(&self, cx: &StepCx) -> anyhow::Result<()> {
        let limit = cx.timeout.unwrap_or(Duration::from_secs(120));
        let start = Instant::now();
        let mut delay = Duration::from_millis(250);
        loop {
            let mut problems = vec![];
            for (who, url) in self.endpoints(cx).await? {
                match fetch(&url).await {
                    Ok((sw, fv)) => {
                        if let Some(w) = self.wrong(&sw, &fv) {
                            problems.push(format!("{who} ({url}): {w}"));
                        }
                    }
                    Err(e) => problems.push(format!("{who}: {e:#}")),
                }
            }
            if problems.is_empty() {
                return Ok(());
            }
            if start.elapsed() + delay > limit {
                bail!("after {:.0?}: {}", start.elapsed(), problems.join("; "));
            }
            cx.cancel.sleep(delay).await?;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    async fn rollback(&self, _cx: &StepCx) -> anyhow::Result<()> {
        Ok(())
    }

    fn owns_timeout(&self) -> bool {
        true
    }
}
