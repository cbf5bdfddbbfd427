//! Wake-ups across servers: every transaction that appends events also sends
//! `NOTIFY cis490_events` with its last seq (delivered when it commits), and each queue
//! keeps one connection that LISTENs and moves its `subscribe()` watch forward. So a
//! long-polled claim or event follower on one server hears of commits made by another.
//!
//! The listener is a plain thread (the sync client must not run on an async runtime)
//! holding only a weak reference to the watch: it ends within [`POLL`] of the queue being
//! dropped. A broken connection is opened again, and the counter is read after each
//! (re)connect, so notifications missed meanwhile are made up for.

use std::sync::{Arc, Weak};
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;
use tokio::sync::watch;

use super::connect::Connector;

/// The channel every server of one database listens on.
pub(crate) const CHANNEL: &str = "cis490_events";

/// How often the listener looks whether its queue is gone.
const POLL: Duration = Duration::from_millis(500);

/// Moves `watch` to `seq` unless it is past it already.
pub(crate) fn advance(watch: &watch::Sender<u64>, seq: u64) {
    watch.send_if_modified(|last| {
        let newer = seq > *last;
        if newer {
            *last = seq;
        }
        newer
    });
}

/// Starts the listener thread of a queue whose watch is `watch`.
pub(crate) fn spawn(connector: Connector, watch: &Arc<watch::Sender<u64>>) -> std::io::Result<()> {
    let watch = Arc::downgrade(watch);
    std::thread::Builder::new()
        .name("pg-listen".into())
        .spawn(move || run(&connector, &watch))
        .map(|_| ())
}

fn run(connector: &Connector, watch: &Weak<watch::Sender<u64>>) {
    while watch.strong_count() > 0 {
        match listen(connector, watch) {
            Ok(()) => return,
            Err(e) => {
                if watch.strong_count() == 0 {
                    return;
                }
                tracing::warn!(error = %e, "PostgreSQL event listener lost its connection; reconnecting");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// Listens until the queue is gone (Ok) or the connection fails (Err).
fn listen(connector: &Connector, watch: &Weak<watch::Sender<u64>>) -> Result<(), postgres::Error> {
    let mut client: Client = connector.connect()?;
    client.batch_execute(&format!("LISTEN {CHANNEL}"))?;
    let head: i64 = client
        .query_one("SELECT n FROM event_seq WHERE id = 1", &[])?
        .try_get(0)?;
    match watch.upgrade() {
        Some(w) => advance(&w, head.max(0) as u64),
        None => return Ok(()),
    }
    loop {
        let mut notifications = client.notifications();
        let mut waiting = notifications.timeout_iter(POLL);
        while let Some(note) = waiting.next()? {
            let Some(w) = watch.upgrade() else {
                return Ok(());
            };
            if let Ok(seq) = note.payload().parse::<u64>() {
                advance(&w, seq);
            }
        }
        if watch.strong_count() == 0 {
            return Ok(());
        }
    }
}
