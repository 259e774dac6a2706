//! The run journal: `<state-dir>/runs/<run-id>/journal.jsonl`, one JSON record per line.
//!
//! Invariants:
//! - Append-only; every record carries the format version `v`.
//! - Every record is written with write(2) at once, so it survives a `kill -9` of ferry.
//!   fdatasync (surviving the loss of the machine) is paid only where the next thing is an
//!   effect: before a step's apply or undo starts, for checkpoints, and at the end. A record
//!   written before a synced one is durable with it (same file, sequential writes).
//! - The file is preallocated in chunks so that a sync does not also have to flush a size
//!   change; readers stop where the trailing zeros of the preallocation begin. A torn last
//!   line (no newline after it) is ignored; anything else that does not parse, a NUL byte
//!   before the end of the data included, is corruption: `read` fails with [`Corrupt`].
//! - A new run directory is fsynced once its journal and playbook copy exist, and so is its
//!   parent (`runs/`), so that a power loss cannot keep a synced journal under a lost name.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use super::records::Record;

/// 2: every line carries `ts` (UTC, milliseconds) and the records `checked`, `retrying` and
/// `replicas` exist (what `ferry report` shows); version 1 journals are still read.
pub const FORMAT_VERSION: u32 = 2;
const CHUNK: u64 = 64 * 1024;
/// Room kept preallocated after each durable record (they precede effects), so that the
/// records that follow an effect (`step_done`, child records) never meet a full disk: when
/// it cannot be had, ferry stops before the effect rather than after it.
const RESERVE: u64 = 16 * 1024;

/// The journal could not be written, preallocated or synced (no space left on device, an
/// I/O error). Every record before the failing one is intact; the failing one was not
/// written (preallocation happens first) or is a torn last line.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}: {source}", path.display())]
pub struct WriteFailed {
    pub what: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

#[derive(Serialize, Deserialize)]
struct Line {
    v: u32,
    /// When the record was written (absent in format 1). `ts` as in the events; `at` is
    /// a field of `resumed` records.
    #[serde(default)]
    ts: Option<String>,
    #[serde(flatten)]
    rec: Record,
}

pub struct Journal {
    file: File,
    path: PathBuf,
    offset: u64,
    allocated: u64,
}

impl Journal {
    pub fn create(path: &Path) -> anyhow::Result<Journal> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| WriteFailed {
                what: "creating",
                path: path.into(),
                source,
            })?;
        let mut j = Journal {
            file,
            path: path.into(),
            offset: 0,
            allocated: 0,
        };
        j.grow(RESERVE)?;
        Ok(j)
    }

    fn failed(&self, what: &'static str, source: std::io::Error) -> WriteFailed {
        WriteFailed {
            what,
            path: self.path.clone(),
            source,
        }
    }

    /// Opens an existing journal for appending after its last complete record; a torn tail
    /// is zeroed so that the next record starts on a clean line.
    pub fn open(path: &Path) -> anyhow::Result<Journal> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let mut bytes = vec![];
        file.read_to_end(&mut bytes)?;
        let data_end = data_end(&bytes);
        let valid = bytes[..data_end]
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        if data_end > valid {
            let failed = |source| WriteFailed {
                what: "writing",
                path: path.into(),
                source,
            };
            file.write_all_at(&vec![0u8; data_end - valid], valid as u64)
                .map_err(failed)?;
            file.sync_data().map_err(failed)?;
        }
        Ok(Journal {
            file,
            path: path.into(),
            offset: valid as u64,
            allocated: bytes.len() as u64,
        })
    }

    /// Preallocates (really: blocks reserved, not a sparse size) until `need` more bytes fit.
    fn grow(&mut self, need: u64) -> Result<(), WriteFailed> {
        while self.offset + need > self.allocated {
            let new = self.allocated + CHUNK;
            // SAFETY: valid fd; posix_fallocate only extends the file with zeros.
            let rc = unsafe { libc::posix_fallocate(self.file.as_raw_fd(), 0, new as libc::off_t) };
            match rc {
                0 => {}
                // A file system that cannot preallocate at all (glibc emulates it where it
                // can): appending still works, only syncs cost more, and a full disk shows
                // on the write itself.
                libc::EOPNOTSUPP | libc::ENOSYS => self
                    .file
                    .set_len(new)
                    .map_err(|e| self.failed("preallocating", e))?,
                // No space (or another error): say so, never mask it with a sparse size.
                rc => {
                    return Err(self.failed("preallocating", std::io::Error::from_raw_os_error(rc)));
                }
            }
            self.allocated = new;
        }
        Ok(())
    }

    /// Writes a record (survives a kill of ferry, not yet a power loss).
    pub fn append(&mut self, rec: &Record) -> anyhow::Result<()> {
        self.append_reserving(rec, 0)
    }

    /// Writes a record once `reserve` more bytes are preallocated after it.
    fn append_reserving(&mut self, rec: &Record, reserve: u64) -> anyhow::Result<()> {
        // `{"v":2,"ts":"…",` + the record's own object without its `{`: the same line `Line`
        // reads, without serde's flatten (a map per record) on the hot path.
        let body = serde_json::to_vec(rec)?;
        let mut line = Vec::with_capacity(body.len() + 40);
        line.extend_from_slice(
            format!("{{\"v\":{FORMAT_VERSION},\"ts\":\"{}\",", now_ms()).as_bytes(),
        );
        line.extend_from_slice(body.get(1..).unwrap_or_default());
        line.push(b'\n');
        self.grow(line.len() as u64 + reserve)?;
        self.file
            .write_all_at(&line, self.offset)
            .map_err(|e| self.failed("writing", e))?;
        self.offset += line.len() as u64;
        Ok(())
    }

    /// Writes a record and makes it, and everything before it, durable. An effect follows a
    /// durable record, so room for the records after it is preallocated first ([`RESERVE`]);
    /// the last record of a run needs none.
    pub fn append_durable(&mut self, rec: &Record) -> anyhow::Result<()> {
        let reserve = match rec {
            Record::RunFinished { .. } => 0,
            _ => RESERVE,
        };
        self.append_reserving(rec, reserve)?;
        self.sync()
    }

    pub fn sync(&mut self) -> anyhow::Result<()> {
        self.file
            .sync_data()
            .map_err(|e| self.failed("syncing", e).into())
    }
}

