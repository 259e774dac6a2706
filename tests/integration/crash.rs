//! Crash tests: kill -9 at every step boundary and in the middle of a step, then resume;
//! every effect must happen exactly once. Kill -9 during rollback, then resume: the
//! rollback completes.

use std::time::Duration;

use crate::harness::{Playbook, Sandbox, pid_alive, wait_for};

/// Ten steps, each appending its number once (`done_if` makes re-entry safe) and undoing it.
fn ten_steps(sb: &Sandbox, fail_at: Option<usize>) -> String {
    (1..=10)
        .fold(Playbook::new("ten"), |pb, i| {
            let run = if Some(i) == fail_at {
                "echo failing >&2; exit 7".to_owned()
            } else {
                format!("echo {i} >> effects.log")
            };
            pb.exec(&format!("s{i}"), &run)
                .done_if(&format!("grep -qx {i} effects.log"))
                .undo(&format!(
                    "sed -i '/^{i}$/d' effects.log; echo {i} >> undo.log"
                ))
        })
        .write(sb, "ten.toml")
}

fn expect_effects(sb: &Sandbox) {
    let want: Vec<String> = (1..=10).map(|i| i.to_string()).collect();
    let got: Vec<String> = sb.read("effects.log").lines().map(str::to_owned).collect();
    assert_eq!(got, want, "every effect exactly once, in order");
}

#[test]
fn kill_at_every_step_boundary_then_resume() {
    // Before the effect (step_started is journaled), during it (child_started), and after
    // it (step_done), for every step.
    for i in 1..=10 {
        for point in ["step_started", "child_started", "step_done"] {
            let sb = Sandbox::new();
            let pb = ten_steps(&sb, None);
            let fp = format!("{point}:s{i}");
            let out = sb.run_env(&["run", &pb], &[("FERRY_FAILPOINT", &fp)]);
            assert_eq!(
                out.signal,
                Some(9),
                "{fp}: ferry should have been killed\n{}",
                out.stderr
            );
            let out = sb.run(&["resume"]);
            out.expect(0);
            expect_effects(&sb);
            let status = sb.run(&["status", "--format", "json"]);
            let runs: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
            assert_eq!(runs[0]["state"], "done", "{fp}");
            sb.finish();
        }
    }
}

#[test]
fn kill_in_the_middle_of_a_step_kills_its_children_and_resume_finishes() {
    let sb = Sandbox::new();
    // Step 2 starts a grandchild that would outlive the shell, then blocks.
    Playbook::new("mid")
        .exec("one", "echo 1 >> effects.log")
        .done_if("grep -qx 1 effects.log")
        .exec(
            "two",
            "sleep 300 & echo $! > grandchild.pid; echo $$ > shell.pid; touch started; wait; echo 2 >> effects.log",
        )
        .done_if("grep -qx 2 effects.log")
        .write(&sb, "mid.toml");
    let mut child = sb.spawn(&["run", "mid.toml"], &[]);
    wait_for("step two to start", Duration::from_secs(10), || {
        sb.path("started").exists()
    });
    let shell: u32 = sb.read("shell.pid").trim().parse().unwrap();
    let grandchild: u32 = sb.read("grandchild.pid").trim().parse().unwrap();
    // SAFETY: signalling the ferry we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    // The shell dies with ferry (parent-death signal); the grandchild escapes that…
    wait_for(
        "the step's shell to die with ferry",
        Duration::from_secs(5),
        || !pid_alive(shell),
    );
    assert!(
        pid_alive(grandchild),
        "the grandchild is the leftover resume must deal with"
    );
    // …and resume kills the leftover group before re-running the step.
    std::fs::remove_file(sb.path("started")).unwrap();
    let resume = sb.spawn(&["resume", "--format", "json"], &[]);
    wait_for("the leftover to be killed", Duration::from_secs(10), || {
        !pid_alive(grandchild)
    });
    wait_for("step two to restart", Duration::from_secs(10), || {
        sb.path("started").exists()
    });
    let new_grandchild: u32 = sb.read("grandchild.pid").trim().parse().unwrap();
    // SAFETY: ending the sleep of the re-run step so it can finish.
    unsafe { libc::kill(new_grandchild as i32, libc::SIGTERM) };
    let out = resume.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("leftover process"),
        "resume reports the leftover it killed:\n{stdout}"
    );
    assert_eq!(sb.read("effects.log"), "1\n2\n");
    sb.finish();
}

