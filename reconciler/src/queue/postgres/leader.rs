//! The leader lock of several servers on one database: a session-level advisory lock held
//! on a connection of its own. PostgreSQL releases it the moment that connection ends (the
//! server process exits or is killed, or the network drops it and keepalives notice), so
//! another server's next try takes it over.
//!
//! Leadership only decides who runs the background work (reconciling the manifest on its
//! own, sweeping expired leases); it is not what keeps the queue correct. Every transition
//! is a transaction with row locks, so two servers that both believe they lead for a
//! moment (the old leader has not yet noticed its connection is gone) do the same work
//! twice and change nothing twice.

use std::time::Duration;

use postgres::Client;

use super::connect::Connector;
use crate::queue::QueueError;

/// The advisory-lock key every server campaigns for ("cis490LD" in ASCII), one per
/// database: servers on other databases of the same PostgreSQL never compete.
const LEADER_KEY: i64 = 0x6369_7334_3930_4c44;

/// How long a silent network may hold a dead leader's lock: the server's side of the
/// connection probes after this much idle time and drops it when nobody answers.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(5);

/// How long one check of the lock's connection may take before it counts as lost.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// One server's claim to leadership: a connection that holds the lock, or tries to.
/// Blocking: use it from a thread of its own, never on an async runtime thread.
pub struct LeaderLock {
    connector: Connector,
    client: Option<Client>,
    held: bool,
}

impl std::fmt::Debug for LeaderLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderLock")
            .field("connected", &self.client.is_some())
            .field("held", &self.held)
            .finish()
    }
}

impl LeaderLock {
    /// A lock for the database `url` names; nothing is connected until the first
    /// [`LeaderLock::campaign`].
    pub fn new(url: &str) -> Result<LeaderLock, QueueError> {
        let mut connector = Connector::from_url(url)?;
        connector
            .config_mut()
            .application_name("cis490-reconciler leader")
            .keepalives(true)
            .keepalives_idle(KEEPALIVE_IDLE)
            .connect_timeout(CHECK_TIMEOUT);
        Ok(LeaderLock {
            connector,
            client: None,
            held: false,
        })
    }

    /// One round: connects if needed, takes the lock if it is free, or checks that the
    /// connection holding it is still alive. True while this server leads. A failure of
    /// any kind ends the round without the lock (the next round reconnects): a server
    /// that cannot see the database must not act as leader.
    pub fn campaign(&mut self) -> bool {
        match self.try_round() {
            Ok(held) => {
                self.held = held;
                held
            }
            Err(e) => {
                if self.held {
                    tracing::warn!(error = %e, "lost the leader lock's connection to PostgreSQL");
                } else {
                    tracing::debug!(error = %e, "leader campaign round failed");
                }
                self.client = None;
                self.held = false;
                false
            }
        }
    }

    fn try_round(&mut self) -> Result<bool, postgres::Error> {
        let client = match &mut self.client {
            Some(client) => client,
            None => self.client.insert(self.connector.connect()?),
        };
        if self.held {
            client.is_valid(CHECK_TIMEOUT)?;
            return Ok(true);
        }
        let row = client.query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_KEY])?;
        row.try_get(0)
    }

    /// Whether the last round ended with the lock held.
    pub fn held(&self) -> bool {
        self.held
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::queue::test_support::postgres_database;

    #[test]
    fn one_of_two_servers_leads_and_the_other_takes_over_when_it_goes() {
        let Some(db) = postgres_database() else {
            return;
        };
        let mut first = LeaderLock::new(db.url()).unwrap();
        let mut second = LeaderLock::new(db.url()).unwrap();
        assert!(first.campaign(), "a lone campaigner takes the lock");
        assert!(!second.campaign(), "the lock is held: the second follows");
        assert!(first.campaign(), "the leader keeps it round after round");
        assert!(!second.campaign());
        drop(first);
        // The lock goes with the connection: the server's backend ends once the socket
        // closes, which takes a moment after the drop.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !second.campaign() {
            assert!(
                std::time::Instant::now() < deadline,
                "the second never took over"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(second.held());
    }

    #[test]
    fn a_database_that_cannot_be_reached_is_never_led() {
        let mut lock = LeaderLock::new("postgresql://nobody@127.0.0.1:1/none").unwrap();
        assert!(!lock.campaign());
        assert!(!lock.held());
    }

    #[test]
    fn a_bad_url_is_refused_at_once() {
        assert!(LeaderLock::new("postgres://[").is_err());
    }
}
