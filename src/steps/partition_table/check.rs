//! The read-only check (also what `--dry-run` reports): every reason the conversion must
//! not start, each naming the object and what to do. Nothing here writes.
//!
//! Refused: a missing or already partitioned table; a key that is not exactly the primary
//! key (HAPI's HAPI-2563 start-up check needs hfj_resource's PK to stay `(res_id)`, and
//! PostgreSQL needs the partition key in every unique key); a unique index that no guard
//! can keep (expression or partial); constraints and triggers the conversion does not
//! carry; other sessions on the database (the window needs HAPI and everyone else out)
//! and, with `[docker]`, running HAPI replicas; too little free disk for what is built.

use tokio_postgres::Client;

use super::{Check, PartitionTable, State, StepCx, catalog, pgerr};
use crate::report::CheckStatus;
use crate::steps::replicas;

pub async fn run(pt: &PartitionTable, cx: &StepCx) -> anyhow::Result<Vec<Check>> {
    if let Some(st) = cx.checkpoint::<State>()?
        && st.catalog.is_some()
    {
        return Ok(vec![Check::pass(
            "resume",
            format!(
                "conversion under way (phase {:?}): apply continues from its checkpoint",
                st.phase
            ),
        )]);
    }
    let c = match pt.client(cx).await {
        Ok(c) => c,
        Err(e) => return Ok(vec![Check::fail("connect", format!("{e:#}"))]),
    };
    let kind = catalog::relkind(&c, &pt.schema, &pt.table).await?;
    let later = cx.preflight && cx.after_changes;
    match pt.stage.as_str() {
        "validate" | "cleanup" => {
            return Ok(vec![match kind {
                Some('p') => Check::pass(
                    "table",
                    format!("{}.{} is partitioned", pt.schema, pt.table),
                ),
                _ if later => Check::new(
                    "table",
                    CheckStatus::Deferred,
                    "partitioned by an earlier step",
                ),
                _ => Check::fail(
                    "table",
                    format!(
                        "{}.{} is not partitioned: run the conversion (`stage = \"convert\"`) first",
                        pt.schema, pt.table
                    ),
                ),
            }]);
        }
        _ => {}
    }
    let mut checks = vec![];
    if kind == Some('p') {
        checks.push(Check::fail(
            "table",
            format!(
                "{}.{} is already partitioned: nothing to convert",
                pt.schema, pt.table
            ),
        ));
        return Ok(checks);
    }
    let cat = match catalog::read(&c, &pt.schema, &pt.table, &pt.key, false).await {
        Ok(cat) => cat,
        Err(e) => return Ok(vec![Check::fail("table", format!("{e:#}"))]),
    };
    checks.push(key_check(pt, &cat));
    checks.extend(uniques(pt, &cat));
    if !cat.other_constraints.is_empty() || !cat.triggers.is_empty() {
        checks.push(Check::fail(
            "constraints",
            format!(
                "{} has constraints or triggers the conversion does not carry over: {}; drop them (and re-create them after), or convert by hand",
                cat.table,
                [cat.other_constraints.clone(), cat.triggers.clone()].concat().join(", ")
            ),
        ));
    }
    if pt.online {
        checks.push(Check::pass(
            "online",
            "online = true: HAPI and other sessions go on; every exclusive lock is asked for under lock_timeout",
        ));
    } else if pt.stage != "prepare" {
        checks.push(sessions(&c, later).await?);
        if let Some(ch) = hapi(cx).await {
            checks.push(ch);
        }
    }
    checks.push(super::disk::disk(pt, cx, &c, &cat).await?);
    Ok(checks)
}

