//! Group commit for the hot worker calls (claim, heartbeat, upload record, complete, fail)
//! and the artifact index rows the store adds as uploads land.
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

use super::job_queue::Finished;
use cis490_api::{
    ArtifactId, ArtifactView, Capability, ClaimResponse, CompleteRequest, FailRequest,
    HeartbeatRequest, HeartbeatResponse, JobId, Lease, WorkerName,
};
use rusqlite::TransactionBehavior;

use super::{artifact_index, lease, matching, Queue, QueueError, Tx};

/// Most operations one leader commits at once (the rest wait for the next commit).
const MAX_BATCH: usize = 256;

/// A worker call the group commit runs: its owned arguments (so another thread can run
/// it) and the type of its answer.
pub(crate) trait BatchOp {
    type Reply;
    /// The queued form of the call, answered through `reply`.
    fn queued(self, reply: Arc<Reply<Self::Reply>>) -> Op;
}

pub(crate) struct Claim(pub WorkerName, pub Capability);
pub(crate) struct Heartbeat(pub JobId, pub HeartbeatRequest);
pub(crate) struct Complete(pub JobId, pub CompleteRequest);
pub(crate) struct Fail(pub JobId, pub FailRequest);
/// An upload the store accepted: (job, worker, lease, artifact, size in bytes).
pub(crate) struct Upload(
    pub JobId,
    pub WorkerName,
    pub Lease,
    pub ArtifactId,
    pub u64,
);

/// Rows for the artifact index (see `artifact_index.rs`).
pub(crate) struct IndexArtifacts(pub Vec<ArtifactView>);

impl BatchOp for IndexArtifacts {
    type Reply = usize;
    fn queued(self, reply: Arc<Reply<Self::Reply>>) -> Op {
        Op::IndexArtifacts(self, reply)
    }
}

impl BatchOp for Claim {
    type Reply = Option<ClaimResponse>;
    fn queued(self, reply: Arc<Reply<Self::Reply>>) -> Op {
        Op::Claim(self, reply)
    }
}

impl BatchOp for Heartbeat {
    type Reply = HeartbeatResponse;
    fn queued(self, reply: Arc<Reply<Self::Reply>>) -> Op {
        Op::Heartbeat(self, reply)
    }
}

impl BatchOp for Complete {
    type Reply = Finished;
    fn queued(self, reply: Arc<Reply<Self::Reply>>) -> Op {
        Op::Complete(self, reply)
    }
}

impl BatchOp for Fail {
    type Reply = Finished;
    fn queued(self, reply: Arc<Reply<Self::Reply>>) -> Op {
        Op::Fail(self, reply)
    }
}

impl BatchOp for Upload {
    type Reply = ();
    fn queued(self, reply: Arc<Reply<Self::Reply>>) -> Op {
        Op::Upload(self, reply)
    }
}

/// A queued worker call with the reply its caller waits on.
// Each value is moved once into the waiting list and once out; boxing would cost more.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Op {
    Claim(Claim, Arc<Reply<Option<ClaimResponse>>>),
    Heartbeat(Heartbeat, Arc<Reply<HeartbeatResponse>>),
    Complete(Complete, Arc<Reply<Finished>>),
    Fail(Fail, Arc<Reply<Finished>>),
    Upload(Upload, Arc<Reply<()>>),
    IndexArtifacts(IndexArtifacts, Arc<Reply<usize>>),
}

impl Op {
    /// The reply as far as the group commit needs it (answered or not, the lead).
    fn waiter(&self) -> &dyn Waiter {
        match self {
            Op::Claim(_, reply) => reply.as_ref(),
            Op::Heartbeat(_, reply) => reply.as_ref(),
            Op::Complete(_, reply) => reply.as_ref(),
            Op::Fail(_, reply) => reply.as_ref(),
            Op::Upload(_, reply) => reply.as_ref(),
            Op::IndexArtifacts(_, reply) => reply.as_ref(),
        }
    }

    fn shared_waiter(&self) -> Arc<dyn Waiter> {
        match self {
            Op::Claim(_, reply) => reply.clone(),
            Op::Heartbeat(_, reply) => reply.clone(),
            Op::Complete(_, reply) => reply.clone(),
            Op::Fail(_, reply) => reply.clone(),
            Op::Upload(_, reply) => reply.clone(),
            Op::IndexArtifacts(_, reply) => reply.clone(),
        }
    }
}

/// Where a caller waits: for its answer, or for its turn to lead. Each caller has its own
/// condition variable, so a commit wakes exactly the callers it answered plus the next
/// leader (one shared `notify_all` woke every waiting caller after every commit).
pub(crate) struct Reply<T> {
    state: Mutex<ReplyState<T>>,
    ready: Condvar,
}

