//! Which workers a job failed on, and failures of the host itself, on PostgreSQL (the
//! rules: SQLite's `failures.rs` and `transitions::host_failure`).

use std::collections::BTreeSet;

use cis490_api::{FailRequest, JobId, JobStatus, JobStatusResponse};

use super::nodes::i_flag_host_problem;
use super::rows::{count, i_set_error, i_to_failed, i_to_pending};
use super::tx::PgTx;
use crate::queue::failures::workers_able_to_run;
use crate::queue::rows::JobRow;
use crate::queue::transitions::{self, HostVerdict};
use crate::queue::QueueError;

/// Records that `job` failed on `worker`, counted as a host or a trainer failure.
pub(crate) fn i_record_failure(
    tx: &mut PgTx<'_>,
    job: &JobId,
    worker: &str,
    host: bool,
    reason: &str,
) -> Result<(), QueueError> {
    let (trainer_n, host_n): (i64, i64) = if host { (0, 1) } else { (1, 0) };
    tx.db.execute(
        "INSERT INTO job_worker_failures (job_id, worker, trainer_failures, host_failures, \
         last_reason, at) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (job_id, worker) DO UPDATE SET \
         trainer_failures = job_worker_failures.trainer_failures + EXCLUDED.trainer_failures, \
         host_failures = job_worker_failures.host_failures + EXCLUDED.host_failures, \
         last_reason = EXCLUDED.last_reason, at = EXCLUDED.at",
        &[
            &job.as_str(),
            &worker,
            &trainer_n,
            &host_n,
            &reason,
            &tx.now,
        ],
    )?;
    Ok(())
}

fn strings(tx: &mut PgTx<'_>, sql: &str, arg: &str) -> Result<BTreeSet<String>, QueueError> {
    tx.db
        .query(sql, &[&arg])?
        .iter()
        .map(|r| Ok(r.try_get::<_, String>(0)?))
        .collect()
}

/// The workers `job` has failed on (for any cause).
pub(crate) fn i_failed_workers(
    tx: &mut PgTx<'_>,
    job: &str,
) -> Result<BTreeSet<String>, QueueError> {
    strings(
        tx,
        "SELECT worker FROM job_worker_failures WHERE job_id = $1",
        job,
    )
}

/// The pending jobs `worker` has failed on: its claims take them only after others.
pub(crate) fn i_pending_failed_on(
    tx: &mut PgTx<'_>,
    worker: &str,
) -> Result<BTreeSet<String>, QueueError> {
    strings(
        tx,
        "SELECT f.job_id FROM job_worker_failures f JOIN jobs j ON j.id = f.job_id \
         WHERE f.worker = $1 AND j.status = 'pending'",
        worker,
    )
}

/// The host could not start the trainer (see SQLite's `failures::i_host_failure`).
pub(crate) fn i_host_failure(
    tx: &mut PgTx<'_>,
    id: &JobId,
    row: &JobRow,
    req: &FailRequest,
) -> Result<JobStatusResponse, QueueError> {
    let worker = req.worker.as_str();
    i_record_failure(tx, id, worker, true, &req.reason)?;
    i_flag_host_problem(tx, worker, id, &req.reason)?;
    let attempts = i64::from(row.attempts.saturating_sub(1));
    let host_failures: i64 = tx
        .db
        .query_one(
            "UPDATE jobs SET host_failures = host_failures + 1, attempts = $2 WHERE id = $1 \
             RETURNING host_failures",
            &[&id.as_str(), &attempts],
        )?
        .try_get(0)?;
    let host_failures = count(host_failures, "host_failures")?;
    i_set_error(tx, id, &req.reason, req.exit_code, req.log_tail.as_deref())?;
    let failed_on: Vec<(String, String)> = tx
        .db
        .query(
            "SELECT worker, last_reason FROM job_worker_failures \
             WHERE job_id = $1 AND host_failures > 0 ORDER BY worker",
            &[&id.as_str()],
        )?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<_, QueueError>>()?;
    let failed_names: BTreeSet<&str> = failed_on.iter().map(|(w, _)| w.as_str()).collect();
    let able = workers_able_to_run(tx, &row.spec.model, &row.spec.constraints)?;
    let untried: Vec<&str> = able
        .iter()
        .map(String::as_str)
        .filter(|w| !failed_names.contains(w))
        .collect();
    match transitions::host_failure(req, host_failures, &failed_on, &untried) {
        HostVerdict::Failed { why, event } => {
            i_set_error(tx, id, &why, None, req.log_tail.as_deref())?;
            i_to_failed(tx, id)?;
            tx.emit(id, event);
            Ok(JobStatusResponse {
                id: id.clone(),
                status: JobStatus::Failed,
            })
        }
        HostVerdict::Pending { event } => {
            i_to_pending(tx, id)?;
            tx.emit(id, event);
            Ok(JobStatusResponse {
                id: id.clone(),
                status: JobStatus::Pending,
            })
        }
    }
}

/// An operator requeued the job: its failures start over.
pub(crate) fn i_forget_failures(tx: &mut PgTx<'_>, id: &JobId) -> Result<(), QueueError> {
    tx.db.execute(
        "DELETE FROM job_worker_failures WHERE job_id = $1",
        &[&id.as_str()],
    )?;
    tx.db.execute(
        "UPDATE jobs SET host_failures = 0 WHERE id = $1",
        &[&id.as_str()],
    )?;
    Ok(())
}
