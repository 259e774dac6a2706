//! Durability hardening: corrupt journals, SQL timeouts that cancel the backend, signals in
//! preflight, the database lock's liveness, journal write failures.

use crate::harness::Sandbox;

const TWO: &str = r#"name = "two"
[[steps]]
id = "one"
kind = "exec"
run = "echo 1 >> effects.log"
undo = "echo undo1 >> effects.log"

[[steps]]
id = "two"
kind = "exec"
run = "echo 2 >> effects.log"
undo = "echo undo2 >> effects.log"
"#;

fn journal_path(sb: &Sandbox, id: &str) -> std::path::PathBuf {
    sb.state.join("runs").join(id).join("journal.jsonl")
}

fn status_json(sb: &Sandbox) -> serde_json::Value {
    let out = sb.run(&["status", "--format", "json"]);
    out.expect(0);
    serde_json::from_str(&out.stdout).unwrap()
}

#[test]
fn a_nul_byte_in_the_middle_of_a_journal_is_corruption() {
    let sb = Sandbox::new();
    sb.write("two.toml", TWO);
    sb.run(&["run", "two.toml"]).expect(0);
    let id = sb.run_ids().pop().unwrap();
    let path = journal_path(&sb, &id);
    let mut bytes = std::fs::read(&path).unwrap();
    let third = bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .nth(1)
        .unwrap()
        .0
        + 1;
    bytes.insert(third + 3, 0);
    std::fs::write(&path, &bytes).unwrap();

    let runs = status_json(&sb);
    assert_eq!(runs[0]["state"], "corrupt", "{runs}");
    assert!(
        runs[0]["next"]
            .as_str()
            .unwrap()
            .contains(path.to_str().unwrap()),
        "{runs}"
    );
    for args in [vec!["resume"], vec!["resume", &id], vec!["rollback", &id]] {
        let out = sb.run(&args);
        out.expect(2);
        assert!(out.stderr.contains("corrupt"), "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains("inspect"), "{args:?}: {}", out.stderr);
    }
    assert_eq!(sb.read("effects.log"), "1\n2\n", "no step ran again");
}

#[test]
fn an_empty_journal_does_not_hide_the_other_runs() {
    let sb = Sandbox::new();
    sb.write("two.toml", TWO);
    sb.run(&["run", "two.toml"]).expect(0);
    let good = sb.run_ids().pop().unwrap();
    let empty = "29991231-235959.999-ffff";
    std::fs::create_dir_all(sb.state.join("runs").join(empty)).unwrap();
    std::fs::write(journal_path(&sb, empty), "").unwrap();
    let runs = status_json(&sb);
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[0]["run_id"], empty);
    assert_eq!(runs[0]["state"], "corrupt");
    assert_eq!(runs[1]["run_id"], good.as_str());
    assert_eq!(runs[1]["state"], "done");
    sb.run(&["status"]).expect(0);
    // A bare resume names the corrupt newest run instead of picking another.
    let out = sb.run(&["resume"]);
    out.expect(2);
    assert!(out.stderr.contains(empty), "{}", out.stderr);
}
