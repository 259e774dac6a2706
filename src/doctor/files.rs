//! The deployment's files (`[files]`): the root exists, the env file is there and every line
//! of it is `KEY=VALUE` (as env_set and ig_package_swap edit it), the overlay has the layout
//! the shipped ig-upgrade playbook builds from, and its packages dir is writable.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::infra::dotenv;
use crate::report::views::doctor::Finding;
use crate::target::Target;

use super::within;

const C: &str = "files";
/// Where the shipped ig-upgrade playbook swaps the IG package (`packages_dir`).
pub const PACKAGES: &str = "hapi-overlay/src/main/resources/packages";
/// The image build's context and Dockerfile.
const DOCKERFILE: &str = "hapi-overlay/Dockerfile";

pub async fn probe(target: &Target, timeout: Duration) -> Finding {
    let (Some(root), Some(env)) = (target.files_root(), target.env_file()) else {
        return Finding::skipped(
            C,
            "no [files] in the target: env_set, ig_package_swap and image_build steps cannot run",
        );
    };
    // Absolute, so the line names the directory whatever the target's path was.
    let abs = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
    let (root, env) = (abs(root), abs(env));
    let what = root.display().to_string();
    // On a thread of its own: a hung network mount blocks the file calls, not the probes.
    let work = tokio::task::spawn_blocking(move || check(&root, &env));
    within(C, timeout, &what, async {
        match work.await {
            Ok(Ok(detail)) => Finding::ok(C, detail),
            Ok(Err((what, fix))) => Finding::problem(C, what, fix),
            Err(e) => Finding::problem(
                C,
                format!("the probe failed: {e}"),
                "report this as a ferry bug",
            ),
        }
    })
    .await
}

type Problem = (String, String);

fn check(root: &Path, env: &Path) -> Result<String, Problem> {
    if !root.is_dir() {
        return Err((
            format!("the files root {} is not a directory", root.display()),
            "set [files] root to the deployment's checkout (the directory with hapi-overlay/, .env and docker-compose.yml); a relative root is relative to the target file".into(),
        ));
    }
    let keys = env_file(env)?;
    for rel in [DOCKERFILE, PACKAGES] {
        if !root.join(rel).exists() {
            return Err((
                format!("{} is missing under {}", rel, root.display()),
                format!(
                    "the root must be the checkout the HAPI image is built from: check [files] root, or restore {rel} (git status in {})",
                    root.display()
                ),
            ));
        }
    }
    let packages = root.join(PACKAGES);
    writable(&packages).map_err(|e| {
        (
            format!("cannot write in {}: {e}", packages.display()),
            format!(
                "ig_package_swap copies the new IG there: give this user write access (`chown`/`chmod u+w`, or `chattr -i` if it is immutable) to {}",
                packages.display()
            ),
        )
    })?;
    Ok(format!(
        "{}: {} ({keys} keys), {DOCKERFILE}, {PACKAGES} writable",
        root.display(),
        env.file_name().unwrap_or_default().to_string_lossy()
    ))
}

/// Every line blank, a comment or `KEY=VALUE` with balanced quotes; the number of keys.
fn env_file(env: &Path) -> Result<usize, Problem> {
    let text = std::fs::read_to_string(env).map_err(|e| {
        (
            format!("cannot read the env file {}: {e}", env.display()),
            format!(
                "set [files] env_file (relative to the root) to the deployment's dotenv file, or restore {}",
                env.display()
            ),
        )
    })?;
    for (i, l) in text.lines().enumerate() {
        let t = l.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let value = l.split_once('=').map(|(_, v)| v.trim());
        let quoted = value.is_some_and(|v| {
            let q = v.chars().next().filter(|c| *c == '"' || *c == '\'');
            q.is_some_and(|q| v.len() < 2 || !v.ends_with(q))
        });
        if dotenv::key_of(l).is_none() || quoted {
            return Err((
                // Only the first word before any `=`: the rest may be a secret.
                format!(
                    "{}:{}: not a KEY=VALUE line (it starts `{}`)",
                    env.display(),
                    i + 1,
                    t.split(['=', ' ', '\t'])
                        .next()
                        .unwrap_or("")
                        .chars()
                        .take(40)
                        .collect::<String>()
                ),
                "fix that line (docker-compose reads KEY=VALUE, # comments and blank lines only)"
                    .into(),
            ));
        }
    }
    Ok(dotenv::read(env).map(|m| m.len()).unwrap_or(0))
}

/// Creates and removes an empty file: the only sure test (root ignores mode bits, not an
/// immutable flag or a read-only mount).
fn writable(dir: &Path) -> std::io::Result<()> {
    let probe: PathBuf = dir.join(format!(".ferry-doctor-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)?;
    std::fs::remove_file(&probe)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(text: &str) -> Result<usize, Problem> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(".env");
        std::fs::write(&p, text).unwrap();
        env_file(&p)
    }

    #[test]
    fn env_lines_must_be_settings_and_the_value_is_never_quoted() {
        assert_eq!(env("# c\n\nA=1\nexport B=\"x y\"\nA=2\n").unwrap(), 2);
        let (what, _) = env("A=1\nDB_PASSWORD 's3cr3t-value'\n").unwrap_err();
        assert!(
            what.ends_with(":2: not a KEY=VALUE line (it starts `DB_PASSWORD`)")
                && !what.contains("s3cr3t"),
            "{what}"
        );
        let (what, _) = env("A=1\nB=\"unterminated s3cr3t\n").unwrap_err();
        assert!(
            what.ends_with(":2: not a KEY=VALUE line (it starts `B`)"),
            "{what}"
        );
        assert!(!what.contains("s3cr3t"));
    }
}
