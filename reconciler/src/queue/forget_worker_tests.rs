//! `forget_worker`: any worker without a lease is forgotten; one with a lease is refused.

use cis490_api::NodeState;

use super::test_support::Backend;
use super::test_support::{cpu, spec, worker};
use super::tests::{claim, load};

fn a_worker_holding_a_lease_is_refused_and_one_without_is_forgotten(b: Backend) {
    let q = b.queue();
    let q = &*q;
    load(q, &[spec("a")]);
    let c = claim(q, "w1", &cpu(8)).unwrap();
    let err = q.forget_worker(&worker("w1")).unwrap_err();
    assert_eq!(err.code(), "invalid_state");
    assert!(err.to_string().contains(c.job.id.short()), "{err}");
    assert_eq!(
        q.workers().unwrap().len(),
        1,
        "a refused delete changes nothing"
    );

    q.cancel(&c.job.id).unwrap();
    let gone = q.forget_worker(&worker("w1")).unwrap();
    assert_eq!(gone.name.as_str(), "w1");
    assert_eq!(gone.state, NodeState::Ready);
    assert!(q.workers().unwrap().is_empty());
    let last = q.events_since(0, 1000).unwrap().events.pop().unwrap();
    assert_eq!(last.kind, "WorkerDeleted");
    assert!(last.message.contains("registers again"), "{}", last.message);
    // The job's history keeps the name.
    assert_eq!(q.job(&c.job.id).unwrap().worker.unwrap().as_str(), "w1");

    let err = q.forget_worker(&worker("w1")).unwrap_err();
    assert_eq!(err.code(), "not_found");
}

super::test_support::on_both_backends!(
    a_worker_holding_a_lease_is_refused_and_one_without_is_forgotten,
);
