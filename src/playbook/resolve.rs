//! Raw tree → `Playbook`: checks every key against what its table allows, interpolates
//! variables, types each step's parameters through its kind, and collects every error
//! before giving up, so `ferry validate` shows them all at once.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::interpolate::{Context, GitCommit, Scope};
use super::model::{OnFailure, Playbook, StepDef};
use crate::error::Error;
use crate::steps::{self, ParamError, Step, StepSpec};
use crate::target::Target;
use crate::util::diagnostic::{Diagnostic, render, render_all};
use crate::util::duration::parse_duration;
use crate::util::parse::{Key, Node, Val, parse};
use crate::util::suggest::did_you_mean;

pub struct Input<'a> {
    pub path: &'a Path,
    /// `--var K=V`, in order; later wins.
    pub cli_vars: &'a [(String, String)],
    pub target: Option<&'a Target>,
    pub run_id: Option<&'a str>,
    /// `validate` accepts a missing required variable (it checks the playbook, not a run).
    pub allow_missing_required: bool,
}

const TOP_KEYS: &[&str] = &["name", "description", "vars", "steps"];
const VAR_KEYS: &[&str] = &["default", "required", "help"];
pub const COMMON_KEYS: &[&str] = &[
    "id",
    "kind",
    "description",
    "timeout",
    "retries",
    "retry_delay",
    "on_failure",
];

pub fn load(input: &Input) -> Result<Playbook, Error> {
    let bytes = std::fs::read(input.path).map_err(|e| {
        Error::invalid(format!(
            "cannot read playbook {}: {e}",
            input.path.display()
        ))
    })?;
    let text = String::from_utf8(bytes)
        .map_err(|_| Error::invalid(format!("{} is not UTF-8", input.path.display())))?;
    let shown = input.path.display().to_string();
    let root = parse(&text).map_err(|ds| Error::Diagnostics(render_all(&shown, &text, &ds)))?;
    let mut r = Resolver {
        text: &text,
        errors: vec![],
        warnings: vec![],
        global: vec![],
    };
    let pb = r.playbook(&root, input);
    let mut out = String::new();
    for g in &r.global {
        out += &format!("error: {g}\n");
    }
    if !r.errors.is_empty() {
        out += &render_all(&shown, &text, &r.errors);
    } else if !r.global.is_empty() {
        out += &format!("\n{} error(s) in {shown}\n", r.global.len());
    }
    if !out.is_empty() {
        return Err(Error::Diagnostics(out));
    }
    let mut pb = pb;
    pb.warnings = r
        .warnings
        .iter()
        .map(|w| render_warning(&shown, &text, w))
        .collect();
    pb.hash = hex::encode(Sha256::digest(text.as_bytes()));
    pb.path = input.path.to_path_buf();
    Ok(pb)
}

struct Resolver<'t> {
    text: &'t str,
    errors: Vec<Diagnostic>,
    /// Not errors: `| raw` in shell or SQL text.
    warnings: Vec<Diagnostic>,
    global: Vec<String>,
}

