//! Playbooks: TOML → raw tree with spans (`parse`) → typed, interpolated `Playbook`
//! (`resolve`). Errors are `Diagnostic`s rendered with file:line:col and a caret.

pub mod diagnostic;
pub mod interpolate;
pub mod model;
pub mod parse;
pub mod resolve;

pub use model::{OnFailure, Playbook, StepDef};
pub use resolve::{Input, load};
