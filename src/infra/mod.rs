//! Thin, typed wrappers over the outside world. No policy: callers decide what a result means.

pub mod docker;
pub mod dotenv;
pub mod http;
pub mod postgres;
pub mod process;
pub mod registry;
