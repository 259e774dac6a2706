//! playbooks/hfj-resource-partitioning-online.toml end to end on the sandbox (2 stand-in
//! replicas, a few thousand generated resources) with HAPI serving under
//! scripts/fhir-load (POST/PUT/GET through the proxy, 3 threads) the whole run: for hash +
//! copy (change capture, copy, replay, swap) and for the default range + attach. No
//! request fails, every acknowledged write is read back with its last version, the
//! replicas are never stopped, and the rollback (still under load) loses nothing either.
//! Docker: in the nextest `docker` group.

use std::process::{Command, Stdio};

use crate::harness::repo;
use crate::sandbox::Sbx;
use crate::sandbox_db::psql;

fn online(vars: &[&str]) {
    let Some(s) = Sbx::up_seeded(2, 3000) else {
        return;
    };
    let before = s.replicas();
    let stop = s.sb.path("load-stop");
    let report = s.sb.path("load.json");
    let load = Command::new(repo().join("scripts/fhir-load"))
        .arg(s.base_url())
        .args(["--threads", "3", "--stop-file"])
        .arg(&stop)
        .arg("--json")
        .arg(&report)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A failed assertion must not leave the load running.
    struct Stop(std::path::PathBuf);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = std::fs::write(&self.0, "");
        }
    }
    let _stop = Stop(stop.clone());
    std::thread::sleep(std::time::Duration::from_secs(2));
    let playbook = repo().join("playbooks/hfj-resource-partitioning-online.toml");
    let mut args = vec![
        "run",
        playbook.to_str().unwrap(),
        "--var",
        "skip_trigger=yes",
        "--var",
        "modulus=4",
        "--var",
        "batch_rows=500",
    ];
    for v in vars {
        args.extend(["--var", v]);
    }
    s.run(&args).expect(0);
    assert_eq!(
        psql(
            &s,
            "SELECT relkind FROM pg_class WHERE oid = 'hfj_resource'::regclass"
        ),
        "p"
    );
    // Writes go on on the new table, then the rollback under the same load.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let id = s.sb.run_ids().pop().unwrap();
    s.sb.run(&["rollback", &id]).expect(0);
    assert_eq!(
        psql(
            &s,
            "SELECT relkind FROM pg_class WHERE oid = 'hfj_resource'::regclass"
        ),
        "r"
    );
    std::fs::write(&stop, "").unwrap();
    let out = load.wait_with_output().unwrap();
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    eprintln!("{vars:?}: {r}");
    assert!(
        out.status.success() && r["failed"] == 0 && r["lost"] == 0,
        "{vars:?}: {r} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(r["writes"].as_i64().unwrap() > 30, "{r}");
    assert_eq!(r["found"], r["resources"], "{r}");
    // HAPI was never stopped: the same containers serve.
    let after = s.replicas();
    assert_eq!(
        before.iter().map(|r| &r.0).collect::<Vec<_>>(),
        after.iter().map(|r| &r.0).collect::<Vec<_>>()
    );
    s.finish();
}

#[test]
fn online_copy_under_load_on_the_sandbox_then_rollback() {
    online(&["strategy=hash", "existing=copy"]);
}

#[test]
fn online_attach_under_load_on_the_sandbox_then_rollback() {
    online(&[]);
}
