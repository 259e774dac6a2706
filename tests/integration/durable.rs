//! Durability hardening: corrupt journals, SQL timeouts that cancel the backend, signals in
//! preflight, the database lock's liveness, journal write failures.

use std::time::{Duration, Instant};

use crate::harness::{HAPI_PW, Out, Pg, Playbook, Sandbox, wait_for};

fn two() -> Playbook {
    Playbook::new("two")
        .exec("one", "echo 1 >> effects.log")
        .undo("echo undo1 >> effects.log")
        .exec("two", "echo 2 >> effects.log")
        .undo("echo undo2 >> effects.log")
}

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
    two().write(&sb, "two.toml");
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
    two().write(&sb, "two.toml");
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
    Pg::with_app_db("fhirdb", HAPI_PW)
}

const PG_ENV: [(&str, &str); 1] = [("FHIR_DB_PASSWORD", HAPI_PW)];

fn sleeping_backends(pg: &Pg) -> String {
    pg.psql(
        "fhirdb",
        "SELECT count(*) FROM pg_stat_activity WHERE query ILIKE '%pg_sleep(6)%' AND pid <> pg_backend_pid()",
    )
}

/// An INSERT that sleeps 6 s on the server, undone by deleting its row.
fn slow_insert() -> Playbook {
    Playbook::new("insert")
        .step("slow-insert", "sql")
        .str("database", "fhir")
        .str("statement", "INSERT INTO t SELECT 1 FROM pg_sleep(6)")
        .str("rollback", "DELETE FROM t")
}

#[test]
fn an_sql_timeout_cancels_the_statement_on_the_server() {
    let Some((pg, sb)) = pg_setup() else { return };
    pg.psql(
        "fhirdb",
        "CREATE TABLE t (id int); ALTER TABLE t OWNER TO hapi",
    );
    // An INSERT that outlives its timeout must not commit later.
    slow_insert().timeout("2s").write(&sb, "insert.toml");
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
    Playbook::new("ddl")
        .step("create", "sql")
        .str("database", "fhir")
        .str("statement", "CREATE TABLE d (id int)")
        .str("rollback", "DROP TABLE IF EXISTS d")
        .step("alter", "sql")
        .str("database", "fhir")
        .timeout("2s")
        .str(
            "statement",
            "ALTER TABLE d ADD COLUMN c int; SELECT pg_sleep(6)",
        )
        .str("rollback", "ALTER TABLE d DROP COLUMN IF EXISTS c")
        .write(&sb, "ddl.toml");
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
    Playbook::new("pre")
        .exec("slow-check", "touch ran")
        .check("echo $$ > check.pid; exec sleep 15")
        .write(&sb, "pb.toml");
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
        // Killed with its group (SIGKILL is delivered asynchronously: allow it a moment).
        wait_for(
            "the check's sleep to be gone",
            Duration::from_secs(2),
            || !crate::harness::pid_alive(pid),
        );
        assert!(!sb.path("ran").exists());
        assert!(sb.run_ids().is_empty(), "no journal: {:?}", sb.run_ids());
    }
    let out = sb.run(&["resume"]);
    out.expect(2);
}

fn waits() -> Playbook {
    Playbook::new("waits")
        .exec(
            "hold",
            "touch started; while [ ! -f go ]; do sleep 0.1; done; echo hold >> log",
        )
        .exec("after", "echo after >> log")
}

fn lock_backend(pg: &Pg) -> String {
    pg.psql(
        "fhirdb",
        "SELECT coalesce(string_agg(l.pid::text, ','), '') FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted",
    )
}

