//! FHIR NPM (IG) packages: read a `.tgz` safely, describe it, and diff two versions.
//!
//! Role: the only place in ferry that opens IG packages. `read_package` streams the gzip'd
//! tar through flate2 + tar without ever touching the disk, `diff` compares two packages
//! and classifies every change as a SHALL tightening, a loosening or plain information,
//! and `cmd` renders both for the CLI.
//!
//! Invariants:
//! - Untrusted input never panics: every defect of a package is an [`IgError`], and each
//!   message names the file and the cause. All of them are "bad input" (CLI exit 2).
//! - Nothing here prints except `cmd`, and it writes only to the writer it is given.
//! - Resource limits ([`Limits`]) hold for every byte decompressed, read or skipped.

mod cmd;
mod diff;
mod index;
mod manifest;
mod read;
mod stream;
#[cfg(test)]
mod tests;

pub use cmd::{diff_cmd, inspect_cmd};
pub use diff::{Class, Diff, Finding, diff};
pub use index::Resource;
pub use read::{Package, read_package};

use std::path::Path;

/// Caps on what one package may cost. Both apply to the whole archive, skipped entries
/// included, so a decompression bomb is stopped however it is packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Total uncompressed bytes of the tar stream (headers and padding included).
    pub max_bytes: u64,
    /// Number of tar entries (files and directories).
    pub max_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        // US Core 6.1.0 is 10 MiB uncompressed and 460 entries: the defaults leave room
        // for IGs fifty times larger while keeping a hostile archive cheap to refuse.
        Limits {
            max_bytes: 512 * 1024 * 1024,
            max_entries: 20_000,
        }
    }
}

/// Everything that can be wrong with an IG package. Every variant is a defect of the
/// input (exit 2), and every message starts with the offending file's name.
#[derive(Debug, thiserror::Error)]
pub enum IgError {
    #[error("cannot read IG package {file}: {source}")]
    Io {
        file: String,
        source: std::io::Error,
    },
    #[error("bad IG package {file}: not a gzip file (first bytes are not 1f 8b)")]
    NotGzip { file: String },
    #[error("bad IG package {file}: truncated gzip stream ({detail})")]
    Truncated { file: String, detail: String },
    #[error("bad IG package {file}: corrupt archive: {detail}")]
    Corrupt { file: String, detail: String },
    #[error("bad IG package {file}: entry {entry:?} {reason}")]
    BadEntry {
        file: String,
        entry: String,
        reason: String,
    },
    #[error("bad IG package {file}: more than {limit} bytes uncompressed (decompression bomb?)")]
    TooLarge { file: String, limit: u64 },
    #[error("bad IG package {file}: more than {limit} tar entries")]
    TooManyEntries { file: String, limit: usize },
    #[error("bad IG package {file}: no package/package.json")]
    MissingManifest { file: String },
    #[error("bad IG package {file}: package/package.json: {detail}")]
    BadManifest { file: String, detail: String },
    #[error("bad IG package {file}: {entry}: {detail}")]
    BadResource {
        file: String,
        entry: String,
        detail: String,
    },
    #[error("IG packages do not form an upgrade: {detail}")]
    NotAnUpgrade { detail: String },
}

/// The name used in messages: the file name alone keeps errors short and stable
/// across machines, while still saying which of the two packages of a diff failed.
fn display_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}
