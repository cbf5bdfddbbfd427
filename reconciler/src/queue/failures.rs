//! Which workers a job failed on, and failures of the host itself (schema migration 8).
//!
//! Every reported failure is recorded per (job, worker), so a retry prefers a worker the
//! job has not failed on (`matching.rs`). A failure whose cause is the host (the agent
//! could not start any trainer: program not found or not executable, work dir unreadable,
//! attempt dir not writable) does not use an attempt: the job goes back to pending and the
//! worker is flagged (`HostProblem` in `get workers`). Host failures are bounded: the job
//! fails once every Ready worker that could run it has had one, or after
//! [`MAX_HOST_FAILURES`] of them.

use std::collections::BTreeSet;

use cis490_api::{FailRequest, JobId, JobStatus, JobStatusResponse};
use rusqlite::params;

use super::events::i_emit;
use super::matching::fit_reasons;
use super::nodes::i_flag_host_problem;
use super::rows::JobRow;
use super::rule_reads::RuleReads;
use super::transitions::{self, HostVerdict};
use super::{QueueError, Tx};

/// Host failures of one job (over all workers) after which it fails for good.
pub const MAX_HOST_FAILURES: u32 = 5;

/// Records that `job` failed on `worker`, counted as a host or a trainer failure.
pub(crate) fn i_record_failure(
    tx: &Tx<'_>,
    job: &JobId,
    worker: &str,
    host: bool,
    reason: &str,
) -> Result<(), QueueError> {
    let (trainer_n, host_n) = if host { (0, 1) } else { (1, 0) };
    tx.db
        .prepare_cached(
            "INSERT INTO job_worker_failures (job_id, worker, trainer_failures, host_failures, \
             last_reason, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
             ON CONFLICT (job_id, worker) DO UPDATE SET \
             trainer_failures = trainer_failures + excluded.trainer_failures, \
             host_failures = host_failures + excluded.host_failures, \
             last_reason = excluded.last_reason, at = excluded.at",
        )?
        .execute(params![
            job.as_str(),
            worker,
            trainer_n,
            host_n,
            reason,
            tx.now
        ])?;
    Ok(())
}

