//! Subcommand → validated request → engine and reporters. The only module that knows about
//! both the command line and the engine.

use std::io::{BufRead, IsTerminal, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::Arc;

use clap::CommandFactory;

use crate::cli::{Cli, Color, Command, Format, Global, IgCommand, PlaybookArgs, SandboxCommand};
use crate::engine::records::RunState;
use crate::engine::signal::{self, Stop};
use crate::engine::{self, Engine, RunRequest, status};
use crate::error::{Error, Result, code};
use crate::playbook::{self, Playbook};
use crate::report::human::HumanReporter;
use crate::report::json::JsonReporter;
use crate::report::junit::JunitReporter;
use crate::report::{Event, Fanout, Reporter, Sink};
use crate::steps::{Approvals, Prompter};
use crate::target::Target;

pub async fn main(cli: Cli) -> Result<i32> {
    match cli.global.color {
        Color::Always => console::set_colors_enabled_stderr(true),
        Color::Never => console::set_colors_enabled_stderr(false),
        Color::Auto => {}
    }
    let g = &cli.global;
    match &cli.command {
        Command::Validate(pb) => validate(g, pb),
        Command::Plan(pb) => plan(g, pb),
        Command::Run {
            pb,
            dry_run,
            yes,
            approve,
        } => run(g, pb, *dry_run, *yes, approve).await,
        Command::Resume {
            run_id,
            accept_changes,
            yes,
            approve,
        } => {
            let id = match run_id {
                Some(id) => id.clone(),
                None => status::newest_unfinished(&g.state_dir).ok_or_else(|| {
                    Error::invalid(format!("no unfinished run in {}", g.state_dir.display()))
                })?,
            };
            continue_run(g, &id, *accept_changes, false, *yes, approve).await
        }
        Command::Rollback {
            run_id,
            accept_changes,
        } => continue_run(g, run_id, *accept_changes, true, false, &[]).await,
        Command::Status { run_id } => show_status(g, run_id.as_deref()),
        Command::Unlock { target, force } => {
            println!("{}", engine::lock::unlock(&g.state_dir)?);
            if let Some(t) = load_target(target.as_deref())? {
                t.register_secrets();
                println!("{}", engine::lock::unlock_pg(&t, *force).await?);
            }
            Ok(code::DONE)
        }
        Command::Ig(cmd) => ig(g, cmd),
        Command::Sandbox(cmd) => sandbox(cmd).await,
        Command::Check { name, target, set } => {
            check_cmd(g, name.as_deref(), target.as_deref(), set).await
        }
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "ferry", &mut std::io::stdout());
            Ok(0)
        }
    }
}

fn ig(g: &Global, cmd: &IgCommand) -> Result<i32> {
    let json = g.format == Format::Json;
    let out = &mut std::io::stdout().lock();
    let r = match cmd {
        IgCommand::Inspect { package, max_bytes } => {
            let limits = crate::ig::Limits {
                max_bytes: *max_bytes,
                ..Default::default()
            };
            crate::ig::inspect_cmd(package, &limits, json, out)
        }
        IgCommand::Diff {
            old,
            new,
            max_bytes,
        } => {
            let limits = crate::ig::Limits {
                max_bytes: *max_bytes,
                ..Default::default()
            };
            crate::ig::diff_cmd(old, new, &limits, json, out)
        }
    };
    r.map(|()| code::DONE).map_err(Error::invalid)
}

