//! `ferry validate`: one invalid playbook per error class in fixtures/playbooks/invalid/,
//! each with its expected message pinned in `<name>.stderr` beside it (rewrite them with
//! `UPDATE_SNAPSHOTS=1` and review the diff). Every valid fixture and shipped playbook
//! validates.

use std::process::Command;

use crate::harness::{Sandbox, bin, repo};

fn validate(rel: &str) -> (Option<i32>, String, String) {
    let out = Command::new(bin())
        .args(["validate", rel])
        .current_dir(repo())
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn fixtures(dir: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(repo().join(dir))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".toml"))
        .map(|n| format!("{dir}/{n}"))
        .collect();
    v.sort();
    v
}

#[test]
fn each_invalid_playbook_has_its_pinned_message() {
    let update = std::env::var("UPDATE_SNAPSHOTS").is_ok();
    let all = fixtures("fixtures/playbooks/invalid");
    assert!(all.len() >= 12, "one invalid playbook per error class");
    let mut mismatches = vec![];
    for rel in all {
        let (code, _, stderr) = validate(&rel);
        assert_eq!(code, Some(2), "{rel}: exit code\n{stderr}");
        let snap = repo().join(rel.replace(".toml", ".stderr"));
        if update {
            std::fs::write(&snap, &stderr).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&snap)
            .unwrap_or_else(|_| panic!("missing snapshot {}", snap.display()));
        if want != stderr {
            mismatches.push(format!("{rel}\n--- expected\n{want}--- got\n{stderr}"));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn every_valid_fixture_and_shipped_playbook_validates() {
    let mut all = fixtures("fixtures/playbooks/valid");
    all.extend(fixtures("playbooks"));
    all.extend(fixtures("playbooks/examples"));
    for rel in all {
        let (code, stdout, stderr) = validate(&rel);
        assert_eq!(code, Some(0), "{rel}\n{stderr}");
        assert!(stdout.contains(": ok ("), "{stdout}");
    }
}

#[test]
fn plan_requires_required_vars_and_names_them() {
    let out = Command::new(bin())
        .args(["plan", "fixtures/playbooks/valid/all-generic-kinds.toml"])
        .current_dir(repo())
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("variable `ig_package` is required"), "{err}");
    assert!(
        err.contains("pass --var ig_package=… (path to the new IG package (.tgz))"),
        "{err}"
    );
}

#[test]
fn undeclared_cli_var_and_bad_target_reference_are_reported() {
    let sb = Sandbox::new();
    sb.write(
        "t.toml",
        "name = \"staging\"\n[files]\nroot = \"/opt/bd-fhir-national\"\n",
    );
    sb.write("pb.toml", "name = \"x\"\n[vars]\ntag = \"1\"\n[[steps]]\nid = \"a\"\nkind = \"exec\"\nrun = \"cd {{ target.files.rot }}\"\n");
    let out = sb.run(&[
        "validate", "pb.toml", "--target", "t.toml", "--var", "tga=2",
    ]);
    out.expect(2);
    assert!(
        out.stderr
            .contains("--var tga: the playbook declares no variable `tga` (did you mean `tag`?)"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("the target has no `files.rot`"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("did you mean `root`?"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_target_holding_a_secret_is_refused() {
    let sb = Sandbox::new();
    sb.write("t.toml", "name = \"staging\"\n[postgres.fhir]\nurl = \"postgres://hapi@db/fhirdb\"\npassword = \"hunter2\"\n");
    sb.write(
        "pb.toml",
        "name = \"x\"\n[[steps]]\nid = \"a\"\nkind = \"exec\"\nrun = \"true\"\n",
    );
    let out = sb.run(&["validate", "pb.toml", "--target", "t.toml"]);
    out.expect(2);
    assert!(
        out.stderr
            .contains("the target must not hold secrets: `password`"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("password_env"), "{}", out.stderr);
}

#[test]
fn a_target_url_with_a_password_is_refused() {
    let sb = Sandbox::new();
    sb.write(
        "t.toml",
        "name = \"staging\"\n[postgres.fhir]\nurl = \"postgres://hapi:hunter2@db:5432/fhirdb\"\n",
    );
    sb.write(
        "pb.toml",
        "name = \"x\"\n[[steps]]\nid = \"a\"\nkind = \"exec\"\nrun = \"true\"\n",
    );
    let out = sb.run(&["validate", "pb.toml", "--target", "t.toml"]);
    out.expect(2);
    assert!(
        out.stderr.contains("this URL carries a password"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_replica_count_is_parsed_once_by_one_rule() {
    // 2^32 + 2 once wrapped to "2 replicas"; " 4" passed `scale` but not `pool_capacity`.
    let plan = |n: &str| {
        let out = Command::new(bin())
            .args(["plan", "playbooks/scale-replicas.toml", "--var"])
            .arg(format!("replicas={n}"))
            .current_dir(repo())
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = plan("4294967298");
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(
        err.matches("must be a whole number from 0 to 64").count(),
        2,
        "both steps, by the same rule: {err}"
    );
    assert!(err.contains("not 4294967298"), "{err}");
    let (code, err) = plan(" 4");
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(err.matches("not ` 4`").count(), 2, "{err}");
    let (code, err) = plan("3");
    assert_eq!(code, Some(0), "{err}");
}
