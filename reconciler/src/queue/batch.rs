//! Group commit for the hot worker calls (claim, heartbeat, complete, fail).
//!
//! With `synchronous=FULL` every commit waits for an fsync, which costs far more than the
//! work of a claim. So concurrent worker calls share commits: each call queues its
//! operation and then takes the connection lock; whoever gets the lock first (the leader)
//! runs every queued operation in one IMMEDIATE transaction, each inside its own SAVEPOINT
//! (so each operation is still all-or-nothing and a refused one rolls back alone), commits
//! once, and hands every caller its result. A caller whose operation a leader already ran
//! just returns its result. Nobody is answered before the commit that holds their change,
//! so an acknowledged call is durable exactly as with one transaction per call; a lone
//! caller is a batch of one.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use cis490_api::{
    Capability, ClaimResponse, CompleteRequest, FailRequest, HeartbeatRequest, HeartbeatResponse,
    JobId, JobStatusResponse, WorkerName,
};
use rusqlite::TransactionBehavior;

use super::{lifecycle, matching, Queue, QueueError, Tx};

/// Most operations one leader commits at once (the rest wait for the next commit).
const MAX_BATCH: usize = 256;

/// A worker call, with owned arguments so another thread can run it.
// Each value is moved once into the waiting list and once out; boxing would cost more.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Op {
    Claim(WorkerName, Capability),
    Heartbeat(JobId, HeartbeatRequest),
    Complete(JobId, CompleteRequest),
    Fail(JobId, FailRequest),
}

/// What an `Op` returns.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Done {
    Claim(Option<ClaimResponse>),
    Heartbeat(HeartbeatResponse),
    Status(JobStatusResponse),
}

type Slot = Arc<Mutex<Option<Result<Done, QueueError>>>>;

/// Operations waiting for a leader, and whether one is at work.
#[derive(Default)]
pub(crate) struct Waiting {
    state: Mutex<WaitState>,
    /// Signalled when a leader has answered its batch.
    answered: Condvar,
}

#[derive(Default)]
struct WaitState {
    ops: Vec<(Op, Slot)>,
    leading: bool,
}

impl Waiting {
    fn lock(&self) -> MutexGuard<'_, WaitState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Ends a leader's turn: answers whatever it left unanswered (only if it panicked), then
/// lets the next leader start and wakes the callers it answered.
struct EndTurn<'a> {
    waiting: &'a Waiting,
    slots: Vec<Slot>,
}

impl Drop for EndTurn<'_> {
    fn drop(&mut self) {
        for slot in &self.slots {
            let mut answer = slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if answer.is_none() {
                *answer = Some(Err(QueueError::Commit(
                    "the group commit was interrupted".to_string(),
                )));
            }
        }
        self.waiting.lock().leading = false;
        self.waiting.answered.notify_all();
    }
}

fn run(tx: &mut Tx<'_>, op: &Op) -> Result<Done, QueueError> {
    match op {
        Op::Claim(worker, cap) => matching::i_claim(tx, worker, cap).map(Done::Claim),
        Op::Heartbeat(id, req) => lifecycle::i_heartbeat(tx, id, req).map(Done::Heartbeat),
        Op::Complete(id, req) => lifecycle::i_complete(tx, id, req).map(Done::Status),
        Op::Fail(id, req) => lifecycle::i_fail(tx, id, req).map(Done::Status),
    }
}

fn take(slot: &Slot) -> Option<Result<Done, QueueError>> {
    slot.lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take()
}

fn put(slot: &Slot, result: Result<Done, QueueError>) {
    *slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(result);
}

impl Queue {
    /// Runs `op` in a group commit and returns its result once it is durable.
    ///
    /// Callers wait on a condition variable, not on the connection: a caller whose
    /// operation a leader ran is woken with its answer at once, and the next leader takes
    /// everything that queued up meanwhile.
    pub(crate) fn batched(&self, op: Op) -> Result<Done, QueueError> {
        let waiting = &self.inner.waiting;
        let slot: Slot = Arc::new(Mutex::new(None));
        let mut state = waiting.lock();
        state.ops.push((op, slot.clone()));
        loop {
            if let Some(result) = take(&slot) {
                return result;
            }
            if state.leading {
                state = waiting
                    .answered
                    .wait(state)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                continue;
            }
            state.leading = true;
            let n = state.ops.len().min(MAX_BATCH);
            let batch: Vec<(Op, Slot)> = state.ops.drain(..n).collect();
            drop(state);
            let turn = EndTurn {
                waiting,
                slots: batch.iter().map(|(_, s)| s.clone()).collect(),
            };
            self.lead(&batch);
            drop(turn);
            state = waiting.lock();
        }
    }

    /// Runs `batch` in one transaction on the connection and answers every operation.
    fn lead(&self, batch: &[(Op, Slot)]) {
        let now = self.now_ms();
        let last_event = {
            let mut conn = self.lock();
            self.commit_batch(&mut conn, now, batch)
        };
        if let Some(seq) = last_event {
            self.inner.last_event.send_replace(seq);
        }
    }

