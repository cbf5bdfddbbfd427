//! `explain(job)`: why a pending job is not running, like HTCondor's
//! `condor_q -better-analyze`.

use std::collections::BTreeMap;

use cis490_api::{Explain, JobId, JobStatus, WorkerFit, WorkerName};
use rusqlite::params;

use super::matching::{
    defers_to_cuda, hard_reasons, has_cuda, i_cuda_alternatives, i_worker_blocked,
};
use super::nodes::{i_host_policy, i_worker_rows};
use super::rows::{i_existing_job, JobRow};
use super::{QueueError, Tx};

/// "42s", "5m", "3h", "2d": how long ago, for humans.
pub(crate) fn ago(ms: i64) -> String {
    let s = (ms / 1000).max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

pub(crate) fn i_explain(tx: &mut Tx<'_>, id: &JobId) -> Result<Explain, QueueError> {
    let row = i_existing_job(tx, id)?;
    let pending_total: i64 = tx.db.query_row(
        "SELECT COUNT(*) FROM jobs WHERE status = 'pending' AND tombstoned = 0",
        [],
        |r| r.get(0),
    )?;
    let pending_total = pending_total.max(0) as u64;
    if row.status != JobStatus::Pending || row.tombstoned {
        return Ok(Explain {
            job_id: id.clone(),
            queue_position: None,
            pending_total,
            workers: Vec::new(),
            summary: not_pending_summary(&row),
        });
    }
    let ahead: i64 = tx.db.query_row(
        "SELECT COUNT(*) FROM jobs WHERE status = 'pending' AND tombstoned = 0 AND \
         (priority > ?1 OR (priority = ?1 AND (manifest_order < ?2 OR \
          (manifest_order = ?2 AND id < ?3))))",
        params![
            row.spec.priority,
            i64::try_from(row.spec.manifest_order).unwrap_or(i64::MAX),
            id.as_str()
        ],
        |r| r.get(0),
    )?;
    let position = ahead.max(0) as u64 + 1;

    let spec = &row.spec;
    let mut workers = Vec::new();
    for w in i_worker_rows(tx)? {
        let policy = i_host_policy(tx, &w.name)?;
        let mut reasons = Vec::new();
        if !w.is_fresh(tx) {
            reasons.push(format!(
                "not Ready (last seen {} ago)",
                ago(tx.now - w.last_seen)
            ));
        }
        if let Some(blocked) = i_worker_blocked(tx, (&w).into(), policy.as_ref())? {
            reasons.push(blocked);
        }
        reasons.extend(hard_reasons(
            &spec.model,
            &spec.constraints,
            &w.name,
            &w.capability,
            policy.as_ref(),
        ));
        if reasons.is_empty() && spec.constraints.prefer_cuda && !has_cuda(&w.capability) {
            let alternatives = i_cuda_alternatives(tx, &w.name)?;
            if defers_to_cuda(
                tx,
                &spec.model,
                &spec.constraints,
                row.pending_since,
                &alternatives,
            ) {
                let waited = (tx.now - row.pending_since).max(0) / 1000;
                reasons.push(format!(
                    "prefer_cuda: left to a Ready CUDA worker (waited {waited}s of {}s)",
                    tx.config.prefer_cuda_wait_s
                ));
            }
        }
        workers.push(WorkerFit {
            worker: WorkerName::parse(&w.name).map_err(QueueError::corrupt)?,
            reasons,
        });
    }
    let summary = pending_summary(&workers, position, pending_total);
    Ok(Explain {
        job_id: id.clone(),
        queue_position: Some(position),
        pending_total,
        workers,
        summary,
    })
}

fn pending_summary(workers: &[WorkerFit], position: u64, total: u64) -> String {
    let place = format!("position {position} of {total} pending");
    if workers.is_empty() {
        return format!("no workers known yet; {place}");
    }
    let able: Vec<&str> = workers
        .iter()
        .filter(|w| w.reasons.is_empty())
        .map(|w| w.worker.as_str())
        .collect();
    if !able.is_empty() {
        return format!(
            "can run on {}; {place} (it waits for jobs ahead of it or a free slot)",
            able.join(", ")
        );
    }
    let mut tally: BTreeMap<&str, usize> = BTreeMap::new();
    for w in workers {
        for r in &w.reasons {
            *tally.entry(r.as_str()).or_default() += 1;
        }
    }
    let mut by_count: Vec<(&str, usize)> = tally.into_iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let top: Vec<String> = by_count
        .iter()
        .take(3)
        .map(|(r, n)| format!("{r} ({n})"))
        .collect();
    format!(
        "none of {} workers can take it: {}; {place}",
        workers.len(),
        top.join(", ")
    )
}

fn not_pending_summary(row: &JobRow) -> String {
    let worker = row.worker.as_deref().unwrap_or("?");
    let max = row.spec.max_attempts;
    match row.status {
        JobStatus::Pending => {
            "tombstoned: removed from the manifest, so no worker will claim it".to_string()
        }
        JobStatus::Claimed => format!(
            "claimed by {worker} (attempt {} of {max}), not started yet",
            row.attempts
        ),
        JobStatus::Running => {
            format!("running on {worker} (attempt {} of {max})", row.attempts)
        }
        JobStatus::Completed => format!("completed on {worker}"),
        JobStatus::Failed => format!(
            "failed: {}",
            row.error_reason.as_deref().unwrap_or("no reason recorded")
        ),
        JobStatus::Cancelled => "cancelled by an operator".to_string(),
    }
}
