//! A small pool of sync PostgreSQL connections: at most `max` open at once, idle ones kept
//! for the next caller. A connection that broke is dropped, not handed out again.
//!
//! `postgres::Client` drives its own single-threaded runtime and blocks the calling thread,
//! so a pooled connection must only be used from a blocking thread (every `JobQueue` method
//! already runs on one), never from inside an async task.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use postgres::Client;

use super::cached::StatementCache;
use super::connect::{connect_error, Connector};
use crate::queue::QueueError;

/// How long a caller waits for a connection when all `max` are in use.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) struct Pool {
    connector: Connector,
    max: usize,
    state: Mutex<State>,
    freed: Condvar,
}

/// A connection and the statements prepared on it.
pub(crate) struct Connection {
    pub(crate) client: Client,
    pub(crate) statements: StatementCache,
}

struct State {
    idle: Vec<Connection>,
    /// Connections open now, idle or checked out.
    open: usize,
}

impl Pool {
    /// A pool of `connector`'s connections that opens at most `max` (at least one).
    pub(crate) fn new(connector: Connector, max: usize) -> Pool {
        Pool {
            connector,
            max: max.max(1),
            state: Mutex::new(State {
                idle: Vec::new(),
                open: 0,
            }),
            freed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a list and a count that every path leaves consistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// An idle connection, a new one while fewer than `max` are open, or the next one
    /// freed (`Db` error after [`CHECKOUT_TIMEOUT`]).
    pub(crate) fn get(&self) -> Result<Pooled<'_>, QueueError> {
        let mut state = self.lock();
        loop {
            while let Some(conn) = state.idle.pop() {
                if !conn.client.is_closed() {
                    return Ok(Pooled {
                        pool: self,
                        conn: Some(conn),
                    });
                }
                state.open -= 1;
            }
            if state.open < self.max {
                state.open += 1;
                drop(state);
                return match self.connector.connect() {
                    Ok(client) => Ok(Pooled {
                        pool: self,
                        conn: Some(Connection {
                            client,
                            statements: StatementCache::default(),
                        }),
                    }),
                    Err(e) => {
                        self.lock().open -= 1;
                        self.freed.notify_one();
                        Err(QueueError::Db(connect_error(&e)))
                    }
                };
            }
            let (next, timeout) = self
                .freed
                .wait_timeout(state, CHECKOUT_TIMEOUT)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            state = next;
            if timeout.timed_out() && state.idle.is_empty() && state.open >= self.max {
                return Err(QueueError::Db(format!(
                    "all {} PostgreSQL connections stayed busy for {} s",
                    self.max,
                    CHECKOUT_TIMEOUT.as_secs()
                )));
            }
        }
    }

    fn put(&self, conn: Connection) {
        let mut state = self.lock();
        if conn.client.is_closed() {
            state.open -= 1;
        } else {
            state.idle.push(conn);
        }
        drop(state);
        self.freed.notify_one();
    }
}

impl Drop for Pool {
    /// Closing a `postgres::Client` blocks on its own runtime, which panics on an async
    /// runtime thread; the last `SharedQueue` of a server may well be dropped on one (at
    /// shutdown), so the idle connections are closed on a thread of their own there.
    fn drop(&mut self) {
        let idle = std::mem::take(&mut self.lock().idle);
        if idle.is_empty() {
            return;
        }
        if tokio::runtime::Handle::try_current().is_ok() {
            let closed = std::thread::Builder::new()
                .name("pg-pool-close".into())
                .spawn(move || drop(idle));
            if let Ok(handle) = closed {
                let _ = handle.join();
            }
        } else {
            drop(idle);
        }
    }
}

/// A checked-out connection; back to the pool when dropped.
pub(crate) struct Pooled<'p> {
    pool: &'p Pool,
    conn: Option<Connection>,
}

impl Pooled<'_> {
    /// The client and its statement cache, borrowed apart (a transaction holds both).
    pub(crate) fn parts(&mut self) -> (&mut Client, &mut StatementCache) {
        let conn = self.connection_mut();
        (&mut conn.client, &mut conn.statements)
    }

    fn connection_mut(&mut self) -> &mut Connection {
        match &mut self.conn {
            Some(c) => c,
            None => unreachable!("a pooled connection is only taken in drop"),
        }
    }
}

impl std::ops::Deref for Pooled<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        // Some until drop.
        match &self.conn {
            Some(c) => &c.client,
            None => unreachable!("a pooled connection is only taken in drop"),
        }
    }
}

impl std::ops::DerefMut for Pooled<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.connection_mut().client
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.put(conn);
        }
    }
}
