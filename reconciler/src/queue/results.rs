//! Training results per attempt (`attempt_results`): the progress points heartbeats carry,
//! the metrics and series a completion or failure reports, and the reads of them
//! (`GET /v1/results`, `GET /v1/job/{id}/progress`, the progress and metrics of a job view).
//! Each `i_*` runs inside the caller's transaction, after the caller checked the lease.

use cis490_api::{
    ArtifactId, AttemptProgress, JobId, JobProgress, JobSpec, Lease, Metrics, Page, ResultRow,
    ResultsQuery, TrainerReport, WorkerName,
};
use rusqlite::{params, OptionalExtension};

use super::events::{i_event, kind};
use super::rows::{from_ms, JobRow};
use super::{QueueError, Tx};

/// Most points of a live series (the heartbeats' points while an attempt runs), and its
/// most bytes as JSON: each heartbeat rewrites the row, so a long run costs a few pages a
/// heartbeat, not the whole history's. The agent's full history (up to 1,000 points)
/// replaces it when the attempt ends.
const LIVE_SERIES_POINTS: usize = 200;
const LIVE_SERIES_BYTES: usize = 32 * 1024;

/// How an attempt ended, as stored in `attempt_results.outcome`.
pub(crate) mod outcome {
    pub const COMPLETED: &str = "completed";
    pub const FAILED: &str = "failed";
    pub const RELEASED: &str = "released";
}

