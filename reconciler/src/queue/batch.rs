//! Group commit for the hot worker calls (claim, heartbeat, complete, fail).
//!
//! With `synchronous=FULL` every commit waits for an fsync, which costs far more than the
//! work of a claim. So concurrent worker calls share commits: each call queues its
//! operation; a caller that finds no leader becomes the leader (and each leader hands the
//! lead to the oldest caller still waiting), and the leader
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

/// Where a caller waits: for its answer, or for its turn to lead. Each caller has its own
/// condition variable, so a commit wakes exactly the callers it answered plus the next
/// leader (one shared `notify_all` woke every waiting caller after every commit).
#[derive(Default)]
pub(crate) struct SlotCell {
    state: Mutex<SlotState>,
    ready: Condvar,
}

#[derive(Default)]
struct SlotState {
    answer: Option<Result<Done, QueueError>>,
    /// Set when the previous leader hands the next batch to this caller.
    lead: bool,
}

type Slot = Arc<SlotCell>;

impl SlotCell {
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Operations waiting for a leader, and whether one is at work.
#[derive(Default)]
pub(crate) struct Waiting {
    state: Mutex<WaitState>,
}

#[derive(Default)]
struct WaitState {
    ops: Vec<(Op, Slot)>,
    /// The last batch's vector, emptied, for the next batch: a batch holds up to
    /// [`MAX_BATCH`] operations of a few hundred bytes each, and a fresh one for every
    /// commit had the allocator fault in fresh pages again and again.
    spare: Vec<(Op, Slot)>,
    /// A leader is at work or has been chosen; it stays true across a hand-off.
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
/// hands leadership to the caller of the oldest waiting operation, or ends it.
struct EndTurn<'a> {
    waiting: &'a Waiting,
    slots: Vec<Slot>,
}

impl Drop for EndTurn<'_> {
    fn drop(&mut self) {
        for slot in &self.slots {
            let mut state = slot.lock();
            if state.answer.is_none() {
                state.answer = Some(Err(QueueError::Commit(
                    "the group commit was interrupted".to_string(),
                )));
                slot.ready.notify_one();
            }
        }
        let mut waiting = self.waiting.lock();
        match waiting.ops.first() {
            Some((_, next)) => {
                next.lock().lead = true;
                next.ready.notify_one();
            }
            None => waiting.leading = false,
        }
    }
}

/// Takes the lead when nobody has it (false), or says the caller must wait (true).
fn claim_or_wait(state: &mut WaitState) -> bool {
    if state.leading {
        true
    } else {
        state.leading = true;
        false
    }
}

/// Waits on the caller's own slot: Some(answer), or None when it was handed the lead.
fn wait_for_answer_or_turn(slot: &Slot) -> Option<Result<Done, QueueError>> {
    let mut mine = slot.lock();
    loop {
        if let Some(result) = mine.answer.take() {
            return Some(result);
        }
        if mine.lead {
            mine.lead = false;
            return None;
        }
        mine = slot
            .ready
            .wait(mine)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
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
    slot.lock().answer.take()
}

fn put(slot: &Slot, result: Result<Done, QueueError>) {
    slot.lock().answer = Some(result);
    slot.ready.notify_one();
}

impl Queue {
    /// Runs `op` in a group commit and returns its result once it is durable.
    ///
    /// The first caller to find no leader leads: it commits everything queued (its own
    /// operation first), answers each caller, and hands leadership to the caller of the
    /// oldest operation that queued up meanwhile. Others wait on their own slot for their
    /// answer or their turn to lead. A leader's own operation is always in its batch:
    /// a caller becomes leader only with its operation at the head of the queue.
    pub(crate) fn batched(&self, op: Op) -> Result<Done, QueueError> {
        let waiting = &self.inner.waiting;
        let slot: Slot = Arc::default();
        let mut must_wait = {
            let mut state = waiting.lock();
            state.ops.push((op, slot.clone()));
            claim_or_wait(&mut state)
        };
        loop {
            if must_wait {
                if let Some(result) = wait_for_answer_or_turn(&slot) {
                    return result;
                }
            }
            let mut batch: Vec<(Op, Slot)> = {
                let mut state = waiting.lock();
                if state.ops.len() <= MAX_BATCH {
                    let spare = std::mem::take(&mut state.spare);
                    std::mem::replace(&mut state.ops, spare)
                } else {
                    state.ops.drain(..MAX_BATCH).collect()
                }
            };
            let turn = EndTurn {
                waiting,
                slots: batch.iter().map(|(_, s)| s.clone()).collect(),
            };
            self.lead(&batch);
            batch.clear();
            {
                let mut state = waiting.lock();
                if batch.capacity() > state.spare.capacity() {
                    state.spare = batch;
                }
            }
            drop(turn);
            if let Some(result) = take(&slot) {
                return result;
            }
            // Not reached while the invariant above holds; waiting again keeps the caller
            // answered even if it did not.
            must_wait = claim_or_wait(&mut waiting.lock());
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
        // First every operation without savepoints: a savepoint copies each page an
        // operation first touches into the statement journal (profile of the 64-thread
        // drain: 22% of a claim's instructions), and operations rarely fail. Only when one
        // does is the whole attempt rolled back and the batch run again with a savepoint
        // per operation, so each still commits or fails alone. Nobody has been answered
        // before the commit, so the discarded attempt is never seen.
        for isolate in [false, true] {
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
                if !isolate {
                    match run(&mut tx, op) {
                        Ok(done) => {
                            results.push(Ok(done));
                            continue;
                        }
                        // Dropping the transaction rolls the attempt back.
                        Err(_) => break,
                    }
                }
                match run_in_savepoint(&mut tx, op) {
                    Ok(result) => results.push(result),
                    Err(broken) => {
                        // A savepoint could not be taken or undone: the transaction's
                        // content is unknown, so none of it is committed (dropping it
                        // rolls back).
                        drop(tx);
                        fail_all(broken.to_string());
                        return None;
                    }
                }
            }
            if results.len() < batch.len() {
                continue;
            }
            let last_event = tx.last_event;
            if let Err(e) = tx.db.commit() {
                fail_all(e.to_string());
                return None;
            }
            for ((_, slot), result) in batch.iter().zip(results) {
                put(slot, result);
            }
            return last_event;
        }
        // Not reached: the isolated pass answers every operation or fails them all.
        fail_all("the group commit ran no pass".to_string());
        None
    }
}

/// Runs one operation so that its failure undoes only its own changes. The outer error
/// means the savepoint machinery itself failed.
fn run_in_savepoint(tx: &mut Tx<'_>, op: &Op) -> Result<Result<Done, QueueError>, rusqlite::Error> {
    // Cached statements: `execute_batch` would parse the SQL again for every operation.
    let exec = |tx: &Tx<'_>, sql: &str| tx.db.prepare_cached(sql)?.execute([]).map(|_| ());
    exec(tx, "SAVEPOINT op")?;
    let events_before = tx.last_event;
    match run(tx, op) {
        Ok(done) => {
            exec(tx, "RELEASE op")?;
            Ok(Ok(done))
        }
        Err(err) => {
            tx.last_event = events_before;
            exec(tx, "ROLLBACK TO op")?;
            exec(tx, "RELEASE op")?;
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
            log: None,
            progress: None,
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
