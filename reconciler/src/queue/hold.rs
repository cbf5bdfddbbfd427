//! `hold` / `release`: an operator sets a pending job aside (status `held`) and lets it
//! go again. A held job keeps its place in the manifest and its history; the claim
//! indexes cover only `status = 'pending'`, so a held job is never claimed and claims pay
//! nothing for it.

use cis490_api::{JobId, JobStatus, JobStatusResponse};
use rusqlite::params;

use super::events::{i_event, kind};
use super::rows::i_existing_job;
use super::{QueueError, Tx};

pub(crate) fn i_hold(tx: &mut Tx<'_>, id: &JobId) -> Result<JobStatusResponse, QueueError> {
    let row = i_existing_job(tx, id)?;
    if row.status != JobStatus::Pending {
        let hint = match row.status {
            JobStatus::Held => " (it is already held)",
            JobStatus::Claimed | JobStatus::Running => {
                " (a leased job cannot be held; cancel it instead)"
            }
            _ => "",
        };
        return Err(QueueError::InvalidState {
            message: format!(
                "cannot hold job {} in state {}: only pending jobs can be held{hint}",
                id.short(),
                row.status
            ),
        });
    }
    tx.db
        .prepare_cached("UPDATE jobs SET status = 'held', updated_at = ?2 WHERE id = ?1")?
        .execute(params![id.as_str(), tx.now])?;
    i_event(
        tx,
        Some(id),
        None,
        kind::HELD,
        "held by an operator: no worker will claim it until it is released",
    )?;
    Ok(JobStatusResponse {
        id: id.clone(),
        status: JobStatus::Held,
    })
}

pub(crate) fn i_release(tx: &mut Tx<'_>, id: &JobId) -> Result<JobStatusResponse, QueueError> {
    let row = i_existing_job(tx, id)?;
    if row.status != JobStatus::Held {
        return Err(QueueError::InvalidState {
            message: format!(
                "cannot release job {} in state {}: only held jobs can be released",
                id.short(),
                row.status
            ),
        });
    }
    // pending_since restarts, as after any return to pending: the prefer_cuda wait counts
    // from the moment the job can be claimed again.
    tx.db
        .prepare_cached(
            "UPDATE jobs SET status = 'pending', pending_since = ?2, updated_at = ?2 \
             WHERE id = ?1",
        )?
        .execute(params![id.as_str(), tx.now])?;
    let note = if row.tombstoned {
        " (it stays tombstoned, so still not claimable)"
    } else {
        ""
    };
    i_event(
        tx,
        Some(id),
        None,
        kind::RELEASED_BY_OPERATOR,
        format!("released by an operator: pending again{note}"),
    )?;
    Ok(JobStatusResponse {
        id: id.clone(),
        status: JobStatus::Pending,
    })
}
