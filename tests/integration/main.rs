//! Integration tests: one binary that runs the real `ferry`, one submodule per area.

mod changes;
mod checks;
mod crash;
mod docker;
mod engine;
mod hardening;
mod harness;
mod ig;
mod images;
mod prometheus;
mod registry;
mod sandbox;
mod security;
mod sql;
mod validate;
