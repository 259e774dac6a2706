//! Behavioural tests of `ig` on the committed fixtures (`fixtures/ig/`) and the real US
//! Core packages vendored in `fixtures/ig/real/` (CC0; origin and sha256 in its README).
//! Nothing here reads outside the repository.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::*;

mod diff_cmds;
mod read_cmds;
mod us_core;
mod vendored;

pub(super) fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/ig")
        .join(name)
}

/// A real US Core package vendored in `fixtures/ig/real/` (inside the repository, so a
/// fresh clone has it).
pub(super) fn real(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/ig/real")
        .join(name)
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
