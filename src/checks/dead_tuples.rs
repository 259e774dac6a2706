//! `dead-tuples`: the dead-tuple ratio of HAPI's hottest tables (hfj_resource,
//! hfj_spidx_token, hfj_res_ver) stays at or below `max_dead_pct` (the seed: VACUUM above
//! 10%). Tables under `min_rows` live+dead rows are ignored: a ratio of tiny numbers is noise.

use serde_json::json;

use super::{CheckCx, Report};

pub const KEYS: &[&str] = &["database", "tables", "max_dead_pct", "min_rows"];

pub async fn run(cx: &CheckCx<'_>) -> anyhow::Result<Report> {
    let tables = cx.params.list(
        "tables",
        &["hfj_resource", "hfj_spidx_token", "hfj_res_ver"],
    )?;
    let max = cx.params.f64("max_dead_pct", 10.0)?;
    let min_rows = cx.params.int("min_rows", 1000)?;
    let client = cx.db("fhir").await?;
    let rows = client
        .query(
            "SELECT relname::text, n_live_tup, n_dead_tup FROM pg_stat_user_tables WHERE relname = ANY($1) ORDER BY relname",
            &[&tables],
        )
        .await
        .map_err(|e| anyhow::anyhow!("{}", crate::infra::postgres::describe(&e)))?;
    let found: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let absent: Vec<&String> = tables.iter().filter(|t| !found.contains(t)).collect();
    anyhow::ensure!(
        absent.is_empty(),
        "table(s) not found: {} (is this the HAPI database?)",
        absent
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut over = vec![];
    let mut details = vec![];
    let mut data = vec![];
    for r in &rows {
        let (name, live, dead): (String, i64, i64) = (r.get(0), r.get(1), r.get(2));
        let pct = if live + dead == 0 {
            0.0
        } else {
            100.0 * dead as f64 / (live + dead) as f64
        };
        details.push(format!(
            "{name}: {dead} dead of {} ({pct:.1}%)",
            live + dead
        ));
        data.push(json!({"table": name, "live": live, "dead": dead, "dead_pct": pct}));
        if pct > max && live + dead >= min_rows {
            over.push(format!("{name} {pct:.1}%"));
        }
    }
    let data = json!({"tables": data, "max_dead_pct": max});
    Ok(if over.is_empty() {
        Report::ok(format!(
            "dead tuples at or below {max}% on {}",
            tables.join(", ")
        ))
    } else {
        Report::alert(format!(
            "dead tuples above {max}%: {} (VACUUM them)",
            over.join(", ")
        ))
    }
    .details(details)
    .data(data))
}
