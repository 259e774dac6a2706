//! Subcommand → validated request → engine and reporters. The only module that knows about
//! both the command line and the engine.

use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::Arc;

use clap::CommandFactory;

use crate::cli::{Cli, Color, Command, Format, Global, IgCommand, PlaybookArgs, SandboxCommand};
use crate::engine::signal::{self, Stop};
use crate::engine::{self, Engine, RunRequest, status};
use crate::error::{Error, Result, code};
use crate::playbook::{self, Playbook};
use crate::report::human::HumanReporter;
use crate::report::json::JsonReporter;
use crate::report::junit::JunitReporter;
use crate::report::prompt::TermPrompter;
use crate::report::view::{self, View};
use crate::report::views::check::{CheckInfo, CheckList, CheckView};
use crate::report::views::status::StatusView;
use crate::report::views::unlock::UnlockView;
use crate::report::views::validate::{ValidTarget, ValidateView};
use crate::report::{Event, Fanout, Level, Reporter, Sink};
use crate::steps::Approvals;
use crate::target::Target;

pub async fn main(cli: Cli) -> Result<i32> {
    match cli.global.color {
        Color::Always => console::set_colors_enabled_stderr(true),
        Color::Never => console::set_colors_enabled_stderr(false),
        Color::Auto => {}
    }
    let g = &cli.global;
    if matches!(g.format, Format::Html | Format::Md)
        && !matches!(cli.command, Command::Report { .. })
    {
        return Err(Error::invalid(
            "--format html and --format md are for `ferry report`; use human or json here",
        ));
    }
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
                None => status::newest_unfinished(&g.state_dir)
                    .map_err(|e| match e {
                        status::LoadError::Corrupt { ref path, .. } => Error::invalid_with_hint(
                            format!("{e}; the newest run is corrupt, so `ferry resume` picks none"),
                            format!(
                                "{}; to resume an older run, name it: `ferry resume RUN_ID` (see `ferry status`)",
                                status::LoadError::inspect_hint(path)
                            ),
                        ),
                        e => load_error(e),
                    })?
                    .ok_or_else(|| {
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
        Command::Report { run_id, output } => report(g, run_id, output.as_deref()),
        Command::Unlock { target, force } => {
            let state_dir = engine::lock::unlock(&g.state_dir)?;
            let database = match load_target(target.as_deref())? {
                Some(t) => {
                    t.register_secrets();
                    Some(engine::lock::unlock_pg(&t, *force).await?)
                }
                None => None,
            };
            show(
                g,
                &UnlockView {
                    state_dir,
                    database,
                },
            )?;
            Ok(code::DONE)
        }
        Command::Ig(cmd) => ig(g, cmd),
        Command::Sandbox(cmd) => sandbox(g, cmd).await,
        Command::Check { name, target, set } => {
            check_cmd(g, name.as_deref(), target.as_deref(), set).await
        }
        Command::Doctor { target, timeout } => doctor(g, target, *timeout).await,
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "ferry", &mut std::io::stdout());
            Ok(0)
        }
        Command::Man { dir } => man(dir.as_deref()),
    }
}

/// `ferry man [DIR]`: the pages clap_mangen renders from `Cli` (hidden commands left out).
fn man(dir: Option<&Path>) -> Result<i32> {
    // As generate_to does: no `help` subcommand listed, it has no page of its own.
    let cmd = Cli::command().disable_help_subcommand(true);
    let written = match dir {
        Some(dir) => std::fs::create_dir_all(dir)
            .and_then(|()| clap_mangen::generate_to(cmd, dir))
            .map_err(|e| anyhow::anyhow!("cannot write the man pages to {}: {e}", dir.display())),
        None => clap_mangen::Man::new(cmd)
            .render(&mut std::io::stdout().lock())
            .map_err(|e| anyhow::anyhow!("cannot write the man page: {e}")),
    };
    written.map(|()| 0).map_err(Error::Other)
}

/// Prints a command's answer in the chosen `--format`.
fn show(g: &Global, v: &impl View) -> Result<()> {
    let format = match g.format {
        Format::Human | Format::Html | Format::Md => view::Format::Human,
        Format::Json => view::Format::Json,
    };
    view::print(v, format).map_err(|e| Error::Other(e.into()))
}

fn ig(g: &Global, cmd: &IgCommand) -> Result<i32> {
    use crate::ig::{Limits, diff_files, read_package};
    use crate::report::views::ig::{DiffView, InspectView};
    let limits = |max_bytes: u64| Limits {
        max_bytes,
        ..Default::default()
    };
    match cmd {
        IgCommand::Inspect { package, max_bytes } => {
            let p = read_package(package, &limits(*max_bytes)).map_err(Error::invalid)?;
            show(g, &InspectView(&p))?;
        }
        IgCommand::Diff {
            old,
            new,
            max_bytes,
        } => {
            let d = diff_files(old, new, &limits(*max_bytes)).map_err(Error::invalid)?;
            show(g, &DiffView(&d))?;
        }
    }
    Ok(code::DONE)
}

