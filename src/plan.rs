//! `ferry plan`: the view of a resolved playbook (rendered by `report::views::plan`). Pure:
//! it touches nothing.

use crate::playbook::{OnFailure, Playbook};
use crate::report::views::plan::{self as view, PlanStep, PlanView, Reversible};
use crate::steps::{Reversibility, Step};
use crate::target::Target;

pub fn view(pb: &Playbook, target: Option<&Target>) -> PlanView {
    let steps = pb
        .steps
        .iter()
        .map(|s| {
            let (reversible, undo) = match s.spec.reversibility() {
                Reversibility::Reversible(h) => (Reversible::Yes, h),
                Reversibility::Irreversible(w) => (Reversible::No, w),
                Reversibility::NothingToUndo => (Reversible::Nothing, String::new()),
            };
            PlanStep {
                id: s.id.clone(),
                kind: s.kind.clone(),
                does: s.description.clone().unwrap_or_else(|| s.spec.describe()),
                undo,
                reversible,
                timeout_ms: s.timeout.map(|t| t.as_millis() as u64),
                retries: s.retries,
                retry_delay: s.retry_delay,
                on_failure: match s.on_failure {
                    OnFailure::Rollback => view::OnFailure::Rollback,
                    OnFailure::Stop => view::OnFailure::Stop,
                },
                fingerprint: s.fingerprint.clone(),
            }
        })
        .collect();
    PlanView {
        playbook: pb.name.clone(),
        description: pb.description.clone(),
        path: pb.path.display().to_string(),
        target: target.map(|t| t.name.clone()),
        production: target.is_some_and(|t| t.production),
        hash: pb.hash.clone(),
        steps,
    }
}
