//! Test harness: a temp working directory with its own state dir, the real `ferry` binary,
//! and real components (a throwaway PostgreSQL 15 cluster). Under `CI=true` a missing
//! component is a test failure, never a skip.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ferry"))
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Whether a component is there; outside CI a missing one skips the test (with a note).
pub fn require(what: &str, available: bool) -> bool {
    if available {
        return true;
    }
    if in_ci() {
        panic!(
            "{what} is required under CI=true but is not available (scripts/setup-deps installs it)"
        );
    }
    eprintln!("SKIP: {what} is not available on this machine");
    false
}

#[derive(Debug)]
pub struct Out {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Out {
    fn from(o: Output) -> Out {
        use std::os::unix::process::ExitStatusExt;
        Out {
            code: o.status.code(),
            signal: o.status.signal(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Out {
    #[track_caller]
    pub fn expect(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "unexpected exit\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// JSON events (`--format json` output), one per line.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

pub struct Sandbox {
    pub dir: TempDir,
    pub state: PathBuf,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix("ferry-test-")
            .tempdir()
            .expect("tempdir");
        let state = dir.path().join(".ferry");
        Sandbox { dir, state }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, content: &str) -> PathBuf {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&p, content).expect("write");
        p
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_default()
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.args(args)
            .current_dir(self.dir.path())
            .env("FERRY_STATE_DIR", &self.state)
            .env("NO_COLOR", "1")
            .env_remove("FERRY_FAILPOINT")
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Out {
        Out::from(self.cmd(args).output().expect("run ferry"))
    }

    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Out {
        let mut c = self.cmd(args);
        for (k, v) in env {
            c.env(k, v);
        }
        Out::from(c.output().expect("run ferry"))
    }

    pub fn spawn(&self, args: &[&str], env: &[(&str, &str)]) -> Child {
        let mut c = self.cmd(args);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        for (k, v) in env {
            c.env(k, v);
        }
        c.spawn().expect("spawn ferry")
    }

    /// Every file under the sandbox, for "nothing left behind" and "no secret anywhere".
    pub fn all_files(&self) -> Vec<PathBuf> {
        fn walk(p: &Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out)
                } else {
                    out.push(p)
                }
            }
        }
        let mut v = vec![];
        walk(self.dir.path(), &mut v);
        v
    }

    pub fn journal(&self, run_id: &str) -> String {
        let raw = std::fs::read(self.state.join("runs").join(run_id).join("journal.jsonl"))
            .unwrap_or_default();
        String::from_utf8_lossy(&raw)
            .trim_end_matches('\0')
            .to_owned()
    }

    pub fn run_ids(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.state.join("runs"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        v.sort();
        v
    }
}

pub fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub fn pid_alive(pid: u32) -> bool {
    // /proc/PID exists for zombies too; a zombie (state Z) is dead for our purposes.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
pub const PG_SUPERUSER_PW: &str = "postgres-superuser-pw";

/// A throwaway PostgreSQL 15 cluster on a loopback port, stopped (by its own pg_ctl) on drop.
pub struct Pg {
    pub dir: TempDir,
    pub port: u16,
    as_postgres: bool,
}

fn as_user(as_postgres: bool, prog: &str) -> Command {
    if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", prog]);
        c
    } else {
        Command::new(prog)
    }
}

impl Pg {
    /// Starts a cluster with password auth for TCP (`trust` only for the local superuser
    /// on the socket), so tests can exercise wrong passwords. None: skipped (outside CI).
    pub fn start() -> Option<Pg> {
        let initdb = format!("{PG_BIN}/initdb");
        if !require("PostgreSQL 15 (postgresql-15)", Path::new(&initdb).exists()) {
            return None;
        }
        // SAFETY: geteuid has no preconditions.
        let as_postgres = unsafe { libc::geteuid() } == 0;
        let dir = tempfile::Builder::new()
            .prefix("ferry-pg-")
            .tempdir()
            .expect("tempdir");
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, format!("{PG_SUPERUSER_PW}\n")).expect("pwfile");
        if as_postgres {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(ok.success());
        }
        let data = dir.path().join("data");
        let out = as_user(as_postgres, &initdb)
            .args([
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .expect("initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // A free port can be taken by a parallel test before the postmaster binds it: try
        // another one then (the log says "could not bind").
        let log = dir.path().join("pg.log");
        let mut attempt = 0;
        let port = loop {
            attempt += 1;
            let port = free_port();
            let opts = format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=30",
                dir.path().display()
            );
            let out = as_user(as_postgres, &format!("{PG_BIN}/pg_ctl"))
                .args(["-D", data.to_str().unwrap(), "-l"])
                .arg(&log)
                .args(["-w", "-t", "30", "-o", &opts, "start"])
                .output()
                .expect("pg_ctl start");
            if out.status.success() {
                break port;
            }
            let logged = std::fs::read_to_string(&log).unwrap_or_default();
            assert!(
                attempt < 5 && logged.contains("could not bind"),
                "pg_ctl start failed: {}\n{logged}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        Some(Pg {
            dir,
            port,
            as_postgres,
        })
    }

    /// psql as the superuser over the cluster's Unix socket.
    fn psql_cmd(&self, db: &str) -> Command {
        let mut c = Command::new("psql");
        c.args([
            "-h",
            self.dir.path().to_str().unwrap(),
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
            "-d",
            db,
        ]);
        c
    }

    /// Runs SQL as the superuser over the Unix socket; panics on error.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = self
            .psql_cmd(db)
            .args(["-v", "ON_ERROR_STOP=1", "-XAtq", "-c", sql])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    pub fn url(&self, user: &str, db: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{db}", self.port)
    }

    /// Objects a test made in `db` (a query counting them), to check while the cluster runs.
    pub fn objects(&self, db: &str, query: &str) -> Leftover {
        Leftover::Sql {
            socket_dir: self.dir.path().to_owned(),
            port: self.port,
            db: db.into(),
            query: query.into(),
        }
    }

    /// What a test must have ended in the running cluster: client sessions (ferry's, and
    /// any the test opened) and advisory locks (ferry's database run lock).
    pub fn sessions(&self) -> Vec<Leftover> {
        vec![
            self.objects(
                "postgres",
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
            ),
            self.objects(
                "postgres",
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'",
            ),
        ]
    }

    /// What is gone once the cluster is dropped: the postmaster and the cluster's files.
    pub fn leftovers(&self) -> Vec<Leftover> {
        let pid = std::fs::read_to_string(self.dir.path().join("data/postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next()?.trim().parse().ok())
            .expect("the postmaster's pid (is the cluster running?)");
        vec![
            Leftover::process(pid),
            Leftover::Path(self.dir.path().to_owned()),
        ]
    }

    /// The end of a test on this cluster: `objects` (queries counting what the test made)
    /// and every session and advisory lock are gone while it runs; then the cluster, the
    /// sandbox and `more` are dropped and must leave nothing.
    #[track_caller]
    pub fn finish(self, sb: Sandbox, objects: &[(&str, &str)], more: Vec<Leftover>) {
        let mut live: Vec<Leftover> = objects.iter().map(|(db, q)| self.objects(db, q)).collect();
        live.extend(self.sessions());
        assert_no_leftovers(&live);
        let made = [self.leftovers(), sb.leftovers(), more].concat();
        drop(self);
        drop(sb);
        assert_no_leftovers(&made);
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = as_user(self.as_postgres, &format!("{PG_BIN}/pg_ctl"))
            .args([
                "-D",
                data.to_str().unwrap_or(""),
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .output();
    }
}

pub const HAPI_PW: &str = "hapi-login-pw-9c2d";
pub const AUDIT_PW: &str = "audit-maint-pw-5b7e";

impl Pg {
    /// A cluster with database `db` owned by `hapi` (password `pw`, scram over TCP) and a
    /// sandbox whose `target.toml` names it as `[postgres.fhir]` (`FHIR_DB_PASSWORD`).
    pub fn with_app_db(db: &str, pw: &str) -> Option<(Pg, Sandbox)> {
        let pg = Pg::start()?;
        pg.psql(
            "postgres",
            &format!("CREATE ROLE hapi LOGIN PASSWORD '{pw}'"),
        );
        pg.psql("postgres", &format!("CREATE DATABASE {db} OWNER hapi"));
        let sb = Sandbox::new();
        sb.write(
            "target.toml",
            &format!(
                "name = \"test\"\n[postgres.fhir]\nurl = \"{}\"\npassword_env = \"FHIR_DB_PASSWORD\"\n",
                pg.url("hapi", db)
            ),
        );
        Some((pg, sb))
    }

    /// Runs a SQL file from the repository as the superuser.
    pub fn psql_file(&self, db: &str, rel: &str) {
        let out = self
            .psql_cmd(db)
            .args(["-v", "ON_ERROR_STOP=1", "-Xq", "-f"])
            .arg(repo().join(rel))
            .output()
            .expect("psql -f");
        assert!(
            out.status.success(),
            "loading {rel} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A cluster shaped like the deployment: `fhirdb` with HAPI's schema owned by `hapi`,
    /// `auditdb` with the partitioned audit schema, both with password logins.
    pub fn deployment() -> Option<Pg> {
        let pg = Pg::start()?;
        pg.psql(
            "postgres",
            &format!("CREATE ROLE hapi LOGIN PASSWORD '{HAPI_PW}'"),
        );
        pg.psql("postgres", "CREATE DATABASE fhirdb OWNER hapi");
        pg.psql("postgres", "CREATE DATABASE auditdb");
        pg.psql_file("fhirdb", "fixtures/hapi-schema.sql");
        pg.psql("fhirdb", "DO $$ DECLARE r record; BEGIN FOR r IN SELECT tablename FROM pg_tables WHERE schemaname = 'public' LOOP EXECUTE format('ALTER TABLE public.%I OWNER TO hapi', r.tablename); END LOOP; END $$");
        pg.psql_file("auditdb", "fixtures/audit-schema.sql");
        pg.psql(
            "postgres",
            &format!("ALTER ROLE audit_maintainer_login PASSWORD '{AUDIT_PW}'"),
        );
        Some(pg)
    }

    /// A target file for this cluster: `fhir` as hapi, `audit` as the maintainer login,
    /// `audit_admin` as the superuser (for checks that read audit data).
    pub fn target_toml(&self) -> String {
        format!(
            "name = \"test\"\n\n[postgres.fhir]\nurl = \"{}\"\npassword_env = \"FHIR_DB_PASSWORD\"\n\n\
             [postgres.audit]\nurl = \"{}\"\npassword_env = \"AUDIT_DB_PASSWORD\"\n\n\
             [postgres.audit_admin]\nurl = \"{}\"\npassword_env = \"PG_SUPERUSER_PASSWORD\"\n",
            self.url("hapi", "fhirdb"),
            self.url("audit_maintainer_login", "auditdb"),
            self.url("postgres", "auditdb"),
        )
    }

    pub fn env(&self) -> [(&'static str, &'static str); 3] {
        [
            ("FHIR_DB_PASSWORD", HAPI_PW),
            ("AUDIT_DB_PASSWORD", AUDIT_PW),
            ("PG_SUPERUSER_PASSWORD", PG_SUPERUSER_PW),
        ]
    }
}

/// Something a test made that must be gone when the test ends. Each item is scoped to the
/// test that made it (its own label, pid, directory or cluster), so tests running in
/// parallel never see each other's objects. Collect them with the `leftovers()` of what
/// made them (`Sandbox`, `Pg`, `Registry`, …) while it exists, drop it, then
/// `assert_no_leftovers`.
#[derive(Debug, Clone)]
pub enum Leftover {
    /// Containers, images (intermediate ones too), networks and volumes carrying this
    /// label (`key=value`). Use the test's own label (`ferry.test.id=…`,
    /// `ferry.sandbox=…`, `com.docker.compose.project=…`), never `ferry.test=1`, which
    /// every test shares.
    Docker(String),
    /// A process, with its start time (clock ticks since boot, /proc/PID/stat field 22)
    /// when it was known, so that a reused pid is not mistaken for it.
    Process { pid: u32, start: Option<u64> },
    /// A process group (an `exec` step's shell leads one): no live member may be left.
    Group(u32),
    /// A file or directory.
    Path(PathBuf),
    /// Database objects or sessions: `query` counts them in `db` of a running cluster and
    /// must come to 0 (checked while the cluster is still up).
    Sql {
        socket_dir: PathBuf,
        port: u16,
        db: String,
        query: String,
    },
}

/// `/proc/PID/stat` after the command name: (state, pgrp, start time).
fn proc_stat(pid: u32) -> Option<(char, u32, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
    // rest[0] is field 3 (state); pgrp is field 5, starttime field 22.
    Some((
        rest.first()?.chars().next()?,
        rest.get(2)?.parse().ok()?,
        rest.get(19)?.parse().ok()?,
    ))
}

impl Leftover {
    /// A process by pid, its start time read now (call it while the process runs).
    pub fn process(pid: u32) -> Leftover {
        Leftover::Process {
            pid,
            start: proc_stat(pid).map(|(_, _, t)| t),
        }
    }

    /// What is left of it, if anything; `procs` is (pid, pgrp) of every live process.
    fn remains(&self, procs: &[(u32, u32)]) -> Option<String> {
        match self {
            Leftover::Docker(label) => {
                let filter = format!("label={label}");
                let mut found = vec![];
                for (what, args) in [
                    ("containers", vec!["ps", "-aq", "--filter", &filter]),
                    ("images", vec!["image", "ls", "-aq", "--filter", &filter]),
                    ("networks", vec!["network", "ls", "-q", "--filter", &filter]),
                    ("volumes", vec!["volume", "ls", "-q", "--filter", &filter]),
                ] {
                    let o = Command::new("docker").args(&args).output().ok()?;
                    assert!(
                        o.status.success(),
                        "docker {args:?}: {}",
                        String::from_utf8_lossy(&o.stderr)
                    );
                    let ids = String::from_utf8_lossy(&o.stdout)
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ");
                    if !ids.is_empty() {
                        found.push(format!("{what} {ids}"));
                    }
                }
                (!found.is_empty()).then(|| format!("{label}: {}", found.join("; ")))
            }
            Leftover::Process { pid, start } => match proc_stat(*pid) {
                Some((state, _, t)) if state != 'Z' && start.is_none_or(|s| s == t) => {
                    Some(format!("process {pid} is still running"))
                }
                _ => None,
            },
            Leftover::Group(pgid) => {
                let members: Vec<u32> = procs
                    .iter()
                    .filter(|(_, g)| g == pgid)
                    .map(|(p, _)| *p)
                    .collect();
                (!members.is_empty())
                    .then(|| format!("process group {pgid} still has processes {members:?}"))
            }
            Leftover::Path(p) => p
                .symlink_metadata()
                .is_ok()
                .then(|| format!("{} still exists", p.display())),
            Leftover::Sql {
                socket_dir,
                port,
                db,
                query,
            } => {
                let o = Command::new("psql")
                    .arg("-h")
                    .arg(socket_dir)
                    .args(["-p", &port.to_string(), "-U", "postgres", "-d", db])
                    .args(["-v", "ON_ERROR_STOP=1", "-XAtq", "-c", query])
                    .output()
                    .expect("psql");
                assert!(
                    o.status.success(),
                    "psql {query:?}: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
                let n = String::from_utf8_lossy(&o.stdout).trim().to_owned();
                (n != "0").then(|| format!("{db}: {query} → {n}"))
            }
        }
    }
}

/// What is left of `items` right now, one line each.
pub fn remaining(items: &[Leftover]) -> Vec<String> {
    let mut procs = vec![];
    if items.iter().any(|i| matches!(i, Leftover::Group(_))) {
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|p| p.parse().ok())
                && let Some((state, pgrp, _)) = proc_stat(pid)
                && state != 'Z'
            {
                procs.push((pid, pgrp));
            }
        }
    }
    items.iter().filter_map(|i| i.remains(&procs)).collect()
}

/// Asserts that nothing of what a test made is left: every item is gone (processes and
/// sessions get a few seconds to exit). Panics listing what is left; an empty list is a
/// mistake in the test, not a pass.
#[track_caller]
pub fn assert_no_leftovers(items: &[Leftover]) {
    assert!(
        !items.is_empty(),
        "assert_no_leftovers: nothing to check (collect the leftovers() of what the test made)"
    );
    let t = Instant::now();
    let left = loop {
        let left = remaining(items);
        if left.is_empty() || t.elapsed() > Duration::from_secs(10) {
            break left;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        left.is_empty(),
        "the test left things behind:\n  {}",
        left.join("\n  ")
    );
}

impl Sandbox {
    /// Ends a test that made nothing beyond this sandbox: drops it and asserts that its
    /// temp dir and every step's process group are gone.
    #[track_caller]
    pub fn finish(self) {
        let made = self.leftovers();
        drop(self);
        assert_no_leftovers(&made);
    }

    /// The temp dir, and the process group of every step command any run in this state dir
    /// started (from the journals' `child_started` records): a killed ferry's grandchildren
    /// are the test's to reap (or `ferry resume`'s).
    pub fn leftovers(&self) -> Vec<Leftover> {
        let mut v = vec![Leftover::Path(self.dir.path().to_owned())];
        for id in self.run_ids() {
            for line in self.journal(&id).lines() {
                let Ok(r) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                if r["type"] == "child_started"
                    && let Some(pid) = r["pid"].as_u64()
                {
                    v.push(Leftover::Group(pid as u32));
                }
            }
        }
        v
    }
}

/// A TOML basic string: `"…"` with `\`, `"` and control characters escaped.
pub fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn toml_key(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        k.to_owned()
    } else {
        toml_str(k)
    }
}

/// A playbook for a test, built step by step instead of hand-written TOML:
///
/// ```ignore
/// Playbook::new("rb")
///     .exec("a", "echo a >> log").undo("echo undo-a >> log")
///     .exec("b", "exit 3")
///     .write(&sb, "pb.toml");
/// ```
///
/// Key setters (`undo`, `check`, `str`, `raw`, …) apply to the step added last. Values are
/// escaped as TOML strings, so commands are written as the shell sees them. Tests of TOML
/// parsing and diagnostics keep their literal TOML.
#[derive(Debug, Clone)]
pub struct Playbook {
    name: String,
    vars: Vec<(String, String)>,
    steps: Vec<PbStep>,
}

#[derive(Debug, Clone)]
struct PbStep {
    id: String,
    kind: String,
    /// (key, value already in TOML syntax), in insertion order.
    keys: Vec<(String, String)>,
}

impl Playbook {
    pub fn new(name: &str) -> Playbook {
        Playbook {
            name: name.into(),
            vars: vec![],
            steps: vec![],
        }
    }

    /// A `[vars]` default (`--var` overrides it).
    pub fn var(mut self, name: &str, default: &str) -> Playbook {
        self.vars.push((name.into(), toml_str(default)));
        self
    }

    /// A step of any kind; set its keys with `str`, `raw`, `table`.
    pub fn step(mut self, id: &str, kind: &str) -> Playbook {
        self.steps.push(PbStep {
            id: id.into(),
            kind: kind.into(),
            keys: vec![],
        });
        self
    }

    /// An `exec` step running `run`.
    pub fn exec(self, id: &str, run: &str) -> Playbook {
        self.step(id, "exec").str("run", run)
    }

    /// A key of the last step with a value in TOML syntax (numbers, booleans, arrays).
    pub fn raw(mut self, key: &str, toml: &str) -> Playbook {
        let step = self
            .steps
            .last_mut()
            .expect("Playbook: add a step before setting its keys");
        step.keys.retain(|(k, _)| k != key);
        step.keys.push((key.into(), toml.into()));
        self
    }

    /// A string key of the last step.
    pub fn str(self, key: &str, value: &str) -> Playbook {
        self.raw(key, &toml_str(value))
    }

    /// An inline table of strings (`set = { K = "v", … }`, `build_args`, `labels`).
    pub fn table(self, key: &str, entries: &[(&str, &str)]) -> Playbook {
        let body: Vec<String> = entries
            .iter()
            .map(|(k, v)| format!("{} = {}", toml_key(k), toml_str(v)))
            .collect();
        self.raw(key, &format!("{{ {} }}", body.join(", ")))
    }

    pub fn undo(self, cmd: &str) -> Playbook {
        self.str("undo", cmd)
    }

    pub fn check(self, cmd: &str) -> Playbook {
        self.str("check", cmd)
    }

    pub fn done_if(self, cmd: &str) -> Playbook {
        self.str("done_if", cmd)
    }

    /// `"rollback"` or `"stop"`.
    pub fn on_failure(self, what: &str) -> Playbook {
        self.str("on_failure", what)
    }

    pub fn timeout(self, d: &str) -> Playbook {
        self.str("timeout", d)
    }

    pub fn retries(self, n: u32, delay: &str) -> Playbook {
        self.raw("retries", &n.to_string())
            .str("retry_delay", delay)
    }

    pub fn to_toml(&self) -> String {
        let mut out = format!("name = {}\n", toml_str(&self.name));
        if !self.vars.is_empty() {
            out += "\n[vars]\n";
            for (k, v) in &self.vars {
                out += &format!("{} = {v}\n", toml_key(k));
            }
        }
        for s in &self.steps {
            out += &format!(
                "\n[[steps]]\nid = {}\nkind = {}\n",
                toml_str(&s.id),
                toml_str(&s.kind)
            );
            for (k, v) in &s.keys {
                out += &format!("{} = {v}\n", toml_key(k));
            }
        }
        out
    }

    /// Writes the playbook into the sandbox; returns `rel` for the command line.
    pub fn write(&self, sb: &Sandbox, rel: &str) -> String {
        sb.write(rel, &self.to_toml());
        rel.to_owned()
    }
}

#[test]
fn playbook_builder_output_reaches_the_shell_unchanged() {
    let sb = Sandbox::new();
    let word = "a \"quoted\" \\ back\tslash $HOME";
    let pb = Playbook::new("builder")
        .var("word", word)
        .exec("say", "printf '%s\\n' \"$WORD\" > out")
        .undo("rm -f out")
        .check("true")
        .done_if("false")
        .timeout("10s")
        .retries(1, "10ms")
        .on_failure("stop")
        .step("env", "env_set")
        .str("file", "e.env")
        .table("set", &[("K", "v \"1\""), ("K2", "x")]);
    // The last setter of a key wins; keys stay in their step.
    let toml = pb.clone().str("file", "f.env").to_toml();
    assert_eq!(toml.matches("file = ").count(), 1, "{toml}");
    assert!(toml.contains("file = \"f.env\""), "{toml}");
    sb.write("e.env", "");
    let path = pb.write(&sb, "pb.toml");
    let toml = sb.read(&path);
    assert!(toml.starts_with("name = \"builder\"\n\n[vars]\n"), "{toml}");
    assert!(
        toml.contains("\n[[steps]]\nid = \"say\"\nkind = \"exec\"\nrun = "),
        "{toml}"
    );
    assert!(toml.contains("retries = 1\n"), "{toml}");
    assert!(
        toml.contains("set = { K = \"v \\\"1\\\"\", K2 = \"x\" }"),
        "{toml}"
    );
    let labels = Playbook::new("l")
        .step("b", "image_build")
        .table("labels", &[("ferry.test", "1")])
        .to_toml();
    assert!(
        labels.contains("labels = { \"ferry.test\" = \"1\" }"),
        "{labels}"
    );
    sb.run(&["run", &path]).expect(0);
    assert_eq!(sb.read("out"), format!("{word}\n"));
    assert!(sb.read("e.env").lines().any(|l| l == "K2=x"));
}

#[test]
fn leftovers_are_seen_while_they_exist_and_not_after() {
    use std::os::unix::process::CommandExt;
    let sb = Sandbox::new();
    let mut leader = Command::new("sh")
        .args(["-c", "sleep 60 & wait"])
        .process_group(0)
        .spawn()
        .unwrap();
    let pid = leader.id();
    wait_for("the group's sleep", Duration::from_secs(5), || {
        std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            e.file_name().to_str().and_then(|p| p.parse().ok()) != Some(pid)
                && e.file_name()
                    .to_str()
                    .and_then(|p| p.parse().ok())
                    .and_then(proc_stat)
                    .is_some_and(|(_, g, _)| g == pid)
        })
    });
    let items = vec![
        Leftover::process(pid),
        Leftover::Group(pid),
        Leftover::Path(sb.path("")),
    ];
    assert_eq!(remaining(&items).len(), 3, "{:?}", remaining(&items));
    // The leader gone is not enough: its group's sleep is still there.
    leader.kill().unwrap();
    leader.wait().unwrap();
    let left = remaining(&items);
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(
        left[0].starts_with(&format!("process group {pid}")),
        "{left:?}"
    );
    // SAFETY: killing the process group this test created.
    unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
    drop(sb);
    assert_no_leftovers(&items);
    // A reused pid is not the process that was recorded.
    let me = Leftover::Process {
        pid: std::process::id(),
        start: Some(0),
    };
    assert!(remaining(&[me]).is_empty());
    assert_eq!(remaining(&[Leftover::process(std::process::id())]).len(), 1);
}

#[test]
fn docker_leftovers_are_scoped_to_their_label() {
    let up = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !require("a running Docker engine", up) {
        return;
    }
    let id = format!("leftover-{}-{}", std::process::id(), free_port());
    let label = format!("ferry.test.id={id}");
    let net = Command::new("docker")
        .args([
            "network",
            "create",
            "--label",
            "ferry.test=1",
            "--label",
            &label,
            &id,
        ])
        .output()
        .unwrap();
    assert!(
        net.status.success(),
        "{}",
        String::from_utf8_lossy(&net.stderr)
    );
    let mine = [Leftover::Docker(label)];
    let other = [Leftover::Docker(format!("ferry.test.id={id}-other"))];
    let left = remaining(&mine);
    assert!(left.len() == 1 && left[0].contains("networks "), "{left:?}");
    assert!(
        remaining(&other).is_empty(),
        "another test's label sees nothing"
    );
    let rm = Command::new("docker")
        .args(["network", "rm", &id])
        .output()
        .unwrap();
    assert!(rm.status.success());
    assert_no_leftovers(&mine);
}
