//! The worker's calls on a leased job: heartbeat, complete, fail and upload records,
//! each fenced by the lease (`transitions::check_lease`). Claims are in `matching.rs`.
//! Each `i_*` runs inside the caller's transaction.

use crate::queue::job_queue::Finished;
use cis490_api::{
    ArtifactId, CompleteRequest, FailRequest, HeartbeatRequest, HeartbeatResponse, JobId,
    JobStatus, JobStatusResponse, Lease, WorkerName,
};
use rusqlite::{params, OptionalExtension};

use super::events::i_emit;
use super::failures;
use super::logs;
use super::nodes::{i_clear_host_problem as clear_host_problem, i_touch_worker};
use super::results;
use super::rows::{
    i_existing_job, i_fence_columns, i_set_attempts, i_set_error, i_to_failed, i_to_pending,
    LeasedJob,
};
use super::transitions::{self, Beat, Failure, Job};
use super::{QueueError, Tx};

/// The job's fence columns, when `lease` is its current lease held by `worker` (see
/// [`transitions::check_lease`]).
pub(crate) fn i_leased_job(
    tx: &Tx<'_>,
    id: &JobId,
    worker: &WorkerName,
    lease: &Lease,
) -> Result<LeasedJob, QueueError> {
    i_fence_columns(tx, id)?.checked(worker, lease)
}

pub(crate) fn i_heartbeat(
    tx: &mut Tx<'_>,
    id: &JobId,
    req: &HeartbeatRequest,
) -> Result<HeartbeatResponse, QueueError> {
    let row = i_existing_job(tx, id)?;
    let beat = transitions::heartbeat(&Job::of(&row)?, &req.worker, &req.lease, tx.now)?;
    i_touch_worker(tx, req.worker.as_str())?;
    if let Some(tail) = &req.log_tail {
        tx.db
            .prepare_cached("UPDATE jobs SET log_tail = ?2 WHERE id = ?1")?
            .execute(params![id.as_str(), tail])?;
    }
    let log_offset = match &req.log {
        Some(chunk) => logs::i_append(
            tx,
            id,
            &req.worker,
            &req.lease,
            chunk,
            tx.config.max_log_bytes_per_attempt,
        )?,
        None => logs::i_source_next(tx, id, &req.lease)?,
    };
    if let Some(point) = &req.progress {
        results::i_record_progress(tx, id, &req.worker, &req.lease, point)?;
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
    tx.db
        .prepare_cached("UPDATE jobs SET lease_expires_at = ?2, updated_at = ?3 WHERE id = ?1")?
        .execute(params![id.as_str(), expires_at, tx.now])?;
    if let Some(started) = started {
        tx.db
            .prepare_cached("UPDATE jobs SET status = 'running', started_at = ?2 WHERE id = ?1")?
            .execute(params![id.as_str(), tx.now])?;
        i_emit(tx, id, started)?;
    }
    Ok(HeartbeatResponse {
        cancel: false,
        log_offset: Some(log_offset),
    })
}

pub(crate) fn i_record_upload(
    tx: &mut Tx<'_>,
    id: &JobId,
    worker: &WorkerName,
    lease: &Lease,
    artifact: &ArtifactId,
    size_bytes: u64,
) -> Result<(), QueueError> {
    i_leased_job(tx, id, worker, lease)?;
    i_insert_upload(tx, id, worker, lease, artifact, size_bytes)
}

/// The row of an upload under `lease` (once per lease and artifact); the caller fenced it.
fn i_insert_upload(
    tx: &mut Tx<'_>,
    id: &JobId,
    worker: &WorkerName,
    lease: &Lease,
    artifact: &ArtifactId,
    size_bytes: u64,
) -> Result<(), QueueError> {
    tx.db
        .prepare_cached(
            "INSERT OR IGNORE INTO uploads (job_id, attempt, lease_token, artifact_id, worker, \
             size_bytes, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            id.as_str(),
            lease.attempt,
            lease.token,
            artifact.as_str(),
            worker.as_str(),
            i64::try_from(size_bytes).unwrap_or(i64::MAX),
            tx.now
        ])?;
    Ok(())
}