async fn check_cmd(
    g: &Global,
    name: Option<&str>,
    target: Option<&Path>,
    set: &[String],
) -> Result<i32> {
    use crate::checks::{self, CheckCx, Params, Status};
    let Some(name) = name else {
        for (n, _, what) in checks::CHECKS {
            println!("{n:<22} {what}");
        }
        return Ok(code::DONE);
    };
    let keys = checks::keys(name).ok_or_else(|| {
        let help = crate::util::suggest::did_you_mean(name, checks::CHECKS.iter().map(|c| c.0));
        Error::invalid(format!(
            "unknown check `{name}`{}",
            help.map(|h| format!(" ({h})")).unwrap_or_default()
        ))
    })?;
    let target =
        load_target(target)?.ok_or_else(|| Error::invalid("`ferry check` needs --target FILE"))?;
    target.register_secrets();
    let mut overrides = toml::Table::new();
    for (k, v) in parse_vars(set)? {
        // Numbers stay numbers; everything else is a string.
        let val = v
            .parse::<i64>()
            .map(toml::Value::Integer)
            .or_else(|_| v.parse::<f64>().map(toml::Value::Float))
            .unwrap_or(toml::Value::String(v));
        overrides.insert(k, val);
    }
    let empty = toml::Table::new();
    let from_target = target.checks.get(name).unwrap_or(&empty);
    let params = Params::merge(name, keys, &[from_target, &overrides])
        .map_err(|e| Error::invalid(format!("{e:#}")))?;
    let cx = CheckCx {
        target: &target,
        params,
        state_dir: g.state_dir.clone(),
    };
    let report = checks::run(name, &cx).await;
    if g.format == Format::Json {
        println!(
            "{}",
            serde_json::to_string(&report).map_err(|e| Error::Other(e.into()))?
        );
    } else {
        println!("{}", crate::report::redact::redact(&report.line()));
        if g.verbose || report.status != Status::Ok {
            for d in &report.details {
                println!("  {}", crate::report::redact::redact(d));
            }
        }
    }
    Ok(report.status.exit_code())
}

async fn sandbox(cmd: &SandboxCommand) -> Result<i32> {
    use crate::sandbox;
    let fail = |e: anyhow::Error| {
        Error::Other(anyhow::anyhow!(
            crate::report::redact::redact(&format!("sandbox: {e:#}")).into_owned()
        ))
    };
    match cmd {
        SandboxCommand::Up {
            dir,
            replicas,
            standin,
            labels,
        } => {
            let labels = parse_vars(labels)?;
            let opts = sandbox::UpOptions {
                dir: dir.clone(),
                replicas: *replicas,
                standin: standin.clone(),
                labels,
            };
            println!("{}", sandbox::up(&opts).await.map_err(fail)?);
            println!(
                "  use it: ferry run PLAYBOOK --target {}",
                dir.join("target.toml").display()
            );
            Ok(code::DONE)
        }
        SandboxCommand::Down { dir } => {
            println!("{}", sandbox::down(dir).await.map_err(fail)?);
            Ok(code::DONE)
        }
        SandboxCommand::Status { dir } => {
            let (report, ok) = sandbox::status(dir).await.map_err(fail)?;
            println!("{report}");
            Ok(if ok { code::DONE } else { code::FAILED })
        }
    }
}

fn parse_vars(raw: &[String]) -> Result<Vec<(String, String)>> {
    raw.iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
            _ => Err(Error::invalid(format!("--var {kv:?}: expected K=V"))),
        })
        .collect()
}

fn load_target(path: Option<&Path>) -> Result<Option<Arc<Target>>> {
    path.map(|p| Target::load(p).map(Arc::new)).transpose()
}

fn load_playbook(
    path: &Path,
    vars: &[(String, String)],
    target: Option<&Target>,
    run_id: Option<&str>,
    allow_missing: bool,
) -> Result<Playbook> {
    playbook::load(&playbook::Input {
        path,
        cli_vars: vars,
        target,
        run_id,
        allow_missing_required: allow_missing,
    })
}

fn validate(_g: &Global, a: &PlaybookArgs) -> Result<i32> {
    let target = load_target(a.target.as_deref())?;
    let vars = parse_vars(&a.vars)?;
    let pb = load_playbook(&a.playbook, &vars, target.as_deref(), None, true)?;
    println!("{}: ok ({} steps)", a.playbook.display(), pb.steps.len());
    if let Some(t) = &target {
        println!("{}: ok ({})", t.path.display(), t.summary());
    }
    Ok(0)
}

fn plan(g: &Global, a: &PlaybookArgs) -> Result<i32> {
    let target = load_target(a.target.as_deref())?;
    let vars = parse_vars(&a.vars)?;
    let pb = load_playbook(&a.playbook, &vars, target.as_deref(), None, false)?;
    let out = crate::plan::render(&pb, target.as_deref(), g.format == Format::Json);
    print!("{out}");
    Ok(0)
}

