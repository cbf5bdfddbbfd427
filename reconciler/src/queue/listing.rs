//! The paged list reads: jobs in queue order, workers by name, uploads newest first (see
//! `cis490_api::paging`). Each page costs work and memory in its `limit`, however large
//! the queue: the jobs page seeks `jobs_listing` from its cursor, so paging through every
//! job reads each index entry once.

use cis490_api::{
    ArtifactId, ArtifactView, JobFilter, JobId, JobView, LabelSelector, Page, WorkerView,
};
use rusqlite::params;

use super::nodes::{i_worker_rows_after, worker_view};
use super::rows::{from_ms, RawJob, JOB_COLUMNS};
use super::{QueueError, Tx};

/// Where a jobs page ends: the queue order is priority (highest first), then manifest
/// order, then ID. Written `PRIORITY.ORDER.ID`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobCursor {
    pub(crate) priority: i64,
    pub(crate) manifest_order: i64,
    pub(crate) id: String,
}

impl JobCursor {
    pub(crate) fn of(spec: &cis490_api::JobSpec) -> Self {
        Self {
            priority: i64::from(spec.priority),
            manifest_order: i64::try_from(spec.manifest_order).unwrap_or(i64::MAX),
            id: spec.id.to_string(),
        }
    }

    pub(crate) fn encode(&self) -> String {
        format!("{}.{}.{}", self.priority, self.manifest_order, self.id)
    }

    pub fn decode(text: &str) -> Result<Self, QueueError> {
        let bad = || {
            QueueError::BadRequest {
            message: format!(
                "`after` {:?} is not a cursor of this listing; pass the `next` of the previous page",
                shorten(text)
            ),
        }
        };
        let mut parts = text.splitn(3, '.');
        let (Some(p), Some(m), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad());
        };
        let id = JobId::parse(id).map_err(|_| bad())?;
        Ok(Self {
            priority: p.parse().map_err(|_| bad())?,
            manifest_order: m.parse().map_err(|_| bad())?,
            id: id.to_string(),
        })
    }
}

/// A cursor for an error message: at most 80 characters of it.
fn shorten(text: &str) -> String {
    text.chars().take(80).collect()
}

/// The label selector of `filter` (`team=a,gpu!=none`), parsed; a bad term is a 400 that
/// names it.
pub(crate) fn label_selector(filter: &JobFilter) -> Result<Option<LabelSelector>, QueueError> {
    filter
        .label
        .as_deref()
        .map(LabelSelector::parse)
        .transpose()
        .map_err(|e| QueueError::BadRequest {
            message: e.to_string(),
        })
}

/// The filters of `GET /v1/jobs` other than the label, as SQL whose parameters start at
/// `?first`: status, model, mode, worker, and whether tombstoned jobs that no longer run
/// count.
fn job_matches(first: usize) -> String {
    let [s, m, d, w, a] = [first, first + 1, first + 2, first + 3, first + 4];
    format!(
        "(?{s} IS NULL OR status = ?{s}) AND (?{m} IS NULL OR model = ?{m}) \
         AND (?{d} IS NULL OR mode = ?{d}) AND (?{w} IS NULL OR worker = ?{w}) \
         AND (?{a} OR tombstoned = 0 OR status IN ('claimed', 'running'))"
    )
}

/// Up to `limit` jobs that match `filter`, in queue order, after `after`.
pub(crate) fn i_jobs_page(
    tx: &mut Tx<'_>,
    filter: &JobFilter,
    after: Option<&JobCursor>,
    limit: usize,
) -> Result<Page<JobView>, QueueError> {
    let label = label_selector(filter)?;
    let status = filter.status.map(|s| s.as_str());
    let (model, mode, worker, all) = (&filter.model, &filter.mode, &filter.worker, filter.all);
    // Each job with its place in the order, for the cursor of the last one.
    let mut items: Vec<(JobCursor, JobView)> = Vec::new();
    // One more than a page is looked for, so that `next` is set only when there is more.
    let want = limit + 1;
    let scan = |items: &mut Vec<(JobCursor, JobView)>,
                sql: &str,
                params: &[&dyn rusqlite::ToSql]|
     -> Result<(), QueueError> {
        let mut stmt = tx.db.prepare_cached(sql)?;
        let mut rows = stmt.query(params)?;
        while items.len() < want {
            let Some(row) = rows.next()? else { break };
            let job = RawJob::from_row(row, 0)?.decode()?;
            if let Some(selector) = &label {
                if !selector.matches(&job.spec.labels) {
                    continue;
                }
            }
            let mut view = job.view()?;
            view.progress = super::results::i_current_progress(tx, &job)?;
            items.push((JobCursor::of(&job.spec), view));
        }
        Ok(())
    };
    // Two seeks instead of one mixed-direction comparison, which SQLite cannot seek an
    // index with: the rest of the cursor's priority, then every lower priority.
    let lower_priority = format!(
        "SELECT {JOB_COLUMNS} FROM jobs INDEXED BY jobs_listing WHERE priority < ?1 AND {} \
         ORDER BY priority DESC, manifest_order, id",
        job_matches(2)
    );
    let below = match after {
        None => i64::MAX,
        Some(c) => {
            let same_priority = format!(
                "SELECT {JOB_COLUMNS} FROM jobs INDEXED BY jobs_listing \
                 WHERE priority = ?1 AND (manifest_order, id) > (?2, ?3) AND {} \
                 ORDER BY manifest_order, id",
                job_matches(4)
            );
            let params: [&dyn rusqlite::ToSql; 8] = [
                &c.priority,
                &c.manifest_order,
                &c.id,
                &status,
                model,
                mode,
                worker,
                &all,
            ];
            scan(&mut items, &same_priority, &params)?;
            c.priority
        }
    };
    if items.len() < want {
        let params: [&dyn rusqlite::ToSql; 6] = [&below, &status, model, mode, worker, &all];
        scan(&mut items, &lower_priority, &params)?;
    }
    let next = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|(cursor, _)| cursor.encode())
    } else {
        None
    };
    let items = items.into_iter().map(|(_, view)| view).collect();
    Ok(Page { items, next })
}

