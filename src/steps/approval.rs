//! kind = "approval": a manual gate. On a terminal it asks; elsewhere it passes only with
//! `--approve STEP_ID` (or `--yes`, which a production target does not accept). Dry-run shows
//! it as pending. The approval (who, how, when) is journaled as the step's checkpoint.

use anyhow::bail;
use serde::{Deserialize, Serialize};

use super::{Check, Reversibility, Step, StepCx};
use crate::report::{CheckStatus, Level};

pub const KEYS: &[&str] = &["message", "production_only"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    pub message: String,
    /// Only a production target needs a person here; elsewhere the gate is open.
    #[serde(default)]
    pub production_only: bool,
}

impl Approval {
    fn open(&self, cx: &StepCx) -> bool {
        self.production_only && !cx.target.as_deref().is_some_and(|t| t.production)
    }
}

#[derive(Serialize, Deserialize)]
struct Approved {
    by: String,
    at: String,
}

impl Step for Approval {
    fn describe(&self) -> String {
        format!("wait for approval: {}", self.message)
    }

    fn reversibility(&self) -> Reversibility {
        Reversibility::NothingToUndo
    }

    async fn check(&self, cx: &StepCx) -> anyhow::Result<Vec<Check>> {
        let how = format!("pass --approve {}", cx.step_id);
        if self.open(cx) {
            return Ok(vec![Check::pass(
                "approval",
                "not a production target: no approval needed",
            )]);
        }
        Ok(vec![match cx.approvals.approved(&cx.step_id) {
            Some(by) => Check::pass("approval", format!("approved by {by}")),
            None if cx.dry_run => Check::new(
                "approval",
                CheckStatus::Pending,
                format!("needs a person: {how}"),
            ),
            None if cx.prompter.interactive() => {
                Check::new("approval", CheckStatus::Pending, "will ask on the terminal")
            }
            None if cx.approvals.production && cx.approvals.yes => Check::fail(
                "approval",
                format!("--yes does not approve steps on a production target: {how}"),
            ),
            None => Check::fail(
                "approval",
                format!("not approved and no terminal to ask: {how}"),
            ),
        }])
    }

    async fn apply(&self, cx: &StepCx) -> anyhow::Result<()> {
        if cx.checkpoint::<Approved>()?.is_some() || self.open(cx) {
            return Ok(());
        }
        let by = match cx.approvals.approved(&cx.step_id) {
            Some(by) => by,
            None => match cx.prompter.confirm(&format!(
                "{} — approve step `{}`?",
                self.message, cx.step_id
            )) {
                Some(true) => format!("{} on the terminal", whoami()),
                Some(false) => bail!("approval refused on the terminal"),
                None => bail!("not approved: pass --approve {}", cx.step_id),
            },
        };
        cx.log(Level::Info, format!("approved by {by}"));
        cx.save_checkpoint(&Approved {
            by,
            at: crate::report::now_rfc3339(),
        })
    }

    async fn rollback(&self, _cx: &StepCx) -> anyhow::Result<()> {
        Ok(())
    }
}

fn whoami() -> String {
    if let Ok(u) = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")) {
        return u;
    }
    // SAFETY: getpwuid returns null or a pointer to static storage, read at once.
    unsafe {
        let pw = libc::getpwuid(libc::getuid());
        if !pw.is_null() && !(*pw).pw_name.is_null() {
            return std::ffi::CStr::from_ptr((*pw).pw_name)
                .to_string_lossy()
                .into_owned();
        }
        format!("uid {}", libc::getuid())
    }
}
