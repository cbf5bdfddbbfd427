//! PostgreSQL's rows of the logs: [`LogRows`] for the shared rules of `queue/logs.rs`
//! (every append runs under the job's row lock, which the heartbeat took), and the
//! reader's pages.

use cis490_api::{JobId, LogPage, LogQuery, WorkerName};

use super::rows::{big, count, i_existing_job};
use super::tx::PgTx;
use crate::queue::log_pages::{self, Page};
use crate::queue::logs::{to_u64, LogRow, LogRows};
use crate::queue::QueueError;

fn i_log_row(tx: &mut PgTx<'_>, id: &JobId, attempt: u32) -> Result<Option<LogRow>, QueueError> {
    let Some(r) = tx.db.query_opt(
        "SELECT lease_token, source_next, size, kept_bytes, dropped FROM job_logs \
         WHERE job_id = $1 AND attempt = $2",
        &[&id.as_str(), &i64::from(attempt)],
    )?
    else {
        return Ok(None);
    };
    Ok(Some(LogRow {
        lease_token: r.try_get(0)?,
        source_next: to_u64(r.try_get(1)?),
        size: to_u64(r.try_get(2)?),
        kept: to_u64(r.try_get(3)?),
        dropped: to_u64(r.try_get(4)?),
    }))
}

impl LogRows for PgTx<'_> {
    fn log_row(&mut self, id: &JobId, attempt: u32) -> Result<Option<LogRow>, QueueError> {
        i_log_row(self, id, attempt)
    }

    fn insert_log_row(
        &mut self,
        id: &JobId,
        attempt: u32,
        worker: &WorkerName,
        lease_token: &str,
    ) -> Result<(), QueueError> {
        let now = self.now;
        self.db.execute(
            "INSERT INTO job_logs (job_id, attempt, worker, lease_token, source_next, \
             size, kept_bytes, dropped, updated_at) VALUES ($1, $2, $3, $4, 0, 0, 0, 0, $5)",
            &[
                &id.as_str(),
                &i64::from(attempt),
                &worker.as_str(),
                &lease_token,
                &now,
            ],
        )?;
        Ok(())
    }

    fn update_log_row(
        &mut self,
        id: &JobId,
        attempt: u32,
        worker: &WorkerName,
        row: &LogRow,
    ) -> Result<(), QueueError> {
        let now = self.now;
        self.db.execute(
            "UPDATE job_logs SET worker = $3, lease_token = $4, source_next = $5, size = $6, \
             kept_bytes = $7, dropped = $8, updated_at = $9 WHERE job_id = $1 AND attempt = $2",
            &[
                &id.as_str(),
                &i64::from(attempt),
                &worker.as_str(),
                &row.lease_token,
                &big(row.source_next),
                &big(row.size),
                &big(row.kept),
                &big(row.dropped),
                &now,
            ],
        )?;
        Ok(())
    }

    fn insert_chunk(
        &mut self,
        id: &JobId,
        attempt: u32,
        start: u64,
        text: &str,
    ) -> Result<(), QueueError> {
        self.db.execute(
            "INSERT INTO job_log_chunks (job_id, attempt, start, data) VALUES ($1, $2, $3, $4)",
            &[
                &id.as_str(),
                &i64::from(attempt),
                &big(start),
                &text.as_bytes(),
            ],
        )?;
        Ok(())
    }

    fn chunks_ending_past(
        &mut self,
        id: &JobId,
        attempt: u32,
        offset: u64,
    ) -> Result<Vec<(i64, Vec<u8>)>, QueueError> {
        self.db
            .query(
                "SELECT start, data FROM job_log_chunks WHERE job_id = $1 AND attempt = $2 \
                 AND start + length(data) > $3 ORDER BY start",
                &[&id.as_str(), &i64::from(attempt), &big(offset)],
            )?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    fn delete_chunk(&mut self, id: &JobId, attempt: u32, start: i64) -> Result<(), QueueError> {
        self.db.execute(
            "DELETE FROM job_log_chunks WHERE job_id = $1 AND attempt = $2 AND start = $3",
            &[&id.as_str(), &i64::from(attempt), &start],
        )?;
        Ok(())
    }

    fn cut_chunk(
        &mut self,
        id: &JobId,
        attempt: u32,
        start: i64,
        new_start: i64,
        rest: &[u8],
    ) -> Result<(), QueueError> {
        self.db.execute(
            "UPDATE job_log_chunks SET start = $4, data = $5 \
             WHERE job_id = $1 AND attempt = $2 AND start = $3",
            &[&id.as_str(), &i64::from(attempt), &start, &new_start, &rest],
        )?;
        Ok(())
    }

    fn job_log_tail(&mut self, id: &JobId) -> Result<Option<String>, QueueError> {
        Ok(self
            .db
            .query_one("SELECT log_tail FROM jobs WHERE id = $1", &[&id.as_str()])?
            .try_get(0)?)
    }

    fn set_job_log_tail(&mut self, id: &JobId, tail: &str) -> Result<(), QueueError> {
        self.db.execute(
            "UPDATE jobs SET log_tail = $2 WHERE id = $1",
            &[&id.as_str(), &tail],
        )?;
        Ok(())
    }
}

/// One page of an attempt's log (see [`LogPage`] and `queue::log_pages`).
pub(crate) fn i_read(
    tx: &mut PgTx<'_>,
    id: &JobId,
    query: &LogQuery,
) -> Result<LogPage, QueueError> {
    let job = i_existing_job(tx, id)?;
    let attempts: Vec<u32> = tx
        .db
        .query(
            "SELECT attempt FROM job_logs WHERE job_id = $1 ORDER BY attempt",
            &[&id.as_str()],
        )?
        .iter()
        .map(|r| count(r.try_get(0)?, "attempt"))
        .collect::<Result<_, _>>()?;
    let start = log_pages::start(id, job.status, job.lease_attempt, attempts, query);
    let Some(attempt) = start.attempt else {
        return Ok(start.page);
    };
    let row = i_log_row(tx, id, attempt)?;
    let mut fill = match start.with_log(row.map(|r| (r.size, r.dropped)))? {
        Page::Ready(page) => return Ok(page),
        Page::Fill(fill) => fill,
    };
    let rows = tx.db.query(
        "SELECT start, data FROM job_log_chunks WHERE job_id = $1 AND attempt = $2 \
         AND start + length(data) > $3 ORDER BY start",
        &[&id.as_str(), &i64::from(attempt), &big(fill.offset())],
    )?;
    for r in &rows {
        if !fill.push(to_u64(r.try_get(0)?), r.try_get(1)?)? {
            break;
        }
    }
    Ok(fill.finish())
}
