//! `prometheus`: scrapes HAPI's `/actuator/prometheus` and judges the seed's five metrics.
//!
//! * `hikaricp_connections_pending` > 0 for `pending_for` (30s) or longer, per pool.
//! * any increase of the HikariCP timeout counter since the previous scrape, per pool
//!   (Micrometer names it `hikaricp_connections_timeout_total`; the seed and HikariCP's own
//!   Prometheus tracker write `hikaricp_connection_timeout_total`: both are read). After a
//!   restart (or when a counter went down, i.e. was reset) its whole value is the increase.
//! * `http_server_requests_seconds_max` above `max_request_s` (30), per series (method, uri).
//! * heap: the sum of `jvm_memory_used_bytes{area="heap"}` over the sum of the defined
//!   (> 0) `jvm_memory_max_bytes{area="heap"}`, above `max_heap_pct` (85). G1 leaves Eden
//!   and Survivor undefined (-1); Old Gen's max is then the heap's.
//! * `process_uptime_seconds` lower than at the previous scrape: the container restarted.
//!
//! Pending duration, counter increases and restarts need the previous scrape: it is kept
//! per URL in `<state_dir>/checks/prometheus-<sha256(url)[..16]>.json`, written atomically
//! after every successful scrape. The first scrape judges only the stateless rules.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::exposition::{self, Exposition};
use super::{CheckCx, Report, Status};

pub const KEYS: &[&str] = &["url", "pending_for", "max_request_s", "max_heap_pct"];

const PENDING: &str = "hikaricp_connections_pending";
const TIMEOUTS: &[&str] = &[
    "hikaricp_connections_timeout_total",
    "hikaricp_connection_timeout_total",
];
const REQUEST_MAX: &str = "http_server_requests_seconds_max";
const HEAP_USED: &str = "jvm_memory_used_bytes";
const HEAP_MAX: &str = "jvm_memory_max_bytes";
const UPTIME: &str = "process_uptime_seconds";
/// A metrics page larger than this is not HAPI's.
const MAX_BODY: usize = 32 << 20;

/// What one scrape leaves for the next, per URL.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct State {
    pub url: String,
    /// Seconds since the epoch, by ferry's clock.
    pub scraped_at: f64,
    /// Timeout counters by series.
    #[serde(default)]
    pub counters: BTreeMap<String, f64>,
    /// `process_uptime_seconds` by series (normally one, without labels).
    #[serde(default)]
    pub uptime: BTreeMap<String, f64>,
    /// Pools whose pending count has been > 0 at every scrape since this time.
    #[serde(default)]
    pub pending_since: BTreeMap<String, f64>,
}

pub struct Thresholds {
    pub pending_for: Duration,
    pub max_request_s: f64,
    pub max_heap_pct: f64,
}

pub async fn run(cx: &CheckCx<'_>) -> anyhow::Result<Report> {
    let url = metrics_url(cx)?;
    let th = Thresholds {
        pending_for: cx.params.duration("pending_for", "30s")?,
        max_request_s: cx.params.f64("max_request_s", 30.0)?,
        max_heap_pct: cx.params.f64("max_heap_pct", 85.0)?,
    };
    let body = fetch(&url).await?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let page = exposition::parse(&body).map_err(|e| anyhow!("{url}: not a metrics page: {e}"))?;
    let path = state_path(&cx.state_dir, &url);
    let (prev, mut notes) = load_state(&path, &url);
    let (mut report, state) = judge(&page, prev.as_ref(), now, &th);
    report.details.splice(0..0, notes.drain(..));
    if let Some(obj) = report.data.as_object_mut() {
        obj.insert("url".into(), json!(url));
        obj.insert("state_file".into(), json!(path.display().to_string()));
    }
    let state = State { url, ..state };
    if let Err(e) = save_state(&path, &state) {
        let why = format!(
            "cannot save the scrape state to {}: {e:#}; increases and restarts cannot be judged next time",
            path.display()
        );
        if report.status == Status::Ok {
            report.status = Status::Unknown;
            report.summary = why.clone();
        }
        report.details.push(why);
    }
    Ok(report)
}

