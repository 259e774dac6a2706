//! The sandbox's HAPI stand-in replicas on the real database path: proxy (nginx on the
//! compose stack) → replica
//! (container) → pgBouncer (host, reached at the host's docker0 address; on the compose stack
//! the pgbouncer-fhir service) → PostgreSQL.
//! Patient create/update/read round-trip through the proxy, the rows land in hfj_resource,
//! hfj_res_ver and hfj_spidx_*, and each replica draws res_ids in its own block of 50
//! (Hibernate's pooled optimizer over seq_resource_id). Docker: in the nextest `docker` group.

use std::collections::BTreeSet;
use std::process::Command;

use crate::sandbox::Sbx;

pub fn psql(s: &Sbx, sql: &str) -> String {
    s.psql(sql)
}

/// (status, JSON body) of a request with curl (the host only talks to 127.0.0.1 ports).
pub fn fhir(url: &str, method: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    let mut c = Command::new("curl");
    c.args(["-s", "-m", "15", "-X", method, "-w", "\n%{http_code}"])
        .args(["-H", "Content-Type: application/fhir+json"]);
    if let Some(b) = body {
        c.args(["--data-binary", b]);
    }
    let o = c.arg(url).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let (json, code) = out.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.trim().parse().unwrap_or(0),
        serde_json::from_str(json).unwrap_or_default(),
    )
}

pub fn patient(family: &str) -> String {
    format!(
        r#"{{"resourceType":"Patient","name":[{{"family":"{family}","given":["Test"]}}],"gender":"female","birthDate":"1991-04-05","identifier":[{{"system":"http://dghs.gov.bd/identifier/nid","value":"{family}-1"}}]}}"#
    )
}

/// The replica's published 127.0.0.1 port.
fn replica_url(container: &str) -> String {
    let o = Command::new("docker")
        .args(["port", container, "8080"])
        .output()
        .unwrap();
    let port = String::from_utf8_lossy(&o.stdout);
    let addr = port
        .lines()
        .find(|l| l.starts_with("127.0.0.1:"))
        .expect("a 127.0.0.1 port");
    format!("http://{addr}/fhir")
}

#[test]
fn patients_round_trip_through_proxy_and_pgbouncer_with_id_blocks_of_50_per_replica() {
    let Some(s) = Sbx::up(2) else { return };
    let base = s.base_url();
    let before: i64 = psql(&s, "SELECT last_value FROM seq_resource_id")
        .parse()
        .unwrap();

    // Through the proxy: a create, a client-assigned create and its update, reads of both.
    let (code, a) = fhir(&format!("{base}/Patient"), "POST", Some(&patient("Rahman")));
    assert_eq!(code, 201, "{a}");
    let a_id = a["id"].as_str().unwrap().to_owned();
    assert_eq!(
        fhir(
            &format!("{base}/Patient/sbx-put-1"),
            "PUT",
            Some(&patient("Old"))
        )
        .0,
        201
    );
    let (code, up) = fhir(
        &format!("{base}/Patient/sbx-put-1"),
        "PUT",
        Some(&patient("New")),
    );
    assert_eq!(
        (code, up["meta"]["versionId"].as_str()),
        (200, Some("2")),
        "{up}"
    );
    let (code, got) = fhir(&format!("{base}/Patient/sbx-put-1"), "GET", None);
    assert_eq!(code, 200, "{got}");
    assert_eq!(got["meta"]["versionId"], "2");
    assert_eq!(got["name"][0]["family"], "New");
    let (code, got) = fhir(&format!("{base}/Patient/{a_id}"), "GET", None);
    assert_eq!(
        (code, got["name"][0]["family"].as_str()),
        (200, Some("Rahman")),
        "{got}"
    );

    // Each replica directly: its ids come from one block of 50 of its own.
    let mut blocks = BTreeSet::new();
    for (name, _, _) in s.replicas() {
        let url = replica_url(&name);
        let ids: Vec<i64> = (0..3)
            .map(|i| {
                let (code, p) = fhir(
                    &format!("{url}/Patient"),
                    "POST",
                    Some(&patient(&format!("R{i}"))),
                );
                assert_eq!(code, 201, "{name}: {p}");
                p["id"].as_str().unwrap().parse().unwrap()
            })
            .collect();
        assert!(
            ids.windows(2).all(|w| w[1] == w[0] + 1),
            "{name}: {ids:?} not consecutive"
        );
        blocks.insert((name, ids));
    }
    let after: i64 = psql(&s, "SELECT last_value FROM seq_resource_id")
        .parse()
        .unwrap();
    assert_eq!(
        after - before,
        100,
        "two replicas, one nextval (= one block of 50) each"
    );
    let ranges = [(before + 1, before + 50), (before + 51, before + 100)];
    let mut used = BTreeSet::new();
    for (name, ids) in &blocks {
        let r = ranges
            .iter()
            .position(|(lo, hi)| ids.iter().all(|i| lo <= i && i <= hi))
            .unwrap_or_else(|| panic!("{name}: {ids:?} not within one block of {ranges:?}"));
        assert!(
            used.insert(r),
            "both replicas drew from the same block: {blocks:?}"
        );
    }
    let a_num: i64 = a_id.parse().unwrap();
    assert!(ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&a_num)));

    // The rows, as HAPI lays them out.
    let rid = psql(
        &s,
        "SELECT res_id FROM hfj_resource WHERE res_type = 'Patient' AND fhir_id = 'sbx-put-1'",
    );
    assert_eq!(
        psql(
            &s,
            &format!(
                "SELECT string_agg(res_ver::text || ':' || res_encoding, ',' ORDER BY res_ver) FROM hfj_res_ver WHERE res_id = {rid}"
            )
        ),
        "1:JSON,2:JSON"
    );
    assert_eq!(
        psql(
            &s,
            &format!("SELECT res_ver FROM hfj_resource WHERE res_id = {rid}")
        ),
        "2"
    );
    assert_eq!(
        psql(
            &s,
            &format!(
                "SELECT string_agg(sp_name || '=' || sp_value_normalized, ',' ORDER BY sp_name) FROM hfj_spidx_string WHERE res_id = {rid}"
            )
        ),
        "family=NEW,given=TEST",
        "an update replaces the index rows"
    );
    assert_eq!(
        psql(
            &s,
            &format!(
                "SELECT string_agg(sp_name || '=' || sp_value, ',' ORDER BY sp_name) FROM hfj_spidx_token WHERE res_id = {a_num}"
            )
        ),
        "gender=female,identifier=Rahman-1"
    );
    assert_eq!(
        psql(
            &s,
            &format!(
                "SELECT sp_value_low_date_ordinal || ' ' || sp_value_low::date FROM hfj_spidx_date WHERE res_id = {a_num}"
            )
        ),
        "19910405 1991-04-05"
    );
    s.finish();
}
