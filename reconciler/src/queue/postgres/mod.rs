//! The PostgreSQL job queue: the same [`JobQueue`] as the SQLite [`Queue`](super::Queue),
//! for labs that run several `serve` processes on one database.
//!
//! Shape as in SQLite: each public method opens one transaction ([`PgQueue::write`] or
//! [`PgQueue::read`], `tx.rs`) and calls an `i_*` helper in the file of its caller
//! (`apply.rs`, `matching.rs`, `lease.rs`, `operator.rs`, `sweep.rs`, `reads.rs`, ...),
//! and every decision comes from the shared rules in `transitions.rs` and `matching.rs`.
//! What differs is concurrency: row locks instead of one writer (see `tx.rs` for the
//! isolation level and the event numbering, `matching.rs` for claims).
//!
//! Connections: a small pool of sync `postgres` clients (`pool.rs`), without TLS for now
//! (a Unix socket or loopback); `synchronous_commit` is forced on for every connection, so
//! a call returns Ok only once its transaction is durable.

mod apply;
mod artifact_index;
mod cached;
mod connect;
mod events;
mod explain;
mod failures;
pub mod leader;
mod lease;
mod listen;
mod logs;
mod matching;
mod nodes;
mod operator;
mod pool;
mod reads;
mod results;
mod results_listing;
mod rows;
mod schema;
mod sequencer;
mod sweep;
mod tls;
mod tokens;
mod tx;
mod uploads;
mod workers;

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use cis490_api::{
    ArtifactId, ArtifactView, Capability, ClaimResponse, CompleteRequest, EventsPage, Explain,
    FailRequest, HeartbeatRequest, HeartbeatResponse, IdPrefix, JobFilter, JobId, JobProgress,
    JobStatusResponse, JobView, Lease, LogPage, LogQuery, ManifestError, ManifestStatus, Page,
    PlanSummary, ResultRow, ResultsQuery, WorkerName, WorkerView,
};

use super::error::bad_request;
use super::events::{kind, EventFilter};
use super::listing::JobCursor;
use super::receipts;
use super::tokens::{IssuedToken, WorkerTokenInfo};
use super::worker_ops::{self, Schedulable};
use super::{Clock, JobQueue, ManifestSource, QueueConfig, QueueError, SweepOutcome, SystemClock};
use crate::plan::{ActualJob, Plan};
use crate::policy::HostPolicy;
use pool::Pool;

/// Connections one server opens at most (each blocking call holds one while it runs).
const DEFAULT_MAX_CONNECTIONS: usize = 16;

/// The job queue on PostgreSQL. `Send + Sync`; every method blocks on the database: call
/// them from `tokio::task::spawn_blocking` in async code (a sync `postgres` client panics
/// inside an async runtime thread).
pub struct PgQueue {
    pool: Pool,
    config: QueueConfig,
    clock: Arc<dyn Clock>,
    /// The seq of the last event this process committed or heard of (`listen.rs`).
    last_event: Arc<tokio::sync::watch::Sender<u64>>,
    /// This server's event numbering passes (`sequencer.rs`).
    passes: sequencer::Passes,
    /// The key of upload receipts, as the database keeps it (`queue/receipts.rs`).
    receipt_key: receipts::ReceiptKey,
}