/// The workers `job` has failed on (for any cause).
pub(crate) fn i_failed_workers(tx: &Tx<'_>, job: &str) -> Result<BTreeSet<String>, QueueError> {
    let mut stmt = tx
        .db
        .prepare_cached("SELECT worker FROM job_worker_failures WHERE job_id = ?1")?;
    let rows = stmt.query_map([job], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The workers `job` had a host failure on, with the last reason of each.
fn i_host_failed_workers(tx: &Tx<'_>, job: &JobId) -> Result<Vec<(String, String)>, QueueError> {
    let mut stmt = tx.db.prepare_cached(
        "SELECT worker, last_reason FROM job_worker_failures \
         WHERE job_id = ?1 AND host_failures > 0 ORDER BY worker",
    )?;
    let rows = stmt.query_map([job.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The pending jobs `worker` has failed on: its claims take them only after others.
pub(crate) fn i_pending_failed_on(
    tx: &Tx<'_>,
    worker: &str,
) -> Result<BTreeSet<String>, QueueError> {
    // On every claim. CROSS JOIN keeps the worker's (usually no) failures as the outer
    // loop: left to itself, SQLite (no statistics) walks every pending job in
    // `jobs_queue` and looks each one up here. `+?1`: with a bare `f.worker = ?1` the
    // statement was compiled again on every claim (see `matching::claim_query`).
    let mut stmt = tx.db.prepare_cached(
        "SELECT f.job_id FROM job_worker_failures f INDEXED BY job_worker_failures_worker \
         CROSS JOIN jobs j ON j.id = f.job_id WHERE f.worker = +?1 AND j.status = 'pending'",
    )?;
    let rows = stmt.query_map([worker], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// True while a pending job that failed on `worker` waits for another Ready worker that
/// could run it and has not failed it (for at most `retry_elsewhere_wait_s` since it went
/// back to pending): until then `worker` does not take it.
pub(crate) fn left_to_others(
    reads: &mut impl RuleReads,
    job: &str,
    worker: &str,
    model: &str,
    constraints: &cis490_api::Constraints,
    pending_since: i64,
) -> Result<bool, QueueError> {
    if waited_for_others(reads.now_ms(), reads.queue_config(), pending_since) {
        return Ok(false);
    }
    let failed = reads.failed_workers(job)?;
    if !failed.contains(worker) {
        return Ok(false);
    }
    Ok(workers_able_to_run(reads, model, constraints)?
        .iter()
        .any(|w| w != worker && !failed.contains(w)))
}

/// True once a pending job that failed on a worker has waited `retry_elsewhere_wait_s`
/// for the others: from then on that worker may take it again.
pub(crate) fn waited_for_others(now: i64, config: &super::QueueConfig, pending_since: i64) -> bool {
    let wait_ms = i64::try_from(config.retry_elsewhere_wait_s)
        .unwrap_or(i64::MAX / 1000)
        .saturating_mul(1000);
    now.saturating_sub(pending_since) >= wait_ms
}

/// Ready workers (cordoned ones included: cordon passes) that could run a job of `model`
/// with `constraints` as far as lasting reasons go.
pub(crate) fn workers_able_to_run(
    reads: &mut impl RuleReads,
    model: &str,
    constraints: &cis490_api::Constraints,
) -> Result<Vec<String>, QueueError> {
    let mut out = Vec::new();
    for w in reads.workers()? {
        if !w.is_fresh_at(reads.now_ms(), reads.queue_config()) {
            continue;
        }
        let policy = reads.host_policy(&w.name)?;
        let lasting = fit_reasons(model, constraints, &w.name, &w.capability, policy.as_ref())
            .into_iter()
            .any(|r| r.lasting);
        if !lasting {
            out.push(w.name);
        }
    }
    Ok(out)
}

/// The host could not start the trainer: the attempt is refunded, the host flagged, and
/// the job goes back to pending, unless every Ready worker able to run it has had a host
/// failure with it, or it has had [`MAX_HOST_FAILURES`].
pub(crate) fn i_host_failure(
    tx: &mut Tx<'_>,
    id: &JobId,
    row: &JobRow,
    req: &FailRequest,
) -> Result<JobStatusResponse, QueueError> {
    let worker = req.worker.as_str();
    i_record_failure(tx, id, worker, true, &req.reason)?;
    i_flag_host_problem(tx, worker, id, &req.reason)?;
    let host_failures: u32 = tx
        .db
        .prepare_cached(
            "UPDATE jobs SET host_failures = host_failures + 1, attempts = ?2 WHERE id = ?1 \
             RETURNING host_failures",
        )?
        .query_row(params![id.as_str(), row.attempts.saturating_sub(1)], |r| {
            r.get(0)
        })?;
    super::rows::i_set_error(tx, id, &req.reason, req.exit_code, req.log_tail.as_deref())?;
    let failed_on = i_host_failed_workers(tx, id)?;
    let failed_names: BTreeSet<&str> = failed_on.iter().map(|(w, _)| w.as_str()).collect();
    let able = workers_able_to_run(&mut &*tx, &row.spec.model, &row.spec.constraints)?;
    let untried: Vec<&str> = able
        .iter()
        .map(String::as_str)
        .filter(|w| !failed_names.contains(w))
        .collect();
    match transitions::host_failure(req, host_failures, &failed_on, &untried) {
        HostVerdict::Failed { why, event } => {
            super::rows::i_set_error(tx, id, &why, None, req.log_tail.as_deref())?;
            super::rows::i_to_failed(tx, id)?;
            i_emit(tx, id, event)?;
            Ok(JobStatusResponse {
                id: id.clone(),
                status: JobStatus::Failed,
            })
        }
        HostVerdict::Pending { event } => {
            super::rows::i_to_pending(tx, id)?;
            i_emit(tx, id, event)?;
            Ok(JobStatusResponse {
                id: id.clone(),
                status: JobStatus::Pending,
            })
        }
    }
}

/// An operator requeued the job: its failures start over.
pub(crate) fn i_forget_failures(tx: &Tx<'_>, id: &JobId) -> Result<(), QueueError> {
    tx.db
        .prepare_cached("DELETE FROM job_worker_failures WHERE job_id = ?1")?
        .execute([id.as_str()])?;
    tx.db
        .prepare_cached("UPDATE jobs SET host_failures = 0 WHERE id = ?1")?
        .execute([id.as_str()])?;
    Ok(())
}
