//! Training results per attempt on PostgreSQL (`attempt_results`); the rules are SQLite's
//! `results.rs` (the live series' bounds, one row per lease).

use cis490_api::{ArtifactId, JobId, Lease, Metrics, TrainerReport, WorkerName};

use super::rows::{from_json, to_json};
use super::tx::PgTx;
use crate::queue::events::kind;
use crate::queue::rows::JobRow;
use crate::queue::QueueError;

/// SQLite's `results::LIVE_SERIES_POINTS` and `LIVE_SERIES_BYTES`.
const LIVE_SERIES_POINTS: usize = 200;
const LIVE_SERIES_BYTES: usize = 32 * 1024;

/// A heartbeat's progress point: the attempt's latest, appended to its live series.
pub(crate) fn i_record_progress(
    tx: &mut PgTx<'_>,
    id: &JobId,
    worker: &WorkerName,
    lease: &Lease,
    point: &Metrics,
) -> Result<(), QueueError> {
    let stored = tx.db.query_opt(
        "SELECT series FROM attempt_results WHERE job_id = $1 AND lease_token = $2",
        &[&id.as_str(), &lease.token],
    )?;
    let mut series: Vec<Metrics> = match stored {
        Some(r) => from_json("progress series", &r.try_get::<_, String>(0)?)?,
        None => Vec::new(),
    };
    series.push(point.clone());
    let mut series_json = to_json(&series)?;
    while series.len() > 1
        && (series.len() > LIVE_SERIES_POINTS || series_json.len() > LIVE_SERIES_BYTES)
    {
        series = cis490_api::results::thin_evenly(&series, series.len() / 2);
        series_json = to_json(&series)?;
    }
    tx.db.execute(
        "INSERT INTO attempt_results (job_id, attempt, lease_token, worker, progress, series, \
         started_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (job_id, lease_token) DO UPDATE SET progress = EXCLUDED.progress, \
         series = EXCLUDED.series",
        &[
            &id.as_str(),
            &i64::from(lease.attempt),
            &lease.token,
            &worker.as_str(),
            &to_json(point)?,
            &series_json,
            &tx.now,
        ],
    )?;
    Ok(())
}

/// How the attempt under `lease` ended and what its trainer reported.
pub(crate) fn i_record_outcome(
    tx: &mut PgTx<'_>,
    row: &JobRow,
    worker: &WorkerName,
    lease: &Lease,
    outcome: &str,
    report: &TrainerReport,
    artifact: Option<&ArtifactId>,
) -> Result<(), QueueError> {
    let id = &row.spec.id;
    let artifact = artifact.map(ArtifactId::as_str);
    if report.is_empty() {
        tx.db.execute(
            "UPDATE attempt_results SET outcome = $3, finished_at = $4, artifact_id = $5, \
             started_at = COALESCE($6, started_at) WHERE job_id = $1 AND lease_token = $2",
            &[
                &id.as_str(),
                &lease.token,
                &outcome,
                &tx.now,
                &artifact,
                &row.started_at,
            ],
        )?;
        return Ok(());
    }
    let series = &report.progress;
    let latest = series.last().map(to_json).transpose()?;
    let metrics = report.metrics.as_ref().map(to_json).transpose()?;
    tx.db.execute(
        "INSERT INTO attempt_results (job_id, attempt, lease_token, worker, outcome, progress, \
         series, metrics, warnings, artifact_id, started_at, finished_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
         ON CONFLICT (job_id, lease_token) DO UPDATE SET outcome = EXCLUDED.outcome, \
         progress = COALESCE(EXCLUDED.progress, attempt_results.progress), \
         series = CASE WHEN EXCLUDED.series = '[]' THEN attempt_results.series \
                  ELSE EXCLUDED.series END, \
         metrics = EXCLUDED.metrics, warnings = EXCLUDED.warnings, \
         artifact_id = EXCLUDED.artifact_id, finished_at = EXCLUDED.finished_at, \
         started_at = EXCLUDED.started_at",
        &[
            &id.as_str(),
            &i64::from(lease.attempt),
            &lease.token,
            &worker.as_str(),
            &outcome,
            &latest,
            &to_json(series)?,
            &metrics,
            &to_json(&report.warnings)?,
            &artifact,
            &row.started_at.unwrap_or(tx.now),
            &tx.now,
        ],
    )?;
    for warning in &report.warnings {
        tx.event(
            Some(id),
            Some(worker.as_str()),
            kind::TRAINER_WARNING,
            format!("attempt {}: {warning}", lease.attempt),
        );
    }
    Ok(())
}

