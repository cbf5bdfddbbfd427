//! Transactions on PostgreSQL: every `i_*` helper of this backend runs inside a [`PgTx`]
//! that [`PgQueue::write`] or [`PgQueue::read`] opened.
//!
//! Isolation: writes run at READ COMMITTED with explicit row locks (`SELECT ... FOR UPDATE`
//! on the job a transition reads, `FOR UPDATE SKIP LOCKED` in claims, `INSERT ... ON
//! CONFLICT` for upserts). Every transition reads one job and decides from it alone, so
//! locking that row gives the same answers SERIALIZABLE would, without retrying whole
//! transactions whenever two claims walk the same queue head. Reads run at REPEATABLE READ,
//! READ ONLY: one snapshot per call, as SQLite's read transactions give. A deadlock or
//! serialization failure (two writers locking jobs in different orders, e.g. a sweep and an
//! apply) is retried from the start a few times.
//!
//! Events are written unnumbered: each transaction collects its events and inserts them
//! in one statement at its end. Once it has committed, the writer has them numbered
//! (`sequencer.rs`) before it returns, so a caller reads its own events. The event log
//! (`events_since`) shows numbered events only: numbers in the order events became
//! visible, with no gaps, so it never skips one. A job's own events also show those
//! committed but not numbered yet, so a job is never seen changed without its event.

use postgres::error::SqlState;
use postgres::IsolationLevel;

use super::cached::CachedTx;
use super::PgQueue;
use crate::queue::transitions::Emit;
use crate::queue::{QueueConfig, QueueError};
use cis490_api::JobId;

/// How often a write that hit a deadlock or serialization failure is tried in all.
const WRITE_TRIES: usize = 5;

/// One event a transaction appends, numbered when it commits.
struct PendingEvent {
    job: Option<String>,
    worker: Option<String>,
    kind: String,
    message: String,
}

/// One open transaction and the events it appends.
pub(crate) struct PgTx<'c> {
    pub(crate) db: CachedTx<'c>,
    /// The transaction's notion of now, in ms since the epoch (one instant per transaction).
    pub(crate) now: i64,
    pub(crate) config: &'c QueueConfig,
    events: Vec<PendingEvent>,
}

impl crate::queue::tx::TxContext for PgTx<'_> {
    fn now_ms(&self) -> i64 {
        self.now
    }

    fn queue_config(&self) -> &QueueConfig {
        self.config
    }
}

impl PgTx<'_> {
    /// Appends one event at the transaction's time (numbered after the commit).
    pub(crate) fn event(
        &mut self,
        job: Option<&JobId>,
        worker: Option<&str>,
        kind: &str,
        message: impl Into<String>,
    ) {
        self.events.push(PendingEvent {
            job: job.map(|j| j.to_string()),
            worker: worker.map(str::to_string),
            kind: kind.to_string(),
            message: message.into(),
        });
    }

    /// Appends an event a transition decided (see `transitions.rs`).
    pub(crate) fn emit(&mut self, job: &JobId, emit: Emit<'_>) {
        self.event(Some(job), emit.worker, emit.kind, emit.message);
    }

    /// Writes the collected events, unnumbered; whether there were any.
    fn flush_events(&mut self) -> Result<bool, QueueError> {
        if self.events.is_empty() {
            return Ok(false);
        }
        let events = std::mem::take(&mut self.events);
        let mut jobs = Vec::with_capacity(events.len());
        let mut workers = Vec::with_capacity(events.len());
        let mut kinds = Vec::with_capacity(events.len());
        let mut messages = Vec::with_capacity(events.len());
        for e in events {
            jobs.push(e.job);
            workers.push(e.worker);
            kinds.push(e.kind);
            messages.push(e.message);
        }
        // One statement; `WITH ORDINALITY` keeps the transaction's order in `id`.
        self.db.execute(
            "INSERT INTO events (at, job_id, worker, kind, message) \
             SELECT $1, e.job_id, e.worker, e.kind, e.message \
             FROM unnest($2::text[], $3::text[], $4::text[], $5::text[]) \
               WITH ORDINALITY AS e(job_id, worker, kind, message, ord) ORDER BY e.ord",
            &[&self.now, &jobs, &workers, &kinds, &messages],
        )?;
        Ok(true)
    }
}

impl From<postgres::Error> for QueueError {
    fn from(e: postgres::Error) -> Self {
        // The server's own message (`Error`'s Display says only "db error").
        let text = match e.as_db_error() {
            Some(db) => format!("{}: {}", db.code().code(), db.message()),
            None => e.to_string(),
        };
        match e.code() {
            Some(&SqlState::T_R_DEADLOCK_DETECTED) | Some(&SqlState::T_R_SERIALIZATION_FAILURE) => {
                QueueError::Transient(text)
            }
            _ => QueueError::Db(text),
        }
    }
}

impl PgQueue {
    /// Runs `f` in one READ COMMITTED transaction: commits on Ok, rolls back on Err (a
    /// deadlock or serialization failure runs it again). Watchers of `subscribe` are told
    /// after the commit.
    pub(crate) fn write<T>(
        &self,
        mut f: impl FnMut(&mut PgTx<'_>) -> Result<T, QueueError>,
    ) -> Result<T, QueueError> {
        let mut tries = 0;
        loop {
            tries += 1;
            match self.write_once(&mut f) {
                Err(QueueError::Transient(_)) if tries < WRITE_TRIES => continue,
                other => return other,
            }
        }
    }

    fn write_once<T>(
        &self,
        f: &mut impl FnMut(&mut PgTx<'_>) -> Result<T, QueueError>,
    ) -> Result<T, QueueError> {
        let now = self.now_ms();
        let (out, wrote_events) = {
            let mut conn = self.pool.get()?;
            let (client, statements) = conn.parts();
            let db = client
                .build_transaction()
                .isolation_level(IsolationLevel::ReadCommitted)
                .start()?;
            let mut tx = PgTx {
                db: CachedTx::new(db, statements),
                now,
                config: &self.config,
                events: Vec::new(),
            };
            let out = f(&mut tx)?;
            let wrote_events = tx.flush_events()?;
            tx.db.commit()?;
            (out, wrote_events)
        };
        if wrote_events {
            // Committed whatever happens here: a pass that fails leaves the events to the
            // next one (any server's next write, or the leader's sweep).
            if let Err(e) = self.number_events() {
                tracing::warn!(error = %e, "numbering events failed; the next write or sweep numbers them");
            }
        }
        Ok(out)
    }

    /// Runs `f` in one REPEATABLE READ, READ ONLY transaction: one consistent snapshot.
    pub(crate) fn read<T>(
        &self,
        f: impl FnOnce(&mut PgTx<'_>) -> Result<T, QueueError>,
    ) -> Result<T, QueueError> {
        let now = self.now_ms();
        let mut conn = self.pool.get()?;
        let (client, statements) = conn.parts();
        let db = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()?;
        let mut tx = PgTx {
            db: CachedTx::new(db, statements),
            now,
            config: &self.config,
            events: Vec::new(),
        };
        let out = f(&mut tx)?;
        tx.db.commit()?;
        Ok(out)
    }
}
