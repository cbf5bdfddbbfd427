//! The SQLite job queue: every state change of a job is one IMMEDIATE transaction, durable
//! (WAL, `synchronous=FULL`) before the call returns Ok.
//!
//! Shape (after buildomat's database crate): public methods on [`Queue`] open one
//! transaction with `Queue::write` or `Queue::read` and call an `i_*` helper that runs
//! inside it, so helpers compose (claim = upsert node + pick + lease + event, all or
//! nothing). Writes go through one owner: a `Mutex<Connection>`. The hot worker calls
//! (claim, heartbeat, complete, fail) share commits when they arrive together (group
//! commit, `batch.rs`): each still runs all-or-nothing (in its own SAVEPOINT) and is
//! answered only after the commit that holds it.
//!
//! Job lifecycle and attempt counting (the rules are in `transitions.rs`):
//! - `claim` moves pending -> claimed and uses one attempt; the lease is (attempt, token).
//! - the first `heartbeat` moves claimed -> running. A lease is valid until `sweep` expires
//!   it, so a heartbeat that arrives late but before the sweep still extends it.
//! - `complete` -> completed (a tombstoned job also gets an `Orphaned` event).
//! - `fail` with `retryable` (agent shutting down) -> pending, the attempt is refunded.
//! - `fail` without `retryable` (trainer failure) -> failed, unless
//!   `spec.retry.retries_on_failure` allows another try and attempts remain -> pending.
//! - `sweep` finds expired leases: pending again while attempts remain, else failed with
//!   "lease expired N times (agent vanished)".
//! - `cancel` (pending, claimed, running) -> cancelled at once. The cancelled job's old
//!   lease stays valid **only for heartbeat**, which answers `{cancel: true}` so the agent
//!   stops its trainer; `complete`, `fail` and `check_lease` on it answer `LeaseLost`.
//! - `requeue` (failed, cancelled, completed) -> pending with attempts reset to 0.
//! - `hold` (pending) -> held: never claimed, updated and tombstoned like pending;
//!   `release` (held) -> pending. `cancel` takes a held job; `requeue` refuses it.

mod apply;
pub(crate) mod artifact_index;
mod batch;
mod checkpoint;
mod clock;
pub use clock::{Clock, ManualClock, SystemClock};
mod error;
use error::bad_request;
pub use error::QueueError;
mod events;
pub use events::EventFilter;
mod explain;
mod failures;
mod hold;
mod job_queue;
pub use job_queue::{Finished, JobQueue, SharedQueue};
pub(crate) mod lease;
mod lease_writes;
pub mod listing;
mod log_pages;
mod log_rows;
pub mod logs;
mod matching;
mod nodes;
mod operator;
mod placement;
pub mod postgres;
pub mod receipts;
mod rule_reads;
pub use postgres::PgQueue;
pub(crate) mod reads;
mod results;
mod rows;
pub use rows::LeasedJob;
mod schema;
mod sweep;
pub mod tokens;
mod tx;
mod worker_names;
mod worker_ops;
pub(crate) use tx::Tx;
use worker_ops::Schedulable;
mod transitions;

#[cfg(test)]
mod concurrency_tests;
#[cfg(test)]
mod events_tests;
#[cfg(test)]
mod failures_tests;
#[cfg(test)]
mod forget_worker_tests;
#[cfg(test)]
mod hold_tests;
#[cfg(test)]
mod identity_tests;
#[cfg(test)]
mod logs_tests;
#[cfg(test)]
mod placement_tests;
#[cfg(test)]
mod results_tests;
#[cfg(test)]
mod selector_tests;
#[cfg(test)]
pub(crate) mod test_support;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod transitions_tests;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use cis490_api::{
    ArtifactId, Capability, ClaimResponse, CompleteRequest, EventsPage, Explain, FailRequest,
    HeartbeatRequest, HeartbeatResponse, IdPrefix, JobFilter, JobId, JobStatusResponse, JobView,
    Lease, LogPage, LogQuery, ManifestError, ManifestStatus, PlanSummary, WorkerName, WorkerView,
};
use rusqlite::Connection;

use crate::plan::{ActualJob, Plan};
use crate::policy::HostPolicy;

/// Prepared statements each connection keeps (more than the queue has distinct ones, so
/// none is ever parsed twice).
const STATEMENT_CACHE_CAPACITY: usize = 256;

