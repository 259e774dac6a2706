//! `ferry check prometheus` through the binary, against a tiny HTTP server in the test
//! process that serves a Spring Boot style `/actuator/prometheus` page the test changes
//! between scrapes.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::harness::{Sandbox, free_port};

/// At most this many requests and this long; then the server stops by itself.
const MAX_REQUESTS: usize = 20;
const LIFETIME: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Shared {
    status: u16,
    body: String,
    /// Request lines and Accept headers seen, in order.
    requests: Vec<(String, String)>,
}

pub struct Server {
    port: u16,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start(body: &str) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Mutex::new(Shared {
            status: 200,
            body: body.into(),
            requests: vec![],
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (sh, st) = (shared.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut served = 0;
            while served < MAX_REQUESTS
                && started.elapsed() < LIFETIME
                && !st.load(Ordering::SeqCst)
            {
                match listener.accept() {
                    Ok((conn, _)) => {
                        served += 1;
                        let _ = serve(conn, &sh);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    Err(_) => break,
                }
            }
        });
        Server {
            port,
            shared,
            stop,
            thread: Some(thread),
        }
    }

    fn set(&self, body: &str) {
        let mut s = self.shared.lock().unwrap();
        s.status = 200;
        s.body = body.into();
    }

    fn fail(&self, status: u16) {
        self.shared.lock().unwrap().status = status;
    }

    fn requests(&self) -> Vec<(String, String)> {
        self.shared.lock().unwrap().requests.clone()
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/fhir", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One request: only `GET /actuator/prometheus` is there (so a wrongly derived URL is a
/// 404); the response closes the connection.
fn serve(conn: TcpStream, shared: &Mutex<Shared>) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut accept = String::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("accept")
        {
            accept = v.trim().to_owned();
        }
    }
    let (status, body) = {
        let mut s = shared.lock().unwrap();
        s.requests
            .push((request_line.trim_end().to_owned(), accept.clone()));
        if request_line.starts_with("GET /actuator/prometheus ") {
            (s.status, s.body.clone())
        } else {
            (404, "not here\n".to_owned())
        }
    };
    let mut w = conn;
    write!(
        w,
        "HTTP/1.1 {status} X\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    w.flush()
}

/// The metrics a page is made of; `page()` writes them as Spring Boot 3 does.
#[derive(Clone)]
pub struct M {
    pending: f64,
    timeouts: f64,
    uptime: f64,
    slow_validate_s: f64,
    heap_old_used: f64,
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

impl Default for M {
    fn default() -> Self {
        M {
            pending: 0.0,
            timeouts: 2.0,
            uptime: 5000.4,
            slow_validate_s: 2.5,
            heap_old_used: 1.0 * GIB,
        }
    }
}

pub fn page(m: &M) -> String {
    format!(
        r#"# HELP hikaricp_connections_pending Pending threads
# TYPE hikaricp_connections_pending gauge
hikaricp_connections_pending{{pool="HikariPool-1",}} {pending:?}
# HELP hikaricp_connections_timeout_total Connection timeout total count
# TYPE hikaricp_connections_timeout_total counter
hikaricp_connections_timeout_total{{pool="HikariPool-1",}} {timeouts:?}
# HELP http_server_requests_seconds_max  
# TYPE http_server_requests_seconds_max gauge
http_server_requests_seconds_max{{error="none",exception="none",method="GET",outcome="SUCCESS",status="200",uri="/fhir/Patient",}} 0.412
http_server_requests_seconds_max{{error="none",exception="none",method="POST",outcome="SUCCESS",status="200",uri="/fhir/$validate",}} {slow:?}
http_server_requests_seconds_max{{error="none",exception="none",method="GET",outcome="CLIENT_ERROR",status="404",uri="NOT_FOUND",}} NaN
# HELP http_server_requests_seconds  
# TYPE http_server_requests_seconds histogram
http_server_requests_seconds_bucket{{method="GET",uri="/fhir/Patient",le="+Inf",}} 120.0
# HELP jvm_memory_used_bytes The amount of used memory
# TYPE jvm_memory_used_bytes gauge
jvm_memory_used_bytes{{area="heap",id="G1 Survivor Space",}} 8388608.0
jvm_memory_used_bytes{{area="heap",id="G1 Old Gen",}} {old:E}
jvm_memory_used_bytes{{area="heap",id="G1 Eden Space",}} 1.2582912E8
jvm_memory_used_bytes{{area="nonheap",id="Metaspace",}} 2.0E8
# HELP jvm_memory_max_bytes The maximum amount of memory in bytes that can be used for memory management
# TYPE jvm_memory_max_bytes gauge
jvm_memory_max_bytes{{area="heap",id="G1 Survivor Space",}} -1.0
jvm_memory_max_bytes{{area="heap",id="G1 Old Gen",}} 4.294967296E9
jvm_memory_max_bytes{{area="heap",id="G1 Eden Space",}} -1.0
jvm_memory_max_bytes{{area="nonheap",id="Metaspace",}} -1.0
# HELP logback_events_total Number of log events
# TYPE logback_events_total counter
logback_events_total{{level="warn",message="say \"hi\"\nC:\\tmp",}} 3.0 1712345678901
# HELP process_uptime_seconds The uptime of the Java virtual machine
# TYPE process_uptime_seconds gauge
process_uptime_seconds {uptime:?}
"#,
        pending = m.pending,
        timeouts = m.timeouts,
        slow = m.slow_validate_s,
        old = m.heap_old_used,
        uptime = m.uptime,
    )
}

fn setup(m: &M) -> (Server, Sandbox) {
    let srv = Server::start(&page(m));
    let sb = Sandbox::new();
    sb.write(
        "t.toml",
        &format!("name = \"t\"\n[fhir]\nbase_url = \"{}\"\n", srv.base_url()),
    );
    (srv, sb)
}

fn check(sb: &Sandbox, extra: &[&str]) -> crate::harness::Out {
    let mut args = vec!["check", "prometheus", "--target", "t.toml"];
    args.extend_from_slice(extra);
    sb.run(&args)
}

#[test]
fn ok_path_scrapes_the_derived_url_and_keeps_state() {
    let (srv, sb) = setup(&M::default());
    let out = check(&sb, &["-v"]);
    out.expect(0);
    assert!(out.stdout.starts_with("OK: "), "{}", out.stdout);
    assert!(out.stdout.contains("first scrape"), "{}", out.stdout);
    assert!(out.stdout.contains("heap 28.1%"), "{}", out.stdout);
    let reqs = srv.requests();
    assert_eq!(reqs[0].0, "GET /actuator/prometheus HTTP/1.1");
    assert!(
        reqs[0].1.starts_with("text/plain;version=0.0.4"),
        "{reqs:?}"
    );

    let files: Vec<_> = std::fs::read_dir(sb.state.join("checks"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().into_string().unwrap())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(
        files[0].starts_with("prometheus-") && files[0].ends_with(".json"),
        "{files:?}"
    );
    let state: serde_json::Value =
        serde_json::from_str(&sb.read(&format!(".ferry/checks/{}", files[0]))).unwrap();
    assert_eq!(
        state["url"],
        format!("http://127.0.0.1:{}/actuator/prometheus", srv.port)
    );
    assert!(state["scraped_at"].as_f64().unwrap() > 1.7e9);
    assert_eq!(
        state["counters"]["hikaricp_connections_timeout_total{pool=\"HikariPool-1\"}"],
        2.0
    );
    assert_eq!(state["uptime"]["process_uptime_seconds"], 5000.4);

    // Second scrape: uptime grew, counters unchanged, still OK, no longer "first".
    srv.set(&page(&M {
        uptime: 5060.0,
        ..M::default()
    }));
    let out = check(&sb, &["-v"]);
    out.expect(0);
    assert!(!out.stdout.contains("first scrape"), "{}", out.stdout);
    assert!(out.stdout.contains("previous scrape"), "{}", out.stdout);
}

#[test]
fn a_timeout_increment_between_scrapes_alerts() {
    let (srv, sb) = setup(&M::default());
    check(&sb, &[]).expect(0);
    srv.set(&page(&M {
        timeouts: 5.0,
        uptime: 5030.0,
        ..M::default()
    }));
    let out = check(&sb, &[]);
    out.expect(1);
    assert!(
        out.stdout.starts_with(
            "ALERT: pool HikariPool-1: 3 connection timeouts since the previous scrape (total 5)"
        ),
        "{}",
        out.stdout
    );
    // The state moved on: the same total again is quiet.
    srv.set(&page(&M {
        timeouts: 5.0,
        uptime: 5040.0,
        ..M::default()
    }));
    check(&sb, &[]).expect(0);
}

#[test]
fn an_uptime_reset_alerts_container_restarted() {
    let (srv, sb) = setup(&M::default());
    check(&sb, &[]).expect(0);
    srv.set(&page(&M {
        uptime: 12.5,
        timeouts: 0.0,
        ..M::default()
    }));
    let out = check(&sb, &[]);
    out.expect(1);
    assert!(
        out.stdout
            .contains("container restarted (uptime 12.5s, was 5000.4s at the previous scrape)"),
        "{}",
        out.stdout
    );
    // The counter went back to 0 with the restart: not a timeout.
    assert!(
        !out.stdout.contains("connection timeouts"),
        "{}",
        out.stdout
    );
}

#[test]
fn slow_requests_alert_naming_the_series() {
    let (_srv, sb) = setup(&M {
        slow_validate_s: 41.5,
        ..M::default()
    });
    let out = check(&sb, &[]);
    out.expect(1);
    assert!(
        out.stdout
            .starts_with("ALERT: requests slower than 30s: POST /fhir/$validate (200) 41.5s"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("/fhir/Patient"), "{}", out.stdout);
    // The threshold is a setting.
    check(&sb, &["--set", "max_request_s=60"]).expect(0);
}

#[test]
fn heap_above_85_percent_alerts() {
    let (_srv, sb) = setup(&M {
        heap_old_used: 3.7 * GIB,
        ..M::default()
    });
    let out = check(&sb, &[]);
    out.expect(1);
    // (3.7 GiB + 8 MiB + 120 MiB) of 4 GiB; Eden's and Survivor's max of -1 are skipped.
    assert!(
        out.stdout
            .starts_with("ALERT: heap 3917 of 4096 MiB (95.6%, threshold 85%)"),
        "{}",
        out.stdout
    );
    check(&sb, &["--set", "max_heap_pct=97"]).expect(0);
}

#[test]
fn pending_longer_than_pending_for_alerts() {
    let (srv, sb) = setup(&M {
        pending: 3.0,
        ..M::default()
    });
    let out = check(&sb, &["--set", "pending_for=1s", "-v"]);
    out.expect(0);
    assert!(
        out.stdout
            .contains("1 pool(s) with threads pending, not yet for 1s"),
        "{}",
        out.stdout
    );
    std::thread::sleep(Duration::from_millis(1300));
    srv.set(&page(&M {
        pending: 2.0,
        uptime: 5001.6,
        ..M::default()
    }));
    let out = check(&sb, &["--set", "pending_for=1s"]);
    out.expect(1);
    // "for Ns": at least the 1.3 s slept, more when the machine is busy.
    let line = out.stdout.lines().next().unwrap_or_default();
    let waited = line
        .strip_prefix("ALERT: pool HikariPool-1: 2 threads waiting for a connection for ")
        .and_then(|rest| rest.strip_suffix("s (>= 1s)"))
        .and_then(|n| n.parse::<u64>().ok());
    assert!(waited.is_some_and(|n| n >= 1), "{}", out.stdout);
    // Pending gone: forgotten, OK again.
    srv.set(&page(&M {
        uptime: 5002.0,
        ..M::default()
    }));
    check(&sb, &["--set", "pending_for=1s"]).expect(0);
}

#[test]
fn several_alerts_are_all_named_in_the_summary() {
    let (srv, sb) = setup(&M::default());
    check(&sb, &[]).expect(0);
    srv.set(&page(&M {
        uptime: 3.0,
        timeouts: 1.0,
        slow_validate_s: 31.0,
        heap_old_used: 3.7 * GIB,
        ..M::default()
    }));
    let out = check(&sb, &[]);
    out.expect(1);
    let line = out.stdout.lines().next().unwrap();
    for want in [
        "container restarted",
        "1 connection timeouts",
        "POST /fhir/$validate",
        "heap ",
    ] {
        assert!(line.contains(want), "{want}: {line}");
    }
}

#[test]
fn malformed_page_http_500_and_closed_port_are_unknown() {
    let (srv, sb) = setup(&M::default());
    srv.set("# TYPE up gauge\nup 1\nhikaricp_connections_pending{pool=\"HikariPool-1\" 0.0\n");
    let out = check(&sb, &[]);
    out.expect(3);
    assert!(
        out.stdout.starts_with("UNKNOWN: prometheus: "),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("not a metrics page: line 3:"),
        "{}",
        out.stdout
    );
    // A failed look leaves no state behind.
    assert!(!sb.state.join("checks").exists());

    srv.fail(500);
    let out = check(&sb, &[]);
    out.expect(3);
    assert!(out.stdout.contains("HTTP 500"), "{}", out.stdout);

    let port = free_port();
    let out = check(
        &sb,
        &[
            "--set",
            &format!("url=http://127.0.0.1:{port}/actuator/prometheus"),
        ],
    );
    out.expect(3);
    assert!(
        out.stdout.starts_with("UNKNOWN: prometheus: GET "),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.to_lowercase().contains("connect"),
        "{}",
        out.stdout
    );
}

#[test]
fn a_base_url_without_fhir_and_no_url_setting_is_unknown() {
    let sb = Sandbox::new();
    sb.write(
        "t.toml",
        "name = \"t\"\n[fhir]\nbase_url = \"http://127.0.0.1:9/baseR4\"\n",
    );
    let out = check(&sb, &[]);
    out.expect(3);
    assert!(out.stdout.contains("set `url`"), "{}", out.stdout);
}

#[test]
fn json_format_fields() {
    let (_srv, sb) = setup(&M {
        slow_validate_s: 45.0,
        ..M::default()
    });
    let out = check(&sb, &["--format", "json"]);
    out.expect(1);
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect(&out.stdout);
    assert_eq!(v["check"], "prometheus");
    assert_eq!(v["status"], "alert");
    assert!(
        v["summary"]
            .as_str()
            .unwrap()
            .contains("POST /fhir/$validate")
    );
    assert!(
        v["details"][0]
            .as_str()
            .unwrap()
            .starts_with("first scrape")
    );
    let d = &v["data"];
    assert_eq!(d["first_scrape"], true);
    assert!(d["url"].as_str().unwrap().ends_with("/actuator/prometheus"));
    assert_eq!(d["slowest_request_s"], 45.0);
    assert_eq!(d["slow_requests"][0]["seconds"], 45.0);
    assert_eq!(d["slow_requests"][0]["method"], "POST");
    assert_eq!(d["slow_requests"][0]["uri"], "/fhir/$validate");
    assert_eq!(d["pending"][0]["pool"], "HikariPool-1");
    assert_eq!(d["timeouts"][0]["total"], 2.0);
    assert!(d["timeouts"][0]["increase"].is_null());
    assert!(
        (d["heap_pct"].as_f64().unwrap() - 28.125).abs() < 0.001,
        "{d}"
    );
    assert_eq!(d["uptime"][0]["seconds"], 5000.4);
    assert_eq!(d["thresholds"]["max_request_s"], 30.0);
    assert_eq!(d["alerts"].as_array().unwrap().len(), 1);
    assert!(d["state_file"].as_str().unwrap().contains("prometheus-"));
}

#[test]
fn check_step_in_a_playbook_expects_alert() {
    let (_srv, sb) = setup(&M {
        heap_old_used: 3.7 * GIB,
        ..M::default()
    });
    let pb = |expect: &str| {
        format!(
            "name = \"heap\"\n[[steps]]\nid = \"heap-high\"\nkind = \"check\"\nname = \"prometheus\"\nexpect = \"{expect}\"\nmax_heap_pct = 90\n"
        )
    };
    sb.write("alert.toml", &pb("alert"));
    sb.write("ok.toml", &pb("ok"));
    sb.run(&["validate", "alert.toml", "--target", "t.toml"])
        .expect(0);
    let out = sb.run(&["run", "alert.toml", "--target", "t.toml"]);
    out.expect(0);
    let out = sb.run(&["run", "ok.toml", "--target", "t.toml"]);
    assert_ne!(out.code, Some(0), "{out:?}");
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(all.contains("ALERT: heap"), "{all}");
    assert!(all.contains("(expected OK)"), "{all}");
    // A threshold the check does not take is a validation error.
    sb.write(
        "bad.toml",
        "name = \"b\"\n[[steps]]\nid = \"x\"\nkind = \"check\"\nname = \"prometheus\"\nmax_pct = 5\n",
    );
    let out = sb.run(&["validate", "bad.toml", "--target", "t.toml"]);
    out.expect(2);
    assert!(out.stderr.contains("has no setting `max_pct`"), "{out:?}");
}

#[test]
fn unreadable_state_starts_over_and_unsavable_state_is_unknown() {
    let (_srv, sb) = setup(&M::default());
    check(&sb, &[]).expect(0);
    let dir = sb.state.join("checks");
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(&file, "{not json").unwrap();
    let out = check(&sb, &["-v"]);
    out.expect(0);
    assert!(
        out.stdout.contains("is not a scrape state"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("first scrape"), "{}", out.stdout);
    // Rewritten: the next scrape compares again.
    let again = check(&sb, &["-v"]);
    again.expect(0);
    assert!(again.stdout.contains("previous scrape"), "{}", again.stdout);

    // Where the state directory cannot be made, an otherwise OK scrape is UNKNOWN: a check
    // that can never compare must not stay quietly green.
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::write(&dir, "in the way").unwrap();
    let out = check(&sb, &[]);
    out.expect(3);
    assert!(
        out.stdout
            .starts_with("UNKNOWN: cannot save the scrape state"),
        "{}",
        out.stdout
    );
}
