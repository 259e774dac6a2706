//! `seqscan`: EXPLAIN ANALYZE of a representative FHIR search shows no sequential scan on
//! HFJ_RESOURCE (the seed's trigger for the partitioning window). The default query is a
//! type + last-updated listing as HAPI issues it; set `query` per target to your own.

use serde_json::json;

use super::explain::{explain, on_tables};
use super::{CheckCx, Report};

pub const KEYS: &[&str] = &["database", "query", "tables", "query_timeout"];

pub const DEFAULT_QUERY: &str = "SELECT t0.res_id FROM hfj_resource t0 \
    WHERE t0.res_type = 'Observation' AND t0.res_deleted_at IS NULL \
    ORDER BY t0.res_updated DESC LIMIT 50";

pub async fn run(cx: &CheckCx<'_>) -> anyhow::Result<Report> {
    let query = cx.params.string("query", DEFAULT_QUERY)?;
    let tables = cx.params.list("tables", &["hfj_resource"])?;
    let timeout = cx.params.duration("query_timeout", "60s")?;
    let mut client = cx.db("fhir").await?;
    let e = explain(&mut client, &query, timeout).await?;
    let scans = &e.scans;
    let hits = on_tables(scans, &tables);
    let mut details: Vec<String> = hits.iter().map(|s| s.describe()).collect();
    let data = json!({"seq_scans": scans, "tables": tables, "analyzed": e.not_analyzed.is_none(), "not_analyzed": e.not_analyzed});
    let note = e
        .not_analyzed
        .as_ref()
        .map(|n| format!(" ({n})"))
        .unwrap_or_default();
    let report = if hits.is_empty() {
        Report::ok(format!(
            "no sequential scan on {} ({} Seq Scan nodes elsewhere){note}",
            tables.join(", "),
            scans.len()
        ))
    } else {
        Report::alert(format!(
            "sequential scan on {}: partitioning is due{note}",
            details.join("; ")
        ))
    };
    details.extend(e.not_analyzed.clone());
    Ok(report.details(details).data(data))
}