/// Now in UTC to the millisecond (`2026-01-01T00:00:00.000Z`): the `ts` of every record.
pub fn now_ms() -> String {
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::now_utc()
        .format(&fmt)
        .unwrap_or_default()
}

/// fsyncs a directory, making the entries created in it durable (a new file's data is synced
/// through the file; its name only through its directory).
pub fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

/// Where the data ends: the preallocation's zeros follow it. A NUL byte before that point is
/// not the end of the data but corruption, which the line parser then reports.
fn data_end(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1)
}

/// A journal that cannot be trusted: a line other than a torn last one does not parse (or
/// holds a NUL byte). The records before it are in `valid`; the run must not be resumed or
/// rolled back from them, since what followed is unknown.
#[derive(Debug, thiserror::Error)]
#[error("{} is corrupt at line {line}: {reason}", path.display())]
pub struct Corrupt {
    pub path: PathBuf,
    pub line: usize,
    pub reason: String,
    pub valid: Vec<Record>,
    /// When each of `valid` was written (None in format 1), in the same order.
    pub valid_at: Vec<Option<String>>,
}

/// A record and when it was written (None in format 1 journals).
#[derive(Debug, Clone)]
pub struct Entry {
    pub at: Option<String>,
    pub rec: Record,
}

/// Reads every complete record. A line that does not parse is tolerated only as the last
/// one without its newline (a torn write); anywhere else the journal is corrupt and that is
/// a [`Corrupt`] error (downcast it to tell it from an I/O error).
pub fn read(path: &Path) -> anyhow::Result<Vec<Record>> {
    Ok(read_entries(path)?.into_iter().map(|e| e.rec).collect())
}

