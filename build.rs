//! Stamps `ferry --version` with the git commit it was built from: `FERRY_VERSION` =
//! "0.1.0 (commit abcdef1)", or "(commit unknown)" outside a git checkout (a tarball, a
//! vendored copy) or without git. It reruns only when HEAD or the branch it points to moves.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let commit = git(&["rev-parse", "--short", "HEAD"]);
    if commit.is_some() {
        // HEAD itself (a checkout of another branch or commit), the ref it points to (a new
        // commit on it), and packed-refs (where the ref lives once packed). Only files that
        // exist: a missing one would make cargo rerun this script on every build.
        let mut watch = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
        if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watch.push(r);
        }
        for w in watch {
            if let Some(p) = git(&["rev-parse", "--path-format=absolute", "--git-path", &w])
                && PathBuf::from(&p).is_file()
            {
                println!("cargo:rerun-if-changed={p}");
            }
        }
    }
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let commit = commit.unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=FERRY_VERSION={version} (commit {commit})");
}