/// Tunables of the queue that do not come from the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// A non-CUDA worker takes a `prefer_cuda` job once it has been pending this long, even
    /// while a CUDA worker that could run it is Ready.
    pub prefer_cuda_wait_s: u64,
    /// A worker not seen (claim, heartbeat, node report) for this long is NotReady.
    pub node_stale_after_s: u64,
    /// The most log text kept per attempt: past it the first half and the latest part are
    /// kept (see `logs.rs`).
    pub max_log_bytes_per_attempt: u64,
    /// A job that failed on a worker waits this long for a worker it has not failed on
    /// before that worker may take it again (while another Ready worker could run it).
    pub retry_elsewhere_wait_s: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            prefer_cuda_wait_s: 300,
            node_stale_after_s: 90,
            max_log_bytes_per_attempt: logs::DEFAULT_MAX_LOG_BYTES_PER_ATTEMPT,
            retry_elsewhere_wait_s: 300,
        }
    }
}

/// Where an applied manifest came from, stored as the manifest status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ManifestSource {
    pub path: String,
    /// sha256 of the manifest text.
    pub sha256: String,
    pub warnings: Vec<String>,
}

/// What one `sweep` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepOutcome {
    /// Jobs whose lease expired and that went back to pending.
    pub requeued: Vec<JobId>,
    /// Jobs whose lease expired with no attempts left.
    pub failed: Vec<JobId>,
}

/// The job queue. Cheap to clone (shared state); `Send + Sync`. All methods block on
/// SQLite: call them from `tokio::task::spawn_blocking` in async code.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Mutex<Connection>,
    config: QueueConfig,
    /// The time of each transaction (the wall clock but in tests and simulations).
    clock: Arc<dyn Clock>,
    last_event: tokio::sync::watch::Sender<u64>,
    /// Worker calls waiting for a group commit (see `batch.rs`).
    waiting: batch::Waiting,
    /// Dropping it stops the checkpoint thread (file databases only).
    checkpointer: Mutex<Option<std::sync::mpsc::Sender<()>>>,
    /// A read-only connection for the lookups that authenticate requests (file databases
    /// only; an in-memory queue reads through `conn`). In WAL mode it reads the last
    /// commit without waiting for the writer, so a request's credential check never queues
    /// behind a group commit.
    auth_reader: Option<Mutex<Connection>>,
    /// The key of upload receipts (`receipts.rs`), as the database keeps it.
    receipt_key: receipts::ReceiptKey,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Queue {
    /// Opens (creating if needed) the queue database at `path` and migrates it.
    pub fn open(path: &Path, config: QueueConfig) -> Result<Queue, QueueError> {
        Self::open_with_clock(path, config, Arc::new(SystemClock))
    }

    /// [`Queue::open`] on `clock` instead of the wall clock.
    pub fn open_with_clock(
        path: &Path,
        config: QueueConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Queue, QueueError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let conn = Connection::open(path)?;
        let mut queue = Self::with_connection(conn, config, true, clock)?;
        let reader = Connection::open(path)?;
        reader.pragma_update(None, "query_only", true)?;
        reader.busy_timeout(std::time::Duration::from_secs(10))?;
        reader.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
        match Arc::get_mut(&mut queue.inner) {
            Some(inner) => inner.auth_reader = Some(Mutex::new(reader)),
            None => return Err(QueueError::corrupt("the new queue is already shared")),
        }
        queue.start_checkpointer(path)?;
        Ok(queue)
    }

    /// A queue in memory, for tests and `--dry-run` tools. Nothing survives the process.
    pub fn open_in_memory(config: QueueConfig) -> Result<Queue, QueueError> {
        Self::open_in_memory_with_clock(config, Arc::new(SystemClock))
    }

    /// [`Queue::open_in_memory`] on `clock` instead of the wall clock.
    pub fn open_in_memory_with_clock(
        config: QueueConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Queue, QueueError> {
        let conn = Connection::open_in_memory()?;
        Self::with_connection(conn, config, false, clock)
    }

    fn with_connection(
        mut conn: Connection,
        config: QueueConfig,
        wal: bool,
        clock: Arc<dyn Clock>,
    ) -> Result<Queue, QueueError> {
        if wal {
            // journal_mode answers with a row, so it is a query, not a plain pragma update.
            let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(QueueError::corrupt(format!(
                    "could not switch the database to WAL mode (got {mode})"
                )));
            }
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Each operation of a group commit runs in a SAVEPOINT, whose undo pages go to a
        // statement journal: in memory, not a temp file written (and read back) for every
        // page a claim touches. It only serves rollbacks inside an open transaction, so
        // crash safety (the WAL) is untouched. (Profile: 17% of claim time was writing it.)
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        // The default 2 MiB page cache re-reads the claim indexes from the OS on every
        // batch once a queue holds tens of thousands of jobs; 8 MiB holds the hot pages
        // (the claim indexes hold only pending jobs) without much RSS on a Raspberry Pi.
        conn.pragma_update(None, "cache_size", -8 * 1024)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        // Every statement the queue runs is prepared once and kept: rusqlite keeps 16 by
        // default, fewer than one claim, heartbeat and completion use between them, and a
        // statement that falls out of the cache is parsed and planned again on its next use.
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
        schema::migrate(&mut conn)?;
        conn.execute(
            "INSERT OR IGNORE INTO secrets (name, value) VALUES (?1, ?2)",
            rusqlite::params![receipts::KEY_NAME, receipts::ReceiptKey::generate()],
        )?;
        let receipt_key = receipts::ReceiptKey::from_stored(conn.query_row(
            "SELECT value FROM secrets WHERE name = ?1",
            [receipts::KEY_NAME],
            |r| r.get(0),
        )?)?;
        let last: i64 =
            conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))?;
        let (sender, _) = tokio::sync::watch::channel(last.max(0) as u64);
        Ok(Queue {
            inner: Arc::new(Inner {
                conn: Mutex::new(conn),
                config,
                clock,
                last_event: sender,
                waiting: batch::Waiting::default(),
                checkpointer: Mutex::new(None),
                auth_reader: None,
                receipt_key,
            }),
        })
    }

    fn now_ms(&self) -> i64 {
        self.inner.clock.now_ms()
    }

    /// A `NameInUse` refusal is rolled back with the claim or report it refused, so it is
    /// recorded here, in a transaction of its own: the operator sees that a second agent
    /// tried the name. Other errors pass through.
    fn noted_refusal(&self, worker: &WorkerName, err: QueueError) -> QueueError {
        if let QueueError::NameInUse { message, .. } = &err {
            let recorded = self.write(|tx| {
                events::i_event(
                    tx,
                    None,
                    Some(worker.as_str()),
                    events::kind::NAME_IN_USE,
                    format!("refused a second agent: {message}"),
                )
            });
            if let Err(e) = recorded {
                tracing::warn!(error = %e, "could not record a name_in_use refusal");
            }
        }
        err
    }
}

