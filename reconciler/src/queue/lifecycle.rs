//! Job transitions (apply, heartbeat, complete, fail, cancel, requeue, sweep) and reads.
//! Each `i_*` runs inside the caller's transaction.

use std::collections::BTreeMap;

use cis490_api::{
    ArtifactId, CompleteRequest, FailRequest, FailureCause, HeartbeatRequest, HeartbeatResponse,
    IdPrefix, JobId, JobStatus, JobStatusResponse, JobView, Lease, ManifestError, ManifestStatus,
    PlanSummary, WorkerName, SHORT_ID_LEN,
};
use rusqlite::{params, OptionalExtension};

use super::events::{i_event, i_job_events, kind};
use super::failures;
use super::logs;
use super::nodes::{i_clear_host_problem as clear_host_problem, i_touch_worker};
use super::results;
use super::rows::{from_ms, i_existing_job, i_insert_job, i_job_row, i_write_spec, JobRow};
use super::{QueueError, SweepOutcome, Tx};
use crate::plan::{changed_fields, ActualJob, Plan};
use crate::policy::HostPolicy;

/// Back to pending: the lease is dropped and the prefer_cuda wait starts again.
pub(crate) fn i_to_pending(tx: &Tx<'_>, id: &JobId) -> Result<(), QueueError> {
    tx.db
        .prepare_cached(
            "UPDATE jobs SET status = 'pending', lease_attempt = NULL, lease_token = NULL, \
             lease_expires_at = NULL, pending_since = ?2, updated_at = ?2 WHERE id = ?1",
        )?
        .execute(params![id.as_str(), tx.now])?;
    Ok(())
}

fn i_set_attempts(tx: &Tx<'_>, id: &JobId, attempts: u32) -> Result<(), QueueError> {
    tx.db
        .prepare_cached("UPDATE jobs SET attempts = ?2 WHERE id = ?1")?
        .execute(params![id.as_str(), attempts])?;
    Ok(())
}

pub(crate) fn i_set_error(
    tx: &Tx<'_>,
    id: &JobId,
    reason: &str,
    exit_code: Option<i32>,
    log_tail: Option<&str>,
) -> Result<(), QueueError> {
    tx.db
        .prepare_cached(
            "UPDATE jobs SET error_reason = ?2, error_exit_code = ?3, error_log_tail = ?4 \
             WHERE id = ?1",
        )?
        .execute(params![id.as_str(), reason, exit_code, log_tail])?;
    Ok(())
}

/// Terminal: failed, lease dropped.
pub(crate) fn i_to_failed(tx: &Tx<'_>, id: &JobId) -> Result<(), QueueError> {
    tx.db
        .prepare_cached(
            "UPDATE jobs SET status = 'failed', lease_attempt = NULL, lease_token = NULL, \
             lease_expires_at = NULL, finished_at = ?2, updated_at = ?2 WHERE id = ?1",
        )?
        .execute(params![id.as_str(), tx.now])?;
    Ok(())
}

pub(crate) fn i_actual(tx: &mut Tx<'_>) -> Result<Vec<ActualJob>, QueueError> {
    let mut stmt = tx
        .db
        .prepare_cached("SELECT spec, status, tombstoned FROM jobs ORDER BY id")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, bool>(2)?,
        ))
    })?;
    rows.map(|r| {
        let (spec, status, tombstoned) = r?;
        Ok(ActualJob {
            spec: serde_json::from_str(&spec)
                .map_err(|e| QueueError::corrupt(format!("job spec: {e}")))?,
            status: status.parse().map_err(QueueError::corrupt)?,
            tombstoned,
        })
    })
    .collect()
}

