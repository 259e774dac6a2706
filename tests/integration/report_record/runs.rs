//! Runs that ended: done (with checks, a retry and vars) and failed then rolled back.

use super::*;
use crate::harness::Playbook;

#[test]
fn a_done_run_records_who_where_every_step_its_checks_retries_and_durations() {
    let sb = Sandbox::new();
    Playbook::new("record-done")
        .var("greeting", "hello")
        .var("api_token", "tok-3a9f-not-for-tickets")
        .exec("prepare", "sleep 0.3; echo ok >> log")
        .check("test -w .")
        .exec("flaky", "test -f tried || { touch tried; exit 7; }")
        .retries(1, "50ms")
        .exec("finish", "sleep 0.2")
        .write(&sb, "pb.toml");
    sb.run(&["run", "pb.toml", "--var", "greeting=bonjour"])
        .expect(0);
    let id = only_run(&sb);
    let rec = data(&sb, &id);
    assert_eq!(rec["state"], "done");
    assert_eq!(rec["exit_code"], 0);
    assert_eq!(
        rec["user"],
        std::env::var("USER").unwrap_or_else(|_| "root".into())
    );
    assert!(!rec["host"].as_str().unwrap().is_empty());
    assert_eq!(rec["playbook"]["name"], "record-done");
    assert_eq!(rec["playbook"]["hash"].as_str().unwrap().len(), 64);
    assert!(took(&rec, "prepare", "apply") >= 300, "{rec:#}");
    assert!(took(&rec, "finish", "apply") >= 200, "{rec:#}");
    let flaky = step(&rec, "flaky");
    assert_eq!(flaky["retries"][0]["attempt"], 1);
    assert!(
        flaky["retries"][0]["error"]
            .as_str()
            .unwrap()
            .contains("exit code 7")
    );
    assert_eq!(step(&rec, "prepare")["checks"][0]["status"], "pass");
    let vars = rec["vars"].as_array().unwrap();
    assert!(
        vars.iter()
            .any(|v| v["name"] == "greeting" && v["value"] == "bonjour" && v["source"] == "--var")
    );
    assert!(
        vars.iter()
            .any(|v| v["name"] == "api_token" && v["value"] == "***")
    );

    let (html, md) = documents(&sb, &id);
    for doc in [&html, &md] {
        assert!(!doc.contains("tok-3a9f"), "a secret-named var is masked");
        for s in [
            "prepare",
            "flaky",
            "finish",
            "bonjour",
            "attempt 1 failed",
            "exit code",
        ] {
            assert!(doc.contains(s), "{s} in {doc}");
        }
    }
    assert!(md.contains("| 1 | prepare | exec | done | 3"), "{md}");
    let bars = parsed(&sb, &html);
    assert_eq!(bars.len(), 3, "{bars:?}");
    assert!(
        bars.iter()
            .all(|(c, fill, _)| c == "bar apply" && fill == "#2e7d32"),
        "{bars:?}"
    );
    if let Some(shot) = page_shot(&sb, &id) {
        assert!(shot.distinct_colours() > 20, "the page is not blank");
        let done = in_chart(&shot, DONE).expect("green bars in the timeline");
        assert!(done.w() > 600, "three bars across the timeline: {done:?}");
        assert!(in_chart(&shot, FAILED).is_none() && in_chart(&shot, UNDONE).is_none());
        assert!(
            shot.bbox_in(DONE, None).unwrap().y0 < done.y0,
            "and the green badge above"
        );
    }
}

