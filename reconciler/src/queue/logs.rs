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
//!
//! These rules are written once, over [`LogRows`] (SQLite's rows in `log_rows.rs`,
//! PostgreSQL's in `postgres/logs.rs`); each backend reads its pages itself, through the
//! shared page rules of `log_pages.rs`.

use cis490_api::{JobId, Lease, LogChunk, WorkerName};

use super::QueueError;

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
#[derive(Debug, Clone)]
pub(crate) struct LogRow {
    pub lease_token: String,
    /// Where the lease's next chunk of its log file must start.
    pub source_next: u64,
    /// Bytes of the log as kept plus those dropped: where the next text goes.
    pub size: u64,
    pub kept: u64,
    pub dropped: u64,
}

/// The rows of the logs, in one transaction of one backend. Chunks are keyed by the
/// offset (`start`) of their first byte.
pub(crate) trait LogRows {
    fn log_row(&mut self, id: &JobId, attempt: u32) -> Result<Option<LogRow>, QueueError>;
    /// A new, empty log row of `lease`'s attempt.
    fn insert_log_row(
        &mut self,
        id: &JobId,
        attempt: u32,
        worker: &WorkerName,
        lease_token: &str,
    ) -> Result<(), QueueError>;
    fn update_log_row(
        &mut self,
        id: &JobId,
        attempt: u32,
        worker: &WorkerName,
        row: &LogRow,
    ) -> Result<(), QueueError>;
    fn insert_chunk(
        &mut self,
        id: &JobId,
        attempt: u32,
        start: u64,
        text: &str,
    ) -> Result<(), QueueError>;
    /// The chunks that end past `offset`, by start.
    fn chunks_ending_past(
        &mut self,
        id: &JobId,
        attempt: u32,
        offset: u64,
    ) -> Result<Vec<(i64, Vec<u8>)>, QueueError>;
    fn delete_chunk(&mut self, id: &JobId, attempt: u32, start: i64) -> Result<(), QueueError>;
    /// Replaces the chunk at `start` with `rest`, its end, starting at `new_start`.
    fn cut_chunk(
        &mut self,
        id: &JobId,
        attempt: u32,
        start: i64,
        new_start: i64,
        rest: &[u8],
    ) -> Result<(), QueueError>;
    /// The job row's `log_tail`.
    fn job_log_tail(&mut self, id: &JobId) -> Result<Option<String>, QueueError>;
    fn set_job_log_tail(&mut self, id: &JobId, tail: &str) -> Result<(), QueueError>;
}

pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
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
pub(crate) fn i_source_next<T: LogRows + ?Sized>(
    tx: &mut T,
    id: &JobId,
    lease: &Lease,
) -> Result<u64, QueueError> {
    Ok(match tx.log_row(id, lease.attempt)? {
        Some(row) if row.lease_token == lease.token => row.source_next,
        _ => 0,
    })
}

/// Appends `chunk` of `lease`'s log (the caller has checked the lease in this
/// transaction) and answers how far the server now holds the lease's log file.
pub(crate) fn i_append<T: LogRows + ?Sized>(
    tx: &mut T,
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
    let mut row = match tx.log_row(id, lease.attempt)? {
        Some(row) => row,
        None => {
            tx.insert_log_row(id, lease.attempt, worker, &lease.token)?;
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
    append_text(tx, id, lease.attempt, &mut row, &text, cap)?;
    tx.update_log_row(id, lease.attempt, worker, &row)?;
    if !text.is_empty() {
        update_tail(tx, id, &text)?;
    }
    Ok(row.source_next)
}

/// Stores `text` at the log's end, then drops the oldest part past the first half of the
/// cap until what is kept fits the cap.
fn append_text<T: LogRows + ?Sized>(
    tx: &mut T,
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
            tx.insert_chunk(id, attempt, row.size, &rest[..cut])?;
            row.size += cut as u64;
            row.kept += cut as u64;
            rest = &rest[cut..];
        }
    }
    if !rest.is_empty() {
        tx.insert_chunk(id, attempt, row.size, rest)?;
        row.size += rest.len() as u64;
        row.kept += rest.len() as u64;
    }
    if row.kept > cap {
        trim_tail(tx, id, attempt, row, head_limit, row.kept - cap)?;
    }
    Ok(())
}

/// Drops `need` bytes (rounded up to a char, then to the next line when one starts soon)
/// from the front of the kept tail: the chunks that end past `head_limit`.
fn trim_tail<T: LogRows + ?Sized>(
    tx: &mut T,
    id: &JobId,
    attempt: u32,
    row: &mut LogRow,
    head_limit: u64,
    mut need: u64,
) -> Result<(), QueueError> {
    for (start, data) in tx.chunks_ending_past(id, attempt, head_limit)? {
        if need == 0 {
            break;
        }
        let len = data.len() as u64;
        if len <= need {
            tx.delete_chunk(id, attempt, start)?;
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
        tx.cut_chunk(
            id,
            attempt,
            start,
            start.saturating_add(cut as i64),
            &text.as_bytes()[cut..],
        )?;
        row.kept -= cut as u64;
        row.dropped += cut as u64;
        need = 0;
    }
    Ok(())
}

/// Keeps the job row's `log_tail` (what older views show) at the end of the log.
fn update_tail<T: LogRows + ?Sized>(
    tx: &mut T,
    id: &JobId,
    appended: &str,
) -> Result<(), QueueError> {
    let mut tail = tx.job_log_tail(id)?.unwrap_or_default();
    tail.push_str(appended);
    if tail.len() > LOG_TAIL_BYTES {
        let start = ceil_boundary(&tail, tail.len() - LOG_TAIL_BYTES);
        let start = match tail[start..].find('\n') {
            Some(nl) if start + nl + 1 < tail.len() => start + nl + 1,
            _ => start,
        };
        tail.drain(..start);
    }
    tx.set_job_log_tail(id, &tail)
}

pub(crate) fn past_the_end(offset: u64, size: u64) -> QueueError {
    QueueError::BadRequest {
        message: format!("offset {offset} is past the end of the log ({size} bytes)"),
    }
}
