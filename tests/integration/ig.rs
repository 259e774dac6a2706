//! IG packages through the real binary: the `ig_package_swap` step (forward, rollback,
//! notice gate, bad input, crash + resume) against a files root shaped like the
//! production checkout, and `ferry ig inspect|diff`.
//!
//! Every test that expects "nothing changed" compares the bytes of every file under the
//! files root before and after.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::harness::{Out, Sandbox, repo};

const ID: &str = "bd.gov.dghs.core";
const PKGS: &str = "files/hapi-overlay/src/main/resources/packages";
const YAML: &str = "files/hapi-overlay/src/main/resources/application.yaml";
/// A comment, CRLF lines (one of them edited), a quoted secret, no final newline.
const ENV: &str = "# bd-fhir-national deployment\nHAPI_IMAGE=registry.example/hapi-overlay:7.4.0-bd1\r\nHAPI_IG_PACKAGE_CLASSPATH=classpath:packages/bd.gov.dghs.core-0.2.1.tgz\nHAPI_IG_VERSION=0.2.1\r\nFHIR_DB_PASSWORD=\"s3cret value\"\n\nexport TZ=Asia/Dhaka";
const APP_YAML: &str = "spring:\n  datasource:\n    url: jdbc:postgresql://db:5432/fhirdb # via pgbouncer\nhapi:\n  fhir:\n    fhir_version: R4\n    implementationguides:\n      bd_core:\n        packageUrl: \"classpath:packages/bd.gov.dghs.core-0.2.1.tgz\"\n        name: bd.gov.dghs.core\n        version: 0.2.1  # keep in step with .env\n        installMode: STORE_AND_INSTALL\n";

fn fixture(name: &str) -> PathBuf {
    repo().join("fixtures/ig").join(name)
}

fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).expect("fixture")
}

/// A files root like the production checkout, a target pointing at it, and a playbook
/// whose swap step gets `extra` keys and is followed by `after` (more TOML).
fn setup(extra: &str, after: &str) -> Sandbox {
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.path(PKGS)).unwrap();
    std::fs::copy(
        fixture("bd.gov.dghs.core-0.2.1.tgz"),
        sb.path(&format!("{PKGS}/bd.gov.dghs.core-0.2.1.tgz")),
    )
    .unwrap();
    // Another IG's package in the same directory is not ours to touch.
    sb.write(&format!("{PKGS}/hl7.terminology.r4-5.0.0.tgz"), "not read");
    sb.write("files/.env", ENV);
    sb.write(YAML, APP_YAML);
    sb.write(
        "files/docker-compose.yml",
        "services:\n  hapi:\n    env_file: .env\n",
    );
    sb.write(
        "target.toml",
        "name = \"test\"\n\n[files]\nroot = \"files\"\n",
    );
    sb.write(
        "pb.toml",
        &format!(
            "name = \"ig-swap\"\n\n[vars]\npackage = {{ required = true }}\n\n[[steps]]\nid = \"swap\"\nkind = \"ig_package_swap\"\npackage = \"{{{{ package }}}}\"\npackages_dir = \"hapi-overlay/src/main/resources/packages\"\nexpect_id = \"{ID}\"\nvendor_notice_dir = \"notices\"\n{extra}\n{after}"
        ),
    );
    sb
}

fn run(sb: &Sandbox, pkg: &Path, more: &[&str]) -> Out {
    let var = format!("package={}", pkg.display());
    let mut args = vec!["run", "pb.toml", "--target", "target.toml", "--var", &var];
    args.extend_from_slice(more);
    sb.run(&args)
}

/// Every file under the files root, by relative path, with its bytes.
fn snapshot(sb: &Sandbox) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, p: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(p).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out)
            } else {
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut m = BTreeMap::new();
    walk(&sb.path("files"), &sb.path("files"), &mut m);
    m
}

#[track_caller]
fn assert_same(before: &BTreeMap<String, Vec<u8>>, sb: &Sandbox) {
    let now = snapshot(sb);
    let names = |m: &BTreeMap<String, Vec<u8>>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&now), names(before), "files under the root differ");
    for (k, v) in before {
        assert!(now[k] == *v, "{k} changed");
    }
    assert!(
        !sb.path("files/.ferry-backup").exists(),
        "backup dir left behind"
    );
}