#[test]
fn a_failed_run_records_the_failure_the_rollback_and_what_was_undone() {
    let sb = Sandbox::new();
    Playbook::new("record-failed")
        .exec("one", "sleep 0.3")
        .undo("sleep 0.2")
        .exec("two", "sleep 0.3")
        .undo("sleep 0.2")
        .exec(
            "three",
            "sleep 0.3; echo '<script>alert(1)</script>' >&2; exit 3",
        )
        .write(&sb, "pb.toml");
    sb.run(&["run", "pb.toml"]).expect(1);
    let id = only_run(&sb);
    let rec = data(&sb, &id);
    assert_eq!(rec["state"], "rolled_back");
    assert_eq!(rec["exit_code"], 1);
    assert!(
        rec["rollbacks"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("three")
    );
    for s in ["one", "two"] {
        assert_eq!(step(&rec, s)["state"], "undone");
        assert!(took(&rec, s, "undo") >= 200, "{rec:#}");
    }
    // As `ferry status` has it, a step whose undo was skipped counts as undone; its outcome
    // says what happened.
    assert_eq!(
        step(&rec, "three")["outcome"],
        "failed, then not undone: no `undo` command"
    );
    let (html, md) = documents(&sb, &id);
    for doc in [&html, &md] {
        assert!(!doc.contains("<script"), "the error's <script> stays text");
        assert!(doc.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(doc.contains("rolled back"));
    }
    let undone = html
        .split("Undone, newest first: ")
        .nth(1)
        .and_then(|s| s.split("</td>").next())
        .unwrap_or_default();
    let order: Vec<&str> = undone.split("; ").collect();
    assert_eq!(order.len(), 3, "{undone}");
    assert!(order[0].starts_with("two rolled back at 20"), "{undone}");
    assert!(order[1].starts_with("one rolled back at 20"), "{undone}");
    assert_eq!(order[2], "three not undone: no `undo` command");
    let bars = parsed(&sb, &html);
    let fills = |what: &str| -> Vec<&str> {
        bars.iter()
            .filter(|b| b.2.starts_with(what))
            .map(|b| b.1.as_str())
            .collect()
    };
    assert_eq!(fills("one:"), ["#2e7d32", "#6a1b9a"], "{bars:?}");
    assert_eq!(fills("three:"), ["#c62828"], "{bars:?}");
    if let Some(shot) = page_shot(&sb, &id) {
        let done = in_chart(&shot, DONE).expect("green: the applies of one and two");
        let failed = in_chart(&shot, FAILED).expect("red: the failed apply of three");
        let undone = in_chart(&shot, UNDONE).expect("purple: the undos");
        // Time runs left to right: the applies, then the failure, then the undos.
        assert!(failed.x0 + 2 >= done.x1, "{done:?} then {failed:?}");
        assert!(undone.x0 + 2 >= failed.x1, "{failed:?} then {undone:?}");
        // Rows: three's below one's and two's, which are the rows undone.
        assert!(failed.y0 >= done.y1, "{done:?} above {failed:?}");
        assert!(
            undone.y0 + 2 >= done.y0 && undone.y1 <= done.y1 + 2,
            "{undone:?} in {done:?}"
        );
        assert!(done.y1 - done.y0 > 30, "two rows of green: {done:?}");
    }
}

#[test]
fn the_target_is_named_by_its_file_and_its_secrets_are_masked() {
    let sb = Sandbox::new();
    let secret = "s3cr3t-registry-pw-4471";
    sb.write(
        "target.toml",
        "name = \"staging-eu\"\n[registry]\nurl = \"127.0.0.1:9\"\nusername_env = \"RR_USER\"\npassword_env = \"RR_PW\"\n",
    );
    Playbook::new("record-target")
        .var("note", "n/a")
        .exec("a", "true")
        .write(&sb, "pb.toml");
    let env = [("RR_USER", "ops"), ("RR_PW", secret)];
    // A var that happens to hold the secret: the journal keeps `--var` as given.
    let var = format!("note={secret}");
    sb.run_env(
        &["run", "pb.toml", "-t", "target.toml", "--var", &var],
        &env,
    )
    .expect(0);
    let id = only_run(&sb);
    let out = sb.run_env(&["report", &id, "--format", "json", "-o", "-"], &env);
    out.expect(0);
    assert!(!out.stdout.contains(secret), "{}", out.stdout);
    let rec: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(rec["target"]["name"], "staging-eu");
    assert!(
        rec["target"]["path"]
            .as_str()
            .unwrap()
            .ends_with("target.toml")
    );
    assert_eq!(rec["target"]["hash"].as_str().unwrap().len(), 64);
    assert_eq!(rec["vars"][0]["value"], "***");
    for args in [vec!["report", &id], vec!["report", &id, "--format", "md"]] {
        sb.run_env(&args, &env).expect(0);
    }
    for f in [
        format!("ferry-report-{id}.html"),
        format!("ferry-report-{id}.md"),
    ] {
        let doc = sb.read(&f);
        assert!(doc.contains("staging-eu") && !doc.contains(secret), "{doc}");
    }
}

#[test]
fn a_done_run_undone_later_with_ferry_rollback_records_both() {
    let sb = Sandbox::new();
    Playbook::new("record-undo-later")
        .exec("a", "echo a >> log")
        .undo("sed -i '/^a$/d' log")
        .exec("b", "echo b >> log")
        .undo("sed -i '/^b$/d' log")
        .write(&sb, "pb.toml");
    sb.run(&["run", "pb.toml"]).expect(0);
    let id = only_run(&sb);
    sb.run(&["rollback", &id]).expect(0);
    assert_eq!(sb.read("log"), "");
    let rec = data(&sb, &id);
    assert_eq!(rec["state"], "rolled_back");
    assert_eq!(rec["exit_code"], 0, "asked for: `ferry rollback` exits 0");
    assert_eq!(rec["rollbacks"].as_array().unwrap().len(), 1);
    assert!(
        rec["rollbacks"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("ferry rollback")
    );
    for s in ["a", "b"] {
        let ends: Vec<&str> = step(&rec, s)["spans"]
            .as_array()
            .unwrap()
            .iter()
            .map(|sp| sp["end"].as_str().unwrap())
            .collect();
        assert_eq!(ends, ["done", "undone"], "{s}: applied, then undone");
    }
    let (html, md) = documents(&sb, &id);
    for doc in [&html, &md] {
        assert!(
            doc.contains("Undone, newest first: b rolled back at "),
            "{doc}"
        );
    }
    parsed(&sb, &html);
}
