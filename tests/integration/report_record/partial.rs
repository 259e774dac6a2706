//! Runs whose record must say what is missing or special: interrupted, killed, a corrupt
//! journal, and a run with the service's downtime in it.

use std::time::Duration;

use super::*;
use crate::harness::{Playbook, wait_for};

#[test]
fn an_interrupted_run_and_a_killed_run_say_so() {
    let sb = Sandbox::new();
    Playbook::new("record-interrupted")
        .exec("a", "touch a-started; sleep 1")
        .exec("b", "true")
        .write(&sb, "pb.toml");
    let child = sb.spawn(&["run", "pb.toml"], &[]);
    wait_for("step a", Duration::from_secs(10), || {
        sb.path("a-started").exists()
    });
    // SAFETY: signalling the ferry we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert_eq!(child.wait_with_output().unwrap().status.code(), Some(5));
    let id = only_run(&sb);
    let rec = data(&sb, &id);
    assert_eq!(rec["state"], "interrupted");
    assert_eq!(rec["exit_code"], 5);
    assert_eq!(rec["interruptions"].as_array().unwrap().len(), 1);
    assert_eq!(step(&rec, "a")["state"], "done");
    assert_eq!(step(&rec, "b")["outcome"], "not run");
    assert!(rec["next"].as_str().unwrap().contains("ferry resume"));
    let (html, md) = documents(&sb, &id);
    for doc in [&html, &md] {
        assert!(
            doc.contains("interrupted at a checkpoint; resumable"),
            "{doc}"
        );
    }
    parsed(&sb, &html);
    // Resumed: the same record now ends done, and says when it was continued and where.
    sb.run(&["resume", &id]).expect(0);
    let rec = data(&sb, &id);
    assert_eq!(
        (rec["state"].as_str(), rec["exit_code"].as_i64()),
        (Some("done"), Some(0))
    );
    assert_eq!(rec["sessions"].as_array().unwrap().len(), 1);
    assert_eq!(rec["sessions"][0]["user"], rec["user"], "who resumed it");
    assert_eq!(rec["interruptions"].as_array().unwrap().len(), 1);
    assert_eq!(step(&rec, "b")["state"], "done");
    let (html, md) = documents(&sb, &id);
    for doc in [&html, &md] {
        assert!(
            doc.contains("continued") && doc.contains("interrupted"),
            "{doc}"
        );
    }
    assert!(html.contains(">interrupted</text>") && html.contains(">resumed</text>"));

    // Killed outright: no record says why; the step's bar is open to the last record.
    std::fs::remove_dir_all(&sb.state).unwrap();
    std::fs::remove_file(sb.path("a-started")).unwrap();
    let child = sb.spawn(&["run", "pb.toml"], &[]);
    wait_for("step a", Duration::from_secs(10), || {
        sb.path("a-started").exists()
    });
    // SAFETY: as above.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait_with_output().unwrap();
    let id = only_run(&sb);
    let rec = data(&sb, &id);
    assert_eq!(
        rec["exit_code"],
        Value::Null,
        "ferry did not exit with a code"
    );
    assert!(
        rec["outcome"].as_str().unwrap().contains("killed?"),
        "{rec:#}"
    );
    assert_eq!(step(&rec, "a")["spans"][0]["end"], "open");
    let (html, md) = documents(&sb, &id);
    for doc in [&html, &md] {
        assert!(doc.contains("(end not recorded)"), "{doc}");
    }
    let (html, _) = documents(&sb, &id);
    assert!(
        parsed(&sb, &html).iter().any(|b| b.1 == "#1565c0"),
        "an unfinished (blue) bar"
    );
}

