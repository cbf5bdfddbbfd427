//! Reading and writing job rows on PostgreSQL: the one place of this backend that knows
//! the `jobs` columns. Rows decode into the shared [`JobRow`], which the rules read.

use cis490_api::{JobId, JobSpec};
use postgres::Row;

use super::tx::PgTx;
use crate::queue::placement::Placement;
use crate::queue::rows::{JobRow, LeasedJob, LEASED_COLUMNS};
use crate::queue::QueueError;

/// The columns [`job_from_row`] reads, in order (the same as SQLite's `JOB_COLUMNS`).
pub(crate) const JOB_COLUMNS: &str = crate::queue::rows::JOB_COLUMNS;

/// A stored count as the rules' u32 (a negative or huge one is corrupt).
pub(crate) fn count(value: i64, what: &str) -> Result<u32, QueueError> {
    u32::try_from(value).map_err(|_| QueueError::corrupt(format!("{what} = {value}")))
}

/// A u32 or u64 for a BIGINT column (the `postgres` crate binds u32 as an OID).
pub(crate) fn big(value: impl TryInto<i64>) -> i64 {
    value.try_into().unwrap_or(i64::MAX)
}

/// Decodes the [`JOB_COLUMNS`] starting at column `first`.
pub(crate) fn job_from_row(row: &Row, first: usize) -> Result<JobRow, QueueError> {
    let c = |i: usize| first + i;
    let spec: String = row.try_get(c(0))?;
    let status: String = row.try_get(c(1))?;
    let spec: JobSpec =
        serde_json::from_str(&spec).map_err(|e| QueueError::corrupt(format!("job spec: {e}")))?;
    let status = status
        .parse()
        .map_err(|e| QueueError::corrupt(format!("job {}: {e}", spec.id)))?;
    let opt_count = |i: usize, what: &str| -> Result<Option<u32>, QueueError> {
        row.try_get::<_, Option<i64>>(c(i))?
            .map(|v| count(v, what))
            .transpose()
    };
    let exit_code: Option<i64> = row.try_get(c(12))?;
    Ok(JobRow {
        tombstoned: row.try_get(c(2))?,
        worker: row.try_get(c(3))?,
        attempts: count(row.try_get(c(4))?, "attempts")?,
        lease_attempt: opt_count(5, "lease_attempt")?,
        lease_token: row.try_get(c(6))?,
        lease_expires_at: row.try_get(c(7))?,
        trainer_failures: count(row.try_get(c(8))?, "trainer_failures")?,
        lease_expiries: count(row.try_get(c(9))?, "lease_expiries")?,
        artifact_id: row.try_get(c(10))?,
        error_reason: row.try_get(c(11))?,
        error_exit_code: exit_code.and_then(|v| i32::try_from(v).ok()),
        error_log_tail: row.try_get(c(13))?,
        log_tail: row.try_get(c(14))?,
        created_at: row.try_get(c(15))?,
        updated_at: row.try_get(c(16))?,
        pending_since: row.try_get(c(17))?,
        started_at: row.try_get(c(18))?,
        finished_at: row.try_get(c(19))?,
        spec,
        status,
    })
}

/// The job `id`, or None; `lock` takes its row lock (`FOR UPDATE`) for a read-then-write
/// transition, so no other writer changes it before this transaction ends.
pub(crate) fn i_job_row(
    tx: &mut PgTx<'_>,
    id: &JobId,
    lock: bool,
) -> Result<Option<JobRow>, QueueError> {
    let sql = format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    let row = tx.db.query_opt(&sql, &[&id.as_str()])?;
    row.map(|r| job_from_row(&r, 0)).transpose()
}

