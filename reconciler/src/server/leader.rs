//! Which of several servers on one database runs the background work: reconciling the
//! manifest on start-up, on file changes and on the periodic resync, and sweeping expired
//! leases. Every server answers the API (claims, heartbeats, uploads, an operator's
//! `reload` or `apply`) whether it leads or not.
//!
//! On SQLite there is one server per database (the state dir's lock), so it always leads.
//! On PostgreSQL the servers campaign for an advisory lock ([`LeaderLock`]) once a
//! [`CAMPAIGN_INTERVAL`]: a leader that dies loses it with its connection, and another
//! server leads from its next round on and reconciles at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::reconcile::{Reconciler, Trigger};
use crate::queue::postgres::leader::LeaderLock;

/// How often a follower tries for the lock, and a leader checks that it still holds it.
pub const CAMPAIGN_INTERVAL: Duration = Duration::from_secs(1);

/// Whether this server leads now, and word when that changes. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Leadership {
    leading: watch::Receiver<bool>,
    /// Keeps a fixed leadership's channel open, so waiting on it waits forever instead of
    /// ending at once.
    _fixed: Option<Arc<watch::Sender<bool>>>,
}

impl Leadership {
    /// The only server of its database: leads for its whole life.
    pub fn sole() -> Leadership {
        let (sender, leading) = watch::channel(true);
        Leadership {
            leading,
            _fixed: Some(Arc::new(sender)),
        }
    }

    /// Campaigns for `lock`: the first round now (so a lone server leads from its start),
    /// then a round every `every` on a thread of its own, which ends (and lets the lock
    /// go with its connection) once every clone of the answer is dropped. Blocking: call
    /// it off the async runtime.
    pub fn campaign(mut lock: LeaderLock, every: Duration) -> Leadership {
        let first = lock.campaign();
        if first {
            tracing::info!("leading: this server reconciles the manifest and sweeps leases");
        } else {
            tracing::info!("following: another server on this database leads");
        }
        let (sender, leading) = watch::channel(first);
        let spawned = std::thread::Builder::new()
            .name("leader-campaign".into())
            .spawn(move || {
                while !sender.is_closed() {
                    std::thread::sleep(every);
                    let now = lock.campaign();
                    sender.send_if_modified(|was| {
                        if *was == now {
                            return false;
                        }
                        if now {
                            tracing::info!("took over as leader: reconciling the manifest and sweeping leases from now on");
                        } else {
                            tracing::warn!("no longer the leader: background reconciles and sweeps stop here");
                        }
                        *was = now;
                        true
                    });
                }
            });
        if let Err(e) = spawned {
            // Without the thread this server never leads; it still serves the API.
            tracing::error!(error = %e, "cannot start the leader campaign; this server follows");
            let (sender, leading) = watch::channel(false);
            return Leadership {
                leading,
                _fixed: Some(Arc::new(sender)),
            };
        }
        Leadership {
            leading,
            _fixed: None,
        }
    }

    /// Whether this server leads now.
    pub fn is_leader(&self) -> bool {
        *self.leading.borrow()
    }

    /// Waits until this server becomes the leader (after having followed); pending
    /// forever if that can never happen.
    pub async fn took_over(&mut self) {
        loop {
            if self.leading.changed().await.is_err() {
                return std::future::pending().await;
            }
            if *self.leading.borrow_and_update() {
                return;
            }
        }
    }
}

/// Reconciles each time this server takes over as leader, so a manifest edited while no
/// server led (or while the old leader was dying) applies at once.
pub async fn reconcile_on_takeover(reconciler: Arc<Reconciler>) -> std::convert::Infallible {
    let mut leadership = reconciler.leadership().clone();
    loop {
        leadership.took_over().await;
        // Errors are logged and recorded by the reconciler.
        let _ = reconciler.reconcile(Trigger::TookOver).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::queue::test_support::postgres_database;

    #[tokio::test]
    async fn a_sole_server_leads_and_never_takes_over_again() {
        let mut sole = Leadership::sole();
        assert!(sole.is_leader());
        let waited = tokio::time::timeout(Duration::from_millis(50), sole.took_over()).await;
        assert!(waited.is_err(), "a fixed leadership never changes");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_follower_is_told_when_the_leader_goes() {
        let Some(db) = tokio::task::spawn_blocking(postgres_database)
            .await
            .unwrap()
        else {
            return;
        };
        let url = db.url().to_string();
        let every = Duration::from_millis(50);
        let (first, mut second) = tokio::task::spawn_blocking(move || {
            let first = Leadership::campaign(LeaderLock::new(&url).unwrap(), every);
            let second = Leadership::campaign(LeaderLock::new(&url).unwrap(), every);
            (first, second)
        })
        .await
        .unwrap();
        assert!(first.is_leader());
        assert!(!second.is_leader());
        drop(first);
        tokio::time::timeout(Duration::from_secs(10), second.took_over())
            .await
            .expect("the follower took over once the leader's campaign ended");
        assert!(second.is_leader());
        drop(second);
        tokio::task::spawn_blocking(move || drop(db)).await.unwrap();
    }
}
