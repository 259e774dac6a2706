//! The rolling redeploy's traffic and configuration on the real engine (issue 11, items
//! 3, 5, 6): new replicas get what `docker-compose config` gives the service after the
//! `.env` change; a clone (or a replica `scale` adds) gets no user request before its gate
//! passed; requests in flight
//! on an old replica are answered before it stops. Each test starts its own sandbox (the
//! stand-in behind nginx on the compose stack, behind the stand-in's round-robin proxy on the
//! host stack; labelled `ferry.test=1`) and takes it down.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::harness::{Playbook, repo};
use crate::sandbox::{Sbx, docker};

/// One GET through the proxy on a fresh connection: (status, body), or why it failed.
fn get(base: &str, path_q: &str) -> Result<(u16, String), String> {
    let rest = base.strip_prefix("http://").ok_or("not http")?;
    let (hostport, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let mut c = TcpStream::connect(hostport).map_err(|e| format!("connect: {e}"))?;
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        c,
        "GET /{prefix}{path_q} HTTP/1.1\r\nHost: {hostport}\r\nAccept: application/fhir+json\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut buf = String::new();
    c.read_to_string(&mut buf)
        .map_err(|e| format!("read: {e}"))?;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no HTTP answer ({} bytes)", buf.len()))?;
    let body = buf.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    Ok((status, body.to_owned()))
}

fn version_of(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    v["software"]["version"].as_str().unwrap_or("").to_owned()
}

/// A request's outcome: (status, software.version answered), or why it failed.
type Outcome = Result<(u16, String), String>;

/// `clients` threads sending `path_q` back to back until stopped: every answer's outcome.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    seen: Arc<Mutex<Vec<Outcome>>>,
}

impl Load {
    fn start(base: &str, path_q: &str, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(vec![]));
        let threads = (0..clients)
            .map(|_| {
                let (stop, seen) = (stop.clone(), seen.clone());
                let (base, path_q) = (base.to_owned(), path_q.to_owned());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let r = get(&base, &path_q).map(|(s, b)| (s, version_of(&b)));
                        seen.lock().unwrap().push(r);
                    }
                })
            })
            .collect();
        Load {
            stop,
            threads,
            seen,
        }
    }

    fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

/// An image FROM the sandbox's current one, labelled for cleanup, with `extra` lines.
fn variant(s: &Sbx, tag: &str, extra: &str) -> String {
    let current = s.state()["image"].as_str().unwrap().to_owned();
    let ctx = s.sb.path(&format!("variant-{tag}"));
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::copy(
        repo().join("fixtures/ig/bd.gov.dghs.core-0.2.2.tgz"),
        ctx.join("ig.tgz"),
    )
    .unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {current}\nLABEL ferry.test=1\n{extra}\n"),
    )
    .unwrap();
    let image = format!("ferry-test-rollout-{tag}:1");
    docker(&["build", "-q", "-t", &image, ctx.to_str().unwrap()]);
    image
}

fn env_of(container: &str) -> Vec<String> {
    serde_json::from_str(&docker(&[
        "inspect",
        "--format",
        "{{json .Config.Env}}",
        container,
    ]))
    .unwrap()
}

#[test]
fn new_replicas_get_composes_environment_after_the_env_change_and_compose_agrees() {
    let Some(s) = Sbx::up(2) else { return };
    // The service's environment interpolates the IG version from .env, as production's does.
    let compose = s.dir.join("files/docker-compose.yml");
    let text = std::fs::read_to_string(&compose).unwrap();
    let text = text.replacen(
        "    environment:\n",
        "    environment:\n      HAPI_IG_VERSION: \"${HAPI_IG_VERSION}\"\n",
        1,
    );
    std::fs::write(&compose, text).unwrap();
    let (ok, up) = s.compose(&["up", "-d", "--scale", "hapi=2"]);
    assert!(ok, "{up}");
    let names: Vec<String> = s.replicas().into_iter().map(|r| r.0).collect();
    for n in &names {
        crate::sandbox::wait_healthy(n);
        assert!(env_of(n).contains(&"HAPI_IG_VERSION=0.2.1".into()), "{n}");
    }
    let pb = repo()
        .join("playbooks/ig-upgrade.toml")
        .display()
        .to_string();
    let pkg = repo().join("fixtures/ig/bd.gov.dghs.core-0.2.2.tgz");
    let out = s.run(&[
        "run",
        &pb,
        "--var",
        &format!("ig_package={}", pkg.display()),
        "--var",
        "build_version=1.1.0",
    ]);
    out.expect(0);
    let after = s.replicas();
    assert_eq!(after.len(), 2);
    for (n, _, _) in &after {
        let env = env_of(n);
        assert!(
            env.contains(&"HAPI_IG_VERSION=0.2.2".into())
                && !env.iter().any(|e| e == "HAPI_IG_VERSION=0.2.1"),
            "{n}: {env:?}"
        );
    }
    // compose computes the same container from the files: nothing to recreate.
    let (ok, up) = s.compose(&["up", "-d", "--scale", "hapi=2"]);
    assert!(ok, "{up}");
    assert_eq!(
        up.matches("is up-to-date").count(),
        2 + s.other_services(),
        "2 hapi + the other services:\n{up}"
    );
    assert!(!up.contains("Recreating"), "{up}");
    assert_eq!(s.replicas(), after, "the same containers");
    s.finish();
}

