//! `rejection-rate`: vendors (`client_id`) whose share of REJECTED outcomes over the `window`
//! (7d) is above `max_pct` (10%), counting the seed's event types. Vendors with fewer than
//! `min_events` events in the window are not judged (one rejection of two is not a trend).

use serde_json::json;

use super::{CheckCx, Report};

pub const KEYS: &[&str] = &["database", "max_pct", "window", "min_events", "event_types"];

pub async fn run(cx: &CheckCx<'_>) -> anyhow::Result<Report> {
    let max = cx.params.f64("max_pct", 10.0)?;
    let window = cx.params.duration("window", "7d")?;
    let min_events = cx.params.int("min_events", 20)?;
    let types = cx
        .params
        .list("event_types", &["OPERATION", "VALIDATION_FAILURE"])?;
    let client = cx.db("audit").await?;
    let rows = client
        .query(
            "SELECT coalesce(client_id, '(none)'), count(*), count(*) FILTER (WHERE outcome = 'REJECTED') \
             FROM audit.audit_events \
             WHERE event_time > now() - make_interval(secs => $1) AND event_type = ANY($2) \
             GROUP BY 1 ORDER BY count(*) FILTER (WHERE outcome = 'REJECTED')::float8 / count(*) DESC, 1",
            &[&window.as_secs_f64(), &types],
        )
        .await
        .map_err(|e| anyhow::anyhow!("{}", crate::infra::postgres::describe(&e)))?;
    let mut over = vec![];
    let mut details = vec![];
    let mut data = vec![];
    for r in &rows {
        let (vendor, total, rejected): (String, i64, i64) = (r.get(0), r.get(1), r.get(2));
        let pct = 100.0 * rejected as f64 / total as f64;
        details.push(format!(
            "{vendor}: {rejected} of {total} rejected ({pct:.1}%)"
        ));
        data.push(json!({"client_id": vendor, "total": total, "rejected": rejected, "pct": pct}));
        if pct > max && total >= min_events {
            over.push(format!("{vendor} {pct:.1}% ({rejected}/{total})"));
        }
    }
    let days = window.as_secs_f64() / 86400.0;
    let data = json!({"vendors": data, "max_pct": max, "window_days": days});
    Ok(if over.is_empty() {
        Report::ok(format!(
            "{} vendors, none above {max}% rejected over {days:.0} days",
            rows.len()
        ))
    } else {
        Report::alert(format!(
            "vendors above {max}% rejected over {days:.0} days: {}",
            over.join(", ")
        ))
    }
    .details(details)
    .data(data))
}
