//! The sandbox's PostgreSQL 15: one cluster on a loopback port with `fhirdb` (HAPI's schema
//! and generated data, owned by `hapi`) and `auditdb` (the partitioned audit schema), and
//! pgBouncer in front of `fhirdb` with the seed's pool size.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use super::proc::{self, as_service_user, hand_over};

pub const HAPI_SCHEMA: &str = include_str!("../../fixtures/hapi-schema.sql");
pub const HAPI_DATAGEN: &str = include_str!("../../fixtures/hapi-datagen.sql");
pub const AUDIT_SCHEMA: &str = include_str!("../../fixtures/audit-schema.sql");

pub struct Secrets<'a> {
    pub superuser: &'a str,
    pub hapi: &'a str,
    pub audit: &'a str,
    pub bouncer_admin: &'a str,
}

/// A new cluster with both databases; `resources` generated HAPI resources in fhirdb.
pub fn init(dir: &Path, port: u16, s: &Secrets, resources: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let pwfile = dir.join("pw");
    std::fs::write(&pwfile, format!("{}\n", s.superuser))?;
    hand_over(dir)?;
    let mut c = as_service_user(&super::deps::bin("initdb"));
    c.arg("-D").arg(dir.join("data")).args([
        "-U",
        "postgres",
        "--auth-local=trust",
        "--auth-host=scram-sha-256",
        "-E",
        "UTF8",
        "--locale=C.UTF-8",
    ]);
    c.arg(format!("--pwfile={}", pwfile.display()));
    proc::run(c, "initdb")?;
    std::fs::remove_file(&pwfile)?;
    start(dir, port)?;
    let sql = format!(
        "CREATE ROLE hapi LOGIN PASSWORD '{h}'; CREATE DATABASE fhirdb OWNER hapi; CREATE DATABASE auditdb; \
         GRANT pg_read_all_stats TO hapi; CREATE ROLE pgbouncer_admin LOGIN PASSWORD '{b}';",
        h = s.hapi,
        b = s.bouncer_admin
    );
    psql(dir, port, "postgres", &sql)?;
    psql(dir, port, "fhirdb", HAPI_SCHEMA)?;
    psql(
        dir,
        port,
        "fhirdb",
        // Tables and sequences, as HAPI's migrator (running as `hapi`) would own them: the
        // stand-in draws ids from seq_resource_id & co.
        "DO $$ DECLARE r record; BEGIN FOR r IN SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'S') LOOP EXECUTE format('ALTER TABLE public.%I OWNER TO hapi', r.relname); END LOOP; END $$",
    )?;
    psql(dir, port, "fhirdb", HAPI_DATAGEN)?;
    if resources > 0 {
        psql(
            dir,
            port,
            "fhirdb",
            &format!("SELECT ferry_gen.gen_hapi({resources}, 1); ANALYZE"),
        )?;
    }
    psql(dir, port, "auditdb", AUDIT_SCHEMA)?;
    psql(
        dir,
        port,
        "postgres",
        &format!("ALTER ROLE audit_maintainer_login PASSWORD '{}'", s.audit),
    )?;
    Ok(())
}

pub fn start(dir: &Path, port: u16) -> anyhow::Result<()> {
    let opts = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=40",
        dir.display()
    );
    let mut c = as_service_user(&super::deps::bin("pg_ctl"));
    c.arg("-D")
        .arg(dir.join("data"))
        .arg("-l")
        .arg(dir.join("pg.log"))
        .args(["-w", "-t", "60", "-o", &opts, "start"]);
    proc::run(c, "pg_ctl start")?;
    Ok(())
}

pub fn running(dir: &Path) -> bool {
    let mut c = as_service_user(&super::deps::bin("pg_ctl"));
    c.arg("-D").arg(dir.join("data")).arg("status");
    proc::run(c, "pg_ctl status").is_ok()
}

pub fn stop(dir: &Path) -> anyhow::Result<()> {
    if !dir.join("data").exists() || !running(dir) {
        return Ok(());
    }
    let mut c = as_service_user(&super::deps::bin("pg_ctl"));
    c.arg("-D")
        .arg(dir.join("data"))
        .args(["-m", "fast", "-w", "stop"]);
    proc::run(c, "pg_ctl stop").map(|_| ())
}

/// Runs SQL (or a whole fixture file with psql meta-commands) over the Unix socket.
pub fn psql(dir: &Path, port: u16, db: &str, sql: &str) -> anyhow::Result<String> {
    use std::io::Write;
    let mut child = std::process::Command::new(super::deps::bin("psql"))
        .args([
            "-h",
            dir.to_str().unwrap_or("."),
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-d",
            db,
        ])
        .args(["-v", "ON_ERROR_STOP=1", "-XAtq"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("psql")?;
    child
        .stdin
        .take()
        .context("psql stdin")?
        .write_all(sql.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        anyhow::bail!(
            "psql on {db} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// pgBouncer (transaction pooling, the seed's pool of 20) in front of `fhirdb`, run as the
/// service user (it refuses root), listening on 127.0.0.1 and on `also` (the address the
/// replicas reach the host by: see net.rs). Returns its PID (from its pidfile).
pub fn start_bouncer(
    dir: &Path,
    pg_port: u16,
    port: u16,
    also: std::net::Ipv4Addr,
    s: &Secrets,
) -> anyhow::Result<u32> {
    std::fs::create_dir_all(dir)?;
    let ini = format!(
        "[databases]\nfhirdb = host=127.0.0.1 port={pg_port} dbname=fhirdb\n\n[pgbouncer]\n\
         listen_addr = 127.0.0.1,{also}\nlisten_port = {port}\nunix_socket_dir =\nauth_type = scram-sha-256\n\
         auth_file = {d}/userlist.txt\nadmin_users = pgbouncer_admin\nstats_users = pgbouncer_admin\n\
         pool_mode = transaction\ndefault_pool_size = 20\nmax_client_conn = 200\n\
         logfile = {d}/pgbouncer.log\npidfile = {d}/pgbouncer.pid\n",
        d = dir.display()
    );
    std::fs::write(dir.join("pgbouncer.ini"), ini)?;
    std::fs::write(
        dir.join("userlist.txt"),
        format!(
            "\"hapi\" \"{}\"\n\"pgbouncer_admin\" \"{}\"\n",
            s.hapi, s.bouncer_admin
        ),
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.join("userlist.txt"),
        std::fs::Permissions::from_mode(0o600),
    )?;
    hand_over(dir)?;
    let mut c = as_service_user(&super::deps::bin("pgbouncer"));
    c.arg("-d").arg(dir.join("pgbouncer.ini"));
    proc::run(c, "pgbouncer")?;
    proc::wait_port(port, Duration::from_secs(10))?;
    proc::read_pidfile(&dir.join("pgbouncer.pid"), Duration::from_secs(10))
}
