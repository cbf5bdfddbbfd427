//! The `cis490-reconciler` subcommands; `main.rs` only parses arguments and dispatches here.

pub mod certs;
pub mod check;
pub mod dev;
pub mod serve;
pub mod tokens;
