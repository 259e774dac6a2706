//! `partition_table` refusals (each with --dry-run too: exit 3, nothing changed; not
//! enough disk on a small tmpfs tablespace), an exhausted lock_timeout, the staged
//! playbook shape and the window budget.

use std::process::Command;

use super::{
    ENV, FERRY_LEFT, SCHEMAS, SHAPE, blocker, convert, end_sessions, refused, run, session, setup,
};
use crate::harness::{Pg, Playbook, require, wait_for};

/// Each refusal: `--dry-run` and `run` both exit 3, name the object, and change nothing.
#[test]
fn refusals_are_clear_and_change_nothing() {
    for schema in SCHEMAS {
        let Some((pg, sb)) = setup(schema) else {
            return;
        };
        let before = pg.psql("fhirdb", SHAPE);
        let cases: Vec<(Playbook, &str)> = vec![
            (
                convert("range", "attach").str("key", "res_type"),
                "HAPI-2563",
            ),
            (
                convert("hash", "copy").str("key", "partition_id"),
                "exactly (res_id)",
            ),
            (
                convert("range", "attach").str("table", "no_such_table"),
                "no_such_table does not exist",
            ),
        ];
        for (pb, want) in cases {
            refused(&sb, &pb, want);
        }
        // A unique key no guard can keep (an expression).
        pg.psql(
            "fhirdb",
            "CREATE UNIQUE INDEX test_expr_uniq ON hfj_resource (lower(hash_sha256))",
        );
        refused(&sb, &convert("hash", "copy"), "test_expr_uniq");
        pg.psql("fhirdb", "DROP INDEX test_expr_uniq");
        // Another session on the database.
        let mut other = session(&pg, "SELECT pg_sleep(60)");
        wait_for(
            "the other session",
            std::time::Duration::from_secs(10),
            || {
                pg.psql("postgres", "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(60)%' AND pid <> pg_backend_pid()") == "1"
            },
        );
        refused(&sb, &convert("range", "attach"), "other session");
        pg.psql("postgres", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(60)%' AND pid <> pg_backend_pid()");
        other.wait().unwrap();
        wait_for(
            "the session to end",
            std::time::Duration::from_secs(10),
            || {
                pg.psql("postgres", "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(60)%' AND pid <> pg_backend_pid()") == "0"
            },
        );
        assert_eq!(
            pg.psql("fhirdb", SHAPE),
            before,
            "{schema}: nothing changed"
        );
        assert_eq!(pg.psql("fhirdb", FERRY_LEFT), "0");
        // Already partitioned.
        run(&sb, &convert("range", "attach"), &[]).expect(0);
        refused(&sb, &convert("range", "attach"), "already partitioned");
        pg.finish(sb, &[], vec![]);
    }
}

/// The playbook's split: prepare (online), convert (the window), validate (online), on a
/// database-only target; then the window budget: a copy that cannot fit stops at a
/// checkpoint (exit 5) or rolls back (`on_window = "rollback"`, exit 1, nothing left).
#[test]
fn staged_attach_and_the_window_budget() {
    for schema in SCHEMAS {
        let Some((pg, sb)) = setup(schema) else {
            return;
        };
        let before = pg.psql("fhirdb", SHAPE);
        let pb = convert("range", "attach")
            .str("stage", "prepare")
            .step("window", "partition_table")
            .str("stage", "convert")
            .raw("interval", "\"500\"")
            .raw("premake", "2")
            .step("validate", "partition_table")
            .str("stage", "validate");
        let out = run(&sb, &pb, &[]);
        out.expect(0);
        assert!(out.stderr.contains("window transaction:"), "{}", out.stderr);
        let after = pg.psql("fhirdb", SHAPE);
        assert_eq!(
            after.split(" | ").next(),
            before.split(" | ").next(),
            "{schema}: FKs validated"
        );
        assert_eq!(
            after.split(" | ").nth(4),
            before.split(" | ").nth(4),
            "{schema}: rows"
        );
        let id = sb.run_ids().pop().unwrap();
        sb.run_env(&["rollback", &id], &ENV).expect(0);
        assert_eq!(pg.psql("fhirdb", SHAPE), before, "{schema}: rolled back");
        assert_eq!(pg.psql("fhirdb", FERRY_LEFT), "0");
        // A window far too small: attach stops before its CHECK validation (estimated from
        // a sampled scan rate), copy before a batch; each at a clean checkpoint.
        for (pb, phase) in [
            (
                convert("range", "attach"),
                "the range CHECK validation is estimated",
            ),
            (convert("hash", "copy"), "the copy is estimated"),
        ] {
            let out = run(&sb, &pb.str("window", "1ms"), &[]);
            out.expect(5);
            assert!(out.stderr.contains(phase), "{schema}: {}", out.stderr);
            let id = sb.run_ids().pop().unwrap();
            sb.run_env(&["rollback", &id], &ENV).expect(0);
            assert_eq!(pg.psql("fhirdb", SHAPE), before, "{schema}: rolled back");
        }
        let pb = convert("hash", "copy")
            .str("window", "1ms")
            .str("on_window", "rollback");
        run(&sb, &pb, &[]).expect(1);
        assert_eq!(pg.psql("fhirdb", SHAPE), before, "{schema}: rolled back");
        pg.finish(sb, &[("fhirdb", FERRY_LEFT)], vec![]);
    }
}

/// `lock_timeout` exhausted (a session holds the table): the step fails saying so, the run
/// rolls back, nothing is changed.
#[test]
fn lock_timeout_exhausted_fails_clearly_and_changes_nothing() {
    for schema in SCHEMAS {
        let Some((pg, sb)) = setup(schema) else {
            return;
        };
        let before = pg.psql("fhirdb", SHAPE);
        let mut hold = blocker(&pg, "LOCK TABLE hfj_resource IN ACCESS SHARE MODE");
        let pb = convert("range", "attach")
            .str("stage", "prepare")
            .str("lock_timeout", "200ms")
            .raw("lock_retries", "1");
        let out = run(&sb, &pb, &[]);
        out.expect(1);
        assert!(
            out.stderr.contains("lock_timeout 200ms"),
            "{schema}: {}",
            out.stderr
        );
        end_sessions(&pg, "query LIKE 'BEGIN; LOCK%'");
        hold.wait().unwrap();
        assert_eq!(
            pg.psql("fhirdb", SHAPE),
            before,
            "{schema}: nothing changed"
        );
        pg.finish(sb, &[("fhirdb", FERRY_LEFT)], vec![]);
    }
}

/// A tmpfs of `bytes` mounted for the cluster's user, unmounted (lazily) when dropped.
struct SmallFs(std::path::PathBuf);

impl SmallFs {
    fn mount(bytes: i64) -> Option<SmallFs> {
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout == b"0\n");
        if !require("root (to mount a small tmpfs for a tablespace)", root) {
            return None;
        }
        let dir = std::env::temp_dir().join(format!("ferry-test-smallfs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let id = |flag: &str| {
            let o = Command::new("id")
                .args([flag, "postgres"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&o.stdout).trim().to_owned()
        };
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!(
                "size={},mode=0700,uid={},gid={}",
                bytes,
                id("-u"),
                id("-g")
            ))
            .arg("tmpfs")
            .arg(&dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount -t tmpfs on {}", dir.display());
        Some(SmallFs(dir))
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Not enough disk: fhirdb moved to a tablespace on a tmpfs with room for half of what the
/// copy builds. `--dry-run` and `run` exit 3 naming the space needed and free, nothing
/// changes; on the data directory (plenty of room) the same run converts.
#[test]
fn not_enough_disk_is_refused_and_changes_nothing() {
    for schema in SCHEMAS {
        let Some((pg, sb)) = setup(schema) else {
            return;
        };
        let sizes = pg.psql(
            "fhirdb",
            "SELECT pg_database_size(current_database()) || ' ' || pg_total_relation_size('hfj_resource')",
        );
        let (db, table) = sizes.split_once(' ').unwrap();
        let (db, table): (i64, i64) = (db.parse().unwrap(), table.parse().unwrap());
        // Room for the database as it is and 60% of the table: the copy needs 120%.
        let Some(fs) = SmallFs::mount((db + table * 6 / 10 + 4095) / 4096 * 4096 + 65536) else {
            return;
        };
        let loc = fs.0.display().to_string();
        pg.psql(
            "postgres",
            &format!("CREATE TABLESPACE small LOCATION '{loc}'"),
        );
        pg.psql("postgres", "ALTER DATABASE fhirdb SET TABLESPACE small");
        let before = pg.psql("fhirdb", SHAPE);
        // "N MB needed for the conversion of hfj_resource, M MB free in LOC: free space …"
        refused(
            &sb,
            &convert("hash", "copy"),
            &format!("MB free in {loc}: free space or use `existing = \"attach\"`"),
        );
        assert_eq!(
            pg.psql("fhirdb", SHAPE),
            before,
            "{schema}: nothing changed"
        );
        assert_eq!(pg.psql("fhirdb", FERRY_LEFT), "0");
        back_to_default(&pg);
        drop(fs);
        run(&sb, &convert("hash", "copy"), &[]).expect(0);
        pg.finish(sb, &[], vec![]);
    }
}

fn back_to_default(pg: &Pg) {
    pg.psql(
        "postgres",
        "ALTER DATABASE fhirdb SET TABLESPACE pg_default",
    );
    pg.psql("postgres", "DROP TABLESPACE small");
}
