//! What kept a lock from being granted: the other sessions holding (granted) locks on the
//! table, ferry's objects for it and every table whose FK points at it, read from
//! `pg_locks` and `pg_stat_activity` right after a `lock_timeout` fired — pid, user,
//! application, state, lock mode and relation, how long its transaction has been open,
//! and its query (shortened). Empty when the holder ended in the meantime.

use tokio_postgres::Client;

use super::super::{PartitionTable, pgerr};

#[derive(Debug, Clone, PartialEq)]
pub struct Blocker {
    pub pid: i32,
    pub who: String,
    pub state: String,
    pub mode: String,
    pub relation: String,
    pub age_s: f64,
    pub query: String,
}

impl std::fmt::Display for Blocker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {} ({}, {}) holds {} on {} in a transaction open {:.1}s, query: {}",
            self.pid, self.who, self.state, self.mode, self.relation, self.age_s, self.query
        )
    }
}

/// The sessions holding locks that conflict with the ACCESS EXCLUSIVE lock ferry asks for
/// (every lock does) on the relations the window or swap touches.
pub async fn read(pt: &PartitionTable, c: &Client) -> anyhow::Result<Vec<Blocker>> {
    let like = format!("{}%", pt.table.replace('_', "\\_"));
    let rows = c
        .query(
            "WITH rels AS ( \
               SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND c.relname::text LIKE $2 \
               UNION SELECT conrelid FROM pg_constraint WHERE contype = 'f' AND confrelid = to_regclass($3)) \
             SELECT DISTINCT ON (a.pid) a.pid, coalesce(a.usename::text, '?') || '@' || coalesce(a.client_addr::text, 'local') || ' ' || coalesce(nullif(a.application_name, ''), '-'), \
                    coalesce(a.state, '?'), l.mode, l.relation::regclass::text, \
                    coalesce(extract(epoch FROM clock_timestamp() - a.xact_start), 0)::float8, \
                    left(regexp_replace(coalesce(a.query, ''), '\\s+', ' ', 'g'), 200) \
               FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
              WHERE l.granted AND l.locktype = 'relation' AND l.relation IN (SELECT oid FROM rels) \
                AND l.pid <> pg_backend_pid() \
              ORDER BY a.pid, a.xact_start",
            &[&pt.schema, &like, &pt.q(&pt.table)],
        )
        .await
        .map_err(pgerr)?;
    let mut v: Vec<Blocker> = rows
        .iter()
        .map(|r| Blocker {
            pid: r.get(0),
            who: r.get(1),
            state: r.get(2),
            mode: r.get(3),
            relation: r.get(4),
            age_s: r.get(5),
            query: r.get(6),
        })
        .collect();
    v.sort_by(|a, b| b.age_s.total_cmp(&a.age_s));
    // HAPI's own short transactions hold locks too; a holder whose transaction is younger
    // than the timeout did not make it fire (unless there is no other).
    let floor = pt.lock_timeout.get().as_secs_f64();
    if v.iter().any(|b| b.age_s >= floor) {
        v.retain(|b| b.age_s >= floor);
    }
    Ok(v)
}

/// One line for the journal and the error: the blockers, oldest transaction first.
pub async fn describe(pt: &PartitionTable, c: &Client) -> String {
    match read(pt, c).await {
        Ok(v) if v.is_empty() => "no session holds a lock on it any more".into(),
        Ok(v) => format!(
            "blocked by {}",
            v.iter()
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        ),
        Err(e) => format!("the blockers could not be read: {e:#}"),
    }
}