/// Applies `plan`, re-checking each job against its current row. Returns the summary with
/// `applied = true` and the (possibly unchanged) generation.
pub(crate) fn i_apply(
    tx: &mut Tx<'_>,
    plan: &Plan,
    hosts: &[HostPolicy],
    source: &super::ManifestSource,
) -> Result<PlanSummary, QueueError> {
    let mut changed = false;
    for spec in &plan.create {
        // The insert is the re-check: it writes nothing when the job exists.
        if i_insert_job(tx, spec)? {
            i_event(
                tx,
                Some(&spec.id),
                None,
                kind::CREATED,
                format!("created from the manifest ({} {})", spec.model, spec.mode),
            )?;
            changed = true;
        } else if let Some(row) = i_job_row(tx, &spec.id)? {
            // Created by an apply since planning: treat as an update of that job.
            changed |= i_update_if_allowed(tx, &row, spec)?;
        }
    }
    for (spec, _) in &plan.update {
        if let Some(row) = i_job_row(tx, &spec.id)? {
            changed |= i_update_if_allowed(tx, &row, spec)?;
        }
    }
    for spec in &plan.revive {
        let Some(row) = i_job_row(tx, &spec.id)? else {
            continue;
        };
        if !row.tombstoned {
            changed |= i_update_if_allowed(tx, &row, spec)?;
            continue;
        }
        tx.db
            .prepare_cached("UPDATE jobs SET tombstoned = 0, updated_at = ?2 WHERE id = ?1")?
            .execute(params![spec.id.as_str(), tx.now])?;
        let spec_note = if row.status.is_leased() {
            "; it keeps its current spec while leased"
        } else if changed_fields(&row.spec, spec).is_empty() {
            ""
        } else {
            i_write_spec(tx, spec)?;
            "; spec updated"
        };
        i_event(
            tx,
            Some(&spec.id),
            None,
            kind::REVIVED,
            format!(
                "back in the manifest, revived with its history (status {}){spec_note}",
                row.status
            ),
        )?;
        changed = true;
    }
    for id in &plan.tombstone {
        let Some(row) = i_job_row(tx, id)? else {
            continue;
        };
        if row.tombstoned {
            continue;
        }
        tx.db
            .prepare_cached("UPDATE jobs SET tombstoned = 1, updated_at = ?2 WHERE id = ?1")?
            .execute(params![id.as_str(), tx.now])?;
        let what = if row.status.is_leased() {
            "it finishes on its worker and will be marked orphaned"
        } else if matches!(row.status, JobStatus::Pending | JobStatus::Held) {
            "no longer claimable"
        } else {
            "history and artifacts kept"
        };
        i_event(
            tx,
            Some(id),
            None,
            kind::TOMBSTONED,
            format!("removed from the manifest ({}): {what}", row.status),
        )?;
        changed = true;
    }
    changed |= i_replace_hosts(tx, hosts)?;

    let generation: i64 =
        tx.db
            .query_row("SELECT generation FROM manifest WHERE id = 1", [], |r| {
                r.get(0)
            })?;
    let generation = if changed { generation + 1 } else { generation };
    let warnings =
        serde_json::to_string(&source.warnings).map_err(|e| QueueError::corrupt(e.to_string()))?;
    tx.db.execute(
        "UPDATE manifest SET path = ?1, sha256 = ?2, generation = ?3, last_applied_at = ?4, \
         last_errors = '[]', last_error_at = NULL, warnings = ?5 WHERE id = 1",
        params![source.path, source.sha256, generation, tx.now, warnings],
    )?;
    let mut summary = plan.summary();
    summary.applied = true;
    summary.generation = generation.max(0) as u64;
    summary.warnings = source.warnings.clone();
    Ok(summary)
}

/// Updates a job's spec unless it is leased or already equal. True when it changed.
fn i_update_if_allowed(
    tx: &mut Tx<'_>,
    row: &JobRow,
    spec: &cis490_api::JobSpec,
) -> Result<bool, QueueError> {
    if row.status.is_leased() {
        return Ok(false);
    }
    let changes = changed_fields(&row.spec, spec);
    if changes.is_empty() {
        return Ok(false);
    }
    i_write_spec(tx, spec)?;
    i_event(
        tx,
        Some(&spec.id),
        None,
        kind::UPDATED,
        format!("manifest changed {}", changes.join(", ")),
    )?;
    Ok(true)
}