impl JobQueue for Queue {
    fn config(&self) -> &QueueConfig {
        &self.inner.config
    }

    fn now(&self) -> DateTime<Utc> {
        rows::from_ms(self.now_ms())
    }

    fn actual(&self) -> Result<Vec<ActualJob>, QueueError> {
        self.read(apply::i_actual)
    }

    fn apply(
        &self,
        plan: &Plan,
        hosts: &[HostPolicy],
        source: &ManifestSource,
    ) -> Result<PlanSummary, QueueError> {
        self.write(|tx| apply::i_apply(tx, plan, hosts, source))
    }

    fn record_manifest_errors(
        &self,
        path: &str,
        errors: &[ManifestError],
    ) -> Result<(), QueueError> {
        self.write(|tx| apply::i_record_manifest_errors(tx, path, errors))
    }

    fn manifest_status(&self) -> Result<ManifestStatus, QueueError> {
        self.read(apply::i_manifest_status)
    }

    fn claim(
        &self,
        worker: &WorkerName,
        cap: &Capability,
    ) -> Result<Option<ClaimResponse>, QueueError> {
        self.batched(batch::Claim(worker.clone(), cap.clone()))
            .map_err(|e| self.noted_refusal(worker, e))
    }

    fn heartbeat(
        &self,
        id: &JobId,
        req: &HeartbeatRequest,
    ) -> Result<HeartbeatResponse, QueueError> {
        if let Some(point) = &req.progress {
            cis490_api::results::check_point(point).map_err(bad_request)?;
        }
        self.batched(batch::Heartbeat(id.clone(), req.clone()))
    }

    fn check_lease(
        &self,
        id: &JobId,
        worker: &WorkerName,
        lease: &Lease,
    ) -> Result<LeasedJob, QueueError> {
        self.read(|tx| lease_writes::i_leased_job(tx, id, worker, lease))
    }

