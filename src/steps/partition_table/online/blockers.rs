//! What kept a lock from being granted: the other sessions holding (granted) locks on the
//! relations ferry asked for (and their partitions, which LOCK recurses into), read from
//! `pg_locks` and `pg_stat_activity` right after a `lock_timeout` fired — pid, user,
//! application, state, lock mode and relation, how long its transaction has been open,
//! and its query (shortened). Empty when the holder ended in the meantime.

use tokio_postgres::Client;

use super::super::pgerr;

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

/// The sessions holding locks on `rels` (regclass texts) or their partitions: every lock
/// conflicts with the ACCESS EXCLUSIVE ferry asks for; for a weaker mode, the holder of a
/// weak lock is listed too (it is not known which one refused).
pub async fn read(c: &Client, rels: &[String], floor_s: f64) -> anyhow::Result<Vec<Blocker>> {
    let rels: Vec<&str> = rels.iter().map(String::as_str).collect();
    let rows = c
        .query(
            "WITH RECURSIVE rels(oid) AS ( \
               SELECT to_regclass(r)::oid FROM unnest($1::text[]) r WHERE to_regclass(r) IS NOT NULL \
               UNION SELECT i.inhrelid FROM pg_inherits i JOIN rels ON i.inhparent = rels.oid) \
             SELECT DISTINCT ON (a.pid) a.pid, coalesce(a.usename::text, '?') || '@' || coalesce(a.client_addr::text, 'local') || ' ' || coalesce(nullif(a.application_name, ''), '-'), \
                    coalesce(a.state, '?'), l.mode, l.relation::regclass::text, \
                    coalesce(extract(epoch FROM clock_timestamp() - a.xact_start), 0)::float8, \
                    left(regexp_replace(coalesce(a.query, ''), '\\s+', ' ', 'g'), 200) \
               FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
              WHERE l.granted AND l.locktype = 'relation' AND l.relation IN (SELECT oid FROM rels) \
                AND l.pid <> pg_backend_pid() \
              ORDER BY a.pid, a.xact_start",
            &[&rels],
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
    if v.iter().any(|b| b.age_s >= floor_s) {
        v.retain(|b| b.age_s >= floor_s);
    }
    Ok(v)
}

/// One line for the journal and the error: the blockers, oldest transaction first; a
/// holder whose transaction is younger than `lock_timeout` is left out when there is an
/// older one (HAPI's own short transactions hold locks too).
pub async fn describe(pt: &super::super::PartitionTable, c: &Client, rels: &[String]) -> String {
    match read(c, rels, pt.lock_timeout.get().as_secs_f64()).await {
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
