//! ferry: durable, resumable, roll-back-able playbooks for a HAPI FHIR deployment.
//! `main` builds a single-threaded runtime (children's parent-death signal is tied to the
//! thread that forks them; see infra/process.rs), runs the command and maps errors to the
//! documented exit codes.

mod app;
mod checks;
mod cli;
mod doctor;
mod engine;
mod error;
mod ig;
mod infra;
mod plan;
mod playbook;
mod report;
mod sandbox;
mod steps;
mod target;
mod util;

use clap::Parser;

// The last-resort error line (after the reporters are done) is the one print outside report/.
#[allow(clippy::print_stderr)]
fn main() {
    let cli = cli::Cli::parse().with_absolute_paths();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(error::code::FAILED);
        }
    };
    let code = match rt.block_on(app::main(cli)) {
        Ok(code) => code,
        Err(e) => {
            let msg = report::redact::redact(&e.to_string()).into_owned();
            if e.is_rendered() {
                eprint!("{msg}");
            } else {
                eprintln!("error: {msg}");
            }
            if let Some(h) = e.hint() {
                eprintln!("  hint: {}", report::redact::redact(&h));
            }
            e.exit_code()
        }
    };
    // Leave without waiting for background tasks (signal listener, idle connections).
    drop(rt);
    std::process::exit(code);
}
