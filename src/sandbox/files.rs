//! The sandbox's files root, shaped like the production checkout: `hapi-overlay/` with the
//! image's Dockerfile and `src/main/resources/packages/<IG>.tgz`, `.env`, and
//! `docker-compose.yml`; a git repository, so `{{ git.commit }}` has a HEAD to name.

use std::path::Path;
use std::process::Command;

use super::proc;

pub const IG_BASELINE: &[u8] = include_bytes!("../../fixtures/ig/bd.gov.dghs.core-0.2.1.tgz");
pub const IG_BASELINE_FILE: &str = "bd.gov.dghs.core-0.2.1.tgz";

pub struct Layout<'a> {
    pub project: &'a str,
    pub image: &'a str,
    pub lb_image: &'a str,
    pub http_port: u16,
    pub sandbox_id: &'a str,
    pub labels: &'a [(String, String)],
    /// pgBouncer's port, and the host address the replicas reach it at (net.rs).
    pub bouncer_port: u16,
    pub host_address: std::net::Ipv4Addr,
}

/// The replicas' datasource password, kept out of the committed checkout.
pub const DB_ENV: &str = "hapi-db.env";

pub fn compose_file(l: &Layout) -> String {
    let extra: String = l
        .labels
        .iter()
        .map(|(k, v)| format!("\n      {k}: \"{v}\""))
        .collect();
    format!(
        r#"# The sandbox's HAPI service: N stand-in replicas behind a round-robin proxy, as nginx
# fronts the real replicas. Every container carries ferry.sandbox so `down` finds it.
version: "2.4"
services:
  hapi:
    image: ${{HAPI_IMAGE}}
    # pgBouncer runs on the host: the replicas reach it at the host's docker0 address
    # (named here rather than `host-gateway`, so it is the address pgBouncer listens on).
    extra_hosts:
      - "{alias}:{host}"
    env_file:
      - {db_env}
    environment:
      SPRING_DATASOURCE_URL: "jdbc:postgresql://{alias}:{bouncer}/fhirdb"
      SPRING_DATASOURCE_USERNAME: "hapi"
      SPRING_JPA_PROPERTIES_HIBERNATE_HBM2DDL_AUTO: "${{SPRING_JPA_PROPERTIES_HIBERNATE_HBM2DDL_AUTO:-validate}}"
      SPRING_DATASOURCE_HIKARI_MAXIMUM_POOL_SIZE: "5"
      STANDIN_START_DELAY_MS: "1000"
    ports:
      - "127.0.0.1::8080"
    labels:
      ferry.sandbox: "{id}"{extra}
    restart: unless-stopped
  lb:
    image: {lb}
    command: ["proxy", "--listen", "0.0.0.0:8080", "--upstream", "hapi:8080"]
    ports:
      - "127.0.0.1:{http}:8080"
    labels:
      ferry.sandbox: "{id}"{extra}
    restart: unless-stopped
networks:
  default:
    labels:
      ferry.sandbox: "{id}"{extra}
"#,
        id = l.sandbox_id,
        lb = l.lb_image,
        http = l.http_port,
        alias = super::net::HOST_ALIAS,
        host = l.host_address,
        bouncer = l.bouncer_port,
        db_env = DB_ENV,
    )
}

pub fn env_file(l: &Layout) -> String {
    format!(
        "# bd-fhir-national deployment settings (sandbox)\nCOMPOSE_PROJECT_NAME={}\nHAPI_IMAGE={}\n\
         HAPI_IG_PACKAGE_CLASSPATH=classpath:packages/{IG_BASELINE_FILE}\nHAPI_IG_VERSION=0.2.1\n",
        l.project, l.image
    )
}

