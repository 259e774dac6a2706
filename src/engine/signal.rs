//! SIGINT/SIGTERM: the first asks the run to stop at the next checkpoint or step boundary
//! (exit 5, resumable); a second one stops the current step at once (its child process
//! group is killed) and the run is still resumable from its last checkpoint.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::signal::unix::{SignalKind, signal};

use crate::report::{Event, Level, Sink};
use crate::steps::Cancel;

#[derive(Clone, Default)]
pub struct Stop {
    pub soft: Cancel,
    pub hard: Cancel,
    count: Arc<AtomicU32>,
}

impl Stop {
    pub fn request(&self) -> u32 {
        let n = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        self.soft.cancel();
        if n >= 2 {
            self.hard.cancel();
        }
        n
    }
}

/// Installs the handlers; they live as long as the runtime.
pub fn install(stop: Stop, sink: Arc<dyn Sink>) -> std::io::Result<()> {
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            };
            let msg = match stop.request() {
                1 => format!("{name}: stopping at the next checkpoint (again to stop now)"),
                _ => format!("{name}: stopping now"),
            };
            sink.emit(Event::log(None, Level::Warn, msg));
        }
    });
    Ok(())
}
