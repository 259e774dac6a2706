//! Reporters: turn engine events into human lines, JSON lines or a JUnit file.
//!
//! The fan-out is the single `Sink` the engine gets; it redacts every event once, then
//! hands it to each reporter in order. Reporters are the only code that writes to the
//! terminal during a run.

pub mod event;
pub mod human;
pub mod json;
pub mod junit;
pub mod prompt;
pub mod record;
pub mod redact;
pub mod view;
pub mod views;

use std::sync::Mutex;

pub use event::{
    CheckStatus, Event, Level, Mode, Phase, RunOutcome, Sink, StepStatus, Stream, Unit,
};

pub trait Reporter: Send {
    fn event(&mut self, ts: &str, event: &Event);
    /// Called once at the end (also after a failure or an interrupt).
    fn finish(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Default)]
pub struct Fanout {
    reporters: Mutex<Vec<Box<dyn Reporter>>>,
}

impl Fanout {
    pub fn new(reporters: Vec<Box<dyn Reporter>>) -> Self {
        Fanout {
            reporters: Mutex::new(reporters),
        }
    }

    pub fn finish(&self) -> std::io::Result<()> {
        let mut rs = self.reporters.lock().unwrap_or_else(|e| e.into_inner());
        for r in rs.iter_mut() {
            r.finish()?;
        }
        Ok(())
    }
}

impl Sink for Fanout {
    fn emit(&self, mut event: Event) {
        event.redact();
        let ts = now_rfc3339();
        let mut rs = self.reporters.lock().unwrap_or_else(|e| e.into_inner());
        for r in rs.iter_mut() {
            r.event(&ts, &event);
        }
    }
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl Event {
    /// Masks secrets in every free-text field.
    pub fn redact(&mut self) {
        use redact::redact_in_place as r;
        match self {
            Event::StepStarted { description, .. } => r(description),
            Event::Check { detail, .. } => r(detail),
            Event::Output { line, .. } => r(line),
            Event::Log { message, .. } => r(message),
            Event::StepFinished { error: Some(e), .. } => r(e),
            Event::RollbackStarted { reason, .. } => r(reason),
            Event::RunFinished { message, hint, .. } => {
                message.iter_mut().chain(hint.iter_mut()).for_each(r)
            }
            _ => {}
        }
    }
}
