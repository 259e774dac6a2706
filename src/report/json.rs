//! `--format json`: one event per line on stdout, `{"ts": …, "event": …, …fields}`.

use std::io::Write;

use super::{Event, Reporter};

pub struct JsonReporter<W: Write + Send> {
    out: W,
}

impl<W: Write + Send> JsonReporter<W> {
    pub fn new(out: W) -> Self {
        JsonReporter { out }
    }
}

impl<W: Write + Send> Reporter for JsonReporter<W> {
    fn event(&mut self, ts: &str, event: &Event) {
        let mut v = serde_json::to_value(event).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("ts".into(), ts.into());
        }
        // A closed pipe must not abort the run: the journal, not stdout, is the record.
        let _ = writeln!(self.out, "{v}");
        let _ = self.out.flush();
    }
}
