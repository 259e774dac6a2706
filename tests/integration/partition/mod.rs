//! `partition_table` on real PostgreSQL 15, on both HAPI schema fixtures (8.4 shape and
//! the older 5.x shape): attach and copy end to end with verify, the uniqueness guard,
//! rollback after writes on the new table, cleanup, kill -9 then resume, and refusals
//! (each also under --dry-run, exit 3, nothing changed).

use std::process::{Command, Stdio};

mod crash;
mod failures;

use crate::harness::{PG_SUPERUSER_PW, Pg, Playbook, Sandbox, wait_for};

pub const SCHEMAS: [&str; 2] = ["fixtures/hapi-schema.sql", "fixtures/hapi-schema-5x.sql"];
pub const ENV: [(&str, &str); 1] = [("PG_SUPERUSER_PASSWORD", PG_SUPERUSER_PW)];

/// 2,000 resources with versions, tokens, links (and forced ids on the 5.x schema), a
/// test table whose FK has actions and deferrability, and a statistics target on
/// hfj_resource: written for both schemas (columns read from information_schema).
const GEN: &str = r#"
DO $g$
DECLARE fhir boolean := EXISTS (SELECT 1 FROM information_schema.columns WHERE table_name = 'hfj_resource' AND column_name = 'fhir_id');
BEGIN
EXECUTE format($i$INSERT INTO hfj_resource (res_id, res_type, res_ver, has_tags, res_published, res_updated,
  sp_has_links, sp_coords_present, sp_date_present, sp_number_present, sp_quantity_nrml_present,
  sp_quantity_present, sp_string_present, sp_token_present, sp_uri_present, sp_index_status, hash_sha256 %s)
  SELECT g, (ARRAY['Patient','Observation','Encounter'])[1 + g %% 3], 1, false,
  timestamp '2025-01-01' + g * interval '1 min', timestamp '2025-06-01' + g * interval '1 s',
  true, false, false, false, false, false, false, true, false, 1, md5(g::text) %s
  FROM generate_series(1, 2000) g$i$,
  CASE WHEN fhir THEN ', fhir_id' ELSE '' END, CASE WHEN fhir THEN ', g::text' ELSE '' END);
INSERT INTO hfj_res_ver (pid, res_id, res_type, res_ver, has_tags, res_published, res_updated, res_encoding, res_text_vc)
  SELECT g, g, 'Patient', 1, false, now(), now(), 'JSON', '{"id":' || g || '}' FROM generate_series(1, 2000) g;
INSERT INTO hfj_spidx_token (sp_id, res_id, sp_missing, sp_name, res_type, hash_identity, sp_value)
  SELECT g, 1 + g % 2000, false, 'code', 'Observation', g % 7, 'v' || g FROM generate_series(1, 4000) g;
INSERT INTO hfj_res_link (pid, src_path, src_resource_id, source_resource_type, target_resource_id, target_resource_type)
  SELECT g, 'Observation.subject', g, 'Observation', 1 + (g / 3) * 3, 'Patient' FROM generate_series(1, 2000) g;
IF to_regclass('hfj_forced_id') IS NOT NULL THEN
  INSERT INTO hfj_forced_id (pid, forced_id, resource_pid, resource_type)
    SELECT g, 'p-' || g, g, 'Patient' FROM generate_series(3, 2000, 3) g;
