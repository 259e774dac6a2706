//! Monitoring checks and the PostgreSQL step kinds (`check`, `audit_partitions`,
//! `explain_seqscan`) against a real PostgreSQL 15 cluster loaded with the HAPI and audit
//! fixture schemas: each check on its OK path and its ALERT path with real data.

use std::time::Duration;

use crate::harness::{Leftover, Out, Pg, Playbook, Sandbox, wait_for};

fn setup() -> Option<(Pg, Sandbox)> {
    let pg = Pg::deployment()?;
    let sb = Sandbox::new();
    sb.write("t.toml", &pg.target_toml());
    Some((pg, sb))
}

fn check(pg: &Pg, sb: &Sandbox, args: &[&str]) -> Out {
    let mut a = vec!["check"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["--target", "t.toml"]);
    sb.run_env(&a, &pg.env())
}

/// `audit_events_YYYY_MM` for this month + `offset` months, by the server's clock.
fn month(pg: &Pg, offset: i32) -> String {
    pg.psql("auditdb", &format!("SELECT 'audit_events_' || to_char(date_trunc('month', now() AT TIME ZONE 'UTC') + interval '{offset} month', 'YYYY_MM')"))
}

#[test]
fn audit_partitions_ok_then_missing_next_month_alerts_like_the_seed() {
    let Some((pg, sb)) = setup() else { return };
    let out = check(&pg, &sb, &["audit-partitions"]);
    out.expect(0);
    assert!(
        out.stdout.starts_with("OK: audit partitions present for"),
        "{}",
        out.stdout
    );
    let next = month(&pg, 1);
    pg.psql("auditdb", &format!("DROP TABLE audit.{next}"));
    let out = check(&pg, &sb, &["audit-partitions"]);
    out.expect(1);
    assert_eq!(
        out.stdout.lines().next().unwrap(),
        format!("ALERT: Missing audit partition for next month: {next}")
    );
    // JSON for machines
    let json = sb.run_env(
        &[
            "check",
            "audit-partitions",
            "--target",
            "t.toml",
            "--format",
            "json",
        ],
        &pg.env(),
    );
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["status"], "alert");
    assert_eq!(v["data"]["missing"][0], next.as_str());
    pg.finish(sb, &[], vec![]);
}

