//! Engine behaviour through the real binary: dry-run, plan, lock, signals, on_failure,
//! playbook changes on resume, status, reporters.

use std::time::{Duration, Instant};

use crate::harness::{Sandbox, wait_for};

const MARKERS: &str = r#"name = "markers"
[vars]
word = "hi"

[[steps]]
id = "first"
kind = "exec"
check = "touch check-first"
run = "touch run-first"
undo = "rm -f run-first"

[[steps]]
id = "second"
kind = "exec"
check = "touch check-second; test -n {{ word }}"
run = "echo $WORD > run-second"
undo = "rm -f run-second"
"#;

#[test]
fn dry_run_runs_every_check_and_no_run() {
    let sb = Sandbox::new();
    sb.write("pb.toml", MARKERS);
    let junit = sb.path("junit.xml");
    let out = sb.run(&[
        "run",
        "pb.toml",
        "--dry-run",
        "--format",
        "json",
        "--junit",
        junit.to_str().unwrap(),
    ]);
    out.expect(0);
    assert!(sb.path("check-first").exists() && sb.path("check-second").exists());
    assert!(!sb.path("run-first").exists() && !sb.path("run-second").exists());
    assert!(
        !sb.state.join("runs").exists() || sb.run_ids().is_empty(),
        "a dry-run journals nothing"
    );
    let checks: Vec<_> = out
        .events()
        .into_iter()
        .filter(|e| e["event"] == "check")
        .collect();
    assert_eq!(checks.len(), 2);
    assert!(checks.iter().all(|c| c["status"] == "pass"));
    let xml = std::fs::read_to_string(junit).unwrap();
    assert!(xml.contains("name=\"first check: check\""), "{xml}");
    assert!(xml.contains("name=\"second\""), "{xml}");
}

#[test]
fn dry_run_exits_3_when_a_check_fails() {
    let sb = Sandbox::new();
    sb.write(
        "pb.toml",
        &MARKERS.replace("touch check-second;", "false &&"),
    );
    let junit = sb.path("junit.xml");
    let out = sb.run(&[
        "run",
        "pb.toml",
        "--dry-run",
        "--junit",
        junit.to_str().unwrap(),
    ]);
    out.expect(3);
    assert!(out.stderr.contains("FAIL second · check"), "{}", out.stderr);
    assert!(std::fs::read_to_string(junit).unwrap().contains("<failure"));
}

#[test]
fn failed_precondition_changes_nothing() {
    let sb = Sandbox::new();
    sb.write(
        "pb.toml",
        &MARKERS.replace("touch check-second;", "false &&"),
    );
    let out = sb.run(&["run", "pb.toml"]);
    out.expect(3);
    assert!(
        !sb.path("run-first").exists(),
        "no step applied after a failed precondition"
    );
}

#[test]
fn vars_reach_children_as_env_and_interpolation() {
    let sb = Sandbox::new();
    sb.write("pb.toml", MARKERS);
    sb.run(&["run", "pb.toml", "--var", "word=howdy"]).expect(0);
    assert_eq!(sb.read("run-second"), "howdy\n");
}

#[test]
fn failure_rolls_back_completed_steps_newest_first() {
    let sb = Sandbox::new();
    sb.write(
        "pb.toml",
        r#"name = "rb"
[[steps]]
id = "a"
kind = "exec"
run = "echo a >> log"
undo = "echo undo-a >> log"
[[steps]]
id = "b"
kind = "exec"
run = "echo b >> log"
undo = "echo undo-b >> log"
[[steps]]
id = "c"
kind = "exec"
run = "echo c >> log; exit 3"
undo = "echo undo-c >> log"
[[steps]]
id = "d"
kind = "exec"
run = "echo d >> log"
"#,
    );
    let out = sb.run(&["run", "pb.toml"]);
    out.expect(1);
    assert_eq!(sb.read("log"), "a\nb\nc\nundo-c\nundo-b\nundo-a\n");
    assert!(out.stderr.contains("step `c` failed"), "{}", out.stderr);
    let status = sb.run(&["status"]);
    assert!(status.stdout.contains("rolled_back"), "{}", status.stdout);
}

