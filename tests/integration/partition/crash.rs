//! `partition_table` and kill -9: in every phase (mid-copy, before and after the swap,
//! before validate, during rollback) and inside statements (the index builds, the swap
//! transaction, an FK VALIDATE, each killed while it waits for a lock); `ferry resume`
//! reaches the same end state with equal counts and checksums, and the rollback restores
//! all and leaves no ferry object.

use super::{
    ENV, FERRY_LEFT, SCHEMAS, SHAPE, assert_same, convert, kill_while_waiting, killed, setup,
};
use crate::harness::{Pg, Sandbox};

/// Resume after the kill: rows, checksum and FKs as before; then rollback restores all.
fn resume_then_rollback(pg: Pg, sb: Sandbox, before: &str, what: &str) {
    sb.run_env(&["resume"], &ENV).expect(0);
    assert_eq!(
        pg.psql(
            "fhirdb",
            "SELECT relkind FROM pg_class WHERE relname = 'hfj_resource'"
        ),
        "p",
        "{what}: converted"
    );
    assert_same(before, &pg.psql("fhirdb", SHAPE), &[0, 3, 4], what);
    let id = sb.run_ids().pop().unwrap();
    sb.run_env(&["rollback", &id], &ENV).expect(0);
    assert_eq!(pg.psql("fhirdb", SHAPE), before, "{what}: rolled back");
    pg.finish(sb, &[("fhirdb", FERRY_LEFT)], vec![]);
}

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
            killed(&sb, &pb, point);
            sb.run_env(&["resume"], &ENV).expect(0);
            let what = format!("{schema} {point}");
            assert_same(&before, &pg.psql("fhirdb", SHAPE), &[0, 4], &what);
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
            assert_eq!(out.signal, Some(9), "{what}: rollback killed");
            sb.run_env(&["resume"], &ENV).expect(0);
            assert_eq!(pg.psql("fhirdb", SHAPE), before, "{what}: rolled back");
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
        killed(&sb, &pb, "checkpoint:convert#12");
        kill_while_waiting(
            &pg,
            &sb,
            "LOCK TABLE test_ref IN ACCESS EXCLUSIVE MODE",
            &["resume"],
        );
        assert_eq!(
            pg.psql(
                "fhirdb",
                "SELECT relkind FROM pg_class WHERE relname = 'hfj_resource'"
            ),
            "r",
            "{schema}: the swap was rolled back"
        );
        resume_then_rollback(pg, sb, &before, schema);
    }
}

/// kill -9 during the index builds on the twin: both sessions' builds wait for a lock a
/// session holds on one twin partition, so each is inside its statement when ferry dies.
/// Nothing half-built survives (each build is one statement); `resume` builds every index
/// (none twice), swaps and verifies.
#[test]
fn kill_9_during_the_index_builds_then_resume() {
    for schema in SCHEMAS {
        let Some((pg, sb)) = setup(schema) else {
            return;
        };
        let before = pg.psql("fhirdb", SHAPE);
        killed(&sb, &convert("hash", "copy"), "checkpoint:convert#11");
        kill_while_waiting(
            &pg,
            &sb,
            "LOCK TABLE hfj_resource_p2 IN ROW EXCLUSIVE MODE",
            &["resume"],
        );
        assert_eq!(
            pg.psql(
                "fhirdb",
                "SELECT count(*) FROM pg_class WHERE relname LIKE 'ferry_new_%' AND relkind = 'I'"
            ),
            "0",
            "{schema}: no twin index committed while the builds waited"
        );
        assert_eq!(
            pg.psql("fhirdb", "SELECT count(*) FROM hfj_resource_ferry_twin"),
            "2000",
            "{schema}: the copy is kept"
        );
        resume_then_rollback(pg, sb, &before, schema);
    }
}

/// kill -9 during `VALIDATE CONSTRAINT` (the FK from test_ref waits for a lock), for attach
/// and copy: the FK stays NOT VALID, `resume` validates every FK and verifies.
#[test]
fn kill_9_during_fk_validate_then_resume() {
    for schema in SCHEMAS {
        for (strategy, existing) in [("range", "attach"), ("hash", "copy")] {
            let Some((pg, sb)) = setup(schema) else {
                return;
            };
            let before = pg.psql("fhirdb", SHAPE);
            let pb = convert(strategy, existing)
                .str("stage", "convert")
                .step("validate", "partition_table")
                .str("stage", "validate");
            killed(&sb, &pb, "step_started:validate");
            kill_while_waiting(
                &pg,
                &sb,
                "LOCK TABLE test_ref IN ACCESS EXCLUSIVE MODE",
                &["resume"],
            );
            let what = format!("{schema} {existing}");
            assert_eq!(
                pg.psql(
                    "fhirdb",
                    "SELECT convalidated FROM pg_constraint WHERE conname = 'fk_test_cascade'"
                ),
                "f",
                "{what}: the killed VALIDATE did not commit"
            );
            resume_then_rollback(pg, sb, &before, &what);
        }
    }
}
