//! The worker's calls on a leased job on PostgreSQL: heartbeat, complete, fail and upload
//! records. Each locks the job's row (`FOR UPDATE`) and is fenced by its lease
//! (`transitions::check_lease`) before it writes.

use crate::queue::job_queue::Finished;
use cis490_api::{
    ArtifactId, CompleteRequest, FailRequest, HeartbeatRequest, HeartbeatResponse, JobId,
    JobStatus, JobStatusResponse, Lease, WorkerName,
};

use super::failures::{i_host_failure, i_record_failure};
use super::nodes::{i_clear_host_problem, i_touch_worker};
use super::results::{i_record_outcome, i_record_progress};
use super::rows::{
    big, i_fence_columns, i_locked_job, i_set_count, i_set_error, i_to_failed, i_to_pending,
};
use super::tx::PgTx;
use crate::queue::rows::LeasedJob;
use crate::queue::transitions::{self, Beat, Failure, Job};
use crate::queue::QueueError;

/// The job's fence columns, when `lease` is its current lease held by `worker` (a read:
/// uploads check before they stream, and [`i_record_upload`] checks again under the row
/// lock).
pub(crate) fn i_check_lease(
    tx: &mut PgTx<'_>,
    id: &JobId,
    worker: &WorkerName,
    lease: &Lease,
) -> Result<LeasedJob, QueueError> {
    i_fence_columns(tx, id, false)?.checked(worker, lease)
}

