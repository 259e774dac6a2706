//! The stand-in HAPI image without a full build per sandbox. The classic builder commits a
//! container for every instruction (the overlay's Dockerfile has twelve: about a second each
//! on this engine, ten seconds of every `up`), yet what it builds depends only on the
//! overlay's files and the build args other than GIT_COMMIT. So the overlay is built once per
//! content hash (`ferry-sandbox-hapi:HASH`, labelled `ferry.sandbox-cache=hapi`), and each
//! sandbox's image is one instruction on top of it: `LABEL` with its checkout's revision and
//! its own labels, so it reads exactly as a full build with the seed's build args would.
//!
//! Invariants: the cached image never carries `ferry.sandbox` nor a registry tag, so no
//! sandbox's `down` removes it (README, "The sandbox's caches"); a lock file serialises two
//! builds of one hash (as scripts/build-base-image does).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;

use crate::infra::docker::{BuildRequest, Docker};

/// sha256 of the build context's files (paths and contents, in path order) and `args`.
fn context_hash(context: &Path, args: &BTreeMap<String, String>) -> anyhow::Result<String> {
    use sha2::Digest;
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
        for e in std::fs::read_dir(dir)? {
            let p = e?.path();
            if p.is_dir() {
                walk(&p, out)?;
            } else {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut files = vec![];
    walk(context, &mut files).with_context(|| format!("reading {}", context.display()))?;
    files.sort();
    let mut h = sha2::Sha256::new();
    let mut part = |b: &[u8]| {
        h.update(b.len().to_le_bytes());
        h.update(b);
    };
    part(b"ferry sandbox hapi image 1");
    for f in &files {
        let rel = f.strip_prefix(context).unwrap_or(f);
        part(rel.to_string_lossy().as_bytes());
        part(&std::fs::read(f)?);
    }
    for (k, v) in args {
        part(k.as_bytes());
        part(v.as_bytes());
    }
    Ok(hex::encode(h.finalize())[..16].to_owned())
}

/// The cached image of `context` built with `args`, built first when missing (labelled
/// `labels` too: tests' `ferry.test=1`).
pub async fn ensure(
    engine: &Docker,
    context: &Path,
    args: &BTreeMap<String, String>,
    labels: &[(String, String)],
) -> anyhow::Result<String> {
    let tag = format!("ferry-sandbox-hapi:{}", context_hash(context, args)?);
    if engine.inspect_image(&tag).await?.is_some() {
        return Ok(tag);
    }
    let lock = std::env::temp_dir().join("ferry-sandbox-hapi.lock");
    let file = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
        let f = std::fs::File::create(&lock)?;
        f.lock()?;
        Ok(f)
    })
    .await??;
    // Another `up` may have built it while this one waited.
    if engine.inspect_image(&tag).await?.is_none() {
        let mut l = BTreeMap::from([(super::CACHE_LABEL.to_owned(), "hapi".to_owned())]);
        l.extend(labels.iter().cloned());
        let req = BuildRequest {
            context: context.to_path_buf(),
            dockerfile: "Dockerfile".into(),
            build_args: args.clone(),
            labels: l,
            tags: vec![tag.clone()],
        };
        engine
            .build_image(&req, |_| {})
            .await
            .context("building the stand-in HAPI image")?;
    }
    drop(file);
    Ok(tag)
}

/// The one-instruction Dockerfile of a sandbox's image: `FROM base`, then every label.
pub fn dockerfile(base: &str, labels: &BTreeMap<String, String>) -> String {
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let pairs: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{}={}", q(k), q(v)))
        .collect();
    format!(
        "# A sandbox's HAPI image: the cached overlay build with this checkout's labels.\nFROM {base}\nLABEL {}\n",
        pairs.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_follows_the_files_and_the_args_and_the_dockerfile_labels_everything() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("src")).unwrap();
        std::fs::write(d.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        std::fs::write(d.path().join("src/ig.tgz"), "a").unwrap();
        let args = BTreeMap::from([("BUILD_VERSION".to_owned(), "1.0.0".to_owned())]);
        let h = context_hash(d.path(), &args).unwrap();
        assert_eq!(h, context_hash(d.path(), &args).unwrap());
        let other = BTreeMap::from([("BUILD_VERSION".to_owned(), "1.0.1".to_owned())]);
        assert_ne!(h, context_hash(d.path(), &other).unwrap());
        std::fs::write(d.path().join("src/ig.tgz"), "b").unwrap();
        assert_ne!(h, context_hash(d.path(), &args).unwrap());
        let df = dockerfile(
            "ferry-sandbox-hapi:1",
            &BTreeMap::from([
                ("ferry.sandbox".to_owned(), "abc".to_owned()),
                (
                    "org.opencontainers.image.revision".to_owned(),
                    "f00".to_owned(),
                ),
            ]),
        );
        assert!(df.contains("\nFROM ferry-sandbox-hapi:1\nLABEL \"ferry.sandbox\"=\"abc\" \"org.opencontainers.image.revision\"=\"f00\"\n"), "{df}");
    }
}
