//! Each attempt's whole log, as its agent streams it (schema migration 8).
//!
//! The agent sends the bytes of its trainer's log file after the offset the server last
//! acknowledged, in chunks that ride on heartbeats, so every append is fenced by the lease
//! and commits with it: a crash loses nothing that was acknowledged, and a stale lease
//! appends nothing. A chunk that does not start where the server's copy ends (a resend
//! after a lost answer) is ignored; the answer's offset tells the agent where to go on.
//!
//! A log is capped at `max_log_bytes_per_attempt`: the first half of the cap is kept as it
//! came, and past that only the latest part is, so both how a run started and how it ended
//! survive. What is dropped from the middle reads as one
//! `[... truncated: N bytes dropped ...]` line.
//!
//! Offsets for readers count bytes of the log as kept (UTF-8 text); the lease's own file
//! offsets (`source_next`) only serve the acknowledgements. When an attempt number is
//! leased again (a lease handed back, or a requeued job) the new lease's log goes on after
//! a separator line.

use cis490_api::{JobId, Lease, LogChunk, LogPage, LogQuery, WorkerName};
use rusqlite::{params, OptionalExtension};

use super::log_pages::{self, Page};
use super::rows::i_existing_job;
use super::{QueueError, Tx};

/// Default cap of one attempt's log.
pub const DEFAULT_MAX_LOG_BYTES_PER_ATTEMPT: u64 = 16 * 1024 * 1024;
/// Default and largest page of `GET /v1/job/{id}/log`.
pub const DEFAULT_LOG_PAGE_BYTES: u64 = 256 * 1024;
pub const MAX_LOG_PAGE_BYTES: u64 = 1024 * 1024;
/// How much of the log's end the job row keeps as `log_tail` (older views show it).
pub(crate) const LOG_TAIL_BYTES: usize = 4096;
/// After trimming the front of the kept tail, start at the next line if one starts this
/// close, so the first kept line is whole.
pub(crate) const LINE_SNAP_BYTES: usize = 4096;

