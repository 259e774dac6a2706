//! The sandbox tests' fixture: `Sbx`, one `ferry sandbox up` (labelled `ferry.test=1`) per
//! test on the host or the compose stack, taken down on drop, with what it made checked gone.

use std::path::PathBuf;
use std::process::Command;

use crate::harness::{Leftover, Out, Sandbox, assert_no_leftovers, require};

pub struct Sbx {
    pub sb: Sandbox,
    pub dir: PathBuf,
    /// `host` or `compose` (`ferry sandbox up --stack`).
    pub stack: &'static str,
}

/// The stack the shared sandbox tests run on: FERRY_TEST_SANDBOX_STACK (`compose` or
/// `host`), default compose, as `ferry sandbox up`'s. Any other value is a mistake, not a
/// silent fallback.
pub fn default_stack() -> &'static str {
    match std::env::var("FERRY_TEST_SANDBOX_STACK").as_deref() {
        Err(_) | Ok("" | "compose") => "compose",
        Ok("host") => "host",
        Ok(other) => panic!("FERRY_TEST_SANDBOX_STACK={other}: expected compose or host"),
    }
}

fn engine_up() -> bool {
    Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .is_ok_and(|o| o.status.success())
}

impl Sbx {
    pub fn up(replicas: u32) -> Option<Sbx> {
        Self::up_in(replicas, "sbx")
    }

    /// A sandbox on `--stack compose`, whatever FERRY_TEST_SANDBOX_STACK says.
    pub fn up_compose(replicas: u32) -> Option<Sbx> {
        Self::up_stack(replicas, "sbx", "compose", |_| {})
    }

    pub fn up_private(replicas: u32) -> Option<Sbx> {
        use std::os::unix::fs::PermissionsExt;
        Self::up_in_with(replicas, "private/sbx", |sb| {
            std::fs::create_dir_all(sb.path("private")).unwrap();
            std::fs::set_permissions(sb.path("private"), std::fs::Permissions::from_mode(0o700))
                .unwrap();
        })
    }

    pub fn up_in(replicas: u32, rel: &str) -> Option<Sbx> {
        Self::up_in_with(replicas, rel, |_| {})
    }

    pub fn up_in_with(replicas: u32, rel: &str, prepare: impl FnOnce(&Sandbox)) -> Option<Sbx> {
        Self::up_stack(replicas, rel, default_stack(), prepare)
    }

    /// A sandbox whose fhirdb holds `resources` generated resources (`--resources`).
    pub fn up_seeded(replicas: u32, resources: u32) -> Option<Sbx> {
        Self::start(
            replicas,
            "sbx",
            default_stack(),
            |_| {},
            &["--resources", &resources.to_string()],
        )
    }

    pub fn up_stack(
        replicas: u32,
        rel: &str,
        stack: &'static str,
        prepare: impl FnOnce(&Sandbox),
    ) -> Option<Sbx> {
        Self::start(replicas, rel, stack, prepare, &[])
    }

    pub fn start(
        replicas: u32,
        rel: &str,
        stack: &'static str,
        prepare: impl FnOnce(&Sandbox),
        extra: &[&str],
    ) -> Option<Sbx> {
        if !require("a running Docker engine", engine_up()) {
            return None;
        }
        let sb = Sandbox::new();
        prepare(&sb);
        let dir = sb.path(rel);
        let standin = crate::docker::standin_bin();
        let n = replicas.to_string();
        let mut args = vec![
            "sandbox",
            "up",
            "--dir",
            dir.to_str().unwrap(),
            "--replicas",
            &n,
            "--standin",
            standin.to_str().unwrap(),
            "--label",
            "ferry.test=1",
            "--stack",
            stack,
        ];
        args.extend_from_slice(extra);
        let out = sb.run(&args);
        out.expect(0);
        Some(Sbx { sb, dir, stack })
    }

    /// How many services besides hapi `docker-compose up` reports on.
    pub fn other_services(&self) -> usize {
        if self.stack == "compose" { 4 } else { 1 }
    }

