//! A Unix-socket proxy in front of the Docker engine, for killing ferry right before its
//! n-th Docker API request (the way the reproductions did): the request is read,
//! ferry is SIGKILLed, and the request never reaches the engine. It sees every request of
//! the process, whichever code sends it, so new calls in ferry are swept without a change
//! here.
//!
//! Counting: a request identical (method and path) to the one just before it is not
//! counted again. Those are the health gate's polls; killing at the 1st or the 9th poll
//! leaves the same state (the clone starting, or healthy, which the first request after
//! the gate also sees), and collapsing them makes "the n-th request" the same call in every
//! run, whatever the timing.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Shared {
    /// Kill before the request with this count (0: never).
    kill_at: AtomicUsize,
    pid: AtomicU32,
    /// Every counted request, "METHOD /path?query" without the API version.
    trace: Mutex<Vec<String>>,
}

pub struct Proxy {
    pub sock: PathBuf,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Listens on `sock`, forwarding to `upstream` (the engine's socket).
    pub fn start(sock: &Path, upstream: &Path) -> Proxy {
        let listener = UnixListener::bind(sock).expect("bind the proxy socket");
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let upstream = upstream.to_path_buf();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let (s, upstream) = (s.clone(), upstream.clone());
                std::thread::spawn(move || serve(client, &upstream, &s));
            }
        });
        Proxy {
            sock: sock.to_path_buf(),
            shared,
        }
    }

    /// `DOCKER_HOST` for ferry.
    pub fn host(&self) -> String {
        format!("unix://{}", self.sock.display())
    }

    /// Arms the next run: kill process `pid` before the `n`-th request (0: never), counting
    /// from a fresh trace.
    pub fn arm(&self, n: usize) {
        self.shared.pid.store(0, Ordering::SeqCst);
        self.shared.trace.lock().unwrap().clear();
        self.shared.kill_at.store(n, Ordering::SeqCst);
    }

    pub fn target(&self, pid: u32) {
        self.shared.pid.store(pid, Ordering::SeqCst);
    }

    pub fn trace(&self) -> Vec<String> {
        self.shared.trace.lock().unwrap().clone()
    }
}

fn serve(client: UnixStream, upstream: &Path, s: &Shared) {
    let Ok(mut up) = UnixStream::connect(upstream) else {
        return;
    };
    let (Ok(mut down), Ok(mut up_read)) = (client.try_clone(), up.try_clone()) else {
        return;
    };
    let back = std::thread::spawn(move || {
        let _ = std::io::copy(&mut up_read, &mut down);
        let _ = down.shutdown(std::net::Shutdown::Write);
    });
    let mut r = BufReader::new(client);
    while let Some(head) = read_head(&mut r) {
        let line = head.lines().next().unwrap_or_default();
        let mut parts = line.split(' ');
        let (method, path) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or("").to_owned(),
        );
        let path = match path.strip_prefix("/v1.") {
            Some(rest) => rest
                .split_once('/')
                .map_or(path.clone(), |(_, p)| format!("/{p}")),
            None => path,
        };
        let key = format!("{method} {path}");
        let n = {
            let mut t = s.trace.lock().unwrap();
            if t.last() != Some(&key) {
                t.push(key);
            }
            t.len()
        };
        if n == s.kill_at.load(Ordering::SeqCst) {
            kill(s);
            let _ = r.get_ref().shutdown(std::net::Shutdown::Both);
            break;
        }
        if up.write_all(head.as_bytes()).is_err() || !copy_body(&head, &mut r, &mut up) {
            break;
        }
    }
    let _ = up.shutdown(std::net::Shutdown::Write);
    let _ = back.join();
}

/// SIGKILLs the armed process and waits until it is gone (before anything is forwarded).
fn kill(s: &Shared) {
    let t0 = Instant::now();
    let mut pid = s.pid.load(Ordering::SeqCst);
    while pid == 0 && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(1));
        pid = s.pid.load(Ordering::SeqCst);
    }
    assert_ne!(pid, 0, "the proxy was armed but told no pid");
    // SAFETY: signalling the ferry the test spawned.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

/// The request line and headers, through the blank line; None at the end of the stream.
fn read_head(r: &mut BufReader<UnixStream>) -> Option<String> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        head.push_str(&line);
        if line == "\r\n" || line == "\n" {
            return Some(head);
        }
    }
}

/// Forwards the request body: `Content-Length` bytes, or chunks to the last one.
fn copy_body(head: &str, r: &mut BufReader<UnixStream>, up: &mut UnixStream) -> bool {
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    if let Some(len) = header("content-length").and_then(|v| v.parse::<u64>().ok()) {
        return std::io::copy(&mut r.by_ref().take(len), up).is_ok_and(|n| n == len);
    }
    if !header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        return true;
    }
    loop {
        let mut size = String::new();
        if r.read_line(&mut size).unwrap_or(0) == 0 || up.write_all(size.as_bytes()).is_err() {
            return false;
        }
        let n = u64::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16).unwrap_or(0);
        // The chunk and its CRLF (for the last chunk: the empty trailer line).
        if std::io::copy(&mut r.by_ref().take(n + 2), up).is_err() {
            return false;
        }
        if n == 0 {
            return true;
        }
    }
}