/// An image that serves the new IG (so an answer from it is recognisable) but is never
/// healthy.
fn unhealthy(s: &Sbx, name: &str) -> String {
    variant(
        s,
        name,
        "COPY ig.tgz /app/packages/bd.gov.dghs.core-0.2.2.tgz\n\
         ENV HAPI_IG_PACKAGE_CLASSPATH=classpath:packages/bd.gov.dghs.core-0.2.2.tgz STANDIN_FAIL=1",
    )
}

/// Runs `playbook` under load: it fails on its new container's 8 s gate, no answer came
/// from that container (`who`), the old replicas answered throughout and are what is left.
fn fails_its_gate_unseen(s: &Sbx, playbook: &str, image: &str, who: &str) {
    let before = s.replicas();
    let load = Load::start(&s.base_url(), "/metadata", 2);
    let out = s.run(&["run", playbook]);
    let seen = load.finish();
    out.expect(1);
    assert!(
        out.stderr.contains("did not pass its gate within 8s"),
        "{}",
        out.stderr
    );
    let from_new = seen
        .iter()
        .filter(|r| matches!(r, Ok((_, v)) if v == "0.2.2"))
        .count();
    let answered = seen
        .iter()
        .filter(|r| matches!(r, Ok((200, v)) if v == "0.2.1"))
        .count();
    assert_eq!(
        from_new,
        0,
        "{from_new} of {} answers came from {who}",
        seen.len()
    );
    assert!(answered > 20, "the old replicas answered: {answered}");
    assert_eq!(s.replicas(), before, "the old replicas kept, {who} removed");
    let _ = std::process::Command::new("docker")
        .args(["rmi", "-f", image])
        .output();
}

#[test]
fn a_clone_that_never_turns_healthy_never_answers_a_request_and_is_rolled_back() {
    let Some(s) = Sbx::up(2) else { return };
    let image = unhealthy(&s, "unhealthy");
    Playbook::new("bad")
        .step("rollout", "rolling_redeploy")
        .str("image", &image)
        .str("health_timeout", "8s")
        .write(&s.sb, "bad.toml");
    fails_its_gate_unseen(&s, "bad.toml", &image, "the unhealthy clone");
    s.finish();
}

#[test]
fn a_replica_scale_adds_that_never_turns_healthy_never_answers_a_request() {
    let Some(s) = Sbx::up(2) else { return };
    // The image compose now names is never healthy: the replica `scale` adds from it must
    // stay out of the service's alias.
    let image = unhealthy(&s, "scale-unhealthy");
    let env = s.dir.join("files/.env");
    let text = std::fs::read_to_string(&env).unwrap();
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("HAPI_IMAGE=") {
                format!("HAPI_IMAGE={image}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&env, text).unwrap();
    Playbook::new("scale")
        .step("scale", "scale")
        .raw("replicas", "3")
        .str("health_timeout", "8s")
        .write(&s.sb, "scale.toml");
    fails_its_gate_unseen(
        &s,
        "scale.toml",
        &image,
        "the replica scale added before its gate",
    );
    s.finish();
}

#[test]
fn slow_requests_in_flight_during_a_rollout_all_succeed() {
    let Some(s) = Sbx::up(2) else { return };
    let image = variant(&s, "next", "LABEL variant=next");
    Playbook::new("roll")
        .step("rollout", "rolling_redeploy")
        .str("image", &image)
        .str("drain", "2s")
        .str("health_timeout", "30s")
        .write(&s.sb, "roll.toml");
    // A handful of clients, each request held 200 ms by the replica.
    let load = Load::start(&s.base_url(), "/metadata?delay_ms=200", 6);
    std::thread::sleep(Duration::from_millis(500));
    let out = s.run(&["run", "roll.toml"]);
    std::thread::sleep(Duration::from_millis(500));
    let seen = load.finish();
    out.expect(0);
    let failed: Vec<_> = seen.iter().filter(|r| !matches!(r, Ok((200, _)))).collect();
    assert!(
        seen.len() > 30,
        "requests sent during the rollout: {}",
        seen.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        seen.len(),
        &failed[..failed.len().min(5)]
    );
    let img = docker(&["inspect", "--format", "{{.Id}}", &image]);
    assert!(s.replicas().iter().all(|r| r.1 == img));
    let _ = std::process::Command::new("docker")
        .args(["rmi", "-f", &image])
        .output();
    s.finish();
}
