//! The whole hfj-resource-partitioning playbook on the sandbox (2 stand-in replicas, a few
//! thousand generated resources), for range + attach and for hash + copy: HAPI goes to 0 and
//! back through `scale`, the stand-in then writes (POST, PUT) and reads (GET) through the
//! proxy on the partitioned table, the rows land in partitions, `ferry report` marks the
//! downtime, and `ferry rollback` brings every row (those written after the swap too) back
//! into the plain table with HAPI serving. Docker: in the nextest `docker` group.

use crate::harness::repo;
use crate::sandbox::Sbx;
use crate::sandbox_db::{fhir, patient, psql};

const RESOURCES: u32 = 3000;

fn env_of_replicas(s: &Sbx, key: &str) -> Vec<String> {
    s.replicas()
        .iter()
        .map(|(name, _, _)| {
            let o = std::process::Command::new("docker")
                .args([
                    "inspect",
                    "--format",
                    "{{range .Config.Env}}{{println .}}{{end}}",
                ])
                .arg(name)
                .output()
                .unwrap();
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_owned))
                .unwrap_or_default()
        })
        .collect()
}

fn window(strategy: &str, existing: &str) {
    let Some(s) = Sbx::up_seeded(2, RESOURCES) else {
        return;
    };
    let base = s.base_url();
    let before: i64 = psql(&s, "SELECT count(*) FROM hfj_resource")
        .parse()
        .unwrap();
    assert!(before >= i64::from(RESOURCES), "seeded {before}");
    let playbook = repo().join("playbooks/hfj-resource-partitioning.toml");
    let (sv, ev) = (
        format!("strategy={strategy}"),
        format!("existing={existing}"),
    );
    let out = s.run(&[
        "--format",
        "json",
        "run",
        playbook.to_str().unwrap(),
        "--var",
        &sv,
        "--var",
        &ev,
        "--var",
        "modulus=4",
        "--var",
        "skip_trigger=yes",
    ]);
    out.expect(0);
    let events = out.events();
    let run_id = events
        .iter()
        .find_map(|e| e["run_id"].as_str())
        .expect("a run id in the events")
        .to_owned();
    // Scale journaled HAPI going to 0 and back (twice: the window, then the recreation
    // with validation back on).
    let ups: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "log" && e["step"] == "hapi-up")
        .filter_map(|e| e["message"].as_str())
        .collect();
    assert!(
        ups.iter()
            .any(|m| m.contains("docker-compose up hapi with 2 replicas")),
        "{ups:?}"
    );
    assert_eq!(
        psql(
            &s,
            "SELECT relkind FROM pg_class WHERE oid = 'hfj_resource'::regclass"
        ),
        "p"
    );
    assert_eq!(s.replicas().len(), 2, "HAPI back to its recorded count");
    let hbm = "SPRING_JPA_PROPERTIES_HIBERNATE_HBM2DDL_AUTO";
    assert_eq!(env_of_replicas(&s, hbm), ["validate", "validate"]);

    // Writes and reads through the proxy, on the new table.
    let (code, a) = fhir(&format!("{base}/Patient"), "POST", Some(&patient("Karim")));
    assert_eq!(code, 201, "{a}");
    let a_id = a["id"].as_str().unwrap().to_owned();
    let put = format!("{base}/Patient/window-put-1");
    assert_eq!(fhir(&put, "PUT", Some(&patient("Old"))).0, 201);
    let (code, up) = fhir(&put, "PUT", Some(&patient("New")));
    assert_eq!(
        (code, up["meta"]["versionId"].as_str()),
        (200, Some("2")),
        "{up}"
    );
    let (code, got) = fhir(&format!("{base}/Patient/{a_id}"), "GET", None);
    assert_eq!(
        (code, got["name"][0]["family"].as_str()),
        (200, Some("Karim")),
        "{got}"
    );
    let sql_in = format!("fhir_id IN ('{a_id}', 'window-put-1')");
    let parts = psql(
        &s,
        &format!(
            "SELECT string_agg(DISTINCT tableoid::regclass::text, ',') FROM hfj_resource WHERE {sql_in}"
        ),
    );
    assert!(
        !parts.is_empty() && parts.split(',').all(|p| p != "hfj_resource"),
        "rows in partitions: {parts}"
    );

    // The change record marks the downtime.
    let rep =
        s.sb.run(&["report", &run_id, "--format", "json", "-o", "-"]);
    rep.expect(0);
    let rec: serde_json::Value = serde_json::from_str(&rep.stdout).unwrap();
    let spans = rec["downtime"].as_array().cloned().unwrap_or_default();
    assert!(
        spans.iter().any(|d| d["stopped_by"] == "hapi-down"
            && d["started_by"] == "hapi-up"
            && d["to_ms"].as_u64() > d["from_ms"].as_u64()),
        "{spans:?}"
    );

    // Rollback: the plain table with every row, HAPI serving it.
    s.sb.run(&["rollback", &run_id]).expect(0);
    assert_eq!(
        psql(
            &s,
            "SELECT relkind FROM pg_class WHERE oid = 'hfj_resource'::regclass"
        ),
        "r"
    );
    let after: i64 = psql(&s, "SELECT count(*) FROM hfj_resource")
        .parse()
        .unwrap();
    assert_eq!(after, before + 2);
    assert_eq!(
        psql(
            &s,
            &format!("SELECT count(*) FROM ONLY hfj_resource WHERE {sql_in}")
        ),
        "2"
    );
    assert_eq!(s.replicas().len(), 2);
    let (code, got) = fhir(&put, "GET", None);
    assert_eq!(
        (code, got["name"][0]["family"].as_str()),
        (200, Some("New")),
        "{got}"
    );
    assert_eq!(got["meta"]["versionId"], "2");
    assert_eq!(fhir(&format!("{base}/Patient/{a_id}"), "GET", None).0, 200);
    s.finish();
}

#[test]
fn range_attach_window_then_writes_on_partitions_and_rollback_keeps_every_row() {
    window("range", "attach");
}

#[test]
fn hash_copy_window_then_writes_on_partitions_and_rollback_keeps_every_row() {
    window("hash", "copy");
}
