//! The seed's Phase 1 → 2 "pgBouncer adjustment at 3+ replicas" on the compose sandbox:
//! playbooks/phase2-scale.toml raises max_connections 30 → 40 (a restart of the postgres-fhir
//! container behind pgBouncer's PAUSE) and the pool 20 → 30 (admin console + the env file),
//! then scales 3 → 5 with pool_capacity passing, while a probe reads a Patient through nginx →
//! hapi → pgbouncer-fhir → postgres-fhir: no request fails. Scaling to 5 without the raise is
//! refused; a run killed during the restart leaves pgBouncer paused until `ferry resume`
//! RESUMEs it. Docker: the nextest `docker` group.

use std::io::{Read, Write};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::harness::{repo, wait_for};
use crate::sandbox::Sbx;
use crate::sandbox_db::{fhir, patient};

fn secret(s: &Sbx, key: &str) -> String {
    let secrets = std::fs::read_to_string(s.dir.join("secrets.env")).unwrap();
    secrets
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap()
        .to_owned()
}

/// Rows of an admin-console command (`|`-separated, no header).
fn admin(s: &Sbx, cmd: &str) -> Vec<Vec<String>> {
    let o = Command::new("psql")
        .env("PGPASSWORD", secret(s, "SANDBOX_PGBOUNCER_PASSWORD"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &s.state()["bouncer_port"].to_string(),
        ])
        .args([
            "-U",
            "pgbouncer_admin",
            "-d",
            "pgbouncer",
            "-XAtF|",
            "-c",
            cmd,
        ])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| l.split('|').map(str::to_owned).collect())
        .collect()
}

fn default_pool_size(s: &Sbx) -> String {
    admin(s, "SHOW CONFIG")
        .into_iter()
        .find(|r| r[0] == "default_pool_size")
        .map(|r| r[1].clone())
        .unwrap()
}

/// Whether pgBouncer holds fhirdb paused (`SHOW DATABASES`' `paused` column).
fn paused(s: &Sbx) -> bool {
    let o = Command::new("psql")
        .env("PGPASSWORD", secret(s, "SANDBOX_PGBOUNCER_PASSWORD"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &s.state()["bouncer_port"].to_string(),
        ])
        .args([
            "-U",
            "pgbouncer_admin",
            "-d",
            "pgbouncer",
            "-XA",
            "-F|",
            "-c",
        ])
        .arg("SHOW DATABASES")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    let mut lines = text.lines();
    let head: Vec<&str> = lines.next().unwrap_or("").split('|').collect();
    let col = head
        .iter()
        .position(|h| *h == "paused")
        .expect("a paused column");
    lines.any(|l| {
        let r: Vec<&str> = l.split('|').collect();
        r.first() == Some(&"fhirdb") && r.get(col) == Some(&"1")
    })
}