    fn record_upload(
        &self,
        id: &JobId,
        worker: &WorkerName,
        lease: &Lease,
        artifact: &ArtifactId,
        size_bytes: u64,
    ) -> Result<(), QueueError> {
        self.batched(batch::Upload(
            id.clone(),
            worker.clone(),
            lease.clone(),
            artifact.clone(),
            size_bytes,
        ))
    }

    fn receipt_key(&self) -> &receipts::ReceiptKey {
        &self.inner.receipt_key
    }

    fn complete_with_model(
        &self,
        id: &JobId,
        req: &CompleteRequest,
    ) -> Result<crate::queue::Finished, QueueError> {
        req.report.check().map_err(bad_request)?;
        self.inner.receipt_key.check(id, req)?;
        self.batched(batch::Complete(id.clone(), req.clone()))
    }

    fn fail_with_model(
        &self,
        id: &JobId,
        req: &FailRequest,
    ) -> Result<crate::queue::Finished, QueueError> {
        req.report.check().map_err(bad_request)?;
        self.batched(batch::Fail(id.clone(), req.clone()))
    }

    fn cancel(&self, id: &JobId) -> Result<JobStatusResponse, QueueError> {
        self.write(|tx| operator::i_cancel(tx, id))
    }

    fn requeue(&self, id: &JobId) -> Result<JobStatusResponse, QueueError> {
        self.write(|tx| operator::i_requeue(tx, id))
    }

    fn hold(&self, id: &JobId) -> Result<JobStatusResponse, QueueError> {
        self.write(|tx| hold::i_hold(tx, id))
    }

    fn release(&self, id: &JobId) -> Result<JobStatusResponse, QueueError> {
        self.write(|tx| hold::i_release(tx, id))
    }

    fn sweep(&self, now: DateTime<Utc>) -> Result<SweepOutcome, QueueError> {
        self.write(|tx| sweep::i_sweep(tx, now.timestamp_millis()))
    }

    fn resolve(&self, prefix: &IdPrefix) -> Result<JobId, QueueError> {
        self.read(|tx| reads::i_resolve(tx, prefix))
    }

    fn job(&self, id: &JobId) -> Result<JobView, QueueError> {
        self.read(|tx| reads::i_job_view(tx, id, true))
    }

    fn jobs_page(
        &self,
        filter: &JobFilter,
        after: Option<&listing::JobCursor>,
        limit: usize,
    ) -> Result<cis490_api::Page<JobView>, QueueError> {
        self.read(|tx| listing::i_jobs_page(tx, filter, after, limit))
    }

    fn completed_models(&self) -> Result<Vec<String>, QueueError> {
        self.read(listing::i_completed_models)
    }

    fn workers_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<cis490_api::Page<WorkerView>, QueueError> {
        self.read(|tx| listing::i_workers_page(tx, after, limit))
    }

    fn uploads_page(
        &self,
        before: Option<i64>,
        limit: usize,
    ) -> Result<(Vec<cis490_api::ArtifactView>, Option<i64>), QueueError> {
        self.read(|tx| listing::i_uploads_page(tx, before, limit))
    }

    fn index_artifacts(&self, rows: &[cis490_api::ArtifactView]) -> Result<usize, QueueError> {
        if rows.is_empty() {
            return Ok(0);
        }
        self.batched(batch::IndexArtifacts(rows.to_vec()))
    }

    fn artifact_indexed(&self, id: &cis490_api::ArtifactId) -> Result<bool, QueueError> {
        self.read(|tx| artifact_index::i_contains(tx, id))
    }

    fn unrecorded_artifacts_page(
        &self,
        after: Option<&cis490_api::ArtifactId>,
        limit: usize,
    ) -> Result<(Vec<cis490_api::ArtifactView>, bool), QueueError> {
        self.read(|tx| artifact_index::i_unrecorded_page(tx, after, limit))
    }

    fn job_log(&self, id: &JobId, query: &LogQuery) -> Result<LogPage, QueueError> {
        self.read(|tx| log_rows::i_read(tx, id, query))
    }

    fn results_page(
        &self,
        query: &cis490_api::ResultsQuery,
        limit: usize,
    ) -> Result<cis490_api::Page<cis490_api::ResultRow>, QueueError> {
        self.read(|tx| results::i_results_page(tx, query, limit))
    }