/// The log row of one (job, attempt).
struct LogRow {
    lease_token: String,
    source_next: u64,
    size: u64,
    kept: u64,
    dropped: u64,
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

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

/// The largest char boundary of `s` at or below `at`.
pub(crate) fn floor_boundary(s: &str, at: usize) -> usize {
    let mut at = at.min(s.len());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// The smallest char boundary of `s` at or above `at`.
pub(crate) fn ceil_boundary(s: &str, at: usize) -> usize {
    let mut at = at.min(s.len());
    while !s.is_char_boundary(at) {
        at += 1;
    }
    at
}

/// How far the server holds this lease's log file: where its next chunk must start.
pub(crate) fn i_source_next(tx: &Tx<'_>, id: &JobId, lease: &Lease) -> Result<u64, QueueError> {
    Ok(match i_log_row(tx, id, lease.attempt)? {
        Some(row) if row.lease_token == lease.token => row.source_next,
        _ => 0,
    })
}

/// Appends `chunk` of `lease`'s log (the caller has checked the lease in this
/// transaction) and answers how far the server now holds the lease's log file.
pub(crate) fn i_append(
    tx: &Tx<'_>,
    id: &JobId,
    worker: &WorkerName,
    lease: &Lease,
    chunk: &LogChunk,
    cap: u64,
) -> Result<u64, QueueError> {
    if chunk.to < chunk.from {
        return Err(QueueError::BadRequest {
            message: format!(
                "log chunk ends ({}) before it starts ({})",
                chunk.to, chunk.from
            ),
        });
    }
    let mut row = match i_log_row(tx, id, lease.attempt)? {
        Some(row) => row,
        None => {
            tx.db
                .prepare_cached(
                    "INSERT INTO job_logs (job_id, attempt, worker, lease_token, source_next, \
                     size, kept_bytes, dropped, updated_at) VALUES (?1, ?2, ?3, ?4, 0, 0, 0, 0, ?5)",
                )?
                .execute(params![
                    id.as_str(),
                    lease.attempt,
                    worker.as_str(),
                    lease.token,
                    tx.now
                ])?;
            LogRow {
                lease_token: lease.token.clone(),
                source_next: 0,
                size: 0,
                kept: 0,
                dropped: 0,
            }
        }
    };
    let mut text = String::new();
    if row.lease_token != lease.token {
        // The attempt number was leased again: its new log goes on after the old one.
        if row.size > 0 {
            text.push_str(&format!(
                "\n--- attempt {} leased again, to {worker}; its log follows ---\n",
                lease.attempt
            ));
        }
        row.lease_token = lease.token.clone();
        row.source_next = 0;
    }
    if chunk.from != row.source_next {
        // A resend of what is already here (its answer was lost), or a chunk past a gap:
        // nothing is appended, and the answer says where the next chunk starts.
        if text.is_empty() {
            return Ok(row.source_next);
        }
    } else {
        text.push_str(&chunk.text);
        row.source_next = chunk.to;
    }
    i_append_text(tx, id, lease.attempt, &mut row, &text, cap)?;
    tx.db
        .prepare_cached(
            "UPDATE job_logs SET worker = ?3, lease_token = ?4, source_next = ?5, size = ?6, \
             kept_bytes = ?7, dropped = ?8, updated_at = ?9 WHERE job_id = ?1 AND attempt = ?2",
        )?
        .execute(params![
            id.as_str(),
            lease.attempt,
            worker.as_str(),
            row.lease_token,
            to_i64(row.source_next),
            to_i64(row.size),
            to_i64(row.kept),
            to_i64(row.dropped),
            tx.now
        ])?;
    if !text.is_empty() {
        i_update_tail(tx, id, &text)?;
    }
    Ok(row.source_next)
}

fn i_insert_chunk(
    tx: &Tx<'_>,
    id: &JobId,
    attempt: u32,
    start: u64,
    text: &str,
) -> Result<(), QueueError> {
    tx.db
        .prepare_cached(
            "INSERT INTO job_log_chunks (job_id, attempt, start, data) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![
            id.as_str(),
            attempt,
            to_i64(start),
            text.as_bytes()
        ])?;
    Ok(())
}

/// Stores `text` at the log's end, then drops the oldest part past the first half of the
/// cap until what is kept fits the cap.
fn i_append_text(
    tx: &Tx<'_>,
    id: &JobId,
    attempt: u32,
    row: &mut LogRow,
    text: &str,
    cap: u64,
) -> Result<(), QueueError> {
    if text.is_empty() {
        return Ok(());
    }
    let head_limit = cap / 2;
    let mut rest = text;
    if row.size < head_limit {
        // The head is never trimmed: split the text where the head ends.
        let room = usize::try_from(head_limit - row.size).unwrap_or(usize::MAX);
        let cut = floor_boundary(rest, room);
        if cut > 0 {
            i_insert_chunk(tx, id, attempt, row.size, &rest[..cut])?;
            row.size += cut as u64;
            row.kept += cut as u64;
            rest = &rest[cut..];
        }
    }
    if !rest.is_empty() {
        i_insert_chunk(tx, id, attempt, row.size, rest)?;
        row.size += rest.len() as u64;
        row.kept += rest.len() as u64;
    }
    if row.kept > cap {
        i_trim_tail(tx, id, attempt, row, head_limit, row.kept - cap)?;
    }
    Ok(())
}

/// Drops `need` bytes (rounded up to a char, then to the next line when one starts soon)
/// from the front of the kept tail: the chunks that end past `head_limit`.
fn i_trim_tail(
    tx: &Tx<'_>,
    id: &JobId,
    attempt: u32,
    row: &mut LogRow,
    head_limit: u64,
    mut need: u64,
) -> Result<(), QueueError> {
    let chunks: Vec<(i64, Vec<u8>)> = {
        let mut stmt = tx.db.prepare_cached(
            "SELECT start, data FROM job_log_chunks WHERE job_id = ?1 AND attempt = ?2 \
             AND start + length(data) > ?3 ORDER BY start",
        )?;
        let rows = stmt.query_map(params![id.as_str(), attempt, to_i64(head_limit)], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
        rows.collect::<Result<_, _>>()?
    };
    for (start, data) in chunks {
        if need == 0 {
            break;
        }
        let len = data.len() as u64;
        if len <= need {
            tx.db
                .prepare_cached(
                    "DELETE FROM job_log_chunks WHERE job_id = ?1 AND attempt = ?2 AND start = ?3",
                )?
                .execute(params![id.as_str(), attempt, start])?;
            need -= len;
            row.kept -= len;
            row.dropped += len;
            continue;
        }
        let text = String::from_utf8(data)
            .map_err(|e| QueueError::corrupt(format!("log of job {}: {e}", id.short())))?;
        let mut cut = ceil_boundary(&text, usize::try_from(need).unwrap_or(usize::MAX));
        if let Some(nl) = text[cut..].find('\n').filter(|nl| *nl < LINE_SNAP_BYTES) {
            if cut + nl + 1 < text.len() {
                cut += nl + 1;
            }
        }
        tx.db
            .prepare_cached(
                "UPDATE job_log_chunks SET start = ?4, data = ?5 \
                 WHERE job_id = ?1 AND attempt = ?2 AND start = ?3",
            )?
            .execute(params![
                id.as_str(),
                attempt,
                start,
                start.saturating_add(cut as i64),
                &text.as_bytes()[cut..]
            ])?;
        row.kept -= cut as u64;
        row.dropped += cut as u64;
        need = 0;
    }
    Ok(())
}

/// Keeps the job row's `log_tail` (what older views show) at the end of the log.
fn i_update_tail(tx: &Tx<'_>, id: &JobId, appended: &str) -> Result<(), QueueError> {
    let old: Option<String> = tx
        .db
        .prepare_cached("SELECT log_tail FROM jobs WHERE id = ?1")?
        .query_row([id.as_str()], |r| r.get(0))?;
    let mut tail = old.unwrap_or_default();
    tail.push_str(appended);
    if tail.len() > LOG_TAIL_BYTES {
        let start = ceil_boundary(&tail, tail.len() - LOG_TAIL_BYTES);
        let start = match tail[start..].find('\n') {
            Some(nl) if start + nl + 1 < tail.len() => start + nl + 1,
            _ => start,
        };
        tail.drain(..start);
    }
    tx.db
        .prepare_cached("UPDATE jobs SET log_tail = ?2 WHERE id = ?1")?
        .execute(params![id.as_str(), tail])?;
    Ok(())
}

/// The attempts of `id` that have a log, oldest first.
fn i_log_attempts(tx: &Tx<'_>, id: &JobId) -> Result<Vec<u32>, QueueError> {
    let mut stmt = tx
        .db
        .prepare_cached("SELECT attempt FROM job_logs WHERE job_id = ?1 ORDER BY attempt")?;
    let rows = stmt.query_map([id.as_str()], |r| r.get::<_, u32>(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// One page of an attempt's log (see [`LogPage`] and [`super::log_pages`]).
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

pub(crate) fn past_the_end(offset: u64, size: u64) -> QueueError {
    QueueError::BadRequest {
        message: format!("offset {offset} is past the end of the log ({size} bytes)"),
    }
}