/// Replaces the host policies; true when they differ from what was stored.
fn i_replace_hosts(tx: &Tx<'_>, hosts: &[HostPolicy]) -> Result<bool, QueueError> {
    let mut stored: BTreeMap<String, String> = BTreeMap::new();
    {
        let mut stmt = tx.db.prepare_cached("SELECT name, policy FROM hosts")?;
        for r in stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))? {
            let (name, policy) = r?;
            stored.insert(name, policy);
        }
    }
    let mut wanted: BTreeMap<String, String> = BTreeMap::new();
    for h in hosts {
        let json = serde_json::to_string(h).map_err(|e| QueueError::corrupt(e.to_string()))?;
        wanted.insert(h.name.clone(), json);
    }
    if stored == wanted {
        return Ok(false);
    }
    tx.db.execute("DELETE FROM hosts", [])?;
    for (name, policy) in &wanted {
        tx.db
            .prepare_cached("INSERT INTO hosts (name, policy) VALUES (?1, ?2)")?
            .execute(params![name, policy])?;
    }
    Ok(true)
}

pub(crate) fn i_record_manifest_errors(
    tx: &mut Tx<'_>,
    path: &str,
    errors: &[ManifestError],
) -> Result<(), QueueError> {
    let json = serde_json::to_string(errors).map_err(|e| QueueError::corrupt(e.to_string()))?;
    tx.db.execute(
        "UPDATE manifest SET path = ?1, last_errors = ?2, last_error_at = ?3 WHERE id = 1",
        params![path, json, tx.now],
    )?;
    Ok(())
}

pub(crate) fn i_manifest_status(tx: &mut Tx<'_>) -> Result<ManifestStatus, QueueError> {
    type Raw = (
        String,
        Option<String>,
        i64,
        Option<i64>,
        String,
        Option<i64>,
        String,
    );
    let raw: Raw = tx.db.query_row(
        "SELECT path, sha256, generation, last_applied_at, last_errors, last_error_at, \
         warnings FROM manifest WHERE id = 1",
        [],
        |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        },
    )?;
    let (path, sha256, generation, applied, errors, error_at, warnings) = raw;
    Ok(ManifestStatus {
        path,
        sha256,
        generation: generation.max(0) as u64,
        last_applied_at: applied.map(from_ms),
        last_errors: serde_json::from_str(&errors)
            .map_err(|e| QueueError::corrupt(format!("manifest errors: {e}")))?,
        last_error_at: error_at.map(from_ms),
        warnings: serde_json::from_str(&warnings)
            .map_err(|e| QueueError::corrupt(format!("manifest warnings: {e}")))?,
    })
}

/// The job, when `lease` is its current lease held by `worker`. With `allow_cancelled`, a
/// job cancelled while leased still matches its old lease (heartbeat learns of the cancel
/// through it). The bool is true when the job is cancelled.
pub(crate) fn i_leased_job(
    tx: &Tx<'_>,
    id: &JobId,
    worker: &WorkerName,
    lease: &Lease,
    allow_cancelled: bool,
) -> Result<(JobRow, bool), QueueError> {
    let row = i_existing_job(tx, id)?;
    let lost = |reason: String| QueueError::LeaseLost {
        id: id.short().to_string(),
        reason,
    };
    let cancelled = row.status == JobStatus::Cancelled;
    if !(row.status.is_leased() || (allow_cancelled && cancelled)) {
        return Err(lost(format!(
            "the job is {}, not leased",
            if row.tombstoned && row.status == JobStatus::Pending {
                "pending (tombstoned)".to_string()
            } else {
                row.status.to_string()
            }
        )));
    }
    let same_lease = row.lease_attempt == Some(lease.attempt)
        && row.lease_token.as_deref() == Some(lease.token.as_str());
    if !same_lease && row.lease_attempt == Some(lease.attempt) {
        // A lease handed back (agent shutdown, cannot fit) or requeued does not use up its
        // attempt, so the next claim has the same number with a new token.
        return Err(lost(format!(
            "this lease ended and the job was leased again, to {}, under the same attempt \
             number {} (a lease handed back or requeued does not use up an attempt); stop \
             working on it",
            row.worker.as_deref().unwrap_or("nobody"),
            lease.attempt
        )));
    }
    if !same_lease {
        return Err(lost(format!(
            "lease attempt {} is not the current lease (attempt {})",
            lease.attempt,
            row.lease_attempt
                .map_or_else(|| "none".to_string(), |a| a.to_string())
        )));
    }
    if row.worker.as_deref() != Some(worker.as_str()) {
        return Err(lost(format!(
            "the lease belongs to {}, not {worker}",
            row.worker.as_deref().unwrap_or("nobody")
        )));
    }
    Ok((row, cancelled))
}