    /// psql as the superuser on fhirdb: the host cluster's socket, or the published port.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_in("fhirdb", sql)
    }

    /// psql as the superuser on `db` (fhirdb or auditdb): the host stack's one cluster holds
    /// both, the compose stack has postgres-fhir on `pg_port` and postgres-audit on
    /// `audit_port` (which the host stack records as `pg_port`).
    pub fn psql_in(&self, db: &str, sql: &str) -> String {
        let st = self.state();
        let port = if db == "auditdb" {
            "audit_port"
        } else {
            "pg_port"
        };
        let mut c = Command::new("psql");
        if self.stack == "compose" {
            c.env("PGPASSWORD", self.secret("SANDBOX_PG_SUPERUSER_PASSWORD"))
                .args(["-h", "127.0.0.1"]);
        } else {
            c.args(["-h", self.service_dir().join("pg").to_str().unwrap()]);
        }
        let o = c
            .args(["-p", &st[port].to_string(), "-U", "postgres", "-d", db])
            .args(["-v", "ON_ERROR_STOP=1", "-XAtq", "-c", sql])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    }

    pub fn target(&self) -> String {
        self.dir.join("target.toml").display().to_string()
    }

    pub fn project(&self) -> String {
        let t = std::fs::read_to_string(self.dir.join("target.toml")).unwrap();
        t.lines()
            .find_map(|l| l.strip_prefix("compose_project = "))
            .unwrap()
            .trim_matches('"')
            .to_owned()
    }

    pub fn compose(&self, args: &[&str]) -> (bool, String) {
        let o = Command::new("docker-compose")
            .current_dir(self.dir.join("files"))
            .args(["-p", &self.project()])
            .args(args)
            .output()
            .unwrap();
        (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    }

    /// compose agrees with what ferry did: `up -d` at `hapi` replicas finds hapi and every
    /// other service up to date, and recreates nothing.
    #[track_caller]
    pub fn assert_compose_agrees(&self, hapi: usize) {
        let (ok, up) = self.compose(&["up", "-d", "--scale", &format!("hapi={hapi}")]);
        assert!(ok, "{up}");
        assert_eq!(
            up.matches("is up-to-date").count(),
            hapi + self.other_services(),
            "{hapi} hapi + the other services up to date:\n{up}"
        );
        assert!(!up.contains("Recreating"), "{up}");
    }

    pub fn base_url(&self) -> String {
        let t = std::fs::read_to_string(self.dir.join("target.toml")).unwrap();
        t.lines()
            .find_map(|l| l.strip_prefix("base_url = "))
            .unwrap()
            .trim_matches('"')
            .to_owned()
    }

    pub fn run(&self, args: &[&str]) -> Out {
        let mut a: Vec<&str> = args.to_vec();
        let t = self.target();
        a.extend_from_slice(&["--target", &t]);
        self.sb.run(&a)
    }

    /// (container name, image id, container id) of each hapi replica.
    pub fn replicas(&self) -> Vec<(String, String, String)> {
        let o = Command::new("docker")
            .args([
                "ps",
                "--filter",
                &format!("label=com.docker.compose.project={}", self.project()),
                "--filter",
                "label=com.docker.compose.service=hapi",
            ])
            .args(["--format", "{{.Names}} {{.ID}}"])
            .output()
            .unwrap();
        let mut v: Vec<(String, String, String)> = String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| {
                let (name, id) = l.split_once(' ').unwrap();
                let img = Command::new("docker")
                    .args(["inspect", "--format", "{{.Image}}", id])
                    .output()
                    .unwrap();
                (
                    name.to_owned(),
                    String::from_utf8_lossy(&img.stdout).trim().to_owned(),
                    id.to_owned(),
                )
            })
            .collect();
        v.sort();
        v
    }

    pub fn version(&self) -> String {
        metadata(&self.base_url())
    }

    pub fn state(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.dir.join("sandbox.json")).unwrap()).unwrap()
    }

    /// Value `key` of the sandbox's `secrets.env`.
    pub fn secret(&self, key: &str) -> String {
        std::fs::read_to_string(self.dir.join("secrets.env"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_owned))
            .unwrap()
    }

    /// Where the host stack's services (PostgreSQL, pgBouncer) keep their files.
    pub fn service_dir(&self) -> PathBuf {
        self.state()["service_dir"]
            .as_str()
            .map_or_else(|| self.dir.clone(), PathBuf::from)
    }

    /// The host stack's postmaster.
    pub fn postmaster(&self) -> u32 {
        std::fs::read_to_string(self.service_dir().join("pg/data/postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next()?.trim().parse().ok())
            .expect("the sandbox's postmaster pid")
    }

    /// Everything this sandbox made, scoped to its id and compose project: containers,
    /// networks and images (those the test built `FROM` its image inherit its label too),
    /// PostgreSQL, pgBouncer and the registry, its dirs, and the test's own temp dir.
    pub fn leftovers(&self) -> Vec<Leftover> {
        let st = self.state();
        let pid = |k: &str| Leftover::process(st[k].as_u64().unwrap() as u32);
        let mut v = vec![
            Leftover::Docker(format!("ferry.sandbox={}", st["id"].as_str().unwrap())),
            Leftover::Docker(format!(
                "com.docker.compose.project={}",
                st["project"].as_str().unwrap()
            )),
            pid("registry_pid"),
            Leftover::Path(self.dir.clone()),
        ];
        // On the compose stack PostgreSQL and pgBouncer are containers of the project.
        if self.stack == "host" {
            v.extend([
                Leftover::process(self.postmaster()),
                pid("bouncer_pid"),
                Leftover::Path(self.service_dir()),
            ]);
        }
        v.extend(self.sb.leftovers());
        v
    }

    /// Ends the test: `sandbox down` (on drop) must leave nothing of it.
    pub fn finish(self) {
        let made = self.leftovers();
        drop(self);
        assert_no_leftovers(&made);
    }
}

impl Drop for Sbx {
    fn drop(&mut self) {
        let out = self
            .sb
            .run(&["sandbox", "down", "--dir", self.dir.to_str().unwrap()]);
        if out.code != Some(0) {
            eprintln!("sandbox down failed: {}", out.stderr);
        }
    }
}

pub fn metadata(base: &str) -> String {
    let o = Command::new("curl")
        .args([
            "-sf",
            "-H",
            "Accept: application/fhir+json",
            &format!("{base}/metadata"),
        ])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    v["software"]["version"].as_str().unwrap_or("").to_owned()
}
