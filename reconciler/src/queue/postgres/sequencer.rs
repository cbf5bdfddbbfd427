//! Numbering events on PostgreSQL. Writers insert their events unnumbered (`seq` NULL) and,
//! once committed, run a numbering pass: under a database-wide advisory lock, every
//! committed unnumbered event gets the next seqs from `event_seq`, in insertion order, and
//! one `NOTIFY` tells every server. A pass sees only committed events, so the numbers
//! follow the order events became visible and have no gaps: a reader that has seen seq N
//! has seen every event numbered up to N, and none numbered later can sort before it.
//!
//! Why not number inside the writing transaction: the counter's row lock would then be held
//! through every writer's commit (its WAL flush), so all writers of all servers would run
//! one at a time. Here writers commit side by side; one pass numbers all that committed
//! while the previous pass ran, and the writers of one server that committed meanwhile
//! share it ([`Passes`]).
//!
//! A writer that dies between its commit and its pass leaves its events unnumbered until
//! the next pass: any writer's, or the leader's sweep (`PgQueue::sweep` runs one).

use std::sync::{Mutex, MutexGuard};

use super::cached::CachedTx;
use super::PgQueue;
use crate::queue::QueueError;

/// Any constant: the advisory lock numbering passes of all servers take in turn.
const NUMBERING_LOCK: i64 = 0x6369_7334_3930_4e53;

/// The passes of one server, so that writers that committed while a pass ran share the
/// next one instead of each running their own.
#[derive(Debug, Default)]
pub(crate) struct Passes {
    state: Mutex<PassState>,
}

#[derive(Debug, Default)]
struct PassState {
    /// Passes started so far (the number of the latest).
    started: u64,
    /// The latest pass that finished.
    finished: u64,
}

impl Passes {
    fn lock(&self) -> MutexGuard<'_, PassState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl PgQueue {
    /// Numbers every committed unnumbered event, unless a pass that started after the
    /// caller's commit has finished meanwhile. Call after committing events.
    pub(crate) fn number_events(&self) -> Result<(), QueueError> {
        // A pass already running may have read the table before this commit: only a pass
        // started from here on is sure to see it.
        let needed = self.passes.lock().started + 1;
        let mut state = self.passes.lock();
        if state.finished >= needed {
            return Ok(());
        }
        state.started += 1;
        let this = state.started;
        // The mutex stays held: the other writers of this server wait for this pass and
        // then find they need none.
        let numbered = self.numbering_pass();
        state.finished = this;
        drop(state);
        if let Some(head) = numbered? {
            self.notify(head);
        }
        Ok(())
    }

    /// One pass: the new head seq when it numbered any event.
    fn numbering_pass(&self) -> Result<Option<u64>, QueueError> {
        let mut conn = self.pool.get()?;
        let (client, statements) = conn.parts();
        let mut tx = CachedTx::new(client.transaction()?, statements);
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&NUMBERING_LOCK])?;
        // Taken after the lock, so this statement's snapshot holds every event committed
        // before the previous pass of any server ended.
        let waiting: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM events WHERE seq IS NULL)",
                &[],
            )?
            .try_get(0)?;
        if !waiting {
            tx.commit()?;
            return Ok(None);
        }
        let row = tx.query_one(
            "WITH todo AS (SELECT id, row_number() OVER (ORDER BY id) AS k FROM events \
               WHERE seq IS NULL), \
             c AS (UPDATE event_seq SET n = n + (SELECT count(*) FROM todo) WHERE id = 1 \
               RETURNING n), \
             done AS (UPDATE events e SET seq = c.n - (SELECT count(*) FROM todo) + todo.k \
               FROM todo, c WHERE e.id = todo.id) \
             SELECT c.n FROM c",
            &[],
        )?;
        let head: i64 = row.try_get(0)?;
        tx.execute(
            "SELECT pg_notify($1, $2)",
            &[&super::listen::CHANNEL, &head.to_string()],
        )?;
        tx.commit()?;
        Ok(Some(head.max(0) as u64))
    }
}
