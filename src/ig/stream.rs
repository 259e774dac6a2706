//! The gzip + tar walk behind `read_package`, with every safety check and limit.
//!
//! Invariants:
//! - Every entry is a regular file or a directory strictly under `package/`; absolute
//!   paths, `..`, symlinks, hardlinks, devices, fifos and duplicate names are refused
//!   before a byte of their content is looked at.
//! - Every decompressed byte passes through [`Capped`], so `Limits::max_bytes` bounds the
//!   work even for entries that are skipped; declared sizes are checked first so that a
//!   bomb is refused without inflating it.
//! - Only root JSON files are kept in memory; `example/` bodies are read up to a short
//!   prefix to count their resourceType, everything else is skipped.

use std::collections::{BTreeMap, HashSet};
use std::io::{self, Read};

use super::{IgError, Limits};

/// Largest single file we buffer. Real IG resources stay well under 2 MiB; 64 MiB leaves
/// room for giant CodeSystems while bounding one allocation.
const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// Bytes of an example read to find its resourceType: IG Publisher writes it first.
const SNIFF_BYTES: u64 = 4096;

/// What the tar stream held, before interpretation.
#[derive(Default)]
pub(crate) struct Scan {
    pub package_json: Option<Vec<u8>>,
    pub index_json: Option<Vec<u8>>,
    pub root: Vec<(String, Vec<u8>)>,
    pub example_counts: BTreeMap<String, usize>,
    pub entries: usize,
    pub uncompressed: u64,
}

/// Counts decompressed bytes and fails past the limit. `take` would truncate silently
/// and tar would then report a confusing EOF; this says what happened.
struct Capped<R> {
    inner: R,
    left: u64,
    exceeded: bool,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            self.exceeded = true;
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "uncompressed size limit exceeded",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// A failure inside the walk: either a verdict on an entry or a stream error to classify.
enum Fail {
    Ig(IgError),
    Io(io::Error),
}

impl From<io::Error> for Fail {
    fn from(e: io::Error) -> Self {
        Fail::Io(e)
    }
}

pub(crate) fn scan(bytes: &[u8], limits: &Limits, file: &str) -> Result<Scan, IgError> {
    let gz = flate2::bufread::GzDecoder::new(bytes);
    let mut ar = tar::Archive::new(Capped {
        inner: gz,
        left: limits.max_bytes,
        exceeded: false,
    });
    let mut out = Scan::default();
    let walked = walk(&mut ar, limits, file, &mut out);
    let mut capped = ar.into_inner();
    // Drain what tar did not need: the gzip trailer (CRC) is only checked at the end,
    // and a truncated stream must fail even when the tar end marker was seen.
    let drained = match walked {
        Ok(()) => io::copy(&mut capped, &mut io::sink())
            .map(|_| ())
            .map_err(Fail::Io),
        Err(e) => Err(e),
    };
    match drained {
        Ok(()) => {
            out.uncompressed = limits.max_bytes - capped.left;
            Ok(out)
        }
        Err(Fail::Ig(e)) => Err(e),
        Err(Fail::Io(e)) => Err(classify(e, &capped, limits, file)),
    }
}

fn classify(
    e: io::Error,
    capped: &Capped<flate2::bufread::GzDecoder<&[u8]>>,
    limits: &Limits,
    file: &str,
) -> IgError {
    let file = file.to_string();
    if capped.exceeded {
        IgError::TooLarge {
            file,
            limit: limits.max_bytes,
        }
    } else if capped.inner.get_ref().is_empty() {
        // All input consumed and the stream still failed: it stops short.
        IgError::Truncated {
            file,
            detail: e.to_string(),
        }
    } else {
        IgError::Corrupt {
            file,
            detail: e.to_string(),
        }
    }
}

fn walk<R: Read>(
    ar: &mut tar::Archive<R>,
    limits: &Limits,
    file: &str,
    out: &mut Scan,
) -> Result<(), Fail> {
    let mut seen = HashSet::new();
    let mut declared: u64 = 0;
    for entry in ar.entries()? {
        let mut entry = entry?;
        out.entries += 1;
        if out.entries > limits.max_entries {
            return Err(Fail::Ig(IgError::TooManyEntries {
                file: file.into(),
                limit: limits.max_entries,
            }));
        }
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let bad = |reason: &str| {
            Fail::Ig(IgError::BadEntry {
                file: file.into(),
                entry: name.clone(),
                reason: reason.into(),
            })
        };
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            // `git archive` and Python write a `pax_global_header` entry: metadata for
            // the archive, not a file, so its name is no path to check.
            continue;
        }
        let rel = check_path(&name).map_err(&bad)?;
        check_type(kind).map_err(&bad)?;
        if !seen.insert(rel.clone()) {
            return Err(bad("appears twice (duplicate name)"));
        }
        let size = entry.size();
        declared = declared.saturating_add(size);
        if declared > limits.max_bytes {
            return Err(Fail::Ig(IgError::TooLarge {
                file: file.into(),
                limit: limits.max_bytes,
            }));
        }
        if kind.is_dir() {
            continue;
        }
        if size > MAX_FILE_BYTES {
            return Err(bad(&format!(
                "is {size} bytes, over the {MAX_FILE_BYTES}-byte per-file cap"
            )));
        }
        store(&rel, &mut entry, size, out)?;
    }
    Ok(())
}