pub(crate) fn i_heartbeat(
    tx: &mut Tx<'_>,
    id: &JobId,
    req: &HeartbeatRequest,
) -> Result<HeartbeatResponse, QueueError> {
    let (row, cancelled) = i_leased_job(tx, id, &req.worker, &req.lease, true)?;
    i_touch_worker(tx, req.worker.as_str())?;
    if let Some(tail) = &req.log_tail {
        tx.db
            .prepare_cached("UPDATE jobs SET log_tail = ?2 WHERE id = ?1")?
            .execute(params![id.as_str(), tail])?;
    }
    let log_offset = match &req.log {
        Some(chunk) => logs::i_append(
            tx,
            id,
            &req.worker,
            &req.lease,
            chunk,
            tx.config.max_log_bytes_per_attempt,
        )?,
        None => logs::i_source_next(tx, id, &req.lease)?,
    };
    if let Some(point) = &req.progress {
        results::i_record_progress(tx, id, &req.worker, &req.lease, point)?;
    }
    if cancelled {
        return Ok(HeartbeatResponse {
            cancel: true,
            log_offset: Some(log_offset),
        });
    }
    let expires = tx.now.saturating_add(
        i64::try_from(row.spec.stale_after_s)
            .unwrap_or(i64::MAX / 1000)
            .saturating_mul(1000),
    );
    tx.db
        .prepare_cached("UPDATE jobs SET lease_expires_at = ?2, updated_at = ?3 WHERE id = ?1")?
        .execute(params![id.as_str(), expires, tx.now])?;
    if row.status == JobStatus::Claimed {
        tx.db
            .prepare_cached("UPDATE jobs SET status = 'running', started_at = ?2 WHERE id = ?1")?
            .execute(params![id.as_str(), tx.now])?;
        i_event(
            tx,
            Some(id),
            Some(req.worker.as_str()),
            kind::STARTED,
            format!(
                "running on {} (attempt {} of {})",
                req.worker, req.lease.attempt, row.spec.max_attempts
            ),
        )?;
    }
    Ok(HeartbeatResponse {
        cancel: false,
        log_offset: Some(log_offset),
    })
}

pub(crate) fn i_record_upload(
    tx: &mut Tx<'_>,
    id: &JobId,
    worker: &WorkerName,
    lease: &Lease,
    artifact: &ArtifactId,
    size_bytes: u64,
) -> Result<(), QueueError> {
    i_leased_job(tx, id, worker, lease, false)?;
    tx.db
        .prepare_cached(
            "INSERT OR IGNORE INTO uploads (job_id, attempt, lease_token, artifact_id, worker, \
             size_bytes, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            id.as_str(),
            lease.attempt,
            lease.token,
            artifact.as_str(),
            worker.as_str(),
            i64::try_from(size_bytes).unwrap_or(i64::MAX),
            tx.now
        ])?;
    Ok(())
}