#[test]
fn losing_the_database_lock_mid_run_stops_at_the_next_boundary() {
    let Some((pg, sb)) = pg_setup() else { return };
    waits().write(&sb, "pb.toml");
    let child = sb.spawn(&["run", "pb.toml", "--target", "target.toml"], &PG_ENV);
    wait_for("the first step", Duration::from_secs(20), || {
        sb.path("started").exists()
    });
    let backend = lock_backend(&pg);
    assert!(!backend.is_empty(), "ferry holds the lock");
    pg.psql("fhirdb", &format!("SELECT pg_terminate_backend({backend})"));
    // The loss is noticed at once (the session ends) or by the next heartbeat.
    std::thread::sleep(Duration::from_secs(3));
    sb.write("go", "");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("database lock"), "{stderr}");
    assert!(stderr.contains("was lost"), "{stderr}");
    assert!(stderr.contains("ferry resume"), "{stderr}");
    assert_eq!(sb.read("log"), "hold\n", "the next step did not start");
    let runs = status_json(&sb);
    assert_eq!(runs[0]["state"], "interrupted", "{runs}");
    sb.run_env(&["resume"], &PG_ENV).expect(0);
    assert_eq!(sb.read("log"), "hold\nafter\n");
}

#[test]
fn the_database_lock_outlives_idle_session_timeout() {
    let Some((pg, sb)) = pg_setup() else { return };
    pg.psql(
        "postgres",
        "ALTER DATABASE fhirdb SET idle_session_timeout = '1s'",
    );
    pg.psql(
        "postgres",
        "ALTER DATABASE fhirdb SET idle_in_transaction_session_timeout = '1s'",
    );
    waits().write(&sb, "pb.toml");
    let child = sb.spawn(&["run", "pb.toml", "--target", "target.toml"], &PG_ENV);
    wait_for("the first step", Duration::from_secs(20), || {
        sb.path("started").exists()
    });
    std::thread::sleep(Duration::from_secs(4));
    assert!(!lock_backend(&pg).is_empty(), "the lock is still held");
    // A second operator (another state dir) is refused while the first runs.
    let other = sb.dir.path().join("other-state");
    let out = sb.run_env(
        &["run", "pb.toml", "--target", "target.toml"],
        &[PG_ENV[0], ("FERRY_STATE_DIR", other.to_str().unwrap())],
    );
    out.expect(4);
    assert!(
        out.stderr.contains("fhir database is locked by ferry pid"),
        "{}",
        out.stderr
    );
    sb.write("go", "");
    Out::from(child.wait_with_output().unwrap()).expect(0);
    assert_eq!(sb.read("log"), "hold\nafter\n");
}

/// `unlock --force` on the same host must recognise a live run even when the host name is
/// too long for the lock session's application_name.
#[test]
fn unlock_force_does_not_release_a_live_run_of_a_long_named_host() {
    let host = "ferry-test-a-rather-long-host-name-for-lock-owner.example.int";
    let works = std::process::Command::new("unshare")
        .args(["-u", "sh", "-c", &format!("hostname {host}")])
        .status()
        .is_ok_and(|s| s.success());
    if !crate::harness::require("unshare -u (root) to set a long host name", works) {
        return;
    }
    let Some((pg, sb)) = pg_setup() else { return };
    waits().write(&sb, "pb.toml");
    let in_host = |state: &std::path::Path, args: &[&str]| {
        let mut line = format!(
            "hostname {host} && exec {}",
            crate::harness::bin().display()
        );
        for a in args {
            line += &format!(" '{a}'");
        }
        let mut u = std::process::Command::new("unshare");
        u.args(["-u", "sh", "-c", &line])
            .current_dir(sb.dir.path())
            .env("FERRY_STATE_DIR", state)
            .env("NO_COLOR", "1")
            .env("FHIR_DB_PASSWORD", HAPI_PW)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        u
    };
    let child = in_host(&sb.state, &["run", "pb.toml", "--target", "target.toml"])
        .spawn()
        .unwrap();
    wait_for("the first step", Duration::from_secs(20), || {
        sb.path("started").exists()
    });
    // Another operator on the same host, with its own state dir.
    let other = sb.dir.path().join("other-state");
    std::fs::create_dir_all(&other).unwrap();
    let out = in_host(&other, &["unlock", "--target", "target.toml", "--force"])
        .output()
        .unwrap();
    assert_ne!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("alive on this host"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!lock_backend(&pg).is_empty(), "the lock is still held");
    sb.write("go", "");
    Out::from(child.wait_with_output().unwrap()).expect(0);
}

