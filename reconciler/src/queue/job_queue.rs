//! The queue as the server sees it: every operation a handler, the reconciler, the sweeper
//! or the token commands call, with no backend in any type. `AppState` holds an
//! `Arc<dyn JobQueue>` ([`SharedQueue`]), so the server runs on whichever backend its
//! `--database` URL names.
//!
//! Every method blocks until its transaction is durable (or refused): call them from
//! `tokio::task::spawn_blocking` in async code. The rules each transition follows are in
//! `transitions.rs`, shared by every backend; see the module docs of `queue` for the job
//! lifecycle.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use cis490_api::{
    ArtifactId, ArtifactView, Capability, ClaimResponse, CompleteRequest, EventsPage, Explain,
    FailRequest, HeartbeatRequest, HeartbeatResponse, IdPrefix, JobFilter, JobId, JobProgress,
    JobStatusResponse, JobView, Lease, LogPage, LogQuery, ManifestError, ManifestStatus, Page,
    PlanSummary, ResultRow, ResultsQuery, UploadReceipt, WorkerName, WorkerView,
};

use super::events::EventFilter;
use super::listing::JobCursor;
use super::receipts::ReceiptKey;
use super::tokens::{IssuedToken, WorkerTokenInfo};
use super::{LeasedJob, ManifestSource, QueueConfig, QueueError, SweepOutcome};
use crate::plan::{ActualJob, Plan};
use crate::policy::HostPolicy;

/// The queue behind the server, shared by every handler and background loop.
pub type SharedQueue = Arc<dyn JobQueue>;

/// Where a completed or failed job now stands, and its model.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub answer: JobStatusResponse,
    pub model: String,
}

