//! `ferry sandbox` and the release engineers' procedures on it, for real: PostgreSQL,
//! pgBouncer, Debian's docker-registry, the Docker engine and docker-compose v1. Each test
//! starts its own sandbox (labelled `ferry.test=1`) and takes it down again.
//! They run on the default `--stack compose` (nginx, pgBouncer and PostgreSQL containers;
//! sandbox_compose.rs has that stack's own tests), or on `--stack host` with
//! `FERRY_TEST_SANDBOX_STACK=host`.

use std::process::Command;

use crate::harness::{Playbook, repo};
pub use crate::sandbox_harness::Sbx;

fn ig(name: &str) -> String {
    repo().join("fixtures/ig").join(name).display().to_string()
}

#[test]
fn sandbox_up_twice_status_then_down_leaves_nothing_behind() {
    // Under a directory only root may search (like /root): PostgreSQL, which runs as
    // `postgres`, then keeps its files in a temp dir that `down` removes as well.
    let Some(s) = Sbx::up_private(1) else { return };
    let state = s.state();
    let st =
        s.sb.run(&["sandbox", "status", "--dir", s.dir.to_str().unwrap()]);
    st.expect(0);
    assert!(
        st.stdout.contains("software.version 0.2.1"),
        "{}",
        st.stdout
    );
    let again =
        s.sb.run(&["sandbox", "up", "--dir", s.dir.to_str().unwrap()]);
    again.expect(0);
    assert!(again.stdout.contains("already set up"), "{}", again.stdout);
    // The target it wrote works: the database, pgBouncer and the registry answer.
    let out = s.run(&[
        "run",
        "--dry-run",
        &repo()
            .join("playbooks/scale-replicas.toml")
            .display()
            .to_string(),
        "--var",
        "replicas=1",
    ]);
    out.expect(0);
    if s.stack == "host" {
        let service_dir = std::path::PathBuf::from(
            state["service_dir"]
                .as_str()
                .expect("a service dir outside the private one"),
        );
        assert!(service_dir.join("pg/data").is_dir());
    }
    s.finish();
}

#[test]
fn ig_upgrade_end_to_end_replica_by_replica() {
    let Some(s) = Sbx::up(3) else { return };
    assert_eq!(s.version(), "0.2.1");
    let before = s.replicas();
    let pb = repo()
        .join("playbooks/ig-upgrade.toml")
        .display()
        .to_string();
    let out = s.run(&[
        "run",
        &pb,
        "--var",
        &format!("ig_package={}", ig("bd.gov.dghs.core-0.2.2.tgz")),
        "--var",
        "build_version=1.1.0",
    ]);
    out.expect(0);
    assert_eq!(s.version(), "0.2.2");
    let after = s.replicas();
    assert_eq!(after.len(), 3);
    for ((n0, img0, id0), (n1, img1, id1)) in before.iter().zip(&after) {
        assert_eq!(n0, n1, "replicas keep their names");
        assert_ne!(img0, img1, "{n1} runs the new image");
        assert_ne!(id0, id1, "{n1} is a new container");
    }
    let env = std::fs::read_to_string(s.dir.join("files/.env")).unwrap();
    assert!(
        env.contains("/bd-fhir-hapi:1.1.0") && env.contains("HAPI_IG_VERSION=0.2.2"),
        "{env}"
    );
    let (ok, ps) = s.compose(&["ps"]);
    // The host stack's proxy has no health check; the compose stack's services all do.
    let healthy_others = if s.stack == "compose" {
        s.other_services()
    } else {
        0
    };
    assert!(
        ok && ps.matches("Up (healthy)").count() == 3 + healthy_others,
        "{ps}"
    );
    s.assert_compose_agrees(3);
    s.finish();
}