async fn check_cmd(
    g: &Global,
    name: Option<&str>,
    target: Option<&Path>,
    set: &[String],
) -> Result<i32> {
    use crate::checks::{self, CheckCx, Params};
    let Some(name) = name else {
        let list = checks::CHECKS
            .iter()
            .map(|&(name, keys, description)| CheckInfo {
                name,
                keys,
                description,
            })
            .collect();
        show(g, &CheckList(list))?;
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
    let code = report.status.exit_code();
    show(
        g,
        &CheckView {
            report,
            verbose: g.verbose,
        },
    )?;
    Ok(code)
}

/// `ferry doctor`: a target that does not parse is explained like any other (exit 2).
async fn doctor(g: &Global, target: &Path, timeout: std::time::Duration) -> Result<i32> {
    let target = Target::load(target)?;
    target.register_secrets();
    let v = crate::doctor::run(&target, timeout).await;
    show(g, &v)?;
    Ok(if v.ok { code::DONE } else { code::PRECONDITION })
}

async fn sandbox(g: &Global, cmd: &SandboxCommand) -> Result<i32> {
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
            resources,
            stack,
        } => {
            let labels = parse_vars(labels)?;
            let opts = sandbox::UpOptions {
                dir: dir.clone(),
                replicas: *replicas,
                standin: standin.clone(),
                labels,
                resources: *resources,
                stack: *stack,
            };
            show(g, &sandbox::up(&opts).await.map_err(fail)?)?;
            Ok(code::DONE)
        }
        SandboxCommand::Down { dir } => {
            show(g, &sandbox::down(dir).await.map_err(fail)?)?;
            Ok(code::DONE)
        }
        SandboxCommand::Status { dir } => {
            let status = sandbox::status(dir).await.map_err(fail)?;
            show(g, &status)?;
            Ok(if status.ok { code::DONE } else { code::FAILED })
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

fn validate(g: &Global, a: &PlaybookArgs) -> Result<i32> {
    let target = load_target(a.target.as_deref())?;
    let vars = parse_vars(&a.vars)?;
    let pb = load_playbook(&a.playbook, &vars, target.as_deref(), None, true)?;
    show(
        g,
        &ValidateView {
            playbook: a.playbook.display().to_string(),
            steps: pb.steps.len(),
            target: target.as_ref().map(|t| ValidTarget {
                path: t.path.display().to_string(),
                summary: t.summary(),
            }),
            warnings: pb.warnings.clone(),
        },
    )?;
    Ok(code::DONE)
}

fn plan(g: &Global, a: &PlaybookArgs) -> Result<i32> {
    let target = load_target(a.target.as_deref())?;
    let vars = parse_vars(&a.vars)?;
    let pb = load_playbook(&a.playbook, &vars, target.as_deref(), None, false)?;
    show(g, &crate::plan::view(&pb, target.as_deref()))?;
    Ok(code::DONE)
}

fn sink(g: &Global) -> Arc<Fanout> {
    let mut rs: Vec<Box<dyn Reporter>> = vec![];
    match g.format {
        Format::Human | Format::Html | Format::Md => {
            rs.push(Box::new(HumanReporter::new(g.quiet, g.verbose)))
        }
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
        fan.emit(Event::log(None, Level::Warn, w));
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
    let state = status::load(&g.state_dir, id).map_err(load_error)?;
    let m = &state.meta;
    let target = load_target(m.target.as_deref())?;
    let mut path = m.playbook.clone();
    if !path.exists() {
        // The playbook moved or was deleted: the copy taken at the start is the same text.
        path = g.state_dir.join("runs").join(id).join("playbook.toml");
    }
    let pb = load_playbook(&path, &m.cli_vars, target.as_deref(), Some(id), false)?;
    engine::check_unchanged(&state, &pb, target.as_deref(), accept)?;
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

/// A run that cannot be loaded: nothing runs (exit 2); a corrupt one says how to inspect it.
fn load_error(e: status::LoadError) -> Error {
    match &e {
        status::LoadError::Corrupt { path, .. } => {
            Error::invalid_with_hint(format!("{e}"), status::LoadError::inspect_hint(path))
        }
        _ => Error::invalid(format!("{e:#}")),
    }
}

fn show_status(g: &Global, run_id: Option<&str>) -> Result<i32> {
    let ids = match run_id {
        Some(id) => vec![id.to_owned()],
        None => status::run_ids(&g.state_dir),
    };
    let mut runs = vec![];
    for id in ids {
        match status::load(&g.state_dir, &id) {
            Ok(st) => runs.push(status::summarize(&g.state_dir, &st)),
            // A corrupt run is listed as such; it does not hide the others.
            Err(e) => match status::summarize_corrupt(&g.state_dir, &e) {
                Some(s) => runs.push(s),
                None => return Err(load_error(e)),
            },
        }
    }
    show(
        g,
        &StatusView {
            state_dir: g.state_dir.display().to_string(),
            runs,
            detail: run_id.is_some(),
        },
    )?;
    Ok(code::DONE)
}

/// `ferry report RUN_ID`: the run's change record, from its journal (a corrupt or unfinished
/// run gives a record that says so; only a missing run is an error, exit 2).
fn report(g: &Global, run_id: &str, output: Option<&Path>) -> Result<i32> {
    use crate::report::record::{self, Kind};
    let kind = match g.format {
        Format::Md => Kind::Markdown,
        Format::Json => Kind::Json,
        Format::Human | Format::Html => Kind::Html,
    };
    let rec = engine::history::load(&g.state_dir, run_id).map_err(load_error)?;
    // The target's secrets, so that the redactor masks them wherever they were quoted (best
    // effort: the record is still written when the file is gone or a variable is not set).
    if let Some(t) = rec
        .target
        .as_ref()
        .and_then(|t| Target::load(Path::new(&t.path)).ok())
    {
        t.register_secrets();
    }
    let doc = record::render(&rec, kind);
    let default = format!("ferry-report-{run_id}.{}", kind.extension());
    let dest = output.unwrap_or(Path::new(&default));
    record::write(&doc, dest).map_err(|e| {
        Error::Other(anyhow::anyhow!(
            "cannot write the report to {}: {e}",
            dest.display()
        ))
    })?;
    Ok(code::DONE)
}
