//! `sql` and `wait … sql` steps, the database run lock, and secret handling, against a real
//! PostgreSQL 15 cluster started by the test.

use std::time::Duration;

use crate::harness::{Leftover, Out, Pg, Playbook, Sandbox, wait_for};

const PW: &str = "Planted-Secret-4e1f9c";

/// What the `forward` playbook makes in fhirdb: gone after its rollback (and before its run).
const DEMO: (&str, &str) = (
    "fhirdb",
    "SELECT count(*) FROM pg_class WHERE relname IN ('demo', 'demo_v')",
);

/// A cluster with database fhirdb owned by `hapi` (password auth over TCP) and a target.
fn setup() -> Option<(Pg, Sandbox)> {
    Pg::with_app_db("fhirdb", PW)
}

/// Create a table, fill it, index it concurrently: each with its rollback. With
/// `index_in_transaction` the index step lacks `transaction = false`, so it and its
/// undo fail.
fn forward(index_in_transaction: bool) -> Playbook {
    let pb = Playbook::new("sql")
        .step("create", "sql")
        .str("database", "fhir")
        .check("SELECT current_user = 'hapi'")
        .done_if("SELECT to_regclass('public.demo') IS NOT NULL")
        .str(
            "statement",
            "CREATE TABLE demo (id bigint PRIMARY KEY, v text)",
        )
        .str("rollback", "DROP TABLE IF EXISTS demo")
        .step("fill", "sql")
        .str("database", "fhir")
        .str(
            "statement",
            "INSERT INTO demo SELECT g, 'x' || g FROM generate_series(1, 1000) g",
        )
        .str("verify", "SELECT count(*) = 1000 FROM demo")
        .str("rollback", "DELETE FROM demo")
        .step("index", "sql")
        .str("database", "fhir");
    let pb = if index_in_transaction {
        pb
    } else {
        pb.raw("transaction", "false")
    };
    pb.str(
        "statement",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS demo_v ON demo (v)",
    )
    .str("rollback", "DROP INDEX CONCURRENTLY IF EXISTS demo_v")
}

#[test]
fn sql_steps_apply_and_roll_back_on_a_real_database() {
    let Some((pg, sb)) = setup() else { return };
    forward(false).write(&sb, "pb.toml");
    let env = [("FHIR_DB_PASSWORD", PW)];
    sb.run_env(&["run", "pb.toml", "--target", "target.toml"], &env)
        .expect(0);
    assert_eq!(pg.psql("fhirdb", "SELECT count(*) FROM demo"), "1000");
    assert_eq!(
        pg.psql(
            "fhirdb",
            "SELECT count(*) FROM pg_indexes WHERE indexname = 'demo_v'"
        ),
        "1"
    );
    let id = sb.run_ids().pop().unwrap();
    let out = sb.run_env(&["rollback", &id], &env);
    out.expect(0);
    assert_eq!(
        pg.psql("fhirdb", "SELECT to_regclass('public.demo') IS NULL"),
        "t",
        "nothing left behind"
    );
    pg.finish(sb, &[DEMO], vec![]);
}

#[test]
fn a_failing_statement_rolls_back_earlier_sql_steps() {
    let Some((pg, sb)) = setup() else { return };
    forward(false)
        .step("bad", "sql")
        .str("database", "fhir")
        .str("statement", "INSERT INTO demo VALUES (1, 'duplicate')")
        .write(&sb, "pb.toml");
    let out = sb.run_env(
        &["run", "pb.toml", "--target", "target.toml"],
        &[("FHIR_DB_PASSWORD", PW)],
    );
    out.expect(1);
    assert!(
        out.stderr
            .contains("duplicate key value violates unique constraint"),
        "{}",
        out.stderr
    );
    assert_eq!(
        pg.psql("fhirdb", "SELECT to_regclass('public.demo') IS NULL"),
        "t"
    );
    pg.finish(sb, &[DEMO], vec![]);
}

