//! Reading and writing job rows: the one place that knows the `jobs` columns.

use chrono::{DateTime, Utc};
use cis490_api::{ArtifactId, JobError, JobId, JobSpec, JobStatus, JobView, Lease, WorkerName};
use rusqlite::{params, OptionalExtension, Row};

use super::placement::Placement;
use super::transitions::{self, Fence, State};
use super::{QueueError, Tx};

/// Milliseconds since the epoch -> time (out-of-range values clamp to the epoch).
pub(crate) fn from_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// A job row as stored.
#[derive(Debug, Clone)]
pub(crate) struct JobRow {
    pub spec: JobSpec,
    pub status: JobStatus,
    pub tombstoned: bool,
    pub worker: Option<String>,
    pub attempts: u32,
    pub lease_attempt: Option<u32>,
    pub lease_token: Option<String>,
    pub lease_expires_at: Option<i64>,
    pub trainer_failures: u32,
    pub lease_expiries: u32,
    pub artifact_id: Option<String>,
    pub error_reason: Option<String>,
    pub error_exit_code: Option<i32>,
    pub error_log_tail: Option<String>,
    pub log_tail: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub pending_since: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

/// The columns `JobRow::from_row` reads, in order.
pub(crate) const JOB_COLUMNS: &str = "spec, status, tombstoned, worker, attempts, \
     lease_attempt, lease_token, lease_expires_at, trainer_failures, lease_expiries, \
     artifact_id, error_reason, error_exit_code, error_log_tail, log_tail, created_at, \
     updated_at, pending_since, started_at, finished_at";

/// Raw column values; decoded outside rusqlite's row callback so decode errors stay typed.
pub(crate) struct RawJob {
    spec: String,
    status: String,
    rest: JobRowRest,
}

struct JobRowRest {
    tombstoned: bool,
    worker: Option<String>,
    attempts: u32,
    lease_attempt: Option<u32>,
    lease_token: Option<String>,
    lease_expires_at: Option<i64>,
    trainer_failures: u32,
    lease_expiries: u32,
    artifact_id: Option<String>,
    error_reason: Option<String>,
    error_exit_code: Option<i32>,
    error_log_tail: Option<String>,
    log_tail: Option<String>,
    created_at: i64,
    updated_at: i64,
    pending_since: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
}

impl RawJob {
    /// Reads the `JOB_COLUMNS` starting at column `first`.
    pub(crate) fn from_row(row: &Row<'_>, first: usize) -> rusqlite::Result<RawJob> {
        let c = |i: usize| first + i;
        Ok(RawJob {
            spec: row.get(c(0))?,
            status: row.get(c(1))?,
            rest: JobRowRest {
                tombstoned: row.get(c(2))?,
                worker: row.get(c(3))?,
                attempts: row.get(c(4))?,
                lease_attempt: row.get(c(5))?,
                lease_token: row.get(c(6))?,
                lease_expires_at: row.get(c(7))?,
                trainer_failures: row.get(c(8))?,
                lease_expiries: row.get(c(9))?,
                artifact_id: row.get(c(10))?,
                error_reason: row.get(c(11))?,
                error_exit_code: row.get(c(12))?,
                error_log_tail: row.get(c(13))?,
                log_tail: row.get(c(14))?,
                created_at: row.get(c(15))?,
                updated_at: row.get(c(16))?,
                pending_since: row.get(c(17))?,
                started_at: row.get(c(18))?,
                finished_at: row.get(c(19))?,
            },
        })
    }

    pub(crate) fn decode(self) -> Result<JobRow, QueueError> {
        let spec: JobSpec = serde_json::from_str(&self.spec)
            .map_err(|e| QueueError::corrupt(format!("job spec: {e}")))?;
        let status: JobStatus = self
            .status
            .parse()
            .map_err(|e| QueueError::corrupt(format!("job {}: {e}", spec.id)))?;
        let r = self.rest;
        Ok(JobRow {
            spec,
            status,
            tombstoned: r.tombstoned,
            worker: r.worker,
            attempts: r.attempts,
            lease_attempt: r.lease_attempt,
            lease_token: r.lease_token,
            lease_expires_at: r.lease_expires_at,
            trainer_failures: r.trainer_failures,
            lease_expiries: r.lease_expiries,
            artifact_id: r.artifact_id,
            error_reason: r.error_reason,
            error_exit_code: r.error_exit_code,
            error_log_tail: r.error_log_tail,
            log_tail: r.log_tail,
            created_at: r.created_at,
            updated_at: r.updated_at,
            pending_since: r.pending_since,
            started_at: r.started_at,
            finished_at: r.finished_at,
        })
    }
}

/// What a lease fence reads of a job, and where its bundle is filed: an upload's checks
/// read these columns alone (the whole row decodes the spec).
#[derive(Debug, Clone)]
pub struct LeasedJob {
    pub id: JobId,
    pub model: String,
    pub mode: String,
    pub(crate) status: JobStatus,
    pub(crate) tombstoned: bool,
    pub(crate) worker: Option<String>,
    pub(crate) lease_attempt: Option<u32>,
    pub(crate) lease_token: Option<String>,
}

/// The columns [`LeasedJob::decode`] reads, in order.
pub(crate) const LEASED_COLUMNS: &str =
    "status, tombstoned, worker, lease_attempt, lease_token, model, mode";

impl LeasedJob {
    /// The job from its [`LEASED_COLUMNS`] (`status` as stored).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn decode(
        id: &JobId,
        status: &str,
        tombstoned: bool,
        worker: Option<String>,
        lease_attempt: Option<u32>,
        lease_token: Option<String>,
        model: String,
        mode: String,
    ) -> Result<LeasedJob, QueueError> {
        let status = status
            .parse()
            .map_err(|e| QueueError::corrupt(format!("job {id}: {e}")))?;
        Ok(LeasedJob {
            id: id.clone(),
            model,
            mode,
            status,
            tombstoned,
            worker,
            lease_attempt,
            lease_token,
        })
    }