    /// Runs `batch` in one transaction and answers every operation in it. Returns the seq
    /// of the last event committed.
    fn commit_batch(
        &self,
        conn: &mut rusqlite::Connection,
        now: i64,
        batch: &[(Op, Slot)],
    ) -> Option<u64> {
        let fail_all = |why: String| {
            for (_, slot) in batch {
                put(slot, Err(QueueError::Commit(why.clone())));
            }
        };
        let db = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(db) => db,
            Err(e) => {
                fail_all(e.to_string());
                return None;
            }
        };
        let mut tx = Tx {
            db,
            now,
            config: &self.inner.config,
            last_event: None,
        };
        let mut results = Vec::with_capacity(batch.len());
        for (op, _) in batch {
            match run_in_savepoint(&mut tx, op) {
                Ok(result) => results.push(result),
                Err(broken) => {
                    // A savepoint could not be taken or undone: the transaction's content
                    // is unknown, so none of it is committed (dropping it rolls back).
                    drop(tx);
                    fail_all(broken.to_string());
                    return None;
                }
            }
        }
        let last_event = tx.last_event;
        if let Err(e) = tx.db.commit() {
            fail_all(e.to_string());
            return None;
        }
        for ((_, slot), result) in batch.iter().zip(results) {
            put(slot, result);
        }
        last_event
    }
}

/// Runs one operation so that its failure undoes only its own changes. The outer error
/// means the savepoint machinery itself failed.
fn run_in_savepoint(tx: &mut Tx<'_>, op: &Op) -> Result<Result<Done, QueueError>, rusqlite::Error> {
    tx.db.execute_batch("SAVEPOINT op")?;
    let events_before = tx.last_event;
    match run(tx, op) {
        Ok(done) => {
            tx.db.execute_batch("RELEASE op")?;
            Ok(Ok(done))
        }
        Err(err) => {
            tx.last_event = events_before;
            tx.db.execute_batch("ROLLBACK TO op; RELEASE op")?;
            Ok(Err(err))
        }
    }
}

#[cfg(test)]
mod tests {
    use cis490_api::{JobStatus, Lease};

    use super::*;
    use crate::plan::plan;
    use crate::queue::test_support::{cpu, specs, worker};
    use crate::queue::{ManifestSource, QueueConfig};

    #[test]
    fn a_refused_operation_in_a_batch_leaves_the_others_committed() {
        let q = Queue::open_in_memory(QueueConfig::default()).unwrap();
        let jobs = specs("j", 2);
        let p = plan(&jobs, &q.actual().unwrap());
        q.apply(&p, &[], &ManifestSource::default()).unwrap();
        let bogus = HeartbeatRequest {
            worker: worker("w1"),
            lease: Lease {
                attempt: 1,
                token: "nope".to_string(),
            },
            log_tail: None,
        };
        let batch: Vec<(Op, Slot)> = vec![
            (Op::Claim(worker("w1"), cpu(8)), Slot::default()),
            (Op::Heartbeat(jobs[0].id.clone(), bogus), Slot::default()),
            (Op::Claim(worker("w2"), cpu(8)), Slot::default()),
        ];
        let events_before = q.events_since(0, 100).unwrap().next;
        let last = {
            let mut conn = q.lock();
            q.commit_batch(&mut conn, q.now_ms(), &batch)
        };
        let answers: Vec<_> = batch.iter().map(|(_, s)| take(s).unwrap()).collect();
        assert!(matches!(&answers[0], Ok(Done::Claim(Some(_)))));
        assert!(matches!(&answers[1], Err(QueueError::LeaseLost { .. })));
        assert!(matches!(&answers[2], Ok(Done::Claim(Some(_)))));
        for job in &jobs {
            assert_eq!(q.job(&job.id).unwrap().status, JobStatus::Claimed);
        }
        // Two NodeRegistered and two Claimed events, and the watch value is the last one.
        assert_eq!(last, Some(events_before + 4));
        assert_eq!(q.events_since(0, 100).unwrap().next, events_before + 4);
    }

    #[test]
    fn concurrent_callers_share_commits_and_all_get_answers() {
        let q = Queue::open_in_memory(QueueConfig::default()).unwrap();
        let jobs = specs("j", 64);
        let p = plan(&jobs, &q.actual().unwrap());
        q.apply(&p, &[], &ManifestSource::default()).unwrap();
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let q = q.clone();
                std::thread::spawn(move || {
                    let me = worker(&format!("w{t}"));
                    let mut got = 0;
                    while q.claim(&me, &cpu(8)).unwrap().is_some() {
                        got += 1;
                    }
                    got
                })
            })
            .collect();
        let total: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(total, 64);
        assert!(q.inner.waiting.lock().ops.is_empty());
        assert!(!q.inner.waiting.lock().leading);
    }
}
