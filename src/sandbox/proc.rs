//! Local processes the sandbox starts and stops: run a tool (as `postgres` when ferry runs as
//! root, since initdb, postgres and pgbouncer refuse root), start a daemon that outlives
//! ferry, stop exactly the PID it recorded.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A command run as the `postgres` user when ferry is root, else as ferry's user.
pub fn as_service_user(prog: &str) -> Command {
    if is_root() {
        let mut c = Command::new(super::deps::bin("runuser"));
        c.args(["-u", "postgres", "--", prog]);
        c
    } else {
        Command::new(prog)
    }
}

/// Gives a directory to the service user (root only).
pub fn hand_over(dir: &Path) -> anyhow::Result<()> {
    if is_root() {
        let st = Command::new(super::deps::bin("chown"))
            .args(["-R", "postgres:postgres"])
            .arg(dir)
            .status()?;
        if !st.success() {
            bail!("chown -R postgres {} failed", dir.display());
        }
    }
    Ok(())
}

/// Runs a command to completion; the error carries its stderr.
pub fn run(mut cmd: Command, what: &str) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{what}: cannot start"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Starts a long-running service detached from ferry (own session, output to `log`), so it
/// keeps running after `ferry sandbox up` exits. Returns its PID.
pub fn spawn_daemon(mut cmd: Command, log: &Path) -> anyhow::Result<u32> {
    use std::os::unix::process::CommandExt;
    let f = std::fs::File::create(log)?;
    cmd.stdin(Stdio::null()).stdout(f.try_clone()?).stderr(f);
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    Ok(cmd.spawn()?.id())
}

pub fn alive(pid: u32) -> bool {
    crate::infra::process::pid_alive(pid) && !is_zombie(pid)
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// SIGTERM, then SIGKILL after `grace`.
pub fn stop_pid(pid: u32, grace: Duration) {
    // SAFETY: signals a PID this sandbox recorded as its own.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let t = Instant::now();
    while alive(pid) && t.elapsed() < grace {
        std::thread::sleep(Duration::from_millis(50));
    }
    if alive(pid) {
        // SAFETY: as above.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
}

/// The PID a daemon wrote to its pidfile. It may be listening before the file is written
/// (pgBouncer daemonizes, then writes it), so wait for a whole number.
pub fn read_pidfile(path: &Path, limit: Duration) -> anyhow::Result<u32> {
    let t = Instant::now();
    loop {
        if let Some(pid) = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return Ok(pid);
        }
        if t.elapsed() > limit {
            bail!("{} holds no PID after {limit:?}", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub fn wait_port(port: u16, limit: Duration) -> anyhow::Result<()> {
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if t.elapsed() > limit {
            bail!("nothing listens on 127.0.0.1:{port} after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A random password (no shell or URL metacharacters).
pub fn password() -> String {
    let mut b = [0u8; 12];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    format!("sbx-{}", hex::encode(b))
}