#[test]
fn an_undo_that_fails_stops_the_rollback_for_a_person_exit_6() {
    let Some((pg, sb)) = setup() else { return };
    // Without `transaction = false` both the index and its undo fail inside a transaction.
    forward(true).write(&sb, "pb.toml");
    let env = [("FHIR_DB_PASSWORD", PW)];
    let out = sb.run_env(&["run", "pb.toml", "--target", "target.toml"], &env);
    out.expect(6);
    assert!(
        out.stderr
            .contains("CREATE INDEX CONCURRENTLY cannot run inside a transaction block"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("rollback stopped: undoing step `index` failed"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("still applied: create, fill"),
        "{}",
        out.stderr
    );
    let id = sb.run_ids().pop().unwrap();
    assert!(
        out.stderr.contains(&format!("ferry rollback {id}")),
        "{}",
        out.stderr
    );
    assert_eq!(
        pg.psql("fhirdb", "SELECT count(*) FROM demo"),
        "1000",
        "earlier steps are left for the person"
    );
    // The person fixes the playbook and finishes the rollback.
    forward(false).write(&sb, "pb.toml");
    sb.run_env(&["rollback", &id], &env).expect(2);
    sb.run_env(&["rollback", &id, "--accept-changes"], &env)
        .expect(0);
    assert_eq!(
        pg.psql("fhirdb", "SELECT to_regclass('public.demo') IS NULL"),
        "t"
    );
    pg.finish(sb, &[DEMO], vec![]);
}

#[test]
fn wrong_password_and_unreachable_database_are_preconditions() {
    let Some((pg, sb)) = setup() else { return };
    forward(false).write(&sb, "pb.toml");
    let out = sb.run_env(
        &["run", "pb.toml", "--target", "target.toml"],
        &[("FHIR_DB_PASSWORD", "wrong-password")],
    );
    out.expect(3);
    assert!(
        out.stderr
            .contains("password authentication failed for user \"hapi\""),
        "{}",
        out.stderr
    );
    let dry = sb.run_env(
        &["run", "pb.toml", "--target", "target.toml", "--dry-run"],
        &[("FHIR_DB_PASSWORD", "wrong-password")],
    );
    dry.expect(3);
    assert!(
        dry.stderr.contains("FAIL create · connect"),
        "{}",
        dry.stderr
    );
    let port = crate::harness::free_port();
    sb.write("down.toml", &format!("name = \"down\"\n[postgres.fhir]\nurl = \"postgres://hapi@127.0.0.1:{port}/fhirdb\"\npassword_env = \"FHIR_DB_PASSWORD\"\n"));
    let out = sb.run_env(
        &["run", "pb.toml", "--target", "down.toml"],
        &[("FHIR_DB_PASSWORD", PW)],
    );
    out.expect(3);
    assert!(
        out.stderr.contains(&format!("127.0.0.1:{port}")),
        "{}",
        out.stderr
    );
    assert_eq!(
        pg.psql("fhirdb", "SELECT to_regclass('public.demo') IS NULL"),
        "t",
        "nothing changed"
    );
    pg.finish(sb, &[DEMO], vec![]);
}

#[test]
fn the_database_lock_stops_a_second_operator_with_another_state_dir() {
    let Some((pg, sb)) = setup() else { return };
    Playbook::new("slow")
        .exec("hold", "touch holding; sleep 30")
        .done_if("test -f released")
        .write(&sb, "slow.toml");
    let env = [("FHIR_DB_PASSWORD", PW)];
    let mut first = sb.spawn(&["run", "slow.toml", "--target", "target.toml"], &env);
    let first_pid = Leftover::process(first.id());
    wait_for("the first run", Duration::from_secs(15), || {
        sb.path("holding").exists()
    });
    let other_state = sb.path("other-operator");
    let out = sb.run_env(
        &[
            "run",
            "slow.toml",
            "--target",
            "target.toml",
            "--state-dir",
            other_state.to_str().unwrap(),
        ],
        &env,
    );
    out.expect(4);
    assert!(
        out.stderr.contains(&format!(
            "fhir database is locked by ferry pid {} on",
            first.id()
        )),
        "{}",
        out.stderr
    );
    // SAFETY: stopping the ferry we spawned.
    unsafe { libc::kill(first.id() as i32, libc::SIGKILL) };
    first.wait().unwrap();
    // Its step's `sleep 30` outlives it; resume reaps the leftover and finds the step done.
    sb.write("released", "");
    sb.run_env(&["resume"], &env).expect(0);
    pg.finish(sb, &[], vec![first_pid]);
}

#[test]
fn wait_until_a_query_is_true() {
    let Some((pg, sb)) = setup() else { return };
    pg.psql("fhirdb", "CREATE TABLE flag (ok boolean); INSERT INTO flag VALUES (false); ALTER TABLE flag OWNER TO hapi");
    Playbook::new("w")
        .exec("flip", "touch flipping")
        .step("until", "wait")
        .str("database", "fhir")
        .str("sql", "SELECT ok FROM flag")
        .str("interval", "100ms")
        .timeout("20s")
        .write(&sb, "pb.toml");
    let child = sb.spawn(
        &["run", "pb.toml", "--target", "target.toml"],
        &[("FHIR_DB_PASSWORD", PW)],
    );
    let child_pid = Leftover::process(child.id());
    wait_for("the run", Duration::from_secs(10), || {
        sb.path("flipping").exists()
    });
    std::thread::sleep(Duration::from_millis(400));
    pg.psql("fhirdb", "UPDATE flag SET ok = true");
    Out::from(child.wait_with_output().unwrap()).expect(0);
    // and a timeout that expires names what it waited for
    Playbook::new("w2")
        .step("never", "wait")
        .str("database", "fhir")
        .str("sql", "SELECT NOT ok FROM flag")
        .str("interval", "100ms")
        .timeout("1s")
        .write(&sb, "pb2.toml");
    let out = sb.run_env(
        &["run", "pb2.toml", "--target", "target.toml"],
        &[("FHIR_DB_PASSWORD", PW)],
    );
    out.expect(1);
    assert!(
        out.stderr
            .contains("did not happen within 1s (last: false)"),
        "{}",
        out.stderr
    );
    pg.finish(sb, &[], vec![child_pid]);
}

#[test]
fn a_planted_password_appears_in_no_output_and_no_file() {
    let Some((pg, sb)) = setup() else { return };
    Playbook::new("leaky")
        .step("use-it", "sql")
        .str("database", "fhir")
        .str("statement", "CREATE TABLE leak (v text)")
        .str("rollback", "DROP TABLE IF EXISTS leak")
        .exec(
            "echo-it",
            "echo the password is $FHIR_DB_PASSWORD; echo \"$FHIR_DB_PASSWORD\" >&2",
        )
        .undo("echo undoing with $FHIR_DB_PASSWORD")
        .exec(
            "fail-with-it",
            "echo \"cannot log in with $FHIR_DB_PASSWORD\" >&2; exit 1",
        )
        .write(&sb, "pb.toml");
    let junit = sb.path("report.xml");
    let env = [("FHIR_DB_PASSWORD", PW)];
    let human = sb.run_env(
        &[
            "run",
            "pb.toml",
            "--target",
            "target.toml",
            "-v",
            "--junit",
            junit.to_str().unwrap(),
        ],
        &env,
    );
    human.expect(1);
    assert!(
        human.stderr.contains("the password is ***"),
        "the child's output is shown, masked:\n{}",
        human.stderr
    );
    let json = sb.run_env(
        &[
            "run",
            "pb.toml",
            "--target",
            "target.toml",
            "--format",
            "json",
        ],
        &env,
    );
    json.expect(1);
    let status = sb.run(&["status", "--format", "json"]);
    for (what, text) in [
        ("human stdout", &human.stdout),
        ("human stderr", &human.stderr),
        ("json stdout", &json.stdout),
        ("json stderr", &json.stderr),
        ("status", &status.stdout),
    ] {
        assert!(
            !text.contains(PW),
            "the password leaked into {what}:\n{text}"
        );
    }
    let files = sb.all_files();
    assert!(files.iter().any(|f| f.ends_with("journal.jsonl")));
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(PW),
            "the password leaked into {}",
            f.display()
        );
    }
    assert!(
        std::fs::read_to_string(&junit)
            .unwrap()
            .contains("cannot log in with ***")
    );
    // The state dir is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&sb.state), 0o700);
    let id = sb.run_ids().pop().unwrap();
    assert_eq!(mode(&sb.state.join("runs").join(&id)), 0o700);
    assert_eq!(
        mode(&sb.state.join("runs").join(&id).join("journal.jsonl")),
        0o600
    );
    pg.finish(
        sb,
        &[(
            "fhirdb",
            "SELECT count(*) FROM pg_class WHERE relname = 'leak'",
        )],
        vec![],
    );
}

