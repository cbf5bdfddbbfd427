//! The rules of `transitions.rs`, case by case: a table of every state against every
//! transition, then the refusals and the retry rules in detail.

use cis490_api::{FailRequest, FailureCause, JobId, JobStatus, Lease, WorkerName};

use super::events::kind;
use super::failures::MAX_HOST_FAILURES;
use super::transitions::{self, Beat, Emit, Expiry, Failure, HeldLease, HostVerdict, Job, State};
use super::QueueError;
use crate::queue::test_support::{id_of, worker};

const NOW: i64 = 1_000_000;
const TOKEN: &str = "t0k3n";

fn held(expires_at: i64) -> HeldLease<'static> {
    HeldLease {
        attempt: 2,
        token: TOKEN,
        worker: "w1",
        expires_at: Some(expires_at),
    }
}

/// A job in `state` that used 2 of 3 attempts, with no failures so far.
fn job(id: &JobId, state: State<'static>) -> Job<'static> {
    // The rules borrow the ID; a leaked one keeps the fixtures simple.
    let id: &'static JobId = Box::leak(Box::new(id.clone()));
    Job {
        id,
        state,
        tombstoned: false,
        worker: Some("w1"),
        attempts: 2,
        max_attempts: 3,
        trainer_failures: 0,
        retries_on_failure: 0,
        lease_expiries: 0,
        stale_after_s: 90,
        artifact_id: None,
        error_reason: None,
    }
}

fn lease() -> Lease {
    Lease {
        attempt: 2,
        token: TOKEN.to_string(),
    }
}

fn fail_request(retryable: bool, cause: FailureCause) -> FailRequest {
    FailRequest {
        worker: worker("w1"),
        lease: lease(),
        reason: "exit 1".to_string(),
        exit_code: Some(1),
        log_tail: None,
        retryable,
        cause,
        report: Default::default(),
    }
}

fn kinds(events: &[Emit<'_>]) -> String {
    events.iter().map(|e| e.kind).collect::<Vec<_>>().join("+")
}

/// One transition's answer, summed up: the events it emits (or `-` for none), `none` when
/// it does not apply, or the refusal's API code.
fn answer<T>(result: Result<T, QueueError>, sum: impl FnOnce(T) -> String) -> String {
    match result {
        Ok(t) => sum(t),
        Err(e) => e.code().to_string(),
    }
}

const TRANSITIONS: [&str; 14] = [
    "claim",
    "heartbeat",
    "complete",
    "fail",
    "fail retryable",
    "fail host",
    "sweep",
    "cancel",
    "requeue",
    "hold",
    "release",
    "update",
    "revive",
    "tombstone",
];

fn every_transition(job: &Job<'static>) -> Vec<String> {
    let w1 = worker("w1");
    let lease = lease();
    let trainer = fail_request(false, FailureCause::Trainer);
    let retryable = fail_request(true, FailureCause::Trainer);
    let host = fail_request(false, FailureCause::Host);
    let fail_sum = |f: Failure<'_>| match f {
        Failure::Host => "host".to_string(),
        Failure::Released { event, .. }
        | Failure::Retry { event, .. }
        | Failure::Failed { event, .. } => event.kind.to_string(),
    };
    let one = |e: Emit<'_>| e.kind.to_string();
    let maybe = |e: Option<Emit<'_>>| e.map_or_else(|| "none".to_string(), |e| e.kind.to_string());
    vec![
        answer(transitions::grant_lease(job, &w1, NOW), |g| one(g.event)),
        answer(transitions::heartbeat(job, &w1, &lease, NOW), |b| match b {
            Beat::Cancel => "cancel".to_string(),
            Beat::Extend { started, .. } => {
                started.map_or_else(|| "-".to_string(), |e| e.kind.to_string())
            }
        }),
        answer(transitions::complete(job, &w1, &lease, None), |e| kinds(&e)),
        answer(transitions::fail(job, &trainer), fail_sum),
        answer(transitions::fail(job, &retryable), fail_sum),
        answer(transitions::fail(job, &host), fail_sum),
        match transitions::expire_lease(job, NOW) {
            None => "none".to_string(),
            Some(Expiry::Requeue { event, .. }) => event.kind.to_string(),
            Some(Expiry::Fail { events, .. }) => kinds(&events),
        },
        answer(transitions::cancel(job), one),
        answer(transitions::requeue(job), one),
        answer(transitions::hold(job), one),
        answer(transitions::release(job), one),
        maybe(transitions::update_spec(job, &["priority".to_string()])),
        maybe(transitions::revive(job, true).map(|r| r.event)),
        maybe(transitions::tombstone(job)),
    ]
}

#[test]
fn every_state_against_every_transition() {
    let id = id_of("j");
    let expired = held(NOW - 1);
    let live = held(NOW + 1);
    let tombstoned = |state| Job {
        tombstoned: true,
        ..job(&id, state)
    };
    let lost = "lease_lost";
    let inv = "invalid_state";
    #[rustfmt::skip]
    let table: Vec<(&str, Job<'static>, [&str; 14])> = vec![
        // claim, heartbeat, complete, fail, fail retryable, fail host, sweep, cancel,
        // requeue, hold, release, update, revive, tombstone
        ("pending", job(&id, State::Pending),
         [kind::CLAIMED, lost, lost, lost, lost, lost, "none", kind::CANCELLED, inv, kind::HELD,
          inv, kind::UPDATED, "none", kind::TOMBSTONED]),
        ("pending, tombstoned", tombstoned(State::Pending),
         [inv, lost, lost, lost, lost, lost, "none", kind::CANCELLED, inv, kind::HELD, inv,
          kind::UPDATED, kind::REVIVED, "none"]),
        ("held", job(&id, State::Held),
         [inv, lost, lost, lost, lost, lost, "none", kind::CANCELLED, inv, inv,
          kind::RELEASED_BY_OPERATOR, kind::UPDATED, "none", kind::TOMBSTONED]),
        ("claimed", job(&id, State::Claimed(live)),
         [inv, kind::STARTED, kind::COMPLETED, kind::FAILED, kind::RELEASED, "host", "none",
          kind::CANCELLED, inv, inv, inv, "none", "none", kind::TOMBSTONED]),
        ("running", job(&id, State::Running(live)),
         [inv, "-", kind::COMPLETED, kind::FAILED, kind::RELEASED, "host", "none",
          kind::CANCELLED, inv, inv, inv, "none", "none", kind::TOMBSTONED]),
        ("running, lease expired", job(&id, State::Running(expired)),
         [inv, "-", kind::COMPLETED, kind::FAILED, kind::RELEASED, "host",
          kind::LEASE_EXPIRED, kind::CANCELLED, inv, inv, inv, "none", "none",
          kind::TOMBSTONED]),
        ("running, tombstoned", tombstoned(State::Running(live)),
         [inv, "-", "Completed+Orphaned", kind::FAILED, kind::RELEASED, "host", "none",
          kind::CANCELLED, inv, inv, inv, "none", kind::REVIVED, "none"]),
        ("completed", job(&id, State::Completed),
         [inv, lost, lost, lost, lost, lost, "none", inv, kind::REQUEUED, inv, inv,
          kind::UPDATED, "none", kind::TOMBSTONED]),
        ("failed", job(&id, State::Failed),
         [inv, lost, lost, lost, lost, lost, "none", inv, kind::REQUEUED, inv, inv,
          kind::UPDATED, "none", kind::TOMBSTONED]),
        ("cancelled while leased", job(&id, State::Cancelled(Some(expired))),
         [inv, "cancel", lost, lost, lost, lost, "none", inv, kind::REQUEUED, inv, inv,
          kind::UPDATED, "none", kind::TOMBSTONED]),
        ("cancelled, lease dropped", job(&id, State::Cancelled(None)),
         [inv, lost, lost, lost, lost, lost, "none", inv, kind::REQUEUED, inv, inv,
          kind::UPDATED, "none", kind::TOMBSTONED]),
    ];
    for (name, job, expected) in table {
        let got = every_transition(&job);
        for ((transition, got), want) in TRANSITIONS.iter().zip(&got).zip(expected) {
            assert_eq!(got, want, "{name} x {transition}");
        }
    }
}

#[test]
fn a_claim_leases_the_next_attempt_until_the_lease_times_out() {
    let id = id_of("j");
    let w = worker("w2");
    let grant = transitions::grant_lease(&job(&id, State::Pending), &w, NOW).unwrap();
    assert_eq!(grant.attempt, 3);
    assert_eq!(grant.expires_at, NOW + 90_000);
    assert_eq!(grant.event.worker, Some("w2"));
    assert_eq!(grant.event.message, "claimed by w2 (attempt 3 of 3)");
}

#[test]
fn heartbeat_extends_the_lease_and_the_first_one_starts_the_job() {
    let id = id_of("j");
    let w1 = worker("w1");
    let claimed = job(&id, State::Claimed(held(NOW + 5)));
    match transitions::heartbeat(&claimed, &w1, &lease(), NOW).unwrap() {
        Beat::Extend {
            expires_at,
            started: Some(started),
        } => {
            assert_eq!(expires_at, NOW + 90_000);
            assert_eq!(started.message, "running on w1 (attempt 2 of 3)");
        }
        other => panic!("expected a start, got {other:?}"),
    }
    // A late heartbeat the sweep has not reached yet still extends the lease.
    let late = job(&id, State::Running(held(NOW - 10)));
    assert_eq!(
        transitions::heartbeat(&late, &w1, &lease(), NOW).unwrap(),
        Beat::Extend {
            expires_at: NOW + 90_000,
            started: None
        }
    );
}

fn refusal<T: std::fmt::Debug>(result: Result<T, QueueError>) -> String {
    match result {
        Err(QueueError::LeaseLost { reason, .. }) => reason,
        other => panic!("expected lease_lost, got {other:?}"),
    }
}

#[test]
fn fencing_refuses_every_lease_but_the_current_one() {
    let id = id_of("j");
    let running = job(&id, State::Running(held(NOW + 5)));
    let w1 = worker("w1");
    let wrong_attempt = Lease {
        attempt: 1,
        token: TOKEN.to_string(),
    };
    assert_eq!(
        refusal(transitions::heartbeat(&running, &w1, &wrong_attempt, NOW)),
        "lease attempt 1 is not the current lease (attempt 2)"
    );
    let wrong_token = Lease {
        attempt: 2,
        token: "other".to_string(),
    };
    assert!(
        refusal(transitions::complete(&running, &w1, &wrong_token, None))
            .starts_with("this lease ended and the job was leased again, to w1, under the same")
    );
    let w2: WorkerName = worker("w2");
    assert_eq!(
        refusal(transitions::heartbeat(&running, &w2, &lease(), NOW)),
        "the lease belongs to w1, not w2"
    );
    assert_eq!(
        refusal(transitions::check_lease(
            &Job {
                tombstoned: true,
                ..job(&id, State::Pending)
            },
            &w1,
            &lease(),
            false
        )),
        "the job is pending (tombstoned), not leased"
    );
    assert_eq!(
        refusal(transitions::complete(
            &job(&id, State::Completed),
            &w1,
            &lease(),
            None
        )),
        "the job is completed, not leased"
    );
    // A cancelled job's old lease still heartbeats (and hears cancel), but nothing else.
    let cancelled = job(&id, State::Cancelled(Some(held(NOW + 5))));
    assert_eq!(
        transitions::heartbeat(&cancelled, &w1, &lease(), NOW).unwrap(),
        Beat::Cancel
    );
    assert_eq!(
        refusal(transitions::check_lease(&cancelled, &w1, &lease(), false)),
        "the job is cancelled, not leased"
    );
    assert_eq!(
        refusal(transitions::heartbeat(&cancelled, &w1, &wrong_attempt, NOW)),
        "lease attempt 1 is not the current lease (attempt 2)"
    );
    let dropped = job(&id, State::Cancelled(None));
    assert_eq!(
        refusal(transitions::heartbeat(&dropped, &w1, &lease(), NOW)),
        "lease attempt 2 is not the current lease (attempt none)"
    );
}

#[test]
fn a_trainer_failure_is_retried_while_retries_and_attempts_last() {
    let id = id_of("j");
    let req = fail_request(false, FailureCause::Trainer);
    // (retries_on_failure, trainer failures so far, attempts used) -> status, why
    let cases = [
        (
            0,
            0,
            2,
            JobStatus::Failed,
            "the retry policy allows no retries",
        ),
        (2, 0, 2, JobStatus::Pending, "retrying (retry 1 of 2)"),
        (2, 1, 2, JobStatus::Pending, "retrying (retry 2 of 2)"),
        (2, 2, 2, JobStatus::Failed, "all 2 retries used"),
        (2, 0, 3, JobStatus::Failed, "no attempts left (3 of 3 used)"),
    ];
    for (retries, failures, attempts, status, why) in cases {
        let j = Job {
            retries_on_failure: retries,
            trainer_failures: failures,
            attempts,
            ..job(&id, State::Running(held(NOW + 5)))
        };
        let decided = transitions::fail(&j, &req).unwrap();
        assert_eq!(decided.status(), Some(status), "{why}");
        assert_eq!(decided.outcome(), super::results::outcome::FAILED);
        match decided {
            Failure::Retry {
                trainer_failures,
                event,
            }
            | Failure::Failed {
                trainer_failures,
                event,
            } => {
                assert_eq!(trainer_failures, failures + 1);
                assert!(event.message.contains(why), "{}", event.message);
                assert!(event.message.contains("(exit code 1)"));
            }
            other => panic!("expected a trainer failure, got {other:?}"),
        }
    }
}

#[test]
fn a_released_lease_refunds_its_attempt_and_a_host_failure_is_the_hosts() {
    let id = id_of("j");
    let running = job(&id, State::Running(held(NOW + 5)));
    match transitions::fail(&running, &fail_request(true, FailureCause::Trainer)).unwrap() {
        Failure::Released { attempts, event } => {
            assert_eq!(attempts, 1);
            assert!(event.message.ends_with("the attempt does not count"));
        }
        other => panic!("expected a release, got {other:?}"),
    }
    // Retryable wins over the host cause: the agent is leaving, the host may be fine.
    let retryable_host = fail_request(true, FailureCause::Host);
    let decided = transitions::fail(&running, &retryable_host).unwrap();
    assert_eq!(decided.status(), Some(JobStatus::Pending));
    assert_eq!(decided.outcome(), super::results::outcome::RELEASED);
    let host_request = fail_request(false, FailureCause::Host);
    let host = transitions::fail(&running, &host_request).unwrap();
    assert_eq!(host, Failure::Host);
    assert_eq!(host.outcome(), super::results::outcome::RELEASED);
}

#[test]
fn a_host_failure_fails_the_job_once_no_worker_is_left_to_try() {
    let req = fail_request(false, FailureCause::Host);
    let failed_on = vec![("w1".to_string(), "no such program".to_string())];
    match transitions::host_failure(&req, 1, &failed_on, &["w2", "w3"]) {
        HostVerdict::Pending { event } => {
            assert_eq!(event.kind, kind::HOST_PROBLEM);
            assert!(event.message.ends_with("(w2, w3 not tried yet)"));
        }
        other => panic!("expected pending, got {other:?}"),
    }
    match transitions::host_failure(&req, 1, &failed_on, &[]) {
        HostVerdict::Failed { why, event } => {
            assert!(why.starts_with("every Ready worker that can run it failed"));
            assert!(why.contains("w1 (no such program)"));
            assert_eq!(event.kind, kind::FAILED);
        }
        other => panic!("expected failed, got {other:?}"),
    }
    match transitions::host_failure(&req, MAX_HOST_FAILURES, &failed_on, &["w2"]) {
        HostVerdict::Failed { why, .. } => {
            assert!(why.starts_with(&format!("{MAX_HOST_FAILURES} host failures")));
        }
        other => panic!("expected failed, got {other:?}"),
    }
}

#[test]
fn an_expired_lease_goes_back_to_pending_until_the_last_attempt() {
    let id = id_of("j");
    let j = job(&id, State::Claimed(held(NOW - 1)));
    match transitions::expire_lease(&j, NOW) {
        Some(Expiry::Requeue {
            lease_expiries,
            event,
        }) => {
            assert_eq!(lease_expiries, 1);
            assert_eq!(event.worker, Some("w1"));
        }
        other => panic!("expected a requeue, got {other:?}"),
    }
    let last = Job {
        attempts: 3,
        lease_expiries: 1,
        ..j
    };
    match transitions::expire_lease(&last, NOW) {
        Some(Expiry::Fail {
            lease_expiries,
            reason,
            events,
        }) => {
            assert_eq!(lease_expiries, 2);
            assert_eq!(reason, "lease expired 2 times (agent vanished)");
            assert_eq!(events[1].message, reason);
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    // Expiring exactly now is not expired yet.
    let at_now = job(&id, State::Running(held(NOW)));
    assert_eq!(transitions::expire_lease(&at_now, NOW), None);
}

#[test]
fn operator_messages_say_what_happened() {
    let id = id_of("j");
    let cancel = transitions::cancel(&job(&id, State::Running(held(NOW)))).unwrap();
    assert_eq!(
        cancel.message,
        "cancelled by an operator while running on w1; the worker stops it at its next \
         heartbeat"
    );
    assert_eq!(cancel.worker, Some("w1"));
    let requeue = transitions::requeue(&Job {
        artifact_id: Some("abc"),
        error_reason: Some("boom"),
        ..job(&id, State::Failed)
    })
    .unwrap();
    assert_eq!(
        requeue.message,
        "requeued by an operator from failed (2 attempts used before); attempts reset; \
         previous artifact abc kept in the store; previous error: boom"
    );
    match transitions::requeue(&job(&id, State::Held)) {
        Err(QueueError::InvalidState { message }) => assert!(message.contains("release")),
        other => panic!("expected a refusal, got {other:?}"),
    }
    match transitions::hold(&job(&id, State::Running(held(NOW)))) {
        Err(QueueError::InvalidState { message }) => {
            assert!(message.ends_with("(a leased job cannot be held; cancel it instead)"))
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let release = transitions::release(&Job {
        tombstoned: true,
        ..job(&id, State::Held)
    })
    .unwrap();
    assert!(release
        .message
        .ends_with("(it stays tombstoned, so still not claimable)"));
}

#[test]
fn a_revived_job_takes_the_new_spec_only_when_not_leased() {
    let id = id_of("j");
    let tomb = |state| Job {
        tombstoned: true,
        ..job(&id, state)
    };
    let cases = [
        (tomb(State::Completed), true, true, ""),
        (tomb(State::Completed), false, false, ""),
        (
            tomb(State::Running(held(NOW))),
            true,
            false,
            "; it keeps its current spec while leased",
        ),
    ];
    for (j, differs, writes, note) in cases {
        let revival = transitions::revive(&j, differs).unwrap();
        assert_eq!(revival.write_spec, writes);
        let note = if writes { "; spec updated" } else { note };
        assert!(revival.event.message.ends_with(&format!("){note}")));
    }
    assert_eq!(
        transitions::update_spec(&job(&id, State::Pending), &[]),
        None
    );
}

#[test]
fn a_completion_names_only_an_artifact_its_own_lease_uploaded() {
    let id = id_of("m-quick");
    let own = "a".repeat(64);
    let other = "b".repeat(64);
    let parse = |s: &str| cis490_api::ArtifactId::parse(s).unwrap();
    let other_job = "c".repeat(64);
    // (artifact named, uploaded under the lease, another job uploaded it) -> answer
    type Case<'a> = (Option<&'a str>, &'a [&'a str], bool, Result<(), &'a str>);
    let cases: [Case<'_>; 6] = [
        (Some(&own), &[own.as_str()], false, Ok(())),
        (None, &[], false, Ok(())),
        (
            Some(&other),
            &[own.as_str()],
            false,
            Err("never uploaded under it"),
        ),
        (
            Some(&other),
            &[],
            true,
            Err("it was uploaded for job cccccccc"),
        ),
        (None, &[own.as_str()], false, Err("complete with it")),
        (
            None,
            &[other.as_str(), own.as_str()],
            false,
            Err(own.as_str()),
        ),
    ];
    for (named, uploaded, elsewhere, want) in cases {
        let artifact = named.map(parse);
        let uploaded: Vec<String> = uploaded.iter().map(|s| s.to_string()).collect();
        let mut looked_up = false;
        let got =
            transitions::completion_artifact(&id, &lease(), artifact.as_ref(), &uploaded, || {
                looked_up = true;
                Ok(elsewhere.then(|| other_job.clone()))
            });
        match (got, want) {
            (Ok(()), Ok(())) => assert!(!looked_up, "an accepted completion looks nothing up"),
            (Err(e), Err(says)) => assert!(e.to_string().contains(says), "{named:?}: {e}"),
            (got, want) => panic!("{named:?} {uploaded:?}: got {got:?}, want {want:?}"),
        }
    }
}
