//! `hold` / `release`: an operator sets a pending job aside (status `held`) and lets it
//! go again. A held job keeps its place in the manifest and its history; the claim
//! indexes cover only `status = 'pending'`, so a held job is never claimed and claims pay
//! nothing for it.

use cis490_api::{JobId, JobStatus, JobStatusResponse};
use rusqlite::params;

use super::events::i_emit;
use super::rows::i_existing_job;
use super::transitions::{self, Job};
use super::{QueueError, Tx};

pub(crate) fn i_hold(tx: &mut Tx<'_>, id: &JobId) -> Result<JobStatusResponse, QueueError> {
    let row = i_existing_job(tx, id)?;
    let event = transitions::hold(&Job::of(&row)?)?;
    tx.db
        .prepare_cached("UPDATE jobs SET status = 'held', updated_at = ?2 WHERE id = ?1")?
        .execute(params![id.as_str(), tx.now])?;
    i_emit(tx, id, event)?;
    Ok(JobStatusResponse {
        id: id.clone(),
        status: JobStatus::Held,
    })
}

pub(crate) fn i_release(tx: &mut Tx<'_>, id: &JobId) -> Result<JobStatusResponse, QueueError> {
    let row = i_existing_job(tx, id)?;
    let event = transitions::release(&Job::of(&row)?)?;
    // pending_since restarts, as after any return to pending: the prefer_cuda wait counts
    // from the moment the job can be claimed again.
    tx.db
        .prepare_cached(
            "UPDATE jobs SET status = 'pending', pending_since = ?2, updated_at = ?2 \
             WHERE id = ?1",
        )?
        .execute(params![id.as_str(), tx.now])?;
    i_emit(tx, id, event)?;
    Ok(JobStatusResponse {
        id: id.clone(),
        status: JobStatus::Pending,
    })
}
