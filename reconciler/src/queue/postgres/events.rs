//! Reading the event log on PostgreSQL (appending is `PgTx::event`; numbering, `sequencer.rs`).

use cis490_api::{Event, EventsPage, JobId, WorkerName};
use postgres::Row;

use super::tx::PgTx;
use crate::queue::events::{EventFilter, WORKER_FILTER_WINDOW};
use crate::queue::rows::from_ms;
use crate::queue::QueueError;

const EVENT_COLUMNS: &str = "seq, at, job_id, worker, kind, message";

fn decode(r: &Row) -> Result<Event, QueueError> {
    // NULL: committed, not numbered yet (a job's own events show it; see `i_job_events`).
    let seq: i64 = r.try_get::<_, Option<i64>>(0)?.unwrap_or(0);
    let job: Option<String> = r.try_get(2)?;
    let worker: Option<String> = r.try_get(3)?;
    Ok(Event {
        seq: seq.max(0) as u64,
        at: from_ms(r.try_get(1)?),
        job_id: job
            .as_deref()
            .map(JobId::parse)
            .transpose()
            .map_err(QueueError::corrupt)?,
        worker: worker
            .as_deref()
            .map(WorkerName::parse)
            .transpose()
            .map_err(QueueError::corrupt)?,
        kind: r.try_get(4)?,
        message: r.try_get(5)?,
    })
}

/// All events of one job, oldest first.
pub(crate) fn i_job_events(tx: &mut PgTx<'_>, id: &JobId) -> Result<Vec<Event>, QueueError> {
    // Committed events not numbered yet too (seq 0, last): the job row a reader sees and
    // its events come from one snapshot, so a change is never shown without its event.
    let sql =
        format!("SELECT {EVENT_COLUMNS} FROM events WHERE job_id = $1 ORDER BY seq NULLS LAST, id");
    tx.db
        .query(&sql, &[&id.as_str()])?
        .iter()
        .map(decode)
        .collect()
}

/// The seq of the last committed event (0 for none).
pub(crate) fn i_head(tx: &mut PgTx<'_>) -> Result<u64, QueueError> {
    let n: i64 = tx
        .db
        .query_one("SELECT n FROM event_seq WHERE id = 1", &[])?
        .try_get(0)?;
    Ok(n.max(0) as u64)
}

/// Up to `limit` events after `since` that `filter` keeps, with the same `next` rule as
/// SQLite's `i_events_since` (a worker-only filter looks at a bounded window).
pub(crate) fn i_events_since(
    tx: &mut PgTx<'_>,
    since: u64,
    limit: usize,
    filter: &EventFilter,
) -> Result<EventsPage, QueueError> {
    let since_i = i64::try_from(since).unwrap_or(i64::MAX);
    let limit_i = i64::try_from(limit).unwrap_or(i64::MAX);
    let job = filter.job.as_ref().map(JobId::as_str);
    let worker = filter.worker.as_ref().map(WorkerName::as_str);
    let window_end = since.saturating_add(WORKER_FILTER_WINDOW);
    let window_end_i = i64::try_from(window_end).unwrap_or(i64::MAX);
    let worker_only = job.is_none() && worker.is_some();
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE seq > $1 \
         AND ($3::text IS NULL OR job_id = $3) AND ($4::text IS NULL OR worker = $4) \
         AND (NOT $5 OR seq <= $6) ORDER BY seq LIMIT $2"
    );
    let events = tx
        .db
        .query(
            &sql,
            &[
                &since_i,
                &limit_i,
                &job,
                &worker,
                &worker_only,
                &window_end_i,
            ],
        )?
        .iter()
        .map(decode)
        .collect::<Result<Vec<_>, _>>()?;
    let next = match events.last() {
        Some(last) if events.len() >= limit => last.seq,
        _ => {
            let head = since.max(i_head(tx)?);
            if worker_only {
                head.min(window_end)
            } else {
                head
            }
        }
    };
    Ok(EventsPage { events, next })
}
