//! The event log: every transition appends one row, kept forever.

use cis490_api::{Event, EventsPage, JobId, WorkerName};
use rusqlite::params;

use super::rows::from_ms;
use super::{QueueError, Tx};

/// Event kinds, like Kubernetes event reasons.
pub(crate) mod kind {
    pub const CREATED: &str = "Created";
    pub const UPDATED: &str = "Updated";
    pub const TOMBSTONED: &str = "Tombstoned";
    pub const REVIVED: &str = "Revived";
    pub const CLAIMED: &str = "Claimed";
    pub const STARTED: &str = "Started";
    pub const COMPLETED: &str = "Completed";
    pub const FAILED: &str = "Failed";
    pub const RETRYING: &str = "Retrying";
    /// The host could not start the trainer: back to pending without using an attempt.
    pub const HOST_PROBLEM: &str = "HostProblem";
    pub const RELEASED: &str = "Released";
    pub const LEASE_EXPIRED: &str = "LeaseExpired";
    pub const CANCELLED: &str = "Cancelled";
    pub const REQUEUED: &str = "Requeued";
    /// An operator set a pending job aside (`cis490ctl hold`).
    pub const HELD: &str = "Held";
    /// An operator forgot a worker (`cis490ctl delete worker`).
    pub const WORKER_DELETED: &str = "WorkerDeleted";
    /// An operator let a held job go back to pending (`cis490ctl release`); not
    /// `Released`, which is an agent handing a lease back.
    pub const RELEASED_BY_OPERATOR: &str = "Unheld";
    pub const ORPHANED: &str = "Orphaned";
    pub const CORDONED: &str = "Cordoned";
    pub const UNCORDONED: &str = "Uncordoned";
    pub const DRAINING: &str = "Draining";
    pub const NODE_REGISTERED: &str = "NodeRegistered";
    pub const WORKER_TOKEN_ISSUED: &str = "WorkerTokenIssued";
    pub const WORKER_TOKEN_REVOKED: &str = "WorkerTokenRevoked";
    /// A worker proved one name and tried to act as another (403 `wrong_worker`).
    pub const WRONG_WORKER: &str = "WrongWorker";
    /// A second agent process tried a worker name another live one holds (409).
    pub const NAME_IN_USE: &str = "NameInUse";
    /// A new agent process took a worker name over from one that went stale.
    pub const INSTANCE_REPLACED: &str = "InstanceReplaced";
    /// The agent process holding a worker name signed off as it exited.
    pub const INSTANCE_STOPPED: &str = "InstanceStopped";
    /// The trainer's metrics or progress file was bad or too large (the job's result
    /// stands).
    pub const TRAINER_WARNING: &str = "TrainerWarning";
}

/// Appends one event at the transaction's time.
pub(crate) fn i_event(
    tx: &mut Tx<'_>,
    job: Option<&JobId>,
    worker: Option<&str>,
    kind: &str,
    message: impl Into<String>,
) -> Result<(), QueueError> {
    tx.db
        .prepare_cached(
            "INSERT INTO events (at, job_id, worker, kind, message) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![
            tx.now,
            job.map(JobId::as_str),
            worker,
            kind,
            message.into()
        ])?;
    tx.last_event = Some(tx.db.last_insert_rowid().max(0) as u64);
    Ok(())
}

/// Appends an event a transition decided (see `transitions.rs`).
pub(crate) fn i_emit(
    tx: &mut Tx<'_>,
    job: &JobId,
    emit: super::transitions::Emit<'_>,
) -> Result<(), QueueError> {
    i_event(tx, Some(job), emit.worker, emit.kind, emit.message)
}

type RawEvent = (i64, i64, Option<String>, Option<String>, String, String);

fn decode((seq, at, job, worker, kind, message): RawEvent) -> Result<Event, QueueError> {
    Ok(Event {
        seq: seq.max(0) as u64,
        at: from_ms(at),
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
        kind,
        message,
    })
}