#[test]
fn a_corrupt_journal_gives_a_record_of_what_came_before_the_damage() {
    let sb = Sandbox::new();
    Playbook::new("record-corrupt")
        .exec("a", "true")
        .exec("b", "true")
        .write(&sb, "pb.toml");
    sb.run(&["run", "pb.toml"]).expect(0);
    let id = only_run(&sb);
    let path = sb.state.join("runs").join(&id).join("journal.jsonl");
    let text = sb.journal(&id);
    let mut lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.contains("\"step_started\"") && l.contains("\"b\""))
        .unwrap();
    lines.insert(at, "{\"v\":2,\"type\":\"step_d<script>");
    // A step id no playbook allows, as a tampered journal could hold: still inert.
    let tampered = lines
        .join("\n")
        .replace("\"a\"", "\"a<script>x()</script>\"")
        + "\n";
    std::fs::write(&path, tampered).unwrap();
    let rec = data(&sb, &id);
    assert_eq!(rec["state"], "corrupt");
    assert_eq!(rec["exit_code"], Value::Null);
    assert!(
        rec["corrupt"].as_str().unwrap().contains("corrupt at line"),
        "{rec:#}"
    );
    assert_eq!(step(&rec, "a<script>x()</script>")["state"], "done");
    let (html, md) = documents(&sb, &id);
    for doc in [&html, &md] {
        assert!(doc.contains("The journal is corrupt"));
        assert!(!doc.contains("<script"), "{doc}");
    }
    parsed(&sb, &html);
    // Nothing at all to read: still a record, of nothing.
    std::fs::write(&path, "").unwrap();
    assert_eq!(data(&sb, &id)["state"], "corrupt");
    sb.run(&["report", "no-such-run"]).expect(2);
    let other = sb.run(&["status", "--format", "md"]);
    other.expect(2);
    assert!(
        other.stderr.contains("are for `ferry report`"),
        "{}",
        other.stderr
    );
}

/// The `replicas` record of a step (what a step that stops or starts the service leaves),
/// dated as the step's `step_done`.
fn replicas_after(journal: &str, step: &str, running: u32) -> (usize, String) {
    let lines: Vec<&str> = journal.lines().collect();
    let i = lines
        .iter()
        .position(|l| l.contains("\"step_done\"") && l.contains(&format!("\"step\":\"{step}\"")))
        .unwrap();
    let at: Value = serde_json::from_str(lines[i]).unwrap();
    let rec = serde_json::json!({"v": 2, "ts": at["ts"], "type": "replicas", "step": step, "service": "hapi", "running": running});
    (i + 1, rec.to_string())
}

#[test]
fn the_downtime_between_stopping_and_starting_the_service_is_marked() {
    let sb = Sandbox::new();
    Playbook::new("record-downtime")
        .exec("drain", "sleep 0.2")
        .exec("stop-hapi", "sleep 0.2")
        .exec("swap-package", "sleep 0.6")
        .exec("start-hapi", "sleep 0.2")
        .exec("verify", "sleep 0.2")
        .write(&sb, "pb.toml");
    sb.run(&["run", "pb.toml"]).expect(0);
    let id = only_run(&sb);
    // The journal events of a scale to 0 and back (the record `replicas` a step that
    // stops or starts the service writes), placed where those steps finished.
    let journal = sb.journal(&id);
    let (i, down) = replicas_after(&journal, "stop-hapi", 0);
    let (j, up) = replicas_after(&journal, "start-hapi", 2);
    let mut lines: Vec<String> = journal.lines().map(str::to_owned).collect();
    lines.insert(j, up);
    lines.insert(i, down);
    let path = sb.state.join("runs").join(&id).join("journal.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let rec = data(&sb, &id);
    assert_eq!(rec["state"], "done");
    let d = &rec["downtime"][0];
    assert_eq!(d["service"], "hapi");
    assert_eq!(d["stopped_by"], "stop-hapi");
    assert_eq!(d["started_by"], "start-hapi");
    let long = d["to_ms"].as_u64().unwrap() - d["from_ms"].as_u64().unwrap();
    assert!((800..5_000).contains(&long), "swap + start: {long} ms");
    let (html, md) = documents(&sb, &id);
    for doc in [&html, &md] {
        assert!(doc.contains("hapi had no running replica for"), "{doc}");
    }
    parsed(&sb, &html);
    if let Some(shot) = page_shot(&sb, &id) {
        let done = in_chart(&shot, DONE).unwrap();
        let band = in_chart(&shot, DOWN).expect("the downtime band");
        // Inside the run, after drain and stop-hapi, before verify: about the middle.
        let (w, mid) = (done.w() as f64, (band.x0 + band.x1) as f64 / 2.0);
        assert!(
            band.x0 > done.x0 + (w * 0.25) as u32,
            "{band:?} in {done:?}"
        );
        assert!(band.x1 < done.x1 - (w * 0.1) as u32, "{band:?} in {done:?}");
        assert!(mid > done.x0 as f64 + w * 0.4 && mid < done.x0 as f64 + w * 0.75);
    }
}