/// The fence columns of job `id` (`lock`: with its row lock), or NotFound.
pub(crate) fn i_fence_columns(
    tx: &mut PgTx<'_>,
    id: &JobId,
    lock: bool,
) -> Result<LeasedJob, QueueError> {
    let sql = format!(
        "SELECT {LEASED_COLUMNS} FROM jobs WHERE id = $1{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    let row = tx
        .db
        .query_opt(&sql, &[&id.as_str()])?
        .ok_or_else(|| QueueError::job_not_found(id))?;
    let status: String = row.try_get(0)?;
    let attempt: Option<i64> = row.try_get(3)?;
    LeasedJob::decode(
        id,
        &status,
        row.try_get(1)?,
        row.try_get(2)?,
        attempt.map(|v| count(v, "lease_attempt")).transpose()?,
        row.try_get(4)?,
        row.try_get(5)?,
        row.try_get(6)?,
    )
}

/// The job `id`, row-locked for a transition, or NotFound.
pub(crate) fn i_locked_job(tx: &mut PgTx<'_>, id: &JobId) -> Result<JobRow, QueueError> {
    i_job_row(tx, id, true)?.ok_or_else(|| QueueError::job_not_found(id))
}

/// The job `id` without a lock (reads), or NotFound.
pub(crate) fn i_existing_job(tx: &mut PgTx<'_>, id: &JobId) -> Result<JobRow, QueueError> {
    i_job_row(tx, id, false)?.ok_or_else(|| QueueError::job_not_found(id))
}

/// Inserts `spec` as a new pending job. Ok(false), and nothing written, when a job with
/// its ID exists already.
pub(crate) fn i_insert_job(tx: &mut PgTx<'_>, spec: &JobSpec) -> Result<bool, QueueError> {
    let inserted = i_execute_with_spec(
        tx,
        "INSERT INTO jobs (id, spec, status, priority, manifest_order, model, mode, \
         require_cuda, prefer_cuda, min_vram_gib, min_ram_gib, allowed_hosts, created_at, \
         updated_at, pending_since, placement) \
         VALUES ($1, $2, 'pending', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12, $12, $13) \
         ON CONFLICT (id) DO NOTHING",
        spec,
    )?;
    Ok(inserted == 1)
}

/// Stores `spec` and its indexed copies.
pub(crate) fn i_write_spec(tx: &mut PgTx<'_>, spec: &JobSpec) -> Result<(), QueueError> {
    i_execute_with_spec(
        tx,
        "UPDATE jobs SET spec = $2, priority = $3, manifest_order = $4, model = $5, \
         mode = $6, require_cuda = $7, prefer_cuda = $8, min_vram_gib = $9, \
         min_ram_gib = $10, allowed_hosts = $11, updated_at = $12, placement = $13 \
         WHERE id = $1",
        spec,
    )?;
    Ok(())
}

/// Runs `sql` with a spec's columns bound as SQLite's `i_execute_with_spec` binds them.
fn i_execute_with_spec(tx: &mut PgTx<'_>, sql: &str, spec: &JobSpec) -> Result<u64, QueueError> {
    let json = serde_json::to_string(spec).map_err(|e| QueueError::corrupt(e.to_string()))?;
    let allowed = serde_json::to_string(&spec.constraints.allowed_hosts)
        .map_err(|e| QueueError::corrupt(e.to_string()))?;
    let c = &spec.constraints;
    let placement = Placement::of(c).to_column()?;
    let priority = i64::from(spec.priority);
    let order = big(spec.manifest_order);
    Ok(tx.db.execute(
        sql,
        &[
            &spec.id.as_str(),
            &json,
            &priority,
            &order,
            &spec.model,
            &spec.mode,
            &c.require_cuda,
            &c.prefer_cuda,
            &c.min_vram_gib,
            &c.min_ram_gib,
            &allowed,
            &tx.now,
            &placement,
        ],
    )?)
}

/// Back to pending: the lease is dropped and the prefer_cuda wait starts again.
pub(crate) fn i_to_pending(tx: &mut PgTx<'_>, id: &JobId) -> Result<(), QueueError> {
    tx.db.execute(
        "UPDATE jobs SET status = 'pending', lease_attempt = NULL, lease_token = NULL, \
         lease_expires_at = NULL, pending_since = $2, updated_at = $2 WHERE id = $1",
        &[&id.as_str(), &tx.now],
    )?;
    Ok(())
}

/// Terminal: failed, lease dropped.
pub(crate) fn i_to_failed(tx: &mut PgTx<'_>, id: &JobId) -> Result<(), QueueError> {
    tx.db.execute(
        "UPDATE jobs SET status = 'failed', lease_attempt = NULL, lease_token = NULL, \
         lease_expires_at = NULL, finished_at = $2, updated_at = $2 WHERE id = $1",
        &[&id.as_str(), &tx.now],
    )?;
    Ok(())
}

/// Sets one BIGINT column of the job (`column` is one of this module's callers' literals).
pub(crate) fn i_set_count(
    tx: &mut PgTx<'_>,
    id: &JobId,
    column: &'static str,
    value: u32,
) -> Result<(), QueueError> {
    let sql = format!("UPDATE jobs SET {column} = $2 WHERE id = $1");
    tx.db.execute(&sql, &[&id.as_str(), &i64::from(value)])?;
    Ok(())
}

pub(crate) fn i_set_error(
    tx: &mut PgTx<'_>,
    id: &JobId,
    reason: &str,
    exit_code: Option<i32>,
    log_tail: Option<&str>,
) -> Result<(), QueueError> {
    let exit_code = exit_code.map(i64::from);
    tx.db.execute(
        "UPDATE jobs SET error_reason = $2, error_exit_code = $3, error_log_tail = $4 \
         WHERE id = $1",
        &[&id.as_str(), &reason, &exit_code, &log_tail],
    )?;
    Ok(())
}

/// A JSON value for a TEXT column.
pub(crate) fn to_json(value: &impl serde::Serialize) -> Result<String, QueueError> {
    serde_json::to_string(value).map_err(|e| QueueError::corrupt(e.to_string()))
}

/// A TEXT column's JSON value.
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(
    what: &str,
    text: &str,
) -> Result<T, QueueError> {
    serde_json::from_str(text).map_err(|e| QueueError::corrupt(format!("{what}: {e}")))
}