    /// Ok(self) when `lease` is the job's current lease held by `worker` and the job is
    /// claimed or running (`transitions::check_fence`).
    pub(crate) fn checked(self, worker: &WorkerName, lease: &Lease) -> Result<Self, QueueError> {
        let state = State::of(
            &self.id,
            self.status,
            self.worker.as_deref(),
            self.lease_attempt,
            self.lease_token.as_deref(),
            None,
        )?;
        let fence = Fence {
            id: &self.id,
            state,
            tombstoned: self.tombstoned,
        };
        transitions::check_fence(&fence, worker, lease, false)?;
        Ok(self)
    }
}

/// The fence columns of job `id`, or NotFound.
pub(crate) fn i_fence_columns(tx: &Tx<'_>, id: &JobId) -> Result<LeasedJob, QueueError> {
    let sql = format!("SELECT {LEASED_COLUMNS} FROM jobs WHERE id = ?1");
    let raw = tx
        .db
        .prepare_cached(&sql)?
        .query_row([id.as_str()], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        })
        .optional()?;
    let (status, tombstoned, worker, attempt, token, model, mode) =
        raw.ok_or_else(|| QueueError::job_not_found(id))?;
    LeasedJob::decode(id, &status, tombstoned, worker, attempt, token, model, mode)
}

/// The job `id`, or None.
pub(crate) fn i_job_row(tx: &Tx<'_>, id: &JobId) -> Result<Option<JobRow>, QueueError> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1");
    let raw = tx
        .db
        .prepare_cached(&sql)?
        .query_row([id.as_str()], |r| RawJob::from_row(r, 0))
        .optional()?;
    raw.map(RawJob::decode).transpose()
}

/// The job `id`, or NotFound.
pub(crate) fn i_existing_job(tx: &Tx<'_>, id: &JobId) -> Result<JobRow, QueueError> {
    i_job_row(tx, id)?.ok_or_else(|| QueueError::job_not_found(id))
}

/// Inserts `spec` as a new pending job, in one statement with every column (an insert
/// followed by an update moved every index entry twice). Ok(false), and nothing written,
/// when a job with its ID exists already.
pub(crate) fn i_insert_job(tx: &Tx<'_>, spec: &JobSpec) -> Result<bool, QueueError> {
    let inserted = i_execute_with_spec(
        tx,
        "INSERT INTO jobs (id, spec, status, priority, manifest_order, model, mode, \
         require_cuda, prefer_cuda, min_vram_gib, min_ram_gib, allowed_hosts, created_at, \
         updated_at, pending_since, placement) \
         VALUES (?1, ?2, 'pending', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?12, ?12, ?13) \
         ON CONFLICT (id) DO NOTHING",
        spec,
    )?;
    Ok(inserted == 1)
}

/// Stores `spec` and its indexed copies.
pub(crate) fn i_write_spec(tx: &Tx<'_>, spec: &JobSpec) -> Result<(), QueueError> {
    i_execute_with_spec(
        tx,
        "UPDATE jobs SET spec = ?2, priority = ?3, manifest_order = ?4, model = ?5, \
         mode = ?6, require_cuda = ?7, prefer_cuda = ?8, min_vram_gib = ?9, \
         min_ram_gib = ?10, allowed_hosts = ?11, updated_at = ?12, placement = ?13 \
         WHERE id = ?1",
        spec,
    )?;
    Ok(())
}

