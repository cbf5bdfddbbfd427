//! Reads of jobs: resolving an ID prefix, one job's view, counts per status.

use std::collections::BTreeMap;

use cis490_api::{IdPrefix, JobId, JobStatus, JobView, SHORT_ID_LEN};
use rusqlite::params;

use super::events::i_job_events;
use super::results;
use super::rows::i_existing_job;
use super::{QueueError, Tx};

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

/// Live jobs per status and tombstoned ones apart: one walk of an index on (status,
/// tombstoned), never of the table, and grouped in that index's order so no temporary
/// B-tree sorts it (the overview of a 100,000-job queue, and `/v1/health` that monitors
/// poll, depend on it).
pub(crate) const LIVE_COUNTS: &str =
    "SELECT status, tombstoned, COUNT(*) FROM jobs GROUP BY status, tombstoned";

/// Live jobs per status (a tombstoned job that is claimed or running is live: it still
/// runs), and how many tombstoned jobs are not.
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
        if dead && status != JobStatus::Claimed.as_str() && status != JobStatus::Running.as_str() {
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
