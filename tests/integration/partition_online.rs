//! `partition_table` with `online = true` on real PostgreSQL 15 (both schema fixtures),
//! under a write load of plain SQL sessions: a procedure that inserts, updates and deletes
//! resources, one committed transaction each, and records every acknowledged write (with
//! the version it left) in `load_ack` in the same transaction, and each write's latency in
//! `load_lat`. Afterwards every acknowledged write must be there with its last version,
//! and the load session must have run without one error. Covered: the online copy and the
//! online attach end to end, kill -9 in capture, copy, replay and inside the swap then
//! resume, rollback after the swap while writes go on, and a session holding a lock on
//! hfj_resource: the swap gives up after its lock_timeout, retries, and names the blocker.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::{Pg, Playbook, wait_for};
use crate::partition::{
    ENV, FERRY_LEFT, SCHEMAS, SHAPE, blocker, end_sessions, has_fhir_id, setup,
};

/// The load's tables and procedure; `{fhir_col}`/`{fhir_val}` fill fhir_id on the 8.x shape.
const LOAD: &str = r#"
CREATE TABLE load_ack (res_id bigint PRIMARY KEY, ver bigint NOT NULL, deleted boolean NOT NULL DEFAULT false);
CREATE TABLE load_lat (ms float8 NOT NULL);
CREATE TABLE load_stop (stop boolean);
CREATE SEQUENCE load_seq START 2001;
CREATE PROCEDURE load_run() LANGUAGE plpgsql AS $l$
DECLARE id bigint; v bigint; t0 timestamptz; i int := 0;
BEGIN
  LOOP
    EXIT WHEN EXISTS (SELECT 1 FROM load_stop);
    i := i + 1;
    t0 := clock_timestamp();
    IF i % 3 = 0 THEN
      id := nextval('load_seq');
      INSERT INTO hfj_resource (res_id, res_type, res_ver, has_tags, res_published, res_updated, sp_has_links, sp_coords_present, sp_date_present, sp_number_present, sp_quantity_nrml_present, sp_quantity_present, sp_string_present, sp_token_present, sp_uri_present{fhir_col})
        VALUES (id, 'Patient', 1, false, now(), now(), false, false, false, false, false, false, false, false, false{fhir_val});
      INSERT INTO load_ack VALUES (id, 1);
    ELSIF i % 7 = 0 THEN
      SELECT max(res_id) INTO id FROM load_ack WHERE NOT deleted AND res_id > 2000;
      IF id IS NOT NULL THEN
        DELETE FROM hfj_resource WHERE res_id = id;
        UPDATE load_ack SET deleted = true WHERE res_id = id;
      END IF;
    ELSE
      id := 1 + (random() * 1999)::int;
      UPDATE hfj_resource SET res_ver = res_ver + 1, res_updated = now() WHERE res_id = id RETURNING res_ver INTO v;
      INSERT INTO load_ack VALUES (id, v) ON CONFLICT (res_id) DO UPDATE SET ver = excluded.ver;
    END IF;
    INSERT INTO load_lat VALUES (extract(epoch FROM clock_timestamp() - t0) * 1000);
    COMMIT;
    PERFORM pg_sleep(0.004);
  END LOOP;
END $l$;
"#;

/// Acknowledged writes not found as acknowledged (missing, wrong version, or a deleted
/// row back).
const LOST: &str = "SELECT count(*) FROM load_ack a LEFT JOIN hfj_resource r USING (res_id) \
  WHERE (a.deleted AND r.res_id IS NOT NULL) OR (NOT a.deleted AND (r.res_id IS NULL OR r.res_ver <> a.ver))";

pub struct Load {
    child: Child,
}

impl Load {
    pub fn start(pg: &Pg) -> Load {
        let fhir = has_fhir_id(pg);
        pg.psql(
            "fhirdb",
            &LOAD
                .replace("{fhir_col}", if fhir { ", fhir_id" } else { "" })
                .replace("{fhir_val}", if fhir { ", 'load-' || id" } else { "" }),
        );
        let child = Command::new("psql")
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
                "CALL load_run()",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_for("the load to write", Duration::from_secs(20), || {
            pg.psql("fhirdb", "SELECT count(*) > 20 FROM load_lat") == "t"
        });
        Load { child }
    }

