//! May a run continue with the playbook and target as they are now? The journal recorded
//! the playbook's hash, the target file's hash and every step's fingerprint (kind, resolved
//! parameters — target values and `{{ git.commit }}` included — and common settings) when
//! the run started; `resume` and `rollback` compare them with what resolves today. A
//! resumed run that wrote to a moved `files.root`, or a rollback that removed the wrong
//! files, would report success while doing harm, so any difference is refused unless the
//! operator passes `--accept-changes`.

use super::records::RunState;
use crate::error::{Error, Result};
use crate::playbook::Playbook;
use crate::target::Target;

/// What changed between the run's recorded steps and the playbook's: `added`, `changed`
/// and `removed` step ids, in playbook order then journal order.
pub fn step_changes(state: &RunState, pb: &Playbook) -> Vec<String> {
    let old = &state.meta.steps;
    let mut diffs = vec![];
    for s in &pb.steps {
        match old.iter().find(|o| o.id == s.id) {
            None => diffs.push(format!("added `{}`", s.id)),
            Some(o) if o.fingerprint != s.fingerprint => diffs.push(format!("changed `{}`", s.id)),
            _ => {}
        }
    }
    for o in old {
        if !pb.steps.iter().any(|s| s.id == o.id) {
            diffs.push(format!("removed `{}`", o.id));
        }
    }
    diffs
}

/// Refuses a playbook or target that changed since the run started, unless `accept`.
pub fn check_unchanged(
    state: &RunState,
    pb: &Playbook,
    target: Option<&Target>,
    accept: bool,
) -> Result<()> {
    let m = &state.meta;
    let playbook_changed = pb.hash != m.playbook_hash;
    // Journals from before ferry recorded the target's hash can only be judged by the
    // steps' fingerprints, which hold every target value a step uses.
    let target_changed = match (&m.target_hash, target) {
        (Some(old), Some(t)) => *old != t.hash,
        (Some(_), None) => true,
        (None, _) => false,
    };
    let steps = step_changes(state, pb);
    if accept || !playbook_changed && !target_changed && steps.is_empty() {
        return Ok(());
    }
    let mut what = vec![];
    if playbook_changed {
        what.push(format!("the playbook {}", m.playbook.display()));
    }
    if target_changed {
        let path = m.target.as_ref().map_or("the target".into(), |p| {
            format!("the target {}", p.display())
        });
        what.push(path);
    }
    let whose = if what.is_empty() {
        // Same texts, other values: `{{ git.commit }}` moved, or a file the target names.
        "the resolved steps".to_owned()
    } else {
        what.join(" and ")
    };
    let detail = if steps.is_empty() {
        "text changed, steps identical".into()
    } else {
        steps.join(", ")
    };
    Err(Error::invalid_with_hint(
        format!(
            "{whose} changed since run {} started ({detail}); refusing to continue.",
            m.run_id
        ),
        "pass --accept-changes to continue with the new text",
    ))
}