#[test]
fn on_failure_stop_keeps_the_run_for_resume_or_rollback() {
    let sb = Sandbox::new();
    sb.write(
        "pb.toml",
        r#"name = "stop"
[[steps]]
id = "a"
kind = "exec"
run = "echo a >> log"
undo = "echo undo-a >> log"
[[steps]]
id = "b"
kind = "exec"
on_failure = "stop"
run = "test -f fixed && echo b >> log"
undo = "echo undo-b >> log"
"#,
    );
    let out = sb.run(&["run", "pb.toml"]);
    out.expect(1);
    let id = sb.run_ids().pop().unwrap();
    assert!(
        out.stderr.contains(&format!("ferry resume {id}")),
        "{}",
        out.stderr
    );
    let st = sb.run(&["status", &id]);
    assert!(st.stdout.contains("stopped"), "{}", st.stdout);
    assert!(
        st.stdout.contains(&format!("ferry resume {id}")),
        "{}",
        st.stdout
    );
    sb.write("fixed", "");
    sb.run(&["resume", &id]).expect(0);
    assert_eq!(sb.read("log"), "a\nb\n");
    sb.run(&["rollback", &id]).expect(0);
    assert_eq!(sb.read("log"), "a\nb\nundo-b\nundo-a\n");
    // Rolling back again is harmless.
    sb.run(&["rollback", &id]).expect(0);
    assert_eq!(sb.read("log"), "a\nb\nundo-b\nundo-a\n");
}

#[test]
fn retries_then_success() {
    let sb = Sandbox::new();
    sb.write(
        "pb.toml",
        "name = \"r\"\n[[steps]]\nid = \"flaky\"\nkind = \"exec\"\nretries = 2\nretry_delay = \"10ms\"\nrun = \"echo x >> tries; test $(wc -l < tries) -ge 3\"\n",
    );
    sb.run(&["run", "pb.toml"]).expect(0);
    assert_eq!(sb.read("tries").lines().count(), 3);
}

#[test]
fn timeout_kills_the_process_group() {
    let sb = Sandbox::new();
    sb.write(
        "pb.toml",
        "name = \"t\"\n[[steps]]\nid = \"slow\"\nkind = \"exec\"\ntimeout = \"300ms\"\nrun = \"sleep 30 & echo $! > bg.pid; wait\"\n",
    );
    let t = Instant::now();
    let out = sb.run(&["run", "pb.toml"]);
    out.expect(1);
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(
        out.stderr.contains("timed out after 300ms"),
        "{}",
        out.stderr
    );
    let bg: u32 = sb.read("bg.pid").trim().parse().unwrap();
    wait_for(
        "the background child to be killed",
        Duration::from_secs(5),
        || !crate::harness::pid_alive(bg),
    );
}

#[test]
fn second_run_on_the_same_state_dir_exits_4_quickly() {
    let sb = Sandbox::new();
    sb.write("slow.toml", "name = \"slow\"\n[[steps]]\nid = \"hold\"\nkind = \"exec\"\nrun = \"touch holding; sleep 30\"\n");
    let mut first = sb.spawn(&["run", "slow.toml"], &[]);
    wait_for(
        "the first run to hold the lock",
        Duration::from_secs(10),
        || sb.path("holding").exists(),
    );
    let t = Instant::now();
    let out = sb.run(&["run", "slow.toml"]);
    let took = t.elapsed();
    out.expect(4);
    assert!(took < Duration::from_secs(1), "refused in {took:?}");
    assert!(
        out.stderr.contains("is locked by `ferry run`"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&format!("pid {}", first.id())),
        "{}",
        out.stderr
    );
    // unlock refuses a live owner
    sb.run(&["unlock"]).expect(4);
    // SAFETY: stopping the ferry we spawned.
    unsafe { libc::kill(first.id() as i32, libc::SIGKILL) };
    first.wait().unwrap();
    // The kernel released the flock; unlock clears the stale owner record.
    let out = sb.run(&["unlock"]);
    out.expect(0);
    assert!(out.stdout.contains("stale"), "{}", out.stdout);
}

