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
    ENV, FERRY_LEFT, SCHEMAS, SHAPE, blocker, end_sessions, has_fhir_id, session_err, setup,
};

/// The load's tables and procedure; `{fhir_col}`/`{fhir_val}` fill fhir_id on the 8.x shape.
const LOAD: &str = r#"
CREATE TABLE load_ack (res_id bigint PRIMARY KEY, ver bigint NOT NULL, deleted boolean NOT NULL DEFAULT false);
CREATE TABLE load_lat (ms float8 NOT NULL);
CREATE TABLE load_stop (stop boolean);
CREATE SEQUENCE load_seq START {start};
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
        Load::start_at(pg, 2001)
    }

    /// The load's inserts take keys from `start` on.
    pub fn start_at(pg: &Pg, start: i64) -> Load {
        let fhir = has_fhir_id(pg);
        pg.psql(
            "fhirdb",
            &LOAD
                .replace("{start}", &start.to_string())
                .replace("{fhir_col}", if fhir { ", fhir_id" } else { "" })
                .replace("{fhir_val}", if fhir { ", 'load-' || id" } else { "" }),
        );
        let child = session_err(pg, "CALL load_run()");
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

/// Waits until ferry was refused its locks at least once (after a refused NOWAIT attempt it
/// reads the holders: its session's last query while it backs off), then ends the
/// blocking session 1.5 s later, as the long transaction finishing.
fn end_blocker_after_a_refusal(pg: &Pg) {
    wait_for(
        "ferry to be refused its locks",
        Duration::from_secs(120),
        || {
            pg.psql("postgres", "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'ferry%' AND query LIKE '%FROM pg_locks l JOIN pg_stat_activity%'") != "0"
        },
    );
    std::thread::sleep(Duration::from_millis(1500));
    end_sessions(pg, "query LIKE 'BEGIN; LOCK%'");
}

/// Rollback after the swap, writes going on, while a long transaction holds a lock on the
/// new table: it takes all its locks up front (NOWAIT, retried, never queued behind the
/// holder), names the blocker, and once it ends restores the old table losslessly; the
/// cleanup step of a second conversion likewise. The load's writes never wait behind
/// ferry's lock requests for longer than the bounded last wait.
#[test]
fn online_rollback_and_cleanup_blocked_give_up_retry_name_the_blocker() {
    for schema in SCHEMAS {
        let Some((pg, sb)) = setup(schema) else {
            return;
        };
        let before = pg.psql("fhirdb", SHAPE);
        let load = Load::start(&pg);
        let pb = online("hash", "copy")
            .str("lock_timeout", "200ms")
            .raw("lock_retries", "40");
        run(&sb, &pb, &[]).expect(0);
        assert!(partitioned(&pg), "{schema}");
        std::thread::sleep(Duration::from_millis(300));
        let mut hold = blocker(&pg, "LOCK TABLE hfj_resource IN ACCESS SHARE MODE");
        let pid = pg.psql(
            "postgres",
            "SELECT pid FROM pg_stat_activity WHERE query LIKE 'BEGIN; LOCK%'",
        );
        let id = sb.run_ids().pop().unwrap();
        let out = std::thread::scope(|s| {
            s.spawn(|| end_blocker_after_a_refusal(&pg));
            sb.run_env(&["rollback", &id], &ENV)
        });
        out.expect(0);
        hold.wait().unwrap();
        assert!(
            out.stderr.contains("rolling back the conversion: ")
                && out.stderr.contains(&format!("blocked by pid {pid} "))
                && out.stderr.contains("pg_sleep(120)"),
            "{schema}: the rollback's refusals do not name the blocker: {}",
            out.stderr
        );
        assert!(!partitioned(&pg), "{schema}: rolled back");
        let after = pg.psql("fhirdb", SHAPE);
        assert_eq!(
            after.split(" | ").next(),
            before.split(" | ").next(),
            "{schema}: FKs back"
        );
        // Cleanup of a second conversion, blocked the same way.
        run(&sb, &pb, &[]).expect(0);
        let mut hold = blocker(&pg, "LOCK TABLE hfj_resource IN ACCESS SHARE MODE");
        let pid = pg.psql(
            "postgres",
            "SELECT pid FROM pg_stat_activity WHERE query LIKE 'BEGIN; LOCK%'",
        );
        let cleanup = Playbook::new("cleanup")
            .step("cleanup", "partition_table")
            .str("stage", "cleanup")
            .str("strategy", "hash")
            .str("existing", "copy")
            .str("lock_timeout", "200ms")
            .raw("lock_retries", "40");
        let out = std::thread::scope(|s| {
            s.spawn(|| end_blocker_after_a_refusal(&pg));
            run(&sb, &cleanup, &[])
        });
        out.expect(0);
        hold.wait().unwrap();
        assert!(
            out.stderr.contains("the cleanup: ")
                && out.stderr.contains(&format!("blocked by pid {pid} ")),
            "{schema}: the cleanup's refusals do not name the blocker: {}",
            out.stderr
        );
        assert_eq!(
            pg.psql("fhirdb", "SELECT count(*) FROM pg_class WHERE relname IN ('hfj_resource_old', 'hfj_resource_ferry_changes')"),
            "0",
            "{schema}: cleaned up"
        );
        let (n, ms) = load.stop(&pg, schema);
        eprintln!("{schema}: {n} writes, longest {ms} ms");
        assert!(
            ms < 1500.0,
            "{schema}: a write waited {ms} ms behind ferry's lock requests"
        );
        pg.finish(sb, &[], vec![]);
    }
}

/// A range copy whose rows outgrow the twin's premade partitions while it runs (interval
/// 500, premake 2: partitions up to 3,500 from the snapshot; the load inserts from 3,450
/// on, and HAPI's sequence is ahead at 6,000 in pooled blocks of 50): the replay and the
/// swap find a partition for every row, the new table has `premake` partitions above the
/// sequence's next block, nothing acknowledged is lost, and the rollback brings it all back.
#[test]
fn online_range_copy_outgrowing_the_premade_partitions() {
    for schema in SCHEMAS {
        let Some((pg, sb)) = setup(schema) else {
            return;
        };
        pg.psql("fhirdb", "SELECT setval('seq_resource_id', 6000)");
        let load = Load::start_at(&pg, 3450);
        let out = run(
            &sb,
            &online("range", "copy").raw("max_rows_per_s", "500"),
            &[],
        );
        out.expect(0);
        assert!(partitioned(&pg), "{schema}");
        assert!(
            out.stderr.contains("more partitions of"),
            "{schema}: {}",
            out.stderr
        );
        // Rows above the snapshot's partitions were written before the swap (they are in
        // the old table), so the replay or the swap carried them (same_as_old below).
        assert_ne!(
            pg.psql(
                "fhirdb",
                "SELECT count(*) FROM hfj_resource_old WHERE res_id >= 3500"
            ),
            "0",
            "{schema}: no row above the premade partitions before the swap"
        );
        // (6,000 + 50) / 500 + 1 + 2 = 15 partitions: up to 7,500.
        assert_eq!(
            pg.psql("fhirdb", "SELECT to_regclass('hfj_resource_p14') IS NOT NULL AND (SELECT count(*) FROM hfj_resource WHERE res_id > 3500) > 0"),
            "t",
            "{schema}: partitions above the sequence"
        );
        same_as_old(&pg, schema);
        let id = sb.run_ids().pop().unwrap();
        sb.run_env(&["rollback", &id], &ENV).expect(0);
        assert!(!partitioned(&pg), "{schema}");
        load.stop(&pg, schema);
        pg.finish(sb, &[("fhirdb", FERRY_LEFT)], vec![]);
    }
}

/// HAPI's queries slow down while the copy runs (a session whose statements each take
/// 250 ms, started once the copy has begun): the copy sees it in pg_stat_activity, backs
/// off naming HAPI's latency, and the time it backed off is reported.
#[test]
fn online_copy_backs_off_when_hapis_queries_slow_down() {
    let schema = SCHEMAS[0];
    let Some((pg, sb)) = setup(schema) else {
        return;
    };
    let load = Load::start(&pg);
    let slow = sb.path("slow.sql");
    std::fs::write(&slow, "SELECT pg_sleep(0.25);\n".repeat(40)).unwrap();
    let out = std::thread::scope(|s| {
        s.spawn(|| {
            wait_for("the copy to begin", Duration::from_secs(120), || {
                pg.psql(
                    "fhirdb",
                    "SELECT to_regclass('hfj_resource_ferry_twin') IS NOT NULL",
                ) == "t"
                    && pg.psql("fhirdb", "SELECT count(*) > 0 FROM hfj_resource_ferry_twin") == "t"
            });
            let st = Command::new("psql")
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
                    "-f",
                    slow.to_str().unwrap(),
                ])
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(st.success());
        });
        run(
            &sb,
            &online("hash", "copy")
                .raw("batch_rows", "100")
                .raw("max_rows_per_s", "300"),
            &[],
        )
    });
    out.expect(0);
    assert!(
        out.stderr.contains("HAPI's slowest query took"),
        "the copy did not notice HAPI slowing down: {}",
        out.stderr
    );
    let backed: u64 = out
        .stderr
        .lines()
        .filter_map(|l| {
            l.split(" ms backed off for HAPI's latency")
                .next()
                .filter(|_| l.contains("backed off for HAPI's latency"))
                .and_then(|h| h.rsplit(' ').next())
                .and_then(|n| n.parse().ok())
        })
        .max()
        .unwrap_or(0);
    assert!(
        backed >= 300,
        "the copy backed off only {backed} ms: {}",
        out.stderr
    );
    load.stop(&pg, schema);
    let id = sb.run_ids().pop().unwrap();
    sb.run_env(&["rollback", &id], &ENV).expect(0);
    pg.finish(sb, &[("fhirdb", FERRY_LEFT)], vec![]);
}

