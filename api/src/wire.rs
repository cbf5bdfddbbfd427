//! Request and response bodies of the HTTP API (`/v1/...`). Extend, never break: new fields
//! get `#[serde(default)]` so older agents and clients keep working.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{ArtifactId, JobId, WorkerName};
use crate::job::{JobSpec, Lease};
use crate::node::Capability;

/// Header carrying the operator token on operator routes.
pub const OPERATOR_TOKEN_HEADER: &str = "X-Operator-Token";
/// Header carrying the lease token on `PUT /v1/model/{job_id}`.
pub const LEASE_TOKEN_HEADER: &str = "X-Lease-Token";
/// Header carrying the lease attempt on `PUT /v1/model/{job_id}`.
pub const LEASE_ATTEMPT_HEADER: &str = "X-Lease-Attempt";
/// Header carrying the uploading worker's name on `PUT /v1/model/{job_id}`.
pub const WORKER_HEADER: &str = "X-Worker";
/// Header carrying the expected sha256 of an upload.
pub const CONTENT_SHA256_HEADER: &str = "X-Content-Sha256";
/// Header of `PUT /v1/model/{job_id}` asking for an [`UploadReceipt`] instead of the
/// upload's own write: the completion then carries the receipt and records the upload in
/// its transaction (value: `requested`).
pub const UPLOAD_RECEIPT_HEADER: &str = "X-Upload-Receipt";
/// Longest long-poll a claim may ask for (`?wait=`), in seconds.
pub const MAX_CLAIM_WAIT_S: u64 = 60;

/// The body of every error answer: a stable machine code and a human sentence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiError {
    /// Stable code: bad_request, unauthorized, forbidden, wrong_worker, not_found,
    /// method_not_allowed, ambiguous_id, lease_lost, conflict, invalid_state, name_in_use,
    /// artifact_not_uploaded, artifact_required, payload_too_large, sha_mismatch,
    /// invalid_manifest, internal.
    pub error: String,
    pub message: String,
}

/// The body of `POST /v1/job/claim[?wait=SECONDS]`: who claims, and what it can take now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClaimRequest {
    pub worker: WorkerName,
    pub capability: Capability,
}

/// 200 answer to a claim (204 when nothing is eligible).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClaimResponse {
    pub job: JobSpec,
    pub lease: Lease,
}

/// The body of `POST /v1/job/{id}/heartbeat`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeartbeatRequest {
    pub worker: WorkerName,
    pub lease: Lease,
    /// The tail of the trainer's output so far (agents before log streaming; the server
    /// keeps it as the job's `log_tail`). Newer agents send `log` instead.
    #[serde(default)]
    pub log_tail: Option<String>,
    /// The next piece of this attempt's log, from the offset the server last acknowledged
    /// (`HeartbeatResponse::log_offset`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<LogChunk>,
    /// The latest line of the trainer's progress file (`$CIS490_PROGRESS_FILE`), parsed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<std::collections::BTreeMap<String, crate::results::MetricValue>>))]
    pub progress: Option<crate::results::Metrics>,
}

/// A piece of an attempt's log as the agent streams it. `from` and `to` are byte offsets
/// in the lease's own log file; `text` is those bytes as UTF-8 (invalid bytes replaced), so
/// its length may differ from `to - from`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LogChunk {
    pub from: u64,
    pub to: u64,
    pub text: String,
}

/// The most raw log bytes an agent puts in one [`LogChunk`].
pub const MAX_LOG_CHUNK_BYTES: u64 = 256 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeartbeatResponse {
    /// An operator cancelled the job: stop the trainer and discard its output.
    pub cancel: bool,
    /// How much of this lease's log file the server holds (the next chunk starts here).
    /// None from servers without log streaming.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_offset: Option<u64>,
}

/// Whose fault a failure is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum FailureCause {
    /// The trainer ran and failed (or the job itself is wrong): counts as an attempt.
    #[default]
    Trainer,
    /// The host could not run any trainer (program not found or not executable, work dir
    /// unreadable, attempt dir not writable): the job goes back to pending without using
    /// an attempt and prefers another host; the host is flagged.
    Host,
}

impl FailureCause {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureCause::Trainer => "trainer",
            FailureCause::Host => "host",
        }
    }
}

/// The body of `POST /v1/job/{id}/complete`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CompleteRequest {
    pub worker: WorkerName,
    pub lease: Lease,
    #[serde(default)]
    pub artifact_id: Option<ArtifactId>,
    /// The receipt of the upload of `artifact_id` (see [`UPLOAD_RECEIPT_HEADER`]): the
    /// completion records that upload. None: the upload recorded itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<UploadReceipt>,
    /// The trainer's final metrics and progress series, and what was wrong with them.
    #[serde(
        default,
        skip_serializing_if = "crate::results::TrainerReport::is_empty"
    )]
    pub report: crate::results::TrainerReport,
}

