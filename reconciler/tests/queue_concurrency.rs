//! Many threads claiming from one queue: every job is claimed exactly once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod queue_common;

use cis490_reconciler::queue::JobQueue;
use std::collections::BTreeSet;

use cis490_api::{JobFilter, JobStatus};
use cis490_reconciler::queue::{Queue, QueueConfig};
use queue_common::{cpu, jobs, load, worker};

#[test]
fn sixteen_threads_claim_two_thousand_jobs_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(&dir.path().join("queue.db"), QueueConfig::default()).unwrap();
    let all = jobs("job", 2000);
    load(&q, &all);

    let handles: Vec<_> = (0..16)
        .map(|t| {
            let q = q.clone();
            std::thread::spawn(move || {
                let me = worker(&format!("worker-{t}"));
                let mut mine = Vec::new();
                while let Some(claim) = q.claim(&me, &cpu()).unwrap() {
                    assert_eq!(claim.lease.attempt, 1);
                    mine.push(claim.job.id);
                }
                mine
            })
        })
        .collect();
    let per_thread: Vec<Vec<_>> = handles.into_iter().map(|h| h.join().unwrap()).collect();

    let total: usize = per_thread.iter().map(Vec::len).sum();
    let distinct: BTreeSet<_> = per_thread.iter().flatten().cloned().collect();
    assert_eq!(total, 2000, "every claim handed out a job");
    assert_eq!(distinct.len(), 2000, "no job was handed out twice");
    let expected: BTreeSet<_> = all.iter().map(|s| s.id.clone()).collect();
    assert_eq!(distinct, expected);
    assert!(
        per_thread.iter().filter(|v| !v.is_empty()).count() > 1,
        "more than one thread got work"
    );

    // The database agrees: each job claimed once, by the thread that got it.
    let views = q.jobs(&JobFilter::default()).unwrap();
    assert!(views
        .iter()
        .all(|v| v.status == JobStatus::Claimed && v.attempts == 1));
    for (t, ids) in per_thread.iter().enumerate() {
        let name = format!("worker-{t}");
        for id in ids {
            let v = views.iter().find(|v| &v.id == id).unwrap();
            assert_eq!(v.worker.as_ref().unwrap().as_str(), name);
        }
    }
    assert_eq!(q.counts().unwrap()["claimed"], 2000);
}

#[test]
fn concurrent_workers_and_a_sweeper_run_every_job_to_completion_once() {
    use cis490_api::{CompleteRequest, HeartbeatRequest};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(&dir.path().join("queue.db"), QueueConfig::default()).unwrap();
    load(&q, &jobs("mixed", 300));
    let stop = Arc::new(AtomicBool::new(false));
    let sweeper = {
        let (q, stop) = (q.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut sweeps = 0u32;
            while !stop.load(Ordering::SeqCst) {
                let out = q.sweep(q.now()).unwrap();
                assert!(out.requeued.is_empty() && out.failed.is_empty());
                sweeps += 1;
            }
            sweeps
        })
    };
    let workers: Vec<_> = (0..8)
        .map(|t| {
            let q = q.clone();
            std::thread::spawn(move || {
                let me = worker(&format!("w{t}"));
                let mut done = 0;
                while let Some(c) = q.claim(&me, &cpu()).unwrap() {
                    let hb = HeartbeatRequest {
                        worker: me.clone(),
                        lease: c.lease.clone(),
                        log_tail: Some(format!("step of {t}")),
                        log: None,
                        progress: None,
                    };
                    assert!(!q.heartbeat(&c.job.id, &hb).unwrap().cancel);
                    let req = CompleteRequest {
                        worker: me.clone(),
                        lease: c.lease,
                        artifact_id: None,
                        upload: None,
                        report: Default::default(),
                    };
                    q.complete(&c.job.id, &req).unwrap();
                    done += 1;
                }
                done
            })
        })
        .collect();
    let done: usize = workers.into_iter().map(|h| h.join().unwrap()).sum();
    stop.store(true, Ordering::SeqCst);
    assert!(sweeper.join().unwrap() > 0);
    assert_eq!(done, 300);
    let counts = q.counts().unwrap();
    assert_eq!(counts["completed"], 300, "{counts:?}");
    let claimed_events = q
        .events_since(0, 10_000)
        .unwrap()
        .events
        .iter()
        .filter(|e| e.kind == "Claimed")
        .count();
    assert_eq!(claimed_events, 300, "each job claimed exactly once");
}
