//! The crash tests' stand: a sandbox, a second image built from its own, the proxy in
//! front of the engine, and the converged end state every crash must come back to: every
//! replica running and healthy on one image under its own name and compose labels
//! (container number, config hash of the `.env` as it is then), no `-ferry-next`
//! container, `.env` as the run (or its rollback) leaves it, `docker-compose ps` showing
//! each replica healthy and `docker-compose up -d` finding everything up to date.

use std::process::Command;

use super::proxy::Proxy;
use crate::harness::{Out, Playbook};
use crate::sandbox::Sbx;

pub(crate) struct Crash {
    pub s: Sbx,
    pub proxy: Proxy,
    /// The sandbox's image and a second one built from it (another image id).
    pub old: String,
    pub new: String,
    /// `.env` as the sandbox wrote it.
    pub env0: String,
}

fn docker(args: &[&str]) -> String {
    let o = Command::new("docker").args(args).output().unwrap();
    assert!(o.status.success(), "docker {args:?}: {o:?}");
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

/// The hapi service of the sandbox's compose file, with the stand-in's health checked
/// every 250 ms (the image says 2 s) and its start delay 300 ms (1 s): a clone is healthy
/// within a second instead of three, in every rollout, resume and rollback of a sweep.
/// What ferry does is unchanged: it is gated on the same `starting` → `healthy` states and
/// makes the same Docker calls (the proxy collapses repeated identical polls anyway).
fn fast_health(compose: &str) -> String {
    let (head, rest) = compose.split_once("  hapi:\n").expect("a hapi service");
    let end = rest
        .match_indices('\n')
        .map(|(i, _)| i + 1)
        .find(|&i| rest[i..].starts_with("  ") && !rest[i..].starts_with("   "))
        .unwrap_or(rest.len());
    let (hapi, tail) = rest.split_at(end);
    let hapi = hapi.replacen(
        "STANDIN_START_DELAY_MS: \"1000\"",
        "STANDIN_START_DELAY_MS: \"300\"",
        1,
    );
    assert!(hapi.contains("\"300\""), "the start delay:\n{hapi}");
    let hapi = format!(
        "{}\n    healthcheck:\n      test: [\"CMD\", \"/app/hapi-standin\", \"healthcheck\"]\n      interval: 250ms\n      timeout: 2s\n      retries: 3\n",
        hapi.trim_end_matches('\n')
    );
    format!("{head}  hapi:\n{hapi}{tail}")
}

/// The stack of the every-call sweeps: `FERRY_SWEEP_STACK` (`host` or `compose`), default
/// host. On compose a replica is on three networks, so each alias join and leave is three
/// disconnect/connect pairs and a sweep has about three times the kill points, past CI's
/// time; the calls only compose has (a new replica's connects to its other networks) are
/// swept on compose by their own tests (`…_on_compose`).
pub fn sweep_stack() -> &'static str {
    match std::env::var("FERRY_SWEEP_STACK").as_deref() {
        Ok("compose") => "compose",
        Ok("host") | Err(_) => "host",
        Ok(other) => panic!("FERRY_SWEEP_STACK: host or compose, not {other}"),
    }
}

impl Crash {
    pub fn up(replicas: u32, stack: &'static str) -> Option<Crash> {
        let s = Sbx::up_stack(replicas, "sbx", stack, |_| {})?;
        let compose = s.dir.join("files/docker-compose.yml");
        let text = std::fs::read_to_string(&compose).unwrap();
        std::fs::write(&compose, fast_health(&text)).unwrap();
        let (ok, up) = s.compose(&["up", "-d", "--scale", &format!("hapi={replicas}")]);
        assert!(ok, "{up}");
        for (name, _, _) in s.replicas() {
            crate::sandbox::wait_healthy(&name);
        }
        let old = s.state()["image"].as_str().unwrap().to_owned();
        let new = format!("ferry-test-next-{}:1", s.state()["id"].as_str().unwrap());
        let ctx = s.sb.path("next");
        std::fs::create_dir_all(&ctx).unwrap();
        // FROM the sandbox's image: it inherits the sandbox's label, so `down` removes it.
        std::fs::write(
            ctx.join("Dockerfile"),
            format!("FROM {old}\nLABEL ferry.test=1 variant=next\n"),
        )
        .unwrap();
        docker(&["build", "-q", "-t", &new, ctx.to_str().unwrap()]);
        let upstream = std::env::var("DOCKER_HOST")
            .ok()
            .and_then(|h| h.strip_prefix("unix://").map(str::to_owned))
            .unwrap_or_else(|| "/var/run/docker.sock".into());
        let proxy = Proxy::start(&s.sb.path("docker.sock"), upstream.as_ref());
        let env0 = std::fs::read_to_string(s.dir.join("files/.env")).unwrap();
        Some(Crash {
            s,
            proxy,
            old,
            new,
            env0,
        })
    }

