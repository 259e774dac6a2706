//! A real Debian `docker-registry` (distribution 2.8) on a free loopback port, with htpasswd
//! (bcrypt) auth and deletes enabled, stopped by its PID on drop. Plain HTTP is fine: the
//! Docker daemon treats 127.0.0.0/8 registries as insecure by default.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::harness::{Leftover, free_port, require, wait_for};

pub const USER: &str = "ci-pusher";
pub const PASSWORD: &str = "registry-test-secret";

pub struct Registry {
    pub dir: TempDir,
    pub port: u16,
    child: Child,
}

impl Registry {
    /// None: skipped (outside CI) because `docker-registry` or `htpasswd` is missing.
    pub fn start() -> Option<Registry> {
        let have = Path::new("/usr/bin/docker-registry").exists()
            && Command::new("htpasswd")
                .arg("-h")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok();
        if !require("docker-registry + htpasswd (apache2-utils)", have) {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("ferry-registry-")
            .tempdir()
            .expect("tempdir");
        let out = Command::new("htpasswd")
            .args(["-Bbn", USER, PASSWORD])
            .output()
            .expect("htpasswd");
        assert!(out.status.success(), "htpasswd failed");
        std::fs::write(dir.path().join("htpasswd"), &out.stdout).expect("write htpasswd");
        let port = free_port();
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {root}/data\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\nauth:\n  htpasswd:\n    realm: ferry-test\n    path: {root}/htpasswd\n",
            root = dir.path().display()
        );
        let cfg = dir.path().join("config.yml");
        std::fs::write(&cfg, config).expect("write config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("log");
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let reg = Registry { dir, port, child };
        wait_for("docker-registry to listen", Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Some(reg)
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `Docker-Content-Digest` of `name:reference`, through curl with the credentials;
    /// None on 404.
    pub fn digest(&self, name: &str, reference: &str) -> Option<String> {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-D", "-", "-I", "-u"])
            .arg(format!("{USER}:{PASSWORD}"))
            .args([
                "-H",
                "Accept: application/vnd.docker.distribution.manifest.v2+json",
            ])
            .args(["-H", "Accept: application/vnd.oci.image.manifest.v1+json"])
            .arg(format!(
                "http://{}/v2/{name}/manifests/{reference}",
                self.host()
            ))
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let status = text.split_whitespace().nth(1).unwrap_or("");
        if status == "404" {
            return None;
        }
        assert_eq!(status, "200", "HEAD manifest: {text}");
        text.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("docker-content-digest")
                    .then(|| v.trim().to_owned())
            })
            .or_else(|| panic!("no digest header: {text}"))
    }

    /// What is gone once the registry is dropped: its process and its storage.
    pub fn leftovers(&self) -> Vec<Leftover> {
        vec![
            Leftover::process(self.child.id()),
            Leftover::Path(self.dir.path().to_owned()),
        ]
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        // Our own child, by its PID: SIGKILL, then reap it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
