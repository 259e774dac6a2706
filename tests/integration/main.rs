//! Integration tests: one binary that runs the real `ferry`, one submodule per area.

mod crash;
mod docker;
mod engine;
mod harness;
mod ig;
mod registry;
mod sql;
mod validate;
