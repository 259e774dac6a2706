//! Engine behaviour through the real binary: dry-run, plan, lock, signals, on_failure,
//! playbook changes on resume, status, reporters.

use std::time::{Duration, Instant};

use crate::harness::{Playbook, Sandbox, wait_for};

/// Two steps that leave a marker file for each check and each run; `second_check` is the
/// second step's check.
fn markers_with(second_check: &str) -> Playbook {
    Playbook::new("markers")
        .var("word", "hi")
        .exec("first", "touch run-first")
        .check("touch check-first")
        .undo("rm -f run-first")
        .exec("second", "echo $WORD > run-second")
        .check(second_check)
        .undo("rm -f run-second")
}

fn markers() -> Playbook {
    markers_with("touch check-second; test -n {{ word }}")
}

/// `markers` with a second check that fails.
fn markers_failing_check() -> Playbook {
    markers_with("false && test -n {{ word }}")
}

#[test]
fn dry_run_runs_every_check_and_no_run() {
    let sb = Sandbox::new();
    markers().write(&sb, "pb.toml");
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
    markers_failing_check().write(&sb, "pb.toml");
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
    markers_failing_check().write(&sb, "pb.toml");
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
    markers().write(&sb, "pb.toml");
    sb.run(&["run", "pb.toml", "--var", "word=howdy"]).expect(0);
    assert_eq!(sb.read("run-second"), "howdy\n");
}

#[test]
fn failure_rolls_back_completed_steps_newest_first() {
    let sb = Sandbox::new();
    Playbook::new("rb")
        .exec("a", "echo a >> log")
        .undo("echo undo-a >> log")
        .exec("b", "echo b >> log")
        .undo("echo undo-b >> log")
        .exec("c", "echo c >> log; exit 3")
        .undo("echo undo-c >> log")
        .exec("d", "echo d >> log")
        .write(&sb, "pb.toml");
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
    Playbook::new("stop")
        .exec("a", "echo a >> log")
        .undo("echo undo-a >> log")
        .exec("b", "test -f fixed && echo b >> log")
        .on_failure("stop")
        .undo("echo undo-b >> log")
        .write(&sb, "pb.toml");
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
    Playbook::new("r")
        .exec("flaky", "echo x >> tries; test $(wc -l < tries) -ge 3")
        .retries(2, "10ms")
        .write(&sb, "pb.toml");
    sb.run(&["run", "pb.toml"]).expect(0);
    assert_eq!(sb.read("tries").lines().count(), 3);
}

#[test]
fn timeout_kills_the_process_group() {
    let sb = Sandbox::new();
    Playbook::new("t")
        .exec("slow", "sleep 30 & echo $! > bg.pid; wait")
        .timeout("300ms")
        .write(&sb, "pb.toml");
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
    Playbook::new("slow")
        .exec("hold", "touch holding; sleep 30")
        .write(&sb, "slow.toml");
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
    Playbook::new("sig")
        .exec("a", "touch a-started; sleep 1; echo a >> log")
        .done_if("grep -qx a log")
        .exec("b", "echo b >> log")
        .done_if("grep -qx b log")
        .write(&sb, "pb.toml");
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
    let pb = |b: &str| {
        Playbook::new("chg")
            .exec("a", "echo a >> log")
            .exec("b", &format!("test -f go && echo {b} >> log"))
            .on_failure("stop")
    };
    pb("b").write(&sb, "pb.toml");
    sb.run(&["run", "pb.toml"]).expect(1);
    pb("B").write(&sb, "pb.toml");
    sb.write("go", "");
    let out = sb.run(&["resume"]);
    out.expect(2);
    let id = sb.run_ids().pop().unwrap();
    let shown = std::fs::canonicalize(sb.path("pb.toml")).unwrap();
    assert_eq!(
        out.stderr,
        format!(
            "error: the playbook {} changed since run {id} started (changed `b`); refusing to continue.\n  hint: pass --accept-changes to continue with the new text\n",
            shown.display()
        )
    );
    sb.run(&["resume", "--accept-changes"]).expect(0);
    assert_eq!(sb.read("log"), "a\nB\n");
}

