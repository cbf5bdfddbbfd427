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
//! Job lifecycle and attempt counting (see `lifecycle.rs`):
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

mod batch;
mod events;
pub use events::EventFilter;
mod explain;
mod failures;
mod forget_worker;
mod hold;
pub(crate) mod lifecycle;
pub mod listing;
pub mod logs;
mod matching;
mod nodes;
mod placement;
mod results;
mod rows;
mod schema;
pub mod tokens;

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

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use cis490_api::{
    ArtifactId, Capability, ClaimResponse, CompleteRequest, EventsPage, Explain, FailRequest,
    HeartbeatRequest, HeartbeatResponse, IdPrefix, JobFilter, JobId, JobSpec, JobStatusResponse,
    JobView, Lease, LogPage, LogQuery, ManifestError, ManifestStatus, PlanSummary, WorkerName,
    WorkerView,
};
use rusqlite::{Connection, TransactionBehavior};

use crate::plan::{ActualJob, Plan};
use crate::policy::HostPolicy;

/// WAL size (in 4 KiB frames, SQLite's own auto-checkpoint size) from which the
/// checkpoint thread makes the WAL start over (see `Queue::start_checkpointer`).
const WAL_REWIND_FRAMES: i64 = 4096;

/// Prepared statements each connection keeps (more than the queue has distinct ones, so
/// none is ever parsed twice).
const STATEMENT_CACHE_CAPACITY: usize = 256;

/// The checkpoint thread takes the writing connection's lock only once an unlocked pass
/// copied no more than this many frames, so the stall it causes stays near one fsync.
const WAL_LOCKED_COPY_FRAMES: i64 = 256;

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

/// Why a queue operation failed. `code()` gives the API error code.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// No job (or worker) matches the ID, prefix or name.
    #[error("no {what} matches {key:?}")]
    NotFound { what: &'static str, key: String },
    /// An ID prefix matches more than one job.
    #[error("job ID prefix {prefix:?} is ambiguous: it matches {}", candidates.join(", "))]
    Ambiguous {
        prefix: String,
        /// Short IDs of (some of) the matching jobs.
        candidates: Vec<String>,
    },
    /// The caller's lease is not the job's current lease (expired and reassigned, wrong
    /// worker, or the job is no longer leased): a fencing refusal.
    #[error("lease lost for job {id}: {reason}")]
    LeaseLost { id: String, reason: String },
    /// The operation is not allowed from the job's (or worker's) current state.
    #[error("{message}")]
    InvalidState { message: String },
    /// Another live agent process (instance) holds the worker name: two agents may not
    /// share one name.
    #[error("{message}")]
    NameInUse { worker: String, message: String },
    /// A completion names an artifact that was not uploaded under the job's current lease
    /// (another job's, or one never uploaded).
    #[error("{message}")]
    ArtifactNotUploaded { message: String },
    /// A completion names no artifact although one was uploaded under the job's current
    /// lease.
    #[error("{message}")]
    ArtifactRequired { message: String },
    /// The request itself is malformed (e.g. a label selector term that is not `key=value`, `key!=value`, `key` or `!key`).
    #[error("{message}")]
    BadRequest { message: String },
    /// SQLite failed.
    #[error("database error: {0}")]
    Db(#[from] rusqlite::Error),
    /// A group commit failed; none of its operations took effect.
    #[error("the database could not commit: {0}")]
    Commit(String),
    /// Creating the database's directory failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A stored value could not be read back (bad JSON, bad ID, unknown status).
    #[error("corrupt queue data: {0}")]
    Corrupt(String),
}

impl QueueError {
    /// The API error code: not_found, ambiguous_id, lease_lost, invalid_state, name_in_use,
    /// artifact_not_uploaded, artifact_required, bad_request, internal.
    pub fn code(&self) -> &'static str {
        match self {
            QueueError::NotFound { .. } => "not_found",
            QueueError::Ambiguous { .. } => "ambiguous_id",
            QueueError::LeaseLost { .. } => "lease_lost",
            QueueError::InvalidState { .. } => "invalid_state",
            QueueError::NameInUse { .. } => "name_in_use",
            QueueError::ArtifactNotUploaded { .. } => "artifact_not_uploaded",
            QueueError::ArtifactRequired { .. } => "artifact_required",
            QueueError::BadRequest { .. } => "bad_request",
            QueueError::Db(_)
            | QueueError::Commit(_)
            | QueueError::Io(_)
            | QueueError::Corrupt(_) => "internal",
        }
    }

    pub(crate) fn corrupt(what: impl std::fmt::Display) -> Self {
        QueueError::Corrupt(what.to_string())
    }

    pub(crate) fn job_not_found(id: &JobId) -> Self {
        QueueError::NotFound {
            what: "job",
            key: id.to_string(),
        }
    }
}

