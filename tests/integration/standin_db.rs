//! The HAPI stand-in's database side, run as a host process against a real PostgreSQL 15
//! with fixtures/hapi-schema.sql: HAPI's start-up refusals (HAPI-2563 on a primary key
//! other than `(res_id)`, Hibernate `validate` on a missing or mis-typed column, skipped
//! with HBM2DDL_AUTO=none), serving on an hfj_resource partitioned by res_id, and a
//! database outage answered with 503 (and recovered from) instead of a hung request.
//! The same stand-in behind the sandbox's proxy and pgBouncer is tested in sandbox.rs.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{HAPI_PW, Leftover, Pg, Sandbox, free_port, repo, wait_for};

const IG: &str = "bd.gov.dghs.core-0.2.1.tgz";

/// fhirdb with HAPI's schema, tables and sequences owned by `hapi` (as HAPI's migrator
/// leaves them), and a sandbox with the IG package where the stand-in looks for it.
fn db() -> Option<(Pg, Sandbox)> {
    let pg = Pg::deployment()?;
    pg.psql("fhirdb", "DO $$ DECLARE r record; BEGIN FOR r IN SELECT sequence_name FROM information_schema.sequences WHERE sequence_schema = 'public' LOOP EXECUTE format('ALTER SEQUENCE public.%I OWNER TO hapi', r.sequence_name); END LOOP; END $$");
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.path("packages")).unwrap();
    std::fs::copy(
        repo().join("fixtures/ig").join(IG),
        sb.path("packages").join(IG),
    )
    .unwrap();
    Some((pg, sb))
}

/// Starts the stand-in (a host build; the static one is the same code) on a free port.
fn standin(pg: &Pg, sb: &Sandbox, extra: &[(&str, &str)]) -> (Child, u16) {
    let port = free_port();
    let bin = crate::docker::standin_bin();
    let mut c = Command::new(bin);
    c.env_clear()
        .env("PORT", port.to_string())
        .env(
            "HAPI_IG_PACKAGE_CLASSPATH",
            format!("classpath:packages/{IG}"),
        )
        .env("STANDIN_PACKAGES_DIR", sb.path("packages"))
        .env(
            "SPRING_DATASOURCE_URL",
            format!("jdbc:postgresql://127.0.0.1:{}/fhirdb", pg.port),
        )
        .env("SPRING_DATASOURCE_USERNAME", "hapi")
        .env("SPRING_DATASOURCE_PASSWORD", HAPI_PW)
        .env("STANDIN_DB_WAIT_MS", "2000")
        .envs(extra.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    (c.spawn().expect("spawn hapi-standin"), port)
}

/// The exit code and stderr of a stand-in that must refuse to start.
fn refusal(pg: &Pg, sb: &Sandbox, extra: &[(&str, &str)]) -> (Option<i32>, String) {
    let (mut child, _) = standin(pg, sb, extra);
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("the stand-in did not refuse to start within 20s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.code(), err)
}

/// One HTTP request; (status, body). Panics after 15 s: a hung request fails the test.
fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/fhir+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).expect("a response within 15s");
    let code = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let json = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (code, serde_json::from_str(json).unwrap_or_default())
}

