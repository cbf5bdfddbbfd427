//! Hands a claim's lease to the request that asked for it, or gives the job back.
//!
//! A long-poll claim commits in a blocking task. When the agent hangs up meanwhile (it
//! abandons a poll because a slot came free, or it is shutting down), axum drops the request
//! future but the blocking task still commits: without this, the job would sit leased to a
//! worker that never heard of it until the lease expired, and that expiry would count an
//! attempt. Here the task finds the requester gone and releases the lease in a transaction of
//! its own, as a retryable release, so the job is pending again at once and the attempt is
//! refunded.

use cis490_api::{Capability, ClaimResponse, FailRequest, WorkerName};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::error::ApiFailure;
use crate::queue::{JobQueue, QueueError, SharedQueue};

/// The reason recorded on the job's `Released` event.
pub const UNDELIVERED_REASON: &str =
    "claim-undelivered: the worker hung up before the claim's answer reached it";

/// A claimed job on its way to the request that asked for it. Dropped without
/// [`Handoff::deliver`] (the requester is gone, whether before the claim committed or while
/// the answer waited in the channel), it releases the job.
pub struct Handoff {
    queue: SharedQueue,
    worker: WorkerName,
    claimed: Option<ClaimResponse>,
}

impl Handoff {
    /// The claim, now the requester's to answer with.
    pub fn deliver(mut self) -> Option<ClaimResponse> {
        self.claimed.take()
    }
}

impl Drop for Handoff {
    fn drop(&mut self) {
        let Some(claimed) = self.claimed.take() else {
            return;
        };
        let (queue, worker) = (self.queue.clone(), self.worker.clone());
        // Dropped on an async worker thread: the release's commit goes to the blocking pool.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime
                    .spawn_blocking(move || release_undelivered(queue.as_ref(), &worker, claimed));
            }
            Err(_) => release_undelivered(queue.as_ref(), &worker, claimed),
        }
    }
}

type Answer = Result<Handoff, QueueError>;

/// Starts one claim attempt; the receiver yields the queue's answer. The join handle lets
/// tests wait for the attempt.
pub fn start_claim(
    queue: SharedQueue,
    worker: WorkerName,
    capability: Capability,
) -> (oneshot::Receiver<Answer>, JoinHandle<()>) {
    let (answer_tx, answer_rx) = oneshot::channel();
    let task = tokio::task::spawn_blocking(move || {
        let answer = queue.claim(&worker, &capability).map(|claimed| Handoff {
            queue,
            worker,
            claimed,
        });
        // A failed send drops the handoff here, which releases the job.
        let _ = answer_tx.send(answer);
    });
    (answer_rx, task)
}

/// Awaits the answer of [`start_claim`] and takes the claim out of its handoff.
pub async fn claim_answer(
    answer: oneshot::Receiver<Answer>,
) -> Result<Option<ClaimResponse>, ApiFailure> {
    match answer.await {
        Ok(handoff) => Ok(handoff?.deliver()),
        // The sender only goes away without sending if the blocking task panicked.
        Err(_) => Err(ApiFailure::internal(
            "the claim task ended without an answer",
        )),
    }
}

fn release_undelivered(queue: &dyn JobQueue, worker: &WorkerName, claimed: ClaimResponse) {
    let id = claimed.job.id.clone();
    let release = FailRequest {
        worker: worker.clone(),
        lease: claimed.lease,
        reason: UNDELIVERED_REASON.to_string(),
        exit_code: None,
        log_tail: None,
        retryable: true,
        cause: Default::default(),
        report: Default::default(),
    };
    match queue.fail(&id, &release) {
        Ok(_) => tracing::info!(job = %id.short(), %worker, "claim undelivered: job released"),
        Err(e) => tracing::warn!(
            job = %id.short(),
            %worker,
            "claim undelivered and its release failed ({e}); the lease expires instead"
        ),
    }
}

#[cfg(test)]
mod tests {
    use cis490_api::JobStatus;

    use super::*;
    use crate::plan::plan;
    use crate::queue::test_support::{cpu, spec, worker};
    use crate::queue::{ManifestSource, Queue, QueueConfig};

    fn queue_with_one_job() -> (SharedQueue, cis490_api::JobId) {
        let queue: SharedQueue =
            std::sync::Arc::new(Queue::open_in_memory(QueueConfig::default()).unwrap());
        let job = spec("handoff");
        let source = ManifestSource {
            path: "m.toml".to_string(),
            sha256: "ab".repeat(32),
            warnings: Vec::new(),
        };
        let p = plan(std::slice::from_ref(&job), &queue.actual().unwrap());
        queue.apply(&p, &[], &source).unwrap();
        (queue, job.id)
    }

    #[tokio::test]
    async fn a_delivered_claim_keeps_its_lease() {
        let (queue, id) = queue_with_one_job();
        let (answer, task) = start_claim(queue.clone(), worker("w1"), cpu(8));
        let claimed = claim_answer(answer).await.unwrap().unwrap();
        task.await.unwrap();
        assert_eq!(claimed.job.id, id);
        let view = queue.job(&id).unwrap();
        assert_eq!(view.status, JobStatus::Claimed);
        assert_eq!(view.attempts, 1);
    }

    /// Waits (bounded) until the job is no longer claimed.
    async fn settled(queue: &dyn JobQueue, id: &cis490_api::JobId) -> cis490_api::JobView {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let view = queue.job(id).unwrap();
            if view.status != JobStatus::Claimed || std::time::Instant::now() > deadline {
                return view;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    fn assert_released(queue: &dyn JobQueue, view: &cis490_api::JobView) {
        assert_eq!(view.status, JobStatus::Pending, "{view:?}");
        assert_eq!(view.attempts, 0, "{view:?}");
        let events = queue.events_since(0, 100).unwrap().events;
        assert!(
            events
                .iter()
                .any(|e| e.message.contains("claim-undelivered")),
            "{events:?}"
        );
    }

    #[tokio::test]
    async fn a_claim_whose_requester_hung_up_before_it_committed_is_released() {
        let (queue, id) = queue_with_one_job();
        let (answer, task) = start_claim(queue.clone(), worker("w1"), cpu(8));
        // The request future is gone (axum drops it when the client disconnects).
        drop(answer);
        task.await.unwrap();
        assert_released(queue.as_ref(), &settled(queue.as_ref(), &id).await);
        // Another worker gets it at once.
        let again = queue.claim(&worker("w2"), &cpu(8)).unwrap().unwrap();
        assert_eq!(again.job.id, id);
    }

    #[tokio::test]
    async fn a_claim_answered_into_the_channel_of_a_gone_requester_is_released() {
        let (queue, id) = queue_with_one_job();
        let (answer, task) = start_claim(queue.clone(), worker("w1"), cpu(8));
        task.await.unwrap();
        assert_eq!(queue.job(&id).unwrap().status, JobStatus::Claimed);
        drop(answer);
        assert_released(queue.as_ref(), &settled(queue.as_ref(), &id).await);
    }
}
