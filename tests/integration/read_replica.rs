//! playbooks/add-read-replica.toml on the compose sandbox, on one sandbox for every
//! assertion (CI time): `replication-slots` alerts on an inactive slot retaining WAL and
//! `replication-lag` on a missing standby; a run killed by SIGKILL right after the base
//! backup started (FERRY_FAILPOINT) resumes, starts the backup again and ends streaming;
//! HAPI's reads go to the replica (a row written while the replica's replay is paused is
//! 404 through nginx until replay resumes); rollback leaves no replica container, volume,
//! backup container, slot, role, override file or env line, and HAPI reads the primary again.
//! Docker: in the nextest `docker` group.

use std::process::Command;
use std::time::Duration;

use crate::harness::{repo, wait_for};
use crate::sandbox::Sbx;

const SERVICE: &str = "postgres-fhir-replica";

fn docker_ok(args: &[&str]) -> (bool, String) {
    let o = Command::new("docker").args(args).output().unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout).trim(),
            String::from_utf8_lossy(&o.stderr).trim()
        ),
    )
}

/// SQL as postgres inside the replica's container (its socket: the host never connects to
/// a container address).
fn on_replica(s: &Sbx, sql: &str) -> String {
    let name = format!("{}_{SERVICE}_1", s.project());
    let (ok, out) = docker_ok(&[
        "exec", "-u", "postgres", &name, "psql", "-h", "/tmp", "-U", "postgres", "-d", "fhirdb",
        "-XAtq", "-c", sql,
    ]);
    assert!(ok, "{sql} on the replica: {out}");
    out
}

