//! Each `[postgres.NAME]` (connect, server version, the role's privileges the shipped
//! playbooks need) and the pgBouncer admin console (`[pgbouncer] admin_url`).
//!
//! Which privileges: `fhir` is the database of the connections, dead-tuples, unused-indexes
//! and seqscan checks, pool_capacity, the run lock and the partitioning playbook: CREATE on
//! HAPI's schema, membership of pg_read_all_stats (else other roles' sessions show no
//! state), SELECT on hfj_resource. `audit` is audit-partitions.toml's maintainer login:
//! USAGE on schema audit and EXECUTE on its partition function. Other names: connect only.

use std::time::Duration;

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::infra::postgres::{self as pg, describe, quote_ident};
use crate::report::views::doctor::Finding;
use crate::target::{self, Target};

use super::{secret, within};

pub async fn probe(target: &Target, name: &str, p: &target::Postgres, t: Duration) -> Finding {
    let c = format!("postgres.{name}");
    let pw = match secret(target, &c, &p.password_env, &p.password_file) {
        Ok(pw) => pw,
        Err(f) => return f,
    };
    within(&c, t, &p.url, async {
        let client = match connect(&p.url, pw.as_deref(), t).await {
            Ok(cl) => cl,
            Err(e) => return refused(&c, &p.url, &p.password_env, &e),
        };
        match inspect(&client, name).await {
            Ok((who, lacks)) if lacks.is_empty() => Finding::ok(&c, format!("{}: {who}", p.url)),
            Ok((who, lacks)) => {
                let (what, fix): (Vec<_>, Vec<_>) = lacks.into_iter().unzip();
                Finding::problem(
                    &c,
                    format!("{}: {who}, but lacks {}", p.url, what.join("; ")),
                    fix.join("; "),
                )
            }
            Err(e) => Finding::problem(
                &c,
                format!("{}: {e:#}", p.url),
                "check the url names the right database",
            ),
        }
    })
    .await
}

async fn connect(url: &str, pw: Option<&str>, t: Duration) -> anyhow::Result<Client> {
    let (client, _task) = pg::connect_with(url, pw, |cfg| {
        cfg.connect_timeout(t);
    })
    .await?;
    Ok(client)
}

/// A connection that failed, with the fix its reason calls for.
fn refused(c: &str, url: &str, env: &Option<String>, e: &anyhow::Error) -> Finding {
    let why = format!("{e:#}");
    let l = why.to_ascii_lowercase();
    // pgBouncer says "SASL authentication failed" where PostgreSQL names the password.
    let fix = if l.contains("password") || l.contains("sasl authentication failed") {
        match env {
            Some(v) => format!("${v} does not hold this role's password: set it to the right one"),
            None => "add password_env (or password_file) naming the role's password".into(),
        }
    } else if l.contains("connection refused") {
        format!("nothing listens there: is the server running? check host and port in {url}")
    } else if l.contains("does not exist") {
        format!("check the user and database names in {url}")
    } else if l.contains("not allowed") {
        "the user must be listed in admin_users or stats_users of pgbouncer.ini".into()
    } else if l.contains("timed out") || l.contains("timeout") {
        "no answer: check host and port, and that a firewall lets this host through".into()
    } else {
        format!("check {url} and that the server accepts this host (pg_hba.conf)")
    };
    Finding::problem(c, why, fix)
}