#[test]
fn killed_between_two_replicas_then_resumed() {
    let Some(s) = Sbx::up(3) else { return };
    let pb = repo()
        .join("playbooks/ig-upgrade.toml")
        .display()
        .to_string();
    let t = s.target();
    let pkg = format!("ig_package={}", ig("bd.gov.dghs.core-0.2.2.tgz"));
    // Checkpoints of `rollout`: previous image, env edit, then two per replaced replica
    // (the one it starts on, then that it is done): #4 is replica 1 done.
    let out = s.sb.run_env(
        &[
            "run",
            &pb,
            "--target",
            &t,
            "--var",
            &pkg,
            "--var",
            "build_version=1.1.0",
        ],
        &[("FERRY_FAILPOINT", "checkpoint:rollout#4")],
    );
    assert_eq!(out.signal, Some(9), "{}", out.stderr);
    let imgs: Vec<String> = s.replicas().into_iter().map(|r| r.1).collect();
    assert_eq!(imgs.len(), 3);
    assert_ne!(imgs[0], imgs[1], "replica 1 replaced, 2 not yet: {imgs:?}");
    assert_eq!(imgs[1], imgs[2]);
    let out = s.sb.run(&["resume"]);
    out.expect(0);
    assert!(
        out.stderr.contains("replacing")
            && !out
                .stderr
                .contains(&format!("replacing {}_hapi_1 ", s.project())),
        "replica 1 is not replaced twice:\n{}",
        out.stderr
    );
    let imgs: Vec<String> = s.replicas().into_iter().map(|r| r.1).collect();
    assert!(imgs.iter().all(|i| *i == imgs[0]), "{imgs:?}");
    assert_eq!(s.version(), "0.2.2");
    s.finish();
}

#[test]
fn an_image_that_never_turns_healthy_or_reports_the_wrong_version_is_rolled_back() {
    let Some(s) = Sbx::up(2) else { return };
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.dir.join("sandbox.json")).unwrap()).unwrap();
    let current = state["image"].as_str().unwrap().to_owned();
    let env_before = std::fs::read_to_string(s.dir.join("files/.env")).unwrap();
    let ctx = s.sb.path("bad");
    std::fs::create_dir_all(&ctx).unwrap();
    for (tag, extra) in [
        ("never-healthy", "ENV STANDIN_FAIL=1"),
        ("same-ig", "LABEL variant=same-ig"),
    ] {
        std::fs::write(
            ctx.join("Dockerfile"),
            format!("FROM {current}\nLABEL ferry.test=1\n{extra}\n"),
        )
        .unwrap();
        let o = Command::new("docker")
            .args(["build", "-q", "-t", &format!("ferry-test-{tag}:1")])
            .arg(&ctx)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let before = s.replicas();
    let rollout = |name: &str, image: &str| {
        Playbook::new(name)
            .step("rollout", "rolling_redeploy")
            .str("image", image)
    };
    rollout("bad", "ferry-test-never-healthy:1")
        .str("health_timeout", "6s")
        .write(&s.sb, "bad.toml");
    let out = s.run(&["run", "bad.toml"]);
    out.expect(1);
    let first = format!("{}_hapi_1", s.project());
    assert!(
        out.stderr.contains(&format!(
            "{first}-ferry-next did not pass its gate within 6s"
        )),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains(&format!("replica {first} kept on its old image")),
        "{}",
        out.stderr
    );
    assert_eq!(
        s.replicas(),
        before,
        "the old replicas are untouched (same containers)"
    );
    assert_eq!(
        std::fs::read_to_string(s.dir.join("files/.env")).unwrap(),
        env_before
    );
    // An image that is healthy but serves the old IG: the version gate stops it.
    let wrong = |image: &str| {
        rollout("wrong", image)
            .str("verify_version", "0.3.0")
            .str("health_timeout", "8s")
    };
    wrong("ferry-test-same-ig:1").write(&s.sb, "wrong.toml");
    let out = s.run(&["run", "wrong.toml"]);
    out.expect(1);
    assert!(
        out.stderr
            .contains("reports software.version \"0.2.1\", expected \"0.3.0\""),
        "{}",
        out.stderr
    );
    assert_eq!(s.replicas(), before);
    assert_eq!(s.version(), "0.2.1");
    // An unknown service and an image that does not exist: refused before anything changes.
    wrong("ferry-test-same-ig:1")
        .str("service", "hapy")
        .write(&s.sb, "nosvc.toml");
    let out = s.run(&["run", "nosvc.toml"]);
    out.expect(3);
    let want = format!(
        "no running replica of service `hapy` in compose project `{}`",
        s.project()
    );
    assert!(out.stderr.contains(&want), "{}", out.stderr);
    wrong("ferry-test-missing:9").write(&s.sb, "noimg.toml");
    let out = s.run(&["run", "noimg.toml"]);
    out.expect(3);
    assert!(
        out.stderr
            .contains("image ferry-test-missing:9 is not on this Docker host"),
        "{}",
        out.stderr
    );
    assert_eq!(s.replicas(), before);
    for tag in ["never-healthy", "same-ig"] {
        let _ = Command::new("docker")
            .args(["rmi", "-f", &format!("ferry-test-{tag}:1")])
            .output();
    }
    s.finish();
}