fn to_json(value: &impl serde::Serialize) -> Result<String, QueueError> {
    serde_json::to_string(value).map_err(|e| QueueError::corrupt(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T, QueueError> {
    serde_json::from_str(text).map_err(|e| QueueError::corrupt(format!("{what}: {e}")))
}

/// A heartbeat's progress point: the attempt's latest, appended to its live series. A
/// series past its bounds is halved evenly, so a long run keeps its whole curve, coarser.
pub(crate) fn i_record_progress(
    tx: &Tx<'_>,
    id: &JobId,
    worker: &WorkerName,
    lease: &Lease,
    point: &Metrics,
) -> Result<(), QueueError> {
    let stored: Option<String> = tx
        .db
        .prepare_cached(
            "SELECT series FROM attempt_results WHERE job_id = ?1 AND lease_token = ?2",
        )?
        .query_row(params![id.as_str(), lease.token], |r| r.get(0))
        .optional()?;
    let mut series: Vec<Metrics> = match &stored {
        Some(text) => from_json("progress series", text)?,
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
    tx.db
        .prepare_cached(
            "INSERT INTO attempt_results (job_id, attempt, lease_token, worker, progress, series, \
             started_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
             ON CONFLICT (job_id, lease_token) DO UPDATE SET progress = excluded.progress, \
             series = excluded.series",
        )?
        .execute(params![
            id.as_str(),
            lease.attempt,
            lease.token,
            worker.as_str(),
            to_json(point)?,
            series_json,
            tx.now
        ])?;
    Ok(())
}

/// How the attempt under `lease` ended and what its trainer reported; each warning becomes
/// a `TrainerWarning` event.
pub(crate) fn i_record_outcome(
    tx: &mut Tx<'_>,
    row: &JobRow,
    worker: &WorkerName,
    lease: &Lease,
    outcome: &str,
    report: &TrainerReport,
    artifact: Option<&ArtifactId>,
) -> Result<(), QueueError> {
    let id = &row.spec.id;
    if report.is_empty() {
        // Nothing to report adds no row (the cycle of a job whose trainer writes neither
        // file costs nothing more): one made by progress heartbeats gets its outcome. A
        // completion without a row is still a result: the listing reads it from the job.
        tx.db
            .prepare_cached(
                "UPDATE attempt_results SET outcome = ?3, finished_at = ?4, artifact_id = ?5, \
                 started_at = COALESCE(?6, started_at) WHERE job_id = ?1 AND lease_token = ?2",
            )?
            .execute(params![
                id.as_str(),
                lease.token,
                outcome,
                tx.now,
                artifact.map(ArtifactId::as_str),
                row.started_at
            ])?;
        return Ok(());
    }
    // Within its bounds already: `Queue::complete` and `fail` check the report first.
    let series = &report.progress;
    let latest = series.last().map(to_json).transpose()?;
    let metrics = report.metrics.as_ref().map(to_json).transpose()?;
    tx.db
        .prepare_cached(
            "INSERT INTO attempt_results (job_id, attempt, lease_token, worker, outcome, progress, \
             series, metrics, warnings, artifact_id, started_at, finished_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) \
             ON CONFLICT (job_id, lease_token) DO UPDATE SET outcome = excluded.outcome, \
             progress = COALESCE(excluded.progress, progress), \
             series = CASE WHEN excluded.series = '[]' THEN series ELSE excluded.series END, \
             metrics = excluded.metrics, warnings = excluded.warnings, \
             artifact_id = excluded.artifact_id, finished_at = excluded.finished_at, \
             started_at = excluded.started_at",
        )?
        .execute(params![
            id.as_str(),
            lease.attempt,
            lease.token,
            worker.as_str(),
            outcome,
            latest,
            to_json(series)?,
            metrics,
            to_json(&report.warnings)?,
            artifact.map(ArtifactId::as_str),
            row.started_at.unwrap_or(tx.now),
            tx.now
        ])?;
    for warning in &report.warnings {
        i_event(
            tx,
            Some(id),
            Some(worker.as_str()),
            kind::TRAINER_WARNING,
            format!("attempt {}: {warning}", lease.attempt),
        )?;
    }
    Ok(())
}

/// The latest progress point of the job's current lease (None when not leased).
pub(crate) fn i_current_progress(tx: &Tx<'_>, row: &JobRow) -> Result<Option<Metrics>, QueueError> {
    let Some(token) = row
        .lease_token
        .as_deref()
        .filter(|_| row.status.is_leased())
    else {
        return Ok(None);
    };
    let text: Option<Option<String>> = tx
        .db
        .prepare_cached(
            "SELECT progress FROM attempt_results WHERE job_id = ?1 AND lease_token = ?2",
        )?
        .query_row(params![row.spec.id.as_str(), token], |r| r.get(0))
        .optional()?;
    text.flatten()
        .map(|t| from_json("progress", &t))
        .transpose()
}

/// The metrics of the job's latest completed attempt, while it is completed.
pub(crate) fn i_completed_metrics(
    tx: &Tx<'_>,
    row: &JobRow,
) -> Result<Option<Metrics>, QueueError> {
    if row.status != cis490_api::JobStatus::Completed {
        return Ok(None);
    }
    // The completing attempt's row has the job's finish time (one transaction wrote both).
    let text: Option<Option<String>> = tx
        .db
        .prepare_cached(
            "SELECT metrics FROM attempt_results WHERE job_id = ?1 AND outcome = 'completed' \
             AND finished_at = ?2",
        )?
        .query_row(params![row.spec.id.as_str(), row.finished_at], |r| r.get(0))
        .optional()?;
    text.flatten().map(|t| from_json("metrics", &t)).transpose()
}

/// Every attempt of `row`'s job that reported anything, oldest first.
pub(crate) fn i_job_progress(tx: &Tx<'_>, row: &JobRow) -> Result<JobProgress, QueueError> {
    let mut stmt = tx.db.prepare_cached(
        "SELECT attempt, lease_token, worker, outcome, progress, series, metrics, warnings, \
         started_at, finished_at FROM attempt_results WHERE job_id = ?1 \
         ORDER BY COALESCE(started_at, finished_at), lease_token",
    )?;
    type Raw = (
        u32,
        String,
        String,
        Option<String>,
        Option<String>,
        String,
        Option<String>,
        String,
        Option<i64>,
        Option<i64>,
    );
    let raws = stmt
        .query_map(params![row.spec.id.as_str()], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
                r.get(9)?,
            ))
        })?
        .collect::<Result<Vec<Raw>, _>>()?;
    let mut attempts = Vec::with_capacity(raws.len());
    for (attempt, token, worker, ended, latest, series, metrics, warnings, started, finished) in
        raws
    {
        let current = row.status.is_leased() && row.lease_token.as_deref() == Some(&token);
        let outcome = match ended {
            Some(o) => o,
            None if current => "running".to_string(),
            None => "lost".to_string(),
        };
        attempts.push(AttemptProgress {
            attempt,
            worker,
            outcome,
            latest: latest.map(|t| from_json("progress", &t)).transpose()?,
            series: from_json("progress series", &series)?,
            metrics: metrics.map(|t| from_json("metrics", &t)).transpose()?,
            warnings: from_json("warnings", &warnings)?,
            started_at: started.map(from_ms),
            finished_at: finished.map(from_ms),
        });
    }
    Ok(JobProgress {
        job_id: row.spec.id.clone(),
        attempts,
    })
}

/// A key as a JSON path member, quoted; keys with quotes or backslashes are refused
/// (metric keys are names, and a path must not be able to escape its quotes).
pub(crate) fn json_member(key: &str, what: &str) -> Result<String, QueueError> {
    if key.is_empty() || key.contains(['"', '\\']) {
        return Err(QueueError::BadRequest {
            message: format!("{what} {key:?} cannot be empty or hold quotes or backslashes"),
        });
    }
    Ok(format!("\"{key}\""))
}

/// What a `sort` orders by: SQL, with the JSON path (if any) bound as ?8.
#[derive(Debug, PartialEq, Eq)]
struct SortKey {
    expr: &'static str,
    path: Option<String>,
    descending: bool,
}

/// The order a `sort` asks for; None for queue order.
fn sort_key(sort: Option<&str>) -> Result<Option<SortKey>, QueueError> {
    let Some(sort) = sort.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let (descending, key) = match sort.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, sort.strip_prefix('+').unwrap_or(sort)),
    };
    let key_of = |expr, path| {
        Ok(Some(SortKey {
            expr,
            path,
            descending,
        }))
    };
    let column = |expr| key_of(expr, None);
    match key {
        "id" => column("id"),
        "model" => column("model"),
        "mode" => column("mode"),
        "seed" => column("json_extract(spec, '$.seed')"),
        "worker" => column("worker"),
        "attempt" => column("attempt"),
        "duration" | "duration_s" => column("(finished - started)"),
        "finished" | "finished_at" => column("finished"),
        "started" | "started_at" => column("started"),
        _ => {
            if let Some(h) = key.strip_prefix("hyper.") {
                let path = format!("$.hyper.{}", json_member(h, "hyper key")?);
                key_of("json_extract(spec, ?8)", Some(path))
            } else {
                let m = key.strip_prefix("metrics.").unwrap_or(key);
                let path = format!("$.{}", json_member(m, "metric")?);
                key_of("json_extract(metrics, ?8)", Some(path))
            }
        }
    }
}

