//! Image builds with the classic builder: the context directory is tarred on a blocking
//! thread and streamed to the daemon in 64 KiB chunks (memory stays flat whatever the
//! context's size).
//!
//! `.dockerignore` is honoured minimally: one pattern per line, `#` comments, `*` and `?`
//! within a path component, `**` for any number of components; a pattern that matches a
//! directory excludes everything under it. Negations (`!…`) are refused rather than
//! silently ignored. The Dockerfile and `.dockerignore` are always sent, as Docker does.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use bollard::query_parameters::BuildImageOptionsBuilder;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::{Docker, describe};

#[derive(Debug, Clone, Default)]
pub struct BuildRequest {
    pub context: PathBuf,
    /// Relative to the context.
    pub dockerfile: String,
    pub build_args: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    /// The first is given to the builder; the others are tagged afterwards.
    pub tags: Vec<String>,
}

/// Names declared by `ARG` instructions (before or after `FROM`), in order.
pub fn dockerfile_args(dockerfile: &str) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    for line in dockerfile.lines() {
        let mut words = line.split_whitespace();
        if !words.next().is_some_and(|w| w.eq_ignore_ascii_case("ARG")) {
            continue;
        }
        for w in words {
            let name = w.split('=').next().unwrap_or("").to_owned();
            if !name.is_empty() && !out.contains(&name) {
                out.push(name);
            }
        }
    }
    out
}

fn glob(pat: &[u8], s: &[u8]) -> bool {
    match (pat.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(&pat[1..], s) || (!s.is_empty() && glob(pat, &s[1..])),
        (Some(b'?'), Some(_)) => glob(&pat[1..], &s[1..]),
        (Some(p), Some(c)) if p == c => glob(&pat[1..], &s[1..]),
        _ => false,
    }
}

fn matches(pat: &[&str], path: &[&str]) -> bool {
    match (pat.first(), path.first()) {
        (None, _) => true, // the pattern matched a parent directory
        (Some(&"**"), _) => (0..=path.len()).any(|i| matches(&pat[1..], &path[i..])),
        (Some(p), Some(c)) => glob(p.as_bytes(), c.as_bytes()) && matches(&pat[1..], &path[1..]),
        (Some(_), None) => false,
    }
}

fn ignore_patterns(context: &Path) -> anyhow::Result<Vec<String>> {
    let Ok(text) = std::fs::read_to_string(context.join(".dockerignore")) else {
        return Ok(vec![]);
    };
    let mut out = vec![];
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('!') {
            bail!(".dockerignore: negated patterns (`{line}`) are not supported by ferry");
        }
        out.push(line.trim_matches('/').trim_start_matches("./").to_owned());
    }
    Ok(out)
}

/// Writes chunks into the channel the HTTP body reads from.
struct ChanWriter(mpsc::Sender<Result<Bytes, std::io::Error>>);

impl Write for ChanWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| std::io::Error::other("the Docker engine stopped reading the context"))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn write_context(
    context: &Path,
    keep: &[&str],
    ignore: &[String],
    w: ChanWriter,
) -> anyhow::Result<()> {
    let pats: Vec<Vec<&str>> = ignore.iter().map(|p| p.split('/').collect()).collect();
    let mut tar = tar::Builder::new(std::io::BufWriter::with_capacity(64 * 1024, w));
    tar.follow_symlinks(false);
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = context.join(&rel);
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .with_context(|| format!("read {}", dir.display()))?
            .collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let r = rel.join(e.file_name());
            let shown = r.to_string_lossy().into_owned();
            let parts: Vec<&str> = shown.split('/').collect();
            if !keep.contains(&shown.as_str()) && pats.iter().any(|p| matches(p, &parts)) {
                continue;
            }
            if e.file_type()?.is_dir() {
                tar.append_dir(&r, e.path())?;
                stack.push(r);
            } else {
                tar.append_path_with_name(e.path(), &r)?;
            }
        }
    }
    tar.into_inner()?.flush()?;
    Ok(())
}

/// The classic builder's "failed to set parent sha256:…: unknown parent image ID …": a cached
/// layer it chose was deleted (another build's image removed) while this build ran. A build
/// without the cache cannot hit it.
pub fn is_unknown_parent(err: &anyhow::Error) -> bool {
    let msg = format!("{err:#}");
    msg.contains("unknown parent image ID")
}

impl Docker {
    /// Builds and tags; returns the new image id. Each output line goes to `on_line`. A build
    /// whose cached parent layer vanished mid-build ([`is_unknown_parent`]) is retried once
    /// without the cache.
    pub async fn build_image(
        &self,
        req: &BuildRequest,
        mut on_line: impl FnMut(String),
    ) -> anyhow::Result<String> {
        match self.build_once(req, false, &mut on_line).await {
            Err(e) if is_unknown_parent(&e) => {
                on_line(format!(
                    "ferry: {e:#}; a cached layer was removed during the build, retrying without the cache"
                ));
                self.build_once(req, true, &mut on_line).await
            }
            r => r,
        }
    }

