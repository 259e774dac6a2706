//! The whole hfj-resource-partitioning playbook on the sandbox (2 stand-in replicas, a few
//! thousand generated resources), for range + attach and for hash + copy: refused while HAPI
//! serves; then HAPI goes to 0 and back through `scale` (one downtime: DDL validation comes
//! back by a rolling redeploy), the stand-in then writes (POST, PUT) and reads (GET) through the
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

/// The window on its own, HAPI still serving: `--dry-run` and `run` exit 3 naming the
/// running replicas and what to do, and nothing changes.
fn refused_while_hapi_runs(s: &Sbx, strategy: &str, existing: &str) {
    let pb = s.sb.write(
        "window-only.toml",
        &format!(
            "name = \"window-only\"\n[[steps]]\nid = \"convert\"\nkind = \"partition_table\"\nstage = \"convert\"\nstrategy = \"{strategy}\"\nexisting = \"{existing}\"\n"
        ),
    );
    let pb = pb.to_str().unwrap();
    for extra in [&["--dry-run"][..], &[][..]] {
        let out = s.run(&[&["run", pb][..], extra].concat());
        out.expect(3);
        let text = format!("{}{}", out.stdout, out.stderr);
        assert!(
            text.contains("replica(s) of hapi running") && text.contains("scale HAPI to 0 first"),
            "{text}"
        );
    }
    assert_eq!(
        psql(
            s,
            "SELECT relkind::text || (SELECT count(*) FROM pg_class WHERE relname LIKE '%ferry%') FROM pg_class WHERE oid = 'hfj_resource'::regclass"
        ),
        "r0",
        "nothing changed"
    );
    assert_eq!(s.replicas().len(), 2, "HAPI still serving");
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
    refused_while_hapi_runs(&s, strategy, existing);
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
    // Scale journaled HAPI going to 0 and back once (the window); validation came back
    // by a rolling redeploy, one replica at a time.
    let rolled = events
        .iter()
        .filter(|e| e["event"] == "log" && e["step"] == "hapi-revalidate")
        .filter_map(|e| e["message"].as_str())
        .filter(|m| m.starts_with("replacing "))
        .count();
    assert_eq!(rolled, 2, "each replica replaced in turn");
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
        spans.len() == 1
            && spans.iter().any(|d| d["stopped_by"] == "hapi-down"
                && d["started_by"] == "hapi-up"
                && d["to_ms"].as_u64() > d["from_ms"].as_u64()),
        "one downtime, the window's: {spans:?}"
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
