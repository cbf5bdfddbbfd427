//! The worker's calls on a leased job: heartbeat, complete, fail and upload records, each
//! fenced by the lease (`transitions::check_lease`). Claims are in `matching.rs`.
//!
//! Each call is written once, over [`LeaseWrites`]: the rows it reads and writes, which
//! each backend implements with its own SQL (SQLite's in `lease_writes.rs`, PostgreSQL's in
//! `postgres/lease.rs`, where the job's row is locked `FOR UPDATE`). What each call decides
//! is in `transitions.rs`. Every function runs inside the caller's transaction.

use cis490_api::{
    ArtifactId, CompleteRequest, FailRequest, HeartbeatRequest, HeartbeatResponse, JobId,
    JobStatus, JobStatusResponse, Lease, Metrics, TrainerReport, WorkerName,
};

use super::job_queue::Finished;
use super::logs::{self, LogRows};
use super::rows::{JobRow, LeasedJob};
use super::transitions::{self, Beat, Emit, Failure, Job};
use super::tx::TxContext;
use super::QueueError;

/// The rows the worker's calls read and write, in one transaction of one backend (the
/// logs' rows among them).
pub(crate) trait LeaseWrites: LogRows + TxContext {
    /// The job's row for a transition (locked for the rest of the transaction where the
    /// database locks rows), or NotFound.
    fn job_for_transition(&mut self, id: &JobId) -> Result<JobRow, QueueError>;
    /// The job's fence columns for a write (locked likewise), or NotFound.
    fn fence_for_write(&mut self, id: &JobId) -> Result<LeasedJob, QueueError>;
    /// The worker was heard from now.
    fn touch_worker(&mut self, worker: &str) -> Result<(), QueueError>;
    fn record_progress(
        &mut self,
        id: &JobId,
        worker: &WorkerName,
        lease: &Lease,
        point: &Metrics,
    ) -> Result<(), QueueError>;
    fn extend_lease(&mut self, id: &JobId, expires_at: i64) -> Result<(), QueueError>;
    /// claimed -> running, started now.
    fn mark_running(&mut self, id: &JobId) -> Result<(), QueueError>;
    fn emit(&mut self, id: &JobId, event: Emit<'_>) -> Result<(), QueueError>;
    /// The row of an upload under `lease` (once per lease and artifact); the caller fenced
    /// it.
    fn insert_upload(
        &mut self,
        id: &JobId,
        worker: &WorkerName,
        lease: &Lease,
        artifact: &ArtifactId,
        size_bytes: u64,
    ) -> Result<(), QueueError>;
    /// Artifacts uploaded for `id` under the lease with `token`, oldest first.
    fn uploads_under(&mut self, id: &JobId, token: &str) -> Result<Vec<String>, QueueError>;
    /// The first other job that uploaded `artifact`.
    fn other_uploader(
        &mut self,
        artifact: &ArtifactId,
        id: &JobId,
    ) -> Result<Option<String>, QueueError>;
    fn clear_host_problem(&mut self, worker: &str) -> Result<(), QueueError>;
    /// leased -> completed with `artifact`, the lease and the last error cleared.
    fn mark_completed(
        &mut self,
        id: &JobId,
        artifact: Option<&ArtifactId>,
    ) -> Result<(), QueueError>;
    /// The attempt's row of the results (`results.rs`).
    #[allow(clippy::too_many_arguments)]
    fn record_outcome(
        &mut self,
        row: &JobRow,
        worker: &WorkerName,
        lease: &Lease,
        outcome: &str,
        report: &TrainerReport,
        artifact: Option<&ArtifactId>,
    ) -> Result<(), QueueError>;
    /// A failure of the host, not the trainer (`failures.rs`).
    fn host_failure(
        &mut self,
        id: &JobId,
        row: &JobRow,
        req: &FailRequest,
    ) -> Result<JobStatusResponse, QueueError>;
    /// The trainer failed on `worker` (the retry-elsewhere rule reads these).
    fn record_trainer_failure(
        &mut self,
        id: &JobId,
        worker: &str,
        reason: &str,
    ) -> Result<(), QueueError>;
    fn set_attempts(&mut self, id: &JobId, attempts: u32) -> Result<(), QueueError>;
    fn set_trainer_failures(&mut self, id: &JobId, failures: u32) -> Result<(), QueueError>;
    fn set_error(
        &mut self,
        id: &JobId,
        reason: &str,
        exit_code: Option<i32>,
        log_tail: Option<&str>,
    ) -> Result<(), QueueError>;
    /// -> pending, the lease dropped.
    fn to_pending(&mut self, id: &JobId) -> Result<(), QueueError>;
    /// -> failed, the lease dropped.
    fn to_failed(&mut self, id: &JobId) -> Result<(), QueueError>;
}

/// A heartbeat: extends the lease (the first one starts the job), stores the log piece
/// and progress it carries, and answers `cancel` for a job cancelled while leased.
pub(crate) fn i_heartbeat<T: LeaseWrites + ?Sized>(
    tx: &mut T,
    id: &JobId,
    req: &HeartbeatRequest,
) -> Result<HeartbeatResponse, QueueError> {
    let row = tx.job_for_transition(id)?;
    let beat = transitions::heartbeat(&Job::of(&row)?, &req.worker, &req.lease, tx.now_ms())?;
    tx.touch_worker(req.worker.as_str())?;
    if let Some(tail) = &req.log_tail {
        tx.set_job_log_tail(id, tail)?;
    }
    let log_offset = match &req.log {
        Some(chunk) => {
            let cap = tx.queue_config().max_log_bytes_per_attempt;
            logs::i_append(tx, id, &req.worker, &req.lease, chunk, cap)?
        }
        None => logs::i_source_next(tx, id, &req.lease)?,
    };
    if let Some(point) = &req.progress {
        tx.record_progress(id, &req.worker, &req.lease, point)?;
    }
    let Beat::Extend {
        expires_at,
        started,
    } = beat
    else {
        return Ok(HeartbeatResponse {
            cancel: true,
            log_offset: Some(log_offset),
        });
    };
    tx.extend_lease(id, expires_at)?;
    if let Some(started) = started {
        tx.mark_running(id)?;
        tx.emit(id, started)?;
    }
    Ok(HeartbeatResponse {
        cancel: false,
        log_offset: Some(log_offset),
    })
}

/// Records an upload the store accepted, fenced by its lease.
pub(crate) fn i_record_upload<T: LeaseWrites + ?Sized>(
    tx: &mut T,
    id: &JobId,
    worker: &WorkerName,
    lease: &Lease,
    artifact: &ArtifactId,
    size_bytes: u64,
) -> Result<(), QueueError> {
    tx.fence_for_write(id)?.checked(worker, lease)?;
    tx.insert_upload(id, worker, lease, artifact, size_bytes)
}

/// The completion rule of [`transitions::completion_artifact`].
fn i_check_completion_artifact<T: LeaseWrites + ?Sized>(
    tx: &mut T,
    id: &JobId,
    req: &CompleteRequest,
) -> Result<(), QueueError> {
    let uploaded = tx.uploads_under(id, &req.lease.token)?;
    transitions::completion_artifact(id, &req.lease, req.artifact_id.as_ref(), &uploaded, || {
        match &req.artifact_id {
            Some(artifact) => tx.other_uploader(artifact, id),
            None => Ok(None),
        }
    })
}

pub(crate) fn i_complete<T: LeaseWrites + ?Sized>(
    tx: &mut T,
    id: &JobId,
    req: &CompleteRequest,
) -> Result<Finished, QueueError> {
    let row = tx.job_for_transition(id)?;
    let events = transitions::complete(
        &Job::of(&row)?,
        &req.worker,
        &req.lease,
        req.artifact_id.as_ref(),
    )?;
    // A receipt (checked before the transaction, `receipts.rs`) stands for the upload's row.
    if let (Some(receipt), Some(artifact)) = (&req.upload, &req.artifact_id) {
        tx.insert_upload(id, &req.worker, &req.lease, artifact, receipt.size_bytes)?;
    }
    i_check_completion_artifact(tx, id, req)?;
    // The worker ran a job to its end: whatever was wrong with its host is not any more.
    tx.clear_host_problem(req.worker.as_str())?;
    tx.mark_completed(id, req.artifact_id.as_ref())?;
    tx.record_outcome(
        &row,
        &req.worker,
        &req.lease,
        super::results::outcome::COMPLETED,
        &req.report,
        req.artifact_id.as_ref(),
    )?;
    for event in events {
        tx.emit(id, event)?;
    }
    Ok(Finished {
        answer: JobStatusResponse {
            id: id.clone(),
            status: JobStatus::Completed,
        },
        model: row.spec.model,
    })
}

pub(crate) fn i_fail<T: LeaseWrites + ?Sized>(
    tx: &mut T,
    id: &JobId,
    req: &FailRequest,
) -> Result<Finished, QueueError> {
    let row = tx.job_for_transition(id)?;
    let failure = transitions::fail(&Job::of(&row)?, req)?;
    if let Some(tail) = &req.log_tail {
        tx.set_job_log_tail(id, tail)?;
    }
    tx.record_outcome(
        &row,
        &req.worker,
        &req.lease,
        failure.outcome(),
        &req.report,
        None,
    )?;
    let status = failure.status();
    let answer = match failure {
        Failure::Host => tx.host_failure(id, &row, req)?,
        Failure::Released { attempts, event } => {
            tx.set_attempts(id, attempts)?;
            tx.to_pending(id)?;
            tx.emit(id, event)?;
            JobStatusResponse {
                id: id.clone(),
                status: JobStatus::Pending,
            }
        }
        Failure::Retry {
            trainer_failures,
            event,
        }
        | Failure::Failed {
            trainer_failures,
            event,
        } => {
            tx.record_trainer_failure(id, req.worker.as_str(), &req.reason)?;
            tx.set_trainer_failures(id, trainer_failures)?;
            tx.set_error(id, &req.reason, req.exit_code, req.log_tail.as_deref())?;
            if status == Some(JobStatus::Failed) {
                tx.to_failed(id)?;
            } else {
                tx.to_pending(id)?;
            }
            tx.emit(id, event)?;
            JobStatusResponse {
                id: id.clone(),
                status: status.unwrap_or(JobStatus::Pending),
            }
        }
    };
    Ok(Finished {
        answer,
        model: row.spec.model,
    })
}
