//! `{{ name }}` interpolation. Names are playbook variables, `target.<path>` (a scalar in the
//! target file), `run.id`, `git.commit` (short HEAD of the target's `files.root`). Unknown
//! names are errors located at the `{{` that uses them.

use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;

use crate::util::diagnostic::Diagnostic;
use crate::util::suggest::did_you_mean;

pub struct Scope<'a> {
    pub vars: &'a BTreeMap<String, String>,
    /// None while validating without a target: `target.*` names are then accepted unchecked.
    pub target: Option<&'a toml::Value>,
    /// None while validating or planning: `run.id` renders as `<run-id>`.
    pub run_id: Option<&'a str>,
    /// None without a target: `git.commit` renders as `<git.commit>`.
    pub git: Option<&'a GitCommit>,
}

/// `{{ git.commit }}`: `git -C ROOT rev-parse --short HEAD`, run once and only when used,
/// so a files root that is not a git checkout is an error only for playbooks that ask.
pub struct GitCommit {
    root: Option<PathBuf>,
    value: OnceCell<Result<String, String>>,
}

impl GitCommit {
    pub fn new(root: Option<PathBuf>) -> Self {
        GitCommit {
            root,
            value: OnceCell::new(),
        }
    }

    fn get(&self) -> Result<String, String> {
        self.value
            .get_or_init(|| {
                let Some(root) = &self.root else {
                    return Err("`git.commit` needs a target with [files] root".into());
                };
                let out = std::process::Command::new("git")
                    .arg("-C")
                    .arg(root)
                    .args(["rev-parse", "--short", "HEAD"])
                    .stdin(std::process::Stdio::null())
                    .output()
                    .map_err(|e| format!("`git.commit`: cannot run git: {e}"))?;
                if !out.status.success() {
                    return Err(format!(
                        "`git.commit`: {} is not a git checkout with a commit ({})",
                        root.display(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
                Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
            })
            .clone()
    }
}

/// One `{{ … }}` occurrence: the byte range in the string and the trimmed name.
pub fn placeholders(s: &str) -> Vec<(Range<usize>, String)> {
    let mut out = vec![];
    let mut from = 0;
    while let Some(open) = s[from..].find("{{").map(|i| i + from) {
        let Some(close) = s[open + 2..].find("}}").map(|i| i + open + 2) else {
            break;
        };
        out.push((open..close + 2, s[open + 2..close].trim().to_owned()));
        from = close + 2;
    }
    out
}

impl Scope<'_> {
    pub fn lookup(&self, name: &str) -> Result<String, (String, Option<String>)> {
        if let Some(v) = self.vars.get(name) {
            return Ok(v.clone());
        }
        if name == "run.id" {
            return Ok(self.run_id.unwrap_or("<run-id>").to_owned());
        }
        if name == "git.commit" {
            return match self.git {
                Some(g) => g.get().map_err(|e| (e, None)),
                None => Ok("<git.commit>".to_owned()),
            };
        }
        if let Some(path) = name.strip_prefix("target.") {
            let Some(t) = self.target else {
                return Ok(format!("<{name}>"));
            };
            let mut cur = t;
            for part in path.split('.') {
                match cur.get(part) {
                    Some(v) => cur = v,
                    None => {
                        let keys = cur
                            .as_table()
                            .map(|t| t.keys().cloned().collect::<Vec<_>>());
                        let help =
                            keys.and_then(|k| did_you_mean(part, k.iter().map(String::as_str)));
                        return Err((format!("the target has no `{path}`"), help));
                    }
                }
            }
            return match cur {
                toml::Value::String(s) => Ok(s.clone()),
                toml::Value::Table(_) | toml::Value::Array(_) => Err((
                    format!("`{name}` is a table or array, not a single value"),
                    None,
                )),
                other => Ok(other.to_string()),
            };
        }
        let mut candidates: Vec<&str> = self.vars.keys().map(String::as_str).collect();
        candidates.push("run.id");
        candidates.push("git.commit");
        let help = did_you_mean(name, candidates);
        Err((format!("unknown variable `{name}`"), help))
    }

    /// `name | filter | …`: `basename` (last path segment), `ig_version` / `ig_id` (read from
    /// the IG package at that path, so a playbook needs only the package's path). The
    /// quoting filters `ident` and `raw` are not applied here (see `split_quoting`).
    pub fn lookup_filtered(&self, expr: &str) -> Result<String, (String, Option<String>)> {
        let mut parts = expr.split('|').map(str::trim);
        let mut v = self.lookup(parts.next().unwrap_or(""))?;
        for f in parts {
            v = match f {
                "basename" => v.rsplit('/').next().unwrap_or(&v).to_owned(),
                // A placeholder (validate, or a value not given yet) stays one.
                "ig_version" | "ig_id" if v.starts_with('<') => format!("<{f}>"),
                "ig_version" | "ig_id" => {
                    let pkg =
                        crate::ig::read_package(std::path::Path::new(&v), &Default::default())
                            .map_err(|e| (format!("`{f}`: {e}"), None))?;
                    if f == "ig_version" {
                        pkg.version.to_string()
                    } else {
                        pkg.id
                    }
                }
                "ident" | "raw" => {
                    return Err((format!("`{f}` must be the last filter"), None));
                }
                other => {
                    let help = did_you_mean(other, FILTERS.iter().copied());
                    return Err((format!("unknown filter `{other}`"), help));
                }
            };
        }
        Ok(v)
    }

    /// Plain insertion everywhere (keys that are neither shell nor SQL text).
    #[cfg(test)]
    pub fn expand(
        &self,
        s: &str,
        locate: &dyn Fn(Range<usize>) -> Range<usize>,
        errors: &mut Vec<Diagnostic>,
    ) -> String {
        self.expand_in(s, Context::Plain, locate, errors, &mut vec![])
    }

    /// Expands every placeholder of `s`, quoted for `ctx`; `locate` maps a range inside `s`
    /// to a span in the file. `| raw` in shell or SQL text is a warning at its location.
    pub fn expand_in(
        &self,
        s: &str,
        ctx: Context,
        locate: &dyn Fn(Range<usize>) -> Range<usize>,
        errors: &mut Vec<Diagnostic>,
        warnings: &mut Vec<Diagnostic>,
    ) -> String {
        let mut out = String::with_capacity(s.len());
        let mut last = 0;
        for (range, expr) in placeholders(s) {
            out.push_str(&s[last..range.start]);
            last = range.end;
            let (expr, quoting) = split_quoting(&expr);
            let mut fail = |msg: String, help: Option<String>| {
                errors.push(Diagnostic::new(msg, locate(range.clone())).help(help))
            };
            match (quoting, ctx) {
                (Some(Quoting::Ident), Context::Shell | Context::Plain) => {
                    fail(
                        "`ident` quotes an SQL identifier: it only applies in SQL text".into(),
                        None,
                    );
                    continue;
                }
                (Some(Quoting::Raw), Context::Shell | Context::Sql) => {
                    warnings.push(
                        Diagnostic::new(
                            format!(
                                "`{expr} | raw` is pasted unquoted into {}: its value can change the command",
                                ctx.what()
                            ),
                            locate(range.clone()),
                        )
                        .help(Some("only for values you trust, never for a --var from outside".into())),
                    );
                }
                (None | Some(Quoting::Ident), Context::Shell | Context::Sql) => {
                    if let Some(q) = ctx.inside_quotes(s, range.start) {
                        fail(
                            format!(
                                "`{{{{ {expr} }}}}` is inside {q} in {}: ferry quotes the value itself",
                                ctx.what()
                            ),
                            Some("remove the quotes around it".into()),
                        );
                        continue;
                    }
                }
                _ => {}
            }
            let v = match self.lookup_filtered(expr) {
                Ok(v) => v,
                Err((msg, help)) => {
                    fail(msg, help);
                    continue;
                }
            };
            let quoted = match (quoting, ctx) {
                (Some(Quoting::Raw), _) | (None, Context::Plain) => Ok(v),
                (Some(Quoting::Ident), _) => sql_ident(&v),
                (None, Context::Shell) => shell_quote(&v),
                (None, Context::Sql) => sql_literal(&v),
            };
            match quoted {
                Ok(q) => out.push_str(&q),
                Err(msg) => fail(format!("`{expr}`: {msg}"), None),
            }
        }
        out.push_str(&s[last..]);
        out
    }
}

/// Every filter a placeholder may name.
pub const FILTERS: &[&str] = &["basename", "ig_version", "ig_id", "ident", "raw"];

/// What a string key is, for `{{ … }}`: decided per step kind and key in
/// `steps::text_context`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// Paths, URLs, image tags, messages: the value as it is.
    Plain,
    /// Text given to `sh -c`: the value single-quoted.
    Shell,
    /// SQL text: the value as a string literal; `| ident` as an identifier.
    Sql,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quoting {
    Ident,
    Raw,
}

/// `name | … | ident` → (`name | …`, Ident); the quoting filter must come last.
fn split_quoting(expr: &str) -> (&str, Option<Quoting>) {
    if let Some((head, last)) = expr.rsplit_once('|') {
        let q = match last.trim() {
            "ident" => Some(Quoting::Ident),
            "raw" => Some(Quoting::Raw),
            _ => None,
        };
        if q.is_some() {
            return (head.trim(), q);
        }
    }
    (expr, None)
}

impl Context {
    fn what(self) -> &'static str {
        match self {
            Context::Plain => "text",
            Context::Shell => "a shell command",
            Context::Sql => "SQL",
        }
    }

    /// The kind of quotes `s[..at]` leaves open, if any: a quoted value inside them would
    /// be unquoted again (or worse, expanded by `"…"`).
    fn inside_quotes(self, s: &str, at: usize) -> Option<&'static str> {
        let b = &s.as_bytes()[..at];
        let mut i = 0;
        match self {
            Context::Plain => None,
            Context::Shell => {
                let mut open: Option<u8> = None;
                while i < b.len() {
                    match (open, b[i]) {
                        (None | Some(b'"'), b'\\') => i += 1,
                        (None, q @ (b'\'' | b'"')) => open = Some(q),
                        (None, b'#') if i == 0 || b" \t\n;&|(".contains(&b[i - 1]) => {
                            match b[i..].iter().position(|&c| c == b'\n') {
                                Some(n) => i += n,
                                None => return Some("a comment"),
                            }
                        }
                        (Some(q), c) if c == q => open = None,
                        _ => {}
                    }
                    i += 1;
                }
                match open {
                    Some(b'\'') => Some("single quotes"),
                    Some(_) => Some("double quotes"),
                    None => None,
                }
            }
            Context::Sql => {
                while i < b.len() {
                    match b[i] {
                        q @ (b'\'' | b'"') => match b[i + 1..].iter().position(|&c| c == q) {
                            Some(n) => i += n + 1,
                            None if q == b'\'' => return Some("a string literal"),
                            None => return Some("a quoted identifier"),
                        },
                        b'-' if b.get(i + 1) == Some(&b'-') => {
                            match b[i..].iter().position(|&c| c == b'\n') {
                                Some(n) => i += n,
                                None => return Some("a comment"),
                            }
                        }
                        b'/' if b.get(i + 1) == Some(&b'*') => match s[i + 2..at].find("*/") {
                            Some(n) => i += n + 3,
                            None => return Some("a comment"),
                        },
                        b'$' => {
                            let tag_len = b[i + 1..]
                                .iter()
                                .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_'));
                            if let Some(n) = tag_len
                                && b[i + 1 + n] == b'$'
                                && !b[i + 1].is_ascii_digit()
                            {
                                let tag = &s[i..i + n + 2];
                                match s[i + n + 2..at].find(tag) {
                                    Some(m) => i += n + 2 + m + tag.len() - 1,
                                    None => return Some("a dollar-quoted string"),
                                }
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
                None
            }
        }
    }
}

/// `'…'` for `sh`, each `'` as `'\''`.
pub fn shell_quote(v: &str) -> Result<String, String> {
    if v.contains('\0') {
        return Err("a NUL byte cannot be part of a shell command".into());
    }
    Ok(format!("'{}'", v.replace('\'', "'\\''")))
}

/// An SQL string literal: `'…'` with `''` (standard_conforming_strings); a value with a
/// backslash becomes `E'…'` with `\\` too, which reads the same whatever that setting is.
pub fn sql_literal(v: &str) -> Result<String, String> {
    if v.contains('\0') {
        return Err("PostgreSQL text cannot hold a NUL byte".into());
    }
    let body = v.replace('\'', "''");
    Ok(if v.contains('\\') {
        format!("E'{}'", body.replace('\\', "\\\\"))
    } else {
        format!("'{body}'")
    })
}

/// An SQL identifier: `"…"` with `""`.
pub fn sql_ident(v: &str) -> Result<String, String> {
    if v.contains('\0') {
        return Err("PostgreSQL identifiers cannot hold a NUL byte".into());
    }
    if v.is_empty() {
        return Err("an identifier cannot be empty".into());
    }
    Ok(format!("\"{}\"", v.replace('"', "\"\"")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_vars_target_and_run_id() {
        let vars = BTreeMap::from([("greeting".to_owned(), "hello".to_owned())]);
        let target: toml::Value = toml::from_str("[files]\nroot = \"/opt/x\"\n").unwrap();
        let scope = Scope {
            vars: &vars,
            target: Some(&target),
            run_id: Some("r1"),
            git: None,
        };
        let mut errs = vec![];
        let out = scope.expand(
            "{{greeting}} {{ target.files.root }} {{ run.id }}",
            &|r| r,
            &mut errs,
        );
        assert_eq!(out, "hello /opt/x r1");
        assert!(errs.is_empty());
        scope.expand("{{ greting }} {{ target.files.rot }}", &|r| r, &mut errs);
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0].help.as_deref(), Some("did you mean `greeting`?"));
        assert_eq!(errs[0].span, 0..13);
        assert_eq!(errs[1].help.as_deref(), Some("did you mean `root`?"));
    }

    #[test]
    fn git_commit_only_fails_when_used() {
        let vars = BTreeMap::new();
        let dir = tempfile::tempdir().unwrap();
        let git = GitCommit::new(Some(dir.path().to_path_buf()));
        let scope = Scope {
            vars: &vars,
            target: None,
            run_id: None,
            git: Some(&git),
        };
        let mut errs = vec![];
        assert_eq!(
            scope.expand("no placeholder", &|r| r, &mut errs),
            "no placeholder"
        );
        assert!(errs.is_empty());
        scope.expand("{{ git.commit }}", &|r| r, &mut errs);
        assert!(
            errs[0].message.contains("not a git checkout"),
            "{}",
            errs[0].message
        );
        let no_root = GitCommit::new(None);
        let scope = Scope {
            git: Some(&no_root),
            ..scope
        };
        let mut errs = vec![];
        scope.expand("{{ git.commit }}", &|r| r, &mut errs);
        assert!(errs[0].message.contains("[files] root"));
        let scope = Scope { git: None, ..scope };
        assert_eq!(
            scope.expand("{{ git.commit }}", &|r| r, &mut errs),
            "<git.commit>"
        );
    }

    fn expand_ctx(s: &str, ctx: Context, value: &str) -> (String, Vec<Diagnostic>, usize) {
        let vars = BTreeMap::from([("x".to_owned(), value.to_owned())]);
        let scope = Scope {
            vars: &vars,
            target: None,
            run_id: None,
            git: None,
        };
        let (mut errs, mut warns) = (vec![], vec![]);
        let out = scope.expand_in(s, ctx, &|r| r, &mut errs, &mut warns);
        (out, errs, warns.len())
    }

    #[test]
    fn quoting_primitives() {
        assert_eq!(shell_quote("hello").unwrap(), "'hello'");
        assert_eq!(shell_quote("it's").unwrap(), r"'it'\''s'");
        assert_eq!(shell_quote("").unwrap(), "''");
        assert!(shell_quote("a\0b").is_err());
        assert_eq!(sql_literal("x'); DROP").unwrap(), "'x''); DROP'");
        assert_eq!(sql_literal(r"a\b'").unwrap(), r"E'a\\b'''");
        assert!(sql_literal("a\0").is_err());
        assert_eq!(sql_ident(r#"My "T""#).unwrap(), r#""My ""T""""#);
        assert!(sql_ident("").is_err());
        assert!(sql_ident("\0").is_err());
    }

    #[test]
    fn shell_values_stay_one_word() {
        let evil = "x; touch pwned";
        let (out, errs, _) = expand_ctx("echo {{ x }} >> g.txt", Context::Shell, evil);
        assert!(errs.is_empty());
        assert_eq!(out, "echo 'x; touch pwned' >> g.txt");
        let (out, _, _) = expand_ctx("echo {{x}}", Context::Shell, "a'b");
        assert_eq!(out, r"echo 'a'\''b'");
        // sh itself agrees: the value comes back byte for byte.
        for v in [
            "x; touch pwned",
            "a'b",
            "$(id)",
            "`id`",
            "\\ \" \n *",
            "--",
            "''",
        ] {
            let (cmd, _, _) = expand_ctx("printf %s {{ x }}", Context::Shell, v);
            let got = std::process::Command::new("sh")
                .args(["-c", &cmd])
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&got.stdout), v, "{cmd}");
        }
        // Plain keys keep the value as it is.
        let (out, _, _) = expand_ctx("/tmp/{{ x }}", Context::Plain, "a b");
        assert_eq!(out, "/tmp/a b");
    }

    #[test]
    fn sql_values_are_literals_and_idents() {
        let evil = "x'); DROP TABLE important; --";
        let (out, errs, _) = expand_ctx("INSERT INTO notes VALUES ({{ x }})", Context::Sql, evil);
        assert!(errs.is_empty());
        assert_eq!(
            out,
            "INSERT INTO notes VALUES ('x''); DROP TABLE important; --')"
        );
        let (out, errs, _) = expand_ctx("SELECT * FROM {{ x | ident }}", Context::Sql, "a\"b");
        assert!(errs.is_empty());
        assert_eq!(out, r#"SELECT * FROM "a""b""#);
        let (_, errs, _) = expand_ctx("SELECT {{ x }}", Context::Sql, "a\0");
        assert!(errs[0].message.contains("NUL"), "{}", errs[0].message);
    }

    #[test]
    fn raw_warns_and_unknown_filters_fail() {
        let (out, errs, warns) = expand_ctx("echo {{ x | raw }}", Context::Shell, "a; b");
        assert_eq!((out.as_str(), errs.len(), warns), ("echo a; b", 0, 1));
        let (_, errs, warns) = expand_ctx("/p/{{ x | raw }}", Context::Plain, "a");
        assert_eq!((errs.len(), warns), (0, 0));
        let (_, errs, _) = expand_ctx("SELECT {{ x | idnet }}", Context::Sql, "a");
        assert_eq!(errs[0].message, "unknown filter `idnet`");
        assert_eq!(errs[0].help.as_deref(), Some("did you mean `ident`?"));
        let (_, errs, _) = expand_ctx("echo {{ x | ident }}", Context::Shell, "a");
        assert!(errs[0].message.contains("SQL"), "{}", errs[0].message);
        let (_, errs, _) = expand_ctx("SELECT {{ x | raw | basename }}", Context::Sql, "a");
        assert!(
            errs[0].message.contains("last filter"),
            "{}",
            errs[0].message
        );
        let (out, errs, _) = expand_ctx("cat {{ x | basename }}", Context::Shell, "/a/b c");
        assert!(errs.is_empty());
        assert_eq!(out, "cat 'b c'");
    }

    #[test]
    fn a_placeholder_inside_quotes_is_an_error() {
        for s in [
            "sed -i '/^{{ x }}$/d' f",
            "echo \"{{ x }}\"",
            "echo hi # {{ x }}",
        ] {
            let (_, errs, _) = expand_ctx(s, Context::Shell, "v");
            assert_eq!(errs.len(), 1, "{s}");
            assert_eq!(
                errs[0].span,
                s.find("{{").unwrap()..s.find("}}").unwrap() + 2
            );
        }
        for s in [
            "echo 'a' {{ x }}",
            r#"echo "a\"" {{ x }}"#,
            "echo a#b {{ x }}",
            "echo '#' {{ x }}",
        ] {
            let (_, errs, _) = expand_ctx(s, Context::Shell, "v");
            assert!(errs.is_empty(), "{s}: {errs:?}");
        }
        for s in [
            "SELECT '{{ x }}'",
            "SELECT 1 -- {{ x }}",
            "SELECT /* {{ x }} */ 1",
            "DO $f$ BEGIN PERFORM {{ x }}; END $f$",
            "SELECT \"{{ x }}\"",
        ] {
            let (_, errs, _) = expand_ctx(s, Context::Sql, "v");
            assert_eq!(errs.len(), 1, "{s}");
        }
        for s in [
            "SELECT 'it''s', {{ x }}",
            "SELECT 1 -- c\n, {{ x }}",
            "SELECT /* c */ {{ x }}",
            "SELECT $$a$$, $1, {{ x }}",
            "SELECT '{{ x | raw }}'",
        ] {
            let (_, errs, _) = expand_ctx(s, Context::Sql, "v");
            assert!(errs.is_empty(), "{s}: {errs:?}");
        }
    }
}
