//! Transactions: every `i_*` helper runs inside a [`Tx`] that `Queue::write` or
//! `Queue::read` opened (the group commit opens its own, see `batch.rs`).

use std::sync::MutexGuard;

use rusqlite::{Connection, TransactionBehavior};

use super::{Queue, QueueConfig, QueueError};

/// One open transaction and what it did, passed to every `i_*` helper.
pub(crate) struct Tx<'c> {
    pub(crate) db: rusqlite::Transaction<'c>,
    /// The transaction's notion of now, in ms since the epoch (one instant per transaction).
    pub(crate) now: i64,
    pub(crate) config: &'c QueueConfig,
    /// Seq of the last event this transaction appended.
    pub(crate) last_event: Option<u64>,
}

/// What every shared rule over a transaction reads of it, on either backend.
pub(crate) trait TxContext {
    /// The transaction's now, in ms since the epoch.
    fn now_ms(&self) -> i64;
    fn queue_config(&self) -> &QueueConfig;
}

impl TxContext for Tx<'_> {
    fn now_ms(&self) -> i64 {
        self.now
    }

    fn queue_config(&self) -> &QueueConfig {
        self.config
    }
}

/// Reads that hold the transaction by reference (`matching.rs` walks candidates with one).
impl TxContext for &Tx<'_> {
    fn now_ms(&self) -> i64 {
        self.now
    }

    fn queue_config(&self) -> &QueueConfig {
        self.config
    }
}

impl Queue {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock dropped its transaction, which rolled back, so the
        // connection is still consistent.
        self.inner
            .conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` in one IMMEDIATE transaction: commits on Ok, rolls back on Err. Watchers
    /// of [`Queue::subscribe`] are told after the commit.
    pub(crate) fn write<T>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, QueueError>,
    ) -> Result<T, QueueError> {
        let now = self.now_ms();
        let (out, last_event) = {
            let mut conn = self.lock();
            let db = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut tx = Tx {
                db,
                now,
                config: &self.inner.config,
                last_event: None,
            };
            let out = f(&mut tx)?;
            let last_event = tx.last_event;
            tx.db.commit()?;
            (out, last_event)
        };
        if let Some(seq) = last_event {
            self.inner.last_event.send_replace(seq);
        }
        Ok(out)
    }

    /// Runs one statement's worth of reading on the authentication connection (see
    /// `Inner::auth_reader`), or on the writer's connection for an in-memory queue.
    pub(crate) fn auth_read<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, QueueError> {
        match &self.inner.auth_reader {
            Some(reader) => {
                let db = reader
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                Ok(f(&db)?)
            }
            None => Ok(f(&self.lock())?),
        }
    }

    /// Runs `f` in one read (DEFERRED) transaction, so it sees one consistent snapshot.
    pub(crate) fn read<T>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, QueueError>,
    ) -> Result<T, QueueError> {
        let now = self.now_ms();
        let mut conn = self.lock();
        let db = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
        let mut tx = Tx {
            db,
            now,
            config: &self.inner.config,
            last_event: None,
        };
        f(&mut tx)
    }
}
