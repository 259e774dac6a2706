//! Command-line surface (clap derive only). Meaning is given to these flags in `app.rs`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "ferry",
    // "0.1.0 (commit abcdef1)": build.rs stamps the commit it was built from.
    version = env!("FERRY_VERSION"),
    about = "Durable, resumable playbooks for a HAPI FHIR deployment"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Makes `--state-dir` and `--junit` absolute against the directory ferry was started
    /// in: `resume` and `rollback` change into the run's own directory before they use them.
    pub fn with_absolute_paths(mut self) -> Cli {
        let abs = |p: &mut PathBuf| {
            if let Ok(a) = std::path::absolute(&*p) {
                *p = a;
            }
        };
        abs(&mut self.global.state_dir);
        if let Some(j) = self.global.junit.as_mut() {
            abs(j);
        }
        self
    }
}

#[derive(Debug, Args)]
pub struct Global {
    /// Where runs, journals and locks live.
    #[arg(long, global = true, env = "FERRY_STATE_DIR", default_value = ".ferry")]
    pub state_dir: PathBuf,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Format::Human)]
    pub format: Format,
    /// Also write a JUnit XML report (one testcase per step and per check).
    #[arg(long, global = true)]
    pub junit: Option<PathBuf>,
    /// When to colour human output (auto: when stderr is a terminal).
    #[arg(long, global = true, value_enum, default_value_t = Color::Auto)]
    pub color: Color,
    /// Only errors and the summary.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Show every line a step prints.
    #[arg(short, long, global = true)]
    pub verbose: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Human,
    Json,
    /// `ferry report` only: the change record as HTML (its default).
    Html,
    /// `ferry report` only: the change record as Markdown.
    Md,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Color {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Args)]
pub struct PlaybookArgs {
    /// The playbook file (TOML).
    pub playbook: PathBuf,
    /// The target (inventory) file.
    #[arg(long, short)]
    pub target: Option<PathBuf>,
    /// Set a playbook variable (repeatable).
    #[arg(long = "var", value_name = "K=V")]
    pub vars: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Start it (or restart what is not running); writes DIR/target.toml and DIR/secrets.env.
    Up {
        #[arg(long, default_value = ".sandbox")]
        dir: PathBuf,
        #[arg(long, default_value_t = 1, value_parser = crate::steps::replicas::count::parse_cli)]
        replicas: u32,
        /// The static HAPI stand-in binary (default: what scripts/build-standin built).
        #[arg(long)]
        standin: Option<PathBuf>,
        /// An extra label for everything it creates (repeatable), e.g. ferry.test=1.
        #[arg(long = "label", value_name = "K=V")]
        labels: Vec<String>,
        /// How many HAPI resources to generate in fhirdb (fixtures/hapi-datagen.sql).
        #[arg(long, default_value_t = 2000)]
        resources: u64,
        /// compose: the seed's compose stack (nginx, pgbouncer-fhir, postgres-fhir,
        /// postgres-audit containers); host: PostgreSQL and pgBouncer as host processes, the
        /// stand-in's proxy in front.
        #[arg(long, value_enum, default_value_t = crate::sandbox::Stack::Compose)]
        stack: crate::sandbox::Stack,
    },
    /// Remove everything it made: containers, networks, images, processes, files.
    Down {
        #[arg(long, default_value = ".sandbox")]
        dir: PathBuf,
    },
    /// Each component and whether it is up (exit 1 when something is down).
    Status {
        #[arg(long, default_value = ".sandbox")]
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum IgCommand {
    /// Id, version, FHIR versions, dependencies, sha256, resource counts and profiles.
    Inspect {
        package: PathBuf,
        /// Refuse packages that unpack to more than this many bytes.
        #[arg(long, default_value_t = 512 * 1024 * 1024)]
        max_bytes: u64,
    },
    /// Added, removed and changed conformance resources, each finding classed as a
    /// tightening, loosening or info. Exit 0 either way.
    Diff {
        old: PathBuf,
        new: PathBuf,
        #[arg(long, default_value_t = 512 * 1024 * 1024)]
        max_bytes: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Parse and resolve a playbook and validate every step; no I/O against the target.
    Validate(PlaybookArgs),
    /// Show what would run, in order, with how each step would be undone.
    Plan(PlaybookArgs),
    /// Run a playbook.
    Run {
        #[command(flatten)]
        pb: PlaybookArgs,
        /// Run every read-only check for real and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Approve every approval step (not enough on a production target).
        #[arg(long, short)]
        yes: bool,
        /// Approve one approval step by id (repeatable).
        #[arg(long = "approve", value_name = "STEP_ID")]
        approve: Vec<String>,
    },
    /// Continue an interrupted or stopped run (the newest unfinished one by default).
    Resume {
        run_id: Option<String>,
        /// Resume even though the playbook changed since the run started.
        #[arg(long)]
        accept_changes: bool,
        #[arg(long, short)]
        yes: bool,
        #[arg(long = "approve", value_name = "STEP_ID")]
        approve: Vec<String>,
    },
    /// Undo a finished, failed or interrupted run, newest step first.
    Rollback {
        run_id: String,
        #[arg(long)]
        accept_changes: bool,
    },
    /// Runs and their steps, newest first.
    Status { run_id: Option<String> },
    /// Write the change record of a run, to attach to the change ticket: one self-contained
    /// HTML file (`--format md`: Markdown; `--format json`: its data) with who ran it, where,
    /// the playbook, vars, every step's checks, durations and outcome, the rollback, and a
    /// timeline of the steps with the service's downtime marked.
    Report {
        run_id: String,
        /// Where to write it: default `ferry-report-<RUN_ID>.html` (`.md`, `.json`) in the
        /// current directory; `-` writes it to stdout.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Clear a lock whose owner is dead (refuses a live owner).
    Unlock {
        /// Also release the deployment's database lock held for this target.
        #[arg(long, short)]
        target: Option<PathBuf>,
        /// Release a database lock held from another host (you assert that machine is gone).
        #[arg(long)]
        force: bool,
    },
    /// One monitoring check, for cron or a pager: exit 0 OK, 1 ALERT, 3 UNKNOWN.
    /// Without NAME, lists the checks.
    Check {
        name: Option<String>,
        #[arg(long, short)]
        target: Option<PathBuf>,
        /// Override a threshold (repeatable), e.g. --set max_pct=70.
        #[arg(long = "set", value_name = "K=V")]
        set: Vec<String>,
    },
    /// Probe every component the target names (Docker, compose service, registry, each
    /// database, pgBouncer, FHIR, files): one line each; exit 0 all good, 3 otherwise.
    Doctor {
        #[arg(long, short)]
        target: PathBuf,
        /// How long each probe waits for an answer, e.g. 10s, 500ms.
        #[arg(long, default_value = "10s", value_parser = crate::util::duration::parse_duration)]
        timeout: std::time::Duration,
    },
    /// A disposable local staging: PostgreSQL, pgBouncer, a registry, N HAPI stand-ins.
    #[command(subcommand)]
    Sandbox(SandboxCommand),
    /// FHIR IG packages (NPM .tgz): inspect one, or diff two for SHALL tightenings.
    #[command(subcommand)]
    Ig(IgCommand),
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages generated from these definitions: ferry.1 and one per subcommand
    /// (ferry-run.1, …) into DIR, or ferry.1 alone to stdout. Used by scripts/release.
    #[command(hide = true)]
    Man { dir: Option<PathBuf> },
}
