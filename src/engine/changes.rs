//! May a run continue with the playbook as it is now? The journal recorded the playbook's
//! hash and every step's fingerprint (kind, resolved parameters, common settings) when the
//! run started; `resume` and `rollback` compare them with the playbook resolved today.

use super::records::RunState;
use crate::error::{Error, Result};
use crate::playbook::Playbook;

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

/// Refuses a playbook whose text changed since the run started, unless `accept`.
pub fn check_unchanged(state: &RunState, pb: &Playbook, accept: bool) -> Result<()> {
    if pb.hash == state.meta.playbook_hash || accept {
        return Ok(());
    }
    let diffs = step_changes(state, pb);
    let what = if diffs.is_empty() {
        "text changed, steps identical".into()
    } else {
        diffs.join(", ")
    };
    Err(Error::invalid(format!(
        "the playbook {} changed since run {} started ({what}); refusing to continue.\n  hint: pass --accept-changes to continue with the new text",
        state.meta.playbook.display(),
        state.meta.run_id
    )))
}
