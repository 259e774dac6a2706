//! `ferry doctor --target T` against a real sandbox (PostgreSQL, pgBouncer, Debian's
//! docker-registry, the Docker engine, docker-compose): green with exit 0, then every
//! component broken in turn (a wrong port, a revoked privilege, refused credentials, a
//! stopped process, a paused and an exited replica, a missing env file, an immutable
//! packages dir, a wrong socket). Each time: exit 3, that component's line says what is
//! wrong and how to fix it, and every other line stays ok. The sandbox is labelled
//! `ferry.test=1` and taken down at the end, leaving nothing.
//!
//! Docker tests are named `sandbox_*`: .config/nextest.toml puts `doctor::sandbox_` in the
//! `docker` group.

mod sbx;

use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{Out, Sandbox, require, wait_for};
pub use sbx::Sbx;

fn line<'a>(v: &'a serde_json::Value, component: &str) -> &'a serde_json::Value {
    v["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["component"] == component)
        .unwrap_or_else(|| panic!("no `{component}` line in {v:#}"))
}

/// Every line ok, exit 0.
#[track_caller]
fn assert_green(out: &Out, v: &serde_json::Value) {
    out.expect(0);
    assert_eq!(v["ok"], true, "{v:#}");
    for c in v["components"].as_array().unwrap() {
        assert_eq!(c["status"], "ok", "{c:#}");
    }
}

/// Exit 3; the first line of `broken` is a problem whose detail and fix say `what` and
/// `how` (all of each); the other lines of `broken` may fail with it; every other line is ok.
#[track_caller]
fn assert_broken(out: &Out, v: &serde_json::Value, broken: &[&str], what: &[&str], how: &[&str]) {
    out.expect(3);
    assert_eq!(v["ok"], false);
    for c in v["components"].as_array().unwrap() {
        let name = c["component"].as_str().unwrap();
        if !broken.contains(&name) {
            assert_eq!(c["status"], "ok", "only {broken:?} should fail: {c:#}");
        }
    }
    let c = line(v, broken[0]);
    assert_eq!(c["status"], "problem", "{c:#}");
    let (detail, fix) = (c["detail"].as_str().unwrap(), c["fix"].as_str().unwrap());
    for w in what {
        assert!(detail.contains(w), "`{w}` not in the detail: {c:#}");
    }
    for h in how {
        assert!(fix.contains(h), "`{h}` not in the fix: {c:#}");
    }
}

