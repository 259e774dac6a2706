//! Child processes that cannot outlive ferry unnoticed.
//!
//! Each child runs `sh -c` in its own process group (so a timeout or a stop kills the whole
//! group, and a terminal's Ctrl-C reaches ferry alone) with a parent-death signal (so a
//! `kill -9` of ferry takes the shell with it). Grandchildren that escape the death signal
//! are found on resume through the journaled `(pid, start time)` and killed by group.
//!
//! The death signal fires when the *thread* that forked exits; ferry's runtime is
//! single-threaded and spawns from the main thread, which lives as long as the process.
//!
//! Output is untrusted bytes: it is decoded lossily (invalid UTF-8 becomes U+FFFD), a line is
//! at most [`MAX_LINE`] bytes (the rest of a longer one is skipped, never buffered, and a
//! marker says how much), and the tail kept for error messages is [`TAIL_LINES`] lines of at
//! most [`TAIL_LINE`] bytes per stream.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, anyhow};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::report::Stream;

pub struct Shell<'a> {
    pub command: &'a str,
    pub cwd: &'a Path,
    pub env: Vec<(String, String)>,
    pub timeout: Option<Duration>,
}

#[derive(Debug)]
pub struct Exit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// The last lines of stderr (or stdout when stderr was silent), for error messages.
    pub tail: Vec<String>,
}

impl Exit {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
    pub fn describe(&self) -> String {
        let how = match (self.code, self.signal) {
            (Some(c), _) => format!("exit code {c}"),
            (None, Some(s)) => format!("killed by signal {s}"),
            _ => "unknown status".into(),
        };
        match self.tail.last() {
            Some(l) => format!("{how}: {l}"),
            None => how,
        }
    }
}

/// Kills the whole group if the future running the child is dropped or times out.
struct GroupGuard(Option<i32>);
impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            // SAFETY: plain syscall; a negative pid addresses the process group.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
    }
}