/// Writes the checkout and commits it; `dockerfile` and `standin` are the stand-in's,
/// `db_password` goes into the (ignored, 0600) datasource env file.
pub fn write(
    root: &Path,
    l: &Layout,
    dockerfile: &str,
    standin: &Path,
    db_password: &str,
    compose_yml: &str,
    env_extra: &str,
) -> anyhow::Result<()> {
    let overlay = root.join("hapi-overlay");
    let packages = overlay.join("src/main/resources/packages");
    std::fs::create_dir_all(&packages)?;
    std::fs::write(packages.join(IG_BASELINE_FILE), IG_BASELINE)?;
    std::fs::write(overlay.join("Dockerfile"), dockerfile)?;
    std::fs::copy(standin, overlay.join("hapi-standin"))?;
    std::fs::write(root.join(".env"), format!("{}{env_extra}", env_file(l)))?;
    std::fs::write(root.join("docker-compose.yml"), compose_yml)?;
    let db_env = root.join(DB_ENV);
    std::fs::write(
        &db_env,
        format!("SPRING_DATASOURCE_PASSWORD={db_password}\n"),
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&db_env, std::fs::Permissions::from_mode(0o600))?;
    std::fs::write(
        root.join(".gitignore"),
        format!(
            ".ferry-backup/\nhapi-overlay/hapi-standin\n{DB_ENV}\n{}\n",
            super::compose_files::DB_ENV
        ),
    )?;
    let git = |args: &[&str]| {
        let mut c = Command::new(super::deps::bin("git"));
        c.arg("-C")
            .arg(root)
            .args([
                "-c",
                "user.name=ferry sandbox",
                "-c",
                "user.email=sandbox@ferry.invalid",
            ])
            .args(args);
        proc::run(c, &format!("git {}", args.join(" ")))
    };
    git(&["init", "-q"])?;
    git(&["add", "-A"])?;
    git(&["commit", "-qm", "sandbox checkout"])?;
    Ok(())
}

pub struct TargetSpec<'a> {
    pub project: &'a str,
    pub registry_port: u16,
    pub http_port: u16,
    pub pg_port: u16,
    /// auditdb's port: the same cluster as fhirdb on the host stack, its own on compose.
    pub audit_port: u16,
    pub bouncer_port: u16,
    /// The compose stack: PostgreSQL is the `postgres-fhir` service, pgBouncer's pool the
    /// env file's PGBOUNCER_DEFAULT_POOL_SIZE.
    pub compose: bool,
}

/// What `pg_setting` and `pgbouncer_pool` need on the compose stack: a superuser's
/// connection with the service to restart, and where the pool is persisted (the ini the
/// container reads is rendered from the env at its start, so the env file is the place).
fn compose_extra(pg: u16) -> String {
    format!(
        r#"
# The superuser `pg_setting` alters the server through (playbooks/phase2-scale.toml's
# `superuser`); a setting that needs a restart restarts this compose service behind
# pgBouncer's PAUSE.
[postgres.fhir_admin]
url = "postgres://postgres@127.0.0.1:{pg}/fhirdb"
password_env = "SANDBOX_PG_SUPERUSER_PASSWORD"
restart_service = "postgres-fhir"
"#
    )
}

pub fn target_toml(t: &TargetSpec) -> String {
    format!(
        r#"# Written by `ferry sandbox up`: a disposable local staging. Secrets are in secrets.env
# (named below by their variables; ferry reads them from there when they are not exported).
name = "sandbox"
production = false
secrets_file = "secrets.env"

[docker]
compose_project = "{project}"
service = "hapi"

[registry]
url = "127.0.0.1:{registry}"
username_env = "SANDBOX_REGISTRY_USER"
password_env = "SANDBOX_REGISTRY_PASSWORD"

[fhir]
base_url = "http://127.0.0.1:{http}/fhir"

[postgres.fhir]
url = "postgres://hapi@127.0.0.1:{pg}/fhirdb"
password_env = "SANDBOX_FHIR_DB_PASSWORD"

[postgres.audit]
url = "postgres://audit_maintainer_login@127.0.0.1:{audit}/auditdb"
password_env = "SANDBOX_AUDIT_DB_PASSWORD"

[pgbouncer]
admin_url = "postgres://pgbouncer_admin@127.0.0.1:{bouncer}/pgbouncer"
password_env = "SANDBOX_PGBOUNCER_PASSWORD"
{pool_key}
[files]
root = "files"
env_file = ".env"
{extra}"#,
        project = t.project,
        registry = t.registry_port,
        http = t.http_port,
        pg = t.pg_port,
        audit = t.audit_port,
        bouncer = t.bouncer_port,
        pool_key = if t.compose {
            "pool_size_key = \"PGBOUNCER_DEFAULT_POOL_SIZE\"\n"
        } else {
            ""
        },
        extra = if t.compose {
            compose_extra(t.pg_port)
        } else {
            String::new()
        },
    )
}