#[test]
fn plan_shows_order_and_undo() {
    let sb = Sandbox::new();
    markers().exec("third", "true").write(&sb, "pb.toml");
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
    markers().write(&sb, "pb.toml");
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
    Playbook::new("gate")
        .step("ok-to-go", "approval")
        .str("message", "roll out?")
        .exec("go", "touch went")
        .write(&sb, "pb.toml");
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
    Playbook::new("env")
        .var("tag", "1.1.0")
        .step("image", "env_set")
        .table(
            "set",
            &[("HAPI_IMAGE", "reg/hapi:{{ tag }}"), ("NEW", "x y")],
        )
        .exec(
            "boom",
            "grep -q 'HAPI_IMAGE=reg/hapi:1.1.0' files/.env && exit 9",
        )
        .write(&sb, "pb.toml");
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
fn env_set_rollback_after_a_comment_was_inserted_restores_by_key() {
    // The issue's case: after the upgrade someone adds a comment near the top of `.env`;
    // restoring by position then overwrote COMPOSE_PROJECT_NAME and doubled HAPI_IG_VERSION.
    let sb = Sandbox::new();
    let orig = "COMPOSE_PROJECT_NAME=bd-fhir-national\nHAPI_IMAGE=reg/hapi:1.0.0\nHAPI_IG_VERSION=0.2.1\nHAPI_DB_PASSWORD=\"keep me secret\"\n";
    sb.write("files/.env", orig);
    sb.write("t.toml", "name = \"t\"\n[files]\nroot = \"files\"\n");
    Playbook::new("upgrade")
        .step("ig", "env_set")
        .table(
            "set",
            &[("HAPI_IG_VERSION", "0.2.2"), ("HAPI_IG_FLAG", "on")],
        )
        .write(&sb, "pb.toml");
    sb.run(&["run", "pb.toml", "--target", "t.toml"]).expect(0);
    let id = sb.run_ids().pop().unwrap();
    let upgraded = sb.read("files/.env");
    assert!(upgraded.contains("HAPI_IG_VERSION=0.2.2\n"), "{upgraded}");
    let comment = "# IG 0.2.2 rolled out on 2026-12-01 (change CHG-1234)\n";
    sb.write("files/.env", &format!("{comment}{upgraded}"));
    let backup = sb.path(&format!(".ferry/runs/{id}/backup/ig.env-lines.json"));
    sb.run(&["rollback", &id]).expect(0);
    assert_eq!(sb.read("files/.env"), format!("{comment}{orig}"));
    assert!(!backup.exists(), "the backup goes once the lines are back");

    // Edited since the run: the rollback refuses, naming the key, the line and the file,
    // and changes nothing.
    sb.write("files/.env", orig);
    sb.run(&["run", "pb.toml", "--target", "t.toml"]).expect(0);
    let id = sb.run_ids().pop().unwrap();
    let edited = format!(
        "{comment}{}",
        sb.read("files/.env")
            .replace("HAPI_IG_VERSION=0.2.2", "HAPI_IG_VERSION=0.2.3")
    );
    sb.write("files/.env", &edited);
    let out = sb.run(&["rollback", &id]);
    out.expect(6);
    let env = sb.path("files/.env");
    assert!(
        out.stderr.contains(&format!(
            "{}: line 4 (`HAPI_IG_VERSION`) was edited since ferry wrote it",
            env.display()
        )),
        "{}",
        out.stderr
    );
    assert_eq!(sb.read("files/.env"), edited);
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
    Playbook::new("s")
        .exec("say", "echo user sandbox pass topsecret-pw-1")
        .write(&sb, "pb.toml");
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
    markers().write(&sb, "pb.toml");
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

/// `--format json` lines with what changes from run to run masked: `ts`, `elapsed_ms` and
/// the run id (also inside messages and hints).
fn pinned_events(out: &crate::harness::Out) -> Vec<String> {
    let ev = out.events();
    let run_id = ev
        .first()
        .and_then(|e| e["run_id"].as_str())
        .unwrap_or("<none>")
        .to_owned();
    ev.into_iter()
        .map(|mut e| {
            let o = e.as_object_mut().unwrap();
            assert!(o.remove("ts").is_some_and(|t| t.is_string()), "{o:?}");
            if let Some(ms) = o.get_mut("elapsed_ms") {
                assert!(ms.is_u64(), "{ms}");
                *ms = "<ms>".into();
            }
            for v in o.values_mut() {
                if let Some(s) = v.as_str() {
                    *v = s.replace(&run_id, "<run>").into();
                }
            }
            e.to_string()
        })
        .collect()
}

#[track_caller]
fn assert_lines(got: &[String], want: &[&str]) {
    assert_eq!(
        got,
        want,
        "\ngot:\n{}\nwant:\n{}",
        got.join("\n"),
        want.join("\n")
    );
}

/// Pins the JSON event contract (README "--format json"): names, fields and values of every
/// event of a run, a dry-run, a stopped run, its resume, its rollback and a refused resume.
#[test]
fn json_events_are_pinned() {
    let sb = Sandbox::new();
    markers().write(&sb, "pb.toml");
    let out = sb.run(&["run", "pb.toml", "--format", "json"]);
    out.expect(0);
    assert_lines(
        &pinned_events(&out),
        &[
            r#"{"event":"run_started","mode":"run","playbook":"markers","run_id":"<run>","steps":2,"target":null}"#,
            r#"{"check":"check","detail":"`touch check-first` succeeded","event":"check","status":"pass","step":"first"}"#,
            r#"{"check":"check","detail":"`touch check-second; test -n 'hi'` succeeded","event":"check","status":"pass","step":"second"}"#,
            r#"{"description":"run `touch run-first`","event":"step_started","index":0,"kind":"exec","phase":"apply","step":"first","total":2}"#,
            r#"{"elapsed_ms":"<ms>","event":"step_finished","status":"done","step":"first"}"#,
            r#"{"description":"run `echo $WORD > run-second`","event":"step_started","index":1,"kind":"exec","phase":"apply","step":"second","total":2}"#,
            r#"{"elapsed_ms":"<ms>","event":"step_finished","status":"done","step":"second"}"#,
            r#"{"elapsed_ms":"<ms>","event":"run_finished","exit_code":0,"outcome":"done","run_id":"<run>"}"#,
        ],
    );

    let out = sb.run(&["run", "pb.toml", "--dry-run", "--format", "json"]);
    out.expect(0);
    assert_lines(
        &pinned_events(&out),
        &[
            r#"{"event":"run_started","mode":"dry-run","playbook":"markers","run_id":"<run>","steps":2,"target":null}"#,
            r#"{"description":"run `touch run-first`","event":"step_started","index":0,"kind":"exec","phase":"check","step":"first","total":2}"#,
            r#"{"check":"check","detail":"`touch check-first` succeeded","event":"check","status":"pass","step":"first"}"#,
            r#"{"elapsed_ms":"<ms>","event":"step_finished","status":"checked","step":"first"}"#,
            r#"{"description":"run `echo $WORD > run-second`","event":"step_started","index":1,"kind":"exec","phase":"check","step":"second","total":2}"#,
            r#"{"check":"check","detail":"`touch check-second; test -n 'hi'` succeeded","event":"check","status":"pass","step":"second"}"#,
            r#"{"elapsed_ms":"<ms>","event":"step_finished","status":"checked","step":"second"}"#,
            r#"{"elapsed_ms":"<ms>","event":"run_finished","exit_code":0,"outcome":"checks_passed","run_id":"<run>"}"#,
        ],
    );

    sb.write(
        "gate.toml",
        r#"name = "gate"

[[steps]]
id = "first"
kind = "exec"
run = "true"
undo = "true"

[[steps]]
id = "second"
kind = "exec"
run = "test -f go || { echo boom >&2; exit 7; }"
retries = 1
retry_delay = "0s"
on_failure = "stop"
"#,
    );
    let out = sb.run(&["run", "gate.toml", "--format", "json"]);
    out.expect(1);
    assert_lines(
        &pinned_events(&out),
        &[
            r#"{"event":"run_started","mode":"run","playbook":"gate","run_id":"<run>","steps":2,"target":null}"#,
            r#"{"description":"run `true`","event":"step_started","index":0,"kind":"exec","phase":"apply","step":"first","total":2}"#,
            r#"{"elapsed_ms":"<ms>","event":"step_finished","status":"done","step":"first"}"#,
            r#"{"description":"run `test -f go || { echo boom >&2; exit 7; }`","event":"step_started","index":1,"kind":"exec","phase":"apply","step":"second","total":2}"#,
            r#"{"event":"output","line":"boom","step":"second","stream":"stderr"}"#,
            r#"{"event":"log","level":"warn","message":"attempt 1 failed: `test -f go || { echo boom >&2; exit 7; }` failed with exit code 7: boom; retrying in 0s","step":"second"}"#,
            r#"{"event":"output","line":"boom","step":"second","stream":"stderr"}"#,
            r#"{"elapsed_ms":"<ms>","error":"`test -f go || { echo boom >&2; exit 7; }` failed with exit code 7: boom","event":"step_finished","status":"failed","step":"second"}"#,
            r#"{"elapsed_ms":"<ms>","event":"run_finished","exit_code":1,"hint":"the run stopped there (on_failure = \"stop\"): fix the cause and `ferry resume <run>`, or undo it with `ferry rollback <run>`","message":"step `second` failed: `test -f go || { echo boom >&2; exit 7; }` failed with exit code 7: boom","outcome":"failed","run_id":"<run>"}"#,
        ],
    );
    let id = sb.run_ids().pop().unwrap();

    sb.write("go", "");
    let out = sb.run(&["resume", &id, "--format", "json"]);
    out.expect(0);
    assert_lines(
        &pinned_events(&out),
        &[
            r#"{"event":"run_started","mode":"resume","playbook":"gate","run_id":"<run>","steps":2,"target":null}"#,
            r#"{"description":"run `test -f go || { echo boom >&2; exit 7; }`","event":"step_started","index":1,"kind":"exec","phase":"apply","step":"second","total":2}"#,
            r#"{"elapsed_ms":"<ms>","event":"step_finished","status":"done","step":"second"}"#,
            r#"{"elapsed_ms":"<ms>","event":"run_finished","exit_code":0,"outcome":"done","run_id":"<run>"}"#,
        ],
    );

    let out = sb.run(&["rollback", &id, "--format", "json"]);
    out.expect(0);
    assert_lines(
        &pinned_events(&out),
        &[
            r#"{"event":"run_started","mode":"rollback","playbook":"gate","run_id":"<run>","steps":2,"target":null}"#,
            r#"{"event":"rollback_started","reason":"requested with `ferry rollback`","run_id":"<run>"}"#,
            r#"{"event":"log","level":"warn","message":"cannot be undone (no `undo` command); left as it is","step":"second"}"#,
            r#"{"description":"run `true`","event":"step_started","index":0,"kind":"exec","phase":"rollback","step":"first","total":2}"#,
            r#"{"elapsed_ms":"<ms>","event":"step_finished","status":"undone","step":"first"}"#,
            r#"{"elapsed_ms":"<ms>","event":"run_finished","exit_code":0,"outcome":"rolled_back","run_id":"<run>"}"#,
        ],
    );

    let out = sb.run(&["resume", &id, "--format", "json"]);
    out.expect(2);
    assert_lines(
        &pinned_events(&out),
        &[
            r#"{"event":"run_started","mode":"resume","playbook":"gate","run_id":"<run>","steps":2,"target":null}"#,
            r#"{"elapsed_ms":"<ms>","event":"run_finished","exit_code":2,"message":"run <run> was rolled back; nothing to resume","outcome":"invalid","run_id":"<run>"}"#,
        ],
    );
}

#[test]
fn unlock_without_a_state_dir_says_nothing_was_locked_and_creates_nothing() {
    let sb = Sandbox::new();
    assert!(!sb.state.exists());
    let out = sb.run(&["unlock"]);
    out.expect(0);
    assert_eq!(out.stdout, "the state dir was not locked\n");
    let json = sb.run(&["unlock", "--format", "json"]);
    json.expect(0);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["state_dir"]["result"], "not_locked");
    assert!(v["database"].is_null());
    assert!(!sb.state.exists(), "unlock creates no state dir");
}