/// Runs the command; `on_line` sees every output line; `on_spawn(pid, start_ticks)` is
/// called once the child exists (the journal records it).
pub async fn run(
    sh: &Shell<'_>,
    on_line: &mut dyn FnMut(Stream, String),
    on_spawn: &mut dyn FnMut(u32, u64),
) -> anyhow::Result<Exit> {
    let parent = std::process::id() as i32;
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(sh.command)
        .current_dir(sh.cwd)
        .envs(sh.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                libc::_exit(137);
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start /bin/sh -c {:?}", sh.command))?;
    let pid = child
        .id()
        .ok_or_else(|| anyhow!("child exited before it could be tracked"))?;
    let mut guard = GroupGuard(Some(pid as i32));
    on_spawn(pid, start_ticks(pid).unwrap_or(0));

    let mut out = Lines::new(child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?);
    let mut err = Lines::new(child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?);
    let mut tail_err: Vec<String> = vec![];
    let mut tail_out: Vec<String> = vec![];
    let (mut out_open, mut err_open) = (true, true);
    let deadline = sh.timeout.map(|t| tokio::time::Instant::now() + t);
    let sleep_until = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(sleep_until);
    let mut status = None;
    // Read both pipes until the child exits; then drain briefly, because a background
    // grandchild may hold the pipes open forever.
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    loop {
        let drain = async {
            match drain_deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            line = out.next_line(), if out_open => match line? {
                Some(l) => { push_tail(&mut tail_out, &l); on_line(Stream::Stdout, l) }
                None => out_open = false,
            },
            line = err.next_line(), if err_open => match line? {
                Some(l) => { push_tail(&mut tail_err, &l); on_line(Stream::Stderr, l) }
                None => err_open = false,
            },
            st = child.wait(), if status.is_none() => {
                status = Some(st?);
                drain_deadline = Some(tokio::time::Instant::now() + Duration::from_millis(300));
            }
            _ = &mut sleep_until, if status.is_none() => {
                // Dropping the guard kills the group; the child is then reaped by tokio.
                drop(guard);
                let _ = child.wait().await;
                return Err(anyhow!(
                    "timed out after {}: killed process group {pid}",
                    crate::util::duration::fmt_duration(sh.timeout.unwrap_or_default())
                ));
            }
            _ = drain => break,
        }
        if status.is_some() && !out_open && !err_open {
            break;
        }
    }
    guard.0 = None;
    let st = status.ok_or_else(|| anyhow!("child status lost"))?;
    let tail = if tail_err.is_empty() {
        tail_out
    } else {
        tail_err
    };
    Ok(Exit {
        code: st.code(),
        signal: st.signal(),
        tail,
    })
}

/// The longest output line passed on, in bytes; the rest of a longer line is dropped.
pub const MAX_LINE: usize = 64 * 1024;
/// The read buffer of each output stream. Small on purpose: it is allocated (and zeroed) for
/// every child, and a line longer than it is simply collected over several reads.
const READ_BUF: usize = 8 * 1024;
/// Lines per stream kept for error messages, and the bytes kept of each.
pub const TAIL_LINES: usize = 5;
pub const TAIL_LINE: usize = 4 * 1024;

fn push_tail(tail: &mut Vec<String>, line: &str) {
    if tail.len() == TAIL_LINES {
        tail.remove(0);
    }
    let mut end = line.len().min(TAIL_LINE);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    tail.push(line[..end].to_owned());
}

/// Output lines of a pipe: split on `\n` (a trailing `\r` dropped), decoded lossily, each at
/// most [`MAX_LINE`] bytes plus a marker naming how many bytes were cut. Memory stays bounded
/// whatever the child writes. `next_line` is cancel-safe (its state lives here, and it only
/// awaits in `fill_buf`), as `tokio::select!` needs.
struct Lines<R> {
    inner: BufReader<R>,
    buf: Vec<u8>,
    /// Bytes of the current line dropped past `MAX_LINE`.
    dropped: u64,
}

impl<R: AsyncRead + Unpin> Lines<R> {
    fn new(r: R) -> Self {
        Lines {
            inner: BufReader::with_capacity(READ_BUF, r),
            buf: Vec::new(),
            dropped: 0,
        }
    }

    async fn next_line(&mut self) -> std::io::Result<Option<String>> {
        loop {
            let avail = self.inner.fill_buf().await?;
            if avail.is_empty() {
                // EOF: a last line without a newline is still a line.
                if self.buf.is_empty() && self.dropped == 0 {
                    return Ok(None);
                }
                return Ok(Some(self.take()));
            }
            let (chunk, used, eol) = match avail.iter().position(|&b| b == b'\n') {
                Some(i) => (&avail[..i], i + 1, true),
                None => (avail, avail.len(), false),
            };
            let room = MAX_LINE - self.buf.len();
            let keep = chunk.len().min(room);
            self.buf.extend_from_slice(&chunk[..keep]);
            self.dropped += (chunk.len() - keep) as u64;
            self.inner.consume(used);
            if eol {
                return Ok(Some(self.take()));
            }
        }
    }

    fn take(&mut self) -> String {
        if self.dropped == 0 && self.buf.last() == Some(&b'\r') {
            self.buf.pop();
        }
        let mut line = String::from_utf8_lossy(&self.buf).into_owned();
        if self.dropped > 0 {
            line.push_str(&format!(
                " … [line truncated: {} more bytes not shown]",
                self.dropped
            ));
        }
        self.buf.clear();
        self.dropped = 0;
        line
    }
}

pub fn pid_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    unsafe {
        libc::kill(pid as i32, 0) == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
}

/// Field 22 of /proc/PID/stat: the start time in clock ticks since boot. Together with the
/// pid it names one process for good (pids are reused, start times with them are not).
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

fn pgrp_of(pid: u32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(2)?.parse().ok()
}

/// Kills what is left of a child group started by an earlier, killed ferry. Returns the
/// pids it killed. A group whose leader pid now belongs to a different process (other start
/// time) is not ours and is left alone; Linux does not reuse a pid while a group of that id
/// still has members, so members without a live leader are ours.
pub fn kill_leftover_group(pgid: u32, leader_ticks: u64) -> Vec<u32> {
    if let Some(t) = start_ticks(pgid)
        && leader_ticks != 0
        && t != leader_ticks
    {
        return vec![];
    }
    let members: Vec<u32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| pgrp_of(*p) == Some(pgid as i32))
        .collect();
    if !members.is_empty() {
        // SAFETY: signals our own leftover process group.
        unsafe { libc::kill(-(pgid as i32), libc::SIGKILL) };
    }
    members
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines_of(bytes: &[u8]) -> Vec<String> {
        let mut r = Lines::new(bytes);
        let mut out = vec![];
        while let Some(l) = r.next_line().await.unwrap() {
            out.push(l);
        }
        out
    }

    #[tokio::test(flavor = "current_thread")]
    async fn invalid_utf8_long_lines_and_crlf() {
        assert_eq!(
            lines_of(b"caf\xe9\nok\r\nlast").await,
            ["caf\u{fffd}", "ok", "last"]
        );
        let mut long = vec![b'x'; MAX_LINE + 10];
        long.extend_from_slice(b"\nnext\n");
        let got = lines_of(&long).await;
        assert_eq!(got.len(), 2);
        assert!(got[0].starts_with(&"x".repeat(MAX_LINE)));
        assert!(
            got[0].ends_with("[line truncated: 10 more bytes not shown]"),
            "{}",
            &got[0][MAX_LINE..]
        );
        assert_eq!(got[1], "next");
        let mut tail = vec![];
        push_tail(&mut tail, &got[0]);
        assert_eq!(tail[0].len(), TAIL_LINE);
    }
}
