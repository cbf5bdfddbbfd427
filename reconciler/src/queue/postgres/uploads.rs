//! The artifact listing on PostgreSQL: recorded uploads, newest first, one row per (job,
//! attempt, artifact) with its first upload (SQLite's `listing::i_uploads_page`; `id`
//! stands for SQLite's rowid).

use cis490_api::{ArtifactId, ArtifactView, JobId};

use super::tx::PgTx;
use crate::queue::rows::from_ms;
use crate::queue::QueueError;

pub(crate) fn i_uploads_page(
    tx: &mut PgTx<'_>,
    before: Option<i64>,
    limit: usize,
) -> Result<(Vec<ArtifactView>, Option<i64>), QueueError> {
    let want = i64::try_from(limit + 1).unwrap_or(i64::MAX);
    let rows = tx.db.query(
        "SELECT u.id, u.artifact_id, u.job_id, u.attempt, u.worker, a.size_bytes, u.at, \
         j.model, j.mode FROM uploads u JOIN jobs j ON j.id = u.job_id \
         JOIN artifacts a ON a.artifact_id = u.artifact_id \
         WHERE u.id < $1 AND NOT EXISTS (SELECT 1 FROM uploads e \
           WHERE e.job_id = u.job_id AND e.attempt = u.attempt \
             AND e.artifact_id = u.artifact_id AND e.id < u.id) \
         ORDER BY u.id DESC LIMIT $2",
        &[&before.unwrap_or(i64::MAX), &want],
    )?;
    let mut out = Vec::new();
    let mut last_row = None;
    for r in &rows {
        if out.len() == limit {
            return Ok((out, last_row));
        }
        let id: i64 = r.try_get(0)?;
        let artifact: String = r.try_get(1)?;
        let job: String = r.try_get(2)?;
        let attempt: i64 = r.try_get(3)?;
        let size: i64 = r.try_get(5)?;
        out.push(ArtifactView {
            artifact_id: ArtifactId::parse(&artifact).map_err(QueueError::corrupt)?,
            job_id: JobId::parse(&job).map_err(QueueError::corrupt)?,
            attempt: u32::try_from(attempt).ok(),
            model: r.try_get(7)?,
            mode: r.try_get(8)?,
            worker: r.try_get(4)?,
            size_bytes: u64::try_from(size).unwrap_or(0),
            received_at: from_ms(r.try_get(6)?),
        });
        last_row = Some(id);
    }
    Ok((out, None))
}
