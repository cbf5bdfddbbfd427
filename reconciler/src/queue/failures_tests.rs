//! Failures by cause: a host failure uses no attempt, flags the host and sends the job to
//! another worker; host failures are bounded; a retried trainer failure prefers a worker
//! it has not failed on, softly.

use crate::queue::JobQueue;
use cis490_api::{
    ClaimResponse, FailRequest, FailureCause, JobId, JobSpec, JobStatus, Lease, RetryPolicy,
};

use super::test_support::Backend;
use super::test_support::{cpu, manual_clock, spec, worker};
use super::{ManifestSource, Queue, QueueConfig};
use crate::plan::plan;

fn queue(config: QueueConfig) -> Queue {
    Queue::open_in_memory(config).unwrap()
}

fn load(q: &dyn JobQueue, jobs: &[JobSpec]) {
    let p = plan(jobs, &q.actual().unwrap());
    q.apply(&p, &[], &ManifestSource::default()).unwrap();
}

fn claim(q: &dyn JobQueue, w: &str) -> Option<ClaimResponse> {
    q.claim(&worker(w), &cpu(8)).unwrap()
}

/// Fails the attempt and answers the job's new status (checking the model answered with it,
/// on every branch of the failure rules).
fn fail(q: &dyn JobQueue, id: &JobId, w: &str, lease: &Lease, cause: FailureCause) -> JobStatus {
    let done = q
        .fail_with_model(
            id,
            &FailRequest {
                report: Default::default(),
                worker: worker(w),
                lease: lease.clone(),
                reason: match cause {
                    FailureCause::Host => "cannot start trainer \"./train.sh\": not found".into(),
                    FailureCause::Trainer => "trainer exited with code 1".into(),
                },
                exit_code: None,
                log_tail: None,
                retryable: false,
                cause,
            },
        )
        .unwrap();
    assert_eq!(done.model, q.job(id).unwrap().model);
    done.answer.status
}

fn retried(name: &str) -> JobSpec {
    JobSpec {
        retry: RetryPolicy {
            retries_on_failure: 2,
        },
        ..spec(name)
    }
}

fn a_host_failure_uses_no_attempt_flags_the_host_and_goes_to_another_worker(b: Backend) {
    let q = b.queue_on(&manual_clock(), QueueConfig::default());
    let q = &*q;
    let job = spec("a");
    load(q, std::slice::from_ref(&job));
    q.report_node(&worker("good"), &cpu(8)).unwrap();
    let first = claim(q, "bad").unwrap();
    assert_eq!(
        fail(q, &job.id, "bad", &first.lease, FailureCause::Host),
        JobStatus::Pending
    );
    let view = q.job(&job.id).unwrap();
    assert_eq!(view.attempts, 0, "the attempt does not count");
    assert!(view.events.iter().any(|e| e.kind == "HostProblem"));
    let bad = q.worker(&worker("bad")).unwrap();
    let problem = bad.host_problem.expect("the host is flagged");
    assert!(problem.reason.contains("not found"), "{}", problem.reason);
    assert_eq!(problem.job_id, job.id);
    // The bad worker leaves it to the good one, which has not tried it.
    assert!(claim(q, "bad").is_none());
    let second = claim(q, "good").unwrap();
    assert_eq!(second.lease.attempt, 1);
    q.heartbeat(
        &job.id,
        &cis490_api::HeartbeatRequest {
            progress: Default::default(),
            worker: worker("good"),
            lease: second.lease.clone(),
            log_tail: None,
            log: None,
        },
    )
    .unwrap();
    q.complete(
        &job.id,
        &cis490_api::CompleteRequest {
            report: Default::default(),
            worker: worker("good"),
            lease: second.lease,
            artifact_id: None,
            upload: None,
        },
    )
    .unwrap();
    assert!(q.worker(&worker("good")).unwrap().host_problem.is_none());
    assert!(q.worker(&worker("bad")).unwrap().host_problem.is_some());
}

fn a_job_whose_trainer_no_ready_host_can_start_fails_with_the_hosts_named(b: Backend) {
    let q = b.queue_on(&manual_clock(), QueueConfig::default());
    let q = &*q;
    let job = spec("a");
    load(q, std::slice::from_ref(&job));
    q.report_node(&worker("w2"), &cpu(8)).unwrap();
    let first = claim(q, "w1").unwrap();
    assert_eq!(
        fail(q, &job.id, "w1", &first.lease, FailureCause::Host),
        JobStatus::Pending
    );
    let second = claim(q, "w2").unwrap();
    assert_eq!(
        fail(q, &job.id, "w2", &second.lease, FailureCause::Host),
        JobStatus::Failed
    );
    let view = q.job(&job.id).unwrap();
    let reason = view.error.unwrap().reason;
    assert!(
        reason.contains("every Ready worker") && reason.contains("w1") && reason.contains("w2"),
        "{reason}"
    );
    // Requeued (the hosts fixed), the job starts over with no failures remembered.
    q.requeue(&job.id).unwrap();
    assert!(claim(q, "w1").is_some());
}

