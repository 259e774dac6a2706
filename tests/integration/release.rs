//! What ships: `ferry --version` names the commit it was built from; `ferry man` writes the
//! man page generated from the clap definitions.

use std::process::Command;

use crate::harness::{Sandbox, repo};

/// `ferry X.Y.Z (commit abcdef1)`: the version and the commit (or "unknown" when built
/// outside a git checkout); returns the commit part.
fn parse_version_line(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix("ferry ")?;
    let (version, rest) = rest.split_once(' ')?;
    let commit = rest.strip_prefix("(commit ")?.strip_suffix(')')?;
    let numeric = version.split('.').count() == 3
        && version
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let commit_ok =
        commit == "unknown" || (commit.len() >= 7 && commit.bytes().all(|b| b.is_ascii_hexdigit()));
    (numeric && commit_ok).then_some((version, commit))
}

#[test]
fn version_names_the_package_version_and_the_commit_it_was_built_from() {
    let sb = Sandbox::new();
    for flag in ["--version", "-V"] {
        let out = sb.run(&[flag]);
        out.expect(0);
        let line = out.stdout.trim_end();
        let (version, commit) = parse_version_line(line).unwrap_or_else(|| {
            panic!("`ferry {flag}` printed {line:?}, not `ferry X.Y.Z (commit abcdef1)`")
        });
        assert_eq!(version, env!("CARGO_PKG_VERSION"));
        // The build ran in this checkout (cargo rebuilds when HEAD moves), so its HEAD is the
        // commit built. A dirty tree does not change HEAD; without git or outside a checkout
        // (a source tarball) the build says "unknown" and there is nothing to compare.
        let head = Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .current_dir(repo())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
        match head {
            Some(head) => assert_eq!(commit, head, "`ferry {flag}`: {line}"),
            None => {
                eprintln!(
                    "SKIP: no git checkout at {}: only the format is checked",
                    repo().display()
                );
            }
        }
    }
}

#[test]
fn version_line_format() {
    assert!(parse_version_line("ferry 0.1.0 (commit c8c4b9a)").is_some());
    assert!(parse_version_line("ferry 0.1.0 (commit unknown)").is_some());
    assert!(parse_version_line("ferry 0.1.0").is_none());
    assert!(parse_version_line("ferry 0.1 (commit c8c4b9a)").is_none());
    assert!(parse_version_line("ferry 0.1.0 (commit xyz)").is_none());
}

#[test]
fn man_writes_a_page_naming_every_subcommand_and_one_page_per_subcommand() {
    let sb = Sandbox::new();
    sb.run(&["man", "share/man1"]).expect(0);
    let page = sb.read("share/man1/ferry.1");
    assert!(page.contains(".TH ferry 1"), "no .TH ferry header:\n{page}");
    let version_line = format!("ferry {}", env!("CARGO_PKG_VERSION"));
    assert!(
        page.contains(&version_line),
        "no {version_line:?} in the header"
    );
    for sub in [
        "validate",
        "plan",
        "run",
        "resume",
        "rollback",
        "status",
        "unlock",
        "check",
        "sandbox",
        "ig",
        "completions",
    ] {
        // roff escapes the dash: ferry\-run(1)
        let entry = format!("ferry\\-{sub}(1)");
        assert!(
            page.contains(&entry),
            "ferry.1 does not list {sub} ({entry})"
        );
        assert!(
            sb.path(&format!("share/man1/ferry-{sub}.1")).is_file(),
            "no ferry-{sub}.1"
        );
    }
    assert!(sb.path("share/man1/ferry-sandbox-up.1").is_file());
    // The hidden `man` itself is not documented.
    assert!(!page.contains("ferry\\-man"));
    assert!(!sb.path("share/man1/ferry-man.1").exists());
    let run = sb.read("share/man1/ferry-run.1");
    assert!(
        run.contains("dry\\-run"),
        "ferry-run.1 lacks --dry-run:\n{run}"
    );

    // Without DIR: ferry.1 on stdout.
    let out = sb.run(&["man"]);
    out.expect(0);
    assert_eq!(out.stdout, page);
}