fn package_files(sb: &Sandbox) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(sb.path(PKGS))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// The end state of a successful swap to `version`.
#[track_caller]
fn assert_swapped(sb: &Sandbox, version: &str) {
    let new = format!("{ID}-{version}.tgz");
    assert_eq!(
        package_files(sb),
        [new.clone(), "hl7.terminology.r4-5.0.0.tgz".into()]
    );
    assert!(std::fs::read(sb.path(&format!("{PKGS}/{new}"))).unwrap() == fixture_bytes(&new));
    let env = ENV
        .replace("core-0.2.1.tgz", &format!("core-{version}.tgz"))
        .replace(
            "HAPI_IG_VERSION=0.2.1",
            &format!("HAPI_IG_VERSION={version}"),
        );
    assert_eq!(sb.read("files/.env"), env);
}

fn date_in(days: i64) -> String {
    let d = time::OffsetDateTime::now_utc().date() + time::Duration::days(days);
    d.to_string()
}

fn notice(sb: &Sandbox, version: &str, days_ago: i64) {
    sb.write(
        &format!("files/notices/{ID}-{version}.toml"),
        &format!(
            "notified_on = {}\nchannel = \"email to vendor-list\"\nreference = \"DGHS/IG/2025-7\"\n",
            date_in(-days_ago)
        ),
    );
}

#[test]
fn loosening_upgrade_then_rollback_is_byte_exact() {
    let sb = setup(
        "application_yaml = \"hapi-overlay/src/main/resources/application.yaml\"",
        "",
    );
    let before = snapshot(&sb);
    let out = run(&sb, &fixture("bd.gov.dghs.core-0.2.2.tgz"), &[]);
    out.expect(0);
    assert!(
        out.stderr
            .contains("0 tightening(s), 7 loosening(s), 2 info"),
        "{}",
        out.stderr
    );
    assert_swapped(&sb, "0.2.2");
    assert_eq!(
        sb.read(YAML),
        APP_YAML
            .replace("core-0.2.1.tgz\"", "core-0.2.2.tgz\"")
            .replace("version: 0.2.1  #", "version: 0.2.2  #")
    );
    let ids = sb.run_ids();
    assert_eq!(ids.len(), 1);
    let backup = sb.path(&format!("files/.ferry-backup/{}/{ID}-0.2.1.tgz", ids[0]));
    assert!(std::fs::read(&backup).unwrap() == fixture_bytes("bd.gov.dghs.core-0.2.1.tgz"));
    // The journal holds the edited lines, never the rest of the env file.
    assert!(!sb.journal(&ids[0]).contains("s3cret"));

    // Running it again finds the swap done and changes nothing.
    let swapped = snapshot(&sb);
    let again = run(&sb, &fixture("bd.gov.dghs.core-0.2.2.tgz"), &[]);
    again.expect(0);
    assert!(again.stderr.contains("already swapped"), "{}", again.stderr);
    assert_eq!(snapshot(&sb), swapped);

    sb.run(&["rollback", &ids[0]]).expect(0);
    assert_same(&before, &sb);
}

#[test]
fn tightening_without_notice_is_refused_and_changes_nothing() {
    let sb = setup("", "");
    let before = snapshot(&sb);
    for dry in [false, true] {
        let extra: &[&str] = if dry { &["--dry-run"] } else { &[] };
        let out = run(&sb, &fixture("bd.gov.dghs.core-0.3.0.tgz"), extra);
        out.expect(3);
        let e = &out.stderr;
        assert!(
            e.contains("0.2.1 → 0.3.0 has 13 SHALL tightening(s)"),
            "{e}"
        );
        assert!(e.contains("no notice record"), "{e}");
        assert!(e.contains(&format!("may run from {}", date_in(30))), "{e}");
        // The list names kind, profile and element.
        assert!(
            e.contains("- min https://fhir.dghs.gov.bd/core/StructureDefinition/bd-"),
            "{e}"
        );
        assert!(e.contains("- valueset-changed "), "{e}");
        assert_same(&before, &sb);
    }
}