/// The window budget of the online copy (`window`): a copy throttled to 300 rows/s cannot
/// fit in 2 s with its replay, so it stops at a clean checkpoint (exit 5) with the capture
/// still logging HAPI's writes; a resume with a larger window finishes, losing nothing.
#[test]
fn online_copy_window_budget_stops_at_a_checkpoint_then_resumes() {
    let schema = SCHEMAS[0];
    let Some((pg, sb)) = setup(schema) else {
        return;
    };
    let load = Load::start(&pg);
    let pb = |window: &str| {
        online("hash", "copy")
            .raw("batch_rows", "100")
            .raw("max_rows_per_s", "300")
            .str("window", window)
    };
    let out = run(&sb, &pb("2s"), &[]);
    out.expect(5);
    assert!(
        out.stderr
            .contains("the rest of the copy and its replay is estimated at"),
        "{}",
        out.stderr
    );
    assert!(!partitioned(&pg));
    assert_eq!(
        pg.psql(
            "fhirdb",
            "SELECT count(*) FROM pg_trigger WHERE tgname = 'ferry_capture'"
        ),
        "1",
        "the capture stays between windows"
    );
    std::thread::sleep(Duration::from_millis(500));
    pb("10m").write(&sb, "pb.toml");
    sb.run_env(&["resume", "--accept-changes"], &ENV).expect(0);
    assert!(partitioned(&pg));
    same_as_old(&pg, schema);
    let id = sb.run_ids().pop().unwrap();
    sb.run_env(&["rollback", &id, "--accept-changes"], &ENV)
        .expect(0);
    load.stop(&pg, schema);
    pg.finish(sb, &[("fhirdb", FERRY_LEFT)], vec![]);
}

