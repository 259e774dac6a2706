//! Resume and rollback refuse a run whose playbook, target or resolved steps changed since
//! it started (unless `--accept-changes`): a moved `files.root` must not receive the rest of
//! a run, nor lose files to a rollback that reports success.

use crate::harness::{Playbook, Sandbox};

/// `a` writes into the target's files root; `b` stops the run until `go` exists.
fn pb() -> Playbook {
    Playbook::new("chg-target")
        .exec(
            "a",
            "mkdir -p {{ target.files.root }} && echo a >> {{ target.files.root }}/log",
        )
        .undo("rm -f {{ target.files.root }}/log")
        .exec("b", "test -f go")
        .on_failure("stop")
}

fn target(root: &str) -> String {
    format!("name = \"t\"\n[files]\nroot = \"{root}\"\n")
}

#[test]
fn resume_and_rollback_refuse_a_changed_target_unless_accepted() {
    let sb = Sandbox::new();
    pb().write(&sb, "pb.toml");
    sb.write("t.toml", &target("a"));
    sb.run(&["run", "pb.toml", "--target", "t.toml"]).expect(1);
    assert_eq!(sb.read("a/log"), "a\n");
    let id = sb.run_ids().pop().unwrap();

    // The files root moved: the step that wrote there resolves to another place.
    sb.write("t.toml", &target("b"));
    for verb in ["resume", "rollback"] {
        let out = sb.run(&[verb, &id]);
        out.expect(2);
        assert!(out.stderr.contains("the target"), "{verb}: {}", out.stderr);
        assert!(out.stderr.contains("changed `a`"), "{verb}: {}", out.stderr);
        assert!(
            out.stderr.contains("--accept-changes"),
            "{verb}: {}",
            out.stderr
        );
    }
    assert_eq!(
        sb.read("a/log"),
        "a\n",
        "nothing was undone in the wrong place"
    );

    // Same values, other text (a comment): still refused, the steps are named identical.
    sb.write("t.toml", &format!("# moved on 2026-12-01\n{}", target("a")));
    let out = sb.run(&["resume", &id]);
    out.expect(2);
    assert!(
        out.stderr.contains("text changed, steps identical"),
        "{}",
        out.stderr
    );

    let out = sb.run(&["rollback", &id, "--accept-changes"]);
    out.expect(0);
    assert!(!sb.path("a/log").exists(), "rolled back where it ran");
}

#[test]
fn same_playbook_text_with_other_resolved_values_is_refused() {
    // The playbook text and the target file are unchanged, but a value the steps resolve
    // from outside both (here the files root's git HEAD) moved.
    let sb = Sandbox::new();
    let git = |args: &[&str]| {
        let ok = std::process::Command::new("git")
            .args(["-C", sb.path("root").to_str().unwrap()])
            .args(["-c", "user.name=t", "-c", "user.email=t@example.org"])
            .args(args)
            .output()
            .expect("git")
            .status
            .success();
        assert!(ok, "git {args:?}");
    };
    sb.write("root/README", "one\n");
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-qm", "one"]);
    Playbook::new("chg-git")
        .exec("tag", "echo {{ git.commit }} >> log")
        .undo("rm -f log")
        .exec("b", "test -f go")
        .on_failure("stop")
        .write(&sb, "pb.toml");
    sb.write("t.toml", &target("root"));
    sb.run(&["run", "pb.toml", "--target", "t.toml"]).expect(1);
    sb.write("root/README", "two\n");
    git(&["commit", "-qam", "two"]);
    let out = sb.run(&["resume"]);
    out.expect(2);
    assert!(
        out.stderr.contains("the resolved steps changed"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("changed `tag`"), "{}", out.stderr);
    sb.write("go", "");
    sb.run(&["resume", "--accept-changes"]).expect(0);
}
