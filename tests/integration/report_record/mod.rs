//! `ferry report RUN_ID`: the change record of real runs (done, failed and rolled back,
//! interrupted, killed, corrupt, with a downtime), checked three ways: its data (`--format
//! json`), its HTML parsed by python3's html.parser and its SVG by an XML parser, and the
//! page looked at in headless Chromium, whose screenshot is decoded and searched for the
//! timeline's bar colours where they belong. This file: what the tests share.

mod partial;
mod runs;
mod shot;

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::harness::{Sandbox, require};
use shot::{BBox, Shot, chromium, screenshot};

pub const DONE: [u8; 3] = [0x2e, 0x7d, 0x32];
pub const FAILED: [u8; 3] = [0xc6, 0x28, 0x28];
pub const UNDONE: [u8; 3] = [0x6a, 0x1b, 0x9a];
pub const DOWN: [u8; 3] = [0xff, 0xe0, 0xb2];
/// The timeline's frame (`report::record::svg::FRAME`).
pub const FRAME: [u8; 3] = [0x90, 0xa4, 0xae];

/// Where colour `c` is inside the timeline's frame of the screenshot.
pub fn in_chart(shot: &Shot, c: [u8; 3]) -> Option<BBox> {
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
pub fn only_run(sb: &Sandbox) -> String {
    let ids = sb.run_ids();
    assert_eq!(ids.len(), 1, "{ids:?}");
    ids[0].clone()
}

/// `ferry report ID --format json -o -`: the record's data.
pub fn data(sb: &Sandbox, id: &str) -> Value {
    let out = sb.run(&["report", id, "--format", "json", "-o", "-"]);
    out.expect(0);
    serde_json::from_str(&out.stdout).expect("the JSON record")
}

/// Writes the HTML (default name) and Markdown (`-o`) records; returns (html, md).
pub fn documents(sb: &Sandbox, id: &str) -> (String, String) {
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
pub fn parsed(sb: &Sandbox, html: &str) -> Vec<(String, String, String)> {
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

pub fn step<'a>(rec: &'a Value, id: &str) -> &'a Value {
    rec["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("step {id} in {rec:#}"))
}

/// Milliseconds of the step's spans of `kind` (apply, undo).
pub fn took(rec: &Value, id: &str, kind: &str) -> u64 {
    step(rec, id)["spans"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == kind)
        .map(|s| s["to_ms"].as_u64().unwrap() - s["from_ms"].as_u64().unwrap())
        .sum()
}

pub fn page_shot(sb: &Sandbox, id: &str) -> Option<Shot> {
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
