//! A sandbox for the doctor and CI-recipe tests: `ferry sandbox up` (labelled
//! `ferry.test=1`), the handles those tests break it through (its state, its secrets, its
//! superuser, variants of its target), and `sandbox down` on drop, leaving nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{Leftover, Out, Sandbox, assert_no_leftovers, require};

pub struct Sbx {
    pub sb: Sandbox,
    pub dir: PathBuf,
}

fn engine_up() -> bool {
    Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .is_ok_and(|o| o.status.success())
}

impl Sbx {
    pub fn up(replicas: u32) -> Option<Sbx> {
        if !require("a running Docker engine", engine_up()) {
            return None;
        }
        let sb = Sandbox::new();
        let dir = sb.path("sbx");
        let standin = crate::docker::standin_bin();
        sb.run(&[
            "sandbox",
            "up",
            "--dir",
            dir.to_str().unwrap(),
            "--replicas",
            &replicas.to_string(),
            "--standin",
            standin.to_str().unwrap(),
            "--label",
            "ferry.test=1",
        ])
        .expect(0);
        Some(Sbx { sb, dir })
    }

    pub fn target(&self) -> PathBuf {
        self.dir.join("target.toml")
    }

    pub fn state(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.dir.join("sandbox.json")).unwrap()).unwrap()
    }

    pub fn secret(&self, key: &str) -> String {
        std::fs::read_to_string(self.dir.join("secrets.env"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_owned))
            .unwrap()
    }

    /// A copy of the target beside it (so its relative paths still resolve), with `from`
    /// replaced by `to`.
    pub fn variant(&self, name: &str, from: &str, to: &str) -> PathBuf {
        let t = std::fs::read_to_string(self.target()).unwrap();
        assert!(t.contains(from), "{from:?} not in the target:\n{t}");
        let p = self.dir.join(format!("{name}.toml"));
        std::fs::write(&p, t.replacen(from, to, 1)).unwrap();
        p
    }

    /// As the cluster's superuser over TCP (the sandbox's scram password).
    pub fn superuser_sql(&self, db: &str, sql: &str) {
        let port = self.state()["pg_port"].as_u64().unwrap().to_string();
        let o = Command::new("psql")
            .args([
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
            ])
            .args(["-U", "postgres", "-d", db, "-c", sql])
            .env("PGPASSWORD", self.secret("SANDBOX_PG_SUPERUSER_PASSWORD"))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    pub fn hapi_replica(&self, n: u32) -> String {
        format!("{}_hapi_{n}", self.state()["project"].as_str().unwrap())
    }

    pub fn doctor(&self, target: &Path, extra: &[&str]) -> (Out, serde_json::Value) {
        let mut args = vec![
            "doctor",
            "--target",
            target.to_str().unwrap(),
            "--format",
            "json",
        ];
        args.extend_from_slice(extra);
        let out = self.sb.run(&args);
        let v = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("doctor's JSON: {e}\n{}\n{}", out.stdout, out.stderr));
        (out, v)
    }

    pub fn services(&self) -> PathBuf {
        self.state()["service_dir"]
            .as_str()
            .map_or_else(|| self.dir.clone(), PathBuf::from)
    }

    pub fn postmaster(&self) -> u32 {
        std::fs::read_to_string(self.services().join("pg/data/postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next()?.trim().parse().ok())
            .expect("the sandbox's postmaster pid")
    }

    pub fn leftovers(&self) -> Vec<Leftover> {
        let st = self.state();
        let svc = self.services();
        let postmaster = self.postmaster();
        let mut v = vec![
            Leftover::Docker(format!("ferry.sandbox={}", st["id"].as_str().unwrap())),
            Leftover::Docker(format!(
                "com.docker.compose.project={}",
                st["project"].as_str().unwrap()
            )),
            Leftover::process(postmaster),
            Leftover::Path(self.dir.clone()),
            Leftover::Path(svc),
        ];
        for k in ["bouncer_pid", "registry_pid"] {
            v.push(Leftover::process(st[k].as_u64().unwrap() as u32));
        }
        v.extend(self.sb.leftovers());
        v
    }

    /// `sandbox down` (on drop) must leave nothing of it.
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
