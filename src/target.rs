//! The target (inventory) file: where Docker, the registry, PostgreSQL, the FHIR endpoint and
//! the deployment's files are. It never holds a secret, only the names of environment
//! variables (`*_env`) or files (`*_file`) that do; values are read at use and registered
//! with the redactor. Relative paths are relative to the target file's directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::Error;
use crate::report::redact;
use crate::util::diagnostic::{Diagnostic, render_all};
use crate::util::parse::{Node, Val, parse};
use crate::util::suggest::did_you_mean;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub name: String,
    #[serde(default)]
    pub production: bool,
    /// A dotenv file (0600, beside the target) that `*_env` names are looked up in when the
    /// environment does not have them: how `ferry sandbox` hands its generated secrets over.
    pub secrets_file: Option<PathBuf>,
    pub docker: Option<Docker>,
    pub registry: Option<Registry>,
    pub fhir: Option<Fhir>,
    #[serde(default)]
    pub postgres: BTreeMap<String, Postgres>,
    pub pgbouncer: Option<PgBouncer>,
    pub files: Option<Files>,
    /// Per-target thresholds for monitoring checks, by check name.
    #[serde(default)]
    pub checks: BTreeMap<String, toml::Table>,
    #[serde(skip)]
    pub path: PathBuf,
    /// sha256 of the file's bytes: a resumed run refuses a changed target by default.
    #[serde(skip)]
    pub hash: String,
    #[serde(skip, default = "empty_table")]
    pub raw: toml::Value,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Docker {
    pub host: Option<String>,
    pub compose_project: Option<String>,
    pub service: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    pub url: String,
    pub username_env: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fhir {
    pub base_url: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Postgres {
    pub url: String,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    /// How the server is restarted (for a setting that needs it, behind pgBouncer's PAUSE):
    /// a shell command that returns once it is back (`pg_ctl -D … -w restart`) …
    pub restart_command: Option<String>,
    /// … or the docker-compose service of `[docker] compose_project` whose container is
    /// restarted (`postgres-fhir`).
    pub restart_service: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgBouncer {
    pub admin_url: String,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    /// The pgbouncer.ini a pool change is persisted in (then RELOADed). Not `*_file`: that
    /// suffix names a secret file.
    pub ini_path: Option<PathBuf>,
    /// The key of the target's env file that holds the pool size for compose
    /// (`PGBOUNCER_DEFAULT_POOL_SIZE`); persisted there too when given.
    pub pool_size_key: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Files {
    pub root: PathBuf,
    #[serde(default = "default_env_file")]
    pub env_file: PathBuf,
}

fn empty_table() -> toml::Value {
    toml::Value::Table(Default::default())
}

fn default_env_file() -> PathBuf {
    ".env".into()
}

const TOP_KEYS: &[&str] = &[
    "name",
    "production",
    "secrets_file",
    "docker",
    "registry",
    "fhir",
    "postgres",
    "pgbouncer",
    "files",
    "checks",
];
/// Keys that would hold a secret in plain text; the file must name an env var or file instead.
const SECRET_KEYS: &[&str] = &["password", "secret", "token", "api_key", "passwd"];

impl Target {
    pub fn load(path: &Path) -> Result<Target, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::invalid(format!("cannot read target {}: {e}", path.display())))?;
        let shown = path.display().to_string();
        let root = parse(&text).map_err(|ds| Error::Diagnostics(render_all(&shown, &text, &ds)))?;
        let mut errors = vec![];
        for (k, _) in root.entries() {
            if !TOP_KEYS.contains(&k.name.as_str()) {
                let help = did_you_mean(&k.name, TOP_KEYS.iter().copied());
                errors.push(
                    Diagnostic::new(
                        format!("unknown key `{}` in the target", k.name),
                        k.span.clone(),
                    )
                    .help(help),
                );
            }
        }
        find_inline_secrets(&root, &mut errors);
        if !errors.is_empty() {
            return Err(Error::Diagnostics(render_all(&shown, &text, &errors)));
        }
        let raw = root.to_toml();
        let mut t: Target = raw
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| Error::invalid(format!("{shown}: {}", e.message())))?;
        t.path = path.to_path_buf();
        t.hash = {
            use sha2::{Digest, Sha256};
            hex::encode(Sha256::digest(text.as_bytes()))
        };
        t.raw = raw;
        // `{{ target.files.root }}` must name the same directory the steps use: relative to
        // the target file, not to wherever ferry happens to run.
        if let Some(root) = t.files_root() {
            let abs = std::path::absolute(&root).unwrap_or(root);
            if let Some(files) = t.raw.get_mut("files").and_then(|f| f.as_table_mut()) {
                files.insert(
                    "root".into(),
                    toml::Value::String(abs.display().to_string()),
                );
            }
        }
        Ok(t)
    }

    /// One line naming what the target points at (no secrets: only names of their sources).
    pub fn summary(&self) -> String {
        let mut parts = vec![format!(
            "target `{}`{}",
            self.name,
            if self.production { ", PRODUCTION" } else { "" }
        )];
        if let Some(d) = &self.docker {
            let host = d.host.as_deref().unwrap_or("default Docker host");
            let svc = match (&d.compose_project, &d.service) {
                (Some(p), Some(s)) => format!(", service {p}/{s}"),
                _ => String::new(),
            };
            parts.push(format!("docker {host}{svc}"));
        }
        if let Some(r) = &self.registry {
            let auth = match (&r.username_env, &r.password_env, &r.password_file) {
                (Some(u), Some(p), _) => format!(" (credentials from ${u}, ${p})"),
                (Some(u), None, Some(f)) => format!(" (credentials from ${u}, {})", f.display()),
                _ => String::new(),
            };
            parts.push(format!("registry {}{auth}", r.url));
        }
        if let Some(f) = &self.fhir {
            parts.push(format!("fhir {}", f.base_url));
        }
        for (name, pg) in &self.postgres {
            parts.push(format!("postgres.{name} {}", pg.url));
        }
        if let Some(b) = &self.pgbouncer {
            let pw = b
                .password_env
                .as_deref()
                .map(|e| format!(" (password from ${e})"))
                .unwrap_or_default();
            let pw = if pw.is_empty() {
                b.password_file
                    .as_ref()
                    .map(|f| format!(" (password from {})", f.display()))
                    .unwrap_or_default()
            } else {
                pw
            };
            parts.push(format!("pgbouncer {}{pw}", b.admin_url));
        }
        if let Some(root) = self.files_root() {
            parts.push(format!("files {}", root.display()));
        }
        if !self.checks.is_empty() {
            parts.push(format!(
                "thresholds for {}",
                self.checks.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        parts.join("; ")
    }

    pub fn dir(&self) -> PathBuf {
        self.path
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    }

    /// A path from the target file, made absolute against the target's directory.
    pub fn resolve_path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir().join(p)
        }
    }

    pub fn files_root(&self) -> Option<PathBuf> {
        self.files.as_ref().map(|f| self.resolve_path(&f.root))
    }

    /// The deployment's env file (`files.root`/`files.env_file`), if the target has [files].
    pub fn env_file(&self) -> Option<PathBuf> {
        self.files
            .as_ref()
            .map(|f| self.resolve_path(&f.root).join(&f.env_file))
    }

    pub fn postgres(&self, name: &str) -> Result<&Postgres, String> {
        self.postgres.get(name).ok_or_else(|| {
            let help = did_you_mean(name, self.postgres.keys().map(String::as_str))
                .map(|h| format!(" ({h})"))
                .unwrap_or_default();
            format!("the target has no [postgres.{name}]{help}")
        })
    }

    /// Reads every `*_env` / `*_file` secret named in the target and registers its value with
    /// the redactor, so it is masked wherever it might surface. Missing ones are skipped here;
    /// the step that needs one reports it.
    pub fn register_secrets(&self) -> Vec<String> {
        let mut warnings = vec![];
        walk_secret_refs(&self.raw, &mut |key, val| {
            if let Ok(Some(v)) = self.read_secret(key, val)
                && !redact::register(&v)
            {
                warnings.push(format!(
                    "the secret named by `{key} = \"{val}\"` is shorter than {} characters and cannot be masked in output",
                    redact::MIN_SECRET_LEN
                ));
            }
        });
        warnings
    }

    /// Value of one secret reference: `(key, value)` as written, e.g. `("password_env", "X")`.
    pub fn read_secret(&self, key: &str, val: &str) -> Result<Option<String>, String> {
        if key.ends_with("_env") {
            Ok(std::env::var(val)
                .ok()
                .or_else(|| self.lookup_secrets_file(val)))
        } else {
            let p = self.resolve_path(Path::new(val));
            std::fs::read_to_string(&p)
                .map(|s| Some(s.trim_end_matches(['\n', '\r']).to_owned()))
                .map_err(|e| format!("cannot read secret file {}: {e}", p.display()))
        }
    }

    fn lookup_secrets_file(&self, name: &str) -> Option<String> {
        let f = self.resolve_path(self.secrets_file.as_deref()?);
        crate::infra::dotenv::read(&f).ok()?.remove(name)
    }

    pub fn secret(
        &self,
        env: &Option<String>,
        file: &Option<PathBuf>,
    ) -> Result<Option<String>, String> {
        let v = match (env, file) {
            (Some(e), _) => match std::env::var(e)
                .ok()
                .or_else(|| self.lookup_secrets_file(e))
            {
                Some(v) => Some(v),
                None if file.is_none() => {
                    return Err(format!("environment variable {e} is not set"));
                }
                None => None,
            },
            _ => None,
        };
        let v = match (v, file) {
            (Some(v), _) => Some(v),
            (None, Some(f)) => self.read_secret("password_file", &f.display().to_string())?,
            (None, None) => None,
        };
        if let Some(v) = &v {
            redact::register(v);
        }
        Ok(v)
    }
}

/// `password_env`, `token_file`, …: references to secret values. A user name (`username_env`)
/// is not one: masking a common word like "admin" everywhere would garble every message.
fn names_a_secret(key: &str) -> bool {
    (key.ends_with("_env") || key.ends_with("_file"))
        && !key.starts_with("user")
        && key != "env_file"
        && key != "secrets_file"
}

fn walk_secret_refs(v: &toml::Value, f: &mut dyn FnMut(&str, &str)) {
    if let toml::Value::Table(t) = v {
        for (k, v) in t {
            match v {
                toml::Value::String(s) if names_a_secret(k) => f(k, s),
                _ => walk_secret_refs(v, f),
            }
        }
    }
}

/// Where a connection string can carry a password, and the password: `scheme://user:pw@host`,
/// `scheme://host/db?password=pw` (any case, percent-encoded or not), or libpq's conninfo
/// form `host=… password=pw`. Both URL and conninfo are what PostgreSQL's clients accept.
fn embedded_password(s: &str) -> Option<(&'static str, String)> {
    if let Some((_, rest)) = s.split_once("://") {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        if let Some((userinfo, _)) = authority.rsplit_once('@')
            && let Some((_, pw)) = userinfo.split_once(':')
        {
            return Some(("this URL carries a password", percent_decode(pw)));
        }
        let query = rest.split_once('?').map_or("", |(_, q)| q);
        let query = query.split('#').next().unwrap_or("");
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if percent_decode(k).trim().eq_ignore_ascii_case("password") {
                return Some((
                    "this URL carries a password (`password=` parameter)",
                    percent_decode(v),
                ));
            }
        }
        return None;
    }
    // conninfo: `key = value` pairs, values bare or single-quoted.
    let lower = s.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find("password").map(|i| i + from) {
        from = i + "password".len();
        let starts_word = i == 0 || lower.as_bytes()[i - 1].is_ascii_whitespace();
        let after = s[from..].trim_start();
        if starts_word && let Some(v) = after.strip_prefix('=') {
            let v = v.trim_start();
            let value = match v.strip_prefix('\'') {
                Some(q) => q.split('\'').next().unwrap_or(""),
                None => v.split_whitespace().next().unwrap_or(""),
            };
            return Some((
                "this connection string carries a password (`password=`)",
                value.to_owned(),
            ));
        }
    }
    None
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(h) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(h);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn find_inline_secrets(n: &Node, errors: &mut Vec<Diagnostic>) {
    for (k, v) in n.entries() {
        if SECRET_KEYS.contains(&k.name.as_str()) {
            errors.push(
                Diagnostic::new(
                    format!("the target must not hold secrets: `{}`", k.name),
                    k.span.clone(),
                )
                .help(Some(format!(
                    "name an environment variable instead: `{}_env = \"…\"`",
                    k.name
                ))),
            );
        }
        // Any string, not only `*url` keys: a connection string is one wherever it is.
        if let Some((what, pw)) = v.as_str().and_then(embedded_password) {
            // The diagnostic quotes the line: mask the password there too.
            redact::register(&pw);
            errors.push(
                Diagnostic::new(
                    format!("the target must not hold secrets: {what}"),
                    v.span.clone(),
                )
                .help(Some(
                    "drop it from the URL and add `password_env = \"…\"` beside it".into(),
                )),
            );
        }
        if matches!(v.val, Val::Table(_)) {
            find_inline_secrets(v, errors);
        }
    }
}

#[cfg(test)]
mod password_tests {
    use super::embedded_password;

    #[test]
    fn passwords_in_every_connection_string_form() {
        let pw = |s| embedded_password(s).map(|(_, p)| p);
        assert_eq!(pw("postgres://u:pw1@h/db").as_deref(), Some("pw1"));
        assert_eq!(pw("postgres://u@h/db?password=pw2").as_deref(), Some("pw2"));
        assert_eq!(
            pw("postgres://u@h/db?sslmode=disable&PassWord=p%20w").as_deref(),
            Some("p w")
        );
        assert_eq!(pw("postgres://u@h/db?pass%77ord=x1").as_deref(), Some("x1"));
        assert_eq!(pw("host=db password=pw3 user=u").as_deref(), Some("pw3"));
        assert_eq!(pw("host=db password = 'p w4'").as_deref(), Some("p w4"));
        assert_eq!(pw("postgres://u@h:5432/db"), None);
        assert_eq!(pw("host=db user=u passfile=/x"), None);
        assert_eq!(pw("postgres://u@h/db?passfile=/x"), None);
        assert_eq!(pw("/opt/bd-fhir-national"), None);
    }
}
