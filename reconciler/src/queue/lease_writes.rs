//! SQLite's rows for the worker's calls (`lease.rs` writes each call once over
//! [`LeaseWrites`]). SQLite's write transaction excludes every other writer, so the job's
//! row needs no lock of its own.

use cis490_api::{
    ArtifactId, FailRequest, JobId, JobStatusResponse, Lease, Metrics, TrainerReport, WorkerName,
};
use rusqlite::{params, OptionalExtension};

use super::events::i_emit;
use super::lease::LeaseWrites;
use super::rows::{
    i_existing_job, i_fence_columns, i_set_attempts, i_set_error, i_to_failed, i_to_pending,
    JobRow, LeasedJob,
};
use super::transitions::Emit;
use super::{failures, nodes, results, QueueError, Tx};

/// The job's fence columns, when `lease` is its current lease held by `worker` (see
/// [`super::transitions::check_lease`]); a read.
pub(crate) fn i_leased_job(
    tx: &Tx<'_>,
    id: &JobId,
    worker: &WorkerName,
    lease: &Lease,
) -> Result<LeasedJob, QueueError> {
    i_fence_columns(tx, id)?.checked(worker, lease)
}

impl LeaseWrites for Tx<'_> {
    fn job_for_transition(&mut self, id: &JobId) -> Result<JobRow, QueueError> {
        i_existing_job(self, id)
    }

    fn fence_for_write(&mut self, id: &JobId) -> Result<LeasedJob, QueueError> {
        i_fence_columns(self, id)
    }

    fn touch_worker(&mut self, worker: &str) -> Result<(), QueueError> {
        nodes::i_touch_worker(self, worker)
    }

    fn record_progress(
        &mut self,
        id: &JobId,
        worker: &WorkerName,
        lease: &Lease,
        point: &Metrics,
    ) -> Result<(), QueueError> {
        results::i_record_progress(self, id, worker, lease, point)
    }

    fn extend_lease(&mut self, id: &JobId, expires_at: i64) -> Result<(), QueueError> {
        self.db
            .prepare_cached("UPDATE jobs SET lease_expires_at = ?2, updated_at = ?3 WHERE id = ?1")?
            .execute(params![id.as_str(), expires_at, self.now])?;
        Ok(())
    }

    fn mark_running(&mut self, id: &JobId) -> Result<(), QueueError> {
        self.db
            .prepare_cached("UPDATE jobs SET status = 'running', started_at = ?2 WHERE id = ?1")?
            .execute(params![id.as_str(), self.now])?;
        Ok(())
    }

    fn emit(&mut self, id: &JobId, event: Emit<'_>) -> Result<(), QueueError> {
        i_emit(self, id, event)
    }

    fn insert_upload(
        &mut self,
        id: &JobId,
        worker: &WorkerName,
        lease: &Lease,
        artifact: &ArtifactId,
        size_bytes: u64,
    ) -> Result<(), QueueError> {
        self.db
            .prepare_cached(
                "INSERT OR IGNORE INTO uploads (job_id, attempt, lease_token, artifact_id, \
                 worker, size_bytes, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                id.as_str(),
                lease.attempt,
                lease.token,
                artifact.as_str(),
                worker.as_str(),
                i64::try_from(size_bytes).unwrap_or(i64::MAX),
                self.now
            ])?;
        Ok(())
    }

    fn uploads_under(&mut self, id: &JobId, token: &str) -> Result<Vec<String>, QueueError> {
        // `+?1`, `+?2`: with a bare `column = ?N` this statement was compiled again on every
        // completion once the queue held jobs (see `matching::claim_query`); the index is
        // still searched on both columns.
        let mut stmt = self.db.prepare_cached(
            "SELECT artifact_id FROM uploads WHERE job_id = +?1 AND lease_token = +?2 \
             ORDER BY rowid",
        )?;
        let rows = stmt.query_map(params![id.as_str(), token], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn other_uploader(
        &mut self,
        artifact: &ArtifactId,
        id: &JobId,
    ) -> Result<Option<String>, QueueError> {
        Ok(self
            .db
            .prepare_cached(
                "SELECT job_id FROM uploads WHERE artifact_id = ?1 AND job_id <> ?2 \
                 ORDER BY rowid LIMIT 1",
            )?
            .query_row(params![artifact.as_str(), id.as_str()], |r| r.get(0))
            .optional()?)
    }

    fn clear_host_problem(&mut self, worker: &str) -> Result<(), QueueError> {
        nodes::i_clear_host_problem(self, worker)
    }

    fn mark_completed(
        &mut self,
        id: &JobId,
        artifact: Option<&ArtifactId>,
    ) -> Result<(), QueueError> {
        self.db
            .prepare_cached(
                "UPDATE jobs SET status = 'completed', artifact_id = ?2, lease_attempt = NULL, \
                 lease_token = NULL, lease_expires_at = NULL, error_reason = NULL, \
                 error_exit_code = NULL, error_log_tail = NULL, finished_at = ?3, \
                 updated_at = ?3 WHERE id = ?1",
            )?
            .execute(params![id.as_str(), artifact.map(|a| a.as_str()), self.now])?;
        Ok(())
    }

    fn record_outcome(
        &mut self,
        row: &JobRow,
        worker: &WorkerName,
        lease: &Lease,
        outcome: &str,
        report: &TrainerReport,
        artifact: Option<&ArtifactId>,
    ) -> Result<(), QueueError> {
        results::i_record_outcome(self, row, worker, lease, outcome, report, artifact)
    }

    fn host_failure(
        &mut self,
        id: &JobId,
        row: &JobRow,
        req: &FailRequest,
    ) -> Result<JobStatusResponse, QueueError> {
        failures::i_host_failure(self, id, row, req)
    }

    fn record_trainer_failure(
        &mut self,
        id: &JobId,
        worker: &str,
        reason: &str,
    ) -> Result<(), QueueError> {
        failures::i_record_failure(self, id, worker, false, reason)
    }

    fn set_attempts(&mut self, id: &JobId, attempts: u32) -> Result<(), QueueError> {
        i_set_attempts(self, id, attempts)
    }

    fn set_trainer_failures(&mut self, id: &JobId, failures: u32) -> Result<(), QueueError> {
        self.db
            .prepare_cached("UPDATE jobs SET trainer_failures = ?2 WHERE id = ?1")?
            .execute(params![id.as_str(), failures])?;
        Ok(())
    }

    fn set_error(
        &mut self,
        id: &JobId,
        reason: &str,
        exit_code: Option<i32>,
        log_tail: Option<&str>,
    ) -> Result<(), QueueError> {
        i_set_error(self, id, reason, exit_code, log_tail)
    }

    fn to_pending(&mut self, id: &JobId) -> Result<(), QueueError> {
        i_to_pending(self, id)
    }

    fn to_failed(&mut self, id: &JobId) -> Result<(), QueueError> {
        i_to_failed(self, id)
    }
}
