//! The CI recipes in docs/ci/: both YAML files parse (PyYAML) and publish the JUnit file
//! even when the job fails, every secret the example target names is mapped from the CI's
//! variables, and each recipe's own dry-run line, run against `ferry sandbox` in a directory
//! laid out like the deployment repository, writes a JUnit file that a real consumer
//! (`junitparser` from PyPI, see scripts/setup-deps) reads with exactly the suites,
//! testcases, failures and skips ferry reported running.
//!
//! Docker tests are named `sandbox_*`: .config/nextest.toml puts `ci_recipes::sandbox_` in
//! the `docker` group.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::doctor::Sbx;
use crate::harness::{Out, Sandbox, bin, repo, require};

/// What the tests need of the two recipes, read by PyYAML.
const READ_RECIPES: &str = r#"
import json, sys, yaml
gl = yaml.safe_load(open(sys.argv[1]))
gh = yaml.safe_load(open(sys.argv[2]))
def merged(job):
    out = {}
    for base in ([job["extends"]] if isinstance(job.get("extends"), str) else job.get("extends", [])):
        out.update(merged(gl[base]))
    out.update({k: v for k, v in job.items() if k != "extends"})
    return out
jobs = {k: merged(v) for k, v in gl.items() if isinstance(v, dict) and not k.startswith(".")}
def line_of(lines, needle):
    return next((l for l in lines if needle in l), None)
gitlab = {}
for name, j in jobs.items():
    cmd = line_of(j.get("script", []), "--dry-run --junit report.xml")
    if cmd:
        gitlab.update({"job": name, "dry_run": cmd, "vars": j.get("variables", {}),
                       "artifacts": j.get("artifacts", {})})
    if line_of(j.get("script", []), "ferry doctor"):
        gitlab["doctor_stage"] = j.get("stage")
gitlab["stages"] = gl.get("stages")
(job,) = gh["jobs"].values()
steps = job["steps"]
run = [s for s in steps if "--dry-run --junit report.xml" in s.get("run", "")]
github = {"env": job.get("env", {}), "dry_run": run[0]["run"].strip() if run else None,
          "doctor": any("ferry doctor" in s.get("run", "") for s in steps),
          "after": [{"uses": s.get("uses"), "if": s.get("if"), "run": s.get("run"),
                     "with": s.get("with")} for s in steps[steps.index(run[0]) + 1:]] if run else [],
          "permissions": gh.get("permissions")}
print(json.dumps({"gitlab": gitlab, "github": github}))
"#;

/// Suites and testcases as junitparser sees them (not the file's own count attributes).
const READ_JUNIT: &str = r#"
import json, sys
from junitparser import JUnitXml, TestSuite, Failure, Error, Skipped
xml = JUnitXml.fromfile(sys.argv[1])
suites = [xml] if isinstance(xml, TestSuite) else list(xml)
out = []
for s in suites:
    cases = list(s)
    kinds = [[type(r).__name__ for r in c.result] for c in cases]
    out.append({"name": s.name, "tests": s.tests, "failures": s.failures, "skipped": s.skipped,
                "cases": [c.name for c in cases],
                "failed": [c.name for c, k in zip(cases, kinds) if "Failure" in k or "Error" in k],
                "skips": [c.name for c, k in zip(cases, kinds) if "Skipped" in k]})
print(json.dumps(out))
"#;