END IF;
END $g$;
CREATE TABLE test_ref (id bigint PRIMARY KEY, res bigint CONSTRAINT fk_test_cascade REFERENCES hfj_resource (res_id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED);
INSERT INTO test_ref SELECT g, g * 7 FROM generate_series(1, 200) g;
ALTER TABLE hfj_resource ALTER COLUMN res_type SET STATISTICS 500;
ANALYZE;
"#;

/// Everything a conversion + rollback must leave as it was: FKs (with their state), the
/// table's indexes, options and statistics, rows and a checksum of every column.
pub const SHAPE: &str = "SELECT (SELECT string_agg(conname || ' ' || conrelid::regclass || ' ' || pg_get_constraintdef(oid) || ' ' || convalidated, '; ' ORDER BY conname) FROM pg_constraint WHERE confrelid = 'hfj_resource'::regclass) \
  || ' | ' || (SELECT string_agg(indexrelid::regclass::text || ' ' || indisunique, ', ' ORDER BY indexrelid::regclass::text) FROM pg_index WHERE indrelid = 'hfj_resource'::regclass) \
  || ' | ' || (SELECT relkind::text || coalesce(reloptions::text, '') FROM pg_class WHERE oid = 'hfj_resource'::regclass) \
  || ' | ' || (SELECT attstattarget FROM pg_attribute WHERE attrelid = 'hfj_resource'::regclass AND attname = 'res_type') \
  || ' | ' || (SELECT count(*) || ' ' || sum(hashtextextended(r::text, 0)::numeric) FROM hfj_resource r)";

/// ferry objects that must be gone after a rollback (or never made by a refused run).
pub const FERRY_LEFT: &str = "SELECT (SELECT count(*) FROM pg_class WHERE relname LIKE '%ferry%' OR relname ~ '^hfj_resource_(old|p[0-9]+)$') \
  + (SELECT count(*) FROM pg_proc WHERE proname LIKE '%ferry%') + (SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'ferry%') \
  + (SELECT count(*) FROM pg_constraint WHERE conname LIKE '%ferry%')";

pub fn setup(schema: &str) -> Option<(Pg, Sandbox)> {
    let pg = Pg::start()?;
    pg.psql("postgres", "CREATE DATABASE fhirdb");
    pg.psql_file("fhirdb", schema);
    pg.psql("fhirdb", GEN);
    let sb = Sandbox::new();
    sb.write(
        "target.toml",
        &format!(
            "name = \"test\"\n[postgres.fhir]\nurl = \"{}\"\npassword_env = \"PG_SUPERUSER_PASSWORD\"\n",
            pg.url("postgres", "fhirdb")
        ),
    );
    Some((pg, sb))
}

pub fn convert(strategy: &str, existing: &str) -> Playbook {
    Playbook::new("partition")
        .step("convert", "partition_table")
        .str("strategy", strategy)
        .str("existing", existing)
        .raw("interval", "500")
        .raw("modulus", "4")
        .raw("premake", "2")
        .raw("batch_rows", "300")
}

pub fn run(sb: &Sandbox, pb: &Playbook, extra: &[&str]) -> crate::harness::Out {
    pb.write(sb, "pb.toml");
    let args = [&["run", "pb.toml", "--target", "target.toml"][..], extra].concat();
    sb.run_env(&args, &ENV)
}

/// `pb` refused: `--dry-run` and `run` both exit 3, each saying `want` (stdout or stderr).
pub fn refused(sb: &Sandbox, pb: &Playbook, want: &str) {
    for extra in [&["--dry-run"][..], &[][..]] {
        let out = run(sb, pb, extra);
        out.expect(3);
        assert!(
            out.stdout.contains(want) || out.stderr.contains(want),
            "{extra:?} {want}: {}{}",
            out.stdout,
            out.stderr
        );
    }
}

pub fn has_fhir_id(pg: &Pg) -> bool {
    pg.psql("fhirdb", "SELECT count(*) FROM information_schema.columns WHERE table_name = 'hfj_resource' AND column_name = 'fhir_id'") == "1"
}

/// Rows written after the conversion: a new resource in a new partition, one in the
/// first, an update; returns the SQL that checks all three are in hfj_resource.
fn write_after(pg: &Pg) -> &'static str {
    let fhir = has_fhir_id(pg);
    for id in [2999, 3100] {
        pg.psql("fhirdb", &format!(
            "INSERT INTO hfj_resource (res_id, res_type, res_ver, has_tags, res_published, res_updated, sp_has_links, sp_coords_present, sp_date_present, sp_number_present, sp_quantity_nrml_present, sp_quantity_present, sp_string_present, sp_token_present, sp_uri_present{}) VALUES ({id}, 'Patient', 1, false, now(), now(), false, false, false, false, false, false, false, false, false{})",
            if fhir { ", fhir_id" } else { "" },
            if fhir { format!(", 'new-{id}'") } else { String::new() }
        ));
    }
    pg.psql(
        "fhirdb",
        "UPDATE hfj_resource SET res_ver = 42 WHERE res_id = 10",
    );
    "SELECT count(*) FROM hfj_resource WHERE res_id IN (2999, 3100) OR (res_id = 10 AND res_ver = 42)"
}

