//! `ferry doctor --target T`: probes every component the target file names before the first
//! real run, and answers with one `Finding` per component (what was found, or what is wrong
//! and how to fix it). One file per component family; each probe is a small function.
//!
//! Invariants: every probe is read-only (the packages-dir probe creates and removes one empty
//! file of its own) and runs under `timeout` (file calls on a blocking thread), so a dead or
//! stopped component or a hung mount becomes a line, never a hang; probes run concurrently and their lines come out in a fixed order
//! (the order of the target file's sections); a section the target lacks is a `skip` line,
//! never a failure; secrets are read at use and registered with the redactor.

mod docker;
mod fhir;
mod files;
mod postgres;
mod registry;

use std::future::Future;
use std::time::Duration;

use futures_util::future::join_all;

use crate::report::views::doctor::{DoctorView, Finding};
use crate::target::Target;

/// Runs every probe the target calls for.
pub async fn run(target: &Target, timeout: Duration) -> DoctorView {
    let t = timeout;
    let databases = join_all(
        target
            .postgres
            .iter()
            .map(|(name, pg)| postgres::probe(target, name, pg, t)),
    );
    // All at once: a dead component costs one timeout, not one per line after it.
    let (mut found, regs, pgs, bouncers, fhirs, file_lines) = tokio::join!(
        docker::probe(target, t),
        registry::probe(target, t),
        databases,
        postgres::probe_bouncer(target, t),
        fhir::probe(target, t),
        files::probe(target, t),
    );
    found.push(regs);
    if pgs.is_empty() {
        found.push(Finding::skipped(
            "postgres",
            "no [postgres.NAME] in the target: sql, check and pool_capacity steps cannot run",
        ));
    }
    found.extend(pgs);
    found.push(bouncers);
    found.push(fhirs);
    found.push(file_lines);
    DoctorView::new(
        target.path.display().to_string(),
        target.name.clone(),
        timeout.as_millis() as u64,
        found,
    )
}

/// `work`'s finding, or a problem line naming the component and the silence after `timeout`.
async fn within(
    component: &str,
    timeout: Duration,
    what: &str,
    work: impl Future<Output = Finding>,
) -> Finding {
    match tokio::time::timeout(timeout, work).await {
        Ok(f) => f,
        Err(_) => Finding::problem(
            component,
            format!(
                "no answer from {what} within {}",
                crate::util::duration::fmt_duration(timeout)
            ),
            format!(
                "the process is hung or stopped, or a firewall drops the traffic: check {what} \
                 answers (re-run with a longer --timeout on a slow network)"
            ),
        ),
    }
}

/// A secret the target names, as a problem line when it cannot be read.
fn secret(
    target: &Target,
    component: &str,
    env: &Option<String>,
    file: &Option<std::path::PathBuf>,
) -> Result<Option<String>, Finding> {
    target.secret(env, file).map_err(|e| {
        let fix = match env {
            Some(name) => match &target.secrets_file {
                Some(f) => format!(
                    "export {name}=… before running ferry, or add `{name}=…` to {}",
                    target.resolve_path(f).display()
                ),
                None => format!("export {name}=… before running ferry"),
            },
            None => "make the file named by password_file readable by this user".into(),
        };
        Finding::problem(component, e, fix)
    })
}
