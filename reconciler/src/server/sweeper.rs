//! The sweeper: expired leases go back to pending (or to failed at max_attempts). The
//! sweep appends events, which wakes waiting claimers. Of several servers on one database,
//! only the leader sweeps.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;

use super::leader::Leadership;
use super::telemetry::{FailureCause, Telemetry};
use crate::queue::{JobQueue, QueueError, SharedQueue, SweepOutcome};

/// One pass: sweeps at the queue's notion of now and logs what moved.
pub fn sweep_once(queue: &dyn JobQueue) -> Result<SweepOutcome, QueueError> {
    let outcome = queue.sweep(queue.now())?;
    for id in &outcome.requeued {
        tracing::warn!(job = %id.short(), "lease expired; job back to pending");
    }
    for id in &outcome.failed {
        tracing::warn!(job = %id.short(), "lease expired with no attempts left; job failed");
    }
    Ok(outcome)
}

/// Sweeps every `every` forever while this server leads; a failed pass is logged and
/// retried at the next tick.
pub async fn run(
    queue: SharedQueue,
    telemetry: Arc<Telemetry>,
    leadership: Leadership,
    every: Duration,
) -> Infallible {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        if !leadership.is_leader() {
            continue;
        }
        let q = queue.clone();
        match tokio::task::spawn_blocking(move || {
            let outcome = sweep_once(q.as_ref())?;
            let failed: Vec<String> = outcome
                .failed
                .iter()
                .map(|id| q.job_model(id).map(Option::unwrap_or_default))
                .collect::<Result<_, _>>()?;
            Ok::<_, QueueError>((outcome.requeued.len() + outcome.failed.len(), failed))
        })
        .await
        {
            Ok(Ok((expired, failed))) => {
                telemetry.leases_expired(expired);
                for model in failed {
                    telemetry.failed(&model, FailureCause::LeaseExpired);
                }
            }
            Ok(Err(e)) => tracing::error!(error = %e, "sweep failed"),
            Err(e) => tracing::error!(error = %e, "sweep task failed"),
        }
    }
}
