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
//! Events are numbered at commit: each transaction collects its events and, as its last
//! statement, takes their seqs from the one-row `event_seq` counter (`UPDATE ... RETURNING`).
//! That row lock serialises event writers between taking their seqs and committing, so seqs
//! become visible in order with no gaps, and `events_since(seq)` never skips one that
//! commits later. Taking it last means no transaction waits for another lock while holding
//! it (no deadlocks through the counter), and it is held only for the commit.

use postgres::error::SqlState;
use postgres::IsolationLevel;

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
    pub(crate) db: postgres::Transaction<'c>,
    /// The transaction's notion of now, in ms since the epoch (one instant per transaction).
    pub(crate) now: i64,
    pub(crate) config: &'c QueueConfig,
    events: Vec<PendingEvent>,
}

impl PgTx<'_> {
    /// Appends one event at the transaction's time (numbered at commit).
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

    /// Numbers and writes the collected events; the seq of the last one, if any.
    fn flush_events(&mut self) -> Result<Option<u64>, QueueError> {
        if self.events.is_empty() {
            return Ok(None);
        }
        let k = i64::try_from(self.events.len()).unwrap_or(i64::MAX);
        let row = self.db.query_one(
            "UPDATE event_seq SET n = n + $1 WHERE id = 1 RETURNING n",
            &[&k],
        )?;
        let last: i64 = row.try_get(0)?;
        let insert = self.db.prepare(
            "INSERT INTO events (seq, at, job_id, worker, kind, message) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )?;
        let events = std::mem::take(&mut self.events);
        let mut seq = last - k;
        for e in &events {
            seq += 1;
            self.db.execute(
                &insert,
                &[&seq, &self.now, &e.job, &e.worker, &e.kind, &e.message],
            )?;
        }
        // Delivered to every server's listener when this transaction commits.
        self.db.execute(
            "SELECT pg_notify($1, $2)",
            &[&super::listen::CHANNEL, &last.to_string()],
        )?;
        Ok(Some(last.max(0) as u64))
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
        let (out, last_event) = {
            let mut conn = self.pool.get()?;
            let db = conn
                .build_transaction()
                .isolation_level(IsolationLevel::ReadCommitted)
                .start()?;
            let mut tx = PgTx {
                db,
                now,
                config: &self.config,
                events: Vec::new(),
            };
            let out = f(&mut tx)?;
            let last_event = tx.flush_events()?;
            tx.db.commit()?;
            (out, last_event)
        };
        if let Some(seq) = last_event {
            self.notify(seq);
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
        let db = conn
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()?;
        let mut tx = PgTx {
            db,
            now,
            config: &self.config,
            events: Vec::new(),
        };
        let out = f(&mut tx)?;
        tx.db.commit()?;
        Ok(out)
    }
}