/// Runs `sql` with a spec's columns bound as ?1 id, ?2 spec JSON, ?3 priority,
/// ?4 manifest_order, ?5 model, ?6 mode, ?7-?10 the constraints, ?11 allowed_hosts JSON,
/// ?12 now, ?13 the placement JSON ([`Placement`]); the number of rows changed.
fn i_execute_with_spec(tx: &Tx<'_>, sql: &str, spec: &JobSpec) -> Result<usize, QueueError> {
    let json = serde_json::to_string(spec).map_err(|e| QueueError::corrupt(e.to_string()))?;
    let allowed = serde_json::to_string(&spec.constraints.allowed_hosts)
        .map_err(|e| QueueError::corrupt(e.to_string()))?;
    let c = &spec.constraints;
    let placement = Placement::of(c).to_column()?;
    Ok(tx.db.prepare_cached(sql)?.execute(params![
        spec.id.as_str(),
        json,
        spec.priority,
        i64::try_from(spec.manifest_order).unwrap_or(i64::MAX),
        spec.model,
        spec.mode,
        c.require_cuda,
        c.prefer_cuda,
        c.min_vram_gib,
        c.min_ram_gib,
        allowed,
        tx.now,
        placement,
    ])?)
}

impl JobRow {
    /// The API view (without events).
    pub(crate) fn view(&self) -> Result<JobView, QueueError> {
        let s = &self.spec;
        let worker = self
            .worker
            .as_deref()
            .map(WorkerName::parse)
            .transpose()
            .map_err(QueueError::corrupt)?;
        let artifact_id = self
            .artifact_id
            .as_deref()
            .map(ArtifactId::parse)
            .transpose()
            .map_err(QueueError::corrupt)?;
        let error = self.error_reason.as_ref().map(|reason| JobError {
            reason: reason.clone(),
            exit_code: self.error_exit_code,
            log_tail: self.error_log_tail.clone(),
        });
        Ok(JobView {
            id: s.id.clone(),
            model: s.model.clone(),
            mode: s.mode.clone(),
            hyper: s.hyper.clone(),
            split_recipe: s.split_recipe.clone(),
            train_hosts: s.train_hosts.clone(),
            seed: s.seed,
            constraints: s.constraints.clone(),
            priority: s.priority,
            labels: s.labels.clone(),
            timeout_s: s.timeout_s,
            env: s.env.clone(),
            status: self.status,
            worker,
            attempts: self.attempts,
            max_attempts: s.max_attempts,
            artifact_id,
            error,
            tombstoned: self.tombstoned,
            created_at: from_ms(self.created_at),
            updated_at: from_ms(self.updated_at),
            started_at: self.started_at.map(from_ms),
            finished_at: self.finished_at.map(from_ms),
            lease_expires_at: if self.status.is_leased() {
                self.lease_expires_at.map(from_ms)
            } else {
                None
            },
            log_tail: self.log_tail.clone(),
            events: Vec::new(),
            progress: None,
            metrics: None,
        })
    }
}

/// Back to pending: the lease is dropped and the prefer_cuda wait starts again.
pub(crate) fn i_to_pending(tx: &Tx<'_>, id: &JobId) -> Result<(), QueueError> {
    tx.db
        .prepare_cached(
            "UPDATE jobs SET status = 'pending', lease_attempt = NULL, lease_token = NULL, \
             lease_expires_at = NULL, pending_since = ?2, updated_at = ?2 WHERE id = ?1",
        )?
        .execute(params![id.as_str(), tx.now])?;
    Ok(())
}

pub(crate) fn i_set_lease_expiries(
    tx: &Tx<'_>,
    id: &JobId,
    expiries: u32,
) -> Result<(), QueueError> {
    tx.db
        .prepare_cached("UPDATE jobs SET lease_expiries = ?2 WHERE id = ?1")?
        .execute(params![id.as_str(), expiries])?;
    Ok(())
}

pub(crate) fn i_set_attempts(tx: &Tx<'_>, id: &JobId, attempts: u32) -> Result<(), QueueError> {
    tx.db
        .prepare_cached("UPDATE jobs SET attempts = ?2 WHERE id = ?1")?
        .execute(params![id.as_str(), attempts])?;
    Ok(())
}

pub(crate) fn i_set_error(
    tx: &Tx<'_>,
    id: &JobId,
    reason: &str,
    exit_code: Option<i32>,
    log_tail: Option<&str>,
) -> Result<(), QueueError> {
    tx.db
        .prepare_cached(
            "UPDATE jobs SET error_reason = ?2, error_exit_code = ?3, error_log_tail = ?4 \
             WHERE id = ?1",
        )?
        .execute(params![id.as_str(), reason, exit_code, log_tail])?;
    Ok(())
}

/// Terminal: failed, lease dropped.
pub(crate) fn i_to_failed(tx: &Tx<'_>, id: &JobId) -> Result<(), QueueError> {
    tx.db
        .prepare_cached(
            "UPDATE jobs SET status = 'failed', lease_attempt = NULL, lease_token = NULL, \
             lease_expires_at = NULL, finished_at = ?2, updated_at = ?2 WHERE id = ?1",
        )?
        .execute(params![id.as_str(), tx.now])?;
    Ok(())
}