/// The body of `POST /v1/job/{id}/fail`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FailRequest {
    pub worker: WorkerName,
    pub lease: Lease,
    pub reason: String,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub log_tail: Option<String>,
    /// True when the failure is not the job's fault (e.g. `agent-shutdown`): the job goes
    /// back to pending without using up an attempt.
    #[serde(default)]
    pub retryable: bool,
    /// Whose fault the failure is (`trainer` when absent).
    #[serde(default)]
    pub cause: FailureCause,
    /// The trainer's progress series, and what was wrong with its files.
    #[serde(
        default,
        skip_serializing_if = "crate::results::TrainerReport::is_empty"
    )]
    pub report: crate::results::TrainerReport,
}

/// Answer to complete, fail, cancel and requeue: where the job now stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobStatusResponse {
    pub id: JobId,
    pub status: crate::job::JobStatus,
}

/// Whether an upload stored new bytes or matched an artifact already present.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum UploadStatus {
    Stored,
    AlreadyPresent,
}

/// Answer to `PUT /v1/model/{job_id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UploadResponse {
    pub artifact_id: ArtifactId,
    pub status: UploadStatus,
    pub size_bytes: u64,
    /// Given when the upload asked for one ([`UPLOAD_RECEIPT_HEADER`]): pass it back in the
    /// completion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<UploadReceipt>,
}

/// The server's word that an upload of `size_bytes` bytes was stored under a lease: a MAC
/// over the job, the lease's token, the artifact and the size, under a key the database
/// keeps (so any server of it, restarted or not, can check it). Opaque to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UploadReceipt {
    pub size_bytes: u64,
    /// The MAC, hex.
    pub mac: String,
}

/// One row of `GET /v1/models`: an upload of stored bytes, one row per (job, attempt,
/// artifact). The store keeps each byte sequence once (its sha256 is the artifact ID), so
/// jobs that produced identical bytes have rows with the same `artifact_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ArtifactView {
    pub artifact_id: ArtifactId,
    pub job_id: JobId,
    /// The attempt that uploaded it; None for bytes stored before uploads were recorded
    /// per attempt (then `job_id` is the job whose upload first stored them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    pub model: String,
    pub mode: String,
    pub worker: String,
    pub size_bytes: u64,
    pub received_at: DateTime<Utc>,
}

/// Where a manifest error is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ManifestError {
    pub path: String,
    pub line: Option<u32>,
    pub column: Option<u32>,
    pub message: String,
}

/// The answer of `GET /v1/manifest`: what was last applied and how the last reload went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ManifestStatus {
    pub path: String,
    /// sha256 of the last applied manifest text.
    pub sha256: Option<String>,
    /// Increments on every apply that changed something.
    pub generation: u64,
    pub last_applied_at: Option<DateTime<Utc>>,
    /// The last reload's errors; empty when the last reload succeeded.
    #[serde(default)]
    pub last_errors: Vec<ManifestError>,
    pub last_error_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// One job in a plan, as a reader needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlanEntry {
    pub id: JobId,
    pub model: String,
    pub mode: String,
    /// For updates: which fields change.
    #[serde(default)]
    pub changes: Vec<String>,
}

/// One `[[hosts]]` policy a reload adds, removes or changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostChange {
    pub name: String,
    /// `add`, `remove` or `update`.
    pub change: String,
    /// For updates: which keys change (allow_jobs, deny_jobs, max_concurrent, labels).
    #[serde(default)]
    pub fields: Vec<String>,
}

/// What a reload does (or would do): `POST /v1/manifest/reload` and `/v1/manifest/diff`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlanSummary {
    pub create: Vec<PlanEntry>,
    pub update: Vec<PlanEntry>,
    pub tombstone: Vec<PlanEntry>,
    pub revive: Vec<PlanEntry>,
    pub keep: u64,
    /// Of `keep`: jobs whose only change is their place in the file (an entry added above
    /// them, a seed added to a matrix); their order in the queue follows, nothing else.
    #[serde(default)]
    pub reordered: u64,
    /// `[[hosts]]` policies added, removed or changed.
    #[serde(default)]
    pub hosts: Vec<HostChange>,
    #[serde(default)]
    pub warnings: Vec<String>,
    /// True when the plan was applied (reload), false for a diff.
    #[serde(default)]
    pub applied: bool,
    #[serde(default)]
    pub generation: u64,
}

/// Why one worker cannot take a pending job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkerFit {
    pub worker: WorkerName,
    /// Empty when the worker could take the job now. Lasting reasons come first.
    pub reasons: Vec<String>,
    /// How many of `reasons`, from the first, last until the job, the worker's hardware
    /// or the manifest's host policy changes (no CUDA, too little VRAM or RAM in all, not
    /// in allowed_hosts, host policy): while it is above 0 the worker can never run the
    /// job. The rest pass as jobs end or an operator acts (busy, GPU in use, cordoned,
    /// not Ready). 0 from older servers.
    #[serde(default)]
    pub lasting_reasons: usize,
}

impl WorkerFit {
    /// The reasons that last (see `lasting_reasons`).
    pub fn lasting(&self) -> &[String] {
        &self.reasons[..self.lasting_reasons.min(self.reasons.len())]
    }

