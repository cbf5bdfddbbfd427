//! What an operator does to a worker, written once over [`NodeRows`]: cordon, uncordon
//! and drain (like `kubectl cordon` / `drain`), and `delete worker NAME`, which forgets a
//! worker whose host is gone (like `kubectl delete node`).
//!
//! A delete is refused while the worker holds a lease: its jobs would point at nobody. The
//! jobs' and the event log's mentions of it stay (history); its tokens stay too (revoking a
//! credential is `tokens revoke`). An agent still running under the name registers again
//! at its next report.

use cis490_api::{WorkerName, WorkerView};

use super::events::kind;
use super::worker_names::NodeRows;
use super::QueueError;

/// What an operator does to a worker's schedulability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Schedulable {
    Cordon,
    Uncordon,
    Drain,
}

fn no_such_worker(name: &WorkerName) -> QueueError {
    QueueError::NotFound {
        what: "worker",
        key: name.to_string(),
    }
}

/// Cordons, uncordons or drains `name`; an event only when that changed something.
pub(crate) fn i_set_schedulable<T: NodeRows + ?Sized>(
    tx: &mut T,
    name: &WorkerName,
    to: Schedulable,
) -> Result<WorkerView, QueueError> {
    tx.lock_worker(name)?;
    let row = tx
        .worker_row(name.as_str())?
        .ok_or_else(|| no_such_worker(name))?;
    let (cordoned, draining, event, message) = match to {
        Schedulable::Cordon => (
            true,
            false,
            kind::CORDONED,
            format!("node {name} cordoned: no new jobs"),
        ),
        Schedulable::Uncordon => (
            false,
            false,
            kind::UNCORDONED,
            format!("node {name} uncordoned: takes new jobs again"),
        ),
        Schedulable::Drain => (
            true,
            true,
            kind::DRAINING,
            format!("node {name} draining: no new jobs, running jobs finish"),
        ),
    };
    if (row.cordoned, row.draining) != (cordoned, draining) {
        tx.set_schedulable_flags(name, cordoned, draining)?;
        tx.worker_event(name, event, message)?;
    }
    tx.worker_view(name)
}

/// Forgets `name` (see the module docs); answers the worker as it was.
pub(crate) fn i_forget_worker<T: NodeRows + ?Sized>(
    tx: &mut T,
    name: &WorkerName,
) -> Result<WorkerView, QueueError> {
    tx.lock_worker(name)?;
    let view = tx.worker_view(name)?;
    let leased = tx.leased_jobs_of(name.as_str())?;
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
    tx.delete_worker_row(name)?;
    let note = if view.ready {
        " (it was still reporting: a running agent registers again at its next report)"
    } else {
        ""
    };
    tx.worker_event(
        name,
        kind::WORKER_DELETED,
        format!("deleted by an operator, last seen {}{note}", view.last_seen),
    )?;
    Ok(view)
}