#[test]
fn kill_during_rollback_then_resume_completes_it() {
    for i in [3, 5, 1] {
        let sb = Sandbox::new();
        let pb = ten_steps(&sb, Some(6));
        let fp = format!("undo_started:s{i}");
        let out = sb.run_env(&["run", &pb], &[("FERRY_FAILPOINT", &fp)]);
        assert_eq!(out.signal, Some(9), "{fp}\n{}", out.stderr);
        let status = sb.run(&["status", "--format", "json"]);
        let runs: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
        assert_eq!(runs[0]["state"], "rolling_back");
        let out = sb.run(&["resume"]);
        // The run failed (step 6) and is now fully rolled back: it exits as the failed run.
        out.expect(1);
        assert_eq!(sb.read("effects.log"), "", "every effect undone");
        // Newest first: 6 (its partial work), 5, 4 … 1; the killed step's undo may repeat.
        let undos: Vec<u32> = sb
            .read("undo.log")
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        let mut dedup = undos.clone();
        dedup.dedup();
        assert_eq!(dedup, vec![6, 5, 4, 3, 2, 1], "{fp}: {undos:?}");
        let status = sb.run(&["status", "--format", "json"]);
        let runs: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
        assert_eq!(runs[0]["state"], "rolled_back");
        sb.finish();
    }
}

#[test]
fn torn_journal_tail_is_ignored_on_resume() {
    use std::io::Write;
    let sb = Sandbox::new();
    let pb = ten_steps(&sb, None);
    let out = sb.run_env(&["run", &pb], &[("FERRY_FAILPOINT", "step_done:s4")]);
    assert_eq!(out.signal, Some(9));
    let id = sb.run_ids().pop().unwrap();
    let path = sb.state.join("runs").join(&id).join("journal.jsonl");
    // Overwrite the zero padding after the last record with half a record.
    let bytes = std::fs::read(&path).unwrap();
    let end = bytes.iter().position(|b| *b == 0).unwrap();
    let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    use std::io::Seek;
    f.seek(std::io::SeekFrom::Start(end as u64)).unwrap();
    f.write_all(b"{\"v\":1,\"type\":\"step_st").unwrap();
    drop(f);
    sb.run(&["resume", &id]).expect(0);
    expect_effects(&sb);
    sb.finish();
}

#[test]
fn env_set_killed_between_journal_and_edit_resumes_and_rolls_back_exactly() {
    let sb = Sandbox::new();
    let orig = "A=1\n# keep\nHAPI_IMAGE=old\n";
    sb.write(".env", orig);
    Playbook::new("env")
        .step("image", "env_set")
        .str("file", ".env")
        .table("set", &[("HAPI_IMAGE", "new"), ("ADDED", "x")])
        .write(&sb, "pb.toml");
    let out = sb.run_env(
        &["run", "pb.toml"],
        &[("FERRY_FAILPOINT", "checkpoint:image")],
    );
    assert_eq!(out.signal, Some(9));
    assert_eq!(
        sb.read(".env"),
        orig,
        "killed after journaling, before the edit"
    );
    sb.run(&["resume"]).expect(0);
    assert_eq!(sb.read(".env"), "A=1\n# keep\nHAPI_IMAGE=new\nADDED=x\n");
    let id = sb.run_ids().pop().unwrap();
    sb.run(&["rollback", &id]).expect(0);
    assert_eq!(sb.read(".env"), orig);
    sb.finish();
}