#[test]
fn scaling_1_to_3_passes_and_to_5_is_refused_by_the_pools() {
    let Some(s) = Sbx::up(1) else { return };
    let pb = repo()
        .join("playbooks/scale-replicas.toml")
        .display()
        .to_string();
    let out = s.run(&["run", &pb, "--var", "replicas=5"]);
    out.expect(3);
    assert!(
        out.stderr.contains("5 × 5 = 25 > 20 (pgBouncer pool)"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("raise pgBouncer's default_pool_size to at least 25"),
        "{}",
        out.stderr
    );
    assert_eq!(s.replicas().len(), 1, "nothing changed");
    let out = s.run(&["run", &pb, "--var", "replicas=3"]);
    out.expect(0);
    assert!(
        out.stderr
            .contains("3 × 5 = 15 ≤ 20 (pgBouncer pool), 5 headroom"),
        "{}",
        out.stderr
    );
    assert_eq!(s.replicas().len(), 3);
    let (ok, up) = s.compose(&["up", "-d", "--scale", "hapi=3"]);
    assert!(
        ok && !up.contains("Creating") && !up.contains("Recreating"),
        "compose sees the scaled service as its own:\n{up}"
    );
    let id = s.sb.run_ids().pop().unwrap();
    s.sb.run(&["rollback", &id]).expect(0);
    assert_eq!(s.replicas().len(), 1);
    s.finish();
}

/// `docker unpause NAME` when dropped (a failing test must not leave a paused replica that
/// `sandbox down` would trip over); declared after the sandbox, so it runs first.
struct Unpause(String);

impl Drop for Unpause {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["unpause", &self.0]).output();
    }
}

