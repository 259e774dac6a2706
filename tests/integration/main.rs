//! Integration tests: one binary that runs the real `ferry`, one submodule per area.

mod checks;
mod crash;
mod engine;
mod harness;
mod ig;
mod prometheus;
mod sql;
mod validate;