fn python(script: &str, args: &[&Path]) -> Value {
    let o = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3");
    assert!(
        o.status.success(),
        "python3 failed (scripts/setup-deps installs junitparser and PyYAML): {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

fn have_python_packages() -> bool {
    Command::new("python3")
        .args(["-c", "import junitparser, yaml"])
        .status()
        .is_ok_and(|s| s.success())
}

fn recipes() -> Value {
    let ci = repo().join("docs/ci");
    python(
        READ_RECIPES,
        &[&ci.join("gitlab-ci.yml"), &ci.join("github-actions.yml")],
    )
}

#[test]
fn recipes_parse_map_every_secret_and_publish_the_report_when_the_job_fails() {
    if !require(
        "python3 with junitparser and PyYAML",
        have_python_packages(),
    ) {
        return;
    }
    let r = recipes();
    let (gl, gh) = (&r["gitlab"], &r["github"]);
    // GitLab: the report as a JUnit report, kept when the job fails; doctor goes first.
    assert_eq!(gl["artifacts"]["reports"]["junit"], "report.xml", "{gl:#}");
    assert_eq!(gl["artifacts"]["when"], "always", "{gl:#}");
    assert_eq!(gl["stages"], serde_json::json!(["preflight", "rehearse"]));
    assert_eq!(gl["doctor_stage"], "preflight");
    // GitHub: doctor, then after the dry-run an upload, a test report and the summary, all
    // of them also when the dry-run failed.
    assert_eq!(gh["doctor"], true);
    let after = gh["after"].as_array().unwrap();
    let uses: Vec<&str> = after.iter().filter_map(|s| s["uses"].as_str()).collect();
    assert!(
        uses.iter()
            .any(|u| u.starts_with("actions/upload-artifact@")),
        "{uses:?}"
    );
    assert!(
        uses.iter().any(|u| u.starts_with("dorny/test-reporter@")),
        "{uses:?}"
    );
    for s in after {
        assert_eq!(
            s["if"], "${{ !cancelled() }}",
            "runs even when the dry-run failed: {s:#}"
        );
    }
    assert!(after.iter().any(|s| {
        s["run"]
            .as_str()
            .is_some_and(|r| r.contains("$GITHUB_STEP_SUMMARY"))
    }));
    assert_eq!(gh["permissions"]["checks"], "write");
    // Every secret the example target names comes from the CI's variables in both recipes.
    let target: toml::Table =
        toml::from_str(&std::fs::read_to_string(repo().join("docs/ci/staging.toml")).unwrap())
            .unwrap();
    let mut names = vec![];
    collect_env_names(&toml::Value::Table(target), &mut names);
    assert_eq!(names.len(), 5, "{names:?}");
    for n in &names {
        let gl_v = gl["vars"][n]
            .as_str()
            .unwrap_or_else(|| panic!("GitLab maps no {n}"));
        assert_eq!(gl_v, format!("$STAGING_{n}"));
        let gh_v = gh["env"][n]
            .as_str()
            .unwrap_or_else(|| panic!("GitHub maps no {n}"));
        assert_eq!(gh_v, format!("${{{{ secrets.STAGING_{n} }}}}"));
    }
    // The example target is one ferry accepts (ig-upgrade's `{{ git.commit }}` would read
    // its files root, which exists only on staging: validate with a playbook that does not).
    let sb = Sandbox::new();
    sb.run(&[
        "validate",
        repo().join("playbooks/monitoring.toml").to_str().unwrap(),
        "--target",
        repo().join("docs/ci/staging.toml").to_str().unwrap(),
    ])
    .expect(0);
    sb.finish();
}

fn collect_env_names(v: &toml::Value, out: &mut Vec<String>) {
    if let toml::Value::Table(t) = v {
        for (k, v) in t {
            match v {
                toml::Value::String(s) if k.ends_with("_env") => out.push(s.clone()),
                _ => collect_env_names(v, out),
            }
        }
    }
}

/// A directory laid out like the deployment repository: `playbooks/` (ferry's) and
/// `targets/staging.toml` (the sandbox's target, its relative paths made absolute).
fn workspace(s: &Sbx) -> PathBuf {
    let ws = s.sb.path("deploy-repo");
    std::fs::create_dir_all(ws.join("targets")).unwrap();
    std::os::unix::fs::symlink(repo().join("playbooks"), ws.join("playbooks")).unwrap();
    let t = std::fs::read_to_string(s.target())
        .unwrap()
        .replace(
            "secrets_file = \"secrets.env\"",
            &format!("secrets_file = \"{}\"", s.dir.join("secrets.env").display()),
        )
        .replace(
            "root = \"files\"",
            &format!("root = \"{}\"", s.dir.join("files").display()),
        );
    std::fs::write(ws.join("targets/staging.toml"), t).unwrap();
    ws
}

/// Runs a recipe's own shell line in the workspace, with `ferry` on the PATH.
fn sh(s: &Sbx, ws: &Path, line: &str, env: &[(&str, &str)]) -> Out {
    let path = format!(
        "{}:{}",
        bin().parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut c = Command::new("bash");
    c.args(["-euo", "pipefail", "-c", line])
        .current_dir(ws)
        .env("PATH", path)
        .env("FERRY_STATE_DIR", &s.sb.state)
        .env("NO_COLOR", "1");
    for (k, v) in env {
        c.env(k, v);
    }
    Out::from(c.output().unwrap())
}

/// (testcase names, failed ones, skipped ones) as ferry's events say it ran them.
fn ran(out: &Out) -> (Vec<String>, Vec<String>, Vec<String>) {
    let (mut cases, mut failed, mut skipped) = (vec![], vec![], vec![]);
    for e in out.events() {
        let s = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
        let name = match e["event"].as_str() {
            Some("check") => format!("{} check: {}", s("step"), s("check")),
            Some("step_finished") => s("step"),
            _ => continue,
        };
        match s("status").as_str() {
            "fail" | "failed" | "undo_failed" => failed.push(name.clone()),
            "deferred" | "pending" | "skipped" | "interrupted" => skipped.push(name.clone()),
            _ => {}
        }
        cases.push(name);
    }
    (cases, failed, skipped)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn sandbox_each_recipe_dry_run_writes_junit_that_junitparser_reads_as_ferry_ran_it() {
    if !require(
        "python3 with junitparser and PyYAML",
        have_python_packages(),
    ) {
        return;
    }
    let r = recipes();
    let Some(s) = Sbx::up(1) else { return };
    let ws = workspace(&s);
    let ig = |v: &str| {
        repo()
            .join(format!("fixtures/ig/bd.gov.dghs.core-{v}.tgz"))
            .display()
            .to_string()
    };
    let summary_step = r["github"]["after"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|s| {
            s["run"]
                .as_str()
                .filter(|r| r.contains("$GITHUB_STEP_SUMMARY"))
        })
        .unwrap()
        .to_owned();
    for recipe in ["gitlab", "github"] {
        let line = r[recipe]["dry_run"].as_str().unwrap();
        assert!(
            line.starts_with("ferry run playbooks/ig-upgrade.toml --target targets/staging.toml"),
            "{line}"
        );
        // 0.2.2 passes every check; 0.3.0's SHALL tightenings have no vendor notice.
        for (version, code) in [("0.2.2", 0), ("0.3.0", 3)] {
            let report = ws.join("report.xml");
            let _ = std::fs::remove_file(&report);
            let out = sh(
                &s,
                &ws,
                &format!("{line} --format json"),
                &[("IG_PACKAGE", &ig(version)), ("BUILD_VERSION", "1.1.0")],
            );
            out.expect(code);
            let (cases, failed, skipped) = ran(&out);
            assert!(cases.len() > 10, "{}", out.stdout);
            assert_eq!(failed.is_empty(), code == 0, "{failed:?}");
            let suites = python(READ_JUNIT, &[&report]);
            let suites = suites.as_array().unwrap();
            assert_eq!(suites.len(), 1, "{suites:?}");
            let suite = &suites[0];
            assert_eq!(suite["name"], "ferry.ig-upgrade");
            assert_eq!(strings(&suite["cases"]), cases, "{recipe} {version}");
            assert_eq!(strings(&suite["failed"]), failed, "{recipe} {version}");
            assert_eq!(strings(&suite["skips"]), skipped, "{recipe} {version}");
            assert_eq!(suite["tests"], cases.len());
            assert_eq!(suite["failures"], failed.len());
            assert_eq!(suite["skipped"], skipped.len());
            if code == 3 {
                assert!(
                    failed.contains(&"swap-ig check: notice".to_owned()),
                    "{failed:?}"
                );
            }
            if recipe == "github" {
                let md = ws.join("summary.md");
                let _ = std::fs::remove_file(&md);
                let summary = sh(
                    &s,
                    &ws,
                    &summary_step,
                    &[("GITHUB_STEP_SUMMARY", md.to_str().unwrap())],
                );
                summary.expect(0);
                let md = std::fs::read_to_string(&md).unwrap();
                let head = format!(
                    "### ferry.ig-upgrade: {} checks and steps, {} failed, {} deferred",
                    cases.len(),
                    failed.len(),
                    skipped.len()
                );
                assert!(md.contains(&head), "{md}");
                assert_eq!(md.matches("| ❌ |").count(), failed.len(), "{md}");
            }
        }
    }
    s.finish();
}