/// The offset a results cursor stands for.
pub(crate) fn decode_offset(after: Option<&str>) -> Result<u64, QueueError> {
    match after {
        None => Ok(0),
        Some(text) => text.parse().map_err(|_| QueueError::BadRequest {
            message: format!(
                "`after` {:?} is not a cursor of this listing; pass the `next` of the previous page",
                text.chars().take(80).collect::<String>()
            ),
        }),
    }
}

/// Completed jobs (or attempts) with their metrics, filtered and sorted; see
/// [`ResultsQuery`]. Sorting happens in SQLite, which keeps only `limit` rows while it
/// sorts, so a page costs memory in its size whatever the queue holds.
pub(crate) fn i_results_page(
    tx: &Tx<'_>,
    query: &ResultsQuery,
    limit: usize,
) -> Result<Page<ResultRow>, QueueError> {
    let (label_path, label_value) = match query.label.as_deref() {
        None => (None, None),
        Some(sel) => {
            let (k, v) = sel.split_once('=').ok_or_else(|| QueueError::BadRequest {
                message: format!("label selector {sel:?} is not key=value"),
            })?;
            (
                Some(format!("$.labels.{}", json_member(k, "label key")?)),
                Some(v.to_string()),
            )
        }
    };
    let offset = decode_offset(query.after.as_deref())?;
    let sort = sort_key(query.sort.as_deref())?;
    // ?8, the sort's JSON path, is named in the WHERE clause too, so the statement takes
    // the same parameters whether the order uses it or not.
    let order = match &sort {
        None => String::new(),
        Some(key) => format!(
            "{e} IS NULL, {e} {}, ",
            if key.descending { "DESC" } else { "ASC" },
            e = key.expr
        ),
    };
    // Every completed job, with the row of the attempt that completed it when that attempt
    // reported anything (same finish time: one transaction wrote both); with `attempts`,
    // also the earlier completed attempts that reported (re-runs before a requeue).
    let job_filter = "(?1 IS NULL OR j.model = ?1) AND (?2 IS NULL OR j.mode = ?2) \
                      AND (?3 IS NULL OR json_extract(j.spec, ?3) = ?4)";
    let sql = format!(
        "SELECT spec, attempt, worker, metrics, started, finished, artifact FROM ( \
           SELECT j.spec AS spec, j.id AS id, j.model AS model, j.mode AS mode, \
             j.priority AS priority, j.manifest_order AS manifest_order, \
             COALESCE(r.attempt, j.attempts) AS attempt, \
             COALESCE(r.worker, j.worker, '') AS worker, r.metrics AS metrics, \
             j.started_at AS started, j.finished_at AS finished, j.artifact_id AS artifact, \
             9223372036854775807 AS seq \
           FROM jobs j LEFT JOIN attempt_results r ON r.job_id = j.id \
             AND r.outcome = 'completed' AND r.finished_at = j.finished_at \
           WHERE j.status = 'completed' AND {job_filter} \
           UNION ALL \
           SELECT j.spec, j.id, j.model, j.mode, j.priority, j.manifest_order, r.attempt, \
             r.worker, r.metrics, r.started_at, r.finished_at, r.artifact_id, r.finished_at \
           FROM attempt_results r JOIN jobs j ON j.id = r.job_id \
           WHERE ?5 AND r.outcome = 'completed' AND {job_filter} \
             AND NOT (j.status = 'completed' AND r.finished_at IS j.finished_at)) \
         WHERE (?8 IS NULL OR ?8 IS NOT NULL) \
         ORDER BY {order}priority DESC, manifest_order, id, seq \
         LIMIT ?6 OFFSET ?7",
    );
    let want = i64::try_from(limit + 1).unwrap_or(i64::MAX);
    let path = sort.and_then(|key| key.path);
    let mut stmt = tx.db.prepare_cached(&sql)?;
    type Raw = (
        String,
        u32,
        String,
        Option<String>,
        Option<i64>,
        Option<i64>,
        Option<String>,
    );
    let raws = stmt
        .query_map(
            params![
                query.model,
                query.mode,
                label_path,
                label_value,
                query.attempts,
                want,
                i64::try_from(offset).unwrap_or(i64::MAX),
                path,
            ],
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
        )?
        .collect::<Result<Vec<Raw>, _>>()?;
    let more = raws.len() > limit;
    let mut items = Vec::with_capacity(raws.len().min(limit));
    for (spec, attempt, worker, metrics, started, finished, artifact) in
        raws.into_iter().take(limit)
    {
        let spec: JobSpec = from_json("job spec", &spec)?;
        items.push(ResultRow {
            id: spec.id,
            model: spec.model,
            mode: spec.mode,
            seed: spec.seed,
            hyper: spec.hyper,
            labels: spec.labels,
            metrics: metrics
                .map(|t| from_json("metrics", &t))
                .transpose()?
                .unwrap_or_default(),
            attempt,
            worker,
            started_at: started.map(from_ms),
            finished_at: finished.map(from_ms),
            duration_s: match (started, finished) {
                (Some(s), Some(f)) => Some((f - s).max(0) as f64 / 1000.0),
                _ => None,
            },
            artifact_id: artifact
                .as_deref()
                .map(ArtifactId::parse)
                .transpose()
                .map_err(QueueError::corrupt)?,
        });
    }
    let next = more.then(|| (offset + limit as u64).to_string());
    Ok(Page { items, next })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sort_keys_name_columns_hyper_keys_and_metrics() {
        let key = |s: &str| sort_key(Some(s)).unwrap().unwrap();
        let k = key("-duration");
        assert_eq!(
            (k.expr, k.path, k.descending),
            ("(finished - started)", None, true)
        );
        assert!(!key("seed").descending);
        let k = key("-val_accuracy");
        assert_eq!(
            (k.expr, k.path.as_deref(), k.descending),
            (
                "json_extract(metrics, ?8)",
                Some("$.\"val_accuracy\""),
                true
            )
        );
        assert_eq!(key("metrics.loss").path.as_deref(), Some("$.\"loss\""));
        let k = key("+hyper.learning_rate");
        assert_eq!(
            (k.expr, k.path.as_deref()),
            ("json_extract(spec, ?8)", Some("$.hyper.\"learning_rate\""))
        );
        assert!(sort_key(None).unwrap().is_none());
        for bad in ["a\"b", "hyper.x\\y", "-"] {
            assert!(
                matches!(sort_key(Some(bad)), Err(QueueError::BadRequest { .. })),
                "{bad}"
            );
        }
    }
}
