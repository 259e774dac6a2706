//! The free-disk check: what the conversion builds (the twin and its indexes for copy;
//! the guard and substitute indexes for attach) against statvfs of the directory they go
//! to (the database's default tablespace: the data directory, or the tablespace's
//! location) when it is on this host; otherwise a warning naming what could not be checked.

use std::str::FromStr;

use tokio_postgres::Client;

use super::{Check, PartitionTable, StepCx, catalog, pgerr};
use crate::report::CheckStatus;

/// Free disk for what the conversion builds (the twin and its indexes for copy; the
/// guard and substitute indexes for attach), via statvfs when the data directory is on
/// this host; otherwise a warning naming what could not be checked.
pub async fn disk(
    pt: &PartitionTable,
    cx: &StepCx,
    c: &Client,
    cat: &catalog::Catalog,
) -> anyhow::Result<Check> {
    let need = if pt.attach() {
        let mut n = 0i64;
        for ix in cat.indexes.iter().filter(|i| i.needs_guard(&pt.key)) {
            let r = c
                .query_one(
                    "SELECT pg_relation_size(to_regclass($1))",
                    &[&pt.q(&ix.name)],
                )
                .await
                .map_err(pgerr)?;
            n += 3 * r.get::<_, i64>(0);
        }
        n
    } else {
        cat.bytes + cat.bytes / 5
    };
    let mb = need / (1 << 20) + 1;
    // Where the new relations go: the database's default tablespace (the data directory
    // for pg_default; pg_settings hides it from a login without pg_read_all_settings).
    let dir: Option<String> = c
        .query_opt(
            "SELECT CASE WHEN t.spcname = 'pg_default' \
               THEN (SELECT setting FROM pg_settings WHERE name = 'data_directory') \
               ELSE nullif(pg_tablespace_location(t.oid), '') END \
             FROM pg_database d JOIN pg_tablespace t ON t.oid = d.dattablespace \
             WHERE d.datname = current_database()",
            &[],
        )
        .await
        .map_err(pgerr)?
        .and_then(|r| r.get(0));
    let url = cx
        .target()?
        .postgres(&pt.database)
        .map(|p| p.url.clone())
        .unwrap_or_default();
    let local = tokio_postgres::Config::from_str(&url)
        .ok()
        .is_some_and(|cfg| {
            cfg.get_hosts().iter().all(|h| match h {
                tokio_postgres::config::Host::Tcp(h) => {
                    ["127.0.0.1", "localhost", "::1"].contains(&h.as_str())
                }
                tokio_postgres::config::Host::Unix(_) => true,
            })
        });
    let free = match (&dir, local) {
        (Some(d), true) => free_bytes(d),
        _ => None,
    };
    Ok(match free {
        Some(f) if f < need as u64 => Check::fail(
            "disk",
            format!(
                "{} MB needed for the conversion of {}, {} MB free in {}: free space or use `existing = \"attach\"`",
                mb,
                cat.table,
                f >> 20,
                dir.unwrap_or_default()
            ),
        ),
        Some(f) => Check::pass(
            "disk",
            format!(
                "{mb} MB needed, {} MB free in {}",
                f >> 20,
                dir.unwrap_or_default()
            ),
        ),
        None => Check::new(
            "disk",
            CheckStatus::Warn,
            format!(
                "free disk on the database host could not be checked ({}): make sure {mb} MB are free there",
                match (dir, local) {
                    (None, _) => "the data directory is not readable by this login".to_owned(),
                    (Some(d), false) => format!("{d} is on another host"),
                    (Some(d), true) => format!("{d} is not reachable from here"),
                }
            ),
        ),
    })
}

fn free_bytes(path: &str) -> Option<u64> {
    let c = std::ffi::CString::new(path).ok()?;
    // SAFETY: statvfs writes into the zeroed struct we own; the path is NUL-terminated.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    Some(s.f_bavail as u64 * s.f_frsize as u64)
}
