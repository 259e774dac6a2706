//! Playbooks: TOML → raw tree with spans (`util::parse`) → typed, interpolated `Playbook`
//! (`resolve`). Errors are `util::diagnostic::Diagnostic`s rendered with file:line:col and
//! a caret.

pub mod interpolate;
pub mod model;
pub mod resolve;

pub use model::{OnFailure, Playbook, StepDef};
pub use resolve::{Input, load};
