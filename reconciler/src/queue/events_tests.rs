//! `events_filtered`: one job's or one worker's events, and a `next` that skips what the
//! filter dropped.

use super::test_support::{cpu, spec, worker};
use super::tests::{claim, load, queue};
use super::EventFilter;
use crate::queue::JobQueue;

#[test]
fn filters_keep_one_job_or_one_worker_and_next_moves_past_dropped_events() {
    let q = queue();
    let (a, b) = (spec("a"), spec("b"));
    load(&q, &[a.clone(), b.clone()]);
    let first = claim(&q, "w1", &cpu(8)).unwrap().job.id;
    let second = claim(&q, "w2", &cpu(8)).unwrap().job.id;
    let head = q.events_since(0, 1000).unwrap().next;

    let of_first = EventFilter {
        job: Some(first.clone()),
        worker: None,
    };
    let page = q.events_filtered(0, 1000, &of_first).unwrap();
    let kinds: Vec<&str> = page.events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["Created", "Claimed"]);
    assert!(page
        .events
        .iter()
        .all(|e| e.job_id.as_ref() == Some(&first)));
    assert_eq!(
        page.next, head,
        "next is the head, past the other job's events"
    );

    let of_w2 = EventFilter {
        job: None,
        worker: Some(worker("w2")),
    };
    let page = q.events_filtered(0, 1000, &of_w2).unwrap();
    assert!(!page.events.is_empty());
    assert!(page
        .events
        .iter()
        .all(|e| e.worker.as_ref().map(|w| w.as_str()) == Some("w2")));
    assert!(page
        .events
        .iter()
        .any(|e| e.job_id.as_ref() == Some(&second)));

    let both = EventFilter {
        job: Some(first.clone()),
        worker: Some(worker("w2")),
    };
    let page = q.events_filtered(0, 1000, &both).unwrap();
    assert!(page.events.is_empty(), "{:?}", page.events);
    assert_eq!(page.next, head);

    // A full page ends at its last event, so paging never skips a kept one.
    let page = q.events_filtered(0, 1, &of_first).unwrap();
    assert_eq!(page.events.len(), 1);
    assert_eq!(page.next, page.events[0].seq);
    let rest = q.events_filtered(page.next, 1000, &of_first).unwrap();
    assert_eq!(rest.events[0].kind, "Claimed");

    // A `since` beyond the head is kept.
    assert_eq!(
        q.events_filtered(head + 50, 10, &of_first).unwrap().next,
        head + 50
    );
}