struct ReplyState<T> {
    /// The operation's result in the transaction not yet committed; the caller never
    /// sees it (a pass that is rolled back runs the operation again).
    staged: Option<Result<T, QueueError>>,
    /// The answer, set once the transaction that holds it committed (or failed).
    answer: Option<Result<T, QueueError>>,
    /// Set when the previous leader hands the next batch to this caller.
    lead: bool,
}

impl<T> Default for Reply<T> {
    fn default() -> Self {
        Reply {
            state: Mutex::new(ReplyState {
                staged: None,
                answer: None,
                lead: false,
            }),
            ready: Condvar::new(),
        }
    }
}

impl<T> Reply<T> {
    fn lock(&self) -> MutexGuard<'_, ReplyState<T>> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Keeps `result` for the commit; true when the operation succeeded.
    fn stage(&self, result: Result<T, QueueError>) -> bool {
        let ok = result.is_ok();
        self.lock().staged = Some(result);
        ok
    }

    /// Takes the caller's answer, once there is one.
    fn take(&self) -> Option<Result<T, QueueError>> {
        self.lock().answer.take()
    }

    /// Waits for the answer: Some(answer), or None when the caller was handed the lead.
    fn wait_for_answer_or_turn(&self) -> Option<Result<T, QueueError>> {
        let mut mine = self.lock();
        loop {
            if let Some(result) = mine.answer.take() {
                return Some(result);
            }
            if mine.lead {
                mine.lead = false;
                return None;
            }
            mine = self
                .ready
                .wait(mine)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }
}

/// What the group commit does with a reply, whatever its type.
trait Waiter: Send + Sync {
    /// The commit holding the staged result is durable: answer the caller with it.
    fn publish(&self);
    /// Answers the caller with a commit failure (nothing of the batch took effect).
    fn fail(&self, why: &str);
    /// Answers "interrupted" when the caller has no answer yet (a leader panicked).
    fn interrupted(&self);
    /// The caller leads the next batch.
    fn hand_lead(&self);
}

impl<T: Send> Waiter for Reply<T> {
    fn publish(&self) {
        let mut state = self.lock();
        if let Some(result) = state.staged.take() {
            state.answer = Some(result);
            self.ready.notify_one();
        }
    }

    fn fail(&self, why: &str) {
        let mut state = self.lock();
        state.staged = None;
        state.answer = Some(Err(QueueError::Commit(why.to_string())));
        self.ready.notify_one();
    }

    fn interrupted(&self) {
        let mut state = self.lock();
        if state.answer.is_none() {
            state.staged = None;
            state.answer = Some(Err(QueueError::Commit(
                "the group commit was interrupted".to_string(),
            )));
            self.ready.notify_one();
        }
    }