fn key_check(pt: &PartitionTable, cat: &catalog::Catalog) -> Check {
    let pk = cat.pk().map(|p| p.key_cols.clone()).unwrap_or_default();
    if cat.column(&pt.key).is_none() {
        return Check::fail(
            "key",
            format!(
                "{} has no column {}: set `key` to its primary-key column",
                cat.table, pt.key
            ),
        );
    }
    if pk != [pt.key.clone()] {
        return Check::fail(
            "key",
            format!(
                "partitioning {} by {} is refused: the key must be exactly the primary key ({}). HAPI's start-up check (HAPI-2563, legacy mode) needs the PK of hfj_resource to stay exactly (res_id), and PostgreSQL would need {} in the PK; partition by res_id (`key = \"res_id\"`)",
                cat.table,
                pt.key,
                if pk.is_empty() {
                    "none".into()
                } else {
                    pk.join(", ")
                },
                pt.key
            ),
        );
    }
    Check::pass(
        "key",
        format!(
            "{} ({}) is the primary key: HAPI's HAPI-2563 check still passes",
            pt.key, pt.strategy
        ),
    )
}

fn uniques(pt: &PartitionTable, cat: &catalog::Catalog) -> Vec<Check> {
    let mut v = vec![];
    for ix in cat.indexes.iter().filter(|i| i.needs_guard(&pt.key)) {
        if ix.has_expr || ix.partial || ix.key_cols.is_empty() {
            v.push(Check::fail(
                "unique",
                format!("unique index {} on {} ({}) cannot be kept on a partitioned table (an expression or partial unique key has no guard): drop it or add {} to it first", ix.name, cat.table, ix.tail, pt.key),
            ));
        } else {
            v.push(Check::pass(
                "unique",
                format!(
                    "{} ({}) stays globally unique through a guard table kept by triggers",
                    ix.name,
                    ix.key_cols.join(", ")
                ),
            ));
        }
    }
    v
}

/// Other client sessions on the database (ferry's own connections carry
/// application_name = ferry).
async fn sessions(c: &Client, later: bool) -> anyhow::Result<Check> {
    let rows = c
        .query(
            "SELECT pid, coalesce(usename::text, '?'), coalesce(application_name, ''), coalesce(client_addr::text, 'local') \
             FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() \
             AND backend_type = 'client backend' AND application_name NOT LIKE 'ferry%' ORDER BY pid",
            &[],
        )
        .await
        .map_err(pgerr)?;
    if rows.is_empty() {
        return Ok(Check::pass("sessions", "no other session on the database"));
    }
    let list: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "pid {} {}@{} ({})",
                r.get::<_, i32>(0),
                r.get::<_, String>(1),
                r.get::<_, String>(3),
                r.get::<_, String>(2)
            )
        })
        .collect();
    if later {
        return Ok(Check::new(
            "sessions",
            CheckStatus::Deferred,
            format!(
                "{} other session(s) now; earlier steps stop HAPI and end them",
                rows.len()
            ),
        ));
    }
    Ok(Check::fail(
        "sessions",
        format!(
            "{} other session(s) on the database: {}; stop HAPI (scale it to 0) and end them (pg_terminate_backend) before the window",
            rows.len(),
            list.join(", ")
        ),
    ))
}

/// With `[docker]`: no HAPI replica may run. A database-only target checks sessions only.
async fn hapi(cx: &StepCx) -> Option<Check> {
    cx.target.as_deref()?.docker.as_ref()?;
    let r = async {
        let (project, service) = replicas::project_service(cx, None)?;
        let engine = cx.docker().await?;
        let running: Vec<String> = replicas::all_replicas(&engine, &project, &service)
            .await?
            .into_iter()
            .filter(|r| r.state == "running")
            .map(|r| r.name)
            .collect();
        anyhow::Ok((service, running))
    }
    .await;
    Some(match r {
        Ok((_, running)) if running.is_empty() => Check::pass("hapi", "no HAPI replica running"),
        Ok((_, running)) if cx.preflight && cx.after_changes => Check::new(
            "hapi",
            CheckStatus::Deferred,
            format!(
                "{} running now; an earlier step scales them to 0",
                running.join(", ")
            ),
        ),
        Ok((service, running)) => Check::fail(
            "hapi",
            format!(
                "{} replica(s) of {service} running ({}): scale HAPI to 0 first (a `scale` step with replicas = 0)",
                running.len(),
                running.join(", ")
            ),
        ),
        Err(e) => Check::fail("hapi", format!("cannot list the HAPI replicas: {e:#}")),
    })
}
