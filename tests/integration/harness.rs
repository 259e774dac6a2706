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

impl Out {
    fn from(o: Output) -> Out {
        use std::os::unix::process::ExitStatusExt;
        Out {
            code: o.status.code(),
            signal: o.status.signal(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

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
        let port = free_port();
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=30",
            dir.path().display()
        );
        let out = as_user(as_postgres, &format!("{PG_BIN}/pg_ctl"))
            .args(["-D", data.to_str().unwrap(), "-l"])
            .arg(dir.path().join("pg.log"))
            .args(["-w", "-t", "30", "-o", &opts, "start"])
            .output()
            .expect("pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
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