    fn hand_lead(&self) {
        self.lock().lead = true;
        self.ready.notify_one();
    }
}

/// Operations waiting for a leader, and whether one is at work.
#[derive(Default)]
pub(crate) struct Waiting {
    state: Mutex<WaitState>,
}

#[derive(Default)]
struct WaitState {
    ops: Vec<Op>,
    /// The last batch's vector, emptied, for the next batch: a batch holds up to
    /// [`MAX_BATCH`] operations of a few hundred bytes each, and a fresh one for every
    /// commit had the allocator fault in fresh pages again and again.
    spare: Vec<Op>,
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
    replies: Vec<Arc<dyn Waiter>>,
}

impl Drop for EndTurn<'_> {
    fn drop(&mut self) {
        for reply in &self.replies {
            reply.interrupted();
        }
        let mut waiting = self.waiting.lock();
        match waiting.ops.first() {
            Some(next) => next.waiter().hand_lead(),
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

/// Runs `op` and stages its result in its reply; true when it succeeded.
fn run(tx: &mut Tx<'_>, op: &Op) -> bool {
    match op {
        Op::Claim(Claim(worker, cap), reply) => reply.stage(matching::i_claim(tx, worker, cap)),
        Op::Heartbeat(Heartbeat(id, req), reply) => reply.stage(lease::i_heartbeat(tx, id, req)),
        Op::Complete(Complete(id, req), reply) => reply.stage(lease::i_complete(tx, id, req)),
        Op::Fail(Fail(id, req), reply) => reply.stage(lease::i_fail(tx, id, req)),
        Op::Upload(Upload(id, worker, lease, artifact, size), reply) => reply.stage(
            lease::i_record_upload(tx, id, worker, lease, artifact, *size),
        ),
        Op::IndexArtifacts(IndexArtifacts(rows), reply) => {
            reply.stage(artifact_index::i_add(tx, rows))
        }
    }
}

impl Queue {
    /// Runs `op` in a group commit and returns its result once it is durable.
    ///
    /// The first caller to find no leader leads: it commits everything queued (its own
    /// operation first), answers each caller, and hands leadership to the caller of the
    /// oldest operation that queued up meanwhile. Others wait on their own reply for their
    /// answer or their turn to lead. A leader's own operation is always in its batch:
    /// a caller becomes leader only with its operation at the head of the queue.
    pub(crate) fn batched<O: BatchOp>(&self, op: O) -> Result<O::Reply, QueueError> {
        let waiting = &self.inner.waiting;
        let reply: Arc<Reply<O::Reply>> = Arc::default();
        let mut must_wait = {
            let mut state = waiting.lock();
            state.ops.push(op.queued(reply.clone()));
            claim_or_wait(&mut state)
        };
        loop {
            if must_wait {
                if let Some(result) = reply.wait_for_answer_or_turn() {
                    return result;
                }
            }
            let mut batch: Vec<Op> = {
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
                replies: batch.iter().map(Op::shared_waiter).collect(),
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
            if let Some(result) = reply.take() {
                return result;
            }
            // Not reached while the invariant above holds; waiting again keeps the caller
            // answered even if it did not.
            must_wait = claim_or_wait(&mut waiting.lock());
        }
    }

    /// Runs `batch` in one transaction on the connection and answers every operation.
    fn lead(&self, batch: &[Op]) {
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
    fn commit_batch(&self, conn: &mut rusqlite::Connection, now: i64, batch: &[Op]) -> Option<u64> {
        let fail_all = |why: String| {
            for op in batch {
                op.waiter().fail(&why);
            }
        };
        // First every operation without savepoints: a savepoint copies each page an
        // operation first touches into the statement journal (profile of the 64-thread
        // drain: 22% of a claim's instructions), and operations rarely fail. Only when one
        // does is the whole attempt rolled back and the batch run again with a savepoint
        // per operation, so each still commits or fails alone. Nobody has been answered
        // before the commit (results are only staged), so the discarded attempt is never
        // seen.
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
            let mut all_ran = true;
            for op in batch {
                if !isolate {
                    if run(&mut tx, op) {
                        continue;
                    }
                    // Dropping the transaction rolls the attempt back.
                    all_ran = false;
                    break;
                }
                if let Err(broken) = run_in_savepoint(&mut tx, op) {
                    // A savepoint could not be taken or undone: the transaction's content
                    // is unknown, so none of it is committed (dropping it rolls back).
                    drop(tx);
                    fail_all(broken.to_string());
                    return None;
                }
            }
            if !all_ran {
                continue;
            }
            let last_event = tx.last_event;
            if let Err(e) = tx.db.commit() {
                fail_all(e.to_string());
                return None;
            }
            for op in batch {
                op.waiter().publish();
            }
            return last_event;
        }
        // Not reached: the isolated pass answers every operation or fails them all.
        fail_all("the group commit ran no pass".to_string());
        None
    }
}

/// Runs one operation so that its failure undoes only its own changes (its result, Ok or
/// not, is staged in its reply). The error means the savepoint machinery itself failed.
fn run_in_savepoint(tx: &mut Tx<'_>, op: &Op) -> Result<(), rusqlite::Error> {
    // Cached statements: `execute_batch` would parse the SQL again for every operation.
    let exec = |tx: &Tx<'_>, sql: &str| tx.db.prepare_cached(sql)?.execute([]).map(|_| ());
    exec(tx, "SAVEPOINT op")?;
    let events_before = tx.last_event;
    if run(tx, op) {
        exec(tx, "RELEASE op")?;
    } else {
        tx.last_event = events_before;
        exec(tx, "ROLLBACK TO op")?;
        exec(tx, "RELEASE op")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use cis490_api::{JobStatus, Lease};

    use super::*;
    use crate::plan::plan;
    use crate::queue::test_support::{cpu, specs, worker};
    use crate::queue::JobQueue;
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
        let first: Arc<Reply<Option<ClaimResponse>>> = Arc::default();
        let refused: Arc<Reply<HeartbeatResponse>> = Arc::default();
        let second: Arc<Reply<Option<ClaimResponse>>> = Arc::default();
        let batch: Vec<Op> = vec![
            Claim(worker("w1"), cpu(8)).queued(first.clone()),
            Heartbeat(jobs[0].id.clone(), bogus).queued(refused.clone()),
            Claim(worker("w2"), cpu(8)).queued(second.clone()),
        ];
        let events_before = q.events_since(0, 100).unwrap().next;
        let last = {
            let mut conn = q.lock();
            q.commit_batch(&mut conn, q.now_ms(), &batch)
        };
        assert!(matches!(first.take().unwrap(), Ok(Some(_))));
        assert!(matches!(
            refused.take().unwrap(),
            Err(QueueError::LeaseLost { .. })
        ));
        assert!(matches!(second.take().unwrap(), Ok(Some(_))));
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