/// Route one regular file by where it sits under `package/`.
fn store<R: Read>(rel: &str, entry: &mut R, size: u64, out: &mut Scan) -> Result<(), Fail> {
    let read_all = |e: &mut R| -> io::Result<Vec<u8>> {
        let mut buf = Vec::with_capacity(size as usize);
        e.take(size).read_to_end(&mut buf)?;
        Ok(buf)
    };
    match rel.split_once('/') {
        None if rel == "package.json" => out.package_json = Some(read_all(entry)?),
        None if rel == ".index.json" => out.index_json = Some(read_all(entry)?),
        None if rel.ends_with(".json") => out.root.push((rel.to_string(), read_all(entry)?)),
        Some(("example" | "examples", name))
            if name.ends_with(".json") && !name.starts_with('.') =>
        {
            let mut head = Vec::with_capacity(SNIFF_BYTES as usize);
            entry.take(SNIFF_BYTES).read_to_end(&mut head)?;
            let rt = sniff_resource_type(&head)
                .unwrap_or("(unknown)")
                .to_string();
            *out.example_counts.entry(rt).or_insert(0) += 1;
        }
        _ => {} // other files: tar skips their bytes, still through Capped
    }
    Ok(())
}

/// Check a tar path and return it relative to `package/` ("" for the folder itself).
fn check_path(name: &str) -> Result<String, &'static str> {
    if name.starts_with('/') {
        return Err("is an absolute path");
    }
    let trimmed = name.strip_suffix('/').unwrap_or(name);
    let parts: Vec<&str> = trimmed.split('/').collect();
    if parts.contains(&"..") {
        return Err("escapes package/ (tar slip)");
    }
    if parts.iter().any(|p| p.is_empty() || *p == ".") {
        return Err("has an empty or '.' path component");
    }
    if parts[0] != "package" {
        return Err("is outside package/");
    }
    Ok(parts[1..].join("/"))
}

fn check_type(kind: tar::EntryType) -> Result<(), &'static str> {
    use tar::EntryType as T;
    match kind {
        T::Regular | T::Directory => Ok(()),
        T::Symlink => Err("is a symlink (only regular files and directories are allowed)"),
        T::Link => Err("is a hardlink (only regular files and directories are allowed)"),
        T::Char | T::Block => Err("is a device (only regular files and directories are allowed)"),
        T::Fifo => Err("is a fifo (only regular files and directories are allowed)"),
        _ => Err(
            "has an unsupported tar entry type (only regular files and directories are allowed)",
        ),
    }
}

/// Find the first `"resourceType": "X"` in a JSON prefix without parsing the body.
fn sniff_resource_type(head: &[u8]) -> Option<&str> {
    const KEY: &[u8] = b"\"resourceType\"";
    let at = head.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let rest = &head[at..];
    let rest = rest
        .trim_ascii_start()
        .strip_prefix(b":")?
        .trim_ascii_start()
        .strip_prefix(b"\"")?;
    let end = rest.iter().position(|&b| b == b'"')?;
    let name = std::str::from_utf8(&rest[..end]).ok()?;
    name.bytes()
        .all(|b| b.is_ascii_alphanumeric())
        .then_some(name)
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn paths_are_confined_to_package() {
        assert_eq!(check_path("package/a.json"), Ok("a.json".to_string()));
        assert_eq!(check_path("package/"), Ok(String::new()));
        assert_eq!(
            check_path("package/../x"),
            Err("escapes package/ (tar slip)")
        );
        assert_eq!(check_path("/etc/passwd"), Err("is an absolute path"));
        assert_eq!(check_path("other/a.json"), Err("is outside package/"));
        assert_eq!(
            check_path("package//a"),
            Err("has an empty or '.' path component")
        );
    }

    #[test]
    fn capped_stops_at_the_limit() {
        let data = vec![0u8; 10_000];
        let mut c = Capped {
            inner: &data[..],
            left: 4_000,
            exceeded: false,
        };
        let err = io::copy(&mut c, &mut io::sink()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(c.exceeded);
    }

    #[test]
    fn sniffs_resource_type_from_prefix() {
        assert_eq!(
            sniff_resource_type(b"{\n  \"resourceType\" : \"Patient\",\"id\":\"x\""),
            Some("Patient")
        );
        assert_eq!(sniff_resource_type(b"{\"id\":\"x\"}"), None);
    }
}