fn raw(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawEvent> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

/// All events of one job, oldest first.
pub(crate) fn i_job_events(tx: &Tx<'_>, id: &JobId) -> Result<Vec<Event>, QueueError> {
    let mut stmt = tx.db.prepare_cached(
        "SELECT seq, at, job_id, worker, kind, message FROM events WHERE job_id = ?1 \
         ORDER BY seq",
    )?;
    let rows = stmt.query_map([id.as_str()], raw)?;
    rows.map(|r| decode(r?)).collect()
}

/// Which events a page keeps: those of one job and/or one worker (both: events of that
/// job that name that worker).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub job: Option<JobId>,
    pub worker: Option<WorkerName>,
}

/// How many events one page of a worker-only filter looks at, at most.
///
/// No index serves that filter: an index on (worker, seq) puts every claim's, heartbeat's
/// and completion's event in a place of its own per worker, so each group commit wrote a
/// page of it per worker (the full cycle lost a quarter of its rate to it). The filter
/// walks the log by seq instead, this many events per page, so a page's cost is bounded
/// whatever the log holds; a page may then hold no events while `next` moves on.
pub(crate) const WORKER_FILTER_WINDOW: u64 = 20_000;

/// Up to `limit` events after `since` that `filter` keeps. `next` is the last event seen:
/// the last one answered when the page is full, else the last one the page looked at (the
/// log's head, or the end of a worker filter's window), so a filtered follower never reads
/// the same events twice. Keep paging until `next` stops moving.
pub(crate) fn i_events_since(
    tx: &Tx<'_>,
    since: u64,
    limit: usize,
    filter: &EventFilter,
) -> Result<EventsPage, QueueError> {
    i_events_in_window(tx, since, limit, filter, WORKER_FILTER_WINDOW)
}

/// [`i_events_since`] with a worker-only filter looking at `window` events at most.
pub(crate) fn i_events_in_window(
    tx: &Tx<'_>,
    since: u64,
    limit: usize,
    filter: &EventFilter,
    window: u64,
) -> Result<EventsPage, QueueError> {
    // One statement per filter shape: each walks the seq (the table itself) or `events_job`.
    let sql = match (&filter.job, &filter.worker) {
        (None, None) => {
            "SELECT seq, at, job_id, worker, kind, message FROM events WHERE seq > ?1 \
             ORDER BY seq LIMIT ?2"
        }
        (Some(_), None) => {
            "SELECT seq, at, job_id, worker, kind, message FROM events \
             WHERE job_id = ?3 AND seq > ?1 ORDER BY seq LIMIT ?2"
        }
        (None, Some(_)) => {
            "SELECT seq, at, job_id, worker, kind, message FROM events \
             WHERE seq > ?1 AND seq <= ?5 AND worker = ?4 ORDER BY seq LIMIT ?2"
        }
        (Some(_), Some(_)) => {
            "SELECT seq, at, job_id, worker, kind, message FROM events \
             WHERE job_id = ?3 AND worker = ?4 AND seq > ?1 ORDER BY seq LIMIT ?2"
        }
    };
    let mut stmt = tx.db.prepare_cached(sql)?;
    let since_i = i64::try_from(since).unwrap_or(i64::MAX);
    let limit_i = i64::try_from(limit).unwrap_or(i64::MAX);
    let job = filter.job.as_ref().map(JobId::as_str);
    let worker = filter.worker.as_ref().map(WorkerName::as_str);
    let window_end = since.saturating_add(window);
    let window_end_i = i64::try_from(window_end).unwrap_or(i64::MAX);
    let worker_only = filter.job.is_none() && filter.worker.is_some();
    let mut bound: Vec<&dyn rusqlite::ToSql> = vec![&since_i, &limit_i];
    if job.is_some() || worker.is_some() {
        bound.push(&job);
    }
    if worker.is_some() {
        bound.push(&worker);
    }
    if worker_only {
        bound.push(&window_end_i);
    }
    let events = stmt
        .query_map(bound.as_slice(), raw)?
        .map(|r| decode(r?))
        .collect::<Result<Vec<_>, _>>()?;
    let next = match events.last() {
        Some(last) if events.len() >= limit => last.seq,
        _ => {
            let head: i64 = tx
                .db
                .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM events")?
                .query_row([], |r| r.get(0))?;
            let head = since.max(head.max(0) as u64);
            if worker_only {
                head.min(window_end)
            } else {
                head
            }
        }
    };
    Ok(EventsPage { events, next })
}
