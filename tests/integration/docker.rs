//! `image_build` + `image_push` through the real binary, against the real Docker engine and
//! a real `docker-registry` (htpasswd, deletes on). The image is the HAPI stand-in
//! (fixtures/hapi-standin), built as a static binary by `scripts/build-standin` into its
//! own target dir (`target/standin-build`, so no lock is shared with the running
//! `cargo test`); the first build takes ~10 s, later ones are no-ops.
//!
//! Every image and container a test makes carries `ferry.test=1` plus a per-test
//! `ferry.test.id`, and a Drop guard removes them by that label, also when a test fails.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use crate::harness::{
    Leftover, Out, Playbook, Sandbox, assert_no_leftovers, free_port, repo, require, toml_str,
    wait_for,
};
use crate::registry::{self, Registry};

const IG: &str = "bd.gov.dghs.core-0.2.1.tgz";
const OVERLAY: &str = "files/hapi-overlay";

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI")
}

fn engine_up() -> bool {
    Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .is_ok_and(|o| o.status.success())
}

pub fn standin_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = Command::new(repo().join("scripts/build-standin"))
            .env("CARGO_TARGET_DIR", repo().join("target/standin-build"))
            .output()
            .expect("scripts/build-standin");
        assert!(
            out.status.success(),
            "build-standin failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
    .clone()
}

/// Removes every container and image labelled with this test's id.
struct Guard(String);

impl Drop for Guard {
    fn drop(&mut self) {
        let filter = format!("label=ferry.test.id={}", self.0);
        let ids = |args: &[&str]| -> Vec<String> {
            String::from_utf8_lossy(&docker(args).stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        };
        let cs = ids(&["ps", "-aq", "--filter", &filter]);
        if !cs.is_empty() {
            docker(
                &[
                    &["rm", "-f"][..],
                    &cs.iter().map(String::as_str).collect::<Vec<_>>(),
                ]
                .concat(),
            );
        }
        let is = ids(&["image", "ls", "-q", "--filter", &filter]);
        let mut uniq = is.clone();
        uniq.dedup();
        if !uniq.is_empty() {
            docker(
                &[
                    &["rmi", "-f"][..],
                    &uniq.iter().map(String::as_str).collect::<Vec<_>>(),
                ]
                .concat(),
            );
        }
    }
}

struct Setup {
    sb: Sandbox,
    reg: Option<Registry>,
    /// The registry's port (nothing listens there when no registry was started).
    port: u16,
    id: String,
    _guard: Guard,
}

impl Setup {
    fn name(&self) -> String {
        format!("ferry-test/hapi-{}", self.id)
    }
    fn tag(&self) -> String {
        format!("127.0.0.1:{}/{}:1.1.0", self.port, self.name())
    }
    /// Ends the test: the registry, the sandbox and every container and image labelled
    /// with this test's id are removed, and nothing of them is left.
    fn finish(self) {
        let mut made = vec![Leftover::Docker(format!("ferry.test.id={}", self.id))];
        made.extend(self.reg.iter().flat_map(Registry::leftovers));
        made.extend(self.sb.leftovers());
        drop(self);
        assert_no_leftovers(&made);
    }