/// A request refused for what it carries (a trainer report beyond its bounds).
fn bad_request(message: String) -> QueueError {
    QueueError::BadRequest { message }
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
    /// Milliseconds added to the wall clock (tests and simulations move time forward).
    clock_offset_ms: AtomicI64,
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
}

/// One open transaction and what it did, passed to every `i_*` helper.
pub(crate) struct Tx<'c> {
    pub(crate) db: rusqlite::Transaction<'c>,
    /// The transaction's notion of now, in ms since the epoch (one instant per transaction).
    pub(crate) now: i64,
    pub(crate) config: &'c QueueConfig,
    /// Seq of the last event this transaction appended.
    pub(crate) last_event: Option<u64>,
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
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let conn = Connection::open(path)?;
        let mut queue = Self::with_connection(conn, config, true)?;
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

    /// Moves WAL checkpoints off the commit path: a thread with its own connection runs a
    /// PASSIVE checkpoint (which never blocks writers) every 100 ms, and the writing
    /// connection no longer checkpoints inside its commits. Otherwise every ~1000 pages one
    /// unlucky commit copied the WAL into the database (and fsynced it) while holding the
    /// write lock, stalling every waiting claim (profile: 10-13% of claim time).
    /// Durability is the WAL's, unchanged; checkpoints only move committed pages.
    ///
    /// A PASSIVE checkpoint alone never lets the WAL start over under a steady stream of
    /// commits: SQLite rewinds the WAL only when a write transaction begins with every
    /// frame already copied, and some commit always lands while a checkpoint runs. The WAL
    /// then grew without bound (2.7 GB while 64 threads drained 100,000 jobs), and every
    /// frame appended to fresh file space cost the kernel a zeroed page (profile: 17% of
    /// claim time in `memset` under `ext4_block_write_begin`). So once the WAL holds
    /// [`WAL_REWIND_FRAMES`], the thread catches up with more unlocked passes, then runs one
    /// more PASSIVE checkpoint while it holds the writing connection's lock (between two
    /// transactions, so it copies the few frames left and the next commit rewinds the
    /// WAL), a stall of about one fsync. (Measured: one locked pass right after the first
    /// unlocked one had 12-15k frames to copy and stalled commits for 11-21 ms.)
    fn start_checkpointer(&self, path: &Path) -> Result<(), QueueError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        // Weak: the thread must not keep the queue alive (it stops when the queue drops).
        let queue = Arc::downgrade(&self.inner);
        // (frames in the WAL, frames copied into the database so far) after a checkpoint;
        // None when it failed, which is retried on the next tick (the WAL keeps every
        // committed page meanwhile).
        let checkpoint = move || -> Option<(i64, i64)> {
            conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(1)?, r.get(2)?))
            })
            .ok()
        };
        std::thread::Builder::new()
            .name("cis490-checkpoint".to_string())
            .spawn(move || {
                // Ends when the queue is dropped (its sender with it).
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stop_rx.recv_timeout(std::time::Duration::from_millis(100))
                {
                    let Some((frames, mut copied)) = checkpoint() else {
                        continue;
                    };
                    if frames < WAL_REWIND_FRAMES {
                        continue;
                    }
                    // Catch up without the lock first: each pass copies what was committed
                    // during the one before, so the locked pass has only a little left.
                    let mut caught_up = false;
                    for _ in 0..4 {
                        let Some((_, now_copied)) = checkpoint() else {
                            break;
                        };
                        caught_up = now_copied - copied <= WAL_LOCKED_COPY_FRAMES;
                        copied = now_copied;
                        if caught_up {
                            break;
                        }
                    }
                    if !caught_up {
                        continue;
                    }
                    let Some(inner) = queue.upgrade() else {
                        break;
                    };
                    let writer = inner
                        .conn
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    checkpoint();
                    drop(writer);
                }
            })?;
        self.lock().pragma_update(None, "wal_autocheckpoint", 0)?;
        *self
            .inner
            .checkpointer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(stop_tx);
        Ok(())
    }

    /// A queue in memory, for tests and `--dry-run` tools. Nothing survives the process.
    pub fn open_in_memory(config: QueueConfig) -> Result<Queue, QueueError> {
        let conn = Connection::open_in_memory()?;
        Self::with_connection(conn, config, false)
    }

    fn with_connection(
        mut conn: Connection,
        config: QueueConfig,
        wal: bool,
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
        let last: i64 =
            conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))?;
        let (sender, _) = tokio::sync::watch::channel(last.max(0) as u64);
        Ok(Queue {
            inner: Arc::new(Inner {
                conn: Mutex::new(conn),
                config,
                clock_offset_ms: AtomicI64::new(0),
                last_event: sender,
                waiting: batch::Waiting::default(),
                checkpointer: Mutex::new(None),
                auth_reader: None,
            }),
        })
    }

    /// The queue's configuration.
    pub fn config(&self) -> &QueueConfig {
        &self.inner.config
    }

    /// The queue's clock: the wall clock plus any offset from [`Queue::advance_clock`].
    pub fn now(&self) -> DateTime<Utc> {
        rows::from_ms(self.now_ms())
    }

    /// Moves this queue's clock forward (tests and simulations: lease expiry, node
    /// staleness and prefer_cuda waiting without sleeping). Shared by all clones.
    pub fn advance_clock(&self, by: chrono::Duration) {
        self.inner
            .clock_offset_ms
            .fetch_add(by.num_milliseconds(), Ordering::SeqCst);
    }

    fn now_ms(&self) -> i64 {
        Utc::now().timestamp_millis() + self.inner.clock_offset_ms.load(Ordering::SeqCst)
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock dropped its transaction, which rolled back, so the
        // connection is still consistent.
        self.inner
            .conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` in one IMMEDIATE transaction: commits on Ok, rolls back on Err. Watchers
    /// of [`Queue::subscribe`] are told after the commit.
    pub(crate) fn write<T>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, QueueError>,
    ) -> Result<T, QueueError> {
        let now = self.now_ms();
        let (out, last_event) = {
            let mut conn = self.lock();
            let db = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut tx = Tx {
                db,
                now,
                config: &self.inner.config,
                last_event: None,
            };
            let out = f(&mut tx)?;
            let last_event = tx.last_event;
            tx.db.commit()?;
            (out, last_event)
        };
        if let Some(seq) = last_event {
            self.inner.last_event.send_replace(seq);
        }
        Ok(out)
    }

    /// Runs one statement's worth of reading on the authentication connection (see
    /// `Inner::auth_reader`), or on the writer's connection for an in-memory queue.
    pub(crate) fn auth_read<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, QueueError> {
        match &self.inner.auth_reader {
            Some(reader) => {
                let db = reader
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                Ok(f(&db)?)
            }
            None => Ok(f(&self.lock())?),
        }
    }

    /// Runs `f` in one read (DEFERRED) transaction, so it sees one consistent snapshot.
    pub(crate) fn read<T>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, QueueError>,
    ) -> Result<T, QueueError> {
        let now = self.now_ms();
        let mut conn = self.lock();
        let db = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
        let mut tx = Tx {
            db,
            now,
            config: &self.inner.config,
            last_event: None,
        };
        f(&mut tx)
    }

    /// Every job the queue holds, tombstoned ones included: the planner's `actual`.
    pub fn actual(&self) -> Result<Vec<ActualJob>, QueueError> {
        self.read(lifecycle::i_actual)
    }

    /// Applies a plan made from `actual()` in one transaction. Each job's state is checked
    /// again inside the transaction (a job claimed since planning keeps its spec). Stores
    /// `hosts` (replacing the previous policy set) and the manifest source. The manifest
    /// generation increments only when something changed.
    pub fn apply(
        &self,
        plan: &Plan,
        hosts: &[HostPolicy],
        source: &ManifestSource,
    ) -> Result<PlanSummary, QueueError> {
        self.write(|tx| lifecycle::i_apply(tx, plan, hosts, source))
    }

    /// Records a reload that failed: the last good state stays, the errors are shown in the
    /// manifest status.
    pub fn record_manifest_errors(
        &self,
        path: &str,
        errors: &[ManifestError],
    ) -> Result<(), QueueError> {
        self.write(|tx| lifecycle::i_record_manifest_errors(tx, path, errors))
    }

    /// The manifest status (last applied source, generation, last errors).
    pub fn manifest_status(&self) -> Result<ManifestStatus, QueueError> {
        self.read(lifecycle::i_manifest_status)
    }

    /// Gives `worker` the best pending job it may run, with a new lease, or None. Also
    /// records `cap` as the worker's node status and refreshes its last_seen.
    pub fn claim(
        &self,
        worker: &WorkerName,
        cap: &Capability,
    ) -> Result<Option<ClaimResponse>, QueueError> {
        match self.batched(batch::Op::Claim(worker.clone(), cap.clone())) {
            Ok(batch::Done::Claim(claimed)) => Ok(claimed),
            Ok(_) => Err(QueueError::corrupt("claim answered with another result")),
            Err(e) => Err(self.noted_refusal(worker, e)),
        }
    }

    /// Extends the lease; the first heartbeat moves claimed -> running. Stores the log tail
    /// and refreshes the worker's last_seen. Answers `cancel: true` for a cancelled job.
    pub fn heartbeat(
        &self,
        id: &JobId,
        req: &HeartbeatRequest,
    ) -> Result<HeartbeatResponse, QueueError> {
        if let Some(point) = &req.progress {
            cis490_api::results::check_point(point).map_err(bad_request)?;
        }
        match self.batched(batch::Op::Heartbeat(id.clone(), req.clone()))? {
            batch::Done::Heartbeat(answer) => Ok(answer),
            _ => Err(QueueError::corrupt(
                "heartbeat answered with another result",
            )),
        }
    }

    /// For uploads: Ok(spec) when `lease` is the job's current lease held by `worker` and the
    /// job is claimed or running.
    pub fn check_lease(
        &self,
        id: &JobId,
        worker: &WorkerName,
        lease: &Lease,
    ) -> Result<JobSpec, QueueError> {
        self.read(|tx| {
            lifecycle::i_leased_job(tx, id, worker, lease, false).map(|(row, _)| row.spec)
        })
    }

    /// Records an upload the store accepted for job `id` under `lease`, fenced by the lease:
    /// when the lease was lost while the bytes streamed (expired, cancelled, reassigned)
    /// this is `LeaseLost` and nothing is recorded, so the upload cannot complete the job.
    pub fn record_upload(
        &self,
        id: &JobId,
        worker: &WorkerName,
        lease: &Lease,
        artifact: &ArtifactId,
        size_bytes: u64,
    ) -> Result<(), QueueError> {
        self.write(|tx| lifecycle::i_record_upload(tx, id, worker, lease, artifact, size_bytes))
    }

    /// Every recorded upload, one row per (job, attempt, artifact) with the worker and
    /// time of its first upload and the job's model and mode. `size_bytes` is the size
    /// the upload reported (0 for rows backfilled from jobs completed before uploads were
    /// recorded); the store's listing puts the stored size in.
    pub fn uploads(&self) -> Result<Vec<cis490_api::ArtifactView>, QueueError> {
        let mut out = Vec::new();
        let mut before = None;
        loop {
            let (rows, more) = self.uploads_page(before, cis490_api::MAX_PAGE_LIMIT as usize)?;
            out.extend(rows);
            match more {
                Some(row) => before = Some(row),
                None => return Ok(out),
            }
        }
    }

    /// Marks the job completed (with its artifact). The artifact must be one uploaded under
    /// the job's current lease (`ArtifactNotUploaded` otherwise), and a completion without
    /// one is refused when the lease did upload one (`ArtifactRequired`).
    pub fn complete(
        &self,
        id: &JobId,
        req: &CompleteRequest,
    ) -> Result<JobStatusResponse, QueueError> {
        req.report.check().map_err(bad_request)?;
        match self.batched(batch::Op::Complete(id.clone(), req.clone()))? {
            batch::Done::Status(status) => Ok(status),
            _ => Err(QueueError::corrupt("complete answered with another result")),
        }
    }

    /// Reports a failure; see the module docs for where the job goes.
    pub fn fail(&self, id: &JobId, req: &FailRequest) -> Result<JobStatusResponse, QueueError> {
        req.report.check().map_err(bad_request)?;
        match self.batched(batch::Op::Fail(id.clone(), req.clone()))? {
            batch::Done::Status(status) => Ok(status),
            _ => Err(QueueError::corrupt("fail answered with another result")),
        }
    }

    /// Operator: cancels a pending, claimed or running job.
    pub fn cancel(&self, id: &JobId) -> Result<JobStatusResponse, QueueError> {
        self.write(|tx| lifecycle::i_cancel(tx, id))
    }

    /// Operator: sends a failed, cancelled or completed job back to pending (attempts reset).
    pub fn requeue(&self, id: &JobId) -> Result<JobStatusResponse, QueueError> {
        self.write(|tx| lifecycle::i_requeue(tx, id))
    }

    /// Operator: sets a pending job aside (status held): kept, never claimed.
    pub fn hold(&self, id: &JobId) -> Result<JobStatusResponse, QueueError> {
        self.write(|tx| hold::i_hold(tx, id))
    }

    /// Operator: makes a held job pending again.
    pub fn release(&self, id: &JobId) -> Result<JobStatusResponse, QueueError> {
        self.write(|tx| hold::i_release(tx, id))
    }

    /// Expires every lease whose time has passed at `now`.
    pub fn sweep(&self, now: DateTime<Utc>) -> Result<SweepOutcome, QueueError> {
        self.write(|tx| lifecycle::i_sweep(tx, now.timestamp_millis()))
    }

    /// The one job whose ID starts with `prefix`.
    pub fn resolve(&self, prefix: &IdPrefix) -> Result<JobId, QueueError> {
        self.read(|tx| lifecycle::i_resolve(tx, prefix))
    }

    /// One job with all its events.
    pub fn job(&self, id: &JobId) -> Result<JobView, QueueError> {
        self.read(|tx| lifecycle::i_job_view(tx, id, true))
    }

    /// Jobs matching `filter` in queue order (priority, then manifest order); events empty.
    pub fn jobs(&self, filter: &JobFilter) -> Result<Vec<JobView>, QueueError> {
        let mut out = Vec::new();
        let mut after: Option<listing::JobCursor> = None;
        loop {
            let page =
                self.jobs_page(filter, after.as_ref(), cis490_api::MAX_PAGE_LIMIT as usize)?;
            out.extend(page.items);
            match page.next {
                Some(next) => after = Some(listing::JobCursor::decode(&next)?),
                None => return Ok(out),
            }
        }
    }

    /// One page of [`Queue::jobs`]: up to `limit` jobs after `after`, each page read in a
    /// transaction of its own.
    pub fn jobs_page(
        &self,
        filter: &JobFilter,
        after: Option<&listing::JobCursor>,
        limit: usize,
    ) -> Result<cis490_api::Page<JobView>, QueueError> {
        self.read(|tx| listing::i_jobs_page(tx, filter, after, limit))
    }

    /// The models that have completed jobs, by name.
    pub fn completed_models(&self) -> Result<Vec<String>, QueueError> {
        self.read(listing::i_completed_models)
    }

    /// Up to `limit` workers named after `after`, by name.
    pub fn workers_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<cis490_api::Page<WorkerView>, QueueError> {
        self.read(|tx| listing::i_workers_page(tx, after, limit))
    }

    /// Up to `limit` recorded uploads, newest first, before the row numbered `before`; the
    /// row number to continue before, when there are more. One row per (job, attempt,
    /// artifact), as [`Queue::uploads`].
    pub fn uploads_page(
        &self,
        before: Option<i64>,
        limit: usize,
    ) -> Result<(Vec<cis490_api::ArtifactView>, Option<i64>), QueueError> {
        self.read(|tx| listing::i_uploads_page(tx, before, limit))
    }

    /// Which of `ids` a recorded upload names.
    pub fn recorded_artifacts(
        &self,
        ids: &[cis490_api::ArtifactId],
    ) -> Result<std::collections::HashSet<cis490_api::ArtifactId>, QueueError> {
        self.read(|tx| listing::i_recorded_artifacts(tx, ids))
    }

    /// One page of an attempt's log (`GET /v1/job/{id}/log`).
    pub fn job_log(&self, id: &JobId, query: &LogQuery) -> Result<LogPage, QueueError> {
        self.read(|tx| logs::i_read(tx, id, query))
    }

    /// One page of completed jobs (or attempts) with their metrics; see
    /// [`cis490_api::ResultsQuery`].
    pub fn results_page(
        &self,
        query: &cis490_api::ResultsQuery,
        limit: usize,
    ) -> Result<cis490_api::Page<cis490_api::ResultRow>, QueueError> {
        self.read(|tx| results::i_results_page(tx, query, limit))
    }

    /// The model of job `id` (None when there is no such job), read on the
    /// authentication connection: never behind the writer (metrics label their counters
    /// with it).
    pub fn job_model(&self, id: &JobId) -> Result<Option<String>, QueueError> {
        use rusqlite::OptionalExtension;
        self.auth_read(|db| {
            db.prepare_cached("SELECT model FROM jobs WHERE id = ?1")?
                .query_row([id.as_str()], |r| r.get(0))
                .optional()
        })
    }

    /// Every attempt of job `id` that reported progress or an outcome, oldest first.
    pub fn job_progress(&self, id: &JobId) -> Result<cis490_api::JobProgress, QueueError> {
        self.read(|tx| {
            let row = rows::i_existing_job(tx, id)?;
            results::i_job_progress(tx, &row)
        })
    }

    /// Why a pending job is not running: per known worker, and its queue position.
    pub fn explain(&self, id: &JobId) -> Result<Explain, QueueError> {
        self.read(|tx| explain::i_explain(tx, id))
    }

    /// Records a worker's node status (first report: `NodeRegistered` event).
    pub fn report_node(
        &self,
        worker: &WorkerName,
        cap: &Capability,
    ) -> Result<WorkerView, QueueError> {
        self.write(|tx| {
            nodes::i_upsert_worker(tx, worker, cap)?;
            nodes::i_worker_view(tx, worker)
        })
        .map_err(|e| self.noted_refusal(worker, e))
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

    /// Records a refused request whose credential proved worker `proven` while the request
    /// acted as `claimed` (403 `wrong_worker`), on the job when the route names one, so an
    /// operator sees it in the events and `describe`.
    pub fn record_wrong_worker(
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

    /// The `[[hosts]]` policies of the manifest last applied, by name.
    pub fn host_policies(&self) -> Result<Vec<HostPolicy>, QueueError> {
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

    /// Every known worker, by name.
    pub fn workers(&self) -> Result<Vec<WorkerView>, QueueError> {
        self.read(nodes::i_workers)
    }

    /// One worker.
    pub fn worker(&self, name: &WorkerName) -> Result<WorkerView, QueueError> {
        self.read(|tx| nodes::i_worker_view(tx, name))
    }

    /// Operator: no new jobs go to the worker.
    pub fn cordon(&self, name: &WorkerName) -> Result<WorkerView, QueueError> {
        self.write(|tx| nodes::i_set_schedulable(tx, name, nodes::Schedulable::Cordon))
    }

    /// Operator: forgets a worker that holds no lease; answers it as it was.
    pub fn forget_worker(&self, name: &WorkerName) -> Result<WorkerView, QueueError> {
        self.write(|tx| forget_worker::i_forget_worker(tx, name))
    }

    /// Operator: the worker takes new jobs again (clears cordon and drain).
    pub fn uncordon(&self, name: &WorkerName) -> Result<WorkerView, QueueError> {
        self.write(|tx| nodes::i_set_schedulable(tx, name, nodes::Schedulable::Uncordon))
    }

    /// Operator: cordon the worker and let its running jobs finish (Draining until then).
    pub fn drain(&self, name: &WorkerName) -> Result<WorkerView, QueueError> {
        self.write(|tx| nodes::i_set_schedulable(tx, name, nodes::Schedulable::Drain))
    }

    /// Up to `limit` events with seq > `since`, oldest first.
    pub fn events_since(&self, since: u64, limit: usize) -> Result<EventsPage, QueueError> {
        self.events_filtered(since, limit, &EventFilter::default())
    }

    /// Up to `limit` events with seq > `since` that `filter` keeps, oldest first.
    pub fn events_filtered(
        &self,
        since: u64,
        limit: usize,
        filter: &EventFilter,
    ) -> Result<EventsPage, QueueError> {
        self.read(|tx| events::i_events_since(tx, since, limit, filter))
    }

    /// Live jobs per status name (every status present) and the number of tombstoned jobs
    /// apart; a tombstoned job that is claimed or running counts as live.
    pub fn live_counts(&self) -> Result<(BTreeMap<String, u64>, u64), QueueError> {
        self.read(lifecycle::i_live_counts)
    }

    /// Number of jobs per status name (every status present, tombstoned jobs included).
    pub fn counts(&self) -> Result<BTreeMap<String, u64>, QueueError> {
        self.read(lifecycle::i_counts)
    }

    /// Watches the seq of the last event, bumped after every commit that appended events:
    /// long-poll claims and `/v1/events` wait on it.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.last_event.subscribe()
    }
}
