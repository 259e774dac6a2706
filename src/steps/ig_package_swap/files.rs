//! The packages directory: which files hold a given IG, their sha256, and moves that are
//! durable (rename + fsync of both directories) so a crash leaves each file in exactly
//! one of its two places.

use std::io;
use std::path::Path;

use sha2::{Digest, Sha256};

/// Files of IG `id` in `dir`, sorted: `<id>-<semver>.tgz`, regular, not hidden. The name
/// is the convention the overlay image uses; a name that only starts with the id
/// (`<id>-extras-1.0.0.tgz`) is another package and is not counted.
pub fn packages_of(dir: &Path, id: &str) -> io::Result<Vec<String>> {
    let prefix = format!("{id}-");
    let mut out = vec![];
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let Ok(name) = e.file_name().into_string() else {
            continue;
        };
        let Some(ver) = name
            .strip_prefix(&prefix)
            .and_then(|r| r.strip_suffix(".tgz"))
        else {
            continue;
        };
        if semver::Version::parse(ver).is_ok() && e.file_type()?.is_file() {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// The file name a package of `id` at `version` gets in the packages directory.
pub fn file_name(id: &str, version: &semver::Version) -> String {
    format!("{id}-{version}.tgz")
}

pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// sha256 of a file; None when it does not exist.
pub fn sha256_file(p: &Path) -> io::Result<Option<String>> {
    match std::fs::read(p) {
        Ok(b) => Ok(Some(sha256_bytes(&b))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Moves `from` to `to` durably: a rename on one filesystem (the inode, its mode and
/// mtime travel with it), else copy + fsync, then remove the source.
pub fn move_file(from: &Path, to: &Path) -> io::Result<()> {
    let (src_dir, dst_dir) = (parent(from), parent(to));
    match std::fs::rename(from, to) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            let tmp = dst_dir.join(format!(
                ".{}.ferry-tmp",
                to.file_name().and_then(|n| n.to_str()).unwrap_or("file")
            ));
            std::fs::copy(from, &tmp)?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, to)?;
            fsync_dir(dst_dir)?;
            std::fs::remove_file(from)?;
        }
        Err(e) => return Err(e),
    }
    fsync_dir(dst_dir)?;
    fsync_dir(src_dir)
}

/// Removes a file if it is there; "already gone" is success.
pub fn remove_if_present(p: &Path) -> io::Result<bool> {
    match std::fs::remove_file(p) {
        Ok(()) => {
            fsync_dir(parent(p))?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

fn parent(p: &Path) -> &Path {
    p.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}