impl Resolver<'_> {
    fn err(
        &mut self,
        msg: impl Into<String>,
        node_span: std::ops::Range<usize>,
        help: Option<String>,
    ) {
        self.errors.push(Diagnostic::new(msg, node_span).help(help));
    }

    fn unknown_keys(&mut self, table: &Node, allowed: &[&str], what: &str) {
        for (k, _) in table.entries() {
            if !allowed.contains(&k.name.as_str()) {
                let help = did_you_mean(&k.name, allowed.iter().copied());
                self.err(
                    format!("unknown key `{}` in {what}", k.name),
                    k.span.clone(),
                    help,
                );
            }
        }
    }

    fn string(&mut self, table: &Node, key: &str, required: bool) -> Option<String> {
        match table.get(key) {
            Some(n) => match n.as_str() {
                Some(s) => Some(s.to_owned()),
                None => {
                    self.err(
                        format!("`{key}` must be a string, not a {}", n.type_name()),
                        n.span.clone(),
                        None,
                    );
                    None
                }
            },
            None if required => {
                self.err(
                    format!("missing required key `{key}`"),
                    table_head(table),
                    None,
                );
                None
            }
            None => None,
        }
    }

    fn playbook(&mut self, root: &Node, input: &Input) -> Playbook {
        self.unknown_keys(root, TOP_KEYS, "the playbook");
        let name = self.string(root, "name", true).unwrap_or_default();
        let description = self.string(root, "description", false).unwrap_or_default();
        let vars = self.vars(root, input);
        let target_raw = input.target.map(|t| &t.raw);
        let git = input.target.map(|t| GitCommit::new(t.files_root()));
        let scope = Scope {
            vars: &vars,
            target: target_raw,
            run_id: input.run_id,
            git: git.as_ref(),
        };
        let mut steps = vec![];
        match root.get("steps").map(|n| &n.val) {
            Some(Val::Array(items)) => {
                let mut seen = HashSet::new();
                for item in items {
                    if let Some(s) = self.step(item, &scope, &mut seen) {
                        steps.push(s);
                    }
                }
                if items.is_empty() {
                    self.err(
                        "the playbook has no steps",
                        root.get("steps").map_or(0..0, |n| n.span.clone()),
                        None,
                    );
                }
            }
            Some(_) => {
                let n = root.get("steps").map_or(0..0, |n| n.span.clone());
                self.err("`steps` must be an array of tables ([[steps]])", n, None);
            }
            None => self.err("the playbook has no [[steps]]", 0..0, None),
        }
        Playbook {
            name,
            description,
            path: Default::default(),
            hash: String::new(),
            vars,
            steps,
            warnings: vec![],
        }
    }

    fn vars(&mut self, root: &Node, input: &Input) -> BTreeMap<String, String> {
        let mut values = BTreeMap::new();
        let mut required: Vec<(Key, Option<String>)> = vec![];
        if let Some(vars) = root.get("vars") {
            for (k, v) in vars.entries() {
                match &v.val {
                    Val::Table(_) => {
                        self.unknown_keys(v, VAR_KEYS, &format!("variable `{}`", k.name));
                        let help = self.string(v, "help", false);
                        if let Some(d) = v.get("default") {
                            values.insert(k.name.clone(), scalar(d).unwrap_or_default());
                        }
                        if matches!(v.get("required").map(|n| &n.val), Some(Val::Bool(true))) {
                            required.push((k.clone(), help));
                        }
                    }
                    Val::Array(_) => self.err(
                        "a variable is a single value or a table",
                        v.span.clone(),
                        None,
                    ),
                    _ => {
                        values.insert(k.name.clone(), scalar(v).unwrap_or_default());
                    }
                }
            }
        }
        let declared: Vec<String> = root.get("vars").map_or(vec![], |v| {
            v.entries().iter().map(|(k, _)| k.name.clone()).collect()
        });
        for (k, v) in input.cli_vars {
            if !declared.contains(k) {
                let help = did_you_mean(k, declared.iter().map(String::as_str));
                let help = help.map(|h| format!(" ({h})")).unwrap_or_default();
                self.global.push(format!(
                    "--var {k}: the playbook declares no variable `{k}`{help}"
                ));
            }
            values.insert(k.clone(), v.clone());
        }
        for (k, help) in required {
            if !values.contains_key(&k.name) {
                if input.allow_missing_required {
                    values.insert(k.name.clone(), format!("<{}>", k.name));
                } else {
                    let help = help.map(|h| format!("pass --var {}=… ({h})", k.name));
                    self.err(
                        format!("variable `{}` is required", k.name),
                        k.span.clone(),
                        help,
                    );
                }
            }
        }
        values
    }

    fn step(&mut self, item: &Node, scope: &Scope, seen: &mut HashSet<String>) -> Option<StepDef> {
        if !matches!(item.val, Val::Table(_)) {
            self.err("each step must be a table", item.span.clone(), None);
            return None;
        }
        let before = self.errors.len();
        let id = self.string(item, "id", true);
        if let (Some(id), Some(n)) = (&id, item.get("id")) {
            if !is_kebab(id) {
                self.err(
                    format!("step id `{id}` must be kebab-case (a-z, 0-9, -)"),
                    n.span.clone(),
                    None,
                );
            } else if !seen.insert(id.clone()) {
                self.err(format!("duplicate step id `{id}`"), n.span.clone(), None);
            }
        }
        let kind = self.string(item, "kind", true)?;
        let kind_span = item
            .get("kind")
            .map_or(item.span.clone(), |n| n.span.clone());
        let Some(kind_keys) = steps::kind_keys(&kind) else {
            let help = did_you_mean(&kind, steps::KINDS.iter().map(|(k, _)| *k));
            self.err(format!("unknown step kind `{kind}`"), kind_span, help);
            return None;
        };
        let allowed: Vec<&str> = COMMON_KEYS.iter().chain(kind_keys).copied().collect();
        let what = match &id {
            Some(id) => format!("step `{id}` ({kind})"),
            None => format!("this {kind} step"),
        };
        self.unknown_keys(item, &allowed, &what);
        // Interpolate every string, then type the parameters.
        let expanded = self.expand(item, &kind, scope);
        let common = |k: &str| expanded.get(k).and_then(|v| v.as_str().map(str::to_owned));
        let mut dur = |key: &str| -> Option<std::time::Duration> {
            let s = common(key)?;
            match parse_duration(&s) {
                Ok(d) => Some(d),
                Err(e) => {
                    let span = item.get(key).map_or(item.span.clone(), |n| n.span.clone());
                    self.err(e, span, None);
                    None
                }
            }
        };
        let timeout = dur("timeout");
        let retry_delay = dur("retry_delay").unwrap_or(std::time::Duration::from_secs(5));
        let retries = match item.get("retries").map(|n| (&n.val, n.span.clone())) {
            Some((Val::Int(n), _)) if *n >= 0 => *n as u32,
            Some((_, span)) => {
                self.err("`retries` must be a non-negative integer", span, None);
                0
            }
            None => 0,
        };
        let on_failure = match common("on_failure").as_deref() {
            None | Some("rollback") => OnFailure::Rollback,
            Some("stop") => OnFailure::Stop,
            Some(other) => {
                let span = item
                    .get("on_failure")
                    .map_or(item.span.clone(), |n| n.span.clone());
                let help = did_you_mean(other, ["rollback", "stop"]);
                self.err(
                    format!("`on_failure` must be \"rollback\" or \"stop\", not `{other}`"),
                    span,
                    help,
                );
                OnFailure::Rollback
            }
        };
        let mut params = expanded.clone();
        // Common keys are the engine's; unknown ones were reported above.
        params.retain(|k, _| kind_keys.contains(&k));
        let spec = match StepSpec::from_toml(&kind, params.clone()) {
            Ok(spec) => Some(spec),
            Err(ParamError::Invalid(e)) => {
                let span = key_in_message(&e, item).unwrap_or(kind_span.clone());
                self.err(format!("invalid `{kind}` step: {e}"), span, None);
                None
            }
            Err(ParamError::Duration { key, message }) => {
                let span = item.get(&key).map_or(kind_span.clone(), |n| n.span.clone());
                self.err(message, span, None);
                None
            }
        };
        if let Some(spec) = &spec {
            for (key, msg) in spec.validate() {
                let span = key
                    .and_then(|k| item.get(k))
                    .map(|n| element_named(n, &msg).unwrap_or(n))
                    .map_or(kind_span.clone(), |n| n.span.clone());
                self.err(msg, span, None);
            }
        }
        if self.errors.len() > before {
            return None;
        }
        let id = id?;
        let fp_src = serde_json::json!({
            "kind": kind, "params": params, "timeout": timeout.map(|d| d.as_millis() as u64),
            "retries": retries, "retry_delay": retry_delay.as_millis() as u64, "on_failure": on_failure,
        });
        let fingerprint = hex::encode(Sha256::digest(fp_src.to_string().as_bytes()));
        Some(StepDef {
            id,
            kind,
            description: common("description"),
            timeout,
            retries,
            retry_delay,
            on_failure,
            spec: spec?,
            fingerprint,
        })
    }

    /// The step table with `{{ … }}` expanded in every string, each top-level key in its
    /// kind's context (shell, SQL or plain), errors located in the file.
    fn expand(&mut self, node: &Node, kind: &str, scope: &Scope) -> toml::Table {
        node.entries()
            .iter()
            .map(|(k, v)| {
                let ctx = steps::text_context(kind, &k.name);
                (k.name.clone(), self.expand_value(v, ctx, scope))
            })
            .collect()
    }

    fn expand_value(&mut self, node: &Node, ctx: Context, scope: &Scope) -> toml::Value {
        match &node.val {
            Val::Str(s) => {
                let raw = &self.text[node.span.clone()];
                let start = node.span.start;
                let whole = node.span.clone();
                let locate = |r: std::ops::Range<usize>| {
                    let needle = &s[r];
                    raw.find(needle)
                        .map_or(whole.clone(), |i| start + i..start + i + needle.len())
                };
                toml::Value::String(scope.expand_in(
                    s,
                    ctx,
                    &locate,
                    &mut self.errors,
                    &mut self.warnings,
                ))
            }
            Val::Array(a) => {
                toml::Value::Array(a.iter().map(|n| self.expand_value(n, ctx, scope)).collect())
            }
            Val::Table(t) => toml::Value::Table(
                t.iter()
                    .map(|(k, v)| (k.name.clone(), self.expand_value(v, ctx, scope)))
                    .collect(),
            ),
            _ => node.to_toml(),
        }
    }
}

