//! Integration tests: one binary that runs the real `ferry`, one submodule per area.

mod harness;
mod ig;
