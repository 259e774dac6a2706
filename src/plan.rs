//! `ferry plan`: the steps in order, what each would do, and how it would be undone (or
//! that it cannot be). Pure: it renders a resolved playbook, it touches nothing.

use serde_json::json;

use crate::playbook::{OnFailure, Playbook};
use crate::steps::{Reversibility, Step};
use crate::target::Target;
use crate::util::duration::fmt_duration;

pub fn render(pb: &Playbook, target: Option<&Target>, as_json: bool) -> String {
    if as_json {
        let steps: Vec<_> = pb
            .steps
            .iter()
            .map(|s| {
                let (reversible, undo) = match s.spec.reversibility() {
                    Reversibility::Reversible(h) => ("yes", h),
                    Reversibility::Irreversible(w) => ("no", w),
                    Reversibility::NothingToUndo => ("nothing", String::new()),
                };
                json!({
                    "id": s.id, "kind": s.kind, "does": s.description.clone().unwrap_or_else(|| s.spec.describe()),
                    "undo": undo, "reversible": reversible,
                    "timeout_ms": s.timeout.map(|t| t.as_millis() as u64),
                    "retries": s.retries, "on_failure": s.on_failure, "fingerprint": s.fingerprint,
                })
            })
            .collect();
        let v = json!({"playbook": pb.name, "path": pb.path, "target": target.map(|t| &t.name), "hash": pb.hash, "steps": steps});
        return format!("{}\n", serde_json::to_string_pretty(&v).unwrap_or_default());
    }
    let on = target
        .map(|t| {
            format!(
                " on {}{}",
                t.name,
                if t.production { " (PRODUCTION)" } else { "" }
            )
        })
        .unwrap_or_default();
    let mut out = format!("plan: {}{on}, {} steps\n", pb.name, pb.steps.len());
    if !pb.description.is_empty() {
        out += &format!("  {}\n", pb.description);
    }
    for (i, s) in pb.steps.iter().enumerate() {
        out += &format!("\n{:>3}. {} [{}]\n", i + 1, s.id, s.kind);
        out += &format!(
            "     does: {}\n",
            s.description.clone().unwrap_or_else(|| s.spec.describe())
        );
        out += &match s.spec.reversibility() {
            Reversibility::Reversible(h) => format!("     undo: {h}\n"),
            Reversibility::Irreversible(w) => format!("     undo: CANNOT BE UNDONE ({w})\n"),
            Reversibility::NothingToUndo => "     undo: nothing to undo\n".into(),
        };
        let mut extra = vec![];
        if let Some(t) = s.timeout {
            extra.push(format!("timeout {}", fmt_duration(t)));
        }
        if s.retries > 0 {
            extra.push(format!(
                "{} retries every {}",
                s.retries,
                fmt_duration(s.retry_delay)
            ));
        }
        if s.on_failure == OnFailure::Stop {
            extra.push("on failure: stop (no automatic rollback)".into());
        }
        if !extra.is_empty() {
            out += &format!("     {}\n", extra.join(", "));
        }
    }
    out
}
