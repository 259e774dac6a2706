//! HAPI's own latency, watched from the server while the online copy runs: a task on its
//! own session samples `pg_stat_activity` every 25 ms for the active queries of every
//! other client session on the database (not ferry's, by `application_name`) that started
//! after the watch did — a long report running since before is not HAPI slowing down. A
//! query seen running and then gone has finished: its latency is taken as the longest age
//! it was seen at (a lower bound, within one sampling interval). A query still waiting on
//! a lock counts with its age so far. [`Watch::take`] gives the slowest of those since the
//! last call; the copy compares it with the slowest seen while it calibrated, before its
//! first batch, and backs off while HAPI is slower than that.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_postgres::Client;

use super::super::pgerr;

#[derive(Default)]
struct Seen {
    /// (pid, query_start in µs) → the longest age seen, ms, and whether it waits on a lock.
    running: HashMap<(i32, i64), (f64, bool)>,
    /// The slowest query finished since the last `take`, ms.
    finished: f64,
    /// How many finished since the last `take`.
    count: u64,
}

pub struct Watch {
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

/// What [`Watch::take`] saw: the slowest HAPI query (finished, or waiting on a lock), ms,
/// and how many finished.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub slowest_ms: f64,
    pub finished: u64,
}

impl Watch {
    pub async fn start(c: Client) -> anyhow::Result<Watch> {
        let since: f64 = c
            .query_one("SELECT extract(epoch FROM clock_timestamp())::float8", &[])
            .await
            .map_err(pgerr)?
            .get(0);
        let seen = Arc::new(Mutex::new(Seen::default()));
        let s = seen.clone();
        let task = tokio::spawn(async move {
            let sql = "SELECT pid, (extract(epoch FROM query_start) * 1e6)::int8, \
                   (extract(epoch FROM clock_timestamp() - query_start) * 1000)::float8, \
                   coalesce(wait_event_type = 'Lock', false) \
              FROM pg_stat_activity \
             WHERE datname = current_database() AND backend_type = 'client backend' \
               AND state = 'active' AND pid <> pg_backend_pid() \
               AND coalesce(application_name, '') NOT LIKE 'ferry%' \
               AND query_start >= to_timestamp($1)";
            loop {
                let Ok(rows) = c.query(sql, &[&since]).await else {
                    return; // the session is gone: the probe still watches
                };
                let now: HashMap<(i32, i64), (f64, bool)> = rows
                    .iter()
                    .map(|r| ((r.get(0), r.get(1)), (r.get(2), r.get(3))))
                    .collect();
                {
                    let mut g = s.lock().unwrap_or_else(|e| e.into_inner());
                    let gone: Vec<(i32, i64)> = g
                        .running
                        .keys()
                        .filter(|k| !now.contains_key(k))
                        .copied()
                        .collect();
                    for k in gone {
                        if let Some((ms, _)) = g.running.remove(&k) {
                            g.finished = g.finished.max(ms);
                            g.count += 1;
                        }
                    }
                    for (k, v) in now {
                        g.running.insert(k, v);
                    }
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        });
        Ok(Watch { seen, task })
    }

    /// The slowest query since the last call: finished ones, and those waiting on a lock.
    pub fn take(&self) -> Sample {
        let mut g = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let waiting = g
            .running
            .values()
            .filter(|(_, lock)| *lock)
            .map(|(ms, _)| *ms)
            .fold(0.0, f64::max);
        let s = Sample {
            slowest_ms: g.finished.max(waiting),
            finished: g.count,
        };
        g.finished = 0.0;
        g.count = 0;
        s
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether `now` is slower than the calibration's `baseline`: three times it plus 50 ms
/// (sampling every 25 ms sees a fast query at up to one interval, so a small baseline
/// alone would call ordinary jitter slow).
pub fn slow(baseline: f64, now: f64) -> bool {
    now > baseline * 3.0 + 50.0
}

#[cfg(test)]
mod tests {
    use super::slow;

    #[test]
    fn slower_than_three_times_the_baseline_and_50_ms() {
        assert!(!slow(0.0, 40.0));
        assert!(slow(0.0, 60.0));
        assert!(!slow(30.0, 130.0));
        assert!(slow(30.0, 150.0));
    }
}
