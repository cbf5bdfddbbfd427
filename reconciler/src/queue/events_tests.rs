//! `events_filtered`: one job's or one worker's events, and a `next` that skips what the
//! filter dropped.

use super::events::i_events_in_window;
use super::test_support::Backend;
use super::test_support::{cpu, spec, worker};
use super::tests::{claim, load, queue};
use super::EventFilter;
use crate::queue::JobQueue;

fn filters_keep_one_job_or_one_worker_and_next_moves_past_dropped_events(b: Backend) {
    let q = b.queue();
    let q = &*q;
    let (a, b) = (spec("a"), spec("b"));
    load(q, &[a.clone(), b.clone()]);
    let first = claim(q, "w1", &cpu(8)).unwrap().job.id;
    let second = claim(q, "w2", &cpu(8)).unwrap().job.id;
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

#[test]
fn a_worker_filter_looks_at_one_window_per_page_and_next_moves_through_the_log() {
    let q = queue();
    let jobs: Vec<_> = (0..6).map(|i| spec(&format!("j{i}"))).collect();
    load(&q, &jobs);
    // Six Created events (no worker) first, then w1's and w2's.
    claim(&q, "w1", &cpu(8)).unwrap();
    for _ in 0..5 {
        claim(&q, "w2", &cpu(8)).unwrap();
    }
    let head = q.events_since(0, 1000).unwrap().next;
    let of_w1 = EventFilter {
        job: None,
        worker: Some(worker("w1")),
    };
    let page_of = |since: u64| {
        q.read(|tx| i_events_in_window(tx, since, 1000, &of_w1, 3))
            .unwrap()
    };
    // The first window holds only Created events: no events, and next is its end.
    let first = page_of(0);
    assert!(first.events.is_empty(), "{:?}", first.events);
    assert_eq!(first.next, 3);
    // Paging on until next stops finds w1's one event, and only it.
    let mut since = 0;
    let mut found = Vec::new();
    loop {
        let page = page_of(since);
        found.extend(page.events);
        if page.next <= since {
            break;
        }
        since = page.next;
    }
    assert_eq!(since, head, "paging ends at the head");
    let expected: Vec<_> = q
        .events_since(0, 1000)
        .unwrap()
        .events
        .into_iter()
        .filter(|e| e.worker.as_ref().map(|w| w.as_str()) == Some("w1"))
        .collect();
    assert!(expected.iter().any(|e| e.kind == "Claimed"), "{expected:?}");
    assert_eq!(found, expected);
}

super::test_support::on_both_backends!(
    filters_keep_one_job_or_one_worker_and_next_moves_past_dropped_events,
);
