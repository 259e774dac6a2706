//! Durability hardening: corrupt journals, SQL timeouts that cancel the backend, signals in
//! preflight, the database lock's liveness, journal write failures.

use std::time::{Duration, Instant};

use crate::harness::{HAPI_PW, Pg, Sandbox, wait_for};

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

/// A cluster with database fhirdb owned by `hapi` and a target for it.
fn pg_setup() -> Option<(Pg, Sandbox)> {
    let pg = Pg::start()?;
    pg.psql(
        "postgres",
        &format!("CREATE ROLE hapi LOGIN PASSWORD '{HAPI_PW}'"),
    );
    pg.psql("postgres", "CREATE DATABASE fhirdb OWNER hapi");
    let sb = Sandbox::new();
    sb.write(
        "target.toml",
        &format!(
            "name = \"test\"\n[postgres.fhir]\nurl = \"{}\"\npassword_env = \"FHIR_DB_PASSWORD\"\n",
            pg.url("hapi", "fhirdb")
        ),
    );
    Some((pg, sb))
}

const PG_ENV: [(&str, &str); 1] = [("FHIR_DB_PASSWORD", HAPI_PW)];

fn sleeping_backends(pg: &Pg) -> String {
    pg.psql(
        "fhirdb",
        "SELECT count(*) FROM pg_stat_activity WHERE query ILIKE '%pg_sleep(6)%' AND pid <> pg_backend_pid()",
    )
}

#[test]
fn an_sql_timeout_cancels_the_statement_on_the_server() {
    let Some((pg, sb)) = pg_setup() else { return };
    pg.psql(
        "fhirdb",
        "CREATE TABLE t (id int); ALTER TABLE t OWNER TO hapi",
    );
    // An INSERT that outlives its timeout must not commit later.
    sb.write(
        "insert.toml",
        r#"name = "insert"
[[steps]]
id = "slow-insert"
kind = "sql"
database = "fhir"
timeout = "2s"
statement = "INSERT INTO t SELECT 1 FROM pg_sleep(6)"
rollback = "DELETE FROM t"
"#,
    );
    let t0 = Instant::now();
    let out = sb.run_env(&["run", "insert.toml", "--target", "target.toml"], &PG_ENV);
    out.expect(1);
    assert!(out.stderr.contains("timed out"), "{}", out.stderr);
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert_eq!(sleeping_backends(&pg), "0", "the statement is gone");
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        pg.psql("fhirdb", "SELECT count(*) FROM t"),
        "0",
        "never committed"
    );

    // DDL in a transaction: the undo must not queue behind the orphaned lock.
    sb.write(
        "ddl.toml",
        r#"name = "ddl"
[[steps]]
id = "create"
kind = "sql"
database = "fhir"
statement = "CREATE TABLE d (id int)"
rollback = "DROP TABLE IF EXISTS d"

[[steps]]
id = "alter"
kind = "sql"
database = "fhir"
timeout = "2s"
statement = "ALTER TABLE d ADD COLUMN c int; SELECT pg_sleep(6)"
rollback = "ALTER TABLE d DROP COLUMN IF EXISTS c"
"#,
    );
    let t0 = Instant::now();
    let out = sb.run_env(&["run", "ddl.toml", "--target", "target.toml"], &PG_ENV);
    out.expect(1);
    assert!(t0.elapsed() < Duration::from_secs(6), "{:?}", t0.elapsed());
    assert_eq!(sleeping_backends(&pg), "0");
    assert_eq!(
        pg.psql("fhirdb", "SELECT to_regclass('public.d') IS NULL"),
        "t",
        "rolled back: {}",
        out.stderr
    );
}

#[test]
fn sigint_in_preflight_stops_the_check_and_leaves_nothing_to_resume() {
    let sb = Sandbox::new();
    sb.write(
        "pb.toml",
        r#"name = "pre"
[[steps]]
id = "slow-check"
kind = "exec"
check = "echo $$ > check.pid; exec sleep 15"
run = "touch ran"
"#,
    );
    for args in [vec!["run", "pb.toml"], vec!["run", "pb.toml", "--dry-run"]] {
        let _ = std::fs::remove_file(sb.path("check.pid"));
        let child = sb.spawn(&args, &[]);
        wait_for("the check to start", Duration::from_secs(10), || {
            !sb.read("check.pid").trim().is_empty()
        });
        let pid: u32 = sb.read("check.pid").trim().parse().unwrap();
        let t0 = Instant::now();
        // SAFETY: signalling the ferry we spawned.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(5), "{args:?}: {stderr}");
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        assert!(stderr.contains("nothing to resume"), "{stderr}");
        assert!(!crate::harness::pid_alive(pid), "the check's sleep is gone");
        assert!(!sb.path("ran").exists());
        assert!(sb.run_ids().is_empty(), "no journal: {:?}", sb.run_ids());
    }
    let out = sb.run(&["resume"]);
    out.expect(2);
}