/// The models of the jobs that have completed, by name (the results page's choice).
pub(crate) fn i_completed_models(tx: &mut Tx<'_>) -> Result<Vec<String>, QueueError> {
    let mut stmt = tx.db.prepare_cached(
        "SELECT DISTINCT model FROM jobs WHERE status = 'completed' ORDER BY model",
    )?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Up to `limit` workers after the one named `after`, by name.
pub(crate) fn i_workers_page(
    tx: &mut Tx<'_>,
    after: Option<&str>,
    limit: usize,
) -> Result<Page<WorkerView>, QueueError> {
    let mut rows = i_worker_rows_after(tx, after.unwrap_or(""), limit + 1)?;
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next = more.then(|| rows.last().map(|r| r.name.clone())).flatten();
    let items = rows
        .into_iter()
        .map(|row| worker_view(tx, row))
        .collect::<Result<_, _>>()?;
    Ok(Page { items, next })
}

/// Up to `limit` recorded uploads, newest first, from before the upload numbered
/// `before` (the cursor: an upload's row number). One row per (job, attempt, artifact):
/// the first upload of each, whose bytes the artifact index holds; `size_bytes` is the
/// stored size.
pub(crate) fn i_uploads_page(
    tx: &mut Tx<'_>,
    before: Option<i64>,
    limit: usize,
) -> Result<(Vec<ArtifactView>, Option<i64>), QueueError> {
    let mut stmt = tx.db.prepare_cached(
        "SELECT u.rowid, u.artifact_id, u.job_id, u.attempt, u.worker, a.size_bytes, u.at, \
         j.model, j.mode FROM uploads u JOIN jobs j ON j.id = u.job_id \
         JOIN artifacts a ON a.artifact_id = u.artifact_id \
         WHERE u.rowid < ?1 AND NOT EXISTS (SELECT 1 FROM uploads e \
           WHERE e.job_id = u.job_id AND e.attempt = u.attempt \
             AND e.artifact_id = u.artifact_id AND e.rowid < u.rowid) \
         ORDER BY u.rowid DESC LIMIT ?2",
    )?;
    let want = i64::try_from(limit + 1).unwrap_or(i64::MAX);
    let rows = stmt.query_map(params![before.unwrap_or(i64::MAX), want], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, i64>(5)?,
            r.get::<_, i64>(6)?,
            r.get::<_, String>(7)?,
            r.get::<_, String>(8)?,
        ))
    })?;
    let mut out = Vec::new();
    let mut last_row = None;
    for row in rows {
        let (rowid, artifact, job, attempt, worker, size, at, model, mode) = row?;
        if out.len() == limit {
            return Ok((out, last_row));
        }
        out.push(ArtifactView {
            artifact_id: ArtifactId::parse(&artifact).map_err(QueueError::corrupt)?,
            job_id: JobId::parse(&job).map_err(QueueError::corrupt)?,
            attempt: u32::try_from(attempt).ok(),
            model,
            mode,
            worker,
            size_bytes: u64::try_from(size).unwrap_or(0),
            received_at: from_ms(at),
        });
        last_row = Some(rowid);
    }
    Ok((out, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_cursors_round_trip_and_bad_ones_are_refused() {
        let id = "ab".repeat(32);
        let c = JobCursor {
            priority: -3,
            manifest_order: 17,
            id: id.clone(),
        };
        assert_eq!(JobCursor::decode(&c.encode()).unwrap(), c);
        for bad in [
            "",
            "1.2",
            "x.2.ab",
            "1.y.ab",
            &format!("1.2.{}", "zz".repeat(32)),
        ] {
            let err = JobCursor::decode(bad).unwrap_err();
            assert!(matches!(err, QueueError::BadRequest { .. }), "{bad}: {err}");
        }
    }
}