/// (HTTP status, body) of a request through nginx.
fn http(s: &Sbx, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args(["-sS", "-m", "10", "-X", method, "-w", "\n%{http_code}"])
        .args(["-H", "Content-Type: application/fhir+json"]);
    if let Some(b) = body {
        c.args(["--data", b]);
    }
    let o = c.arg(format!("{}{path}", s.base_url())).output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn create_patient(s: &Sbx, family: &str) -> String {
    let (code, body) = http(
        s,
        "POST",
        "/Patient",
        Some(&format!(
            r#"{{"resourceType":"Patient","name":[{{"family":"{family}"}}]}}"#
        )),
    );
    assert_eq!(code, 201, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["id"].as_str().unwrap().to_owned()
}

fn env_file(s: &Sbx) -> String {
    std::fs::read_to_string(s.dir.join("files/.env")).unwrap()
}

#[test]
fn read_replica_streams_serves_hapi_reads_survives_a_kill_in_the_base_backup_and_rolls_back_clean()
{
    let Some(s) = Sbx::up_compose(1) else { return };
    let t0 = std::time::Instant::now();
    let project = s.project();
    // The sandbox's target has a superuser's [postgres.fhir_admin]; add the replication
    // role's password.
    let target = std::fs::read_to_string(s.target()).unwrap();
    assert!(target.contains("[postgres.fhir_admin]"), "{target}");
    let mut secrets = std::fs::read_to_string(s.dir.join("secrets.env")).unwrap();
    secrets.push_str("FHIR_REPLICA_PASSWORD=replica-pw-for-the-test\n");
    std::fs::write(s.dir.join("secrets.env"), secrets).unwrap();
    let env_before = env_file(&s);
    let hba_rules = "SELECT count(*) FROM pg_hba_file_rules WHERE 'replication' = ANY(database)";
    let hba_before = s.psql(hba_rules);
    let check = |name: &str, extra: &[&str]| {
        let mut a = vec!["check", name, "--set", "database=fhir_admin"];
        a.extend_from_slice(extra);
        s.run(&a)
    };

    // The checks before there is a replica: no standby is an ALERT; a forgotten slot that
    // retains WAL is an ALERT, and OK once dropped.
    let lag = check("replication-lag", &[]);
    assert_eq!(lag.code, Some(1), "{}{}", lag.stdout, lag.stderr);
    s.psql("SELECT pg_create_physical_replication_slot('forgotten', true)");
    s.psql("CREATE TABLE wal_filler AS SELECT g, md5(g::text) FROM generate_series(1, 20000) g; DROP TABLE wal_filler");
    let slots = check("replication-slots", &["--set", "max_retained=64kB"]);
    assert_eq!(slots.code, Some(1), "{}{}", slots.stdout, slots.stderr);
    assert!(slots.stdout.contains("forgotten"), "{}", slots.stdout);
    s.psql("SELECT pg_drop_replication_slot('forgotten')");
    check("replication-slots", &["--set", "max_retained=64kB"]).expect(0);

    // A patient written before the replica exists.
    let before = create_patient(&s, "Before");

    // SIGKILL right after the base backup container started (the replica step's 4th
    // checkpoint: probed, primary, defined, backing up); the backup is left running.
    let playbook = repo().join("playbooks/add-read-replica.toml");
    let vars = [
        "run",
        playbook.to_str().unwrap(),
        "--yes",
        "--var",
        "hapi_version=0.2.1",
        "--var",
        "wait_timeout=90s",
    ];
    let mut args: Vec<&str> = vars.to_vec();
    let t = s.target();
    args.extend_from_slice(&["--target", &t]);
    let killed =
        s.sb.run_env(&args, &[("FERRY_FAILPOINT", "checkpoint:replica#4")]);
    assert_eq!(killed.code, None, "killed: {}", killed.stderr);
    let backup = format!("{project}_{SERVICE}_basebackup");
    let (exists, _) = docker_ok(&["inspect", &backup]);
    assert!(exists, "the killed run left its base backup container");
    let id = s.sb.run_ids().into_iter().next().unwrap();
    let t_resume = std::time::Instant::now();
    let resumed = s.sb.run(&["resume", &id]);
    resumed.expect(0);
    eprintln!(
        "resume (base backup again, streaming, 2 rolls): {:?}",
        t_resume.elapsed()
    );
    assert!(
        !docker_ok(&["inspect", &backup]).0,
        "the backup container is gone"
    );

    // Streaming on the slot; the lag check is OK.
    assert_eq!(
        s.psql("SELECT r.state FROM pg_stat_replication r JOIN pg_replication_slots s ON s.active_pid = r.pid WHERE s.slot_name = 'postgres_fhir_replica'"),
        "streaming"
    );
    assert_eq!(on_replica(&s, "SELECT pg_is_in_recovery()"), "t");
    let lag = check("replication-lag", &[]);
    assert_eq!(lag.code, Some(0), "{}{}", lag.stdout, lag.stderr);
    assert!(
        env_file(&s).contains(
            "HAPI_DATASOURCE_READ_URL=jdbc:postgresql://postgres-fhir-replica:5432/fhirdb"
        )
    );
    assert_ne!(
        s.psql(hba_rules),
        hba_before,
        "a replication rule for the compose network"
    );

    // HAPI reads through the replica: with replay paused there, a new patient is committed
    // on the primary but not found through nginx; once replay resumes it is.
    assert_eq!(http(&s, "GET", &format!("/Patient/{before}"), None).0, 200);
    on_replica(&s, "SELECT pg_wal_replay_pause()");
    let during = create_patient(&s, "WhilePaused");
    assert_eq!(
        s.psql(&format!(
            "SELECT count(*) FROM hfj_resource WHERE fhir_id = '{during}'"
        )),
        "1",
        "the write went to the primary"
    );
    let (code, body) = http(&s, "GET", &format!("/Patient/{during}"), None);
    assert_eq!(code, 404, "read from the paused replica: {body}");
    on_replica(&s, "SELECT pg_wal_replay_resume()");
    wait_for(
        "the row replayed on the replica",
        Duration::from_secs(20),
        || http(&s, "GET", &format!("/Patient/{during}"), None).0 == 200,
    );

    // Rollback: HAPI back on the primary (its reads see a row the paused replica would not
    // have), then no replica container, volume, slot, role, override file or env line.
    let t_rb = std::time::Instant::now();
    s.sb.run(&["rollback", &id]).expect(0);
    eprintln!("rollback: {:?}", t_rb.elapsed());
    let (_, names) = docker_ok(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=com.docker.compose.service={SERVICE}"),
        "--filter",
        &format!("label=com.docker.compose.project={project}"),
        "--format",
        "{{.Names}}",
    ]);
    assert!(names.is_empty(), "replica containers left: {names}");
    assert!(!docker_ok(&["inspect", &backup]).0);
    let (_, vols) = docker_ok(&[
        "volume",
        "ls",
        "-q",
        "--filter",
        &format!("label=com.docker.compose.project={project}"),
    ]);
    assert!(!vols.contains(SERVICE), "volumes left: {vols}");
    assert_eq!(s.psql("SELECT count(*) FROM pg_replication_slots"), "0");
    assert_eq!(
        s.psql("SELECT count(*) FROM pg_roles WHERE rolname = 'replicator'"),
        "0"
    );
    assert_eq!(s.psql(hba_rules), hba_before, "the pg_hba line is gone");
    assert_eq!(env_file(&s), env_before, "the env file is as it was");
    assert!(
        !s.dir
            .join(format!("files/docker-compose.{SERVICE}.yml"))
            .exists()
    );
    for (name, _, _) in s.replicas() {
        let (_, env) = docker_ok(&[
            "inspect",
            "--format",
            "{{range .Config.Env}}{{println .}}{{end}}",
            &name,
        ]);
        assert!(
            env.lines().any(|l| l == "HAPI_DATASOURCE_READ_URL="),
            "{name} is back on the primary only: {env}"
        );
    }
    let after = create_patient(&s, "After");
    assert_eq!(http(&s, "GET", &format!("/Patient/{after}"), None).0, 200);
    eprintln!("read_replica test body: {:?}", t0.elapsed());
    s.finish();
}
