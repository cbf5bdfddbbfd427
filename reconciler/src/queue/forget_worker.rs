//! `delete worker NAME`: forget a worker (a host that is gone), like `kubectl delete node`.
//! Refused while the worker holds a lease: its jobs would point at nobody. The jobs' and
//! the event log's mentions of it stay (history); its tokens stay too (revoking a
//! credential is `tokens revoke`). An agent still running under the name registers again
//! at its next report.

use cis490_api::{WorkerName, WorkerView};
use rusqlite::params;

use super::events::{i_event, kind};
use super::nodes::{i_leased_jobs_of, i_worker_view};
use super::{QueueError, Tx};

pub(crate) fn i_forget_worker(
    tx: &mut Tx<'_>,
    name: &WorkerName,
) -> Result<WorkerView, QueueError> {
    let view = i_worker_view(tx, name)?;
    let leased = i_leased_jobs_of(tx, name.as_str())?;
    if !leased.is_empty() {
        let ids: Vec<&str> = leased.iter().map(|id| id.short()).collect();
        return Err(QueueError::InvalidState {
            message: format!(
                "cannot delete worker {name}: it holds the lease of {} job{} ({}); drain it \
                 and wait for them to finish, or cancel them (a vanished worker's leases \
                 expire on their own)",
                ids.len(),
                if ids.len() == 1 { "" } else { "s" },
                ids.join(", ")
            ),
        });
    }
    tx.db
        .prepare_cached("DELETE FROM workers WHERE name = ?1")?
        .execute(params![name.as_str()])?;
    let note = if view.ready {
        " (it was still reporting: a running agent registers again at its next report)"
    } else {
        ""
    };
    i_event(
        tx,
        None,
        Some(name.as_str()),
        kind::WORKER_DELETED,
        format!("deleted by an operator, last seen {}{note}", view.last_seen),
    )?;
    Ok(view)
}