#[test]
fn notice_old_enough_allows_the_upgrade_and_a_recent_one_names_the_date() {
    let sb = setup("", "");
    let before = snapshot(&sb);
    notice(&sb, "0.3.0", 5);
    let out = run(&sb, &fixture("bd.gov.dghs.core-0.3.0.tgz"), &[]);
    out.expect(3);
    assert!(
        out.stderr
            .contains(&format!("vendors were notified on {} ", date_in(-5))),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains(&format!("may run from {}", date_in(25))),
        "{}",
        out.stderr
    );
    let with_notice = snapshot(&sb);
    assert_eq!(with_notice.len(), before.len() + 1);

    notice(&sb, "0.3.0", 31);
    let out = run(&sb, &fixture("bd.gov.dghs.core-0.3.0.tgz"), &[]);
    out.expect(0);
    assert!(
        out.stderr
            .contains("via email to vendor-list (DGHS/IG/2025-7)"),
        "{}",
        out.stderr
    );
    assert_swapped(&sb, "0.3.0");
}

#[test]
fn a_later_failure_rolls_the_swap_back() {
    let sb = setup(
        "application_yaml = \"hapi-overlay/src/main/resources/application.yaml\"",
        "[[steps]]\nid = \"boom\"\nkind = \"exec\"\nrun = \"false\"\n",
    );
    let before = snapshot(&sb);
    let out = run(&sb, &fixture("bd.gov.dghs.core-0.2.2.tgz"), &[]);
    out.expect(1);
    assert!(out.stderr.contains("boom"), "{}", out.stderr);
    assert_same(&before, &sb);
}

#[test]
fn bad_packages_are_refused_and_change_nothing() {
    let cases: &[(&str, &str)] = &[
        (
            "bad/bd.gov.dghs.other-0.3.0.tgz",
            "is package bd.gov.dghs.other, expected bd.gov.dghs.core",
        ),
        (
            "bad/bd.gov.dghs.core-0.1.0.tgz",
            "0.1.0 is older than the installed 0.2.1: a downgrade",
        ),
        (
            "bad/bd.gov.dghs.core-0.4.0-r5.tgz",
            "is for FHIR 5.0.0 but the installed",
        ),
        ("bad/tar-slip.tgz", "escapes package/ (tar slip)"),
        ("bad/absolute-path.tgz", "is an absolute path"),
        ("bad/symlink.tgz", "is a symlink"),
        ("bad/hardlink.tgz", "is a hardlink"),
        ("bad/bomb.tgz", "decompression bomb"),
        ("bad/truncated.tgz", "truncated gzip stream"),
        ("bad/not-gzip.tgz", "not a gzip file"),
        ("bad/missing-manifest.tgz", "no package/package.json"),
        ("bad/invalid-manifest.tgz", "invalid JSON"),
        ("bad/non-semver.tgz", "is not SemVer"),
        (
            "bd.gov.dghs.core-0.2.1.tgz-missing",
            "cannot read IG package",
        ),
    ];
    let sb = setup("", "");
    let before = snapshot(&sb);
    for (name, msg) in cases {
        let out = run(&sb, &fixture(name), &[]);
        assert_eq!(out.code, Some(3), "{name}: {}", out.stderr);
        assert!(
            out.stderr.contains(msg),
            "{name}: expected {msg:?} in\n{}",
            out.stderr
        );
        assert!(
            out.stderr.contains("nothing was changed"),
            "{name}: {}",
            out.stderr
        );
        assert_same(&before, &sb);
    }
}

#[test]
fn not_exactly_one_installed_package_is_refused() {
    let sb = setup("", "");
    let second = format!("{PKGS}/{ID}-0.2.0.tgz");
    std::fs::copy(fixture("bd.gov.dghs.core-0.2.1.tgz"), sb.path(&second)).unwrap();
    let before = snapshot(&sb);
    let out = run(&sb, &fixture("bd.gov.dghs.core-0.2.2.tgz"), &[]);
    out.expect(3);
    assert!(
        out.stderr.contains(&format!(
            "2 {ID} packages in {PKGS}: {ID}-0.2.0.tgz, {ID}-0.2.1.tgz; one IG version per image"
        )),
        "{}",
        out.stderr
    );
    assert_same(&before, &sb);

    for f in [second, format!("{PKGS}/{ID}-0.2.1.tgz")] {
        std::fs::remove_file(sb.path(&f)).unwrap();
    }
    let before = snapshot(&sb);
    let out = run(&sb, &fixture("bd.gov.dghs.core-0.2.2.tgz"), &[]);
    out.expect(3);
    assert!(
        out.stderr.contains(&format!("no {ID} package")),
        "{}",
        out.stderr
    );
    assert_same(&before, &sb);
}

/// How far apply got before the kill, beyond the journaled checkpoint. The failpoints
/// stop ferry at journal records; the states in between (new file in, old file moved to
/// the backup, env edited) are recreated by hand exactly as apply leaves them.
#[derive(Clone, Copy, Debug)]
enum Progress {
    None,
    NewCopied,
    OldBackedUp,
    EnvEdited,
}

