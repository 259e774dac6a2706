//! `partition_table` and kill -9: in every phase (mid-copy, before and after the swap,
//! before validate, during rollback) and inside the swap transaction; `ferry resume` reaches
//! the same end state with equal counts and checksums, and the rollback restores all.

use super::{ENV, FERRY_LEFT, SCHEMAS, SHAPE, blocker, convert, end_sessions, setup};
use crate::harness::wait_for;

#[test]
fn kill_9_in_every_phase_then_resume() {
    // copy with batch_rows 300 on 2,000 rows: checkpoints 1 snapshot, 2 prepared,
    // 3 twin, 4-10 batches, 11 copied, 12 indexed, 13 swapped.
    for schema in SCHEMAS {
        for point in [
            "checkpoint:convert#5",
            "checkpoint:convert#12",
            "checkpoint:convert#13",
            "step_started:validate",
        ] {
            let Some((pg, sb)) = setup(schema) else {
                return;
            };
            let before = pg.psql("fhirdb", SHAPE);
            let pb = convert("hash", "copy")
                .str("stage", "convert")
                .step("validate", "partition_table")
                .str("stage", "validate");
            pb.write(&sb, "pb.toml");
            let out = sb.run_env(
                &["run", "pb.toml", "--target", "target.toml"],
                &[ENV[0], ("FERRY_FAILPOINT", point)],
            );
            assert_eq!(out.signal, Some(9), "{schema} {point}: {}", out.stderr);
            sb.run_env(&["resume"], &ENV).expect(0);
            let after = pg.psql("fhirdb", SHAPE);
            assert_eq!(
                after.split(" | ").nth(4),
                before.split(" | ").nth(4),
                "{schema} {point}: rows and checksum"
            );
            assert_eq!(
                after.split(" | ").next(),
                before.split(" | ").next(),
                "{schema} {point}: FKs"
            );
            assert_eq!(
                pg.psql("fhirdb", "SELECT count(*) FROM hfj_resource_old"),
                "2000"
            );
            // kill -9 during the rollback, then resume finishes it.
            let id = sb.run_ids().pop().unwrap();
            let out = sb.run_env(
                &["rollback", &id],
                &[ENV[0], ("FERRY_FAILPOINT", "undo_started:convert")],
            );
            assert_eq!(out.signal, Some(9), "{schema} {point}: rollback killed");
            sb.run_env(&["resume"], &ENV).expect(0);
            assert_eq!(
                pg.psql("fhirdb", SHAPE),
                before,
                "{schema} {point}: rolled back"
            );
            pg.finish(sb, &[("fhirdb", FERRY_LEFT)], vec![]);
        }
    }
}

/// kill -9 while the swap transaction waits for a lock (inside it): the server rolls it
/// back, and `resume` swaps and verifies; the rollback then restores everything.
#[test]
fn kill_9_inside_the_swap_then_resume() {
    for schema in SCHEMAS {
        let Some((pg, sb)) = setup(schema) else {
            return;
        };
        let before = pg.psql("fhirdb", SHAPE);
        let pb = convert("hash", "copy")
            .str("lock_timeout", "60s")
            .raw("lock_retries", "0");
        pb.write(&sb, "pb.toml");
        let out = sb.run_env(
            &["run", "pb.toml", "--target", "target.toml"],
            &[ENV[0], ("FERRY_FAILPOINT", "checkpoint:convert#12")],
        );
        assert_eq!(out.signal, Some(9), "{}", out.stderr);
        let mut hold = blocker(&pg, "LOCK TABLE test_ref IN ACCESS EXCLUSIVE MODE");
        let mut ferry = sb.spawn(&["resume"], &ENV);
        wait_for(
            "the swap to wait for its lock",
            std::time::Duration::from_secs(60),
            || {
                pg.psql("postgres", "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid WHERE NOT l.granted AND a.application_name LIKE 'ferry%'") != "0"
            },
        );
        ferry.kill().unwrap();
        ferry.wait().unwrap();
        // The killed client's backend would go on once the lock is free: end it first, as a
        // crashed host's connection would be.
        end_sessions(&pg, "application_name LIKE 'ferry%'");
        end_sessions(&pg, "query LIKE 'BEGIN; LOCK%'");
        hold.wait().unwrap();
        assert_eq!(
            pg.psql(
                "fhirdb",
                "SELECT relkind FROM pg_class WHERE relname = 'hfj_resource'"
            ),
            "r",
            "{schema}: the swap was rolled back"
        );
        sb.run_env(&["resume"], &ENV).expect(0);
        let after = pg.psql("fhirdb", SHAPE);
        assert_eq!(
            after.split(" | ").nth(4),
            before.split(" | ").nth(4),
            "{schema}: rows and checksum"
        );
        let id = sb.run_ids().pop().unwrap();
        sb.run_env(&["rollback", &id], &ENV).expect(0);
        assert_eq!(pg.psql("fhirdb", SHAPE), before, "{schema}: rolled back");
        pg.finish(sb, &[("fhirdb", FERRY_LEFT)], vec![]);
    }
}