#[test]
fn sigint_stops_at_the_next_boundary_with_exit_5_and_resume_finishes() {
    let sb = Sandbox::new();
    sb.write(
        "pb.toml",
        r#"name = "sig"
[[steps]]
id = "a"
kind = "exec"
run = "touch a-started; sleep 1; echo a >> log"
done_if = "grep -qx a log"
[[steps]]
id = "b"
kind = "exec"
run = "echo b >> log"
done_if = "grep -qx b log"
"#,
    );
    let child = sb.spawn(&["run", "pb.toml"], &[]);
    wait_for("step a", Duration::from_secs(10), || {
        sb.path("a-started").exists()
    });
    // SAFETY: signalling the ferry we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Step a finished (its child was not interrupted), b did not start.
    assert_eq!(sb.read("log"), "a\n");
    let st = sb.run(&["status", "--format", "json"]);
    let runs: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    assert_eq!(runs[0]["state"], "interrupted");
    assert_eq!(runs[0]["current_step"], "b");
    sb.run(&["resume"]).expect(0);
    assert_eq!(sb.read("log"), "a\nb\n");
}

#[test]
fn resume_refuses_a_changed_playbook_unless_accepted() {
    let sb = Sandbox::new();
    let pb = "name = \"chg\"\n[[steps]]\nid = \"a\"\nkind = \"exec\"\nrun = \"echo a >> log\"\n[[steps]]\nid = \"b\"\nkind = \"exec\"\non_failure = \"stop\"\nrun = \"test -f go && echo b >> log\"\n";
    sb.write("pb.toml", pb);
    sb.run(&["run", "pb.toml"]).expect(1);
    sb.write("pb.toml", &pb.replace("echo b", "echo B"));
    sb.write("go", "");
    let out = sb.run(&["resume"]);
    out.expect(2);
    assert!(out.stderr.contains("changed `b`"), "{}", out.stderr);
    assert!(out.stderr.contains("--accept-changes"), "{}", out.stderr);
    sb.run(&["resume", "--accept-changes"]).expect(0);
    assert_eq!(sb.read("log"), "a\nB\n");
}

#[test]
fn plan_shows_order_and_undo() {
    let sb = Sandbox::new();
    sb.write(
        "pb.toml",
        &format!("{MARKERS}\n[[steps]]\nid = \"third\"\nkind = \"exec\"\nrun = \"true\"\n"),
    );
    let out = sb.run(&["plan", "pb.toml"]);
    out.expect(0);
    let first = out.stdout.find("1. first").unwrap();
    let second = out.stdout.find("2. second").unwrap();
    assert!(first < second);
    assert!(out.stdout.contains("undo: run `rm -f run-first`"));
    assert!(
        out.stdout
            .contains("undo: CANNOT BE UNDONE (no `undo` command)")
    );
    let json = sb.run(&["plan", "pb.toml", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["steps"][2]["reversible"], "no");
    assert_eq!(v["steps"].as_array().unwrap().len(), 3);
}

#[test]
fn json_events_have_stable_fields() {
    let sb = Sandbox::new();
    sb.write("pb.toml", MARKERS);
    let out = sb.run(&["run", "pb.toml", "--format", "json"]);
    out.expect(0);
    let ev = out.events();
    let kinds: Vec<&str> = ev.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"run_started"));
    assert_eq!(kinds.last(), Some(&"run_finished"));
    for e in &ev {
        assert!(e["ts"].as_str().is_some_and(|t| t.ends_with('Z')), "{e}");
    }
    let done: Vec<_> = ev
        .iter()
        .filter(|e| e["event"] == "step_finished")
        .collect();
    assert_eq!(done.len(), 2);
    assert!(
        done.iter()
            .all(|e| e["status"] == "done" && e["elapsed_ms"].is_u64())
    );
    assert_eq!(ev.last().unwrap()["exit_code"], 0);
}

#[test]
fn approval_needs_a_named_approval_without_a_terminal() {
    let sb = Sandbox::new();
    sb.write("prod.toml", "name = \"prod\"\nproduction = true\n");
    sb.write("stage.toml", "name = \"stage\"\n");
    sb.write(
        "pb.toml",
        "name = \"gate\"\n[[steps]]\nid = \"ok-to-go\"\nkind = \"approval\"\nmessage = \"roll out?\"\n[[steps]]\nid = \"go\"\nkind = \"exec\"\nrun = \"touch went\"\n",
    );
    let dry = sb.run(&[
        "run",
        "pb.toml",
        "--target",
        "prod.toml",
        "--dry-run",
        "--format",
        "json",
    ]);
    dry.expect(0);
    assert!(
        dry.events()
            .iter()
            .any(|e| e["event"] == "check" && e["status"] == "pending")
    );
    sb.run(&["run", "pb.toml", "--target", "prod.toml"])
        .expect(3);
    let out = sb.run(&["run", "pb.toml", "--target", "prod.toml", "--yes"]);
    out.expect(3);
    assert!(
        out.stderr
            .contains("--yes does not approve steps on a production target"),
        "{}",
        out.stderr
    );
    assert!(!sb.path("went").exists());
    sb.run(&["run", "pb.toml", "--target", "stage.toml", "--yes"])
        .expect(0);
    std::fs::remove_file(sb.path("went")).unwrap();
    sb.run(&[
        "run",
        "pb.toml",
        "--target",
        "prod.toml",
        "--approve",
        "ok-to-go",
    ])
    .expect(0);
    assert!(sb.path("went").exists());
}