    fn run(&self, args: &[&str], password: &str) -> Out {
        self.sb.run_env(
            args,
            &[("REG_USER", registry::USER), ("REG_PASS", password)],
        )
    }
}

/// An overlay dir like the seed's, a target, and a playbook building + pushing the image.
/// `extra_target` is appended to the target, `extra_steps` adds steps after the push;
/// `start_registry` false: nothing listens.
fn setup(
    dockerfile: Option<&str>,
    build_args: &str,
    extra_target: &str,
    extra_steps: impl FnOnce(Playbook) -> Playbook,
    start_registry: bool,
) -> Option<Setup> {
    if !require("a Docker engine (docker.io)", engine_up()) {
        return None;
    }
    let reg = if start_registry {
        Some(Registry::start()?)
    } else {
        None
    };
    let id = format!("{}-{}", std::process::id(), free_port());
    let sb = Sandbox::new();
    let pkgs = sb.path(&format!("{OVERLAY}/src/main/resources/packages"));
    std::fs::create_dir_all(&pkgs).unwrap();
    std::fs::copy(repo().join("fixtures/ig").join(IG), pkgs.join(IG)).unwrap();
    std::fs::copy(standin_bin(), sb.path(&format!("{OVERLAY}/hapi-standin"))).unwrap();
    let df = match dockerfile {
        // The label comes first so the builder's intermediate images carry it too.
        Some(d) => d.replace("{ID}", &id),
        None => std::fs::read_to_string(repo().join("fixtures/hapi-standin/Dockerfile")).unwrap(),
    };
    sb.write(&format!("{OVERLAY}/Dockerfile"), &df);
    sb.write(&format!("{OVERLAY}/.dockerignore"), "target\n*.log\n");
    sb.write(
        &format!("{OVERLAY}/build.log"),
        "ignored by .dockerignore\n",
    );
    let files = sb.path("files");
    let git = |a: &[&str]| {
        let ok = Command::new("git")
            .arg("-C")
            .arg(&files)
            .args(a)
            .output()
            .unwrap();
        assert!(ok.status.success(), "git {a:?}");
    };
    git(&["init", "-q"]);
    git(&[
        "-c",
        "user.email=t@example",
        "-c",
        "user.name=t",
        "commit",
        "-q",
        "--allow-empty",
        "-m",
        "seed",
    ]);
    let port = reg.as_ref().map_or_else(free_port, |r| r.port);
    sb.write(
        "target.toml",
        &format!("name = \"docker-test\"\n\n[registry]\nurl = \"127.0.0.1:{port}\"\nusername_env = \"REG_USER\"\npassword_env = \"REG_PASS\"\n\n[files]\nroot = \"files\"\n{extra_target}"),
    );
    let s = Setup {
        sb,
        reg,
        port,
        id: id.clone(),
        _guard: Guard(id.clone()),
    };
    let tag = s.tag();
    let pb = Playbook::new("build-push")
        .step("build", "image_build")
        .str("context", OVERLAY)
        .raw("build_args", &format!("{{ {build_args} }}"))
        .raw("tags", &format!("[{}]", toml_str(&tag)))
        .table("labels", &[("ferry.test", "1"), ("ferry.test.id", &id)])
        .str(
            "ig_package",
            &format!("{OVERLAY}/src/main/resources/packages/{IG}"),
        )
        .step("push", "image_push")
        .str("image", &tag);
    extra_steps(pb).write(&s.sb, "pb.toml");
    Some(s)
}

const ARGS: &str = "IG_PACKAGE = \"bd.gov.dghs.core-0.2.1.tgz\", BUILD_VERSION = \"1.1.0\", GIT_COMMIT = \"{{ git.commit }}\"";

fn statuses(out: &Out) -> Vec<(String, String)> {
    out.events()
        .into_iter()
        .filter(|e| e["event"] == "step_finished")
        .map(|e| {
            (
                e["step"].as_str().unwrap_or("").to_owned(),
                e["status"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

fn pushed_digest(out: &Out) -> String {
    out.stdout
        .split("pushed ")
        .nth(1)
        .and_then(|s| s.split("sha256:").nth(1))
        .map(|s| format!("sha256:{}", &s[..64]))
        .unwrap_or_else(|| {
            panic!(
                "no `pushed … sha256:` in output:\n{}\n{}",
                out.stdout, out.stderr
            )
        })
}

fn image_labels(tag: &str) -> Option<serde_json::Value> {
    let o = docker(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config.Labels}}",
        tag,
    ]);
    o.status
        .success()
        .then(|| serde_json::from_slice(&o.stdout).unwrap())
}

#[test]
fn build_push_digest_rebuild_noop_then_rollback() {
    let Some(s) = setup(None, ARGS, "", |pb| pb, true) else {
        return;
    };
    let reg = s.reg.as_ref().unwrap();
    let run = [
        "--format",
        "json",
        "run",
        "pb.toml",
        "--target",
        "target.toml",
    ];
    let out = s.run(&run, registry::PASSWORD);
    out.expect(0);
    let digest = pushed_digest(&out);
    assert_eq!(
        reg.digest(&s.name(), "1.1.0").as_deref(),
        Some(digest.as_str())
    );
    let head = String::from_utf8_lossy(
        &Command::new("git")
            .args([
                "-C",
                s.sb.path("files").to_str().unwrap(),
                "rev-parse",
                "--short",
                "HEAD",
            ])
            .output()
            .unwrap()
            .stdout,
    )
    .trim()
    .to_owned();
    let labels = image_labels(&s.tag()).expect("image is there");
    assert_eq!(labels["org.opencontainers.image.version"], "1.1.0");
    assert_eq!(labels["org.opencontainers.image.revision"], head.as_str());
    assert_eq!(labels["bd.gov.dghs.ig.id"], "bd.gov.dghs.core");
    assert_eq!(labels["bd.gov.dghs.ig.version"], "0.2.1");
    assert_eq!(labels["ferry.test"], "1");

    // The image runs: the stand-in serves the IG version as software.version.
    let cid = String::from_utf8_lossy(
        &docker(&[
            "run",
            "-d",
            "--label",
            "ferry.test=1",
            "--label",
            &format!("ferry.test.id={}", s.id),
            "-p",
            "127.0.0.1::8080",
            &s.tag(),
        ])
        .stdout,
    )
    .trim()
    .to_owned();
    let port = String::from_utf8_lossy(&docker(&["port", &cid, "8080"]).stdout)
        .lines()
        .next()
        .and_then(|l| l.rsplit(':').next().map(str::to_owned))
        .expect("published port");
    let mut body = String::new();
    wait_for(
        "the stand-in's metadata",
        std::time::Duration::from_secs(20),
        || {
            let o = Command::new("curl")
                .args(["-sf", &format!("http://127.0.0.1:{port}/fhir/metadata")])
                .output()
                .unwrap();
            body = String::from_utf8_lossy(&o.stdout).into_owned();
            o.status.success()
        },
    );
    let meta: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(meta["software"]["version"], "0.2.1");

    // Again: both steps find their effect in place.
    let again = s.run(&run, registry::PASSWORD);
    again.expect(0);
    assert_eq!(
        statuses(&again),
        [
            ("build".into(), "skipped".into()),
            ("push".into(), "skipped".into())
        ]
    );

    // Rolling back the first run removes the local tag and the pushed manifest.
    docker(&["rm", "-f", &cid]);
    let first = s.sb.run_ids()[0].clone();
    s.run(&["rollback", &first], registry::PASSWORD).expect(0);
    assert!(image_labels(&s.tag()).is_none(), "the tag is still there");
    assert_eq!(reg.digest(&s.name(), "1.1.0"), None);
    s.finish();
}

#[test]
fn failure_after_push_rolls_back_tags_and_manifest() {
    let fail = |pb: Playbook| pb.exec("boom", "exit 7");
    let Some(s) = setup(None, ARGS, "", fail, true) else {
        return;
    };
    let out = s.run(
        &["run", "pb.toml", "--target", "target.toml"],
        registry::PASSWORD,
    );
    out.expect(1);
    assert!(image_labels(&s.tag()).is_none(), "the tag is still there");
    assert_eq!(s.reg.as_ref().unwrap().digest(&s.name(), "1.1.0"), None);
    s.finish();
}

#[test]
fn wrong_registry_password_fails_preflight() {
    let Some(s) = setup(None, ARGS, "", |pb| pb, true) else {
        return;
    };
    let out = s.run(
        &["run", "pb.toml", "--target", "target.toml"],
        "not-the-password",
    );
    out.expect(3);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(all.contains(&s.reg.as_ref().unwrap().host()), "{all}");
    assert!(all.contains("refused the credentials"), "{all}");
    assert!(!all.contains("not-the-password"), "a secret leaked: {all}");
    assert!(image_labels(&s.tag()).is_none(), "nothing may be built");
    s.finish();
}

#[test]
fn registry_down_fails_preflight() {
    let Some(s) = setup(None, ARGS, "", |pb| pb, false) else {
        return;
    };
    let out = s.run(
        &["run", "pb.toml", "--target", "target.toml"],
        registry::PASSWORD,
    );
    out.expect(3);
    assert!(
        format!("{}{}", out.stdout, out.stderr).contains("unreachable"),
        "{out:?}"
    );
    s.finish();
}

#[test]
fn docker_socket_absent_fails_dry_run() {
    let t = "\n[docker]\nhost = \"unix:///nonexistent.sock\"\n";
    let Some(s) = setup(None, ARGS, t, |pb| pb, true) else {
        return;
    };
    let out = s.run(
        &["run", "pb.toml", "--target", "target.toml", "--dry-run"],
        registry::PASSWORD,
    );
    out.expect(3);
    assert!(
        format!("{}{}", out.stdout, out.stderr).contains("/nonexistent.sock"),
        "{out:?}"
    );
    s.finish();
}

#[test]
fn bad_dockerfile_fails_with_the_builders_message() {
    let df = "FROM scratch\nLABEL ferry.test=1 ferry.test.id={ID}\nARG IG_PACKAGE\nARG BUILD_VERSION\nARG GIT_COMMIT\nCOPY no-such-file /x\n";
    let Some(s) = setup(Some(df), ARGS, "", |pb| pb, true) else {
        return;
    };
    let out = s.run(
        &["run", "pb.toml", "--target", "target.toml"],
        registry::PASSWORD,
    );
    out.expect(1);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(all.contains("no-such-file"), "{all}");
    assert!(image_labels(&s.tag()).is_none());
    s.finish();
}

#[test]
fn unknown_build_arg_is_invalid() {
    let args = format!("{ARGS}, IG_PAKAGE = \"x\"");
    let Some(s) = setup(None, &args, "", |pb| pb, false) else {
        return;
    };
    let out = s.sb.run(&["validate", "pb.toml"]);
    out.expect(2);
    assert!(out.stderr.contains("IG_PAKAGE"), "{}", out.stderr);
    s.run(
        &["run", "pb.toml", "--target", "target.toml"],
        registry::PASSWORD,
    )
    .expect(2);
    s.finish();
}