    /// The reasons that pass.
    pub fn passing(&self) -> &[String] {
        &self.reasons[self.lasting_reasons.min(self.reasons.len())..]
    }
}

/// Why a pending job is not running, like `condor_q -better-analyze`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Explain {
    pub job_id: JobId,
    /// 1-based position among the pending jobs ahead of it in queue order that compete
    /// for its workers (some worker that can run it can run them); None when not pending.
    pub queue_position: Option<u64>,
    pub pending_total: u64,
    /// Pending jobs ahead of it in queue order that none of the workers able to run it can
    /// ever run: they do not hold it back and `queue_position` leaves them out.
    #[serde(default)]
    pub never_runnable_ahead: u64,
    pub workers: Vec<WorkerFit>,
    /// One-line summary ("no Ready worker has CUDA", ...).
    pub summary: String,
}

/// The answer of `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Health {
    pub status: String,
    pub version: String,
    /// Live jobs per status: tombstoned jobs are left out unless they still run (claimed
    /// or running).
    #[serde(default)]
    pub jobs: std::collections::BTreeMap<String, u64>,
    /// Tombstoned jobs (removed from the manifest, kept for their history) not in `jobs`.
    #[serde(default)]
    pub tombstoned: u64,
    /// The server speaks TLS (`--tls-cert-file`).
    #[serde(default)]
    pub tls: bool,
    /// Worker routes require a TLS client certificate (`--client-ca-file`).
    #[serde(default)]
    pub client_certs: bool,
    /// `--insecure` let the server listen beyond loopback without TLS or without any
    /// worker credential; `warnings` says what is exposed.
    #[serde(default)]
    pub insecure: bool,
    /// What an operator should know about the server's security, one sentence each
    /// (`cis490ctl status` prints them).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// This server leads the servers of its database: it reconciles the manifest on its
    /// own and sweeps expired leases (always true on SQLite, where a server is alone).
    #[serde(default = "leads_by_default")]
    pub leader: bool,
}

/// A server too old to report leadership was alone on its database.
fn leads_by_default() -> bool {
    true
}

/// `GET /v1/whoami` (a worker route that changes nothing): who the server takes the
/// request's worker credential to be. `cis490-agent check-server` asks it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WhoAmI {
    /// The worker the credential is bound to; None when it may act as any worker.
    pub worker: Option<WorkerName>,
    /// What the server accepted: "worker token", "client certificate", "shared worker
    /// token", or "none (worker routes are open)".
    pub credential: String,
}

/// `GET /v1/events?since=SEQ&wait=SECONDS`: events after `since`, long-polled. Watchers
/// (`get jobs -w`, `wait`, `logs -f`) follow the fleet through it without busy polling.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventsPage {
    pub events: Vec<crate::job::Event>,
    /// Pass as `since` on the next call. A filtered page may hold no events while `next`
    /// moves on (a worker filter looks at a bounded part of the log per page): the log is
    /// read through once `next` stops moving.
    pub next: u64,
}

/// Filters of `GET /v1/jobs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::IntoParams),
    into_params(parameter_in = Query)
)]
#[serde(deny_unknown_fields)]
pub struct JobFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<crate::job::JobStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// Label selector, kubectl style: comma-separated terms that must all hold,
    /// `key=value`, `key!=value` (absent counts as different), `key` (present) or `!key`
    /// (absent), e.g. `team=a,gpu!=none`. A bad term is a 400 that names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Include tombstoned jobs that no longer run (a tombstoned job that is claimed or
    /// running is always listed: it still runs).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
    /// Most jobs to answer (see [`crate::paging`]: default 500, at most 1,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", param(minimum = 1))]
    pub limit: Option<u32>,
    /// The `next` of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// Query of `GET /v1/job/{id}/log`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::IntoParams),
    into_params(parameter_in = Query)
)]
pub struct LogQuery {
    /// The attempt whose log to read; default: the job's current attempt while it is
    /// leased, else its latest attempt with a log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// Where to start reading (the `next_offset` of the previous page); default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Most bytes of log text in the answer (at most 1 MiB; default 256 KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

/// One page of an attempt's log: `GET /v1/job/{id}/log`.
///
/// Offsets count bytes of the log as the server keeps it. A log over the server's
/// `max_log_bytes_per_attempt` keeps its first half and its latest part; a page that
/// starts in the dropped middle begins with a `[... truncated: N bytes dropped ...]` line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LogPage {
    pub job_id: JobId,
    /// The attempt read; None when the job has no log yet and no current attempt.
    pub attempt: Option<u32>,
    /// Every attempt that has a log, oldest first.
    pub attempts: Vec<u32>,
    /// Where `text` starts.
    pub offset: u64,
    pub text: String,
    /// Pass as `offset` for the rest.
    pub next_offset: u64,
    /// The log's length so far (a page that ends before it has more to read).
    pub size: u64,
    /// Bytes dropped from the middle of this attempt's log (over the cap).
    pub dropped_bytes: u64,
    /// The attempt is over (its lease ended): nothing more will be appended.
    pub finished: bool,
    pub job_status: crate::job::JobStatus,
}