/// A session holding ferry's database lock, as a lost or killed ferry would leave it.
fn hold_db_lock(pg: &Pg, app_name: &str) -> std::process::Child {
    use std::io::Write;
    let mut c = std::process::Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
            "-U",
            "hapi",
            "-d",
            "fhirdb",
            "-Xq",
        ])
        .env("PGPASSWORD", PW)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdin = c.stdin.as_mut().unwrap();
    writeln!(
        stdin,
        "SET application_name = '{app_name}'; SELECT pg_advisory_lock(x'6665727279'::bigint);"
    )
    .unwrap();
    stdin.flush().unwrap();
    c
}

#[test]
fn unlock_releases_a_database_lock_left_by_a_dead_or_lost_ferry() {
    let Some((pg, sb)) = setup() else { return };
    let env = [("FHIR_DB_PASSWORD", PW)];
    let held = || {
        pg.psql(
            "fhirdb",
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted",
        )
    };
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned();
    // A dead ferry on this host (its session lingers): unlock ends the session.
    let mut s1 = hold_db_lock(&pg, &format!("ferry pid 4194000 on {host}: run run X"));
    let mut made = vec![Leftover::process(s1.id())];
    wait_for("the lock", Duration::from_secs(10), || held() == "1");
    Playbook::new("x").exec("a", "true").write(&sb, "pb.toml");
    let out = sb.run_env(&["run", "pb.toml", "--target", "target.toml"], &env);
    out.expect(4);
    let out = sb.run_env(&["unlock", "--target", "target.toml"], &env);
    out.expect(0);
    assert!(
        out.stdout
            .contains("released the database lock of ferry pid 4194000"),
        "{}",
        out.stdout
    );
    wait_for("the lock to go", Duration::from_secs(10), || held() == "0");
    let _ = s1.kill();
    s1.wait().unwrap();
    // A ferry on another host: refused unless the operator says that machine is gone.
    let mut s2 = hold_db_lock(&pg, "ferry pid 77 on lost-host: run run Y");
    made.push(Leftover::process(s2.id()));
    wait_for("the lock", Duration::from_secs(10), || held() == "1");
    let out = sb.run_env(&["unlock", "--target", "target.toml"], &env);
    out.expect(4);
    assert!(
        out.stderr
            .contains("held from another host; if that machine is gone, add --force"),
        "{}",
        out.stderr
    );
    sb.run_env(&["unlock", "--target", "target.toml", "--force"], &env)
        .expect(0);
    wait_for("the lock to go", Duration::from_secs(10), || held() == "0");
    let _ = s2.kill();
    s2.wait().unwrap();
    sb.run_env(&["run", "pb.toml", "--target", "target.toml"], &env)
        .expect(0);
    pg.finish(sb, &[], made);
}
