//! Many callers at once, on both backends: each job is leased once however many workers
//! (and, on PostgreSQL, servers) claim together, and a follower of the event log that
//! resumes from the last seq it saw misses no event while writers commit side by side.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use cis490_api::{CompleteRequest, HeartbeatRequest, JobId, JobStatus};

use super::test_support::{cpu, manual_clock, on_both_backends, specs, worker, Backend};
use super::{JobQueue, ManifestSource, PgQueue, QueueConfig};
use crate::plan::plan;

const WORKERS: usize = 6;
const JOBS: usize = 60;

fn load(q: &dyn JobQueue, n: usize) -> Vec<JobId> {
    let jobs = specs("c", n);
    let p = plan(&jobs, &q.actual().unwrap());
    q.apply(&p, &[], &ManifestSource::default()).unwrap();
    jobs.into_iter().map(|j| j.id).collect()
}

/// Each of `queues` (one per server) gets `WORKERS / queues.len()` claiming threads; each
/// thread claims until nothing is left and completes what it got.
fn claim_everything(queues: &[&dyn JobQueue]) -> BTreeMap<JobId, usize> {
    let claimed = Mutex::new(BTreeMap::<JobId, usize>::new());
    std::thread::scope(|s| {
        for i in 0..WORKERS {
            let q = queues[i % queues.len()];
            let claimed = &claimed;
            s.spawn(move || {
                let me = worker(&format!("w{i}"));
                let mut cap = cpu(8);
                cap.max_concurrent = u32::MAX;
                while let Some(c) = q.claim(&me, &cap).unwrap() {
                    *claimed.lock().unwrap().entry(c.job.id.clone()).or_default() += 1;
                    let beat = HeartbeatRequest {
                        worker: me.clone(),
                        lease: c.lease.clone(),
                        log_tail: None,
                        log: None,
                        progress: None,
                    };
                    q.heartbeat(&c.job.id, &beat).unwrap();
                    let done = CompleteRequest {
                        worker: me.clone(),
                        lease: c.lease,
                        artifact_id: None,
                        upload: None,
                        report: Default::default(),
                    };
                    q.complete(&c.job.id, &done).unwrap();
                }
            });
        }
    });
    claimed.into_inner().unwrap()
}

fn each_job_is_claimed_exactly_once_by_concurrent_workers(b: Backend) {
    let q = b.queue_on(&manual_clock(), QueueConfig::default());
    let ids = load(&*q, JOBS);
    let claimed = claim_everything(&[&*q]);
    assert_eq!(claimed.len(), JOBS, "every job was claimed");
    assert!(
        claimed.values().all(|&n| n == 1),
        "a job was leased twice: {claimed:?}"
    );
    for id in &ids {
        assert_eq!(q.job(id).unwrap().status, JobStatus::Completed);
    }
}

fn a_follower_of_the_event_log_misses_nothing_while_writers_commit(b: Backend) {
    let q = b.queue_on(&manual_clock(), QueueConfig::default());
    load(&*q, JOBS);
    let q = &*q;
    let seen = Mutex::new(Vec::<u64>::new());
    let writers_done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let seen = &seen;
        let writers_done = &writers_done;
        s.spawn(move || {
            let mut since = 0;
            loop {
                let finished = writers_done.load(std::sync::atomic::Ordering::SeqCst);
                let page = q.events_since(since, 7).unwrap();
                seen.lock()
                    .unwrap()
                    .extend(page.events.iter().map(|e| e.seq));
                since = page.next;
                if finished && page.events.is_empty() {
                    return;
                }
            }
        });
        claim_everything(&[q]);
        writers_done.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let seen = seen.into_inner().unwrap();
    let all: Vec<u64> = q
        .events_since(0, 100_000)
        .unwrap()
        .events
        .iter()
        .map(|e| e.seq)
        .collect();
    let expected: Vec<u64> = (1..=all.len() as u64).collect();
    assert_eq!(all, expected, "seqs are gapless from 1");
    assert_eq!(seen, all, "the follower saw every event once, in order");
}

on_both_backends!(
    each_job_is_claimed_exactly_once_by_concurrent_workers,
    a_follower_of_the_event_log_misses_nothing_while_writers_commit,
);

/// Two servers on one PostgreSQL database claim side by side: still one lease per job.
#[test]
fn two_postgres_servers_on_one_database_lease_each_job_once() {
    if super::test_support::postgres_url().is_none() {
        return;
    }
    let clock = manual_clock();
    let first = Backend::Postgres.queue_on(&clock, QueueConfig::default());
    let url = first.url.clone().unwrap();
    let second = PgQueue::open_with_clock(&url, QueueConfig::default(), clock.clone()).unwrap();
    load(&*first, JOBS);
    let claimed = claim_everything(&[&*first, &second]);
    assert_eq!(claimed.len(), JOBS);
    assert!(claimed.values().all(|&n| n == 1), "{claimed:?}");
    let seqs: BTreeSet<u64> = second
        .events_since(0, 100_000)
        .unwrap()
        .events
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(
        seqs.len() as u64,
        *seqs.last().unwrap(),
        "no gaps across servers"
    );
    drop(second);
}

/// A commit on one PostgreSQL server wakes the watchers of another (LISTEN/NOTIFY).
#[test]
fn a_commit_on_one_postgres_server_wakes_the_watchers_of_another() {
    if super::test_support::postgres_url().is_none() {
        return;
    }
    let clock = manual_clock();
    let first = Backend::Postgres.queue_on(&clock, QueueConfig::default());
    let url = first.url.clone().unwrap();
    let second = PgQueue::open_with_clock(&url, QueueConfig::default(), clock.clone()).unwrap();
    let mut watching = first.subscribe();
    let before = *watching.borrow_and_update();
    load(&second, 3);
    let head = second.events_since(0, 100).unwrap().next;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while *watching.borrow() < head {
        assert!(
            std::time::Instant::now() < deadline,
            "the first server never heard of the second's commit (watch at {before})"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop(second);
}
