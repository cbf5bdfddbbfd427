//! Each attempt's whole log on PostgreSQL, as its agent streams it on heartbeats: the
//! rules (resends ignored, the cap's kept head and tail, the separator of a re-leased
//! attempt, the pages readers get) are SQLite's `logs.rs`, whose helpers these share.
//! Every append runs under the job's row lock, which the heartbeat took.

use cis490_api::{JobId, Lease, LogChunk, LogPage, LogQuery, WorkerName};

use super::rows::{big, count, i_existing_job};
use super::tx::PgTx;
use crate::queue::log_pages::{self, Page};
use crate::queue::logs::{ceil_boundary, floor_boundary, LINE_SNAP_BYTES, LOG_TAIL_BYTES};
use crate::queue::QueueError;

struct LogRow {
    lease_token: String,
    source_next: u64,
    size: u64,
    kept: u64,
    dropped: u64,
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

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

/// How far the server holds this lease's log file: where its next chunk must start.
pub(crate) fn i_source_next(
    tx: &mut PgTx<'_>,
    id: &JobId,
    lease: &Lease,
) -> Result<u64, QueueError> {
    Ok(match i_log_row(tx, id, lease.attempt)? {
        Some(row) if row.lease_token == lease.token => row.source_next,
        _ => 0,
    })
}

/// Appends `chunk` of `lease`'s log (the caller checked the lease under the job's row
/// lock) and answers how far the server now holds the lease's log file.
pub(crate) fn i_append(
    tx: &mut PgTx<'_>,
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
    let attempt = i64::from(lease.attempt);
    let mut row = match i_log_row(tx, id, lease.attempt)? {
        Some(row) => row,
        None => {
            tx.db.execute(
                "INSERT INTO job_logs (job_id, attempt, worker, lease_token, source_next, \
                 size, kept_bytes, dropped, updated_at) VALUES ($1, $2, $3, $4, 0, 0, 0, 0, $5)",
                &[
                    &id.as_str(),
                    &attempt,
                    &worker.as_str(),
                    &lease.token,
                    &tx.now,
                ],
            )?;
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
        if text.is_empty() {
            return Ok(row.source_next);
        }
    } else {
        text.push_str(&chunk.text);
        row.source_next = chunk.to;
    }
    i_append_text(tx, id, lease.attempt, &mut row, &text, cap)?;
    tx.db.execute(
        "UPDATE job_logs SET worker = $3, lease_token = $4, source_next = $5, size = $6, \
         kept_bytes = $7, dropped = $8, updated_at = $9 WHERE job_id = $1 AND attempt = $2",
        &[
            &id.as_str(),
            &attempt,
            &worker.as_str(),
            &row.lease_token,
            &big(row.source_next),
            &big(row.size),
            &big(row.kept),
            &big(row.dropped),
            &tx.now,
        ],
    )?;
    if !text.is_empty() {
        i_update_tail(tx, id, &text)?;
    }
    Ok(row.source_next)
}

fn i_insert_chunk(
    tx: &mut PgTx<'_>,
    id: &JobId,
    attempt: u32,
    start: u64,
    text: &str,
) -> Result<(), QueueError> {
    tx.db.execute(
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

fn i_append_text(
    tx: &mut PgTx<'_>,
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

fn i_trim_tail(
    tx: &mut PgTx<'_>,
    id: &JobId,
    attempt: u32,
    row: &mut LogRow,
    head_limit: u64,
    mut need: u64,
) -> Result<(), QueueError> {
    let attempt = i64::from(attempt);
    let chunks: Vec<(i64, Vec<u8>)> = tx
        .db
        .query(
            "SELECT start, data FROM job_log_chunks WHERE job_id = $1 AND attempt = $2 \
             AND start + length(data) > $3 ORDER BY start",
            &[&id.as_str(), &attempt, &big(head_limit)],
        )?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<_, QueueError>>()?;
    for (start, data) in chunks {
        if need == 0 {
            break;
        }
        let len = data.len() as u64;
        if len <= need {
            tx.db.execute(
                "DELETE FROM job_log_chunks WHERE job_id = $1 AND attempt = $2 AND start = $3",
                &[&id.as_str(), &attempt, &start],
            )?;
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
        tx.db.execute(
            "UPDATE job_log_chunks SET start = $4, data = $5 \
             WHERE job_id = $1 AND attempt = $2 AND start = $3",
            &[
                &id.as_str(),
                &attempt,
                &start,
                &start.saturating_add(cut as i64),
                &&text.as_bytes()[cut..],
            ],
        )?;
        row.kept -= cut as u64;
        row.dropped += cut as u64;
        need = 0;
    }
    Ok(())
}

fn i_update_tail(tx: &mut PgTx<'_>, id: &JobId, appended: &str) -> Result<(), QueueError> {
    let old: Option<String> = tx
        .db
        .query_one("SELECT log_tail FROM jobs WHERE id = $1", &[&id.as_str()])?
        .try_get(0)?;
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
    tx.db.execute(
        "UPDATE jobs SET log_tail = $2 WHERE id = $1",
        &[&id.as_str(), &tail],
    )?;
    Ok(())
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
