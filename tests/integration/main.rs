//! Integration tests: one binary, one submodule per area.

mod ig;
