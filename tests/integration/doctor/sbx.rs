//! The sandbox of the doctor and CI-recipe tests: the shared [`sandbox_harness::Sbx`] on
//! FERRY_TEST_SANDBOX_STACK's stack (default compose), plus the handles they break it
//! through: variants of its target, a replica's name, stopping PostgreSQL or pgBouncer (a
//! host process or a container, per stack), and `ferry doctor` itself. Leftovers, `finish`
//! and `sandbox down` on drop are the shared fixture's.
//!
//! [`sandbox_harness::Sbx`]: crate::sandbox_harness::Sbx

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::harness::Out;
use crate::sandbox_harness;

pub struct Sbx(sandbox_harness::Sbx);

impl Deref for Sbx {
    type Target = sandbox_harness::Sbx;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Sbx {
    /// On FERRY_TEST_SANDBOX_STACK's stack (default compose): what the tests break is a
    /// host process on the host stack and a container on compose ([`Sbx::freeze_databases`],
    /// [`Sbx::stop_bouncer`]).
    pub fn up(replicas: u32) -> Option<Sbx> {
        sandbox_harness::Sbx::up(replicas).map(Sbx)
    }

    /// The container of the compose stack's `service` (one replica).
    fn container(&self, service: &str) -> String {
        format!("{}_{service}_1", self.state()["project"].as_str().unwrap())
    }

    /// PostgreSQL stopped in its tracks (`true`) or going again (`false`): SIGSTOP/SIGCONT on
    /// the host stack's postmaster (one cluster, both databases), `docker pause|unpause` of
    /// postgres-fhir and postgres-audit on compose.
    pub fn freeze_databases(&self, freeze: bool) {
        if self.stack == "compose" {
            for svc in ["postgres-fhir", "postgres-audit"] {
                let verb = if freeze { "pause" } else { "unpause" };
                super::docker(&[verb, &self.container(svc)]);
            }
        } else {
            super::signal(
                self.postmaster().into(),
                if freeze { "-STOP" } else { "-CONT" },
            );
        }
    }

    /// pgBouncer down until `sandbox up` starts it again: SIGTERM to the host stack's
    /// process, `docker stop` of pgbouncer-fhir on compose (whose restart policy,
    /// unless-stopped, leaves it stopped).
    pub fn stop_bouncer(&self) {
        if self.stack == "compose" {
            super::docker(&["stop", "-t", "5", &self.container("pgbouncer-fhir")]);
            return;
        }
        let pid = self.state()["bouncer_pid"].as_u64().unwrap();
        super::signal(pid, "-TERM");
        crate::harness::wait_for("pgBouncer to stop", Duration::from_secs(10), || {
            !crate::harness::pid_alive(pid as u32)
        });
    }

    /// The target file, as a path.
    pub fn target_file(&self) -> PathBuf {
        self.dir.join("target.toml")
    }

    /// A copy of the target beside it (so its relative paths still resolve), with `from`
    /// replaced by `to`.
    pub fn variant(&self, name: &str, from: &str, to: &str) -> PathBuf {
        let t = std::fs::read_to_string(self.target_file()).unwrap();
        assert!(t.contains(from), "{from:?} not in the target:\n{t}");
        let p = self.dir.join(format!("{name}.toml"));
        std::fs::write(&p, t.replacen(from, to, 1)).unwrap();
        p
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

    /// `sandbox down` (on drop) must leave nothing of it.
    pub fn finish(self) {
        self.0.finish();
    }
}
