//! Debian's `docker-registry` (distribution v2) on 127.0.0.1 with htpasswd (bcrypt) auth and
//! deletes enabled, so pushes, digests and rollback deletes are exercised for real.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::proc;

pub fn start(dir: &Path, port: u16, user: &str, password: &str) -> anyhow::Result<u32> {
    std::fs::create_dir_all(dir.join("data"))?;
    let mut c = Command::new(super::deps::bin("htpasswd"));
    c.args(["-Bbn", user, password]);
    let line = proc::run(c, "htpasswd")?;
    std::fs::write(dir.join("htpasswd"), line)?;
    let config = format!(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {d}/data\n  delete:\n    enabled: true\n\
         http:\n  addr: 127.0.0.1:{port}\nauth:\n  htpasswd:\n    realm: ferry-sandbox\n    path: {d}/htpasswd\n",
        d = dir.display()
    );
    std::fs::write(dir.join("config.yml"), config)?;
    let mut c = Command::new(super::deps::bin("docker-registry"));
    c.arg("serve").arg(dir.join("config.yml"));
    let pid = proc::spawn_daemon(c, &dir.join("registry.log"))?;
    proc::wait_port(port, Duration::from_secs(15))?;
    Ok(pid)
}