fn end_to_end(strategy: &str, existing: &str) {
    for schema in SCHEMAS {
        let Some((pg, sb)) = setup(schema) else {
            return;
        };
        let before = pg.psql("fhirdb", SHAPE);
        let out = run(&sb, &convert(strategy, existing), &[]);
        out.expect(0);
        assert_eq!(
            pg.psql(
                "fhirdb",
                "SELECT relkind FROM pg_class WHERE relname = 'hfj_resource'"
            ),
            "p",
            "{schema}"
        );
        let after = pg.psql("fhirdb", SHAPE);
        let (b, a): (Vec<&str>, Vec<&str>) =
            (before.split(" | ").collect(), after.split(" | ").collect());
        assert_eq!(
            a[0], b[0],
            "{schema}: FKs with names, actions and deferrability, validated"
        );
        assert_eq!(a[3], b[3], "{schema}: statistics target kept");
        assert_eq!(a[4], b[4], "{schema}: every row, same checksum");
        assert_eq!(
            pg.psql("fhirdb", "SELECT count(*) FROM pg_class c JOIN pg_inherits i ON i.inhrelid = c.oid WHERE i.inhparent = 'hfj_resource'::regclass AND c.reloptions::text LIKE '%autovacuum_vacuum_scale_factor=0.01%'"),
            pg.psql("fhirdb", "SELECT count(*) FROM pg_inherits WHERE inhparent = 'hfj_resource'::regclass"),
            "{schema}: every partition keeps the storage parameters"
        );
        if has_fhir_id(&pg) {
            // The guard: the same (res_type, fhir_id) in another partition is refused.
            let dup = pg.psql(
                "fhirdb",
                "SELECT res_type || ',' || fhir_id FROM hfj_resource WHERE res_id = 7",
            );
            let (ty, id) = dup.split_once(',').unwrap();
            let err = Command::new("psql")
                .args(["-h", pg.dir.path().to_str().unwrap(), "-p", &pg.port.to_string(), "-U", "postgres", "-d", "fhirdb", "-XAtq", "-v", "ON_ERROR_STOP=1", "-c"])
                .arg(format!("INSERT INTO hfj_resource (res_id, res_type, res_ver, has_tags, res_published, res_updated, sp_has_links, sp_coords_present, sp_date_present, sp_number_present, sp_quantity_nrml_present, sp_quantity_present, sp_string_present, sp_token_present, sp_uri_present, fhir_id) VALUES (3300, '{ty}', 1, false, now(), now(), false, false, false, false, false, false, false, false, false, '{id}')"))
                .output()
                .unwrap();
            let msg = String::from_utf8_lossy(&err.stderr);
            assert!(
                !err.status.success() && msg.contains("idx_res_type_fhir_id"),
                "{schema}: duplicate accepted: {msg}"
            );
        } else {
            assert_eq!(
                pg.psql(
                    "fhirdb",
                    "SELECT count(*) FROM pg_class WHERE relname LIKE '%guard%'"
                ),
                "0",
                "{schema}: no unique key needs a guard"
            );
        }
        let check = write_after(&pg);
        let id = sb.run_ids().pop().unwrap();
        sb.run_env(&["rollback", &id], &ENV).expect(0);
        assert_eq!(
            pg.psql("fhirdb", check),
            "3",
            "{schema}: rows written since are in the old table"
        );
        pg.psql("fhirdb", "DELETE FROM hfj_resource WHERE res_id IN (2999, 3100); UPDATE hfj_resource SET res_ver = 1 WHERE res_id = 10");
        assert_eq!(
            pg.psql("fhirdb", SHAPE),
            before,
            "{schema}: everything back as it was"
        );
        pg.finish(sb, &[("fhirdb", FERRY_LEFT)], vec![]);
    }
}

#[test]
fn attach_end_to_end_guard_and_rollback_after_writes() {
    end_to_end("range", "attach");
}

#[test]
fn copy_hash_end_to_end_guard_and_rollback_after_writes() {
    end_to_end("hash", "copy");
}

#[test]
fn copy_range_end_to_end_guard_and_rollback_after_writes() {
    end_to_end("range", "copy");
}