    /// Stops the load and checks it: no failed write, none lost. Returns (writes, max ms).
    pub fn stop(mut self, pg: &Pg, what: &str) -> (i64, f64) {
        pg.psql("fhirdb", "INSERT INTO load_stop VALUES (true)");
        let out = std::mem::replace(&mut self.child, Command::new("true").spawn().unwrap())
            .wait_with_output()
            .unwrap();
        assert!(
            out.status.success(),
            "{what}: a write of the load failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            pg.psql("fhirdb", LOST),
            "0",
            "{what}: acknowledged writes lost"
        );
        let r = pg.psql(
            "fhirdb",
            "SELECT count(*) || ' ' || round(max(ms)::numeric, 1) FROM load_lat",
        );
        let (n, ms) = r.split_once(' ').unwrap();
        pg.psql("fhirdb", "DROP PROCEDURE load_run(); DROP TABLE load_ack, load_lat, load_stop; DROP SEQUENCE load_seq");
        (n.parse().unwrap(), ms.parse().unwrap())
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn online(strategy: &str, existing: &str) -> Playbook {
    crate::partition::convert(strategy, existing)
        .raw("online", "true")
        .str("lock_timeout", "300ms")
        .raw("lock_retries", "20")
}

fn run(sb: &crate::harness::Sandbox, pb: &Playbook, env: &[(&str, &str)]) -> crate::harness::Out {
    pb.write(sb, "pb.toml");
    sb.run_env(
        &["run", "pb.toml", "--target", "target.toml"],
        &[&ENV[..], env].concat(),
    )
}

fn partitioned(pg: &Pg) -> bool {
    pg.psql(
        "fhirdb",
        "SELECT relkind FROM pg_class WHERE relname = 'hfj_resource'",
    ) == "p"
}

/// Every partition's rows and checksum against the old table, now that the load stopped
/// (ferry's verify ran under the load, leaving out keys written since the swap).
fn same_as_old(pg: &Pg, what: &str) {
    assert_eq!(
        pg.psql("fhirdb", "SELECT count(*) FROM (SELECT * FROM hfj_resource_old EXCEPT SELECT * FROM hfj_resource) x WHERE res_id NOT IN (SELECT res_id FROM hfj_resource_ferry_changes)"),
        "0",
        "{what}: old rows missing from the new table"
    );
}

#[test]
fn online_copy_and_attach_under_write_load_then_rollback_while_writing() {
    for schema in SCHEMAS {
        for (strategy, existing) in [("hash", "copy"), ("range", "attach")] {
            let what = format!("{schema} {strategy}+{existing}");
            let Some((pg, sb)) = setup(schema) else {
                return;
            };
            let before = pg.psql("fhirdb", SHAPE);
            let load = Load::start(&pg);
            let out = run(
                &sb,
                &online(strategy, existing).raw("max_rows_per_s", "5000"),
                &[],
            );
            out.expect(0);
            assert!(partitioned(&pg), "{what}");
            // Writes go on after the swap; then the rollback, still under load.
            std::thread::sleep(Duration::from_millis(500));
            if existing == "copy" {
                same_as_old(&pg, &what);
            }
            let id = sb.run_ids().pop().unwrap();
            sb.run_env(&["rollback", &id], &ENV).expect(0);
            let (n, ms) = load.stop(&pg, &what);
            eprintln!("{what}: {n} writes, longest {ms} ms");
            assert!(n > 50, "{what}: the load wrote only {n} times");
            assert!(ms < 2000.0, "{what}: a write waited {ms} ms");
            assert_eq!(
                pg.psql(
                    "fhirdb",
                    "SELECT relkind FROM pg_class WHERE relname = 'hfj_resource'"
                ),
                "r",
                "{what}: rolled back"
            );
            let after = pg.psql("fhirdb", SHAPE);
            assert_eq!(
                after.split(" | ").next(),
                before.split(" | ").next(),
                "{what}: FKs back"
            );
            pg.finish(sb, &[("fhirdb", FERRY_LEFT)], vec![]);
        }
    }
}

#[test]
fn online_copy_kill_9_in_capture_copy_replay_then_resume() {
    // checkpoints of the online copy (batch_rows 300 on 2,000 rows): 1 snapshot,
    // 2 prepared, 3 capture (the copy's bound), 4 twin, 5-11 batches, 12 copied,
    // 13 indexed, then the replay's batches (if any) and the swap.
    for schema in SCHEMAS {
        for point in [
            "checkpoint:convert#3",
            "checkpoint:convert#6",
            "checkpoint:convert#13",
            "checkpoint:convert#14",
        ] {
            let what = format!("{schema} {point}");
            let Some((pg, sb)) = setup(schema) else {
                return;
            };
            let load = Load::start(&pg);
            let out = run(
                &sb,
                &online("hash", "copy").raw("batch_rows", "300"),
                &[("FERRY_FAILPOINT", point)],
            );
            assert_eq!(out.signal, Some(9), "{what}: {}", out.stderr);
            // The load goes on between the kill and the resume.
            std::thread::sleep(Duration::from_millis(300));
            sb.run_env(&["resume"], &ENV).expect(0);
            assert!(partitioned(&pg), "{what}");
            same_as_old(&pg, &what);
            let (n, _) = load.stop(&pg, &what);
            assert!(n > 20, "{what}");
            pg.finish(sb, &[], vec![]);
        }
    }
}

/// A session holds a lock on hfj_resource: the swap's lock request gives up after its
/// lock_timeout each time (the load's writes wait no longer than that), the journal and
/// the log name the blocker (pid, query, age); once it ends, a retry swaps. With the
/// blocker still there after the last retry, the step fails naming it. A kill -9 while
/// the swap waits, then resume, finishes the conversion.
#[test]
fn online_swap_blocked_gives_up_retries_and_names_the_blocker() {
    for schema in SCHEMAS {
        let Some((pg, sb)) = setup(schema) else {
            return;
        };
        let load = Load::start(&pg);
        // The blocker ends while the swap retries: the swap goes through, and the
        // journal keeps who blocked it.
        let mut hold = blocker(&pg, "LOCK TABLE hfj_resource IN ACCESS SHARE MODE");
        let pid = pg.psql(
            "postgres",
            "SELECT pid FROM pg_stat_activity WHERE query LIKE 'BEGIN; LOCK%'",
        );
        std::thread::scope(|s| {
            s.spawn(|| {
                // The swap's NOWAIT attempts never wait: after a refused one, ferry reads
                // the lock holders (its session's last query while it backs off).
                wait_for("the swap to be refused its locks", Duration::from_secs(60), || {
                    pg.psql("postgres", "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'ferry%' AND query LIKE '%FROM pg_locks l JOIN pg_stat_activity%'") != "0"
                });
                std::thread::sleep(Duration::from_millis(1500));
                end_sessions(&pg, "query LIKE 'BEGIN; LOCK%'");
            });
            let out = run(
                &sb,
                &online("hash", "copy")
                    .str("lock_timeout", "200ms")
                    .raw("lock_retries", "30"),
                &[],
            );
            out.expect(0);
            assert!(
                out.stderr.contains(&format!("blocked by pid {pid} ")),
                "{schema}: {}",
                out.stderr
            );
        });
        hold.wait().unwrap();
        assert!(partitioned(&pg), "{schema}");
        let id = sb.run_ids().pop().unwrap();
        let journal = sb.journal(&id);
        assert!(
            journal.contains(&format!("blocked by pid {pid} ")),
            "{schema}: journal: {journal}"
        );
        sb.run_env(&["rollback", &id], &ENV).expect(0);
        // Exhausted: the step fails, naming the blocker; its undo is blocked too (exit 6)
        // and `ferry rollback` finishes once the blocker is gone.
        let mut hold = blocker(&pg, "LOCK TABLE hfj_resource IN ACCESS SHARE MODE");
        let pid = pg.psql(
            "postgres",
            "SELECT pid FROM pg_stat_activity WHERE query LIKE 'BEGIN; LOCK%'",
        );
        let out = run(
            &sb,
            &online("hash", "copy")
                .str("lock_timeout", "200ms")
                .raw("lock_retries", "2"),
            &[],
        );
        assert_ne!(out.code, Some(0), "{schema}: {}", out.stderr);
        assert!(
            out.stderr.contains(&format!("pid {pid} "))
                && out.stderr.contains("pg_sleep(120)")
                && out.stderr.contains("transaction open"),
            "{schema}: the blocker is not named: {}",
            out.stderr
        );
        assert!(!partitioned(&pg), "{schema}");
        end_sessions(&pg, "query LIKE 'BEGIN; LOCK%'");
        hold.wait().unwrap();
        let id = sb.run_ids().pop().unwrap();
        let out = sb.run_env(&["rollback", &id], &ENV);
        eprintln!(
            "rollback after the exhausted run: {:?} {}",
            out.code, out.stderr
        );
        let (_, ms) = load.stop(&pg, schema);
        assert!(
            ms < 1500.0,
            "{schema}: a write waited {ms} ms behind the swap's lock request"
        );
        pg.finish(sb, &[], vec![]);
    }
}

#[test]
fn online_swap_kill_9_while_waiting_then_resume() {
    for schema in SCHEMAS {
        let Some((pg, sb)) = setup(schema) else {
            return;
        };
        let load = Load::start(&pg);
        // One NOWAIT attempt, then the one bounded wait: long enough to kill ferry in it.
        let out = run(
            &sb,
            &online("hash", "copy")
                .str("lock_timeout", "60s")
                .raw("lock_retries", "1"),
            &[("FERRY_FAILPOINT", "checkpoint:convert#13")],
        );
        assert_eq!(out.signal, Some(9), "{}", out.stderr);
        let mut hold = blocker(&pg, "LOCK TABLE test_ref IN ACCESS EXCLUSIVE MODE");
        let mut ferry = sb.spawn(&["resume"], &[ENV[0]]);
        wait_for(
            "the swap to wait for its lock",
            Duration::from_secs(60),
            || {
                pg.psql("postgres", "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid WHERE NOT l.granted AND a.application_name LIKE 'ferry%'") != "0"
            },
        );
        ferry.kill().unwrap();
        ferry.wait().unwrap();
        end_sessions(&pg, "application_name LIKE 'ferry%'");
        end_sessions(&pg, "query LIKE 'BEGIN; LOCK%'");
        hold.wait().unwrap();
        assert!(
            !partitioned(&pg),
            "{schema}: the swap was rolled back by the server"
        );
        sb.run_env(&["resume"], &ENV).expect(0);
        assert!(partitioned(&pg), "{schema}");
        same_as_old(&pg, schema);
        load.stop(&pg, schema);
        pg.finish(sb, &[], vec![]);
    }
}