    fn job_model(&self, id: &JobId) -> Result<Option<String>, QueueError> {
        use rusqlite::OptionalExtension;
        self.auth_read(|db| {
            db.prepare_cached("SELECT model FROM jobs WHERE id = ?1")?
                .query_row([id.as_str()], |r| r.get(0))
                .optional()
        })
    }

    fn job_progress(&self, id: &JobId) -> Result<cis490_api::JobProgress, QueueError> {
        self.read(|tx| {
            let row = rows::i_existing_job(tx, id)?;
            results::i_job_progress(tx, &row)
        })
    }

    fn explain(&self, id: &JobId) -> Result<Explain, QueueError> {
        self.read(|tx| explain::i_explain(tx, id))
    }

    fn report_node(&self, worker: &WorkerName, cap: &Capability) -> Result<WorkerView, QueueError> {
        self.write(|tx| {
            worker_names::i_upsert_worker(tx, worker, cap)?;
            nodes::i_worker_view(tx, worker)
        })
        .map_err(|e| self.noted_refusal(worker, e))
    }

    fn record_wrong_worker(
        &self,
        job: Option<&JobId>,
        proven: &WorkerName,
        claimed: &WorkerName,
        refusal: &str,
    ) -> Result<(), QueueError> {
        self.write(|tx| {
            events::i_event(
                tx,
                job,
                Some(proven.as_str()),
                events::kind::WRONG_WORKER,
                format!("refused: worker {proven} tried to act as worker {claimed} ({refusal})"),
            )
        })
    }

    fn host_policies(&self) -> Result<Vec<HostPolicy>, QueueError> {
        self.read(|tx| {
            let mut stmt = tx
                .db
                .prepare_cached("SELECT policy FROM hosts ORDER BY name")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            rows.map(|json| {
                serde_json::from_str(&json?).map_err(|e| QueueError::corrupt(e.to_string()))
            })
            .collect()
        })
    }

    fn workers(&self) -> Result<Vec<WorkerView>, QueueError> {
        self.read(nodes::i_workers)
    }

    fn worker(&self, name: &WorkerName) -> Result<WorkerView, QueueError> {
        self.read(|tx| nodes::i_worker_view(tx, name))
    }

    fn cordon(&self, name: &WorkerName) -> Result<WorkerView, QueueError> {
        self.write(|tx| worker_ops::i_set_schedulable(tx, name, Schedulable::Cordon))
    }

    fn forget_worker(&self, name: &WorkerName) -> Result<WorkerView, QueueError> {
        self.write(|tx| worker_ops::i_forget_worker(tx, name))
    }

    fn uncordon(&self, name: &WorkerName) -> Result<WorkerView, QueueError> {
        self.write(|tx| worker_ops::i_set_schedulable(tx, name, Schedulable::Uncordon))
    }

    fn drain(&self, name: &WorkerName) -> Result<WorkerView, QueueError> {
        self.write(|tx| worker_ops::i_set_schedulable(tx, name, Schedulable::Drain))
    }

    fn events_filtered(
        &self,
        since: u64,
        limit: usize,
        filter: &EventFilter,
    ) -> Result<EventsPage, QueueError> {
        self.read(|tx| events::i_events_since(tx, since, limit, filter))
    }

    fn live_counts(&self) -> Result<(BTreeMap<String, u64>, u64), QueueError> {
        self.read(reads::i_live_counts)
    }

    fn counts(&self) -> Result<BTreeMap<String, u64>, QueueError> {
        self.read(reads::i_counts)
    }

    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.last_event.subscribe()
    }

    fn issue_worker_token(&self, name: &WorkerName) -> Result<tokens::IssuedToken, QueueError> {
        tokens::issue(self, name)
    }

    fn revoke_worker_token(&self, name: &WorkerName) -> Result<Option<DateTime<Utc>>, QueueError> {
        tokens::revoke(self, name)
    }

    fn worker_tokens(&self) -> Result<Vec<tokens::WorkerTokenInfo>, QueueError> {
        tokens::list(self)
    }

    fn worker_for_token(&self, token: &str) -> Result<Option<WorkerName>, QueueError> {
        tokens::worker_for(self, token)
    }

    fn worker_tokens_exist(&self) -> Result<bool, QueueError> {
        tokens::any_issued(self)
    }
}
