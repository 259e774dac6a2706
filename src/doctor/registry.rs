//! The registry (`[registry]`): `GET /v2/` with the credentials the target names, and what it
//! answered. image_push and rolling_redeploy use the same URL and credentials.

use std::time::Duration;

use crate::infra::registry::{Ping, Registry};
use crate::report::views::doctor::Finding;
use crate::target::Target;

use super::{secret, within};

const C: &str = "registry";

pub async fn probe(target: &Target, timeout: Duration) -> Finding {
    let Some(r) = &target.registry else {
        return Finding::skipped(
            C,
            "no [registry] in the target: image_push steps cannot run",
        );
    };
    // Read without registering it as a secret: a user name like `admin` masked everywhere
    // would garble every message (see target::names_a_secret).
    let user = match &r.username_env {
        Some(name) => match target.read_secret("username_env", name) {
            Ok(Some(u)) => Some(u),
            _ => {
                return Finding::problem(
                    C,
                    format!("environment variable {name} (the registry user) is not set"),
                    format!(
                        "export {name}=… before running ferry (or add it to the target's secrets_file)"
                    ),
                );
            }
        },
        None => None,
    };
    let password = if r.password_env.is_some() || r.password_file.is_some() {
        match secret(target, C, &r.password_env, &r.password_file) {
            Ok(p) => p,
            Err(f) => return f,
        }
    } else {
        None
    };
    let creds_from = match (&r.username_env, &r.password_env, &r.password_file) {
        (Some(u), Some(p), _) => format!("${u}/${p}"),
        (Some(u), None, Some(f)) => format!("${u}/{}", f.display()),
        _ => String::new(),
    };
    let auth = user.zip(password);
    let who = auth
        .as_ref()
        .map(|(u, _)| format!(" as `{u}`"))
        .unwrap_or_else(|| " without credentials".into());
    let registry = match Registry::new(&r.url, auth.clone()) {
        Ok(reg) => reg,
        Err(e) => {
            return Finding::problem(C, format!("{}: {e:#}", r.url), "check [registry] url");
        }
    };
    let what = format!("the registry {} (GET /v2/)", r.url);
    within(C, timeout, &what, async {
        match registry.ping().await {
            Ok(Ping::Ok) => Finding::ok(C, format!("{}: GET /v2/ answered 200{who}", r.url)),
            Ok(Ping::Unauthorized(challenge)) if challenge.to_ascii_lowercase().starts_with("bearer") => {
                Finding::problem(
                    C,
                    format!("{}: GET /v2/ answered 401 asking for a token ({challenge})", r.url),
                    "ferry speaks HTTP Basic only: point [registry] url at a registry (or a proxy) that accepts Basic auth",
                )
            }
            Ok(Ping::Unauthorized(challenge)) => {
                let fix = if auth.is_some() {
                    format!(
                        "the registry refused the credentials from {creds_from}: set them to a user of its htpasswd (try `docker login {}` with the same values)",
                        registry.host
                    )
                } else {
                    "the registry wants credentials: add username_env and password_env under [registry]".into()
                };
                Finding::problem(
                    C,
                    format!("{}: GET /v2/ answered 401 Unauthorized{who} ({challenge})", r.url),
                    fix,
                )
            }
            Ok(Ping::Answered(answer)) => Finding::problem(
                C,
                format!("{}: GET /v2/ answered {answer}", r.url),
                "this is not a Docker registry's v2 API, or it is failing: check [registry] url and the registry's log",
            ),
            Err(e) => Finding::problem(
                C,
                format!("no answer: {e:#}"),
                format!(
                    "is the registry running and listening at {}? check [registry] url (host:port)",
                    registry.host
                ),
            ),
        }
    })
    .await
}