#[test]
fn audit_partitions_months_ahead_gaps_and_default_partition() {
    let Some((pg, sb)) = setup() else { return };
    let m3 = month(&pg, 3);
    pg.psql("auditdb", &format!("DROP TABLE audit.{m3}"));
    // Beyond next month, a hole still fails inserts when its month comes.
    let out = check(&pg, &sb, &["audit-partitions"]);
    out.expect(1);
    assert!(
        out.stdout.contains(&format!(
            "no partition between {} and {}: inserts for that period will fail",
            month(&pg, 2),
            month(&pg, 4)
        )),
        "{}",
        out.stdout
    );
    let out = check(&pg, &sb, &["audit-partitions", "--set", "months_ahead=3"]);
    out.expect(1);
    assert!(
        out.stdout
            .contains(&format!("Missing audit partition(s): {m3}")),
        "{}",
        out.stdout
    );
    // A default partition that catches rows is itself an alert: those rows are misfiled.
    pg.psql("auditdb", "CREATE TABLE audit.audit_events_default PARTITION OF audit.audit_events DEFAULT; INSERT INTO audit.audit_events (event_time, event_type, outcome) SELECT date_trunc('month', now() AT TIME ZONE 'UTC') + interval '3 month' + interval '1 day', 'OPERATION', 'ACCEPTED'");
    wait_for("the statistics", Duration::from_secs(10), || {
        pg.psql(
            "auditdb",
            "SELECT n_live_tup FROM pg_stat_all_tables WHERE relname = 'audit_events_default'",
        ) == "1"
    });
    // The maintainer may not read the default partition: the statistics tell it.
    let out = check(&pg, &sb, &["audit-partitions"]);
    out.expect(1);
    assert!(
        out.stdout
            .contains("1 rows in the default partition audit_events_default"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("rows for that period land in the default partition"),
        "{}",
        out.stdout
    );
    pg.finish(sb, &[], vec![]);
}

#[test]
fn audit_partitions_step_creates_as_the_maintainer_and_rolls_back_only_its_own() {
    let Some((pg, sb)) = setup() else { return };
    let (next, later) = (month(&pg, 1), month(&pg, 2));
    pg.psql(
        "auditdb",
        &format!("DROP TABLE audit.{next}; DROP TABLE audit.{later}"),
    );
    Playbook::new("ap")
        .step("ensure", "audit_partitions")
        .raw("months_ahead", "2")
        .step("verify", "check")
        .str("name", "audit-partitions")
        .raw("months_ahead", "2")
        .write(&sb, "pb.toml");
    let dry = sb.run_env(
        &["run", "pb.toml", "--target", "t.toml", "--dry-run"],
        &pg.env(),
    );
    assert!(
        dry.stderr.contains(&format!(
            "to create: {next}, {later} via audit.create_partitions_ahead(2)"
        )),
        "{}",
        dry.stderr
    );
    sb.run_env(&["run", "pb.toml", "--target", "t.toml"], &pg.env())
        .expect(0);
    let present = |name: &str| {
        pg.psql(
            "auditdb",
            &format!("SELECT to_regclass('audit.{name}') IS NOT NULL"),
        )
    };
    assert_eq!(present(&next), "t");
    assert_eq!(present(&later), "t");
    // Idempotent: a second run has nothing to do.
    let again = sb.run_env(&["run", "pb.toml", "--target", "t.toml"], &pg.env());
    again.expect(0);
    assert!(
        again.stderr.contains("ensure (already applied)"),
        "{}",
        again.stderr
    );
    // Rollback of the first run drops what it created, but only while empty. The
    // maintainer cannot drop tables it does not own, so roll back with an owner's login:
    // a changed target, which the operator accepts explicitly.
    pg.psql("auditdb", "INSERT INTO audit.audit_events (event_time, event_type, outcome) SELECT date_trunc('month', now() AT TIME ZONE 'UTC') + interval '2 month' + interval '1 hour', 'OPERATION', 'ACCEPTED'");
    let first = sb.run_ids()[0].clone();
    sb.write(
        "t.toml",
        &pg.target_toml()
            .replace(
                &pg.url("audit_maintainer_login", "auditdb"),
                &pg.url("postgres", "auditdb"),
            )
            .replace("AUDIT_DB_PASSWORD", "PG_SUPERUSER_PASSWORD"),
    );
    sb.run_env(&["rollback", &first], &pg.env()).expect(2);
    let out = sb.run_env(&["rollback", &first, "--accept-changes"], &pg.env());
    out.expect(0);
    assert_eq!(present(&next), "f", "created by the run and empty: dropped");
    assert_eq!(present(&later), "t", "holds a row: kept");
    assert!(
        out.stderr
            .contains(&format!("{later} already holds rows: left in place")),
        "{}",
        out.stderr
    );
    pg.finish(sb, &[], vec![]);
}

#[test]
fn audit_partitions_step_creates_tables_directly_without_the_function() {
    let Some((pg, sb)) = setup() else { return };
    // A bare partitioned table, as a deployment without the maintenance functions has it.
    pg.psql("postgres", "CREATE DATABASE plain OWNER hapi");
    pg.psql("plain", "CREATE SCHEMA audit AUTHORIZATION hapi; SET ROLE hapi; CREATE TABLE audit.audit_events (event_time timestamptz NOT NULL, outcome text) PARTITION BY RANGE (event_time); CREATE TABLE audit.audit_events_2020_01 PARTITION OF audit.audit_events FOR VALUES FROM ('2020-01-01 00:00+00') TO ('2020-02-01 00:00+00')");
    sb.write(
        "t.toml",
        &format!(
            "{}\n[postgres.plain]\nurl = \"{}\"\npassword_env = \"FHIR_DB_PASSWORD\"\n",
            pg.target_toml(),
            pg.url("hapi", "plain")
        ),
    );
    Playbook::new("ap")
        .step("ensure", "audit_partitions")
        .str("database", "plain")
        .write(&sb, "pb.toml");
    sb.run_env(&["run", "pb.toml", "--target", "t.toml"], &pg.env())
        .expect(0);
    let this = month(&pg, 0);
    let next = month(&pg, 1);
    let n = pg.psql(
        "plain",
        &format!("SELECT count(*) FROM pg_class WHERE relname IN ('{this}', '{next}')"),
    );
    assert_eq!(n, "2");
    let id = sb.run_ids().pop().unwrap();
    sb.run_env(&["rollback", &id], &pg.env()).expect(0);
    assert_eq!(
        pg.psql("plain", "SELECT count(*) FROM pg_inherits"),
        "1",
        "only the pre-existing partition is left"
    );
    pg.finish(sb, &[], vec![]);
}

#[test]
fn connections_ok_and_alert() {
    let Some((pg, sb)) = setup() else { return };
    // A monitoring login needs to see other roles' sessions to count them.
    pg.psql("postgres", "GRANT pg_read_all_stats TO hapi");
    let out = check(&pg, &sb, &["connections"]);
    out.expect(0);
    assert!(
        out.stdout.contains("of 30 connections active"),
        "{}",
        out.stdout
    );
    let sleepers: Vec<_> = (0..2)
        .map(|_| {
            std::process::Command::new("psql")
                .args([
                    "-h",
                    pg.dir.path().to_str().unwrap(),
                    "-p",
                    &pg.port.to_string(),
                    "-U",
                    "postgres",
                    "-Xqc",
                    "SELECT pg_sleep(20)",
                ])
                .spawn()
                .unwrap()
        })
        .collect();
    wait_for("the sleepers", Duration::from_secs(10), || {
        pg.psql("postgres", "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%' AND state = 'active'") == "2"
    });
    let out = check(&pg, &sb, &["connections", "--set", "max_pct=5"]);
    out.expect(1);
    assert!(
        out.stdout
            .starts_with("ALERT: 3 of 30 connections active (10.0%, threshold 5%)"),
        "{}",
        out.stdout
    );
    let made: Vec<Leftover> = sleepers.iter().map(|s| Leftover::process(s.id())).collect();
    // A killed psql does not end its backend's pg_sleep: end the sessions, then the clients.
    pg.psql(
        "postgres",
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%' AND pid <> pg_backend_pid()",
    );
    for mut s in sleepers {
        let _ = s.kill();
        let _ = s.wait();
    }
    pg.finish(sb, &[], made);
}

#[test]
fn dead_tuples_after_updates_with_autovacuum_off() {
    let Some((pg, sb)) = setup() else { return };
    pg.psql_file("fhirdb", "fixtures/hapi-datagen.sql");
    pg.psql("fhirdb", "SELECT ferry_gen.gen_hapi(3000, 7)");
    pg.psql("fhirdb", "VACUUM ANALYZE");
    let out = check(&pg, &sb, &["dead-tuples"]);
    out.expect(0);
    pg.psql("fhirdb", "ALTER TABLE hfj_resource SET (autovacuum_enabled = false); UPDATE hfj_resource SET res_ver = res_ver WHERE res_id % 4 = 0");
    wait_for("the statistics", Duration::from_secs(10), || {
        pg.psql(
            "fhirdb",
            "SELECT n_dead_tup > 0 FROM pg_stat_user_tables WHERE relname = 'hfj_resource'",
        ) == "t"
    });
    let out = check(&pg, &sb, &["dead-tuples"]);
    out.expect(1);
    assert!(
        out.stdout
            .starts_with("ALERT: dead tuples above 10%: hfj_resource 2"),
        "{}",
        out.stdout
    );
    pg.finish(sb, &[], vec![]);
}

#[test]
fn unused_indexes_wait_for_old_enough_statistics() {
    let Some((pg, sb)) = setup() else { return };
    let out = check(&pg, &sb, &["unused-indexes"]);
    out.expect(0);
    assert!(out.stdout.contains("too early to judge"), "{}", out.stdout);
    let out = check(&pg, &sb, &["unused-indexes", "--set", "min_stats_age=0s"]);
    out.expect(1);
    assert!(
        out.stdout.contains("hfj_% index(es) never scanned"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("idx_"),
        "names the indexes: {}",
        out.stdout
    );
    assert!(
        !out.stdout.contains("_pkey"),
        "constraint indexes are not candidates: {}",
        out.stdout
    );
    pg.finish(sb, &[], vec![]);
}

#[test]
fn partition_sizes_and_vendor_rejection_rates() {
    let Some((pg, sb)) = setup() else { return };
    pg.psql_file("auditdb", "fixtures/audit-datagen.sql");
    pg.psql("auditdb", "SELECT * FROM ferry_gen.gen_audit(6000, 5, ARRAY['vendor-a','vendor-b','vendor-c'], ARRAY[0.02, 0.30, 0.05], 3)");
    let out = check(&pg, &sb, &["audit-partition-sizes"]);
    out.expect(0);
    let out = check(
        &pg,
        &sb,
        &["audit-partition-sizes", "--set", "max_size=16kB"],
    );
    out.expect(1);
    assert!(
        out.stdout.contains("audit partition(s) above 16.0 kB"),
        "{}",
        out.stdout
    );
    // The maintainer login may not read events: UNKNOWN, with the server's reason.
    let out = check(&pg, &sb, &["rejection-rate"]);
    out.expect(3);
    assert!(out.stdout.contains("permission denied"), "{}", out.stdout);
    let out = check(
        &pg,
        &sb,
        &["rejection-rate", "--set", "database=audit_admin"],
    );
    out.expect(1);
    let line = out.stdout.lines().next().unwrap();
    assert!(
        line.starts_with("ALERT: vendors above 10% rejected over 7 days: vendor-b "),
        "{line}"
    );
    let pct: f64 = line
        .split("vendor-b ")
        .nth(1)
        .unwrap()
        .split('%')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((25.0..35.0).contains(&pct), "{line}");
    assert!(
        !line.contains("vendor-a") && !line.contains("vendor-c"),
        "{line}"
    );
    let out = check(
        &pg,
        &sb,
        &[
            "rejection-rate",
            "--set",
            "database=audit_admin",
            "--set",
            "max_pct=40",
        ],
    );
    out.expect(0);
    pg.finish(sb, &[], vec![]);
}

#[test]
fn seqscan_check_and_explain_step_trigger_and_refuse_writes() {
    let Some((pg, sb)) = setup() else { return };
    pg.psql_file("fhirdb", "fixtures/hapi-datagen.sql");
    pg.psql("fhirdb", "SELECT ferry_gen.gen_hapi(3000, 5)");
    pg.psql("fhirdb", "ANALYZE");
    let forced = "query=SELECT res_id FROM hfj_resource WHERE res_language = 'bn'";
    let out = check(&pg, &sb, &["seqscan", "--set", forced]);
    out.expect(1);
    assert!(
        out.stdout
            .starts_with("ALERT: sequential scan on Seq Scan on hfj_resource"),
        "{}",
        out.stdout
    );
    let out = check(
        &pg,
        &sb,
        &[
            "seqscan",
            "--set",
            "query=SELECT res_id FROM hfj_resource WHERE res_id = 1",
        ],
    );
    out.expect(0);
    let out = check(
        &pg,
        &sb,
        &["seqscan", "--set", "query=DELETE FROM hfj_resource"],
    );
    out.expect(3);
    assert!(
        out.stdout
            .contains("only a single SELECT can be explained, not `DELETE`"),
        "{}",
        out.stdout
    );
    let before = pg.psql("fhirdb", "SELECT count(*) FROM hfj_resource");
    let explain = |query: &str, expect: &str| {
        Playbook::new("trigger")
            .step("overdue", "explain_seqscan")
            .str("database", "fhir")
            .str("query", query)
            .str("expect", expect)
    };
    let bn = "SELECT res_id FROM hfj_resource WHERE res_language = 'bn'";
    explain(bn, "seqscan").write(&sb, "pb.toml");
    sb.run_env(&["run", "pb.toml", "--target", "t.toml"], &pg.env())
        .expect(0);
    explain(bn, "no_seqscan").write(&sb, "pb2.toml");
    let out = sb.run_env(&["run", "pb2.toml", "--target", "t.toml"], &pg.env());
    out.expect(3);
    assert!(
        out.stderr.contains("Seq Scan on hfj_resource")
            && out.stderr.contains("(expected no_seqscan)"),
        "{}",
        out.stderr
    );
    // A write disguised as a query: refused before it is sent, nothing changed.
    explain(
        "WITH d AS (DELETE FROM hfj_res_tag RETURNING 1) SELECT * FROM d",
        "seqscan",
    )
    .write(&sb, "pb3.toml");
    let out = sb.run_env(&["run", "pb3.toml", "--target", "t.toml"], &pg.env());
    out.expect(3);
    assert!(
        out.stderr.contains("`DELETE` changes data"),
        "{}",
        out.stderr
    );
    explain("UPDATE hfj_resource SET res_ver = 0", "seqscan").write(&sb, "pb4.toml");
    sb.run_env(&["run", "pb4.toml", "--target", "t.toml"], &pg.env())
        .expect(3);
    assert_eq!(
        pg.psql("fhirdb", "SELECT count(*) FROM hfj_resource"),
        before
    );
    assert_eq!(
        pg.psql(
            "fhirdb",
            "SELECT count(*) FROM hfj_resource WHERE res_ver = 0"
        ),
        "0"
    );
    pg.finish(sb, &[], vec![]);
}

#[test]
fn checks_say_unknown_when_they_cannot_look() {
    let Some((pg, sb)) = setup() else { return };
    let out = sb.run_env(
        &["check", "connections", "--target", "t.toml"],
        &[("FHIR_DB_PASSWORD", "wrong")],
    );
    out.expect(3);
    assert!(
        out.stdout
            .starts_with("UNKNOWN: connections: cannot connect to"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("password authentication failed"),
        "{}",
        out.stdout
    );
    // The audit check pointed at the HAPI database: no such table.
    let out = check(&pg, &sb, &["audit-partitions", "--set", "database=fhir"]);
    out.expect(3);
    assert!(
        out.stdout.contains("audit.audit_events does not exist"),
        "{}",
        out.stdout
    );
    let port = crate::harness::free_port();
    sb.write(
        "down.toml",
        &format!(
            "name = \"down\"\n[postgres.fhir]\nurl = \"postgres://hapi@127.0.0.1:{port}/fhirdb\"\n"
        ),
    );
    let out = sb.run(&["check", "dead-tuples", "--target", "down.toml"]);
    out.expect(3);
    // Invalid use is exit 2, not UNKNOWN.
    check(&pg, &sb, &["connection"]).expect(2);
    check(&pg, &sb, &["connections", "--set", "max_pc=3"]).expect(2);
    pg.finish(sb, &[], vec![]);
}

#[test]
fn check_step_expect_alert_gates_a_playbook() {
    let Some((pg, sb)) = setup() else { return };
    let next = month(&pg, 1);
    pg.psql("auditdb", &format!("DROP TABLE audit.{next}"));
    Playbook::new("gate")
        .step("needed", "check")
        .str("name", "audit-partitions")
        .str("expect", "alert")
        .step("fix", "audit_partitions")
        .step("fixed", "check")
        .str("name", "audit-partitions")
        .write(&sb, "pb.toml");
    sb.run_env(&["run", "pb.toml", "--target", "t.toml"], &pg.env())
        .expect(0);
    // Now nothing is missing: the gate fails before anything runs.
    let out = sb.run_env(&["run", "pb.toml", "--target", "t.toml"], &pg.env());
    out.expect(3);
    assert!(out.stderr.contains("(expected ALERT)"), "{}", out.stderr);
    pg.finish(sb, &[], vec![]);
}

#[test]
fn shipped_audit_and_monitoring_playbooks_run_against_the_fixture_databases() {
    let Some((pg, sb)) = setup() else { return };
    let next = month(&pg, 1);
    pg.psql("auditdb", &format!("DROP TABLE audit.{next}"));
    let repo = crate::harness::repo();
    let audit = repo.join("playbooks/audit-partitions.toml");
    sb.run_env(
        &["run", audit.to_str().unwrap(), "--target", "t.toml"],
        &pg.env(),
    )
    .expect(0);
    assert_eq!(
        pg.psql(
            "auditdb",
            &format!("SELECT to_regclass('audit.{next}') IS NOT NULL")
        ),
        "t"
    );
    // Monitoring: the maintainer cannot read events, so point rejection-rate at the admin
    // login through the target's thresholds, as an operator would.
    let hapi = crate::prometheus::Server::start(&crate::prometheus::page(&Default::default()));
    sb.write(
        "t.toml",
        &format!(
            "{}\n[fhir]\nbase_url = \"{}\"\n\n[checks.rejection-rate]\ndatabase = \"audit_admin\"\n",
            pg.target_toml(),
            hapi.base_url()
        ),
    );
    pg.psql("postgres", "GRANT pg_read_all_stats TO hapi");
    let mon = repo.join("playbooks/monitoring.toml");
    let junit = sb.path("monitoring.xml");
    let out = sb.run_env(
        &[
            "run",
            "--dry-run",
            mon.to_str().unwrap(),
            "--target",
            "t.toml",
            "--junit",
            junit.to_str().unwrap(),
        ],
        &pg.env(),
    );
    out.expect(0);
    let xml = std::fs::read_to_string(junit).unwrap();
    for c in [
        "connections",
        "dead-tuples",
        "unused-indexes",
        "audit-partitions",
        "audit-partition-sizes",
        "rejection-rate",
        "seqscan",
        "prometheus",
    ] {
        assert!(
            xml.contains(&format!("name=\"{c} check: {c}\"")),
            "{c} in {xml}"
        );
    }
    pg.finish(sb, &[], vec![]);
}