fn signal(pid: u64, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

fn docker(args: &[&str]) {
    let o = Command::new("docker").args(args).output().unwrap();
    assert!(
        o.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn a_target_that_does_not_parse_is_explained_with_its_location() {
    let sb = Sandbox::new();
    let t = sb.write(
        "t.toml",
        "name = \"staging\"\n\n[registy]\nurl = \"registry:5000\"\n",
    );
    let out = sb.run(&["doctor", "--target", t.to_str().unwrap()]);
    out.expect(2);
    assert!(
        out.stderr.contains("unknown key `registy`"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("t.toml:3:2"), "{}", out.stderr);
    assert!(
        out.stderr.contains("did you mean `registry`?"),
        "{}",
        out.stderr
    );
    let t = sb.write("bad.toml", "name = \"staging\n");
    let out = sb.run(&["doctor", "--target", t.to_str().unwrap()]);
    out.expect(2);
    assert!(out.stderr.contains("bad.toml:1:"), "{}", out.stderr);
    sb.finish();
}

#[test]
fn a_target_naming_nothing_skips_every_component_and_is_green() {
    let sb = Sandbox::new();
    let t = sb.write("t.toml", "name = \"empty\"\n");
    let out = sb.run(&["doctor", "--target", t.to_str().unwrap()]);
    out.expect(0);
    for c in [
        "docker",
        "registry",
        "postgres",
        "pgbouncer",
        "fhir",
        "files",
    ] {
        assert!(
            out.stdout
                .lines()
                .any(|l| l.starts_with("skip") && l.contains(c)),
            "no skip line for {c}:\n{}",
            out.stdout
        );
    }
    sb.finish();
}

#[test]
fn sandbox_doctor_green_then_each_component_broken_in_turn() {
    let Some(s) = Sbx::up(2) else { return };
    let target = s.target_file();
    let st = s.state();

    // Green, in both forms.
    let human = s.sb.run(&["doctor", "--target", target.to_str().unwrap()]);
    human.expect(0);
    assert!(human.stdout.contains("all good"), "{}", human.stdout);
    let (out, v) = s.doctor(&target, &[]);
    assert_green(&out, &v);
    let names: Vec<&str> = v["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["component"].as_str().unwrap())
        .collect();
    // The compose stack's target also names the superuser pg_setting restarts through.
    let mut expected = vec![
        "docker",
        "compose",
        "registry",
        "postgres.audit",
        "postgres.fhir",
    ];
    if s.stack == "compose" {
        expected.push("postgres.fhir_admin");
    }
    expected.extend(["pgbouncer", "fhir", "files"]);
    assert_eq!(names, expected);
    assert!(
        line(&v, "compose")["detail"]
            .as_str()
            .unwrap()
            .contains("2 replica(s) running, 2 healthy")
    );
    assert!(
        line(&v, "postgres.fhir")["detail"]
            .as_str()
            .unwrap()
            .contains("PostgreSQL 15")
    );
    assert!(
        line(&v, "registry")["detail"]
            .as_str()
            .unwrap()
            .contains("answered 200")
    );
    assert!(
        line(&v, "fhir")["detail"]
            .as_str()
            .unwrap()
            .contains("CapabilityStatement, FHIR 4.0.1")
    );

    // PostgreSQL on a wrong port.
    let pg_port = st["pg_port"].as_u64().unwrap();
    let wrong = crate::harness::free_port();
    let t = s.variant(
        "pg-port",
        &format!("hapi@127.0.0.1:{pg_port}/"),
        &format!("hapi@127.0.0.1:{wrong}/"),
    );
    let (out, v) = s.doctor(&t, &[]);
    assert_broken(
        &out,
        &v,
        &["postgres.fhir"],
        &["Connection refused"],
        &["is the server running", &wrong.to_string()],
    );

    // PostgreSQL stopped in its tracks (SIGSTOP on the host stack's postmaster, both
    // database containers paused on compose: the kernel still accepts the connection,
    // nobody answers it): both database lines, after the timeout.
    s.freeze_databases(true);
    let t0 = Instant::now();
    let (out, v) = s.doctor(&target, &["--timeout", "2s"]);
    let took = t0.elapsed();
    s.freeze_databases(false);
    assert_broken(
        &out,
        &v,
        &["postgres.fhir", "postgres.audit", "postgres.fhir_admin"],
        &["no answer from postgres://hapi@", "within 2s"],
        &["hung or stopped"],
    );
    assert_eq!(line(&v, "postgres.audit")["status"], "problem");
    if s.stack == "compose" {
        assert_eq!(line(&v, "postgres.fhir_admin")["status"], "problem");
    }
    assert!(
        took < Duration::from_secs(15),
        "a stopped PostgreSQL held doctor for {took:?}"
    );

    // A role lacking what the checks need, then a login lacking the audit function.
    s.psql_in("fhirdb", "REVOKE pg_read_all_stats FROM hapi");
    let (out, v) = s.doctor(&target, &[]);
    assert_broken(
        &out,
        &v,
        &["postgres.fhir"],
        &["lacks membership of pg_read_all_stats"],
        &["GRANT pg_read_all_stats TO \"hapi\";"],
    );
    s.psql_in("fhirdb", "GRANT pg_read_all_stats TO hapi");
    s.psql_in("auditdb", "REVOKE EXECUTE ON FUNCTION audit.create_partitions_ahead(integer), audit.create_next_month_partitions() FROM audit_maintainer_login");
    let (out, v) = s.doctor(&target, &[]);
    assert_broken(
        &out,
        &v,
        &["postgres.audit"],
        &["lacks EXECUTE on audit.create_partitions_ahead"],
        &[
            "GRANT EXECUTE ON FUNCTION audit.create_partitions_ahead(integer) TO \"audit_maintainer_login\"",
        ],
    );
    s.psql_in("auditdb", "GRANT EXECUTE ON FUNCTION audit.create_partitions_ahead(integer), audit.create_next_month_partitions() TO audit_maintainer_login");

    // Registry credentials it refuses, then a registry that accepts but never answers.
    let t = s.variant(
        "registry-creds",
        "password_env = \"SANDBOX_REGISTRY_PASSWORD\"",
        "password_env = \"SANDBOX_AUDIT_DB_PASSWORD\"",
    );
    let (out, v) = s.doctor(&t, &[]);
    assert_broken(
        &out,
        &v,
        &["registry"],
        &["answered 401 Unauthorized", "as `sandbox`"],
        &["refused the credentials from $SANDBOX_REGISTRY_USER/$SANDBOX_AUDIT_DB_PASSWORD"],
    );
    let registry = st["registry_pid"].as_u64().unwrap();
    signal(registry, "-STOP");
    let t0 = Instant::now();
    let (out, v) = s.doctor(&target, &["--timeout", "2s"]);
    let took = t0.elapsed();
    signal(registry, "-CONT");
    assert_broken(
        &out,
        &v,
        &["registry"],
        &["no answer from the registry", "within 2s"],
        &["hung or stopped"],
    );
    assert!(
        took < Duration::from_secs(15),
        "a stopped registry held doctor for {took:?}"
    );

    // The FHIR base URL wrong.
    let t = s.variant("fhir-url", "/fhir\"", "/fhir-typo\"");
    let (out, v) = s.doctor(&t, &[]);
    assert_broken(
        &out,
        &v,
        &["fhir"],
        &["fhir-typo/metadata answered 404"],
        &["set [fhir] base_url"],
    );

    // The env file missing, then the packages dir not writable (even for root).
    let files = s.dir.join("files");
    std::fs::rename(files.join(".env"), files.join(".env.away")).unwrap();
    let (out, v) = s.doctor(&target, &[]);
    std::fs::rename(files.join(".env.away"), files.join(".env")).unwrap();
    assert_broken(
        &out,
        &v,
        &["files"],
        &["cannot read the env file", "No such file"],
        &["env_file"],
    );
    std::fs::write(
        files.join("broken.env"),
        "HAPI_IMAGE=x\nthis is not a setting\n",
    )
    .unwrap();
    let t = s.variant(
        "env-syntax",
        "env_file = \".env\"",
        "env_file = \"broken.env\"",
    );
    let (out, v) = s.doctor(&t, &[]);
    assert_broken(
        &out,
        &v,
        &["files"],
        &["broken.env:2: not a KEY=VALUE line"],
        &["fix that line"],
    );
    let packages = files.join("hapi-overlay/src/main/resources/packages");
    let immutable = Command::new("chattr")
        .arg("+i")
        .arg(&packages)
        .status()
        .is_ok_and(|s| s.success());
    if require("chattr +i (CAP_LINUX_IMMUTABLE)", immutable) {
        let (out, v) = s.doctor(&target, &[]);
        let undone = Command::new("chattr")
            .arg("-i")
            .arg(&packages)
            .status()
            .unwrap();
        assert!(undone.success());
        assert_broken(
            &out,
            &v,
            &["files"],
            &["cannot write in", "packages"],
            &["give this user write access"],
        );
    }

    // A paused replica, then an exited one: each named, with the command that fixes it.
    let (one, two) = (s.hapi_replica(1), s.hapi_replica(2));
    // The front door (nginx, or the host stack's round-robin proxy) still sends requests to
    // the paused replica, where they hang: the fhir line may time out with it.
    docker(&["pause", &two]);
    let (out, v) = s.doctor(&target, &["--timeout", "3s"]);
    docker(&["unpause", &two]);
    assert_broken(
        &out,
        &v,
        &["compose", "fhir"],
        &["1 of 2 replica(s) ready", &format!("{two} is paused")],
        &[&format!("docker unpause {two}")],
    );
    docker(&["stop", "-t", "1", &one]);
    let (out, v) = s.doctor(&target, &[]);
    docker(&["start", &one]);
    assert_broken(
        &out,
        &v,
        &["compose"],
        &[&format!("{one} is exited")],
        &[&format!("docker start {one}")],
    );
    wait_for(
        "the restarted replica to be healthy",
        Duration::from_secs(60),
        || s.doctor(&target, &[]).0.code == Some(0),
    );

    // The wrong Docker socket: the engine's line and the compose service's.
    let t = s.variant(
        "socket",
        "[docker]\n",
        "[docker]\nhost = \"unix:///nonexistent/docker.sock\"\n",
    );
    let (out, v) = s.doctor(&t, &[]);
    assert_broken(
        &out,
        &v,
        &["docker", "compose"],
        &["unix:///nonexistent/docker.sock: no such socket"],
        &["fix [docker] host"],
    );
    assert_eq!(line(&v, "compose")["status"], "problem");

    // pgBouncer down, and what the human form says about it; then `sandbox up` restarts it
    // and doctor is green again.
    s.stop_bouncer();
    let (out, v) = s.doctor(&target, &[]);
    assert_broken(
        &out,
        &v,
        &["pgbouncer"],
        &["Connection refused"],
        &["is the server running"],
    );
    let human = s.sb.run(&["doctor", "--target", target.to_str().unwrap()]);
    human.expect(3);
    let fail: Vec<&str> = human
        .stdout
        .lines()
        .filter(|l| l.starts_with("FAIL"))
        .collect();
    assert_eq!(fail.len(), 1, "{}", human.stdout);
    assert!(
        fail[0].starts_with("FAIL pgbouncer") && fail[0].contains(" — fix: "),
        "{}",
        fail[0]
    );
    assert!(
        human.stdout.contains(&format!(
            "1 of {} components need attention (exit 3)",
            expected.len()
        )),
        "{}",
        human.stdout
    );
    s.sb.run(&["sandbox", "up", "--dir", s.dir.to_str().unwrap()])
        .expect(0);
    let (out, v) = s.doctor(&target, &[]);
    assert_green(&out, &v);
    s.finish();
}