/// The latest progress point of the job's current lease (None when not leased).
pub(crate) fn i_current_progress(
    tx: &mut PgTx<'_>,
    row: &JobRow,
) -> Result<Option<Metrics>, QueueError> {
    let Some(token) = row
        .lease_token
        .as_deref()
        .filter(|_| row.status.is_leased())
    else {
        return Ok(None);
    };
    let found = tx.db.query_opt(
        "SELECT progress FROM attempt_results WHERE job_id = $1 AND lease_token = $2",
        &[&row.spec.id.as_str(), &token],
    )?;
    let text: Option<String> = match found {
        Some(r) => r.try_get(0)?,
        None => None,
    };
    text.map(|t| from_json("progress", &t)).transpose()
}

/// The metrics of the job's latest completed attempt, while it is completed.
pub(crate) fn i_completed_metrics(
    tx: &mut PgTx<'_>,
    row: &JobRow,
) -> Result<Option<Metrics>, QueueError> {
    if row.status != cis490_api::JobStatus::Completed {
        return Ok(None);
    }
    let found = tx.db.query_opt(
        "SELECT metrics FROM attempt_results WHERE job_id = $1 AND outcome = 'completed' \
         AND finished_at = $2",
        &[&row.spec.id.as_str(), &row.finished_at],
    )?;
    let text: Option<String> = match found {
        Some(r) => r.try_get(0)?,
        None => None,
    };
    text.map(|t| from_json("metrics", &t)).transpose()
}

/// Every attempt of `row`'s job that reported anything, oldest first (SQLite's
/// `results::i_job_progress`).
pub(crate) fn i_job_progress(
    tx: &mut PgTx<'_>,
    row: &JobRow,
) -> Result<cis490_api::JobProgress, QueueError> {
    let rows = tx.db.query(
        "SELECT attempt, lease_token, worker, outcome, progress, series, metrics, warnings, \
         started_at, finished_at FROM attempt_results WHERE job_id = $1 \
         ORDER BY COALESCE(started_at, finished_at), lease_token",
        &[&row.spec.id.as_str()],
    )?;
    let mut attempts = Vec::with_capacity(rows.len());
    for r in &rows {
        let token: String = r.try_get(1)?;
        let ended: Option<String> = r.try_get(3)?;
        let latest: Option<String> = r.try_get(4)?;
        let series: String = r.try_get(5)?;
        let metrics: Option<String> = r.try_get(6)?;
        let warnings: String = r.try_get(7)?;
        let started: Option<i64> = r.try_get(8)?;
        let finished: Option<i64> = r.try_get(9)?;
        let current = row.status.is_leased() && row.lease_token.as_deref() == Some(&token);
        let outcome = match ended {
            Some(o) => o,
            None if current => "running".to_string(),
            None => "lost".to_string(),
        };
        attempts.push(cis490_api::AttemptProgress {
            attempt: super::rows::count(r.try_get(0)?, "attempt")?,
            worker: r.try_get(2)?,
            outcome,
            latest: latest.map(|t| from_json("progress", &t)).transpose()?,
            series: from_json("progress series", &series)?,
            metrics: metrics.map(|t| from_json("metrics", &t)).transpose()?,
            warnings: from_json("warnings", &warnings)?,
            started_at: started.map(crate::queue::rows::from_ms),
            finished_at: finished.map(crate::queue::rows::from_ms),
        });
    }
    Ok(cis490_api::JobProgress {
        job_id: row.spec.id.clone(),
        attempts,
    })
}
