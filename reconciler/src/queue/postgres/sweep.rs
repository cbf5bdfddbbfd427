//! The sweep on PostgreSQL: leases whose time ran out end (`transitions::expire_lease`).

use cis490_api::JobId;

use super::rows::{i_job_row, i_set_count, i_set_error, i_to_failed, i_to_pending};
use super::tx::PgTx;
use crate::queue::transitions::{self, Expiry, Job};
use crate::queue::{QueueError, SweepOutcome};

pub(crate) fn i_sweep(tx: &mut PgTx<'_>, now: i64) -> Result<SweepOutcome, QueueError> {
    // Locked one by one in ID order, so two sweeps (one per server) wait for each other
    // instead of deadlocking (a deadlock with an apply is retried, see `tx.rs`); a job a
    // heartbeat holds is waited for and judged as that heartbeat left it.
    let expired: Vec<String> = tx
        .db
        .query(
            "SELECT id FROM jobs WHERE lease_token IS NOT NULL AND lease_expires_at < $1 \
             AND status IN ('claimed', 'running') ORDER BY id",
            &[&now],
        )?
        .iter()
        .map(|r| Ok(r.try_get(0)?))
        .collect::<Result<_, QueueError>>()?;
    let mut out = SweepOutcome::default();
    for id in expired {
        let id = JobId::parse(&id).map_err(QueueError::corrupt)?;
        let Some(row) = i_job_row(tx, &id, true)? else {
            continue;
        };
        let Some(expiry) = transitions::expire_lease(&Job::of(&row)?, now) else {
            continue;
        };
        match expiry {
            Expiry::Requeue {
                lease_expiries,
                event,
            } => {
                i_set_count(tx, &id, "lease_expiries", lease_expiries)?;
                i_to_pending(tx, &id)?;
                tx.emit(&id, event);
                out.requeued.push(id);
            }
            Expiry::Fail {
                lease_expiries,
                reason,
                events,
            } => {
                i_set_count(tx, &id, "lease_expiries", lease_expiries)?;
                i_set_error(tx, &id, &reason, None, row.log_tail.as_deref())?;
                i_to_failed(tx, &id)?;
                for event in events {
                    tx.emit(&id, event);
                }
                out.failed.push(id);
            }
        }
    }
    // Cancelled jobs whose worker never heard of the cancel: drop the dangling lease.
    tx.db.execute(
        "UPDATE jobs SET lease_attempt = NULL, lease_token = NULL, lease_expires_at = NULL \
         WHERE status = 'cancelled' AND lease_token IS NOT NULL AND lease_expires_at < $1",
        &[&now],
    )?;
    Ok(out)
}