    /// A playbook of one `rolling_redeploy` to `image`, with extra settings. The drain is
    /// short (its calls are still made; `rollout::` tests what it is for) so that a sweep
    /// of every Docker call stays within CI's time.
    pub fn rollout(&self, image: &str, extra: &[(&str, &str)]) -> String {
        let pb = extra.iter().fold(
            Playbook::new("rollout")
                .step("rollout", "rolling_redeploy")
                .str("image", image)
                .str("drain", "200ms"),
            |pb, (k, v)| pb.raw(k, v),
        );
        let name = format!("rollout-{}.toml", image.replace([':', '/'], "-"));
        pb.write(&self.s.sb, &name)
    }

    /// Runs ferry through the proxy, killed before its `kill_at`-th Docker request (0:
    /// never). A `run` gets the sandbox's target.
    pub fn ferry(&self, args: &[&str], kill_at: usize) -> Out {
        self.ferry_env(args, kill_at, &[])
    }

    /// `ferry` with more environment (a journal `FERRY_FAILPOINT`).
    pub fn ferry_env(&self, args: &[&str], kill_at: usize, env: &[(&str, &str)]) -> Out {
        let mut a: Vec<&str> = args.to_vec();
        let t = self.s.target();
        if args[0] == "run" {
            a.extend_from_slice(&["--target", &t]);
        }
        self.proxy.arm(kill_at);
        let host = self.proxy.host();
        let mut env = env.to_vec();
        env.push(("DOCKER_HOST", &host));
        let child = self.s.sb.spawn(&a, &env);
        self.proxy.target(child.id());
        let o = child.wait_with_output().unwrap();
        use std::os::unix::process::ExitStatusExt;
        Out {
            code: o.status.code(),
            signal: o.status.signal(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// The newest run's id and state.
    pub fn last_run(&self) -> (String, String) {
        let st = self.s.sb.run(&["status", "--format", "json"]);
        let runs: serde_json::Value = serde_json::from_str(&st.stdout).unwrap_or_default();
        (
            runs[0]["run_id"].as_str().unwrap_or("").to_owned(),
            runs[0]["state"].as_str().unwrap_or("").to_owned(),
        )
    }

    /// `.env` as a rollout to `image` leaves it: the sandbox's with only HAPI_IMAGE changed.
    pub fn env_for(&self, image: &str) -> String {
        self.env0.replace(
            &format!("HAPI_IMAGE={}\n", self.old),
            &format!("HAPI_IMAGE={image}\n"),
        )
    }

    /// The converged end state (see the module doc), on `image` with `.env` = `env`.
    #[track_caller]
    pub fn assert_converged(&self, image: &str, env: &str, n: u32, what: &str) {
        let project = self.s.project();
        // docker-compose is slow to start: its two read-only looks run side by side.
        let ((ok, hash), (ps_ok, ps)) = std::thread::scope(|t| {
            let ps = t.spawn(|| self.s.compose(&["ps"]));
            (
                self.s.compose(&["config", "--hash=hapi"]),
                ps.join().unwrap(),
            )
        });
        assert!(ok, "{what}: {hash}");
        let hash = hash.split_whitespace().nth(1).unwrap().to_owned();
        let want_id = docker(&["image", "inspect", "--format", "{{.Id}}", image]);
        let ids = docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=com.docker.compose.project={project}"),
            "--filter",
            "label=com.docker.compose.service=hapi",
        ]);
        let ids: Vec<&str> = ids.split_whitespace().collect();
        let mut seen: Vec<String> = if ids.is_empty() {
            vec![]
        } else {
            let mut args = vec![
                "inspect",
                "--format",
                "{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}} {{.Image}} {{index .Config.Labels \"com.docker.compose.container-number\"}} {{index .Config.Labels \"com.docker.compose.config-hash\"}}",
            ];
            args.extend(&ids);
            docker(&args).lines().map(str::to_owned).collect()
        };
        seen.sort();
        let want: Vec<String> = (1..=n)
            .map(|k| format!("/{project}_hapi_{k} running healthy {want_id} {k} {hash}"))
            .collect();
        assert_eq!(seen, want, "{what}: the replicas");
        let env_now = std::fs::read_to_string(self.s.dir.join("files/.env")).unwrap();
        assert_eq!(env_now, env, "{what}: .env");
        assert!(ps_ok, "{what}: {ps}");
        assert_eq!(
            ps.lines()
                .filter(|l| l.contains("_hapi_") && l.contains("Up (healthy)"))
                .count(),
            n as usize,
            "{what}: docker-compose ps\n{ps}"
        );
        let (ok, up) = self
            .s
            .compose(&["up", "-d", "--scale", &format!("hapi={n}")]);
        assert!(ok, "{what}: {up}");
        assert_eq!(
            up.matches("is up-to-date").count(),
            n as usize + self.s.other_services(),
            "{what}: docker-compose up -d changes nothing (hapi ×{n} + the stack's other services)\n{up}"
        );
        for verb in ["Recreating", "Creating", "Starting", "Stopping", "Removing"] {
            assert!(!up.contains(verb), "{what}: {up}");
        }
    }

    /// Ends the test (the sandbox goes down and leaves nothing).
    pub fn finish(self) {
        let Crash { s, proxy, .. } = self;
        drop(proxy);
        s.finish();
    }
}
