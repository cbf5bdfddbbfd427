//! The sweep: leases whose time ran out (the agent vanished) end, see
//! `transitions::expire_lease`.

use cis490_api::JobId;

use super::events::i_emit;
use super::rows::{i_existing_job, i_set_error, i_set_lease_expiries, i_to_failed, i_to_pending};
use super::transitions::{self, Expiry, Job};
use super::{QueueError, SweepOutcome, Tx};

pub(crate) fn i_sweep(tx: &mut Tx<'_>, now: i64) -> Result<SweepOutcome, QueueError> {
    let expired: Vec<String> = {
        let mut stmt = tx.db.prepare_cached(
            // A leased job always holds a token, so `jobs_lease` (only jobs with a token,
            // by expiry) finds every expired one; without statistics SQLite would rather
            // walk every claimed job in `jobs_queue`.
            "SELECT id FROM jobs INDEXED BY jobs_lease \
             WHERE lease_token IS NOT NULL AND lease_expires_at < ?1 \
             AND status IN ('claimed', 'running') ORDER BY id",
        )?;
        let rows = stmt.query_map([now], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    let mut out = SweepOutcome::default();
    for id in expired {
        let id = JobId::parse(&id).map_err(QueueError::corrupt)?;
        let row = i_existing_job(tx, &id)?;
        let Some(expiry) = transitions::expire_lease(&Job::of(&row)?, now) else {
            continue;
        };
        match expiry {
            Expiry::Requeue {
                lease_expiries,
                event,
            } => {
                i_set_lease_expiries(tx, &id, lease_expiries)?;
                i_to_pending(tx, &id)?;
                i_emit(tx, &id, event)?;
                out.requeued.push(id);
            }
            Expiry::Fail {
                lease_expiries,
                reason,
                events,
            } => {
                i_set_lease_expiries(tx, &id, lease_expiries)?;
                i_set_error(tx, &id, &reason, None, row.log_tail.as_deref())?;
                i_to_failed(tx, &id)?;
                for event in events {
                    i_emit(tx, &id, event)?;
                }
                out.failed.push(id);
            }
        }
    }
    // Cancelled jobs whose worker never heard of the cancel: drop the dangling lease.
    tx.db
        .prepare_cached(
            "UPDATE jobs SET lease_attempt = NULL, lease_token = NULL, lease_expires_at = NULL \
             WHERE status = 'cancelled' AND lease_token IS NOT NULL AND lease_expires_at < ?1",
        )?
        .execute([now])?;
    Ok(out)
}