pub fn docker(args: &[&str]) -> String {
    let o = Command::new("docker").args(args).output().unwrap();
    assert!(
        o.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

#[test]
fn a_paused_replica_fails_the_rollout_its_checks_and_scale_instead_of_being_skipped() {
    let Some(s) = Sbx::up(3) else { return };
    let current = s.state()["image"].as_str().unwrap().to_owned();
    let ctx = s.sb.path("variant");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {current}\nLABEL ferry.test=1\nLABEL variant=paused\n"),
    )
    .unwrap();
    let image = "ferry-test-paused:1";
    docker(&["build", "-q", "-t", image, ctx.to_str().unwrap()]);
    let third = format!("{}_hapi_3", s.project());
    let before = s.replicas();
    let env_before = std::fs::read_to_string(s.dir.join("files/.env")).unwrap();
    let rollout = |name: &str| {
        Playbook::new(name)
            .step("rollout", "rolling_redeploy")
            .str("image", image)
            .str("health_timeout", "30s")
    };
    rollout("rollout").write(&s.sb, "rollout.toml");
    Playbook::new("each")
        .step("each", "metadata_check")
        .raw("per_replica", "true")
        .write(&s.sb, "each.toml");
    Playbook::new("scale")
        .step("scale", "scale")
        .raw("replicas", "4")
        .write(&s.sb, "scale.toml");
    let paused = format!("{third} is paused: unpause it with `docker unpause {third}`");

    // Paused before the run: every check that lists the replicas fails, naming it.
    docker(&["pause", &third]);
    let guard = Unpause(third.clone());
    for pb in ["rollout.toml", "each.toml", "scale.toml"] {
        for dry in [true, false] {
            let mut args = vec!["run", pb];
            if dry {
                args.push("--dry-run");
            }
            let out = s.run(&args);
            out.expect(3);
            assert!(out.stderr.contains(&paused), "{pb}: {}", out.stderr);
        }
    }
    assert_eq!(s.replicas(), before, "nothing replaced, nothing added");
    docker(&["unpause", &third]);

    // Paused after the preflight (as during a long image build): refused right before the
    // rollout's apply, nothing replaced, the earlier step undone.
    let late = format!(
        "name = \"late\"\n\n[[steps]]\nid = \"pause\"\nkind = \"exec\"\nrun = \"docker pause {third}\"\nundo = \"docker unpause {third}\"\n\n[[steps]]\nid = \"rollout\"\nkind = \"rolling_redeploy\"\nimage = \"{image}\"\nhealth_timeout = \"30s\"\n"
    );
    s.sb.write("late.toml", &late);
    let out = s.run(&["run", "late.toml"]);
    out.expect(1);
    assert!(out.stderr.contains(&paused), "{}", out.stderr);
    assert_eq!(s.replicas(), before, "nothing replaced");
    assert_eq!(
        std::fs::read_to_string(s.dir.join("files/.env")).unwrap(),
        env_before
    );
    assert_eq!(
        docker(&["inspect", "--format", "{{.State.Status}}", &third]),
        "running",
        "the rollback unpaused it"
    );

    // Stopped: the same, with what to do for a stopped container.
    docker(&["stop", "-t", "1", &third]);
    let out = s.run(&["run", "--dry-run", "rollout.toml"]);
    out.expect(3);
    assert!(
        out.stderr.contains(&format!("{third} is exited"))
            && out.stderr.contains(&format!("`docker start {third}`")),
        "{}",
        out.stderr
    );
    docker(&["start", &third]);
    wait_healthy(&third);

    // Every replica running: the rollout replaces all three.
    drop(guard);
    let out = s.run(&["run", "rollout.toml"]);
    out.expect(0);
    let img = docker(&["inspect", "--format", "{{.Id}}", image]);
    let after = s.replicas();
    assert_eq!(after.len(), 3);
    assert!(after.iter().all(|r| r.1 == img), "{after:?}");
    let _ = Command::new("docker").args(["rmi", "-f", image]).output();
    s.finish();
}

pub fn wait_healthy(name: &str) {
    crate::harness::wait_for(
        &format!("{name} healthy"),
        std::time::Duration::from_secs(60),
        || {
            Command::new("docker")
                .args(["inspect", "--format", "{{.State.Health.Status}}", name])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "healthy")
        },
    );
}

#[test]
fn a_tag_of_the_running_image_is_rolled_out_so_compose_agrees_afterwards() {
    let Some(s) = Sbx::up(3) else { return };
    let current = s.state()["image"].as_str().unwrap().to_owned();
    let promoted = format!("{current}-promoted");
    docker(&["tag", &current, &promoted]);
    let before = s.replicas();
    Playbook::new("promote")
        .step("rollout", "rolling_redeploy")
        .str("image", &promoted)
        .str("verify_version", "0.2.1")
        .str("health_timeout", "30s")
        .write(&s.sb, "promote.toml");
    let out = s.run(&["run", "promote.toml"]);
    out.expect(0);
    let env = std::fs::read_to_string(s.dir.join("files/.env")).unwrap();
    assert!(env.contains(&format!("HAPI_IMAGE={promoted}\n")), "{env}");
    let after = s.replicas();
    assert_eq!(after.len(), 3);
    for ((n0, img0, id0), (n1, img1, id1)) in before.iter().zip(&after) {
        assert_eq!(n0, n1, "replicas keep their names");
        assert_eq!(img0, img1, "{n1}: the same image id");
        assert_ne!(
            id0, id1,
            "{n1} is replaced: compose's config hash names the new tag"
        );
    }
    s.assert_compose_agrees(3);
    assert_eq!(s.replicas(), after, "no container recreated by `up -d`");
    assert_eq!(s.version(), "0.2.1");
    // Rolled back: the old tag in .env, and compose agrees again.
    let id = s.sb.run_ids().pop().unwrap();
    s.sb.run(&["rollback", &id]).expect(0);
    let env = std::fs::read_to_string(s.dir.join("files/.env")).unwrap();
    assert!(env.contains(&format!("HAPI_IMAGE={current}\n")), "{env}");
    let back = s.replicas();
    s.assert_compose_agrees(3);
    assert_eq!(s.replicas(), back, "no container recreated by `up -d`");
    let _ = Command::new("docker").args(["rmi", &promoted]).output();
    s.finish();
}
