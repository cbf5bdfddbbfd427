//! An operator's transitions of one job on PostgreSQL: cancel, requeue, hold, release.
//! Each locks the job's row, asks `transitions.rs`, and writes what it decided.

use cis490_api::{JobId, JobStatus, JobStatusResponse};

use super::failures::i_forget_failures;
use super::rows::i_locked_job;
use super::tx::PgTx;
use crate::queue::transitions::{self, Job};
use crate::queue::QueueError;

fn answer(id: &JobId, status: JobStatus) -> JobStatusResponse {
    JobStatusResponse {
        id: id.clone(),
        status,
    }
}

pub(crate) fn i_cancel(tx: &mut PgTx<'_>, id: &JobId) -> Result<JobStatusResponse, QueueError> {
    let row = i_locked_job(tx, id)?;
    let event = transitions::cancel(&Job::of(&row)?)?;
    // The lease columns stay: the old lease may still heartbeat (and hears cancel=true).
    tx.db.execute(
        "UPDATE jobs SET status = 'cancelled', finished_at = $2, updated_at = $2 WHERE id = $1",
        &[&id.as_str(), &tx.now],
    )?;
    tx.emit(id, event);
    Ok(answer(id, JobStatus::Cancelled))
}

pub(crate) fn i_requeue(tx: &mut PgTx<'_>, id: &JobId) -> Result<JobStatusResponse, QueueError> {
    let row = i_locked_job(tx, id)?;
    let event = transitions::requeue(&Job::of(&row)?)?;
    tx.db.execute(
        "UPDATE jobs SET status = 'pending', attempts = 0, trainer_failures = 0, \
         lease_expiries = 0, lease_attempt = NULL, lease_token = NULL, \
         lease_expires_at = NULL, artifact_id = NULL, error_reason = NULL, \
         error_exit_code = NULL, error_log_tail = NULL, started_at = NULL, \
         finished_at = NULL, pending_since = $2, updated_at = $2 WHERE id = $1",
        &[&id.as_str(), &tx.now],
    )?;
    i_forget_failures(tx, id)?;
    tx.emit(id, event);
    Ok(answer(id, JobStatus::Pending))
}

pub(crate) fn i_hold(tx: &mut PgTx<'_>, id: &JobId) -> Result<JobStatusResponse, QueueError> {
    let row = i_locked_job(tx, id)?;
    let event = transitions::hold(&Job::of(&row)?)?;
    tx.db.execute(
        "UPDATE jobs SET status = 'held', updated_at = $2 WHERE id = $1",
        &[&id.as_str(), &tx.now],
    )?;
    tx.emit(id, event);
    Ok(answer(id, JobStatus::Held))
}

pub(crate) fn i_release(tx: &mut PgTx<'_>, id: &JobId) -> Result<JobStatusResponse, QueueError> {
    let row = i_locked_job(tx, id)?;
    let event = transitions::release(&Job::of(&row)?)?;
    // pending_since restarts, as after any return to pending (the prefer_cuda wait).
    tx.db.execute(
        "UPDATE jobs SET status = 'pending', pending_since = $2, updated_at = $2 WHERE id = $1",
        &[&id.as_str(), &tx.now],
    )?;
    tx.emit(id, event);
    Ok(answer(id, JobStatus::Pending))
}