fn advance(sb: &Sandbox, run_id: &str, p: Progress) {
    let new = format!("{PKGS}/{ID}-0.2.2.tgz");
    let old = format!("{PKGS}/{ID}-0.2.1.tgz");
    let backup = format!("files/.ferry-backup/{run_id}/{ID}-0.2.1.tgz");
    if matches!(
        p,
        Progress::NewCopied | Progress::OldBackedUp | Progress::EnvEdited
    ) {
        std::fs::write(sb.path(&new), fixture_bytes("bd.gov.dghs.core-0.2.2.tgz")).unwrap();
    }
    if matches!(p, Progress::OldBackedUp | Progress::EnvEdited) {
        std::fs::create_dir_all(sb.path(&backup).parent().unwrap()).unwrap();
        std::fs::rename(sb.path(&old), sb.path(&backup)).unwrap();
    }
    if matches!(p, Progress::EnvEdited) {
        let env = ENV
            .replace("core-0.2.1.tgz", "core-0.2.2.tgz")
            .replace("HAPI_IG_VERSION=0.2.1", "HAPI_IG_VERSION=0.2.2");
        sb.write("files/.env", &env);
    }
}

#[test]
fn killed_runs_resume_to_the_right_end_state() {
    let cases = [
        ("step_started:swap", Progress::None),
        ("checkpoint:swap", Progress::None),
        ("checkpoint:swap", Progress::NewCopied),
        ("checkpoint:swap", Progress::OldBackedUp),
        ("checkpoint:swap", Progress::EnvEdited),
    ];
    for (point, progress) in cases {
        let sb = setup(
            "application_yaml = \"hapi-overlay/src/main/resources/application.yaml\"",
            "",
        );
        let before = snapshot(&sb);
        let var = format!(
            "package={}",
            fixture("bd.gov.dghs.core-0.2.2.tgz").display()
        );
        let out = sb.run_env(
            &["run", "pb.toml", "--target", "target.toml", "--var", &var],
            &[("FERRY_FAILPOINT", point)],
        );
        assert_eq!(out.signal, Some(9), "{point}: {out:?}");
        // Killed at that record: nothing is changed before the checkpoint is journaled.
        assert_same(&before, &sb);
        let id = sb.run_ids()[0].clone();
        advance(&sb, &id, progress);
        let out = sb.run(&["resume"]);
        assert_eq!(out.code, Some(0), "{point} {progress:?}: {}", out.stderr);
        assert_swapped(&sb, "0.2.2");
        assert!(sb.read(YAML).contains("version: 0.2.2  #"));
        sb.run(&["rollback", &id]).expect(0);
        assert_same(&before, &sb);
    }
}

