//! The artifact index on PostgreSQL (SQLite's `artifact_index.rs`, whose row shape and
//! listing SQL it shares).

use cis490_api::{ArtifactId, ArtifactView};

use super::tx::PgTx;
use crate::queue::artifact_index::{insert_values, page_of, unrecorded_sql, RawArtifact};
use crate::queue::QueueError;

pub(crate) fn i_add(tx: &mut PgTx<'_>, rows: &[ArtifactView]) -> Result<usize, QueueError> {
    let mut added = 0;
    for row in rows {
        let (size, attempt, at) = insert_values(row);
        added += tx.db.execute(
            "INSERT INTO artifacts (artifact_id, job_id, attempt, model, mode, worker, \
             size_bytes, stored_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (artifact_id) DO NOTHING",
            &[
                &row.artifact_id.as_str(),
                &row.job_id.as_str(),
                &attempt,
                &row.model,
                &row.mode,
                &row.worker,
                &size,
                &at,
            ],
        )?;
    }
    Ok(usize::try_from(added).unwrap_or(usize::MAX))
}

pub(crate) fn i_contains(tx: &mut PgTx<'_>, id: &ArtifactId) -> Result<bool, QueueError> {
    Ok(tx
        .db
        .query_opt(
            "SELECT 1 FROM artifacts WHERE artifact_id = $1",
            &[&id.as_str()],
        )?
        .is_some())
}

pub(crate) fn i_unrecorded_page(
    tx: &mut PgTx<'_>,
    after: Option<&ArtifactId>,
    limit: usize,
) -> Result<(Vec<ArtifactView>, bool), QueueError> {
    let want = i64::try_from(limit + 1).unwrap_or(i64::MAX);
    let sql = unrecorded_sql(|n| format!("${n}"));
    let rows = tx
        .db
        .query(&sql, &[&after.map_or("", ArtifactId::as_str), &want])?
        .iter()
        .map(|r| {
            RawArtifact {
                artifact_id: r.try_get(0)?,
                job_id: r.try_get(1)?,
                attempt: r.try_get(2)?,
                model: r.try_get(3)?,
                mode: r.try_get(4)?,
                worker: r.try_get(5)?,
                size_bytes: r.try_get(6)?,
                stored_at: r.try_get(7)?,
            }
            .view()
        })
        .collect::<Result<Vec<_>, QueueError>>()?;
    Ok(page_of(rows, limit))
}
