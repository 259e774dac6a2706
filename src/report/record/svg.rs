//! The timeline of a run as inline SVG: one row per step, a bar per apply and per undo,
//! coloured by how it ended ([`super::colour`]), the downtime of the service shaded behind
//! the bars, and marker lines where the rollback began and where the run was interrupted.
//!
//! Invariants: plain SVG 1.1 elements and attributes only (no script, no foreignObject, no
//! external href), every text escaped, well-formed XML (the tests parse it). Bars are at
//! least [`MIN_BAR`] wide so that an instant (a skipped step, a 5 ms command) still shows.

use std::fmt::Write as _;

use super::html::esc;
use super::{colour, fmt_ms};
use crate::report::views::record::{ChangeRecord, SpanKind};

const WIDTH: u32 = 960;
const LEFT: u32 = 200;
const RIGHT: u32 = 20;
const TOP: u32 = 34;
const ROW: u32 = 26;
const BAR: u32 = 14;
pub const MIN_BAR: f64 = 4.0;
/// The colour of the chart's frame, used nowhere else on the page.
pub const FRAME: &str = "#90a4ae";
/// Room under the rows for the axis labels.
const BOTTOM: u32 = 30;

/// A tick every 1, 2 or 5 × 10ⁿ ms, at most about eight of them.
fn tick_step(total: u64) -> u64 {
    let mut step = 1u64;
    loop {
        for m in [1, 2, 5] {
            if total / (step * m) <= 8 {
                return step * m;
            }
        }
        step *= 10;
    }
}

fn label(id: &str) -> String {
    if id.chars().count() <= 26 {
        return id.to_owned();
    }
    id.chars().take(25).collect::<String>() + "…"
}

pub fn timeline(r: &ChangeRecord) -> String {
    let total = r.duration_ms.unwrap_or(0).max(1);
    let chart = (WIDTH - LEFT - RIGHT) as f64;
    let x = |ms: u64| LEFT as f64 + ms.min(total) as f64 * chart / total as f64;
    let rows = r.steps.len().max(1) as u32;
    let height = TOP + rows * ROW + BOTTOM;
    let bottom = TOP + rows * ROW;
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" role="img" aria-label="Timeline of run {id}" font-family="DejaVu Sans, Arial, sans-serif" font-size="12">"##,
        id = esc(&r.run_id)
    );
    let _ = write!(
        s,
        r##"<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="#ffffff"/>"##
    );
    // Zebra rows, then the downtime, then the bars over them (each colour stays exact).
    for i in (1..rows).step_by(2) {
        let _ = write!(
            s,
            r##"<rect x="0" y="{y}" width="{WIDTH}" height="{ROW}" fill="#f5f5f5"/>"##,
            y = TOP + i * ROW
        );
    }
    for d in &r.downtime {
        let (x1, x2) = (x(d.from_ms), x(d.to_ms.unwrap_or(total)));
        let until = match &d.started_by {
            Some(step) => format!("started again by {step}"),
            None => "not started again in this run".into(),
        };
        let long = d.to_ms.unwrap_or(total) - d.from_ms;
        let _ = write!(
            s,
            r##"<g class="downtime"><title>{svc} down for {dur}: stopped by {by}, {until}</title><rect x="{x1:.1}" y="{y}" width="{w:.1}" height="{h}" fill="#ffe0b2" stroke="#ef6c00" stroke-dasharray="4 3"/><text x="{tx:.1}" y="{ty}" fill="#bf360c" font-weight="bold">{svc} down {dur}</text></g>"##,
            svc = esc(&d.service),
            dur = fmt_ms(long),
            by = esc(&d.stopped_by),
            until = esc(&until),
            y = TOP - 4,
            w = (x2 - x1).max(MIN_BAR),
            h = rows * ROW + 4,
            tx = x1 + 3.0,
            ty = TOP - 8,
        );
    }
    let step = tick_step(total);
    let mut t = 0;
    while t <= total {
        let _ = write!(
            s,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{bottom}" stroke="#e0e0e0"/><text x="{x:.1}" y="{ty}" text-anchor="middle" fill="#555555">{label}</text>"##,
            x = x(t),
            ty = bottom + 16,
            label = fmt_ms(t),
        );
        t += step;
    }
    for (i, st) in r.steps.iter().enumerate() {
        let y = TOP + i as u32 * ROW;
        let _ = write!(
            s,
            r##"<text x="8" y="{ty}" fill="#212121"><title>{full}</title>{short}</text>"##,
            ty = y + ROW / 2 + 4,
            full = esc(&st.id),
            short = esc(&label(&st.id)),
        );
        for sp in &st.spans {
            let (x1, x2) = (x(sp.from_ms), x(sp.to_ms));
            let what = match sp.kind {
                SpanKind::Apply => "apply",
                SpanKind::Undo => "undo",
            };
            let _ = write!(
                s,
                r##"<rect class="bar {what}" x="{x1:.1}" y="{by}" width="{w:.1}" height="{BAR}" fill="{fill}"><title>{id}: {what} {dur}, {end}</title></rect>"##,
                by = y + (ROW - BAR) / 2,
                w = (x2 - x1).max(MIN_BAR),
                fill = colour(sp.end),
                id = esc(&st.id),
                dur = fmt_ms(sp.to_ms - sp.from_ms),
                end = sp.end.as_str(),
            );
        }
    }
    let mut marker = |at: u64, text: &str| {
        let _ = write!(
            s,
            r##"<g class="marker"><line x1="{x:.1}" y1="{y1}" x2="{x:.1}" y2="{bottom}" stroke="#455a64" stroke-width="1.5" stroke-dasharray="2 2"/><text x="{tx:.1}" y="{y1}" fill="#455a64" font-size="11">{text}</text></g>"##,
            x = x(at),
            y1 = TOP - 20,
            tx = x(at) + 3.0,
            text = esc(text),
        );
    };
    for rb in &r.rollbacks {
        marker(rb.at_ms, "rollback");
    }
    for i in &r.interruptions {
        marker(i.at_ms, "interrupted");
    }
    for se in &r.sessions {
        marker(se.at_ms, "resumed");
    }
    // The chart's frame, on pixel centres so that it is drawn crisp in [`FRAME`] (tests
    // find the timeline in a screenshot by it).
    let _ = write!(
        s,
        r##"<rect class="frame" x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h}" fill="none" stroke="{FRAME}" shape-rendering="crispEdges"/>"##,
        x = LEFT as f64 - 0.5,
        y = TOP as f64 - 0.5,
        w = chart + 1.0,
        h = rows * ROW + 1,
    );
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_few() {
        assert_eq!(tick_step(1), 1);
        assert_eq!(tick_step(1_000), 200);
        assert_eq!(tick_step(3_500), 500);
        assert_eq!(tick_step(7_200_000), 1_000_000);
    }
}
