//! hold / release: a held job is kept but never claimed, and comes back as pending.

use crate::queue::JobQueue;
use cis490_api::{JobSpec, JobStatus};

use super::test_support::Backend;
use super::test_support::{cpu, spec};
use super::tests::{claim, job_in_state, kinds, load, queue, status};

#[test]
fn a_held_job_is_never_claimed_and_release_makes_it_claimable() {
    let q = queue();
    let job = spec("held");
    load(&q, std::slice::from_ref(&job));
    assert_eq!(q.hold(&job.id).unwrap().status, JobStatus::Held);
    assert_eq!(status(&q, &job), JobStatus::Held);
    assert!(claim(&q, "w", &cpu(8)).is_none(), "a held job was claimed");
    let explain = q.explain(&job.id).unwrap();
    assert!(explain.queue_position.is_none());
    assert!(
        explain.summary.starts_with("held by an operator"),
        "{}",
        explain.summary
    );

    assert_eq!(q.release(&job.id).unwrap().status, JobStatus::Pending);
    assert_eq!(kinds(&q, &job)[1..], ["Held", "Unheld"]);
    assert_eq!(claim(&q, "w", &cpu(8)).unwrap().job.id, job.id);
}

fn hold_only_pending_and_release_only_held(b: Backend) {
    for state in JobStatus::ALL {
        let q = b.queue();
        let q = &*q;
        let (job, _) = job_in_state(q, "x", state);
        let held = q.hold(&job.id);
        if state == JobStatus::Pending {
            assert_eq!(held.unwrap().status, JobStatus::Held);
        } else {
            let err = held.unwrap_err();
            assert_eq!(err.code(), "invalid_state", "hold from {state}");
            assert!(
                err.to_string().contains("only pending jobs can be held"),
                "{err}"
            );
            assert_eq!(status(q, &job), state, "a refused hold changes nothing");
        }

        let q = b.queue();
        let q = &*q;
        let (job, _) = job_in_state(q, "x", state);
        let released = q.release(&job.id);
        if state == JobStatus::Held {
            assert_eq!(released.unwrap().status, JobStatus::Pending);
        } else {
            let err = released.unwrap_err();
            assert_eq!(err.code(), "invalid_state", "release from {state}");
            assert_eq!(
                err.to_string(),
                format!(
                    "cannot release job {} in state {state}: only held jobs can be released",
                    job.id.short()
                )
            );
            assert_eq!(status(q, &job), state);
        }
    }
}

fn requeue_of_a_held_job_is_refused_and_names_release(b: Backend) {
    let q = b.queue();
    let q = &*q;
    let (job, _) = job_in_state(q, "x", JobStatus::Held);
    let err = q.requeue(&job.id).unwrap_err();
    assert_eq!(err.code(), "invalid_state");
    assert!(err.to_string().contains("cis490ctl release"), "{err}");
    assert_eq!(status(q, &job), JobStatus::Held);
}

fn a_held_job_takes_manifest_updates_and_tombstones_like_a_pending_one(b: Backend) {
    let q = b.queue();
    let q = &*q;
    let job = spec("held");
    load(q, std::slice::from_ref(&job));
    q.hold(&job.id).unwrap();

    let raised = JobSpec {
        priority: 7,
        ..job.clone()
    };
    load(q, std::slice::from_ref(&raised));
    let view = q.job(&job.id).unwrap();
    assert_eq!(
        view.priority, 7,
        "the update was not applied to the held job"
    );
    assert_eq!(view.status, JobStatus::Held, "an update released the job");

    load(q, &[]);
    let view = q.job(&job.id).unwrap();
    assert!(view.tombstoned);
    assert_eq!(view.status, JobStatus::Held);
    let last = view.events.last().unwrap();
    assert_eq!(last.kind, "Tombstoned");
    assert!(
        last.message.contains("no longer claimable"),
        "{}",
        last.message
    );

    // Released while tombstoned: pending, still not claimable.
    q.release(&job.id).unwrap();
    assert!(claim(q, "w", &cpu(8)).is_none());
    // Back in the manifest: claimable.
    load(q, std::slice::from_ref(&raised));
    assert_eq!(claim(q, "w", &cpu(8)).unwrap().job.id, job.id);
}

fn a_held_job_can_be_cancelled(b: Backend) {
    let q = b.queue();
    let q = &*q;
    let (job, _) = job_in_state(q, "x", JobStatus::Held);
    assert_eq!(q.cancel(&job.id).unwrap().status, JobStatus::Cancelled);
    assert!(q
        .job(&job.id)
        .unwrap()
        .events
        .last()
        .unwrap()
        .message
        .contains("while held"));
}

super::test_support::on_both_backends!(
    hold_only_pending_and_release_only_held,
    requeue_of_a_held_job_is_refused_and_names_release,
    a_held_job_takes_manifest_updates_and_tombstones_like_a_pending_one,
    a_held_job_can_be_cancelled,
);