/// A job queue backend. `Send + Sync`: one value serves every request at once.
pub trait JobQueue: std::fmt::Debug + Send + Sync + 'static {
    /// The queue's configuration.
    fn config(&self) -> &QueueConfig;

    /// The time on the queue's clock (the wall clock but in tests and simulations).
    fn now(&self) -> DateTime<Utc>;

    // --- the manifest (the reconciler) ---

    /// Every job the queue holds, tombstoned ones included, in no particular order (the
    /// planner sorts): the planner's `actual`.
    fn actual(&self) -> Result<Vec<ActualJob>, QueueError>;

    /// Applies a plan made from `actual()` in one transaction. Each job's state is checked
    /// again inside the transaction (a job claimed since planning keeps its spec). Stores
    /// `hosts` (replacing the previous policy set) and the manifest source. The manifest
    /// generation increments only when something changed.
    fn apply(
        &self,
        plan: &Plan,
        hosts: &[HostPolicy],
        source: &ManifestSource,
    ) -> Result<PlanSummary, QueueError>;

    /// Records a reload that failed: the last good state stays, the errors are shown in the
    /// manifest status.
    fn record_manifest_errors(
        &self,
        path: &str,
        errors: &[ManifestError],
    ) -> Result<(), QueueError>;

    /// The manifest status (last applied source, generation, last errors).
    fn manifest_status(&self) -> Result<ManifestStatus, QueueError>;

    /// The `[[hosts]]` policies of the manifest last applied, by name.
    fn host_policies(&self) -> Result<Vec<HostPolicy>, QueueError>;

    // --- a worker's lease ---

    /// Gives `worker` the best pending job it may run, with a new lease, or None. Also
    /// records `cap` as the worker's node status and refreshes its last_seen.
    fn claim(
        &self,
        worker: &WorkerName,
        cap: &Capability,
    ) -> Result<Option<ClaimResponse>, QueueError>;

    /// Extends the lease; the first heartbeat moves claimed -> running. Stores the log and
    /// progress and refreshes the worker's last_seen. Answers `cancel: true` for a
    /// cancelled job.
    fn heartbeat(
        &self,
        id: &JobId,
        req: &HeartbeatRequest,
    ) -> Result<HeartbeatResponse, QueueError>;

    /// For uploads: Ok(the job's model and mode) when `lease` is the job's current lease
    /// held by `worker` and the job is claimed or running.
    fn check_lease(
        &self,
        id: &JobId,
        worker: &WorkerName,
        lease: &Lease,
    ) -> Result<LeasedJob, QueueError>;

    /// Records an upload the store accepted for job `id` under `lease`, fenced by the
    /// lease: when the lease was lost while the bytes streamed (expired, cancelled,
    /// reassigned) this is `LeaseLost` and nothing is recorded, so the upload cannot
    /// complete the job.
    fn record_upload(
        &self,
        id: &JobId,
        worker: &WorkerName,
        lease: &Lease,
        artifact: &ArtifactId,
        size_bytes: u64,
    ) -> Result<(), QueueError>;

    /// The key of this database's upload receipts (`receipts.rs`).
    fn receipt_key(&self) -> &ReceiptKey;

    /// Fences an upload that asked for a receipt, as [`JobQueue::record_upload`] does
    /// (`LeaseLost` when the lease was lost while the bytes streamed), but writes nothing:
    /// the receipt it answers with lets the completion record the upload.
    fn receipt_for_upload(
        &self,
        id: &JobId,
        worker: &WorkerName,
        lease: &Lease,
        artifact: &ArtifactId,
        size_bytes: u64,
    ) -> Result<UploadReceipt, QueueError> {
        self.check_lease(id, worker, lease)?;
        Ok(self.receipt_key().issue(id, lease, artifact, size_bytes))
    }

    /// Marks the job completed (with its artifact). The artifact must be one uploaded under
    /// the job's current lease (`ArtifactNotUploaded` otherwise), and a completion without
    /// one is refused when the lease did upload one (`ArtifactRequired`). A completion that
    /// carries its upload's receipt records that upload in its own transaction; a receipt
    /// this database's key did not make for this job, lease and artifact is refused
    /// (`ArtifactNotUploaded`).
    fn complete(&self, id: &JobId, req: &CompleteRequest) -> Result<JobStatusResponse, QueueError> {
        self.complete_with_model(id, req).map(|done| done.answer)
    }

    /// [`JobQueue::complete`], answering the job's model too (from the row the transition
    /// read: metrics label their counters with it).
    fn complete_with_model(
        &self,
        id: &JobId,
        req: &CompleteRequest,
    ) -> Result<Finished, QueueError>;

    /// Reports a failure; see the module docs of `queue` for where the job goes.
    fn fail(&self, id: &JobId, req: &FailRequest) -> Result<JobStatusResponse, QueueError> {
        self.fail_with_model(id, req).map(|done| done.answer)
    }

    /// [`JobQueue::fail`], answering the job's model too.
    fn fail_with_model(&self, id: &JobId, req: &FailRequest) -> Result<Finished, QueueError>;

    /// Expires every lease whose time has passed at `now`.
    fn sweep(&self, now: DateTime<Utc>) -> Result<SweepOutcome, QueueError>;

    // --- the operator's verbs on jobs ---

    /// Cancels a pending, held, claimed or running job.
    fn cancel(&self, id: &JobId) -> Result<JobStatusResponse, QueueError>;

    /// Sends a failed, cancelled or completed job back to pending (attempts reset).
    fn requeue(&self, id: &JobId) -> Result<JobStatusResponse, QueueError>;

    /// Sets a pending job aside (status held): kept, never claimed.
    fn hold(&self, id: &JobId) -> Result<JobStatusResponse, QueueError>;

    /// Makes a held job pending again.
    fn release(&self, id: &JobId) -> Result<JobStatusResponse, QueueError>;

    // --- reads of jobs ---

    /// The one job whose ID starts with `prefix`.
    fn resolve(&self, prefix: &IdPrefix) -> Result<JobId, QueueError>;

    /// One job with all its events.
    fn job(&self, id: &JobId) -> Result<JobView, QueueError>;

    /// One page of jobs matching `filter` in queue order (priority, then manifest order):
    /// up to `limit` jobs after `after`, each page read in a transaction of its own.
    fn jobs_page(
        &self,
        filter: &JobFilter,
        after: Option<&JobCursor>,
        limit: usize,
    ) -> Result<Page<JobView>, QueueError>;

    /// Every job matching `filter` in queue order; events empty.
    fn jobs(&self, filter: &JobFilter) -> Result<Vec<JobView>, QueueError> {
        let mut out = Vec::new();
        let mut after: Option<JobCursor> = None;
        loop {
            let page =
                self.jobs_page(filter, after.as_ref(), cis490_api::MAX_PAGE_LIMIT as usize)?;
            out.extend(page.items);
            match page.next {
                Some(next) => after = Some(JobCursor::decode(&next)?),
                None => return Ok(out),
            }
        }
    }

    /// The models that have completed jobs, by name.
    fn completed_models(&self) -> Result<Vec<String>, QueueError>;

    /// The model of job `id` (None when there is no such job), read without waiting for
    /// writers (metrics label their counters with it).
    fn job_model(&self, id: &JobId) -> Result<Option<String>, QueueError>;

    /// One page of an attempt's log (`GET /v1/job/{id}/log`).
    fn job_log(&self, id: &JobId, query: &LogQuery) -> Result<LogPage, QueueError>;

    /// Every attempt of job `id` that reported progress or an outcome, oldest first.
    fn job_progress(&self, id: &JobId) -> Result<JobProgress, QueueError>;

    /// One page of completed jobs (or attempts) with their metrics; see [`ResultsQuery`].
    fn results_page(
        &self,
        query: &ResultsQuery,
        limit: usize,
    ) -> Result<Page<ResultRow>, QueueError>;

    /// Why a pending job is not running: per known worker, and its queue position.
    fn explain(&self, id: &JobId) -> Result<Explain, QueueError>;

    /// Live jobs per status name (every status present) and the number of tombstoned jobs
    /// apart; a tombstoned job that is claimed or running counts as live.
    fn live_counts(&self) -> Result<(BTreeMap<String, u64>, u64), QueueError>;

    /// Number of jobs per status name (every status present, tombstoned jobs included).
    fn counts(&self) -> Result<BTreeMap<String, u64>, QueueError>;

    // --- artifacts ---

    /// Up to `limit` recorded uploads, newest first, before the row numbered `before`; the
    /// row number to continue before, when there are more. One row per (job, attempt,
    /// artifact) whose bytes the artifact index holds, with the worker and time of its
    /// first upload, the job's model and mode, and the stored size.
    fn uploads_page(
        &self,
        before: Option<i64>,
        limit: usize,
    ) -> Result<(Vec<ArtifactView>, Option<i64>), QueueError>;

    /// Every recorded upload, as [`JobQueue::uploads_page`] pages them.
    fn uploads(&self) -> Result<Vec<ArtifactView>, QueueError> {
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

    /// Adds to the artifact index each row whose artifact it does not hold yet (the
    /// store's record of bytes it made durable); how many were added.
    fn index_artifacts(&self, rows: &[ArtifactView]) -> Result<usize, QueueError>;

    /// Whether the artifact index holds the artifact.
    fn artifact_indexed(&self, id: &ArtifactId) -> Result<bool, QueueError>;

    /// Up to `limit` indexed artifacts that no recorded upload names (an upload whose lease
    /// was lost while it streamed), by artifact ID after `after`, and whether more follow.
    fn unrecorded_artifacts_page(
        &self,
        after: Option<&ArtifactId>,
        limit: usize,
    ) -> Result<(Vec<ArtifactView>, bool), QueueError>;

    // --- workers ---

    /// Records a worker's node status (first report: `NodeRegistered` event).
    fn report_node(&self, worker: &WorkerName, cap: &Capability) -> Result<WorkerView, QueueError>;

    /// Records a refused request whose credential proved worker `proven` while the request
    /// acted as `claimed` (403 `wrong_worker`), on the job when the route names one, so an
    /// operator sees it in the events and `describe`.
    fn record_wrong_worker(
        &self,
        job: Option<&JobId>,
        proven: &WorkerName,
        claimed: &WorkerName,
        refusal: &str,
    ) -> Result<(), QueueError>;

    /// Every known worker, by name.
    fn workers(&self) -> Result<Vec<WorkerView>, QueueError>;

    /// Up to `limit` workers named after `after`, by name.
    fn workers_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<WorkerView>, QueueError>;

    /// One worker.
    fn worker(&self, name: &WorkerName) -> Result<WorkerView, QueueError>;

    /// Operator: no new jobs go to the worker.
    fn cordon(&self, name: &WorkerName) -> Result<WorkerView, QueueError>;

    /// Operator: the worker takes new jobs again (clears cordon and drain).
    fn uncordon(&self, name: &WorkerName) -> Result<WorkerView, QueueError>;

    /// Operator: cordon the worker and let its running jobs finish (Draining until then).
    fn drain(&self, name: &WorkerName) -> Result<WorkerView, QueueError>;

    /// Operator: forgets a worker that holds no lease; answers it as it was.
    fn forget_worker(&self, name: &WorkerName) -> Result<WorkerView, QueueError>;

    // --- per-worker tokens ---

    /// Makes a fresh token for `name`, replacing the one it had.
    fn issue_worker_token(&self, name: &WorkerName) -> Result<IssuedToken, QueueError>;

    /// Deletes `name`'s token; answers when it had been issued, or None when it had none.
    fn revoke_worker_token(&self, name: &WorkerName) -> Result<Option<DateTime<Utc>>, QueueError>;

    /// Every worker that has a token, by name.
    fn worker_tokens(&self) -> Result<Vec<WorkerTokenInfo>, QueueError>;

    /// The worker a presented per-worker token belongs to, if it is one. Never waits for
    /// writers: every worker request asks.
    fn worker_for_token(&self, token: &str) -> Result<Option<WorkerName>, QueueError>;

    /// True when at least one per-worker token exists (then worker routes need a token).
    fn worker_tokens_exist(&self) -> Result<bool, QueueError>;

    // --- events ---

    /// Up to `limit` events with seq > `since` that `filter` keeps, oldest first. Events
    /// are numbered in commit order with no gaps, so a reader that resumes from the last
    /// seq it saw misses none.
    fn events_filtered(
        &self,
        since: u64,
        limit: usize,
        filter: &EventFilter,
    ) -> Result<EventsPage, QueueError>;

    /// Up to `limit` events with seq > `since`, oldest first.
    fn events_since(&self, since: u64, limit: usize) -> Result<EventsPage, QueueError> {
        self.events_filtered(since, limit, &EventFilter::default())
    }

    /// Watches the seq of the last event, bumped after every commit that appended events:
    /// long-poll claims and `/v1/events` wait on it.
    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64>;
}