/// (`PostgreSQL 15.4 as hapi in fhirdb`, [(what it lacks, the GRANT that fixes it)]).
async fn inspect(client: &Client, name: &str) -> anyhow::Result<(String, Vec<(String, String)>)> {
    let q = |e: tokio_postgres::Error| anyhow::anyhow!("query failed: {}", describe(&e));
    let row = client
        .query_one(
            "SELECT current_user::text, current_database()::text, current_setting('server_version')",
            &[],
        )
        .await
        .map_err(q)?;
    let (user, db, version): (String, String, String) = (row.get(0), row.get(1), row.get(2));
    let who = format!("PostgreSQL {version} as `{user}` in {db}");
    let role = quote_ident(&user);
    let mut lacks = vec![];
    let mut has = vec![];
    let mut need = |ok: Option<bool>, what: String, fix: String| {
        if ok == Some(true) {
            has.push(what.split(" (").next().unwrap_or_default().to_owned());
        } else {
            lacks.push((what, fix));
        }
    };
    match name {
        "fhir" => {
            let r = client.query_one(FHIR, &[]).await.map_err(q)?;
            let schema: String = r.get(0);
            let s = quote_ident(&schema);
            need(
                r.get(1),
                format!("CREATE on schema {schema} (partitioning steps create tables there)"),
                format!("as a superuser in {db}: GRANT CREATE ON SCHEMA {s} TO {role};"),
            );
            need(
                r.get(2),
                "membership of pg_read_all_stats (the connections check sees other roles' sessions through it)".into(),
                format!("as a superuser: GRANT pg_read_all_stats TO {role};"),
            );
            let select: Option<bool> = r.get(3);
            need(
                select,
                if r.get::<_, bool>(4) {
                    format!(
                        "SELECT on {schema}.hfj_resource (the seqscan check EXPLAINs HAPI's queries)"
                    )
                } else {
                    "a hfj_resource table: this is not HAPI's database".into()
                },
                if r.get::<_, bool>(4) {
                    format!(
                        "as a superuser in {db}: GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {role};"
                    )
                } else {
                    "point [postgres.fhir] url at the database HAPI uses".into()
                },
            );
        }
        "audit" => {
            let r = client.query_one(AUDIT, &[]).await.map_err(q)?;
            need(
                r.get(0),
                "USAGE on schema audit (audit-partitions.toml reads and extends audit.audit_events)".into(),
                format!("as the schema's owner in {db}: GRANT USAGE ON SCHEMA audit TO {role}; (or point [postgres.audit] at auditdb)"),
            );
            need(
                r.get(1),
                "EXECUTE on audit.create_partitions_ahead(integer) or audit.create_next_month_partitions()".into(),
                format!("as the schema's owner in {db}: GRANT EXECUTE ON FUNCTION audit.create_partitions_ahead(integer) TO {role};"),
            );
        }
        _ => {}
    }
    let who = if has.is_empty() {
        who
    } else {
        format!("{who}, with {}", has.join(", "))
    };
    Ok((who, lacks))
}

/// (HAPI's schema, CREATE there, pg_read_all_stats, SELECT on hfj_resource, it exists).
const FHIR: &str = "WITH s AS (SELECT coalesce((SELECT n.nspname::text FROM pg_class c \
     JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relname = 'hfj_resource' \
     AND c.relkind IN ('r', 'p') ORDER BY n.nspname <> 'public' LIMIT 1), 'public') AS schema) \
     SELECT s.schema, has_schema_privilege(s.schema, 'CREATE'), \
     pg_has_role(current_user, 'pg_read_all_stats', 'member'), \
     has_table_privilege(to_regclass(quote_ident(s.schema) || '.hfj_resource'), 'SELECT'), \
     to_regclass(quote_ident(s.schema) || '.hfj_resource') IS NOT NULL FROM s";

/// (USAGE on schema audit, EXECUTE on a partition function); NULL when they do not exist.
const AUDIT: &str = "SELECT CASE WHEN to_regnamespace('audit') IS NOT NULL \
     THEN has_schema_privilege('audit', 'USAGE') END, \
     coalesce(has_function_privilege(to_regprocedure('audit.create_partitions_ahead(integer)'), 'EXECUTE'), false) \
     OR coalesce(has_function_privilege(to_regprocedure('audit.create_next_month_partitions()'), 'EXECUTE'), false)";

/// The admin console: `SHOW VERSION` and `SHOW DATABASES` (simple-query protocol only).
pub async fn probe_bouncer(target: &Target, t: Duration) -> Finding {
    const C: &str = "pgbouncer";
    let Some(b) = &target.pgbouncer else {
        return Finding::skipped(
            C,
            "no [pgbouncer] in the target: pool_capacity steps cannot run",
        );
    };
    let pw = match secret(target, C, &b.password_env, &b.password_file) {
        Ok(pw) => pw,
        Err(f) => return f,
    };
    within(C, t, &b.admin_url, async {
        let client = match connect(&b.admin_url, pw.as_deref(), t).await {
            Ok(cl) => cl,
            Err(e) => return refused(C, &b.admin_url, &b.password_env, &e),
        };
        let show = |q: &'static str| {
            let client = &client;
            async move {
                client.simple_query(q).await.map(|m| {
                    m.into_iter()
                        .filter_map(|m| match m {
                            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                            _ => None,
                        })
                        .collect::<Vec<_>>()
                })
            }
        };
        match (show("SHOW VERSION").await, show("SHOW DATABASES").await) {
            (Ok(v), Ok(dbs)) => Finding::ok(
                C,
                format!(
                    "{}: {} serving {}",
                    b.admin_url,
                    v.first().map_or("pgBouncer", String::as_str),
                    dbs.join(", ")
                ),
            ),
            (Err(e), _) | (_, Err(e)) => Finding::problem(
                C,
                format!("{}: {}", b.admin_url, describe(&e)),
                "admin_url must be pgBouncer's admin console (database `pgbouncer`) as a user in admin_users or stats_users",
            ),
        }
    })
    .await
}
