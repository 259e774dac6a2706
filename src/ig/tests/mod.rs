//! Behavioural tests of `ig` on the committed fixtures (`fixtures/ig/`) and the real US
//! Core packages (`$FERRY_SHARED_DIR`, else `../shared`, else `/work/shared`).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::*;

mod diff_cmds;
mod read_cmds;
mod us_core;

pub(super) fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/ig")
        .join(name)
}

pub(super) fn real(name: &str) -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let candidates = [
        std::env::var_os("FERRY_SHARED_DIR").map(PathBuf::from),
        Some(manifest.join("../shared")),
        Some(PathBuf::from("/work/shared")),
    ];
    let dir = candidates
        .into_iter()
        .flatten()
        .map(|d| d.join("fixtures/real-ig-packages"))
        .find(|d| d.is_dir())
        .expect("real IG packages not found: set FERRY_SHARED_DIR to the shared/ checkout");
    dir.join(name)
}

pub(super) fn read(path: &Path) -> Package {
    read_package(path, &Limits::default()).unwrap_or_else(|e| panic!("{e}"))
}

pub(super) fn err(path: &Path) -> (IgError, String) {
    let e = read_package(path, &Limits::default()).expect_err("package must be refused");
    let msg = e.to_string();
    (e, msg)
}

pub(super) fn find<'a>(
    d: &'a Diff,
    class: Class,
    profile_end: &str,
    element: Option<&str>,
    kind: &str,
) -> Option<&'a Finding> {
    d.findings.iter().find(|f| {
        f.class == class
            && f.profile.ends_with(profile_end)
            && f.element.as_deref() == element
            && f.kind == kind
    })
}