fn env_pool(s: &Sbx) -> String {
    std::fs::read_to_string(s.dir.join("files/.env"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("PGBOUNCER_DEFAULT_POOL_SIZE="))
        .unwrap()
        .to_owned()
}

/// `GET /fhir/Patient/{id}` through nginx back to back: each reads the database.
struct Probe {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<(u32, Vec<String>, Duration)>,
}

impl Probe {
    fn start(s: &Sbx) -> Probe {
        let base = s.base_url();
        let (code, body) = fhir(
            &format!("{base}/Patient/phase2-probe"),
            "PUT",
            Some(&patient("Phase").replacen('{', "{\"id\":\"phase2-probe\",", 1)),
        );
        assert!(
            code == 200 || code == 201,
            "PUT the probe's Patient: {code} {body}"
        );
        let addr = base
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut ok, mut failed, mut longest) = (0u32, Vec::new(), Duration::ZERO);
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    match get(&addr) {
                        Ok(200) => ok += 1,
                        Ok(code) => failed.push(format!("HTTP {code}")),
                        Err(e) => failed.push(e),
                    }
                    longest = longest.max(t.elapsed());
                }
                (ok, failed, longest)
            })
        };
        Probe { stop, handle }
    }

    fn ok(&self) -> bool {
        !self.handle.is_finished()
    }

    fn stop(self) -> (u32, Vec<String>, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

fn get(addr: &str) -> Result<u16, String> {
    let mut c = std::net::TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c.write_all(
        b"GET /fhir/Patient/phase2-probe HTTP/1.0\r\nHost: sandbox\r\nAccept: application/fhir+json\r\n\r\n",
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    c.read_to_end(&mut buf).map_err(|e| format!("read: {e}"))?;
    String::from_utf8_lossy(&buf)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| "no status line".to_owned())
}

fn playbook(name: &str) -> String {
    repo().join("playbooks").join(name).display().to_string()
}

#[test]
fn phase2_raises_both_pools_behind_a_pause_then_scales_3_to_5_and_rolls_back_without_a_failed_request()
 {
    let Some(s) = Sbx::up_compose(3) else { return };
    let out = s.run(&[
        "run",
        &playbook("scale-replicas.toml"),
        "--var",
        "replicas=5",
    ]);
    out.expect(3);
    assert!(
        out.stderr.contains("5 × 5 = 25 > 20 (pgBouncer pool)"),
        "scale to 5 without the raise is refused:\n{}",
        out.stderr
    );
    assert_eq!(s.replicas().len(), 3, "nothing changed");

    let probe = Probe::start(&s);
    let out = s.run(&["run", &playbook("phase2-scale.toml")]);
    out.expect(0);
    for said in [
        "max_connections = 30 → 40",
        "pool 20 + 3 reserved = 23 ≤ 40 max_connections",
        "PostgreSQL restarted behind `PAUSE fhirdb`",
        "pool 30 + 3 reserved = 33 ≤ 40 max_connections",
        "5 × 5 = 25 ≤ 30 (pgBouncer pool), 5 headroom",
    ] {
        assert!(out.stderr.contains(said), "`{said}` in:\n{}", out.stderr);
    }
    assert_eq!(s.psql("SHOW max_connections"), "40");
    assert_eq!(default_pool_size(&s), "30");
    assert_eq!(
        env_pool(&s),
        "30",
        "persisted in the env file compose reads"
    );
    assert_eq!(s.replicas().len(), 5);
    assert!(!paused(&s));
    assert!(probe.ok());

    // Rollback restores both the same way (a second restart behind PAUSE), then 3 replicas.
    let id = s.sb.run_ids().pop().unwrap();
    s.sb.run(&["rollback", &id]).expect(0);
    assert_eq!(s.psql("SHOW max_connections"), "30");
    assert_eq!(default_pool_size(&s), "20");
    assert_eq!(env_pool(&s), "20");
    assert_eq!(s.replicas().len(), 3);
    let (ok, failed, longest) = probe.stop();
    eprintln!("probe: {ok} requests, longest {longest:?}");
    assert!(ok > 50, "the probe ran ({ok} requests)");
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    s.finish();
}

/// kill -9 while pgBouncer is paused by the restart: the clients' requests wait; `ferry
/// resume` RESUMEs pgBouncer and finishes the playbook, and no request failed.
/// `ferry resume` of a killed phase2-scale run: it says `said` and that it RESUMEd pgBouncer,
/// and finishes the playbook (max_connections 40, pool 30, 5 replicas) with no probe request
/// failed; then the sandbox goes down.
fn resumes_to_phase2(s: Sbx, probe: Probe, said: &[&str]) {
    let out = s.sb.run(&["resume"]);
    out.expect(0);
    for said in said.iter().chain(&[
        "RESUMEd after an interrupted restart",
        "5 × 5 = 25 ≤ 30 (pgBouncer pool), 5 headroom",
    ]) {
        assert!(out.stderr.contains(said), "`{said}` in:\n{}", out.stderr);
    }
    assert!(!paused(&s));
    assert_eq!(s.psql("SHOW max_connections"), "40");
    assert_eq!(default_pool_size(&s), "30");
    assert_eq!(s.replicas().len(), 5);
    let (ok, failed, longest) = probe.stop();
    eprintln!("probe: {ok} requests, longest {longest:?}");
    assert!(ok > 20, "the probe ran ({ok} requests)");
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    s.finish();
}

#[test]
fn phase2_killed_during_the_restart_leaves_pgbouncer_paused_until_resume_resumes_it() {
    let Some(s) = Sbx::up_compose(3) else { return };
    let probe = Probe::start(&s);
    let t = s.target();
    let mut child = s.sb.spawn(
        &["run", &playbook("phase2-scale.toml"), "--target", &t],
        &[],
    );
    wait_for(
        "pgBouncer paused by the restart",
        Duration::from_secs(120),
        || {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                panic!("ferry ended ({status}) before the restart:\n{err}");
            }
            paused(&s)
        },
    );
    // SAFETY: plain syscall on the ferry this test spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    // This test is about the pause: the server is brought back to steady first (a kill
    // between the stop and the start, which `resume` recovers by itself, is the next test's).
    // A stop ferry sent just before the kill may still be under way (the container reads as
    // running and healthy until it exits), so "up" means: accepting connections without a
    // break for 5 s, the container started again whenever it is found stopped.
    let pg = format!("{}_postgres-fhir_1", s.project());
    let docker = |args: &[&str]| Command::new("docker").args(args).output().unwrap();
    let mut steady: Option<std::time::Instant> = None;
    wait_for("postgres-fhir up for 5 s", Duration::from_secs(120), || {
        let running = docker(&["inspect", "--format", "{{.State.Running}}", &pg]);
        if String::from_utf8_lossy(&running.stdout).trim() != "true" {
            eprintln!("the kill left {pg} stopped: docker start");
            let o = docker(&["start", &pg]);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            steady = None;
            return false;
        }
        let ready = docker(&[
            "exec",
            &pg,
            "pg_isready",
            "-q",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "fhirdb",
        ]);
        if !ready.status.success() {
            steady = None;
            return false;
        }
        steady.get_or_insert_with(std::time::Instant::now).elapsed() >= Duration::from_secs(5)
    });
    assert!(paused(&s), "pgBouncer stays paused until ferry comes back");

    resumes_to_phase2(s, probe, &[]);
}

/// kill -9 between the restart's stop and its start of postgres-fhir (the failpoint on the
/// step's fourth checkpoint: the one saved once the stop has returned): the server is left
/// stopped and pgBouncer paused, and the run's database lock lives in that server. `ferry
/// resume`, with no manual step, starts the container its run stopped (nobody started it
/// since) before taking the lock, RESUMEs pgBouncer and finishes; no request failed.
#[test]
fn phase2_killed_between_the_stop_and_the_start_resume_starts_the_server_itself() {
    let Some(s) = Sbx::up_compose(3) else { return };
    let probe = Probe::start(&s);
    let t = s.target();
    let mut child = s.sb.spawn(
        &["run", &playbook("phase2-scale.toml"), "--target", &t],
        &[("FERRY_FAILPOINT", "checkpoint:max-connections#4")],
    );
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "killed:\n{err}");
    let pg = format!("{}_postgres-fhir_1", s.project());
    let running = Command::new("docker")
        .args(["inspect", "--format", "{{.State.Running}}", &pg])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&running.stdout).trim(),
        "false",
        "the kill left {pg} stopped"
    );
    assert!(paused(&s), "and pgBouncer paused");

    resumes_to_phase2(
        s,
        probe,
        &["was left stopped by the interrupted restart: started it again"],
    );
}
