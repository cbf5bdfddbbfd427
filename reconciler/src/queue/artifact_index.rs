//! The artifact index: one row per byte sequence the artifact store holds, with the upload
//! that first stored it (what its `meta.json` says). The store adds a row once the bytes
//! are durable and its start-up scan adds what a crash left out; the artifact listing
//! reads it (sizes of recorded uploads, and stored bytes no recorded upload names). Kept in
//! the database, so servers that share a store and a database share one index.

use cis490_api::{ArtifactId, ArtifactView, JobId};
use rusqlite::params;

use super::rows::from_ms;
use super::{QueueError, Tx};

/// Columns of an index row, as both backends select them.
pub(crate) const ARTIFACT_COLUMNS: &str =
    "a.artifact_id, a.job_id, a.attempt, a.model, a.mode, a.worker, a.size_bytes, a.stored_at";

/// An index row as read, before its IDs are checked.
pub(crate) struct RawArtifact {
    pub artifact_id: String,
    pub job_id: String,
    pub attempt: Option<i64>,
    pub model: String,
    pub mode: String,
    pub worker: String,
    pub size_bytes: i64,
    pub stored_at: i64,
}

impl RawArtifact {
    pub(crate) fn view(self) -> Result<ArtifactView, QueueError> {
        Ok(ArtifactView {
            artifact_id: ArtifactId::parse(&self.artifact_id).map_err(QueueError::corrupt)?,
            job_id: JobId::parse(&self.job_id).map_err(QueueError::corrupt)?,
            attempt: self.attempt.and_then(|a| u32::try_from(a).ok()),
            model: self.model,
            mode: self.mode,
            worker: self.worker,
            size_bytes: u64::try_from(self.size_bytes).unwrap_or(0),
            received_at: from_ms(self.stored_at),
        })
    }
}

/// An index row's values to insert, in [`ARTIFACT_COLUMNS`] order.
pub(crate) fn insert_values(row: &ArtifactView) -> (i64, Option<i64>, i64) {
    (
        i64::try_from(row.size_bytes).unwrap_or(i64::MAX),
        row.attempt.map(i64::from),
        row.received_at.timestamp_millis(),
    )
}

/// The SQL that selects up to `$2` index rows after artifact ID `$1` that no recorded upload
/// names (the bytes of an upload whose lease was lost while it streamed), by ID.
pub(crate) fn unrecorded_sql(param: fn(usize) -> String) -> String {
    format!(
        "SELECT {ARTIFACT_COLUMNS} FROM artifacts a WHERE a.artifact_id > {} \
         AND NOT EXISTS (SELECT 1 FROM uploads u WHERE u.artifact_id = a.artifact_id) \
         ORDER BY a.artifact_id LIMIT {}",
        param(1),
        param(2)
    )
}

/// A page of `limit` rows out of `rows` (read with one more than `limit`): the page and
/// whether more follow.
pub(crate) fn page_of(mut rows: Vec<ArtifactView>, limit: usize) -> (Vec<ArtifactView>, bool) {
    let more = rows.len() > limit;
    rows.truncate(limit);
    (rows, more)
}

/// Adds the rows whose artifact is not indexed yet; how many were added.
pub(crate) fn i_add(tx: &mut Tx<'_>, rows: &[ArtifactView]) -> Result<usize, QueueError> {
    let mut stmt = tx.db.prepare_cached(
        "INSERT OR IGNORE INTO artifacts (artifact_id, job_id, attempt, model, mode, worker, \
         size_bytes, stored_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    let mut added = 0;
    for row in rows {
        let (size, attempt, at) = insert_values(row);
        added += stmt.execute(params![
            row.artifact_id.as_str(),
            row.job_id.as_str(),
            attempt,
            row.model,
            row.mode,
            row.worker,
            size,
            at
        ])?;
    }
    Ok(added)
}

/// Whether the artifact is indexed.
pub(crate) fn i_contains(tx: &mut Tx<'_>, id: &ArtifactId) -> Result<bool, QueueError> {
    Ok(tx
        .db
        .prepare_cached("SELECT 1 FROM artifacts WHERE artifact_id = ?1")?
        .exists([id.as_str()])?)
}

/// Up to `limit` indexed artifacts after `after` that no recorded upload names, and
/// whether more follow.
pub(crate) fn i_unrecorded_page(
    tx: &mut Tx<'_>,
    after: Option<&ArtifactId>,
    limit: usize,
) -> Result<(Vec<ArtifactView>, bool), QueueError> {
    let sql = unrecorded_sql(|n| format!("?{n}"));
    let mut stmt = tx.db.prepare_cached(&sql)?;
    let want = i64::try_from(limit + 1).unwrap_or(i64::MAX);
    let rows = stmt.query_map(params![after.map_or("", ArtifactId::as_str), want], |r| {
        Ok(RawArtifact {
            artifact_id: r.get(0)?,
            job_id: r.get(1)?,
            attempt: r.get(2)?,
            model: r.get(3)?,
            mode: r.get(4)?,
            worker: r.get(5)?,
            size_bytes: r.get(6)?,
            stored_at: r.get(7)?,
        })
    })?;
    let rows = rows
        .map(|row| row.map_err(QueueError::from).and_then(RawArtifact::view))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(page_of(rows, limit))
}
