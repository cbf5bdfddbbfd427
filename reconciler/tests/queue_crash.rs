//! A crash loses nothing acknowledged: a child process applies a manifest, claims and
//! completes jobs, printing each acknowledged result, and is SIGKILLed mid-stream. Every
//! printed result must be in the database when it is reopened.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod queue_common;

use cis490_reconciler::queue::JobQueue;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cis490_api::{CompleteRequest, JobId, JobStatus, Lease, WorkerName};
use cis490_reconciler::queue::{Queue, QueueConfig};
use queue_common::{cpu, jobs, load, worker};

/// Set in the child process: the database path it works on.
const CHILD_ENV: &str = "CIS490_QUEUE_CRASH_CHILD_DB";
const JOBS: usize = 5000;
/// Acknowledged claims the parent waits for before it kills the child.
const KILL_AFTER: usize = 150;

/// Child mode: runs only when the parent re-executes this test binary with CHILD_ENV set.
#[test]
#[ignore = "child half of acknowledged_claims_survive_a_kill; run by that test"]
fn crash_child() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let q = Queue::open(&PathBuf::from(path), QueueConfig::default()).unwrap();
    load(&q, &jobs("crash", JOBS));
    println!("APPLIED");
    std::io::stdout().flush().unwrap();
    // Several claimers, so acknowledged claims also come out of shared (group) commits.
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let q = q.clone();
            std::thread::spawn(move || {
                let me = worker(&format!("crash-worker-{t}"));
                let mut n = 0u64;
                while let Some(c) = q.claim(&me, &cpu()).unwrap() {
                    n += 1;
                    // Printed only after claim() returned Ok: the claim is acknowledged.
                    let mut out = std::io::stdout().lock();
                    writeln!(
                        out,
                        "CLAIMED {} {} {} {me}",
                        c.job.id, c.lease.attempt, c.lease.token
                    )
                    .unwrap();
                    out.flush().unwrap();
                    drop(out);
                    if n.is_multiple_of(3) {
                        let req = CompleteRequest {
                            worker: me.clone(),
                            lease: c.lease.clone(),
                            artifact_id: None,
                            upload: None,
                            report: Default::default(),
                        };
                        q.complete(&c.job.id, &req).unwrap();
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "COMPLETED {}", c.job.id).unwrap();
                        out.flush().unwrap();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // Ran out of jobs before the kill: wait for it.
    std::thread::sleep(Duration::from_secs(600));
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn acknowledged_claims_survive_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("queue.db");
    let exe = std::env::current_exe().unwrap();
    let child = Command::new(exe)
        .args([
            "crash_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &db)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let stdout = child.0.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();

    let deadline = Instant::now() + Duration::from_secs(120);
    let mut claimed: Vec<(JobId, Lease, WorkerName)> = Vec::new();
    let mut completed: Vec<JobId> = Vec::new();
    let mut applied = false;
    let mut killed = false;
    // Read until EOF: lines written before the kill are still in the pipe and count too.
    for line in lines.by_ref() {
        assert!(Instant::now() < deadline, "child too slow");
        let line = line.unwrap();
        // The harness may print "test crash_child ... " in front of the first line.
        let words: Vec<&str> = line
            .split_whitespace()
            .skip_while(|w| !matches!(*w, "APPLIED" | "CLAIMED" | "COMPLETED"))
            .collect();
        match words.as_slice() {
            ["APPLIED"] => applied = true,
            ["CLAIMED", id, attempt, token, by] => claimed.push((
                JobId::parse(id).unwrap(),
                Lease {
                    attempt: attempt.parse().unwrap(),
                    token: token.to_string(),
                },
                worker(by),
            )),
            ["COMPLETED", id] => completed.push(JobId::parse(id).unwrap()),
            _ => {} // the test harness's own lines
        }
        if !killed && claimed.len() >= KILL_AFTER {
            child.0.kill().unwrap(); // SIGKILL: no destructors, no flushing
            killed = true;
        }
    }
    let status = child.0.wait().unwrap();
    assert!(applied, "the child applied the manifest");
    assert!(
        killed && !status.success(),
        "the child was killed mid-stream"
    );
    assert!(claimed.len() >= KILL_AFTER);
    assert!(claimed.len() < JOBS, "killed before it ran out of jobs");

    let q = Queue::open(&db, QueueConfig::default()).unwrap();
    assert_eq!(
        q.actual().unwrap().len(),
        JOBS,
        "the acknowledged apply survived"
    );
    for (id, lease, me) in &claimed {
        let view = q.job(id).unwrap();
        if completed.contains(id) {
            assert_eq!(view.status, JobStatus::Completed, "job {id}");
        } else {
            assert!(
                matches!(view.status, JobStatus::Claimed | JobStatus::Completed),
                "job {id} is {}",
                view.status
            );
            if view.status == JobStatus::Claimed {
                assert_eq!(q.check_lease(id, me, lease).unwrap().id, *id);
            }
        }
        assert_eq!(view.attempts, 1);
    }
    // Nothing was claimed twice: claims in the database are at least those acknowledged.
    let counts = q.counts().unwrap();
    let held = counts["claimed"] + counts["completed"];
    assert!(held as usize >= claimed.len(), "{counts:?}");
    assert!(
        held as usize <= claimed.len() + 4,
        "at most one unacknowledged claim per claimer: {counts:?}"
    );
}
