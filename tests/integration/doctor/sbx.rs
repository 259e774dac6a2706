//! The sandbox of the doctor and CI-recipe tests: the shared [`sandbox_harness::Sbx`] on
//! the host stack (these tests stop its postmaster and revoke grants in fhirdb and auditdb
//! of its one cluster), plus the handles they break it through: variants of its target, a
//! replica's name, and `ferry doctor` itself. Leftovers, `finish` and
//! `sandbox down` on drop are the shared fixture's.
//!
//! [`sandbox_harness::Sbx`]: crate::sandbox_harness::Sbx

use std::ops::Deref;
use std::path::{Path, PathBuf};

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
    /// Always the host stack, whatever FERRY_TEST_SANDBOX_STACK says: the tests break its
    /// host processes.
    pub fn up(replicas: u32) -> Option<Sbx> {
        sandbox_harness::Sbx::up_stack(replicas, "sbx", "host", |_| {}).map(Sbx)
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
