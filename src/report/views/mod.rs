//! The typed answers of the commands (see `report::view`): plain data that the engine,
//! the checks, the sandbox and the command wiring build, rendered here and only here.

pub mod check;
pub mod doctor;
pub mod ig;
pub mod plan;
pub mod record;
pub mod sandbox;
pub mod status;
pub mod unlock;
pub mod validate;