fn sink(g: &Global) -> Arc<Fanout> {
    let mut rs: Vec<Box<dyn Reporter>> = vec![];
    match g.format {
        Format::Human => rs.push(Box::new(HumanReporter::new(g.quiet, g.verbose))),
        Format::Json => rs.push(Box::new(JsonReporter::new(std::io::stdout()))),
    }
    if let Some(j) = &g.junit {
        rs.push(Box::new(JunitReporter::new(j.clone())));
    }
    Arc::new(Fanout::new(rs))
}

fn ensure_state_dir(dir: &Path) -> Result<()> {
    // 0700: journals can name hosts, users and paths an operator would rather not share.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir.join("runs"))
        .map_err(|e| Error::invalid(format!("cannot create state dir {}: {e}", dir.display())))
}

fn engine(g: &Global, fan: &Arc<Fanout>, command: &str) -> Result<Engine> {
    let stop = Stop::default();
    let sink: Arc<dyn Sink> = fan.clone();
    signal::install(stop.clone(), sink.clone()).map_err(|e| Error::Other(e.into()))?;
    Ok(Engine {
        state_dir: g.state_dir.clone(),
        sink,
        stop,
        prompter: Arc::new(TermPrompter),
        command: command.into(),
    })
}

fn approvals(target: Option<&Target>, yes: bool, ids: &[String]) -> Approvals {
    Approvals {
        yes,
        ids: ids.to_vec(),
        production: target.is_some_and(|t| t.production),
    }
}

fn warn_secrets(fan: &Fanout, target: Option<&Target>) {
    for w in target.map(Target::register_secrets).unwrap_or_default() {
        fan.emit(Event::log(None, "warn", w));
    }
}

/// What `run`, `resume` and `rollback` share: `--approve` names real approval steps, the
/// reporters, the secrets' warnings, and the request itself.
struct Prepared {
    fan: Arc<Fanout>,
    req: RunRequest,
}

fn prepare(
    g: &Global,
    pb: Playbook,
    target: Option<Arc<Target>>,
    run_id: &str,
    vars: Vec<(String, String)>,
    yes: bool,
    approve: &[String],
) -> Result<Prepared> {
    for id in approve {
        if !pb.steps.iter().any(|s| &s.id == id && s.kind == "approval") {
            return Err(Error::invalid(format!(
                "--approve {id}: the playbook has no approval step `{id}`"
            )));
        }
    }
    let fan = sink(g);
    warn_secrets(&fan, target.as_deref());
    let approvals = approvals(target.as_deref(), yes, approve);
    let req = RunRequest {
        playbook: pb,
        target,
        approvals,
        run_id: run_id.into(),
        cli_vars: vars,
    };
    Ok(Prepared { fan, req })
}

/// Flushes the reporters (the JUnit file is written here) and maps the outcome to its code.
fn conclude(fan: &Fanout, r: Result<()>) -> Result<i32> {
    fan.finish().map_err(|e| Error::Other(e.into()))?;
    Ok(r.map_or_else(|e| e.exit_code(), |_| code::DONE))
}

async fn run(
    g: &Global,
    a: &PlaybookArgs,
    dry_run: bool,
    yes: bool,
    approve: &[String],
) -> Result<i32> {
    let target = load_target(a.target.as_deref())?;
    let vars = parse_vars(&a.vars)?;
    let run_id = engine::new_run_id();
    let pb = load_playbook(&a.playbook, &vars, target.as_deref(), Some(&run_id), false)?;
    let Prepared { fan, req } = prepare(g, pb, target, &run_id, vars, yes, approve)?;
    let r = if dry_run {
        engine(g, &fan, "run --dry-run")?.dry_run(req).await
    } else {
        ensure_state_dir(&g.state_dir)?;
        engine(g, &fan, "run")?.run(req).await
    };
    conclude(&fan, r)
}

