//! Regression tests of the hardening issue: a child's untrusted output, a relative state dir,
//! the exit code of a resumed rollback, the sandbox's external programs.

use std::process::Command;

use crate::harness::{Out, Playbook, Sandbox};

fn out_of(mut c: Command) -> Out {
    Out::from(c.output().expect("run ferry"))
}

#[test]
fn exec_output_with_invalid_utf8_and_a_10mb_line_is_decoded_lossily_and_bounded() {
    let sb = Sandbox::new();
    Playbook::new("noisy")
        .exec(
            "noisy",
            r"printf 'caf\351\n'; head -c 10000000 /dev/zero | tr '\0' x; printf '\nafter\n'; printf 'caf\351' >&2; touch finished",
        )
        .write(&sb, "pb.toml");
    let out = sb.run(&["run", "pb.toml", "--format", "json"]);
    out.expect(0);
    assert!(sb.path("finished").exists(), "the step ran to its end");
    let lines: Vec<String> = out
        .events()
        .into_iter()
        .filter(|e| e["event"] == "output")
        .map(|e| e["line"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(lines[0], "caf\u{fffd}", "{:?}", &lines[..1]);
    let long = &lines[1];
    assert!(
        long.len() < 65 * 1024,
        "a line is bounded: {} bytes",
        long.len()
    );
    assert!(long.starts_with(&"x".repeat(64 * 1024)));
    assert!(
        long.ends_with(&format!(
            "[line truncated: {} more bytes not shown]",
            10_000_000 - 64 * 1024
        )),
        "{}",
        &long[64 * 1024..]
    );
    assert_eq!(lines[2], "after");
    assert!(lines.iter().any(|l| l == "caf\u{fffd}"), "stderr too");
}

#[test]
fn relative_state_dir_and_junit_on_resume_from_another_directory() {
    let sb = Sandbox::new();
    Playbook::new("two")
        .exec("s1", "touch one")
        .exec("s2", "touch two")
        .write(&sb, "work/pb.toml");
    // Started in work/ with a relative state dir, killed right after s1.
    let mut c = sb.cmd(&["--state-dir", "../state", "run", "pb.toml"]);
    c.current_dir(sb.path("work"))
        .env("FERRY_FAILPOINT", "step_done:s1");
    let out = out_of(c);
    assert_eq!(out.code, None, "killed by the failpoint: {}", out.stderr);
    assert!(sb.path("work/one").exists() && !sb.path("work/two").exists());
    // Resumed from the sandbox's root: the same state dir, named relative to here.
    let mut c = sb.cmd(&["--state-dir", "state", "--junit", "resume.xml", "resume"]);
    c.current_dir(sb.path(""));
    let out = out_of(c);
    out.expect(0);
    assert!(
        sb.path("work/two").exists(),
        "s2 ran in the run's directory"
    );
    assert!(
        sb.path("resume.xml").exists(),
        "--junit is relative to where ferry started"
    );
}

fn strace_works() -> bool {
    Command::new("strace")
        .args(["-o", "/dev/null", "true"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn a_new_run_directory_and_its_parent_are_fsynced() {
    if !crate::harness::require("strace (ptrace allowed)", strace_works()) {
        return;
    }
    let sb = Sandbox::new();
    Playbook::new("one")
        .exec("s1", "true")
        .write(&sb, "pb.toml");
    let log = sb.path("strace.log");
    // The harness's ferry command, under strace.
    let ferry = sb.cmd(&["run", "pb.toml"]);
    let mut c = Command::new("strace");
    c.args(["-f", "-y", "-s", "4096", "-e", "trace=fsync", "-o"])
        .arg(&log)
        .arg(ferry.get_program())
        .args(ferry.get_args())
        .current_dir(ferry.get_current_dir().unwrap())
        .stdin(std::process::Stdio::null());
    for (k, v) in ferry.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    let out = out_of(c);
    out.expect(0);
    let ids = sb.run_ids();
    assert_eq!(ids.len(), 1);
    let runs = sb.state.join("runs");
    let run_dir = runs.join(&ids[0]);
    // `-y` prints each fd with its path: `fsync(3</tmp/…/.ferry/runs/ID>) = 0`.
    let synced: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter(|l| l.contains("fsync(") && l.trim_end().ends_with("= 0"))
        .filter_map(|l| Some(l.split_once('<')?.1.split_once('>')?.0.to_owned()))
        .collect();
    for dir in [&run_dir, &runs] {
        let want = dir.canonicalize().unwrap().display().to_string();
        assert!(
            synced.contains(&want),
            "{want} not fsynced; fsyncs: {synced:?}"
        );
    }
}

#[test]
fn resume_that_completes_the_rollback_of_a_failed_run_exits_1() {
    let sb = Sandbox::new();
    Playbook::new("fails")
        .exec("s1", "touch one")
        .undo("rm -f one")
        .exec("s2", "false")
        .undo("true")
        .write(&sb, "pb.toml");
    // s2 fails; the rollback starts and ferry is killed before s1's undo.
    let out = sb.run_env(
        &["run", "pb.toml"],
        &[("FERRY_FAILPOINT", "undo_started:s1")],
    );
    assert_eq!(out.code, None, "killed mid-rollback: {}", out.stderr);
    assert!(sb.path("one").exists(), "s1 not undone yet");
    let out = sb.run(&["resume", "--format", "json"]);
    out.expect(1);
    assert!(!sb.path("one").exists(), "the rollback finished");
    let end = out
        .events()
        .into_iter()
        .find(|e| e["event"] == "run_finished")
        .unwrap();
    assert_eq!(end["outcome"], "failed", "{end}");
    assert_eq!(end["exit_code"], 1, "{end}");
    assert!(
        end["message"]
            .as_str()
            .unwrap()
            .contains("step `s2` failed"),
        "{end}"
    );
    // The run is rolled back: nothing more to resume.
    let st = sb.run(&["status", "--format", "json"]);
    assert!(st.stdout.contains("\"rolled_back\""), "{}", st.stdout);
}

#[test]
fn resume_of_a_requested_rollback_still_exits_0() {
    let sb = Sandbox::new();
    Playbook::new("ok")
        .exec("s1", "touch one")
        .undo("rm -f one")
        .exec("s2", "test -e ready && touch two")
        .undo("rm -f two")
        .on_failure("stop")
        .write(&sb, "pb.toml");
    // s2 fails once and stops the run; fixed, the run is resumed to its end.
    sb.run(&["run", "pb.toml"]).expect(1);
    sb.write("ready", "");
    sb.run(&["resume"]).expect(0);
    let id = sb.run_ids().pop().unwrap();
    // A rollback asked for by hand, killed half-way, finished by `resume`: success.
    let out = sb.run_env(
        &["rollback", &id],
        &[("FERRY_FAILPOINT", "undo_started:s1")],
    );
    assert_eq!(out.code, None, "killed mid-rollback: {}", out.stderr);
    sb.run(&["resume", &id]).expect(0);
    assert!(!sb.path("one").exists() && !sb.path("two").exists());
}

/// Programs `sandbox up` runs; fakes of them (never executed: the check comes first).
const SANDBOX_PROGRAMS: &[&str] = &[
    "initdb",
    "pg_ctl",
    "psql",
    "pgbouncer",
    "docker-registry",
    "htpasswd",
    "docker-compose",
    "git",
    "runuser",
    "chown",
];

fn fake_bin_without(sb: &Sandbox, missing: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = sb.path("fakebin");
    std::fs::create_dir_all(&bin).unwrap();
    for p in SANDBOX_PROGRAMS.iter().filter(|p| **p != missing) {
        let f = bin.join(p);
        std::fs::write(&f, "#!/bin/sh\necho \"fake $0 ran\" >&2\nexit 97\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    bin
}

#[track_caller]
fn assert_names_only(out: &Out, missing: &str, package: &str, dir: &std::path::Path) {
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "{missing} (Debian package {package}): not found in"
        )),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("scripts/setup-deps"), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!("apt-get install {package}")),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("runuser:"), "{}", out.stderr);
    assert!(!out.stderr.contains("fake "), "nothing ran: {}", out.stderr);
    for other in SANDBOX_PROGRAMS.iter().filter(|p| **p != missing) {
        assert!(
            !out.stderr.contains(&format!("  {other} (Debian package")),
            "only {missing} is missing: {}",
            out.stderr
        );
    }
    assert!(!dir.exists(), "nothing was started or written");
}

#[test]
fn sandbox_up_names_a_program_missing_from_path_before_starting_anything() {
    let sb = Sandbox::new();
    // PATH without docker-compose (PostgreSQL's bin dir and /usr/sbin are still searched, but
    // the default compose stack needs neither: its databases and pgBouncer are containers).
    let bin = fake_bin_without(&sb, "docker-compose");
    let dir = sb.path("sbx");
    let mut c = sb.cmd(&["sandbox", "up", "--dir", dir.to_str().unwrap()]);
    c.env("PATH", &bin).env_remove("FERRY_SANDBOX_PATH");
    let out = out_of(c);
    assert_names_only(&out, "docker-compose", "docker-compose", &dir);
}

#[test]
fn sandbox_up_without_pgbouncer_names_its_package_and_setup_deps() {
    let sb = Sandbox::new();
    let bin = fake_bin_without(&sb, "pgbouncer");
    let dir = sb.path("sbx");
    // pgBouncer is a host program of the host stack only.
    let mut c = sb.cmd(&[
        "sandbox",
        "up",
        "--stack",
        "host",
        "--dir",
        dir.to_str().unwrap(),
    ]);
    c.env("FERRY_SANDBOX_PATH", &bin);
    let out = out_of(c);
    assert_names_only(&out, "pgbouncer", "pgbouncer", &dir);
}

#[test]
fn sandbox_up_on_compose_needs_no_host_postgresql_or_pgbouncer() {
    let sb = Sandbox::new();
    let bin = fake_bin_without(&sb, "initdb");
    for p in ["pg_ctl", "psql", "pgbouncer"] {
        std::fs::remove_file(bin.join(p)).unwrap();
    }
    // Never run: `up` stops before anything would copy it.
    let standin = sb.path("standin");
    std::fs::write(&standin, "").unwrap();
    let dir = sb.path("sbx");
    let mut c = sb.cmd(&[
        "sandbox",
        "up",
        "--dir",
        dir.to_str().unwrap(),
        "--standin",
        standin.to_str().unwrap(),
    ]);
    // The check passes; the first thing `up` then does is look for the base image, which
    // this names as absent, so nothing is started.
    c.env("FERRY_SANDBOX_PATH", &bin)
        .env("FERRY_SANDBOX_BASE_IMAGE", "ferry-test-absent-base:none");
    let out = out_of(c);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr
            .contains("FERRY_SANDBOX_BASE_IMAGE=ferry-test-absent-base:none"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("not found in"), "{}", out.stderr);
    assert!(!out.stderr.contains("fake "), "nothing ran: {}", out.stderr);
}
