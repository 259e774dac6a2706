//! kind = "image_push": push a local tag to the target's registry and confirm, through the
//! registry's own v2 API, the manifest digest it now serves for that tag.
//!
//! Invariants:
//! - `image` must live under the target's `registry.url`. Credentials come from
//!   `registry.username_env` + `password_env`/`password_file`, else the registry's entry in
//!   `~/.docker/config.json`; they never reach the journal or the events.
//! - Before pushing, the checkpoint records the digest the tag had in the registry (or
//!   that it had none); after, the digest confirmed by `HEAD /v2/<name>/manifests/<tag>`.
//! - Rollback: a tag this run created is deleted by digest, unless the registry refuses
//!   deletes (405) or another tag shares the digest (deleting would untag it too): then it
//!   is left in place and the log says so. A tag the push moved is put back on its old
//!   manifest (GET by digest, PUT by tag).

use anyhow::{Context, anyhow, bail};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::{Check, Reversibility, Step, StepCx};
use crate::infra::docker::{Credentials, split_reference};
use crate::infra::registry::{Delete, Ping, Registry, host_of};
use crate::report::{CheckStatus, Level, Stream};
use crate::util::image_ref;

pub const KEYS: &[&str] = &["image"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagePush {
    /// `registry-host[:port]/name:tag`, a local tag.
    pub image: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Cp {
    /// The tag's digest in the registry before this run; None: the tag did not exist.
    before: Option<String>,
    pushed: Option<String>,
}

impl ImagePush {
    /// The registry client, the repository name and the tag.
    fn registry(&self, cx: &StepCx) -> anyhow::Result<(Registry, String, String)> {
        let t = cx.target()?;
        let r = t
            .registry
            .as_ref()
            .ok_or_else(|| anyhow!("image_push needs a target with [registry]"))?;
        let host = host_of(&r.url);
        let (repo, tag) = split_reference(&self.image);
        let Some(name) = repo.strip_prefix(&format!("{host}/")) else {
            bail!("{} is not in the target's registry {host}", self.image);
        };
        let auth = match (&r.username_env, &r.password_env, &r.password_file) {
            (Some(u), p, f) if p.is_some() || f.is_some() => {
                let user = t
                    .read_secret("username_env", u)
                    .map_err(|e| anyhow!(e))?
                    .ok_or_else(|| anyhow!("environment variable {u} is not set"))?;
                let pw = t.secret(p, f).map_err(|e| anyhow!(e))?.unwrap_or_default();
                Some((user, pw))
            }
            _ => docker_config_auth(host),
        };
        Ok((
            Registry::new(&r.url, auth)?,
            name.to_owned(),
            tag.to_owned(),
        ))
    }
}

/// `auths.<host>.auth` (base64 `user:password`) from `~/.docker/config.json`.
fn docker_config_auth(host: &str) -> Option<(String, String)> {
    let dir = std::env::var_os("DOCKER_CONFIG")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".docker")))?;
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let b64 = v["auths"][host]["auth"].as_str()?;
    let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let (u, p) = String::from_utf8(raw)
        .ok()?
        .split_once(':')
        .map(|(u, p)| (u.to_owned(), p.to_owned()))?;
    crate::report::redact::register(&p);
    Some((u, p))
}

impl Step for ImagePush {
    fn validate(&self) -> Vec<(Option<&'static str>, String)> {
        if let Err(e) = image_ref::check(&self.image, image_ref::Digest::Refused) {
            return vec![(Some("image"), e)];
        }
        if self.image.contains('/') {
            return vec![];
        }
        vec![(
            Some("image"),
            format!(
                "`{}` is not a registry image reference (host/name:tag)",
                self.image
            ),
        )]
    }
    fn describe(&self) -> String {
        format!("push {}", self.image)
    }

    fn reversibility(&self) -> Reversibility {
        Reversibility::Reversible(
            "delete the pushed manifest if the tag is new (when the registry allows deletes), or put a moved tag back".into(),
        )
    }

    async fn check(&self, cx: &StepCx) -> anyhow::Result<Vec<Check>> {
        let mut checks = vec![];
        match cx.docker().await {
            Ok(eng) => checks.push(match eng.inspect_image(&self.image).await? {
                Some(i) => Check::pass("image", format!("{} is {}", self.image, i.id)),
                None if cx.preflight => Check::new(
                    "image",
                    CheckStatus::Deferred,
                    format!("{} is not there yet: built by an earlier step", self.image),
                ),
                None => Check::fail("image", format!("no local image {}", self.image)),
            }),
            Err(e) => checks.push(Check::fail("docker", format!("{e:#}"))),
        }
        let (reg, _, _) = match self.registry(cx) {
            Ok(r) => r,
            Err(e) => {
                checks.push(Check::fail("registry", format!("{e:#}")));
                return Ok(checks);
            }
        };
        checks.push(match reg.ping().await {
            Ok(Ping::Ok) => Check::pass("registry", format!("registry {} answers /v2/", reg.host)),
            Ok(Ping::Unauthorized(challenge)) => Check::fail(
                "registry",
                format!(
                    "registry {} refused the credentials (401{})",
                    reg.host,
                    if challenge.is_empty() {
                        String::new()
                    } else {
                        format!(", {challenge}")
                    }
                ),
            ),
            Ok(Ping::Answered(answer)) => Check::fail(
                "registry",
                format!("registry {} answered GET /v2/ with {answer}", reg.host),
            ),
            Err(e) => Check::fail(
                "registry",
                format!("registry {} is unreachable: {e:#}", reg.host),
            ),
        });
        Ok(checks)
    }