fn host_failures_are_capped_even_while_another_worker_never_tries(b: Backend) {
    let q = b.queue_on(
        &manual_clock(),
        QueueConfig {
            retry_elsewhere_wait_s: 0,
            ..QueueConfig::default()
        },
    );
    let q = &*q;
    let job = spec("a");
    load(q, std::slice::from_ref(&job));
    q.report_node(&worker("idle"), &cpu(8)).unwrap();
    let mut last = JobStatus::Pending;
    for _ in 0..super::failures::MAX_HOST_FAILURES {
        let c = claim(q, "bad").expect("no wait for others: bad takes it again");
        last = fail(q, &job.id, "bad", &c.lease, FailureCause::Host);
    }
    assert_eq!(last, JobStatus::Failed);
    let reason = q.job(&job.id).unwrap().error.unwrap().reason;
    assert!(reason.contains("host failures"), "{reason}");
}

fn a_retried_trainer_failure_prefers_a_worker_it_has_not_failed_on(b: Backend) {
    let q = b.queue_on(&manual_clock(), QueueConfig::default());
    let q = &*q;
    let job = retried("a");
    load(q, std::slice::from_ref(&job));
    q.report_node(&worker("w2"), &cpu(8)).unwrap();
    let first = claim(q, "w1").unwrap();
    assert_eq!(
        fail(q, &job.id, "w1", &first.lease, FailureCause::Trainer),
        JobStatus::Pending
    );
    assert_eq!(
        q.job(&job.id).unwrap().attempts,
        1,
        "a trainer failure counts"
    );
    assert!(claim(q, "w1").is_none(), "left to w2, which has not tried");
    assert_eq!(claim(q, "w2").unwrap().lease.attempt, 2);
}

fn the_preference_is_soft_other_jobs_first_then_the_failed_one(b: Backend) {
    let q = b.queue_on(&manual_clock(), QueueConfig::default());
    let q = &*q;
    let a = JobSpec {
        manifest_order: 0,
        ..retried("a")
    };
    let b = JobSpec {
        manifest_order: 1,
        ..spec("b")
    };
    load(q, &[a.clone(), b.clone()]);
    let first = claim(q, "w1").unwrap();
    assert_eq!(first.job.id, a.id);
    fail(q, &a.id, "w1", &first.lease, FailureCause::Trainer);
    // Alone in the fleet: w1 takes b first although a is ahead in the queue, then a.
    assert_eq!(claim(q, "w1").unwrap().job.id, b.id);
    assert_eq!(claim(q, "w1").unwrap().job.id, a.id);
}

fn after_retry_elsewhere_wait_the_failed_worker_takes_the_job_again(b: Backend) {
    let clock = manual_clock();
    let q = b.queue_on(&clock, QueueConfig::default());
    let q = &*q;
    let job = retried("a");
    load(q, std::slice::from_ref(&job));
    q.report_node(&worker("w2"), &cpu(8)).unwrap();
    let first = claim(q, "w1").unwrap();
    fail(q, &job.id, "w1", &first.lease, FailureCause::Trainer);
    assert!(claim(q, "w1").is_none());
    clock.advance(chrono::Duration::seconds(
        QueueConfig::default().retry_elsewhere_wait_s as i64 + 1,
    ));
    // w2 is stale by now too; either way w1 may take it.
    assert!(claim(q, "w1").is_some());
}

#[test]
fn explain_says_a_worker_leaves_a_job_it_failed_to_the_others() {
    let q = queue(QueueConfig::default());
    let job = retried("a");
    load(&q, std::slice::from_ref(&job));
    q.report_node(&worker("w2"), &cpu(8)).unwrap();
    let first = claim(&q, "w1").unwrap();
    fail(&q, &job.id, "w1", &first.lease, FailureCause::Trainer);
    let explain = q.explain(&job.id).unwrap();
    let w1 = explain
        .workers
        .iter()
        .find(|f| f.worker.as_str() == "w1")
        .unwrap();
    assert!(
        w1.passing().iter().any(|r| r.contains("failed it before")),
        "{:?}",
        w1.reasons
    );
    let w2 = explain
        .workers
        .iter()
        .find(|f| f.worker.as_str() == "w2")
        .unwrap();
    assert!(w2.reasons.is_empty(), "{:?}", w2.reasons);
}

super::test_support::on_both_backends!(
    a_host_failure_uses_no_attempt_flags_the_host_and_goes_to_another_worker,
    a_job_whose_trainer_no_ready_host_can_start_fails_with_the_hosts_named,
    host_failures_are_capped_even_while_another_worker_never_tries,
    a_retried_trainer_failure_prefers_a_worker_it_has_not_failed_on,
    the_preference_is_soft_other_jobs_first_then_the_failed_one,
    after_retry_elsewhere_wait_the_failed_worker_takes_the_job_again,
);