fn serving(child: &mut Child, port: u16) {
    wait_for("the stand-in to listen", Duration::from_secs(20), || {
        assert!(child.try_wait().unwrap().is_none(), "the stand-in exited");
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
}

fn stop(mut child: Child) -> Leftover {
    let pid = child.id();
    let _ = child.kill();
    let _ = child.wait();
    Leftover::process(pid)
}

#[test]
fn refuses_to_start_when_hfj_resource_pk_is_not_res_id_even_without_validation() {
    let Some((pg, sb)) = db() else { return };
    pg.psql(
        "fhirdb",
        "ALTER TABLE hfj_resource DROP CONSTRAINT hfj_resource_pkey CASCADE; \
         ALTER TABLE hfj_resource ALTER COLUMN partition_id SET NOT NULL; \
         ALTER TABLE hfj_resource ADD PRIMARY KEY (res_id, partition_id)",
    );
    for extra in [
        &[][..],
        &[("SPRING_JPA_PROPERTIES_HIBERNATE_HBM2DDL_AUTO", "none")][..],
    ] {
        let (code, err) = refusal(&pg, &sb, extra);
        assert_eq!(code, Some(1), "{err}");
        assert!(
            err.contains("HAPI-2563")
                && err.contains("Found HFJ_RESOURCE PK: [PARTITION_ID, RES_ID]"),
            "{err}"
        );
    }
    pg.finish(sb, &[], vec![]);
}

#[test]
fn refuses_a_missing_or_mistyped_column_and_starts_with_validation_off() {
    let Some((pg, sb)) = db() else { return };
    pg.psql(
        "fhirdb",
        "ALTER TABLE hfj_res_ver RENAME COLUMN res_text_vc TO res_text_gone",
    );
    let (code, err) = refusal(&pg, &sb, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("Schema-validation: missing column [res_text_vc] in table [hfj_res_ver]"),
        "{err}"
    );
    let (mut child, port) = standin(
        &pg,
        &sb,
        &[("SPRING_JPA_PROPERTIES_HIBERNATE_HBM2DDL_AUTO", "none")],
    );
    serving(&mut child, port);
    assert_eq!(http(port, "GET", "/actuator/health", "").0, 200);
    let gone = stop(child);
    pg.psql(
        "fhirdb",
        "ALTER TABLE hfj_res_ver RENAME COLUMN res_text_gone TO res_text_vc; \
                       ALTER TABLE hfj_resource ALTER COLUMN res_ver TYPE integer",
    );
    let (code, err) = refusal(&pg, &sb, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("wrong column type encountered in column [res_ver] in table [hfj_resource]; found [int4], but expecting [int8]"),
        "{err}"
    );
    pg.finish(sb, &[], vec![gone]);
}

#[test]
fn serves_patients_on_an_hfj_resource_partitioned_by_res_id() {
    let Some((pg, sb)) = db() else { return };
    // The shape ferry's partition_table leaves: a RANGE-partitioned parent whose PK stays
    // (res_id), so HAPI-2563 passes and the mapped columns validate on relkind 'p'.
    pg.psql(
        "fhirdb",
        "CREATE TABLE shape (LIKE hfj_resource); DROP TABLE hfj_resource CASCADE; \
         CREATE TABLE hfj_resource (LIKE shape) PARTITION BY RANGE (res_id); DROP TABLE shape; \
         ALTER TABLE hfj_resource ADD CONSTRAINT hfj_resource_pkey PRIMARY KEY (res_id); \
         CREATE TABLE hfj_resource_p0 PARTITION OF hfj_resource FOR VALUES FROM (MINVALUE) TO (1000000); \
         CREATE TABLE hfj_resource_p1 PARTITION OF hfj_resource FOR VALUES FROM (1000000) TO (MAXVALUE); \
         ALTER TABLE hfj_resource OWNER TO hapi; ALTER TABLE hfj_resource_p0 OWNER TO hapi; \
         ALTER TABLE hfj_resource_p1 OWNER TO hapi",
    );
    let (mut child, port) = standin(&pg, &sb, &[]);
    serving(&mut child, port);
    let (code, created) = http(
        port,
        "POST",
        "/fhir/Patient",
        r#"{"resourceType":"Patient","name":[{"family":"Rahman","given":["Karim"]}],"gender":"male","birthDate":"1980-02-03"}"#,
    );
    assert_eq!(code, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let (code, read) = http(port, "GET", &format!("/fhir/Patient/{id}"), "");
    assert_eq!(
        (code, read["name"][0]["family"].as_str()),
        (200, Some("Rahman")),
        "{read}"
    );
    assert_eq!(read["meta"]["versionId"], "1");
    assert_eq!(
        pg.psql(
            "fhirdb",
            &format!("SELECT tableoid::regclass FROM hfj_resource WHERE fhir_id = '{id}'")
        ),
        "hfj_resource_p0"
    );
    let gone = stop(child);
    pg.finish(sb, &[], vec![gone]);
}

#[test]
fn a_database_outage_answers_503_at_once_and_service_comes_back() {
    let Some((pg, sb)) = db() else { return };
    let (mut child, port) = standin(&pg, &sb, &[]);
    serving(&mut child, port);
    let put = r#"{"resourceType":"Patient","gender":"female"}"#;
    assert_eq!(http(port, "PUT", "/fhir/Patient/pat-outage", put).0, 201);
    // The pooled connection dies and new logins are refused: the database is "away".
    pg.psql(
        "postgres",
        "ALTER ROLE hapi NOLOGIN; SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'hapi'",
    );
    let t = Instant::now();
    let (code, body) = http(port, "GET", "/fhir/Patient/pat-outage", "");
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["resourceType"], "OperationOutcome");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );
    pg.psql("postgres", "ALTER ROLE hapi LOGIN");
    let (code, body) = http(port, "GET", "/fhir/Patient/pat-outage", "");
    assert_eq!(
        (code, body["meta"]["versionId"].as_str()),
        (200, Some("1")),
        "{body}"
    );
    let gone = stop(child);
    pg.finish(sb, &[], vec![gone]);
}
