//! The WAL checkpointer: a thread that copies committed pages into the database off the
//! commit path (file databases only).

use std::path::Path;
use std::sync::Arc;

use rusqlite::Connection;

use super::{Queue, QueueError};

/// WAL size (in 4 KiB frames, SQLite's own auto-checkpoint size) from which the
/// checkpoint thread makes the WAL start over (see `Queue::start_checkpointer`).
const WAL_REWIND_FRAMES: i64 = 4096;

/// The checkpoint thread takes the writing connection's lock only once an unlocked pass
/// copied no more than this many frames, so the stall it causes stays near one fsync.
const WAL_LOCKED_COPY_FRAMES: i64 = 256;

impl Queue {
    /// Moves WAL checkpoints off the commit path: a thread with its own connection runs a
    /// PASSIVE checkpoint (which never blocks writers) every 100 ms, and the writing
    /// connection no longer checkpoints inside its commits. Otherwise every ~1000 pages one
    /// unlucky commit copied the WAL into the database (and fsynced it) while holding the
    /// write lock, stalling every waiting claim (profile: 10-13% of claim time).
    /// Durability is the WAL's, unchanged; checkpoints only move committed pages.
    ///
    /// A PASSIVE checkpoint alone never lets the WAL start over under a steady stream of
    /// commits: SQLite rewinds the WAL only when a write transaction begins with every
    /// frame already copied, and some commit always lands while a checkpoint runs. The WAL
    /// then grew without bound (2.7 GB while 64 threads drained 100,000 jobs), and every
    /// frame appended to fresh file space cost the kernel a zeroed page (profile: 17% of
    /// claim time in `memset` under `ext4_block_write_begin`). So once the WAL holds
    /// [`WAL_REWIND_FRAMES`], the thread catches up with more unlocked passes, then runs one
    /// more PASSIVE checkpoint while it holds the writing connection's lock (between two
    /// transactions, so it copies the few frames left and the next commit rewinds the
    /// WAL), a stall of about one fsync. (Measured: one locked pass right after the first
    /// unlocked one had 12-15k frames to copy and stalled commits for 11-21 ms.)
    pub(super) fn start_checkpointer(&self, path: &Path) -> Result<(), QueueError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        // Weak: the thread must not keep the queue alive (it stops when the queue drops).
        let queue = Arc::downgrade(&self.inner);
        // (frames in the WAL, frames copied into the database so far) after a checkpoint;
        // None when it failed, which is retried on the next tick (the WAL keeps every
        // committed page meanwhile).
        let checkpoint = move || -> Option<(i64, i64)> {
            conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(1)?, r.get(2)?))
            })
            .ok()
        };
        std::thread::Builder::new()
            .name("cis490-checkpoint".to_string())
            .spawn(move || {
                // Ends when the queue is dropped (its sender with it).
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stop_rx.recv_timeout(std::time::Duration::from_millis(100))
                {
                    let Some((frames, mut copied)) = checkpoint() else {
                        continue;
                    };
                    if frames < WAL_REWIND_FRAMES {
                        continue;
                    }
                    // Catch up without the lock first: each pass copies what was committed
                    // during the one before, so the locked pass has only a little left.
                    let mut caught_up = false;
                    for _ in 0..4 {
                        let Some((_, now_copied)) = checkpoint() else {
                            break;
                        };
                        caught_up = now_copied - copied <= WAL_LOCKED_COPY_FRAMES;
                        copied = now_copied;
                        if caught_up {
                            break;
                        }
                    }
                    if !caught_up {
                        continue;
                    }
                    let Some(inner) = queue.upgrade() else {
                        break;
                    };
                    let writer = inner
                        .conn
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    checkpoint();
                    drop(writer);
                }
            })?;
        self.lock().pragma_update(None, "wal_autocheckpoint", 0)?;
        *self
            .inner
            .checkpointer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(stop_tx);
        Ok(())
    }
}
