//! `ferry report RUN_ID`: the change record of real runs (done, failed and rolled back,
//! interrupted, killed, corrupt, with a downtime), checked three ways: its data (`--format
//! json`), its HTML parsed by python3's html.parser and its SVG by an XML parser, and the
//! page looked at in headless Chromium, whose screenshot is decoded and searched for the
//! timeline's bar colours where they belong.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::harness::{Playbook, Sandbox, require, wait_for};
use super::report_shot::{BBox, Shot, chromium, screenshot};

const DONE: [u8; 3] = [0x2e, 0x7d, 0x32];
const FAILED: [u8; 3] = [0xc6, 0x28, 0x28];
const UNDONE: [u8; 3] = [0x6a, 0x1b, 0x9a];
const DOWN: [u8; 3] = [0xff, 0xe0, 0xb2];
/// The timeline's frame (`report::record::svg::FRAME`).
const FRAME: [u8; 3] = [0x90, 0xa4, 0xae];

/// Where colour `c` is inside the timeline's frame of the screenshot.
fn in_chart(shot: &Shot, c: [u8; 3]) -> Option<BBox> {
    let frame = shot
        .bbox_in(FRAME, None)
        .expect("the timeline's frame on the page");
    assert!(
        frame.w() > 600,
        "the timeline is drawn full width: {frame:?}"
    );
    shot.bbox_in(c, Some(frame))
}

/// The only run in the sandbox.
fn only_run(sb: &Sandbox) -> String {
    let ids = sb.run_ids();
    assert_eq!(ids.len(), 1, "{ids:?}");
    ids[0].clone()
}

/// `ferry report ID --format json -o -`: the record's data.
fn data(sb: &Sandbox, id: &str) -> Value {
    let out = sb.run(&["report", id, "--format", "json", "-o", "-"]);
    out.expect(0);
    serde_json::from_str(&out.stdout).expect("the JSON record")
}

/// Writes the HTML (default name) and Markdown (`-o`) records; returns (html, md).
fn documents(sb: &Sandbox, id: &str) -> (String, String) {
    let out = sb.run(&["report", id]);
    out.expect(0);
    let html_name = format!("ferry-report-{id}.html");
    assert_eq!(
        out.stdout.trim(),
        html_name,
        "it says where it wrote the file"
    );
    sb.run(&["report", id, "--format", "md", "-o", "record.md"])
        .expect(0);
    (sb.read(&html_name), sb.read("record.md"))
}

/// python3 parses the page (tags balanced, no script element) and the SVG (XML); returns
/// the bars it found: (class, fill, title).
fn parsed(sb: &Sandbox, html: &str) -> Vec<(String, String, String)> {
    const CHECK: &str = r#"
import json, sys, html.parser, xml.etree.ElementTree as ET
VOID = {"meta", "br", "img", "hr", "input", "link"}
class P(html.parser.HTMLParser):
    def __init__(s):
        super().__init__(convert_charrefs=True); s.stack = []; s.errors = []
    def handle_starttag(s, tag, attrs):
        if tag in ("script", "iframe", "object", "embed", "foreignobject"):
            s.errors.append("forbidden element " + tag)
        for k, v in attrs:
            if k.startswith("on") or (k in ("href", "src") and not (v or "").startswith("data:")):
                s.errors.append("forbidden attribute %s=%s" % (k, v))
        if tag not in VOID: s.stack.append(tag)
    def handle_endtag(s, tag):
        if not s.stack or s.stack[-1] != tag:
            s.errors.append("</%s> closes %s" % (tag, s.stack[-1:] or "nothing")); return
        s.stack.pop()
text = open(sys.argv[1], encoding="utf-8").read()
p = P(); p.feed(text); p.close()
if p.stack: p.errors.append("unclosed: %s" % p.stack)
svg = text[text.find("<svg"):text.find("</svg>") + 6]
root = ET.fromstring(svg)
ns = "{http://www.w3.org/2000/svg}"
bars = [[r.get("class"), r.get("fill"), r.find(ns + "title").text] for r in root.iter(ns + "rect") if (r.get("class") or "").startswith("bar")]
print(json.dumps({"errors": p.errors, "bars": bars}))
"#;
    let page = sb.write("page-under-test.html", html);
    let out = std::process::Command::new("python3")
        .args(["-c", CHECK])
        .arg(&page)
        .output()
        .expect("python3 (scripts/setup-deps installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["errors"],
        serde_json::json!([]),
        "the page is well-formed"
    );
    v["bars"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let s = |i: usize| b[i].as_str().unwrap_or_default().to_owned();
            (s(0), s(1), s(2))
        })
        .collect()
}

fn step<'a>(rec: &'a Value, id: &str) -> &'a Value {
    rec["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("step {id} in {rec:#}"))
}

/// Milliseconds of the step's spans of `kind` (apply, undo).
fn took(rec: &Value, id: &str, kind: &str) -> u64 {
    step(rec, id)["spans"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == kind)
        .map(|s| s["to_ms"].as_u64().unwrap() - s["from_ms"].as_u64().unwrap())
        .sum()
}

fn page_shot(sb: &Sandbox, id: &str) -> Option<Shot> {
    let browser = chromium();
    if !require("chromium (headless)", browser.is_some()) {
        return None;
    }
    let page: PathBuf = sb.path(&format!("ferry-report-{id}.html"));
    Some(screenshot(
        browser.as_deref().unwrap_or(Path::new("")),
        sb,
        &page,
    ))
}

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
        rec["rollback"]["reason"]
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
    assert!(
        html.contains("Undone, newest first: two (rolled back), one (rolled back)"),
        "{html}"
    );
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