    async fn build_once(
        &self,
        req: &BuildRequest,
        nocache: bool,
        on_line: &mut impl FnMut(String),
    ) -> anyhow::Result<String> {
        let Some(first) = req.tags.first() else {
            bail!("an image build needs at least one tag");
        };
        let ignore = ignore_patterns(&req.context)?;
        let (tx, rx) = mpsc::channel(8);
        let context = req.context.clone();
        let dockerfile = req.dockerfile.clone();
        let writer = tokio::task::spawn_blocking(move || {
            let errs = tx.clone();
            let r = write_context(
                &context,
                &[&dockerfile, ".dockerignore"],
                &ignore,
                ChanWriter(tx),
            );
            if let Err(e) = &r {
                // Fails the HTTP body, so the daemon sees a broken context, not a short one.
                let _ = errs.blocking_send(Err(std::io::Error::other(format!("{e:#}"))));
            }
            r
        });
        let body = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let opts = BuildImageOptionsBuilder::default()
            .dockerfile(&req.dockerfile)
            .t(first)
            .buildargs(&req.build_args.clone().into_iter().collect())
            .labels(&req.labels.clone().into_iter().collect())
            .rm(true)
            .forcerm(true)
            .nocache(nocache)
            .build();
        let mut stream = self
            .docker
            .build_image(opts, None, Some(bollard::body_try_stream(body)));
        let mut id = None;
        let mut failure = None;
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(e) = info.error_detail {
                        failure = Some(anyhow!("{}", e.message.unwrap_or_default()));
                        break;
                    }
                    if let Some(aux) = info.aux {
                        id = aux.id.or(id);
                    }
                    for line in info.stream.iter().chain(info.status.iter()) {
                        let line = line.trim_end();
                        if !line.is_empty() {
                            on_line(line.to_owned());
                        }
                    }
                }
                Err(e) => {
                    failure = Some(describe(e));
                    break;
                }
            }
        }
        drop(stream);
        let written = writer.await.map_err(|e| anyhow!("context writer: {e}"))?;
        if let Some(e) = failure {
            return Err(e.context(format!("build {first} from {}", req.context.display())));
        }
        written.with_context(|| format!("send build context {}", req.context.display()))?;
        let id = match id {
            Some(id) => id,
            None => self
                .inspect_image(first)
                .await?
                .map(|i| i.id)
                .ok_or_else(|| anyhow!("build of {first} reported no image"))?,
        };
        for tag in &req.tags[1..] {
            self.tag_image(&id, tag).await?;
        }
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_and_ignore_patterns() {
        let df = "ARG BASE=x\nFROM scratch\narg IG_PACKAGE\nARG A=1 B\nRUN echo ARG NOT\n";
        assert_eq!(dockerfile_args(df), ["BASE", "IG_PACKAGE", "A", "B"]);
        let m = |p: &str, s: &str| {
            matches(
                &p.split('/').collect::<Vec<_>>(),
                &s.split('/').collect::<Vec<_>>(),
            )
        };
        assert!(m("target", "target/classes/x"));
        assert!(m("*.log", "a.log"));
        assert!(!m("*.log", "dir/a.log"));
        assert!(m("**/*.log", "dir/sub/a.log"));
        assert!(m("src/*/packages", "src/main/packages/x.tgz"));
        assert!(!m("targets", "target"));
    }

    #[test]
    fn unknown_parent_is_recognised_and_nothing_else() {
        // The daemon's message, as it failed `sandbox::killed_between_two_replicas_then_resumed`.
        let daemon = anyhow!(
            "failed to export image: failed to set parent \
             sha256:6f1b0a4e2c0d9d3b1a8e7c5f4d2b0a9e8c7d6f5e4d3c2b1a0f9e8d7c6b5a4f3e: \
             unknown parent image ID \
             sha256:6f1b0a4e2c0d9d3b1a8e7c5f4d2b0a9e8c7d6f5e4d3c2b1a0f9e8d7c6b5a4f3e"
        )
        .context("build 127.0.0.1:5000/hapi:0.2.2 from /tmp/ctx");
        assert!(is_unknown_parent(&daemon));
        for other in [
            "Docker engine: failed to export image: no space left on device",
            "The command '/bin/sh -c false' returned a non-zero code: 1",
            "pull access denied for nosuch, repository does not exist",
            "failed to set parent: context canceled",
        ] {
            assert!(!is_unknown_parent(&anyhow!("{other}")), "{other}");
        }
    }
}
