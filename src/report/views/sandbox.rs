//! `ferry sandbox up|down|status`: each component of the disposable staging and whether it
//! is up. JSON: `{id, dir, ok, components: [{name, up, detail}], target}`; `up` adds
//! `already` (it was set up before and only restarted what was not running); `down` is
//! `{dir, done: [what it stopped and removed]}`.

use serde::Serialize;

use crate::report::view::{View, line};

#[derive(Debug, Serialize)]
pub struct Component {
    pub name: &'static str,
    pub up: bool,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct SandboxStatus {
    /// None: there is no sandbox in `dir`.
    pub id: Option<String>,
    pub dir: String,
    pub ok: bool,
    pub components: Vec<Component>,
    /// The target file to pass to `ferry run --target`.
    pub target: Option<String>,
}

impl SandboxStatus {
    pub fn missing(dir: String) -> Self {
        SandboxStatus {
            id: None,
            dir,
            ok: false,
            components: vec![],
            target: None,
        }
    }

    pub fn new(id: String, dir: String, components: Vec<Component>, target: String) -> Self {
        SandboxStatus {
            ok: components.iter().all(|c| c.up),
            id: Some(id),
            dir,
            components,
            target: Some(target),
        }
    }
}

impl View for SandboxStatus {
    fn human(&self, out: &mut String) {
        let Some(id) = &self.id else {
            line!(out, "no sandbox in {}", self.dir);
            return;
        };
        line!(out, "sandbox {id} in {}", self.dir);
        for c in &self.components {
            let up = if c.up { "up" } else { "DOWN" };
            line!(out, "  {:<14} {up:<5} {}", c.name, c.detail);
        }
        if let Some(t) = &self.target {
            line!(out, "  target: {t}");
        }
    }
}

#[derive(Debug, Serialize)]
pub struct SandboxUp {
    pub already: bool,
    #[serde(flatten)]
    pub status: SandboxStatus,
}

impl View for SandboxUp {
    fn human(&self, out: &mut String) {
        if self.already {
            line!(out, "sandbox already set up; everything running");
        }
        self.status.human(out);
        if let Some(t) = &self.status.target {
            line!(out, "  use it: ferry run PLAYBOOK --target {t}");
        }
    }
}

#[derive(Debug, Serialize)]
pub struct SandboxDown {
    pub dir: String,
    pub done: Vec<String>,
}

impl View for SandboxDown {
    fn human(&self, out: &mut String) {
        for d in &self.done {
            line!(out, "{d}");
        }
    }
}
