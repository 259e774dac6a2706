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

    /// Expands every placeholder; `locate` maps a range inside `s` to a span in the file.
    /// `name | filter | …`: `basename` (last path segment), `ig_version` / `ig_id` (read from
    /// the IG package at that path, so a playbook needs only the package's path).
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
                other => {
                    let help = did_you_mean(other, ["basename", "ig_version", "ig_id"]);
                    return Err((format!("unknown filter `{other}`"), help));
                }
            };
        }
        Ok(v)
    }

    pub fn expand(
        &self,
        s: &str,
        locate: &dyn Fn(Range<usize>) -> Range<usize>,
        errors: &mut Vec<Diagnostic>,
    ) -> String {
        let mut out = String::with_capacity(s.len());
        let mut last = 0;
        for (range, name) in placeholders(s) {
            out.push_str(&s[last..range.start]);
            match self.lookup_filtered(&name) {
                Ok(v) => out.push_str(&v),
                Err((msg, help)) => {
                    errors.push(Diagnostic::new(msg, locate(range.clone())).help(help))
                }
            }
            last = range.end;
        }
        out.push_str(&s[last..]);
        out
    }
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
}