/// A heartbeat: extends the lease (the first one starts the job), stores the log chunk
/// and progress it carries.
pub(crate) fn i_heartbeat(
    tx: &mut PgTx<'_>,
    id: &JobId,
    req: &HeartbeatRequest,
) -> Result<HeartbeatResponse, QueueError> {
    let row = i_locked_job(tx, id)?;
    let beat = transitions::heartbeat(&Job::of(&row)?, &req.worker, &req.lease, tx.now)?;
    i_touch_worker(tx, req.worker.as_str())?;
    if let Some(tail) = &req.log_tail {
        tx.db.execute(
            "UPDATE jobs SET log_tail = $2 WHERE id = $1",
            &[&id.as_str(), tail],
        )?;
    }
    let log_offset = match &req.log {
        Some(chunk) => super::logs::i_append(
            tx,
            id,
            &req.worker,
            &req.lease,
            chunk,
            tx.config.max_log_bytes_per_attempt,
        )?,
        None => super::logs::i_source_next(tx, id, &req.lease)?,
    };
    if let Some(point) = &req.progress {
        i_record_progress(tx, id, &req.worker, &req.lease, point)?;
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
    tx.db.execute(
        "UPDATE jobs SET lease_expires_at = $2, updated_at = $3 WHERE id = $1",
        &[&id.as_str(), &expires_at, &tx.now],
    )?;
    if let Some(started) = started {
        tx.db.execute(
            "UPDATE jobs SET status = 'running', started_at = $2 WHERE id = $1",
            &[&id.as_str(), &tx.now],
        )?;
        tx.emit(id, started);
    }
    Ok(HeartbeatResponse {
        cancel: false,
        log_offset: Some(log_offset),
    })
}

pub(crate) fn i_record_upload(
    tx: &mut PgTx<'_>,
    id: &JobId,
    worker: &WorkerName,
    lease: &Lease,
    artifact: &ArtifactId,
    size_bytes: u64,
) -> Result<(), QueueError> {
    i_fence_columns(tx, id, true)?.checked(worker, lease)?;
    i_insert_upload(tx, id, worker, lease, artifact, size_bytes)
}

/// SQLite's `lease::i_insert_upload`: the row of an upload the caller fenced.
fn i_insert_upload(
    tx: &mut PgTx<'_>,
    id: &JobId,
    worker: &WorkerName,
    lease: &Lease,
    artifact: &ArtifactId,
    size_bytes: u64,
) -> Result<(), QueueError> {
    tx.db.execute(
        "INSERT INTO uploads (job_id, attempt, lease_token, artifact_id, worker, size_bytes, at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (job_id, lease_token, artifact_id) DO NOTHING",
        &[
            &id.as_str(),
            &i64::from(lease.attempt),
            &lease.token,
            &artifact.as_str(),
            &worker.as_str(),
            &big(size_bytes),
            &tx.now,
        ],
    )?;
    Ok(())
}

/// The completion rule of [`transitions::completion_artifact`], on this database.
fn i_check_completion_artifact(
    tx: &mut PgTx<'_>,
    id: &JobId,
    req: &CompleteRequest,
) -> Result<(), QueueError> {
    let uploaded: Vec<String> = tx
        .db
        .query(
            "SELECT artifact_id FROM uploads WHERE job_id = $1 AND lease_token = $2 ORDER BY id",
            &[&id.as_str(), &req.lease.token],
        )?
        .iter()
        .map(|r| Ok(r.try_get(0)?))
        .collect::<Result<_, QueueError>>()?;
    transitions::completion_artifact(id, &req.lease, req.artifact_id.as_ref(), &uploaded, || {
        let Some(artifact) = &req.artifact_id else {
            return Ok(None);
        };
        match tx.db.query_opt(
            "SELECT job_id FROM uploads WHERE artifact_id = $1 AND job_id <> $2 \
             ORDER BY id LIMIT 1",
            &[&artifact.as_str(), &id.as_str()],
        )? {
            Some(r) => Ok(Some(r.try_get(0)?)),
            None => Ok(None),
        }
    })
}

pub(crate) fn i_complete(
    tx: &mut PgTx<'_>,
    id: &JobId,
    req: &CompleteRequest,
) -> Result<Finished, QueueError> {
    let row = i_locked_job(tx, id)?;
    let events = transitions::complete(
        &Job::of(&row)?,
        &req.worker,
        &req.lease,
        req.artifact_id.as_ref(),
    )?;
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
    i_clear_host_problem(tx, req.worker.as_str())?;
    tx.db.execute(
        "UPDATE jobs SET status = 'completed', artifact_id = $2, lease_attempt = NULL, \
         lease_token = NULL, lease_expires_at = NULL, error_reason = NULL, \
         error_exit_code = NULL, error_log_tail = NULL, finished_at = $3, updated_at = $3 \
         WHERE id = $1",
        &[
            &id.as_str(),
            &req.artifact_id.as_ref().map(|a| a.as_str()),
            &tx.now,
        ],
    )?;
    i_record_outcome(
        tx,
        &row,
        &req.worker,
        &req.lease,
        crate::queue::results::outcome::COMPLETED,
        &req.report,
        req.artifact_id.as_ref(),
    )?;
    for event in events {
        tx.emit(id, event);
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
    tx: &mut PgTx<'_>,
    id: &JobId,
    req: &FailRequest,
) -> Result<Finished, QueueError> {
    let row = i_locked_job(tx, id)?;
    let failure = transitions::fail(&Job::of(&row)?, req)?;
    if let Some(tail) = &req.log_tail {
        tx.db.execute(
            "UPDATE jobs SET log_tail = $2 WHERE id = $1",
            &[&id.as_str(), tail],
        )?;
    }
    i_record_outcome(
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
            let answer = i_host_failure(tx, id, &row, req)?;
            return Ok(Finished {
                answer,
                model: row.spec.model,
            });
        }
        Failure::Released { attempts, event } => {
            i_set_count(tx, id, "attempts", attempts)?;
            i_to_pending(tx, id)?;
            tx.emit(id, event);
        }
        Failure::Retry {
            trainer_failures,
            event,
        }
        | Failure::Failed {
            trainer_failures,
            event,
        } => {
            i_record_failure(tx, id, req.worker.as_str(), false, &req.reason)?;
            i_set_count(tx, id, "trainer_failures", trainer_failures)?;
            i_set_error(tx, id, &req.reason, req.exit_code, req.log_tail.as_deref())?;
            if status == Some(JobStatus::Failed) {
                i_to_failed(tx, id)?;
            } else {
                i_to_pending(tx, id)?;
            }
            tx.emit(id, event);
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