/// Artifacts uploaded for `id` under the lease with `token`, oldest first.
fn i_uploads_under(tx: &Tx<'_>, id: &JobId, token: &str) -> Result<Vec<String>, QueueError> {
    // `+?1`, `+?2`: with a bare `column = ?N` this statement was compiled again on every
    // completion once the queue held jobs (see `matching::claim_query`); the index is
    // still searched on both columns.
    let mut stmt = tx.db.prepare_cached(
        "SELECT artifact_id FROM uploads WHERE job_id = +?1 AND lease_token = +?2 ORDER BY rowid",
    )?;
    let rows = stmt.query_map(params![id.as_str(), token], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The completion rule: only an artifact uploaded under this lease, and not none when the
/// lease uploaded one.
fn i_check_completion_artifact(
    tx: &Tx<'_>,
    id: &JobId,
    req: &CompleteRequest,
) -> Result<(), QueueError> {
    let uploaded = i_uploads_under(tx, id, &req.lease.token)?;
    let attempt = req.lease.attempt;
    match &req.artifact_id {
        Some(artifact) if uploaded.iter().any(|u| u == artifact.as_str()) => Ok(()),
        Some(artifact) => {
            let elsewhere: Option<String> = tx
                .db
                .prepare_cached(
                    "SELECT job_id FROM uploads WHERE artifact_id = ?1 AND job_id <> ?2 \
                     ORDER BY rowid LIMIT 1",
                )?
                .query_row(params![artifact.as_str(), id.as_str()], |r| r.get(0))
                .optional()?;
            let whose = match elsewhere {
                Some(other) => format!(
                    "it was uploaded for job {}",
                    other.chars().take(SHORT_ID_LEN).collect::<String>()
                ),
                None => "it was never uploaded under it".to_string(),
            };
            Err(QueueError::ArtifactNotUploaded {
                message: format!(
                    "artifact {} was not uploaded under job {}'s current lease (attempt \
                     {attempt}): {whose}; upload the job's own bundle (PUT /v1/model/{}) and \
                     complete with the artifact ID that answer gives",
                    artifact.short(),
                    id.short(),
                    id
                ),
            })
        }
        None => match uploaded.last() {
            Some(last) => Err(QueueError::ArtifactRequired {
                message: format!(
                    "job {} uploaded artifact {last} under this lease (attempt {attempt}); \
                     complete with it (artifact_id)",
                    id.short()
                ),
            }),
            None => Ok(()),
        },
    }
}

pub(crate) fn i_complete(
    tx: &mut Tx<'_>,
    id: &JobId,
    req: &CompleteRequest,
) -> Result<JobStatusResponse, QueueError> {
    let (row, _) = i_leased_job(tx, id, &req.worker, &req.lease, false)?;
    i_check_completion_artifact(tx, id, req)?;
    // The worker ran a job to its end: whatever was wrong with its host is not any more.
    clear_host_problem(tx, req.worker.as_str())?;
    tx.db
        .prepare_cached(
            "UPDATE jobs SET status = 'completed', artifact_id = ?2, lease_attempt = NULL, \
             lease_token = NULL, lease_expires_at = NULL, error_reason = NULL, \
             error_exit_code = NULL, error_log_tail = NULL, finished_at = ?3, updated_at = ?3 \
             WHERE id = ?1",
        )?
        .execute(params![
            id.as_str(),
            req.artifact_id.as_ref().map(|a| a.as_str()),
            tx.now
        ])?;
    results::i_record_outcome(
        tx,
        &row,
        &req.worker,
        &req.lease,
        results::outcome::COMPLETED,
        &req.report,
        req.artifact_id.as_ref(),
    )?;
    let artifact = req.artifact_id.as_ref().map_or_else(
        || "no artifact".to_string(),
        |a| format!("artifact {}", a.short()),
    );
    i_event(
        tx,
        Some(id),
        Some(req.worker.as_str()),
        kind::COMPLETED,
        format!(
            "completed on {} (attempt {}), {artifact}",
            req.worker, req.lease.attempt
        ),
    )?;
    if row.tombstoned {
        i_event(
            tx,
            Some(id),
            Some(req.worker.as_str()),
            kind::ORPHANED,
            "finished after it was removed from the manifest: orphaned, artifact kept",
        )?;
    }
    Ok(JobStatusResponse {
        id: id.clone(),
        status: JobStatus::Completed,
    })
}

pub(crate) fn i_fail(
    tx: &mut Tx<'_>,
    id: &JobId,
    req: &FailRequest,
) -> Result<JobStatusResponse, QueueError> {
    let (row, _) = i_leased_job(tx, id, &req.worker, &req.lease, false)?;
    let worker = req.worker.as_str();
    let max = row.spec.max_attempts;
    let exit = req
        .exit_code
        .map_or_else(String::new, |c| format!(" (exit code {c})"));
    if let Some(tail) = &req.log_tail {
        tx.db
            .prepare_cached("UPDATE jobs SET log_tail = ?2 WHERE id = ?1")?
            .execute(params![id.as_str(), tail])?;
    }
    let ended = if req.retryable || req.cause == FailureCause::Host {
        results::outcome::RELEASED
    } else {
        results::outcome::FAILED
    };
    results::i_record_outcome(tx, &row, &req.worker, &req.lease, ended, &req.report, None)?;
    if req.cause == FailureCause::Host && !req.retryable {
        return failures::i_host_failure(tx, id, &row, req);
    }
    if req.retryable {
        // Not the job's fault (the agent is shutting down): the attempt is refunded.
        i_set_attempts(tx, id, row.attempts.saturating_sub(1))?;
        i_to_pending(tx, id)?;
        i_event(
            tx,
            Some(id),
            Some(worker),
            kind::RELEASED,
            format!(
                "released by {worker}: {}{exit}; back to pending, the attempt does not count",
                req.reason
            ),
        )?;
        return Ok(JobStatusResponse {
            id: id.clone(),
            status: JobStatus::Pending,
        });
    }
    failures::i_record_failure(tx, id, worker, false, &req.reason)?;
    let failures = row.trainer_failures.saturating_add(1);
    tx.db
        .prepare_cached("UPDATE jobs SET trainer_failures = ?2 WHERE id = ?1")?
        .execute(params![id.as_str(), failures])?;
    i_set_error(tx, id, &req.reason, req.exit_code, req.log_tail.as_deref())?;
    let retries = row.spec.retry.retries_on_failure;
    if failures <= retries && row.attempts < max {
        i_to_pending(tx, id)?;
        i_event(
            tx,
            Some(id),
            Some(worker),
            kind::RETRYING,
            format!(
                "attempt {} of {max} failed on {worker}: {}{exit}; retrying (retry {failures} \
                 of {retries}){}",
                req.lease.attempt,
                req.reason,
                tail_note(req.log_tail.as_deref())
            ),
        )?;
        return Ok(JobStatusResponse {
            id: id.clone(),
            status: JobStatus::Pending,
        });
    }
    i_to_failed(tx, id)?;
    let why = if failures <= retries {
        format!("no attempts left ({} of {max} used)", row.attempts)
    } else if retries == 0 {
        "the retry policy allows no retries".to_string()
    } else {
        format!("all {retries} retries used")
    };
    i_event(
        tx,
        Some(id),
        Some(worker),
        kind::FAILED,
        format!(
            "attempt {} of {max} failed on {worker}: {}{exit}; {why}{}",
            req.lease.attempt,
            req.reason,
            tail_note(req.log_tail.as_deref())
        ),
    )?;
    Ok(JobStatusResponse {
        id: id.clone(),
        status: JobStatus::Failed,
    })
}

/// The end of a failure's log tail for its event, so every failure's output stays in the
/// job's history even after a later attempt replaces the job's `error`.
fn tail_note(log_tail: Option<&str>) -> String {
    const KEEP_LINES: usize = 20;
    const KEEP_CHARS: usize = 4000;
    let Some(tail) = log_tail.map(str::trim_end).filter(|t| !t.is_empty()) else {
        return String::new();
    };
    let lines: Vec<&str> = tail.lines().collect();
    let mut kept = lines[lines.len().saturating_sub(KEEP_LINES)..].join("\n");
    if kept.chars().count() > KEEP_CHARS {
        kept = kept
            .chars()
            .skip(kept.chars().count() - KEEP_CHARS)
            .collect();
    }
    format!("\n--- log tail ---\n{kept}")
}

pub(crate) fn i_cancel(tx: &mut Tx<'_>, id: &JobId) -> Result<JobStatusResponse, QueueError> {
    let row = i_existing_job(tx, id)?;
    let message = match row.status {
        JobStatus::Pending | JobStatus::Held => {
            format!("cancelled by an operator while {}", row.status)
        }
        JobStatus::Claimed | JobStatus::Running => format!(
            "cancelled by an operator while {} on {}; the worker stops it at its next heartbeat",
            row.status,
            row.worker.as_deref().unwrap_or("?")
        ),
        other => {
            return Err(QueueError::InvalidState {
                message: format!(
                    "cannot cancel job {} in state {other} (only pending, held, claimed or running \
                     jobs can be cancelled)",
                    id.short()
                ),
            })
        }
    };
    // The lease columns stay: the old lease may still heartbeat (and hears cancel=true).
    tx.db
        .prepare_cached(
            "UPDATE jobs SET status = 'cancelled', finished_at = ?2, updated_at = ?2 \
             WHERE id = ?1",
        )?
        .execute(params![id.as_str(), tx.now])?;
    i_event(
        tx,
        Some(id),
        row.worker.as_deref(),
        kind::CANCELLED,
        message,
    )?;
    Ok(JobStatusResponse {
        id: id.clone(),
        status: JobStatus::Cancelled,
    })
}

pub(crate) fn i_requeue(tx: &mut Tx<'_>, id: &JobId) -> Result<JobStatusResponse, QueueError> {
    let row = i_existing_job(tx, id)?;
    if row.status == JobStatus::Held {
        return Err(QueueError::InvalidState {
            message: format!(
                "cannot requeue job {}: it is held, not finished; `cis490ctl release {}` \
                 makes it pending again",
                id.short(),
                id.short()
            ),
        });
    }
    if !row.status.is_terminal() {
        return Err(QueueError::InvalidState {
            message: format!(
                "cannot requeue job {} in state {} (only failed, cancelled or completed jobs \
                 can be requeued)",
                id.short(),
                row.status
            ),
        });
    }
    tx.db
        .prepare_cached(
            "UPDATE jobs SET status = 'pending', attempts = 0, trainer_failures = 0, \
             lease_expiries = 0, lease_attempt = NULL, lease_token = NULL, \
             lease_expires_at = NULL, artifact_id = NULL, error_reason = NULL, \
             error_exit_code = NULL, error_log_tail = NULL, started_at = NULL, \
             finished_at = NULL, pending_since = ?2, updated_at = ?2 WHERE id = ?1",
        )?
        .execute(params![id.as_str(), tx.now])?;
    let mut message = format!(
        "requeued by an operator from {} ({} attempts used before); attempts reset",
        row.status, row.attempts
    );
    if let Some(a) = &row.artifact_id {
        message.push_str(&format!("; previous artifact {a} kept in the store"));
    }
    if let Some(e) = &row.error_reason {
        message.push_str(&format!("; previous error: {e}"));
    }
    failures::i_forget_failures(tx, id)?;
    i_event(tx, Some(id), None, kind::REQUEUED, message)?;
    Ok(JobStatusResponse {
        id: id.clone(),
        status: JobStatus::Pending,
    })
}

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
        let worker = row.worker.clone().unwrap_or_default();
        let expiries = row.lease_expiries.saturating_add(1);
        tx.db
            .prepare_cached("UPDATE jobs SET lease_expiries = ?2 WHERE id = ?1")?
            .execute(params![id.as_str(), expiries])?;
        let max = row.spec.max_attempts;
        if row.attempts < max {
            i_to_pending(tx, &id)?;
            i_event(
                tx,
                Some(&id),
                Some(&worker),
                kind::LEASE_EXPIRED,
                format!(
                    "lease of {worker} expired (no heartbeat for {} s; attempt {} of {max} \
                     used); back to pending",
                    row.spec.stale_after_s, row.attempts
                ),
            )?;
            out.requeued.push(id);
        } else {
            let reason = format!(
                "lease expired {expiries} time{} (agent vanished)",
                if expiries == 1 { "" } else { "s" }
            );
            i_set_error(tx, &id, &reason, None, row.log_tail.as_deref())?;
            i_to_failed(tx, &id)?;
            i_event(
                tx,
                Some(&id),
                Some(&worker),
                kind::LEASE_EXPIRED,
                format!(
                    "lease of {worker} expired on the last attempt ({} of {max}); {reason}",
                    row.attempts
                ),
            )?;
            i_event(tx, Some(&id), Some(&worker), kind::FAILED, reason)?;
            out.failed.push(id);
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

pub(crate) fn i_resolve(tx: &mut Tx<'_>, prefix: &IdPrefix) -> Result<JobId, QueueError> {
    // Every ID is lowercase hex, so "prefix" <= id < "prefix" + 'g' is exactly the prefix
    // match, and it walks the primary key.
    let upper = format!("{}g", prefix.as_str());
    let mut stmt = tx
        .db
        .prepare_cached("SELECT id FROM jobs WHERE id >= ?1 AND id < ?2 ORDER BY id LIMIT 6")?;
    let ids: Vec<String> = stmt
        .query_map(params![prefix.as_str(), upper], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    match ids.as_slice() {
        [] => Err(QueueError::NotFound {
            what: "job",
            key: prefix.to_string(),
        }),
        [one] => JobId::parse(one).map_err(QueueError::corrupt),
        many => Err(QueueError::Ambiguous {
            prefix: prefix.to_string(),
            candidates: many
                .iter()
                .map(|id| id.chars().take(SHORT_ID_LEN).collect())
                .collect(),
        }),
    }
}

pub(crate) fn i_job_view(
    tx: &mut Tx<'_>,
    id: &JobId,
    with_events: bool,
) -> Result<JobView, QueueError> {
    let row = i_existing_job(tx, id)?;
    let mut view = row.view()?;
    view.progress = results::i_current_progress(tx, &row)?;
    view.metrics = results::i_completed_metrics(tx, &row)?;
    if with_events {
        view.events = i_job_events(tx, id)?;
    }
    Ok(view)
}

/// Live jobs per status (a tombstoned job that is claimed or running is live: it still
/// runs), and how many tombstoned jobs are not.
/// Live jobs per status and tombstoned ones apart: one walk of an index on (status,
/// tombstoned), never of the table (the overview of a 100,000-job queue depends on it).
pub(crate) const LIVE_COUNTS: &str =
    "SELECT status, tombstoned AND status NOT IN ('claimed', 'running'), COUNT(*) \
     FROM jobs GROUP BY 1, 2";

pub(crate) fn i_live_counts(tx: &mut Tx<'_>) -> Result<(BTreeMap<String, u64>, u64), QueueError> {
    let mut out: BTreeMap<String, u64> = JobStatus::ALL
        .iter()
        .map(|s| (s.as_str().to_string(), 0))
        .collect();
    let mut tombstoned = 0u64;
    let mut stmt = tx.db.prepare_cached(LIVE_COUNTS)?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, bool>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    for r in rows {
        let (status, dead, n) = r?;
        let n = n.max(0) as u64;
        if dead {
            tombstoned += n;
        } else {
            *out.entry(status).or_default() += n;
        }
    }
    Ok((out, tombstoned))
}

pub(crate) fn i_counts(tx: &mut Tx<'_>) -> Result<BTreeMap<String, u64>, QueueError> {
    let mut out: BTreeMap<String, u64> = JobStatus::ALL
        .iter()
        .map(|s| (s.as_str().to_string(), 0))
        .collect();
    let mut stmt = tx
        .db
        .prepare_cached("SELECT status, COUNT(*) FROM jobs GROUP BY status")?;
    for r in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
        let (status, n) = r?;
        out.insert(status, n.max(0) as u64);
    }
    Ok(out)
}
