//! The queue's clock, injected (`Queue::open_with_clock`) so tests and simulations move
//! time (lease expiry, node staleness, prefer_cuda waiting) without sleeping.

use std::sync::atomic::{AtomicI64, Ordering};

use chrono::Utc;

/// Where a queue reads the time of each transaction.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        Utc::now().timestamp_millis()
    }
}

/// The wall clock moved forward by hand ([`ManualClock::advance`]); shared by every queue
/// (and clone) that runs on it.
#[derive(Debug, Default)]
pub struct ManualClock {
    offset_ms: AtomicI64,
}

impl ManualClock {
    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: chrono::Duration) {
        self.offset_ms
            .fetch_add(by.num_milliseconds(), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        Utc::now().timestamp_millis() + self.offset_ms.load(Ordering::SeqCst)
    }
}