#[test]
fn a_killed_rollback_finishes_on_the_next_attempt() {
    let sb = setup("", "");
    let before = snapshot(&sb);
    run(&sb, &fixture("bd.gov.dghs.core-0.2.2.tgz"), &[]).expect(0);
    let id = sb.run_ids()[0].clone();
    let out = sb.run_env(
        &["rollback", &id],
        &[("FERRY_FAILPOINT", "undo_started:swap")],
    );
    assert_eq!(out.signal, Some(9), "{out:?}");
    // Half undone by hand: the old package is back, the new one still there.
    let backup = format!("files/.ferry-backup/{id}/{ID}-0.2.1.tgz");
    std::fs::rename(sb.path(&backup), sb.path(&format!("{PKGS}/{ID}-0.2.1.tgz"))).unwrap();
    let out = sb.run(&["rollback", &id]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_same(&before, &sb);
}

#[test]
fn ig_inspect_and_diff_through_the_binary() {
    let sb = Sandbox::new();
    let p = fixture("bd.gov.dghs.core-0.2.1.tgz");
    let p = p.to_str().unwrap();
    let out = sb.run(&["ig", "inspect", p]);
    out.expect(0);
    assert!(
        out.stdout
            .starts_with("bd.gov.dghs.core 0.2.1  (bd.gov.dghs.core-0.2.1.tgz)")
    );
    assert!(
        out.stdout.contains("FHIR versions  4.0.1"),
        "{}",
        out.stdout
    );
    let out = sb.run(&["ig", "inspect", p, "--format", "json"]);
    out.expect(0);
    let j: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(j["id"], ID);
    assert_eq!(j["version"], "0.2.1");
    assert_eq!(j["fhirVersions"], serde_json::json!(["4.0.1"]));
    assert_eq!(j["counts"]["StructureDefinition"], 3);
    assert_eq!(j["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(j["profiles"].as_array().unwrap().len(), 3);

    let new = fixture("bd.gov.dghs.core-0.3.0.tgz");
    let out = sb.run(&["ig", "diff", p, new.to_str().unwrap(), "--format", "json"]);
    out.expect(0);
    let j: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(j["old"]["version"], "0.2.1");
    assert_eq!(j["new"]["version"], "0.3.0");
    let mut kinds: Vec<&str> = j["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["class"] == "tightening")
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "binding",
            "constraint",
            "constraint",
            "fixed",
            "max",
            "min",
            "mustSupport",
            "pattern",
            "slicing",
            "slicing",
            "type",
            "type",
            "valueset-changed"
        ]
    );
    let out = sb.run(&["ig", "diff", p, new.to_str().unwrap()]);
    out.expect(0);
    assert!(out.stdout.contains("tightening: 13"), "{}", out.stdout);

    for (name, msg) in [
        (
            "tar-slip.tgz",
            "entry \"package/../evil.json\" escapes package/ (tar slip)",
        ),
        (
            "absolute-path.tgz",
            "entry \"/etc/evil.json\" is an absolute path",
        ),
        ("symlink.tgz", "is a symlink"),
        ("hardlink.tgz", "is a hardlink"),
        ("bomb.tgz", "(decompression bomb?)"),
        ("truncated.tgz", "truncated gzip stream"),
        (
            "not-gzip.tgz",
            "not a gzip file (first bytes are not 1f 8b)",
        ),
        ("missing-manifest.tgz", "no package/package.json"),
        ("invalid-manifest.tgz", "package/package.json: invalid JSON"),
        ("non-semver.tgz", "version \"0.3\" is not SemVer"),
        ("duplicate.tgz", "appears twice"),
        ("fifo.tgz", "is a fifo"),
    ] {
        let f = fixture(&format!("bad/{name}"));
        let out = sb.run(&["ig", "inspect", f.to_str().unwrap()]);
        assert_eq!(out.code, Some(2), "{name}: {out:?}");
        assert!(
            out.stderr.contains(&format!("bad IG package {name}: ")) && out.stderr.contains(msg),
            "{name}: expected {msg:?} in {}",
            out.stderr
        );
    }
}

#[test]
fn broken_notice_records_and_yaml_are_refused_by_name() {
    let sb = setup(
        "application_yaml = \"hapi-overlay/src/main/resources/application.yaml\"",
        "",
    );
    sb.write(
        &format!("files/notices/{ID}-0.3.0.toml"),
        "notified_on = \"last month\"\nchannel = \"email\"\nreference = \"X\"\n",
    );
    let before = snapshot(&sb);
    let out = run(&sb, &fixture("bd.gov.dghs.core-0.3.0.tgz"), &[]);
    out.expect(3);
    assert!(
        out.stderr.contains(&format!("the notice record files/notices/{ID}-0.3.0.toml is invalid: `notified_on = last month` is not a date")),
        "{}",
        out.stderr
    );
    assert_same(&before, &sb);

    sb.write(YAML, "hapi:\n  fhir:\n    implementationguides:\n      other:\n        packageUrl: classpath:packages/x-1.0.0.tgz\n        version: 1.0.0\n");
    let before = snapshot(&sb);
    let out = run(&sb, &fixture("bd.gov.dghs.core-0.2.2.tgz"), &[]);
    out.expect(3);
    assert!(
        out.stderr.contains(&format!(
            "application_yaml: {YAML}: no entry for {ID} under `hapi.fhir.implementationguides`"
        )),
        "{}",
        out.stderr
    );
    assert_same(&before, &sb);
}

#[test]
fn the_example_playbook_runs() {
    let sb = setup("", "");
    let pb = repo().join("playbooks/examples/ig_package_swap.toml");
    let var = format!(
        "package={}",
        fixture("bd.gov.dghs.core-0.2.2.tgz").display()
    );
    let out = sb.run(&[
        "run",
        pb.to_str().unwrap(),
        "--target",
        "target.toml",
        "--var",
        &var,
    ]);
    out.expect(0);
    assert_swapped(&sb, "0.2.2");
}
