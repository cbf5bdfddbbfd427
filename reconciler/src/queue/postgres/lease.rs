//! PostgreSQL's rows for the worker's calls (`queue/lease.rs` writes each call once over
//! [`LeaseWrites`]). The row a transition reads is locked (`FOR UPDATE`), so no other
//! server changes it before the transaction ends.

use cis490_api::{
    ArtifactId, FailRequest, JobId, JobStatusResponse, Lease, Metrics, TrainerReport, WorkerName,
};

use super::failures::{i_host_failure, i_record_failure};
use super::nodes::{i_clear_host_problem, i_touch_worker};
use super::results::{i_record_outcome, i_record_progress};
use super::rows::{
    big, i_fence_columns, i_locked_job, i_set_count, i_set_error, i_to_failed, i_to_pending,
};
use super::tx::PgTx;
use crate::queue::lease::LeaseWrites;
use crate::queue::rows::{JobRow, LeasedJob};
use crate::queue::transitions::Emit;
use crate::queue::QueueError;

/// The job's fence columns, when `lease` is its current lease held by `worker` (a read:
/// uploads check before they stream, and `lease::i_record_upload` checks again under the
/// row lock).
pub(crate) fn i_check_lease(
    tx: &mut PgTx<'_>,
    id: &JobId,
    worker: &WorkerName,
    lease: &Lease,
) -> Result<LeasedJob, QueueError> {
    i_fence_columns(tx, id, false)?.checked(worker, lease)
}

impl LeaseWrites for PgTx<'_> {
    fn job_for_transition(&mut self, id: &JobId) -> Result<JobRow, QueueError> {
        i_locked_job(self, id)
    }

    fn fence_for_write(&mut self, id: &JobId) -> Result<LeasedJob, QueueError> {
        i_fence_columns(self, id, true)
    }

    fn touch_worker(&mut self, worker: &str) -> Result<(), QueueError> {
        i_touch_worker(self, worker)
    }

    fn record_progress(
        &mut self,
        id: &JobId,
        worker: &WorkerName,
        lease: &Lease,
        point: &Metrics,
    ) -> Result<(), QueueError> {
        i_record_progress(self, id, worker, lease, point)
    }

    fn extend_lease(&mut self, id: &JobId, expires_at: i64) -> Result<(), QueueError> {
        let now = self.now;
        self.db.execute(
            "UPDATE jobs SET lease_expires_at = $2, updated_at = $3 WHERE id = $1",
            &[&id.as_str(), &expires_at, &now],
        )?;
        Ok(())
    }

    fn mark_running(&mut self, id: &JobId) -> Result<(), QueueError> {
        let now = self.now;
        self.db.execute(
            "UPDATE jobs SET status = 'running', started_at = $2 WHERE id = $1",
            &[&id.as_str(), &now],
        )?;
        Ok(())
    }

    fn emit(&mut self, id: &JobId, event: Emit<'_>) -> Result<(), QueueError> {
        PgTx::emit(self, id, event);
        Ok(())
    }

    fn insert_upload(
        &mut self,
        id: &JobId,
        worker: &WorkerName,
        lease: &Lease,
        artifact: &ArtifactId,
        size_bytes: u64,
    ) -> Result<(), QueueError> {
        let now = self.now;
        self.db.execute(
            "INSERT INTO uploads (job_id, attempt, lease_token, artifact_id, worker, size_bytes, \
             at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (job_id, lease_token, artifact_id) DO NOTHING",
            &[
                &id.as_str(),
                &i64::from(lease.attempt),
                &lease.token,
                &artifact.as_str(),
                &worker.as_str(),
                &big(size_bytes),
                &now,
            ],
        )?;
        Ok(())
    }

    fn uploads_under(&mut self, id: &JobId, token: &str) -> Result<Vec<String>, QueueError> {
        self.db
            .query(
                "SELECT artifact_id FROM uploads WHERE job_id = $1 AND lease_token = $2 \
                 ORDER BY id",
                &[&id.as_str(), &token],
            )?
            .iter()
            .map(|r| Ok(r.try_get(0)?))
            .collect()
    }

    fn other_uploader(
        &mut self,
        artifact: &ArtifactId,
        id: &JobId,
    ) -> Result<Option<String>, QueueError> {
        match self.db.query_opt(
            "SELECT job_id FROM uploads WHERE artifact_id = $1 AND job_id <> $2 \
             ORDER BY id LIMIT 1",
            &[&artifact.as_str(), &id.as_str()],
        )? {
            Some(r) => Ok(Some(r.try_get(0)?)),
            None => Ok(None),
        }
    }

    fn clear_host_problem(&mut self, worker: &str) -> Result<(), QueueError> {
        i_clear_host_problem(self, worker)
    }

    fn mark_completed(
        &mut self,
        id: &JobId,
        artifact: Option<&ArtifactId>,
    ) -> Result<(), QueueError> {
        let now = self.now;
        self.db.execute(
            "UPDATE jobs SET status = 'completed', artifact_id = $2, lease_attempt = NULL, \
             lease_token = NULL, lease_expires_at = NULL, error_reason = NULL, \
             error_exit_code = NULL, error_log_tail = NULL, finished_at = $3, updated_at = $3 \
             WHERE id = $1",
            &[&id.as_str(), &artifact.map(|a| a.as_str()), &now],
        )?;
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
        i_record_outcome(self, row, worker, lease, outcome, report, artifact)
    }

    fn host_failure(
        &mut self,
        id: &JobId,
        row: &JobRow,
        req: &FailRequest,
    ) -> Result<JobStatusResponse, QueueError> {
        i_host_failure(self, id, row, req)
    }

    fn record_trainer_failure(
        &mut self,
        id: &JobId,
        worker: &str,
        reason: &str,
    ) -> Result<(), QueueError> {
        i_record_failure(self, id, worker, false, reason)
    }

    fn set_attempts(&mut self, id: &JobId, attempts: u32) -> Result<(), QueueError> {
        i_set_count(self, id, "attempts", attempts)
    }

    fn set_trainer_failures(&mut self, id: &JobId, failures: u32) -> Result<(), QueueError> {
        i_set_count(self, id, "trainer_failures", failures)
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
