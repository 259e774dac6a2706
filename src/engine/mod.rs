//! The engine: runs a resolved playbook step by step with a durable journal, resumes an
//! interrupted run from its last checkpoint, and rolls back completed steps in reverse.
//! It reports only through events; it never prints.

mod changes;
mod forward;
pub mod history;
pub mod journal;
pub mod lock;
mod preflight;
pub mod records;
pub mod rollback;
pub mod runner;
pub mod signal;
pub mod status;
mod store;

pub use changes::check_unchanged;
pub use runner::{Engine, RunRequest};

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buffer and length are valid; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown-host".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The login name of the user ferry runs as (from the password database; `$USER`, then the
/// uid, when it has no entry, as in a container started with an arbitrary uid).
pub fn username() -> String {
    // SAFETY: getuid cannot fail; getpwuid_r writes only into the buffers it is given.
    let uid = unsafe { libc::getuid() };
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut found) };
    if rc == 0 && !found.is_null() && !pw.pw_name.is_null() {
        // SAFETY: pw_name points into `buf`, NUL-terminated by getpwuid_r.
        let name = unsafe { std::ffi::CStr::from_ptr(pw.pw_name) };
        return name.to_string_lossy().into_owned();
    }
    std::env::var("USER").unwrap_or_else(|_| format!("uid {uid}"))
}

pub fn runs_dir(state_dir: &std::path::Path) -> std::path::PathBuf {
    state_dir.join("runs")
}

/// Sortable (to the millisecond, so runs started within one second keep their order) and
/// unique enough for one state dir: UTC time plus 4 hex digits.
pub fn new_run_id() -> String {
    let now = time::OffsetDateTime::now_utc();
    let fmt = time::macros::format_description!(
        "[year][month][day]-[hour][minute][second].[subsecond digits:3]"
    );
    let salt = (now.nanosecond() ^ std::process::id().rotate_left(16)) & 0xffff;
    format!("{}-{salt:04x}", now.format(&fmt).unwrap_or_default())
}