/// A sampler of what ferry holds while it fills the uniqueness guard: every 2 ms, one row
/// per backend (not its own) running a statement on the guard, with whether that backend
/// holds a lock on hfj_resource that stops HAPI's writes (SHARE or stronger), and whether
/// the statement is the install's (the empty guard and its trigger, created in one short
/// transaction under SHARE ROW EXCLUSIVE: that one may hold it).
const GUARD_SAMPLER: &str = r#"
CREATE TABLE guard_samples (blocking boolean NOT NULL, install boolean NOT NULL);
CREATE TABLE guard_stop (stop boolean);
CREATE PROCEDURE guard_sample() LANGUAGE plpgsql AS $s$
BEGIN
  LOOP
    EXIT WHEN EXISTS (SELECT 1 FROM guard_stop);
    INSERT INTO guard_samples
      SELECT EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.granted
        AND l.relation = 'hfj_resource'::regclass
        AND l.mode IN ('ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock')),
        a.query LIKE '%WITH NO DATA%'
      FROM pg_stat_activity a
      WHERE a.pid <> pg_backend_pid() AND a.state = 'active' AND a.query LIKE '%hfj_resource_ferry_guard%';
    COMMIT;
    PERFORM pg_sleep(0.002);
  END LOOP;
END $s$;
"#;