/// The `url` parameter, else the target's `fhir.base_url` with its trailing `/fhir` segment
/// replaced by `/actuator/prometheus` (a base URL without a path gets it appended).
fn metrics_url(cx: &CheckCx<'_>) -> anyhow::Result<String> {
    let explicit = cx.params.string("url", "")?;
    if !explicit.is_empty() {
        return Ok(explicit);
    }
    let base = cx
        .target
        .fhir
        .as_ref()
        .map(|f| f.base_url.as_str())
        .ok_or_else(|| anyhow!("set `url`, or `[fhir] base_url` in the target"))?;
    derive_url(base)
}

pub fn derive_url(base: &str) -> anyhow::Result<String> {
    let mut u = reqwest::Url::parse(base).with_context(|| format!("fhir.base_url `{base}`"))?;
    let path = u.path().trim_end_matches('/').to_owned();
    let new = if path.is_empty() {
        "/actuator/prometheus".to_owned()
    } else if let Some(prefix) = path.strip_suffix("/fhir") {
        format!("{prefix}/actuator/prometheus")
    } else {
        bail!(
            "cannot derive the metrics URL from fhir.base_url `{base}` (its path does not end in /fhir); set `url`"
        );
    };
    u.set_path(&new);
    u.set_query(None);
    u.set_fragment(None);
    Ok(u.to_string())
}

async fn fetch(url: &str) -> anyhow::Result<String> {
    let mut resp = crate::infra::http::client(Duration::from_secs(10))?
        .get(url)
        // The classic text format, not OpenMetrics, which Spring serves when asked.
        .header("Accept", "text/plain;version=0.0.4;q=1.0, */*;q=0.1")
        .send()
        .await
        .map_err(|e| anyhow!("GET {url}: {}", describe(&e)))?;
    let status = resp.status();
    if !status.is_success() {
        bail!("GET {url}: HTTP {status}");
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| anyhow!("GET {url}: reading the body: {}", describe(&e)))?
    {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_BODY {
            bail!("GET {url}: the page is larger than {} MiB", MAX_BODY >> 20);
        }
    }
    String::from_utf8(body).map_err(|_| anyhow!("GET {url}: the page is not UTF-8"))
}

/// reqwest's top-level message ("error sending request") hides the cause; name it.
fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s += &format!(": {c}");
        src = c.source();
    }
    s
}

pub fn state_path(state_dir: &std::path::Path, url: &str) -> PathBuf {
    let h = hex::encode(Sha256::digest(url.as_bytes()));
    state_dir
        .join("checks")
        .join(format!("prometheus-{}.json", &h[..16]))
}

/// The previous scrape, if any; an unreadable file starts over (with a note).
fn load_state(path: &std::path::Path, url: &str) -> (Option<State>, Vec<String>) {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (None, vec![]),
        Err(e) => {
            return (
                None,
                vec![format!(
                    "cannot read {}: {e}; judging as a first scrape",
                    path.display()
                )],
            );
        }
    };
    match serde_json::from_str::<State>(&text) {
        Ok(s) if s.url == url => (Some(s), vec![]),
        Ok(s) => (
            None,
            vec![format!(
                "{} holds the state of {} (hash collision?); judging as a first scrape",
                path.display(),
                s.url
            )],
        ),
        Err(e) => (
            None,
            vec![format!(
                "{} is not a scrape state ({e}); judging as a first scrape",
                path.display()
            )],
        ),
    }
}

fn save_state(path: &std::path::Path, state: &State) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let bytes = serde_json::to_vec_pretty(state)?;
    crate::infra::dotenv::write_atomic(path, &bytes)?;
    Ok(())
}

fn secs(v: f64) -> String {
    if v.is_finite() && v.fract() != 0.0 {
        format!("{v:.1}s")
    } else {
        format!("{v}s")
    }
}

