//! Regression tests of the hardening issue: a child's untrusted output, a relative state dir,
//! the exit code of a resumed rollback, the sandbox's external programs.

use crate::harness::Sandbox;

#[test]
fn exec_output_with_invalid_utf8_and_a_10mb_line_is_decoded_lossily_and_bounded() {
    let sb = Sandbox::new();
    sb.write(
        "pb.toml",
        r#"name = "noisy"

[[steps]]
id = "noisy"
kind = "exec"
run = '''printf 'caf\351\n'; head -c 10000000 /dev/zero | tr '\0' x; printf '\nafter\n'; printf 'caf\351' >&2; touch finished'''
"#,
    );
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