/// A small tmpfs (root only), unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::Builder::new()
            .prefix("ferry-tmpfs-")
            .tempdir()
            .ok()?;
        let ok = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .is_ok_and(|o| o.status.success());
        crate::harness::require("mount -t tmpfs (root)", ok).then_some(Tmpfs(dir))
    }

    fn path(&self) -> &std::path::Path {
        self.0.path()
    }

    /// Leaves about `free` bytes free.
    fn fill_leaving(&self, free: u64) {
        let filler = self.path().join("filler");
        let _ = std::fs::remove_file(&filler);
        let f = std::fs::File::create(&filler).unwrap();
        let mut total = 0u64;
        let block = vec![1u8; 4096];
        use std::io::Write;
        let mut w = std::io::BufWriter::new(&f);
        while w.write_all(&block).is_ok() {
            total += 4096;
        }
        let _ = w.flush();
        drop(w);
        f.set_len(total.saturating_sub(free)).unwrap();
    }

    fn free(&self) {
        let _ = std::fs::remove_file(self.path().join("filler"));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

fn many_steps(sb: &Sandbox, n: usize) {
    (1..=n)
        .fold(Playbook::new("many"), |pb, i| {
            pb.exec(&format!("step-{i}"), &format!("echo {i} >> effects.log"))
        })
        .write(sb, "many.toml");
}

fn effects(sb: &Sandbox) -> Vec<usize> {
    sb.read("effects.log")
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

#[test]
fn a_full_disk_under_the_journal_stops_before_the_next_effect_with_its_cause() {
    let Some(fs) = Tmpfs::mount("1m") else { return };
    let sb = Sandbox::new();
    let state = fs.path().to_str().unwrap().to_owned();
    let env = [("FERRY_STATE_DIR", state.as_str())];
    many_steps(&sb, 300);

    // Room for the lock's owner record, not for the run: said so, nothing ran, nothing left.
    fs.fill_leaving(16 * 1024);
    let out = sb.run_env(&["run", "many.toml"], &env);
    out.expect(7);
    assert!(
        out.stderr.contains("No space left on device"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("nothing ran"), "{}", out.stderr);
    assert!(effects(&sb).is_empty());
    let runs = fs.path().join("runs");
    assert_eq!(
        std::fs::read_dir(&runs).map(|d| d.count()).unwrap_or(0),
        0,
        "no run directory left"
    );

    // Room for the first chunk of the journal only: the run stops mid-way, before an effect.
    fs.fill_leaving(128 * 1024);
    let out = sb.run_env(&["run", "many.toml"], &env);
    out.expect(7);
    assert!(
        out.stderr.contains("No space left on device"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("ferry resume"), "{}", out.stderr);
    let done = effects(&sb);
    assert!(!done.is_empty() && done.len() < 300, "{}", done.len());
    assert_eq!(done, (1..=done.len()).collect::<Vec<_>>());
    let st = sb.run_env(&["status", "--format", "json"], &env);
    st.expect(0);
    let v: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    assert_eq!(v[0]["state"], "interrupted", "{v}");

    // Space again: resume finishes, every effect exactly once.
    fs.free();
    sb.run_env(&["resume"], &env).expect(0);
    assert_eq!(effects(&sb), (1..=300).collect::<Vec<_>>());
}

#[test]
fn a_second_sigint_cancels_a_running_statement_on_the_server() {
    let Some((pg, sb)) = pg_setup() else { return };
    pg.psql(
        "fhirdb",
        "CREATE TABLE t (id int); ALTER TABLE t OWNER TO hapi",
    );
    slow_insert().write(&sb, "insert.toml");
    let child = sb.spawn(&["run", "insert.toml", "--target", "target.toml"], &PG_ENV);
    wait_for("the statement to run", Duration::from_secs(20), || {
        sleeping_backends(&pg) == "1"
    });
    let t0 = Instant::now();
    for _ in 0..2 {
        // SAFETY: signalling the ferry we spawned.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert_eq!(sleeping_backends(&pg), "0", "the statement is gone");
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        pg.psql("fhirdb", "SELECT count(*) FROM t"),
        "0",
        "never committed"
    );
}
