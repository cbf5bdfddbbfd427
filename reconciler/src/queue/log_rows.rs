//! SQLite's rows of the logs: [`LogRows`] for the shared rules of `logs.rs`, and the
//! reader's pages.

use cis490_api::{JobId, LogPage, LogQuery, WorkerName};
use rusqlite::{params, OptionalExtension};

use super::log_pages::{self, Page};
use super::logs::{to_i64, to_u64, LogRow, LogRows};
use super::rows::i_existing_job;
use super::{QueueError, Tx};

fn i_log_row(tx: &Tx<'_>, id: &JobId, attempt: u32) -> Result<Option<LogRow>, QueueError> {
    Ok(tx
        .db
        .prepare_cached(
            "SELECT lease_token, source_next, size, kept_bytes, dropped FROM job_logs \
             WHERE job_id = ?1 AND attempt = ?2",
        )?
        .query_row(params![id.as_str(), attempt], |r| {
            Ok(LogRow {
                lease_token: r.get(0)?,
                source_next: to_u64(r.get(1)?),
                size: to_u64(r.get(2)?),
                kept: to_u64(r.get(3)?),
                dropped: to_u64(r.get(4)?),
            })
        })
        .optional()?)
}

impl LogRows for Tx<'_> {
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
        self.db
            .prepare_cached(
                "INSERT INTO job_logs (job_id, attempt, worker, lease_token, source_next, \
                 size, kept_bytes, dropped, updated_at) VALUES (?1, ?2, ?3, ?4, 0, 0, 0, 0, ?5)",
            )?
            .execute(params![
                id.as_str(),
                attempt,
                worker.as_str(),
                lease_token,
                self.now
            ])?;
        Ok(())
    }

    fn update_log_row(
        &mut self,
        id: &JobId,
        attempt: u32,
        worker: &WorkerName,
        row: &LogRow,
    ) -> Result<(), QueueError> {
        self.db
            .prepare_cached(
                "UPDATE job_logs SET worker = ?3, lease_token = ?4, source_next = ?5, size = ?6, \
                 kept_bytes = ?7, dropped = ?8, updated_at = ?9 \
                 WHERE job_id = ?1 AND attempt = ?2",
            )?
            .execute(params![
                id.as_str(),
                attempt,
                worker.as_str(),
                row.lease_token,
                to_i64(row.source_next),
                to_i64(row.size),
                to_i64(row.kept),
                to_i64(row.dropped),
                self.now
            ])?;
        Ok(())
    }

    fn insert_chunk(
        &mut self,
        id: &JobId,
        attempt: u32,
        start: u64,
        text: &str,
    ) -> Result<(), QueueError> {
        self.db
            .prepare_cached(
                "INSERT INTO job_log_chunks (job_id, attempt, start, data) \
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![
                id.as_str(),
                attempt,
                to_i64(start),
                text.as_bytes()
            ])?;
        Ok(())
    }

    fn chunks_ending_past(
        &mut self,
        id: &JobId,
        attempt: u32,
        offset: u64,
    ) -> Result<Vec<(i64, Vec<u8>)>, QueueError> {
        let mut stmt = self.db.prepare_cached(
            "SELECT start, data FROM job_log_chunks WHERE job_id = ?1 AND attempt = ?2 \
             AND start + length(data) > ?3 ORDER BY start",
        )?;
        let rows = stmt.query_map(params![id.as_str(), attempt, to_i64(offset)], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn delete_chunk(&mut self, id: &JobId, attempt: u32, start: i64) -> Result<(), QueueError> {
        self.db
            .prepare_cached(
                "DELETE FROM job_log_chunks WHERE job_id = ?1 AND attempt = ?2 AND start = ?3",
            )?
            .execute(params![id.as_str(), attempt, start])?;
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
        self.db
            .prepare_cached(
                "UPDATE job_log_chunks SET start = ?4, data = ?5 \
                 WHERE job_id = ?1 AND attempt = ?2 AND start = ?3",
            )?
            .execute(params![id.as_str(), attempt, start, new_start, rest])?;
        Ok(())
    }

    fn job_log_tail(&mut self, id: &JobId) -> Result<Option<String>, QueueError> {
        Ok(self
            .db
            .prepare_cached("SELECT log_tail FROM jobs WHERE id = ?1")?
            .query_row([id.as_str()], |r| r.get(0))?)
    }

    fn set_job_log_tail(&mut self, id: &JobId, tail: &str) -> Result<(), QueueError> {
        self.db
            .prepare_cached("UPDATE jobs SET log_tail = ?2 WHERE id = ?1")?
            .execute(params![id.as_str(), tail])?;
        Ok(())
    }
}

/// The attempts of `id` that have a log, oldest first.
fn i_log_attempts(tx: &Tx<'_>, id: &JobId) -> Result<Vec<u32>, QueueError> {
    let mut stmt = tx
        .db
        .prepare_cached("SELECT attempt FROM job_logs WHERE job_id = ?1 ORDER BY attempt")?;
    let rows = stmt.query_map([id.as_str()], |r| r.get::<_, u32>(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// One page of an attempt's log (see [`LogPage`] and [`super::log_pages`]); the chunks
/// are read only as far as the page goes.
pub(crate) fn i_read(tx: &Tx<'_>, id: &JobId, query: &LogQuery) -> Result<LogPage, QueueError> {
    let job = i_existing_job(tx, id)?;
    let attempts = i_log_attempts(tx, id)?;
    let start = log_pages::start(id, job.status, job.lease_attempt, attempts, query);
    let Some(attempt) = start.attempt else {
        return Ok(start.page);
    };
    let row = i_log_row(tx, id, attempt)?;
    let mut fill = match start.with_log(row.map(|r| (r.size, r.dropped)))? {
        Page::Ready(page) => return Ok(page),
        Page::Fill(fill) => fill,
    };
    let mut stmt = tx.db.prepare_cached(
        "SELECT start, data FROM job_log_chunks WHERE job_id = ?1 AND attempt = ?2 \
         AND start + length(data) > ?3 ORDER BY start",
    )?;
    let mut rows = stmt.query(params![id.as_str(), attempt, to_i64(fill.offset())])?;
    while let Some(r) = rows.next()? {
        if !fill.push(to_u64(r.get(0)?), r.get(1)?)? {
            break;
        }
    }
    Ok(fill.finish())
}