/// A warning shown like an error (`file:line:col`, the line, a caret) but not failing.
fn render_warning(path: &str, text: &str, d: &Diagnostic) -> String {
    let r = render(path, text, d);
    match r.strip_prefix("error: ") {
        Some(rest) => format!("warning: {rest}"),
        None => r,
    }
}

fn scalar(n: &Node) -> Option<String> {
    match &n.val {
        Val::Str(s) => Some(s.clone()),
        Val::Int(i) => Some(i.to_string()),
        Val::Float(f) => Some(f.to_string()),
        Val::Bool(b) => Some(b.to_string()),
        Val::Datetime(d) => Some(d.clone()),
        _ => None,
    }
}

fn is_kebab(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// The first line of a table: where "missing key" errors point.
fn table_head(n: &Node) -> std::ops::Range<usize> {
    n.entries()
        .first()
        .map_or(n.span.clone(), |(k, _)| k.span.clone())
}

/// serde names the offending field in backticks; point at that key when the step has it.
fn key_in_message(msg: &str, item: &Node) -> Option<std::ops::Range<usize>> {
    msg.split('`')
        .skip(1)
        .step_by(2)
        .find_map(|k| item.get(k).map(|n| n.span.clone()))
}

/// In an array (`tags = [...]`), the element a message names as `` `value` ``, so that the
/// error points at it rather than at the whole array.
fn element_named<'a>(n: &'a Node, msg: &str) -> Option<&'a Node> {
    match &n.val {
        Val::Array(items) => items
            .iter()
            .find(|e| e.as_str().is_some_and(|s| msg.contains(&format!("`{s}`")))),
        _ => None,
    }
}