/// [`read`], with each record's time.
pub fn read_entries(path: &Path) -> anyhow::Result<Vec<Entry>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let end = data_end(&bytes);
    let text = String::from_utf8_lossy(&bytes[..end]);
    let lines: Vec<&str> = text.split('\n').collect();
    let mut out = vec![];
    for (i, l) in lines.iter().enumerate() {
        let torn = i == lines.len() - 1;
        let corrupt = |reason: String, valid: Vec<Entry>| Corrupt {
            path: path.into(),
            line: i + 1,
            reason,
            valid_at: valid.iter().map(|e| e.at.clone()).collect(),
            valid: valid.into_iter().map(|e| e.rec).collect(),
        };
        if l.contains('\0') && !torn {
            return Err(corrupt("a NUL byte inside the line".into(), out).into());
        }
        if l.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Line>(l) {
            Ok(line) if line.v <= FORMAT_VERSION => out.push(Entry {
                at: line.ts,
                rec: line.rec,
            }),
            Ok(line) => bail!(
                "{} was written by a newer ferry (journal format {}; this one reads up to {FORMAT_VERSION})",
                path.display(),
                line.v
            ),
            // Not terminated by a newline: torn by a crash mid-write.
            Err(_) if torn => {}
            Err(e) => return Err(corrupt(e.to_string(), out).into()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torn_tail_is_ignored_and_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.jsonl");
        let mut j = Journal::create(&p).unwrap();
        j.append_durable(&Record::StepDone { step: "a".into() })
            .unwrap();
        // Simulate a torn write of a long record.
        let torn = b"{\"v\":1,\"type\":\"step_done\",\"step\":\"bbbbbbbbbbbbbbbbbbbbb";
        j.file.write_all_at(torn, j.offset).unwrap();
        drop(j);
        assert_eq!(read(&p).unwrap().len(), 1);
        let mut j = Journal::open(&p).unwrap();
        j.append(&Record::StepDone { step: "c".into() }).unwrap();
        let recs = read(&p).unwrap();
        assert_eq!(recs.len(), 2);
        assert!(matches!(&recs[1], Record::StepDone { step } if step == "c"));
    }

    #[test]
    fn records_carry_the_time_they_were_written_and_format_1_lines_none() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.jsonl");
        let mut j = Journal::create(&p).unwrap();
        j.append(&Record::StepDone { step: "a".into() }).unwrap();
        drop(j);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes.truncate(data_end(&bytes));
        bytes.extend_from_slice(b"{\"v\":1,\"type\":\"step_done\",\"step\":\"b\"}\n");
        std::fs::write(&p, bytes).unwrap();
        let es = read_entries(&p).unwrap();
        let at = es[0].at.as_deref().expect("a time");
        assert!(
            time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).is_ok(),
            "{at}"
        );
        assert!(es[1].at.is_none());
    }

    #[test]
    fn corruption_in_the_middle_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.jsonl");
        std::fs::write(&p, "{\"v\":1,\"type\":\"step_done\",\"step\":\"a\"}\ngarbage\n{\"v\":1,\"type\":\"step_done\",\"step\":\"b\"}\n").unwrap();
        assert!(
            read(&p)
                .unwrap_err()
                .to_string()
                .contains("corrupt at line 2")
        );
    }

    #[test]
    fn a_nul_byte_in_the_middle_is_corruption_not_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.jsonl");
        let mut j = Journal::create(&p).unwrap();
        for s in ["a", "b", "c"] {
            j.append(&Record::StepDone { step: s.into() }).unwrap();
        }
        drop(j);
        let mut bytes = std::fs::read(&p).unwrap();
        let second = bytes.iter().position(|b| *b == b'\n').unwrap() + 5;
        bytes.insert(second, 0);
        std::fs::write(&p, &bytes).unwrap();
        let e = read(&p).unwrap_err();
        let c = e.downcast_ref::<Corrupt>().expect("a Corrupt error");
        assert_eq!(c.line, 2);
        assert_eq!(c.valid.len(), 1);
    }
}