/// Applies the rules to one scrape; returns the report and the state for the next one.
pub fn judge(
    page: &Exposition,
    prev: Option<&State>,
    now: f64,
    th: &Thresholds,
) -> (Report, State) {
    let mut alerts: Vec<String> = vec![];
    let mut details: Vec<String> = vec![];
    let mut state = State {
        scraped_at: now,
        ..State::default()
    };
    let first = prev.is_none();
    if let Some(p) = prev {
        details.push(format!(
            "previous scrape {:.0}s ago",
            (now - p.scraped_at).max(0.0)
        ));
    } else {
        details.push(
            "first scrape (no saved state): pending duration, timeout increases and restarts are judged from the next scrape on".into(),
        );
    }

    // Restart: uptime lower than before, per series.
    let mut uptime_data = vec![];
    let mut restarted = false;
    for s in page.named(UPTIME) {
        let key = s.series();
        let before = prev.and_then(|p| p.uptime.get(&key)).copied();
        if let Some(b) = before
            && s.value < b
        {
            restarted = true;
            alerts.push(format!(
                "container restarted (uptime {}, was {} at the previous scrape)",
                secs(s.value),
                secs(b)
            ));
        }
        uptime_data.push(json!({"series": key, "seconds": s.value, "previous": before}));
        state.uptime.insert(key, s.value);
    }
    if uptime_data.is_empty() {
        details.push(format!("no {UPTIME}: restarts cannot be seen"));
    }

    // Pending, per pool.
    let mut pending_data = vec![];
    for s in page.named(PENDING) {
        let key = s.series();
        let pool = s.label("pool").unwrap_or("(no pool label)").to_owned();
        if s.value > 0.0 {
            // After a restart, threads waiting now are not the ones that waited before.
            let since = prev
                .filter(|_| !restarted)
                .and_then(|p| p.pending_since.get(&key))
                .copied()
                .unwrap_or(now);
            let for_s = (now - since).max(0.0);
            state.pending_since.insert(key.clone(), since);
            if for_s >= th.pending_for.as_secs_f64() {
                alerts.push(format!(
                    "pool {pool}: {} threads waiting for a connection for {for_s:.0}s (>= {})",
                    s.value,
                    crate::util::duration::fmt_duration(th.pending_for)
                ));
            } else {
                details.push(format!(
                    "pool {pool}: {} threads pending, for {for_s:.0}s so far (alert at {})",
                    s.value,
                    crate::util::duration::fmt_duration(th.pending_for)
                ));
            }
            pending_data.push(json!({"pool": pool, "pending": s.value, "for_s": for_s}));
        } else {
            pending_data.push(json!({"pool": pool, "pending": s.value, "for_s": null}));
        }
    }
    if pending_data.is_empty() {
        details.push(format!("no {PENDING}: no HikariCP pool exposed"));
    }

    // Timeouts, per pool: any increase since the previous scrape.
    let mut timeout_data = vec![];
    for name in TIMEOUTS {
        for s in page.named(name) {
            let key = s.series();
            let pool = s.label("pool").unwrap_or("(no pool label)").to_owned();
            // A series new since the previous scrape, or any after a restart, counted from 0.
            let before = prev.map(|p| {
                if restarted {
                    0.0
                } else {
                    p.counters.get(&key).copied().unwrap_or(0.0)
                }
            });
            let increase = before.map(|b| if s.value < b { s.value } else { s.value - b });
            if let Some(inc) = increase
                && inc > 0.0
            {
                alerts.push(format!(
                    "pool {pool}: {inc} connection timeouts since the previous scrape (total {})",
                    s.value
                ));
            }
            timeout_data.push(
                json!({"pool": pool, "total": s.value, "previous": before, "increase": increase}),
            );
            state.counters.insert(key, s.value);
        }
    }
    if timeout_data.is_empty() {
        details.push(format!(
            "no {} (nor {}): connection timeouts cannot be seen",
            TIMEOUTS[0], TIMEOUTS[1]
        ));
    }

    // Slowest request, per series.
    let mut slow = vec![];
    let mut slowest: Option<f64> = None;
    let mut n_req = 0;
    for s in page.named(REQUEST_MAX) {
        n_req += 1;
        if !s.value.is_nan() {
            slowest = Some(slowest.map_or(s.value, |m: f64| m.max(s.value)));
        }
        if s.value > th.max_request_s {
            let method = s.label("method").unwrap_or("?");
            let uri = s.label("uri").unwrap_or("?");
            let status = s
                .label("status")
                .map(|st| format!(" ({st})"))
                .unwrap_or_default();
            slow.push((
                s.value,
                format!("{method} {uri}{status} {}", secs(s.value)),
                json!({"series": s.series(), "method": method, "uri": uri, "seconds": s.value}),
            ));
        }
    }
    slow.sort_by(|a, b| b.0.total_cmp(&a.0));
    if !slow.is_empty() {
        let names: Vec<&str> = slow.iter().map(|(_, n, _)| n.as_str()).collect();
        alerts.push(format!(
            "requests slower than {}s: {}",
            th.max_request_s,
            names.join(", ")
        ));
    }
    if n_req == 0 {
        details.push(format!(
            "no {REQUEST_MAX}: no HTTP request timings (none served yet?)"
        ));
    }

    // Heap: summed over the heap pools.
    let heap_used: Vec<f64> = page
        .named(HEAP_USED)
        .filter(|s| s.label("area") == Some("heap"))
        .map(|s| s.value)
        .collect();
    let heap_max: Vec<f64> = page
        .named(HEAP_MAX)
        .filter(|s| s.label("area") == Some("heap"))
        .map(|s| s.value)
        .filter(|v| *v > 0.0)
        .collect();
    let mut heap_pct = None;
    if heap_used.is_empty() {
        details.push(format!(
            "no {HEAP_USED}{{area=\"heap\"}}: heap use cannot be seen"
        ));
    } else if heap_max.is_empty() {
        details.push(format!(
            "no defined {HEAP_MAX}{{area=\"heap\"}} (all ≤ 0): the heap has no limit to judge against"
        ));
    } else {
        let used: f64 = heap_used.iter().sum();
        let max: f64 = heap_max.iter().sum();
        let pct = 100.0 * used / max;
        heap_pct = Some(pct);
        let mib = |b: f64| b / (1u64 << 20) as f64;
        let line = format!(
            "heap {:.0} of {:.0} MiB ({pct:.1}%, threshold {}%)",
            mib(used),
            mib(max),
            th.max_heap_pct
        );
        if pct > th.max_heap_pct {
            alerts.push(line);
        } else {
            details.push(line);
        }
    }

    let data = json!({
        "first_scrape": first,
        "samples": page.samples.len(),
        "pending": pending_data,
        "timeouts": timeout_data,
        "slowest_request_s": slowest,
        "slow_requests": slow.iter().map(|(_, _, j)| j.clone()).collect::<Vec<_>>(),
        "heap_pct": heap_pct,
        "uptime": uptime_data,
        "alerts": alerts,
        "thresholds": {
            "pending_for_s": th.pending_for.as_secs_f64(),
            "max_request_s": th.max_request_s,
            "max_heap_pct": th.max_heap_pct,
        },
    });
    let report = if alerts.is_empty() {
        let mut parts = vec![format!("{} samples", page.samples.len())];
        if let Some(p) = heap_pct {
            parts.push(format!("heap {p:.1}%"));
        }
        if let Some(m) = slowest {
            parts.push(format!("slowest request {}", secs(m)));
        }
        if !state.pending_since.is_empty() {
            parts.push(format!(
                "{} pool(s) with threads pending, not yet for {}",
                state.pending_since.len(),
                crate::util::duration::fmt_duration(th.pending_for)
            ));
        } else if !pending_data.is_empty() {
            parts.push("no threads waiting for a connection".into());
        }
        if first {
            parts.push("first scrape".into());
        }
        Report::ok(parts.join(", "))
    } else {
        Report::alert(alerts.join("; "))
    };
    (report.details(details).data(data), state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn th() -> Thresholds {
        Thresholds {
            pending_for: Duration::from_secs(30),
            max_request_s: 30.0,
            max_heap_pct: 85.0,
        }
    }

    fn page(pending: f64, timeouts: f64, uptime: f64) -> Exposition {
        exposition::parse(&format!(
            "hikaricp_connections_pending{{pool=\"HikariPool-1\",}} {pending}\n\
             hikaricp_connections_timeout_total{{pool=\"HikariPool-1\",}} {timeouts}\n\
             jvm_memory_used_bytes{{area=\"heap\",id=\"G1 Eden Space\",}} 1.0E9\n\
             jvm_memory_used_bytes{{area=\"heap\",id=\"G1 Old Gen\",}} 1.0E9\n\
             jvm_memory_max_bytes{{area=\"heap\",id=\"G1 Eden Space\",}} -1.0\n\
             jvm_memory_max_bytes{{area=\"heap\",id=\"G1 Old Gen\",}} 4.0E9\n\
             http_server_requests_seconds_max{{method=\"GET\",uri=\"/fhir/Patient\",}} 0.5\n\
             process_uptime_seconds {uptime}\n"
        ))
        .unwrap()
    }

    #[test]
    fn first_scrape_then_increases_resets_and_pending() {
        let (r, s1) = judge(&page(0.0, 2.0, 100.0), None, 1000.0, &th());
        assert_eq!(r.status, Status::Ok, "{r:?}");
        assert!(r.details[0].starts_with("first scrape"), "{r:?}");
        assert!(
            r.details
                .iter()
                .any(|d| d.contains("heap 1907 of 3815 MiB (50.0%"))
        );
        let (r, s2) = judge(&page(0.0, 2.0, 160.0), Some(&s1), 1060.0, &th());
        assert_eq!(r.status, Status::Ok, "{r:?}");
        let (r, _) = judge(&page(0.0, 5.0, 220.0), Some(&s2), 1120.0, &th());
        assert_eq!(r.status, Status::Alert);
        assert!(
            r.summary
                .contains("pool HikariPool-1: 3 connection timeouts"),
            "{}",
            r.summary
        );
        // Restart: the counter restarted from 0; its value is the increase.
        let (r, _) = judge(&page(0.0, 1.0, 5.0), Some(&s2), 1120.0, &th());
        assert!(
            r.summary
                .contains("container restarted (uptime 5s, was 160s"),
            "{}",
            r.summary
        );
        assert!(r.summary.contains("1 connection timeouts"), "{}", r.summary);
        let (r, _) = judge(&page(0.0, 4.0, 5.0), Some(&s2), 1120.0, &th());
        assert!(r.summary.contains("4 connection timeouts"), "{}", r.summary);
        // Pending: carried since it was first seen.
        let (r, p1) = judge(&page(4.0, 2.0, 220.0), Some(&s2), 1120.0, &th());
        assert_eq!(r.status, Status::Ok);
        let (r, p2) = judge(&page(1.0, 2.0, 240.0), Some(&p1), 1140.0, &th());
        assert_eq!(r.status, Status::Ok);
        assert_eq!(p2.pending_since.values().next(), Some(&1120.0));
        let (r, _) = judge(&page(1.0, 2.0, 251.0), Some(&p2), 1151.0, &th());
        assert!(
            r.summary
                .contains("1 threads waiting for a connection for 31s"),
            "{}",
            r.summary
        );
        // Back to 0 forgets it.
        let (_, p3) = judge(&page(0.0, 2.0, 260.0), Some(&p2), 1160.0, &th());
        assert!(p3.pending_since.is_empty());
    }

    #[test]
    fn urls() {
        assert_eq!(
            derive_url("http://hapi:8080/fhir").unwrap(),
            "http://hapi:8080/actuator/prometheus"
        );
        assert_eq!(
            derive_url("https://x.example/api/fhir/").unwrap(),
            "https://x.example/api/actuator/prometheus"
        );
        assert_eq!(
            derive_url("http://hapi:8080").unwrap(),
            "http://hapi:8080/actuator/prometheus"
        );
        assert!(derive_url("http://hapi:8080/baseR4").is_err());
        assert!(derive_url("http://hapi:8080/notfhir").is_err());
        let a = state_path(std::path::Path::new("/s"), "http://a/actuator/prometheus");
        assert!(a.to_str().unwrap().starts_with("/s/checks/prometheus-"));
        assert_ne!(
            a,
            state_path(std::path::Path::new("/s"), "http://b/actuator/prometheus")
        );
    }
}