/// The guard is filled beside HAPI's writes: 50,000 more resources (client-assigned ids)
/// make the fill last, the write load runs through it (inserts with client-assigned ids
/// go into the guard by its trigger, deletes race the fill's batches), and a sampler
/// sees ferry's guard statements running while ferry holds no lock on hfj_resource that
/// stops a write. The guard ends exact; no write failed or was lost. Only the 8.x shape:
/// the 5.x shape has no fhir_id and nothing needs a guard.
#[test]
fn online_guard_fills_beside_the_write_load_without_blocking_it() {
    let Some((pg, sb)) = setup(SCHEMAS[0]) else {
        return;
    };
    pg.psql(
        "fhirdb",
        "INSERT INTO hfj_resource (res_id, res_type, res_ver, has_tags, res_published, res_updated, sp_has_links, sp_coords_present, sp_date_present, sp_number_present, sp_quantity_nrml_present, sp_quantity_present, sp_string_present, sp_token_present, sp_uri_present, sp_index_status, fhir_id) \
         SELECT g, 'Patient', 1, false, now(), now(), false, false, false, false, false, false, false, false, false, 1, 'more-' || g FROM generate_series(10001, 60000) g; ANALYZE hfj_resource",
    );
    pg.psql("fhirdb", GUARD_SAMPLER);
    let sampler = session_err(&pg, "CALL guard_sample()");
    let load = Load::start_at(&pg, 60001);
    let pb = online("range", "attach")
        .str("stage", "prepare")
        .str("throttle", "5ms");
    let out = run(&sb, &pb, &[]);
    pg.psql("fhirdb", "INSERT INTO guard_stop VALUES (true)");
    let s = sampler.wait_with_output().unwrap();
    assert!(
        s.status.success(),
        "sampler: {}",
        String::from_utf8_lossy(&s.stderr)
    );
    out.expect(0);
    let (n, ms) = load.stop(&pg, "guard fill");
    let samples = pg.psql(
        "fhirdb",
        "SELECT count(*) || ' ' || count(*) FILTER (WHERE blocking) FROM guard_samples WHERE NOT install",
    );
    eprintln!("guard fill: {n} writes, longest {ms} ms; samples (all, blocking): {samples}");
    let (all, blocking) = samples.split_once(' ').unwrap();
    assert!(
        all.parse::<i64>().unwrap() >= 5,
        "the sampler caught ferry's guard statements {all} times"
    );
    assert_eq!(
        blocking, "0",
        "ferry held a lock that stops writes on hfj_resource while filling the guard ({samples})"
    );
    assert_eq!(
        pg.psql(
            "fhirdb",
            "SELECT count(*) FROM hfj_resource r FULL JOIN hfj_resource_ferry_guard g USING (res_id) \
             WHERE r.res_id IS NULL OR g.res_id IS NULL OR (r.res_type, r.fhir_id) IS DISTINCT FROM (g.res_type, g.fhir_id)"
        ),
        "0",
        "the guard is exact"
    );
    assert_eq!(
        pg.psql(
            "fhirdb",
            "SELECT string_agg(x.relname || ' ' || i.indisunique || ' ' || i.indisvalid, ', ' ORDER BY x.relname) \
             FROM pg_index i JOIN pg_class x ON x.oid = i.indexrelid WHERE i.indrelid = 'hfj_resource_ferry_guard'::regclass"
        ),
        "hfj_resource_ferry_guard_key true true, idx_res_type_fhir_id_guard true true",
        "the guard's unique indexes, valid"
    );
    pg.psql(
        "fhirdb",
        "DROP PROCEDURE guard_sample(); DROP TABLE guard_samples, guard_stop",
    );
    let id = sb.run_ids().pop().unwrap();
    sb.run_env(&["rollback", &id], &ENV).expect(0);
    pg.finish(sb, &[("fhirdb", FERRY_LEFT)], vec![]);
}
