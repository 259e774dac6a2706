//! Integration tests: one binary that runs the real `ferry`, one submodule per area.
#![allow(clippy::print_stderr, clippy::print_stdout)] // tests say what they skip or saw

mod changes;
mod checks;
mod ci_recipes;
mod crash;
mod docker;
mod doctor;
mod durable;
mod engine;
mod hardening;
mod harness;
mod ig;
mod images;
mod partition;
mod partition_online;
mod partition_online_sandbox;
mod partition_sandbox;
mod pg_settings;
mod phase2_sandbox;
mod prometheus;
mod read_replica;
mod registry;
mod release;
mod report_record;
mod rollout;
mod rollout_crash;
mod rollout_spec;
mod sandbox;
mod sandbox_compose;
mod sandbox_db;
mod sandbox_harness;
mod security;
mod sql;
mod standin_db;
mod validate;
