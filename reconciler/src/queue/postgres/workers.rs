//! Workers as the operator sees them on PostgreSQL: views and paging. The state rules are
//! shared (`nodes::node_state`, `placement::worker_labels`; cordon, drain and delete in
//! `worker_ops.rs`); only reading the rows is this backend's.

use cis490_api::{HostProblem, JobId, Page, WorkerName, WorkerView};

use super::nodes::{i_host_policy, i_leased_jobs_of, i_worker_row, WORKER_COLUMNS};
use super::tx::PgTx;
use crate::queue::nodes::{node_state, WorkerRow};
use crate::queue::rows::from_ms;
use crate::queue::QueueError;

fn not_found(name: &WorkerName) -> QueueError {
    QueueError::NotFound {
        what: "worker",
        key: name.to_string(),
    }
}

/// The worker's last host failure, if it has not completed a job since.
fn i_host_problem(tx: &mut PgTx<'_>, name: &str) -> Result<Option<HostProblem>, QueueError> {
    let Some(r) = tx.db.query_opt(
        "SELECT host_problem, host_problem_job, host_problem_at FROM workers WHERE name = $1",
        &[&name],
    )?
    else {
        return Ok(None);
    };
    let (reason, job, at): (Option<String>, Option<String>, Option<i64>) =
        (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
    let (Some(reason), Some(job), Some(at)) = (reason, job, at) else {
        return Ok(None);
    };
    Ok(Some(HostProblem {
        reason,
        job_id: JobId::parse(&job).map_err(QueueError::corrupt)?,
        at: from_ms(at),
    }))
}

/// SQLite's `nodes::worker_view` on this backend.
pub(crate) fn i_view(tx: &mut PgTx<'_>, row: WorkerRow) -> Result<WorkerView, QueueError> {
    let running_jobs = i_leased_jobs_of(tx, &row.name)?;
    let fresh = row.is_fresh_at(tx.now, tx.config);
    let state = node_state(&row, fresh, !running_jobs.is_empty());
    let policy = i_host_policy(tx, &row.name)?;
    let labels = crate::queue::placement::worker_labels(&row.capability, policy.as_ref());
    let host_problem = i_host_problem(tx, &row.name)?;
    Ok(WorkerView {
        name: WorkerName::parse(&row.name).map_err(QueueError::corrupt)?,
        state,
        ready: fresh,
        cordoned: row.cordoned || row.draining,
        draining: row.draining && !running_jobs.is_empty(),
        capability: row.capability,
        first_seen: from_ms(row.first_seen),
        last_seen: from_ms(row.last_seen),
        running_jobs,
        host_problem,
        labels,
    })
}

pub(crate) fn i_worker_view(
    tx: &mut PgTx<'_>,
    name: &WorkerName,
) -> Result<WorkerView, QueueError> {
    let row = i_worker_row(tx, name.as_str())?.ok_or_else(|| not_found(name))?;
    i_view(tx, row)
}

/// Up to `limit` workers named after `after`, by name.
pub(crate) fn i_workers_page(
    tx: &mut PgTx<'_>,
    after: Option<&str>,
    limit: usize,
) -> Result<Page<WorkerView>, QueueError> {
    let sql =
        format!("SELECT {WORKER_COLUMNS} FROM workers WHERE name > $1 ORDER BY name LIMIT $2");
    let want = i64::try_from(limit + 1).unwrap_or(i64::MAX);
    let mut rows = tx
        .db
        .query(&sql, &[&after.unwrap_or(""), &want])?
        .iter()
        .map(super::nodes::decode)
        .collect::<Result<Vec<_>, _>>()?;
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next = more.then(|| rows.last().map(|r| r.name.clone())).flatten();
    let items = rows
        .into_iter()
        .map(|row| i_view(tx, row))
        .collect::<Result<_, _>>()?;
    Ok(Page { items, next })
}

pub(crate) fn i_workers(tx: &mut PgTx<'_>) -> Result<Vec<WorkerView>, QueueError> {
    super::nodes::i_worker_rows(tx)?
        .into_iter()
        .map(|row| i_view(tx, row))
        .collect()
}
