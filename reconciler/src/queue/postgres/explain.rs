//! `explain(job)` on PostgreSQL: why a pending job is not running. The reasons and the
//! summary are the shared ones (`matching::fit_reasons`, `explain::pending_summary`); this
//! file reads the rows SQLite's `explain.rs` reads.

use std::collections::HashMap;

use cis490_api::{Constraints, Explain, JobId, JobStatus, WorkerFit, WorkerName};

use super::failures::i_left_to_others;
use super::matching::{i_cuda_alternatives, i_worker_blocked};
use super::nodes::{i_host_policy, i_leased_jobs_of, i_worker_rows};
use super::rows::i_existing_job;
use super::tx::PgTx;
use crate::policy::HostPolicy;
use crate::queue::explain::{ago, not_pending_summary, pending_summary};
use crate::queue::matching::{any_cuda_could_run, fit_reasons, has_cuda, waited_long_at};
use crate::queue::nodes::WorkerRow;
use crate::queue::rows::JobRow;
use crate::queue::QueueError;

struct Known {
    row: WorkerRow,
    policy: Option<HostPolicy>,
}

pub(crate) fn i_explain(tx: &mut PgTx<'_>, id: &JobId) -> Result<Explain, QueueError> {
    let row = i_existing_job(tx, id)?;
    let pending_total: i64 = tx
        .db
        .query_one(
            "SELECT COUNT(*) FROM jobs WHERE status = 'pending' AND NOT tombstoned",
            &[],
        )?
        .try_get(0)?;
    let pending_total = pending_total.max(0) as u64;
    if row.status != JobStatus::Pending || row.tombstoned {
        return Ok(Explain {
            job_id: id.clone(),
            queue_position: None,
            pending_total,
            never_runnable_ahead: 0,
            workers: Vec::new(),
            summary: not_pending_summary(&row),
        });
    }
    let mut known = Vec::new();
    for w in i_worker_rows(tx)? {
        let policy = i_host_policy(tx, &w.name)?;
        known.push(Known { row: w, policy });
    }
    let mut workers = Vec::new();
    let mut able: Vec<&Known> = Vec::new();
    for k in &known {
        let fit = i_worker_fit(tx, &row, k)?;
        if fit.lasting_reasons == 0 {
            able.push(k);
        }
        workers.push(fit);
    }
    let (ahead, never_ahead) = i_jobs_ahead(tx, &row, &able)?;
    let position = ahead + 1;
    let summary = pending_summary(&workers, position, pending_total, never_ahead);
    Ok(Explain {
        job_id: id.clone(),
        queue_position: Some(position),
        pending_total,
        never_runnable_ahead: never_ahead,
        workers,
        summary,
    })
}

/// SQLite's `explain::i_worker_fit`.
fn i_worker_fit(tx: &mut PgTx<'_>, row: &JobRow, k: &Known) -> Result<WorkerFit, QueueError> {
    let spec = &row.spec;
    let w = &k.row;
    let policy = k.policy.as_ref();
    let mut lasting = Vec::new();
    let mut passing = Vec::new();
    if !w.is_fresh_at(tx.now, tx.config) {
        passing.push(format!(
            "not Ready (last seen {} ago)",
            ago(tx.now - w.last_seen)
        ));
    }
    match i_worker_blocked(tx, w.into(), policy)? {
        Some(blocked) => passing.push(blocked),
        None => {
            let held = i_leased_jobs_of(tx, &w.name)?.len();
            let slots = w.capability.max_concurrent.max(1) as usize;
            if held >= slots {
                passing.push(format!("busy: all {slots} slots hold jobs"));
            }
        }
    }
    for reason in fit_reasons(
        &spec.model,
        &spec.constraints,
        &w.name,
        &w.capability,
        policy,
    ) {
        if reason.lasting {
            lasting.push(reason.text);
        } else {
            passing.push(reason.text);
        }
    }
    if lasting.is_empty()
        && passing.is_empty()
        && spec.constraints.prefer_cuda
        && !has_cuda(&w.capability)
    {
        let alternatives = i_cuda_alternatives(tx, &w.name)?;
        let defers = !waited_long_at(tx.now, tx.config, row.pending_since)
            && any_cuda_could_run(&spec.model, &spec.constraints, &alternatives);
        if defers {
            let waited = (tx.now - row.pending_since).max(0) / 1000;
            passing.push(format!(
                "prefer_cuda: left to a Ready CUDA worker (waited {waited}s of {}s)",
                tx.config.prefer_cuda_wait_s
            ));
        }
    }
    if lasting.is_empty()
        && passing.is_empty()
        && i_left_to_others(
            tx,
            spec.id.as_str(),
            &w.name,
            &spec.model,
            &spec.constraints,
            row.pending_since,
        )?
    {
        let waited = (tx.now - row.pending_since).max(0) / 1000;
        passing.push(format!(
            "failed it before: left to a Ready worker that has not tried it (waited {waited}s \
             of {}s)",
            tx.config.retry_elsewhere_wait_s
        ));
    }
    let lasting_reasons = lasting.len();
    lasting.extend(passing);
    Ok(WorkerFit {
        worker: WorkerName::parse(&w.name).map_err(QueueError::corrupt)?,
        reasons: lasting,
        lasting_reasons,
    })
}

/// SQLite's `explain::i_jobs_ahead`: the pending jobs ahead of `row` that some worker of
/// `able` can run, and those none of them ever can.
fn i_jobs_ahead(
    tx: &mut PgTx<'_>,
    row: &JobRow,
    able: &[&Known],
) -> Result<(u64, u64), QueueError> {
    let spec = &row.spec;
    let priority = i64::from(spec.priority);
    let order = i64::try_from(spec.manifest_order).unwrap_or(i64::MAX);
    let ahead_of = "status = 'pending' AND NOT tombstoned AND \
         (priority > $1 OR (priority = $1 AND (manifest_order < $2 OR \
          (manifest_order = $2 AND id < $3))))";
    if able.is_empty() {
        let ahead: i64 = tx
            .db
            .query_one(
                &format!("SELECT COUNT(*) FROM jobs WHERE {ahead_of}"),
                &[&priority, &order, &spec.id.as_str()],
            )?
            .try_get(0)?;
        return Ok((ahead.max(0) as u64, 0));
    }
    // The whole spec of each job ahead (alike ones decided once): its constraints are
    // what the claim columns hold.
    let rows = tx.db.query(
        &format!("SELECT model, spec FROM jobs WHERE {ahead_of}"),
        &[&priority, &order, &spec.id.as_str()],
    )?;
    let mut competes: HashMap<String, bool> = HashMap::new();
    let (mut ahead, mut never) = (0u64, 0u64);
    for r in &rows {
        let model: String = r.try_get(0)?;
        let text: String = r.try_get(1)?;
        let job: cis490_api::JobSpec = super::rows::from_json("job spec", &text)?;
        let c: &Constraints = &job.constraints;
        let key = format!("{model}|{}", super::rows::to_json(c)?);
        let runs = *competes.entry(key).or_insert_with(|| {
            able.iter().any(|k| {
                fit_reasons(&model, c, &k.row.name, &k.row.capability, k.policy.as_ref())
                    .iter()
                    .all(|reason| !reason.lasting)
            })
        });
        if runs {
            ahead += 1;
        } else {
            never += 1;
        }
    }
    Ok((ahead, never))
}