/// Artifacts uploaded for `id` under the lease with `token`, oldest first.
fn i_uploads_under(tx: &Tx<'_>, id: &JobId, token: &str) -> Result<Vec<String>, QueueError> {
    // `+?1`, `+?2`: with a bare `column = ?N` this statement was compiled again on every
    // completion once the queue held jobs (see `matching::claim_query`); the index is
    // still searched on both columns.
    let mut stmt = tx.db.prepare_cached(
        "SELECT artifact_id FROM uploads WHERE job_id = +?1 AND lease_token = +?2 ORDER BY rowid",
    )?;
    let rows = stmt.query_map(params![id.as_str(), token], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The completion rule of [`transitions::completion_artifact`], on this database.
fn i_check_completion_artifact(
    tx: &Tx<'_>,
    id: &JobId,
    req: &CompleteRequest,
) -> Result<(), QueueError> {
    let uploaded = i_uploads_under(tx, id, &req.lease.token)?;
    transitions::completion_artifact(id, &req.lease, req.artifact_id.as_ref(), &uploaded, || {
        let Some(artifact) = &req.artifact_id else {
            return Ok(None);
        };
        Ok(tx
            .db
            .prepare_cached(
                "SELECT job_id FROM uploads WHERE artifact_id = ?1 AND job_id <> ?2 \
                 ORDER BY rowid LIMIT 1",
            )?
            .query_row(params![artifact.as_str(), id.as_str()], |r| r.get(0))
            .optional()?)
    })
}

pub(crate) fn i_complete(
    tx: &mut Tx<'_>,
    id: &JobId,
    req: &CompleteRequest,
) -> Result<Finished, QueueError> {
    let row = i_existing_job(tx, id)?;
    let events = transitions::complete(
        &Job::of(&row)?,
        &req.worker,
        &req.lease,
        req.artifact_id.as_ref(),
    )?;
    // A receipt (checked before the transaction, `receipts.rs`) stands for the upload's row.
    if let (Some(receipt), Some(artifact)) = (&req.upload, &req.artifact_id) {
        i_insert_upload(
            tx,
            id,
            &req.worker,
            &req.lease,
            artifact,
            receipt.size_bytes,
        )?;
    }
    i_check_completion_artifact(tx, id, req)?;
    // The worker ran a job to its end: whatever was wrong with its host is not any more.
    clear_host_problem(tx, req.worker.as_str())?;
    tx.db
        .prepare_cached(
            "UPDATE jobs SET status = 'completed', artifact_id = ?2, lease_attempt = NULL, \
             lease_token = NULL, lease_expires_at = NULL, error_reason = NULL, \
             error_exit_code = NULL, error_log_tail = NULL, finished_at = ?3, updated_at = ?3 \
             WHERE id = ?1",
        )?
        .execute(params![
            id.as_str(),
            req.artifact_id.as_ref().map(|a| a.as_str()),
            tx.now
        ])?;
    results::i_record_outcome(
        tx,
        &row,
        &req.worker,
        &req.lease,
        results::outcome::COMPLETED,
        &req.report,
        req.artifact_id.as_ref(),
    )?;
    for event in events {
        i_emit(tx, id, event)?;
    }
    Ok(Finished {
        answer: JobStatusResponse {
            id: id.clone(),
            status: JobStatus::Completed,
        },
        model: row.spec.model,
    })
}

pub(crate) fn i_fail(
    tx: &mut Tx<'_>,
    id: &JobId,
    req: &FailRequest,
) -> Result<Finished, QueueError> {
    let row = i_existing_job(tx, id)?;
    let failure = transitions::fail(&Job::of(&row)?, req)?;
    if let Some(tail) = &req.log_tail {
        tx.db
            .prepare_cached("UPDATE jobs SET log_tail = ?2 WHERE id = ?1")?
            .execute(params![id.as_str(), tail])?;
    }
    results::i_record_outcome(
        tx,
        &row,
        &req.worker,
        &req.lease,
        failure.outcome(),
        &req.report,
        None,
    )?;
    let status = failure.status();
    match failure {
        Failure::Host => {
            let answer = failures::i_host_failure(tx, id, &row, req)?;
            return Ok(Finished {
                answer,
                model: row.spec.model,
            });
        }
        Failure::Released { attempts, event } => {
            i_set_attempts(tx, id, attempts)?;
            i_to_pending(tx, id)?;
            i_emit(tx, id, event)?;
        }
        Failure::Retry {
            trainer_failures,
            event,
        }
        | Failure::Failed {
            trainer_failures,
            event,
        } => {
            failures::i_record_failure(tx, id, req.worker.as_str(), false, &req.reason)?;
            tx.db
                .prepare_cached("UPDATE jobs SET trainer_failures = ?2 WHERE id = ?1")?
                .execute(params![id.as_str(), trainer_failures])?;
            i_set_error(tx, id, &req.reason, req.exit_code, req.log_tail.as_deref())?;
            if status == Some(JobStatus::Failed) {
                i_to_failed(tx, id)?;
            } else {
                i_to_pending(tx, id)?;
            }
            i_emit(tx, id, event)?;
        }
    }
    Ok(Finished {
        answer: JobStatusResponse {
            id: id.clone(),
            status: status.unwrap_or(JobStatus::Pending),
        },
        model: row.spec.model,
    })
}