impl std::fmt::Debug for PgQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgQueue")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl PgQueue {
    /// Connects to the database `url` names (`postgres://user@host:port/db`, or a Unix
    /// socket directory as host, percent-encoded) and migrates it.
    pub fn open(url: &str, config: QueueConfig) -> Result<PgQueue, QueueError> {
        Self::open_with_clock(url, config, Arc::new(SystemClock))
    }

    /// [`PgQueue::open`] on `clock` instead of the wall clock.
    pub fn open_with_clock(
        url: &str,
        config: QueueConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<PgQueue, QueueError> {
        let connector = connect::Connector::from_url(url)?;
        let pool = Pool::new(connector.clone(), DEFAULT_MAX_CONNECTIONS);
        let receipt_key;
        let last = {
            let mut conn = pool.get()?;
            schema::migrate(&mut conn)?;
            conn.execute(
                "INSERT INTO secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                &[&receipts::KEY_NAME, &receipts::ReceiptKey::generate()],
            )?;
            let key: Vec<u8> = conn
                .query_one(
                    "SELECT value FROM secrets WHERE name = $1",
                    &[&receipts::KEY_NAME],
                )?
                .try_get(0)?;
            receipt_key = receipts::ReceiptKey::from_stored(key)?;
            let n: i64 = conn
                .query_one("SELECT n FROM event_seq WHERE id = 1", &[])?
                .try_get(0)?;
            n.max(0) as u64
        };
        let (sender, _) = tokio::sync::watch::channel(last);
        let last_event = Arc::new(sender);
        listen::spawn(connector, &last_event)?;
        Ok(PgQueue {
            pool,
            config,
            clock,
            last_event,
            passes: sequencer::Passes::default(),
            receipt_key,
        })
    }

    fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Tells watchers that events up to `seq` are committed (commits of concurrent
    /// callers may report out of order: the watch only moves forward).
    fn notify(&self, seq: u64) {
        listen::advance(&self.last_event, seq);
    }

    /// A `NameInUse` refusal is rolled back with the claim or report it refused, so it is
    /// recorded in a transaction of its own (as SQLite's `Queue::noted_refusal`).
    fn noted_refusal(&self, worker: &WorkerName, err: QueueError) -> QueueError {
        if let QueueError::NameInUse { message, .. } = &err {
            let recorded = self.write(|tx| {
                tx.event(
                    None,
                    Some(worker.as_str()),
                    kind::NAME_IN_USE,
                    format!("refused a second agent: {message}"),
                );
                Ok(())
            });
            if let Err(e) = recorded {
                tracing::warn!(error = %e, "could not record a name_in_use refusal");
            }
        }
        err
    }
}

impl JobQueue for PgQueue {
    fn config(&self) -> &QueueConfig {
        &self.config
    }

    fn now(&self) -> DateTime<Utc> {
        super::rows::from_ms(self.now_ms())
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

    fn host_policies(&self) -> Result<Vec<HostPolicy>, QueueError> {
        self.read(apply::i_host_policies)
    }

    fn claim(
        &self,
        worker: &WorkerName,
        cap: &Capability,
    ) -> Result<Option<ClaimResponse>, QueueError> {
        self.write(|tx| matching::i_claim(tx, worker, cap))
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
        self.write(|tx| crate::queue::lease::i_heartbeat(tx, id, req))
    }

    fn check_lease(
        &self,
        id: &JobId,
        worker: &WorkerName,
        lease: &Lease,
    ) -> Result<crate::queue::LeasedJob, QueueError> {
        self.read(|tx| lease::i_check_lease(tx, id, worker, lease))
    }

    fn record_upload(
        &self,
        id: &JobId,
        worker: &WorkerName,
        lease: &Lease,
        artifact: &ArtifactId,
        size_bytes: u64,
    ) -> Result<(), QueueError> {
        self.write(|tx| {
            crate::queue::lease::i_record_upload(tx, id, worker, lease, artifact, size_bytes)
        })
    }

    fn receipt_key(&self) -> &receipts::ReceiptKey {
        &self.receipt_key
    }

    fn complete_with_model(
        &self,
        id: &JobId,
        req: &CompleteRequest,
    ) -> Result<crate::queue::Finished, QueueError> {
        req.report.check().map_err(bad_request)?;
        self.receipt_key.check(id, req)?;
        self.write(|tx| crate::queue::lease::i_complete(tx, id, req))
    }

    fn fail_with_model(
        &self,
        id: &JobId,
        req: &FailRequest,
    ) -> Result<crate::queue::Finished, QueueError> {
        req.report.check().map_err(bad_request)?;
        self.write(|tx| crate::queue::lease::i_fail(tx, id, req))
    }

    fn sweep(&self, now: DateTime<Utc>) -> Result<SweepOutcome, QueueError> {
        // Numbers what a writer that died after its commit left unnumbered.
        self.number_events()?;
        self.write(|tx| sweep::i_sweep(tx, now.timestamp_millis()))
    }

    fn cancel(&self, id: &JobId) -> Result<JobStatusResponse, QueueError> {
        self.write(|tx| operator::i_cancel(tx, id))
    }

    fn requeue(&self, id: &JobId) -> Result<JobStatusResponse, QueueError> {
        self.write(|tx| operator::i_requeue(tx, id))
    }

    fn hold(&self, id: &JobId) -> Result<JobStatusResponse, QueueError> {
        self.write(|tx| operator::i_hold(tx, id))
    }

    fn release(&self, id: &JobId) -> Result<JobStatusResponse, QueueError> {
        self.write(|tx| operator::i_release(tx, id))
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
        after: Option<&JobCursor>,
        limit: usize,
    ) -> Result<Page<JobView>, QueueError> {
        self.read(|tx| reads::i_jobs_page(tx, filter, after, limit))
    }

    fn completed_models(&self) -> Result<Vec<String>, QueueError> {
        self.read(|tx| {
            tx.db
                .query(
                    "SELECT DISTINCT model FROM jobs WHERE status = 'completed' ORDER BY model",
                    &[],
                )?
                .iter()
                .map(|r| Ok(r.try_get(0)?))
                .collect()
        })
    }

    fn job_model(&self, id: &JobId) -> Result<Option<String>, QueueError> {
        self.read(|tx| {
            match tx
                .db
                .query_opt("SELECT model FROM jobs WHERE id = $1", &[&id.as_str()])?
            {
                Some(r) => Ok(Some(r.try_get(0)?)),
                None => Ok(None),
            }
        })
    }

    fn job_log(&self, id: &JobId, query: &LogQuery) -> Result<LogPage, QueueError> {
        self.read(|tx| logs::i_read(tx, id, query))
    }

    fn job_progress(&self, id: &JobId) -> Result<JobProgress, QueueError> {
        self.read(|tx| {
            let row = rows::i_existing_job(tx, id)?;
            results::i_job_progress(tx, &row)
        })
    }

    fn results_page(
        &self,
        query: &ResultsQuery,
        limit: usize,
    ) -> Result<Page<ResultRow>, QueueError> {
        self.read(|tx| results_listing::i_results_page(tx, query, limit))
    }

    fn explain(&self, id: &JobId) -> Result<Explain, QueueError> {
        self.read(|tx| explain::i_explain(tx, id))
    }

    fn live_counts(&self) -> Result<(BTreeMap<String, u64>, u64), QueueError> {
        self.read(reads::i_live_counts)
    }

    fn counts(&self) -> Result<BTreeMap<String, u64>, QueueError> {
        self.read(reads::i_counts)
    }

    fn uploads_page(
        &self,
        before: Option<i64>,
        limit: usize,
    ) -> Result<(Vec<ArtifactView>, Option<i64>), QueueError> {
        self.read(|tx| uploads::i_uploads_page(tx, before, limit))
    }

    fn index_artifacts(&self, rows: &[ArtifactView]) -> Result<usize, QueueError> {
        if rows.is_empty() {
            return Ok(0);
        }
        self.write(|tx| artifact_index::i_add(tx, rows))
    }

    fn artifact_indexed(&self, id: &ArtifactId) -> Result<bool, QueueError> {
        self.read(|tx| artifact_index::i_contains(tx, id))
    }

    fn unrecorded_artifacts_page(
        &self,
        after: Option<&ArtifactId>,
        limit: usize,
    ) -> Result<(Vec<ArtifactView>, bool), QueueError> {
        self.read(|tx| artifact_index::i_unrecorded_page(tx, after, limit))
    }

    fn report_node(&self, worker: &WorkerName, cap: &Capability) -> Result<WorkerView, QueueError> {
        self.write(|tx| {
            crate::queue::worker_names::i_upsert_worker(tx, worker, cap)?;
            workers::i_worker_view(tx, worker)
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
            tx.event(
                job,
                Some(proven.as_str()),
                kind::WRONG_WORKER,
                format!("refused: worker {proven} tried to act as worker {claimed} ({refusal})"),
            );
            Ok(())
        })
    }

    fn workers(&self) -> Result<Vec<WorkerView>, QueueError> {
        self.read(workers::i_workers)
    }

    fn workers_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<WorkerView>, QueueError> {
        self.read(|tx| workers::i_workers_page(tx, after, limit))
    }

    fn worker(&self, name: &WorkerName) -> Result<WorkerView, QueueError> {
        self.read(|tx| workers::i_worker_view(tx, name))
    }

    fn cordon(&self, name: &WorkerName) -> Result<WorkerView, QueueError> {
        self.write(|tx| worker_ops::i_set_schedulable(tx, name, Schedulable::Cordon))
    }

    fn uncordon(&self, name: &WorkerName) -> Result<WorkerView, QueueError> {
        self.write(|tx| worker_ops::i_set_schedulable(tx, name, Schedulable::Uncordon))
    }

    fn drain(&self, name: &WorkerName) -> Result<WorkerView, QueueError> {
        self.write(|tx| worker_ops::i_set_schedulable(tx, name, Schedulable::Drain))
    }

    fn forget_worker(&self, name: &WorkerName) -> Result<WorkerView, QueueError> {
        self.write(|tx| worker_ops::i_forget_worker(tx, name))
    }

    fn issue_worker_token(&self, name: &WorkerName) -> Result<IssuedToken, QueueError> {
        tokens::issue(self, name)
    }

    fn revoke_worker_token(&self, name: &WorkerName) -> Result<Option<DateTime<Utc>>, QueueError> {
        tokens::revoke(self, name)
    }

    fn worker_tokens(&self) -> Result<Vec<WorkerTokenInfo>, QueueError> {
        tokens::list(self)
    }

    fn worker_for_token(&self, token: &str) -> Result<Option<WorkerName>, QueueError> {
        tokens::worker_for(self, token)
    }

    fn worker_tokens_exist(&self) -> Result<bool, QueueError> {
        tokens::any_issued(self)
    }

    fn events_filtered(
        &self,
        since: u64,
        limit: usize,
        filter: &EventFilter,
    ) -> Result<EventsPage, QueueError> {
        self.read(|tx| events::i_events_since(tx, since, limit, filter))
    }

    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.last_event.subscribe()
    }
}
