//! The reads the shared rules of the queue make, each backend's own (SQLite's `Tx`,
//! PostgreSQL's `PgTx`), so that a rule that needs a few rows is written once: the
//! retry-elsewhere rule of `failures.rs`, and `explain.rs` (whose own reads extend these).

use std::collections::BTreeSet;

use super::nodes::WorkerRow;
use super::tx::TxContext;
use super::QueueError;
use crate::policy::HostPolicy;

pub(crate) trait RuleReads: TxContext {
    /// Every known worker.
    fn workers(&mut self) -> Result<Vec<WorkerRow>, QueueError>;
    fn host_policy(&mut self, worker: &str) -> Result<Option<HostPolicy>, QueueError>;
    /// The workers `job` failed on.
    fn failed_workers(&mut self, job: &str) -> Result<BTreeSet<String>, QueueError>;
}