#[test]
fn env_set_edits_and_rolls_back_byte_exact() {
    let sb = Sandbox::new();
    let orig = "# deployment\r\nHAPI_IMAGE=reg/hapi:1.0.0\nFHIR_DB_PASSWORD=\"keep me\"\nHAPI_IG_VERSION=0.2.1";
    sb.write("files/.env", orig);
    sb.write("t.toml", "name = \"t\"\n[files]\nroot = \"files\"\n");
    sb.write(
        "pb.toml",
        "name = \"env\"\n[vars]\ntag = \"1.1.0\"\n[[steps]]\nid = \"image\"\nkind = \"env_set\"\nset = { HAPI_IMAGE = \"reg/hapi:{{ tag }}\", NEW = \"x y\" }\n[[steps]]\nid = \"boom\"\nkind = \"exec\"\nrun = \"grep -q 'HAPI_IMAGE=reg/hapi:1.1.0' files/.env && exit 9\"\n",
    );
    sb.run(&["run", "pb.toml", "--target", "t.toml"]).expect(1);
    assert_eq!(
        std::fs::read(sb.path("files/.env")).unwrap(),
        orig.as_bytes()
    );
    // The journal holds the replaced lines only, never the rest of the file.
    let id = sb.run_ids().pop().unwrap();
    assert!(!sb.journal(&id).contains("keep me"));
}

#[test]
fn completions_are_generated() {
    let sb = Sandbox::new();
    for sh in ["bash", "zsh", "fish"] {
        let out = sb.run(&["completions", sh]);
        out.expect(0);
        assert!(out.stdout.contains("resume"), "{sh}");
    }
}

#[test]
fn secrets_file_values_are_masked_but_user_names_are_not() {
    let sb = Sandbox::new();
    sb.write(
        "secrets.env",
        "REG_USER=sandbox\nREG_PASSWORD=topsecret-pw-1\n",
    );
    sb.write(
        "t.toml",
        "name = \"t\"\nsecrets_file = \"secrets.env\"\n[registry]\nurl = \"127.0.0.1:1\"\nusername_env = \"REG_USER\"\npassword_env = \"REG_PASSWORD\"\n",
    );
    sb.write("pb.toml", "name = \"s\"\n[[steps]]\nid = \"say\"\nkind = \"exec\"\nrun = \"echo user sandbox pass topsecret-pw-1\"\n");
    let out = sb.run(&["run", "pb.toml", "--target", "t.toml", "-v"]);
    out.expect(0);
    assert!(
        out.stderr.contains("user sandbox pass ***"),
        "{}",
        out.stderr
    );
    let id = sb.run_ids().pop().unwrap();
    assert!(!sb.journal(&id).contains("topsecret-pw-1"));
}

#[test]
fn resuming_a_finished_run_is_refused_with_what_it_was() {
    let sb = Sandbox::new();
    sb.write("pb.toml", MARKERS);
    sb.run(&["run", "pb.toml"]).expect(0);
    let id = sb.run_ids().pop().unwrap();
    let journal = sb.journal(&id);
    let out = sb.run(&["resume", &id]);
    out.expect(2);
    assert!(
        out.stderr
            .contains(&format!("run {id} finished; nothing to resume")),
        "{}",
        out.stderr
    );
    assert_eq!(sb.journal(&id), journal, "a refused resume writes nothing");
    sb.run(&["rollback", &id]).expect(0);
    let out = sb.run(&["resume", &id]);
    out.expect(2);
    assert!(out.stderr.contains("was rolled back"), "{}", out.stderr);
    // Without an id, resume looks for an unfinished run and says there is none.
    let out = sb.run(&["resume"]);
    out.expect(2);
    assert!(out.stderr.contains("no unfinished run"), "{}", out.stderr);
}