    async fn done(&self, cx: &StepCx) -> anyhow::Result<bool> {
        let eng = cx.docker().await?;
        let Some(img) = eng.inspect_image(&self.image).await? else {
            return Ok(false);
        };
        let (reg, name, tag) = self.registry(cx)?;
        let Some(remote) = reg.manifest_digest(&name, &tag).await? else {
            return Ok(false);
        };
        let repo = split_reference(&self.image).0;
        Ok(img
            .repo_digests
            .iter()
            .any(|d| *d == format!("{repo}@{remote}")))
    }

    async fn apply(&self, cx: &StepCx) -> anyhow::Result<()> {
        let (reg, name, tag) = self.registry(cx)?;
        let mut cp = match cx.checkpoint::<Cp>()? {
            Some(cp) => cp,
            None => {
                let cp = Cp {
                    before: reg.manifest_digest(&name, &tag).await?,
                    pushed: None,
                };
                cx.save_checkpoint(&cp)?;
                cp
            }
        };
        let eng = cx.docker().await?;
        let creds = reg.auth().map(|(u, p)| Credentials {
            username: u.to_owned(),
            password: p.to_owned(),
            server: reg.host.clone(),
        });
        let reported = eng
            .push_image(&self.image, creds.as_ref(), |l| {
                cx.output(Stream::Stdout, l)
            })
            .await?;
        let digest = reg
            .manifest_digest(&name, &tag)
            .await?
            .ok_or_else(|| anyhow!("after the push, registry {} has no {name}:{tag}", reg.host))?;
        if let Some(r) = reported.filter(|r| *r != digest) {
            bail!(
                "the daemon pushed {r} but registry {} serves {digest} for {name}:{tag}",
                reg.host
            );
        }
        cx.log(Level::Info, format!("pushed {}: {digest}", self.image));
        cp.pushed = Some(digest);
        cx.save_checkpoint(&cp)
    }

    async fn verify(&self, cx: &StepCx) -> anyhow::Result<()> {
        let Some(want) = cx.checkpoint::<Cp>()?.and_then(|c| c.pushed) else {
            return Ok(()); // skipped as done: nothing of ours to confirm
        };
        let (reg, name, tag) = self.registry(cx)?;
        match reg.manifest_digest(&name, &tag).await? {
            Some(d) if d == want => Ok(()),
            other => bail!(
                "registry {} serves {other:?} for {name}:{tag}, not {want}",
                reg.host
            ),
        }
    }

    async fn rollback(&self, cx: &StepCx) -> anyhow::Result<()> {
        let Some(cp) = cx.checkpoint::<Cp>()? else {
            return Ok(());
        };
        let (reg, name, tag) = self.registry(cx)?;
        let Some(now) = reg.manifest_digest(&name, &tag).await? else {
            return Ok(()); // already gone
        };
        if let Some(old) = &cp.before {
            if *old == now {
                return Ok(());
            }
            let (media, body) = reg.get_manifest(&name, old).await.with_context(|| {
                format!("{name}:{tag} was {old} before this run; left at {now}")
            })?;
            reg.put_manifest(&name, &tag, &media, body).await?;
            cx.log(Level::Info, format!("{name}:{tag} points at {old} again"));
            return Ok(());
        }
        let mut shared = vec![];
        for t in reg.tags(&name).await?.into_iter().filter(|t| *t != tag) {
            if reg.manifest_digest(&name, &t).await?.as_deref() == Some(now.as_str()) {
                shared.push(t);
            }
        }
        if !shared.is_empty() {
            cx.log(
                Level::Warn,
                format!(
                    "{name}:{tag} left in place: {now} is also tagged {}",
                    shared.join(", ")
                ),
            );
            return Ok(());
        }
        match reg.delete_manifest(&name, &now).await? {
            Delete::Done | Delete::NotFound => cx.log(
                Level::Info,
                format!("deleted {name}:{tag} ({now}) from registry {}", reg.host),
            ),
            Delete::Unsupported => cx.log(
                Level::Warn,
                format!(
                    "{name}:{tag} left in place: registry {} does not allow deletes (405)",
                    reg.host
                ),
            ),
        }
        Ok(())
    }
}