#[test]
fn cleanup_drops_the_old_table_and_rollback_is_then_refused() {
    for schema in SCHEMAS {
        let Some((pg, sb)) = setup(schema) else {
            return;
        };
        let pb = convert("hash", "copy")
            .step("cleanup", "partition_table")
            .str("stage", "cleanup");
        run(&sb, &pb, &[]).expect(0);
        assert_eq!(
            pg.psql("fhirdb", "SELECT to_regclass('hfj_resource_old') IS NULL"),
            "t"
        );
        let id = sb.run_ids().pop().unwrap();
        let out = sb.run_env(&["rollback", &id], &ENV);
        out.expect(6);
        assert!(
            out.stderr.contains("dropped by the cleanup step"),
            "{}",
            out.stderr
        );
        assert_eq!(
            pg.psql("fhirdb", "SELECT count(*) FROM hfj_resource"),
            "2000"
        );
        pg.finish(sb, &[], vec![]);
    }
}

/// A psql session on fhirdb running `sql` until it ends or is terminated.
pub fn session(pg: &Pg, sql: &str) -> std::process::Child {
    psql_child(pg, sql, Stdio::null())
}

/// [`session`] whose errors are kept (stderr piped) for the test to read at its end.
pub fn session_err(pg: &Pg, sql: &str) -> std::process::Child {
    psql_child(pg, sql, Stdio::piped())
}

fn psql_child(pg: &Pg, sql: &str, stderr: Stdio) -> std::process::Child {
    Command::new("psql")
        .args([
            "-h",
            pg.dir.path().to_str().unwrap(),
            "-p",
            &pg.port.to_string(),
            "-U",
            "postgres",
            "-d",
            "fhirdb",
            "-XAtq",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap()
}

pub fn blocker(pg: &Pg, lock: &str) -> std::process::Child {
    let child = session(pg, &format!("BEGIN; {lock}; SELECT pg_sleep(120)"));
    wait_for(
        "the blocking session",
        std::time::Duration::from_secs(10),
        || {
            pg.psql("postgres", "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'BEGIN; LOCK%' AND state = 'active'") == "1"
        },
    );
    child
}

/// `pb` run with ferry killed (SIGKILL) by the failpoint `point` (`checkpoint:convert#11`).
pub fn killed(sb: &Sandbox, pb: &Playbook, point: &str) {
    pb.write(sb, "pb.toml");
    let out = sb.run_env(
        &["run", "pb.toml", "--target", "target.toml"],
        &[ENV[0], ("FERRY_FAILPOINT", point)],
    );
    assert_eq!(out.signal, Some(9), "{point}: {}", out.stderr);
}

/// `ferry ARGS` killed with SIGKILL inside a statement: while it waits for `lock`, which
/// another session holds. Its backend is then ended, as a crashed host's connection would
/// be (it would otherwise go on once the lock is free), and the blocker after it.
pub fn kill_while_waiting(pg: &Pg, sb: &Sandbox, lock: &str, args: &[&str]) {
    let mut hold = blocker(pg, lock);
    let mut ferry = sb.spawn(args, &ENV);
    wait_for(
        "ferry to wait for the lock",
        std::time::Duration::from_secs(60),
        || {
            pg.psql("postgres", "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid WHERE NOT l.granted AND a.application_name LIKE 'ferry%'") != "0"
        },
    );
    ferry.kill().unwrap();
    ferry.wait().unwrap();
    end_sessions(pg, "application_name LIKE 'ferry%'");
    end_sessions(pg, "query LIKE 'BEGIN; LOCK%'");
    hold.wait().unwrap();
}

/// The parts of [`SHAPE`] (0 FKs, 1 indexes, 2 kind and options, 3 statistics target,
/// 4 rows and checksum) that must be equal in `before` and `after`.
pub fn assert_same(before: &str, after: &str, parts: &[usize], what: &str) {
    let (b, a): (Vec<&str>, Vec<&str>) =
        (before.split(" | ").collect(), after.split(" | ").collect());
    for &n in parts {
        assert_eq!(a[n], b[n], "{what}: part {n} of the shape");
    }
}

pub fn end_sessions(pg: &Pg, filter: &str) {
    pg.psql("postgres", &format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE {filter} AND pid <> pg_backend_pid()"));
    wait_for(
        "the sessions to end",
        std::time::Duration::from_secs(10),
        || {
            pg.psql("postgres", &format!("SELECT count(*) FROM pg_stat_activity WHERE {filter} AND pid <> pg_backend_pid()")) == "0"
        },
    );
}
