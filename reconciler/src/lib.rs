//! cis490-reconciler: the manifest model, the pure reconcile planner, the SQLite job queue,
//! the artifact store and the HTTP API.
//!
//! Data flows one way: manifest file -> `manifest` (parse, validate, expand) -> `plan`
//! (pure diff against the queue) -> `queue` (one SQLite transaction) -> `http` -> agents.

pub mod certs;
pub mod cli;
pub mod manifest;
pub mod plan;
pub mod policy;
pub mod queue;
pub mod server;
pub mod store;
