//! `connections`: active connections as a share of `max_connections` stays below `max_pct`
//! (the seed: < 80%). Counts `state = 'active'` like the seed's query, or every session with
//! `count = "all"` (idle ones hold a slot too).

use serde_json::json;

use super::{CheckCx, Report};

pub const KEYS: &[&str] = &["database", "max_pct", "count"];

pub async fn run(cx: &CheckCx<'_>) -> anyhow::Result<Report> {
    let max_pct = cx.params.f64("max_pct", 80.0)?;
    let mode = cx.params.string("count", "active")?;
    anyhow::ensure!(
        mode == "active" || mode == "all",
        "`count` must be \"active\" or \"all\""
    );
    let client = cx.db("fhir").await?;
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE state = 'active'), count(*) FILTER (WHERE backend_type = 'client backend'), \
                    current_setting('max_connections')::int, \
                    pg_has_role(current_user, 'pg_read_all_stats', 'member') \
             FROM pg_stat_activity",
            &[],
        )
        .await
        .map_err(|e| anyhow::anyhow!("{}", crate::infra::postgres::describe(&e)))?;
    let (active, all, max, full_view): (i64, i64, i32, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let used = if mode == "active" { active } else { all };
    let pct = 100.0 * used as f64 / max as f64;
    let mut details = vec![format!(
        "{active} active, {all} client sessions, max_connections {max}"
    )];
    if !full_view {
        details.push("this login lacks pg_read_all_stats: other roles' sessions show no state, so `active` may undercount".into());
    }
    let data = json!({"active": active, "sessions": all, "max_connections": max, "pct": pct, "max_pct": max_pct});
    let what = if mode == "active" { "active" } else { "open" };
    let line = format!("{used} of {max} connections {what} ({pct:.1}%, threshold {max_pct}%)");
    Ok(if pct >= max_pct {
        Report::alert(line)
    } else {
        Report::ok(line)
    }
    .details(details)
    .data(data))
}