async fn continue_run(
    g: &Global,
    id: &str,
    accept: bool,
    undo: bool,
    yes: bool,
    approve: &[String],
) -> Result<i32> {
    let state = status::load(&g.state_dir, id).map_err(|e| Error::invalid(format!("{e:#}")))?;
    let m = &state.meta;
    let target = load_target(m.target.as_deref())?;
    let mut path = m.playbook.clone();
    if !path.exists() {
        // The playbook moved or was deleted: the copy taken at the start is the same text.
        path = g.state_dir.join("runs").join(id).join("playbook.toml");
    }
    let pb = load_playbook(&path, &m.cli_vars, target.as_deref(), Some(id), false)?;
    check_unchanged(&state, &pb, accept, id)?;
    let workdir = m.workdir.clone();
    let Prepared { fan, req } = prepare(g, pb, target, id, m.cli_vars.clone(), yes, approve)?;
    // Children of the run inherit this directory, as they did when it started.
    if let Err(e) = std::env::set_current_dir(&workdir) {
        return Err(Error::invalid(format!(
            "cannot enter the run's directory {}: {e}",
            workdir.display()
        )));
    }
    let eng = engine(g, &fan, if undo { "rollback" } else { "resume" })?;
    let r = if undo {
        eng.rollback(req, state, accept).await
    } else {
        eng.resume(req, state, accept).await
    };
    conclude(&fan, r)
}

fn check_unchanged(state: &RunState, pb: &Playbook, accept: bool, id: &str) -> Result<()> {
    if pb.hash == state.meta.playbook_hash {
        return Ok(());
    }
    let old = &state.meta.steps;
    let mut diffs = vec![];
    for s in &pb.steps {
        match old.iter().find(|o| o.id == s.id) {
            None => diffs.push(format!("added `{}`", s.id)),
            Some(o) if o.fingerprint != s.fingerprint => diffs.push(format!("changed `{}`", s.id)),
            _ => {}
        }
    }
    for o in old {
        if !pb.steps.iter().any(|s| s.id == o.id) {
            diffs.push(format!("removed `{}`", o.id));
        }
    }
    if accept {
        return Ok(());
    }
    let what = if diffs.is_empty() {
        "text changed, steps identical".into()
    } else {
        diffs.join(", ")
    };
    Err(Error::invalid(format!(
        "the playbook {} changed since run {id} started ({what}); refusing to continue.\n  hint: pass --accept-changes to continue with the new text",
        state.meta.playbook.display()
    )))
}

fn show_status(g: &Global, run_id: Option<&str>) -> Result<i32> {
    let ids = match run_id {
        Some(id) => vec![id.to_owned()],
        None => status::run_ids(&g.state_dir),
    };
    let mut runs = vec![];
    for id in ids {
        let st = status::load(&g.state_dir, &id).map_err(|e| Error::invalid(format!("{e:#}")))?;
        runs.push(status::summarize(&g.state_dir, &st));
    }
    if g.format == Format::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&runs).map_err(|e| Error::Other(e.into()))?
        );
        return Ok(0);
    }
    if runs.is_empty() {
        println!("no runs in {}", g.state_dir.display());
    }
    let detail = run_id.is_some();
    for r in runs {
        let cur = r
            .current_step
            .as_deref()
            .map(|s| format!(" at {s}"))
            .unwrap_or_default();
        println!(
            "{}  {:<20} {}{cur}  ({})",
            r.run_id, r.state, r.playbook, r.started_at
        );
        if let Some(e) = &r.last_error {
            println!("    error: {e}");
        }
        if let Some(n) = &r.next {
            println!("    next:  {n}");
        }
        if detail {
            for s in &r.steps {
                let st = serde_json::to_value(s.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                println!("    {:<12} {}", st, s.id);
            }
        }
    }
    Ok(0)
}

struct TermPrompter;

impl Prompter for TermPrompter {
    fn interactive(&self) -> bool {
        std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
    }

    fn confirm(&self, question: &str) -> Option<bool> {
        if !self.interactive() {
            return None;
        }
        crate::report::human::suspend(|| {
            eprint!("{question} [y/N] ");
            let _ = std::io::stderr().flush();
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).ok()?;
            Some(matches!(line.trim(), "y" | "Y" | "yes" | "YES"))
        })
    }
}
