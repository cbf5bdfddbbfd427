//! An operator's transitions of one job: cancel and requeue (hold and release are in
//! `hold.rs`). Each `i_*` runs inside the caller's transaction.

use cis490_api::{JobId, JobStatus, JobStatusResponse};
use rusqlite::params;

use super::events::i_emit;
use super::failures;
use super::rows::i_existing_job;
use super::transitions::{self, Job};
use super::{QueueError, Tx};

pub(crate) fn i_cancel(tx: &mut Tx<'_>, id: &JobId) -> Result<JobStatusResponse, QueueError> {
    let row = i_existing_job(tx, id)?;
    let event = transitions::cancel(&Job::of(&row)?)?;
    // The lease columns stay: the old lease may still heartbeat (and hears cancel=true).
    tx.db
        .prepare_cached(
            "UPDATE jobs SET status = 'cancelled', finished_at = ?2, updated_at = ?2 \
             WHERE id = ?1",
        )?
        .execute(params![id.as_str(), tx.now])?;
    i_emit(tx, id, event)?;
    Ok(JobStatusResponse {
        id: id.clone(),
        status: JobStatus::Cancelled,
    })
}

pub(crate) fn i_requeue(tx: &mut Tx<'_>, id: &JobId) -> Result<JobStatusResponse, QueueError> {
    let row = i_existing_job(tx, id)?;
    let event = transitions::requeue(&Job::of(&row)?)?;
    tx.db
        .prepare_cached(
            "UPDATE jobs SET status = 'pending', attempts = 0, trainer_failures = 0, \
             lease_expiries = 0, lease_attempt = NULL, lease_token = NULL, \
             lease_expires_at = NULL, artifact_id = NULL, error_reason = NULL, \
             error_exit_code = NULL, error_log_tail = NULL, started_at = NULL, \
             finished_at = NULL, pending_since = ?2, updated_at = ?2 WHERE id = ?1",
        )?
        .execute(params![id.as_str(), tx.now])?;
    failures::i_forget_failures(tx, id)?;
    i_emit(tx, id, event)?;
    Ok(JobStatusResponse {
        id: id.clone(),
        status: JobStatus::Pending,
    })
}
