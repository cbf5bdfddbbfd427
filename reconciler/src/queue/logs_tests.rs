//! The log store: appends by offset, resends, the cap and its marker, fencing by the lease,
//! paging, attempts, crash safety.

use crate::queue::JobQueue;
use cis490_api::{
    ClaimResponse, FailRequest, HeartbeatRequest, JobId, Lease, LogChunk, LogPage, LogQuery,
};

use super::test_support::{cpu, manual_clock, spec, worker, Backend, TestQueue};
use super::{ManifestSource, Queue, QueueConfig, QueueError};
use crate::plan::plan;

fn queue_with_cap(b: Backend, cap: u64) -> TestQueue {
    b.queue_on(
        &manual_clock(),
        QueueConfig {
            max_log_bytes_per_attempt: cap,
            ..QueueConfig::default()
        },
    )
}

fn load_one(q: &dyn JobQueue, name: &str) -> JobId {
    let job = spec(name);
    let p = plan(std::slice::from_ref(&job), &q.actual().unwrap());
    q.apply(&p, &[], &ManifestSource::default()).unwrap();
    job.id
}

fn claim(q: &dyn JobQueue, w: &str) -> ClaimResponse {
    q.claim(&worker(w), &cpu(8))
        .unwrap()
        .expect("a job to claim")
}

/// A heartbeat carrying `text` as the bytes `from..from + len` of the lease's log file.
fn send(q: &dyn JobQueue, id: &JobId, w: &str, lease: &Lease, from: u64, text: &str) -> u64 {
    try_send(q, id, w, lease, from, text)
        .unwrap()
        .log_offset
        .expect("the server acknowledges a log offset")
}

fn try_send(
    q: &dyn JobQueue,
    id: &JobId,
    w: &str,
    lease: &Lease,
    from: u64,
    text: &str,
) -> Result<cis490_api::HeartbeatResponse, QueueError> {
    q.heartbeat(
        id,
        &HeartbeatRequest {
            progress: Default::default(),
            worker: worker(w),
            lease: lease.clone(),
            log_tail: None,
            log: Some(LogChunk {
                from,
                to: from + text.len() as u64,
                text: text.to_string(),
            }),
        },
    )
}

fn read(
    q: &dyn JobQueue,
    id: &JobId,
    attempt: Option<u32>,
    offset: u64,
    limit: Option<u64>,
) -> LogPage {
    q.job_log(
        id,
        &LogQuery {
            attempt,
            offset: Some(offset),
            limit,
        },
    )
    .unwrap()
}

/// Everything from offset 0, page by page.
fn read_all(q: &dyn JobQueue, id: &JobId, attempt: Option<u32>, limit: Option<u64>) -> String {
    let mut text = String::new();
    let mut offset = 0;
    loop {
        let page = read(q, id, attempt, offset, limit);
        text.push_str(&page.text);
        if page.next_offset == offset {
            return text;
        }
        offset = page.next_offset;
    }
}

fn fail(q: &dyn JobQueue, id: &JobId, w: &str, lease: &Lease) {
    q.fail(
        id,
        &FailRequest {
            report: Default::default(),
            worker: worker(w),
            lease: lease.clone(),
            reason: "boom".into(),
            exit_code: Some(1),
            log_tail: None,
            retryable: false,
            cause: Default::default(),
        },
    )
    .unwrap();
}

fn chunks_append_in_order_resends_are_ignored_and_pages_follow_offsets(b: Backend) {
    let q = queue_with_cap(b, 1 << 20);
    let q = &*q;
    let id = load_one(q, "a");
    let c = claim(q, "w1");
    let before = read(q, &id, None, 0, None);
    assert_eq!(
        before.attempt,
        Some(1),
        "the current attempt, before any log"
    );
    assert_eq!(
        (before.text.as_str(), before.size, before.finished),
        ("", 0, false)
    );

    assert_eq!(send(q, &id, "w1", &c.lease, 0, "line 1\nline 2\n"), 14);
    // The answer was lost and the agent sends the same chunk again: kept once.
    assert_eq!(send(q, &id, "w1", &c.lease, 0, "line 1\nline 2\n"), 14);
    // A chunk past what the server holds is not appended; the answer says where to resume.
    assert_eq!(send(q, &id, "w1", &c.lease, 20, "later\n"), 14);
    assert_eq!(send(q, &id, "w1", &c.lease, 14, "line 3\n"), 21);
    assert_eq!(read_all(q, &id, None, None), "line 1\nline 2\nline 3\n");
    // Small pages: every byte once, in order.
    assert_eq!(
        read_all(q, &id, Some(1), Some(5)),
        "line 1\nline 2\nline 3\n"
    );
    let page = read(q, &id, None, 7, Some(7));
    assert_eq!((page.text.as_str(), page.next_offset), ("line 2\n", 14));
    assert!(matches!(
        q.job_log(
            &id,
            &LogQuery {
                offset: Some(99),
                ..LogQuery::default()
            }
        ),
        Err(QueueError::BadRequest { .. })
    ));
    // The old log_tail column follows the log.
    assert_eq!(
        q.job(&id).unwrap().log_tail.as_deref(),
        Some("line 1\nline 2\nline 3\n")
    );
}

fn a_page_never_splits_a_character(b: Backend) {
    let q = queue_with_cap(b, 1 << 20);
    let q = &*q;
    let id = load_one(q, "a");
    let c = claim(q, "w1");
    let text = "héllo wörld ✓ done\n";
    send(q, &id, "w1", &c.lease, 0, text);
    for limit in 1..8 {
        assert_eq!(read_all(q, &id, None, Some(limit)), text, "limit {limit}");
    }
}

fn over_the_cap_the_head_and_the_latest_part_stay_with_one_marker(b: Backend) {
    let cap = 1000;
    let q = queue_with_cap(b, cap);
    let q = &*q;
    let id = load_one(q, "a");
    let c = claim(q, "w1");
    let mut offset = 0;
    let mut all = String::new();
    for i in 0..400 {
        let line = format!("line {i:04}\n");
        all.push_str(&line);
        offset = send(q, &id, "w1", &c.lease, offset, &line);
    }
    let text = read_all(q, &id, None, Some(97));
    let page = read(q, &id, None, 0, None);
    assert!(page.dropped_bytes > 0);
    assert_eq!(page.size, all.len() as u64);
    let kept = page.size - page.dropped_bytes;
    assert!(kept <= cap, "kept {kept} bytes over the cap {cap}");
    let marker = format!(
        "[... truncated: {} bytes dropped ...]\n",
        page.dropped_bytes
    );
    let (head, tail) = text.split_once(&marker).expect("one marker");
    assert!(!tail.contains("truncated"));
    assert!(
        all.starts_with(head) && head.len() as u64 >= cap / 2 - 10,
        "{head:?}"
    );
    assert!(all.ends_with(tail) && tail.ends_with("line 0399\n"));
    assert!(
        tail.starts_with("line "),
        "the kept tail starts at a line: {tail:?}"
    );
    // A reader that was inside the part since dropped resumes after the marker.
    let late = read(q, &id, None, cap / 2 + 20, None);
    assert!(
        late.text.starts_with("[... truncated: "),
        "{:?}",
        &late.text[..40]
    );
    assert!(late.text.ends_with("line 0399\n"));
}

fn a_stale_lease_appends_nothing(b: Backend) {
    let q = queue_with_cap(b, 1 << 20);
    let q = &*q;
    let id = load_one(q, "a");
    let first = claim(q, "w1");
    send(q, &id, "w1", &first.lease, 0, "first attempt\n");
    q.sweep(q.now() + chrono::Duration::seconds(91)).unwrap();
    let second = claim(q, "w2");
    let err = try_send(q, &id, "w1", &first.lease, 14, "from the stale lease\n").unwrap_err();
    assert!(matches!(err, QueueError::LeaseLost { .. }), "{err}");
    // Another worker with the current lease's numbers but not its holder: refused too.
    let err = try_send(q, &id, "w1", &second.lease, 0, "intruder\n").unwrap_err();
    assert!(matches!(err, QueueError::LeaseLost { .. }), "{err}");
    assert_eq!(read_all(q, &id, Some(1), None), "first attempt\n");
    assert_eq!(read_all(q, &id, Some(2), None), "");
}

fn each_attempt_keeps_its_own_log_and_finished_follows_the_lease(b: Backend) {
    let q = queue_with_cap(b, 1 << 20);
    let q = &*q;
    let job = cis490_api::JobSpec {
        retry: cis490_api::RetryPolicy {
            retries_on_failure: 1,
        },
        ..spec("a")
    };
    let p = plan(std::slice::from_ref(&job), &q.actual().unwrap());
    q.apply(&p, &[], &ManifestSource::default()).unwrap();
    let id = job.id;
    let first = claim(q, "w1");
    send(q, &id, "w1", &first.lease, 0, "attempt one\n");
    fail(q, &id, "w1", &first.lease);
    let page = read(q, &id, None, 0, None);
    assert_eq!((page.attempt, page.finished), (Some(1), true));
    let second = claim(q, "w2");
    send(q, &id, "w2", &second.lease, 0, "attempt two\n");
    let page = read(q, &id, None, 0, None);
    assert_eq!((page.attempt, page.finished), (Some(2), false));
    assert_eq!(page.attempts, vec![1, 2]);
    assert_eq!(read_all(q, &id, Some(1), None), "attempt one\n");
    assert_eq!(read_all(q, &id, Some(2), None), "attempt two\n");
    // Cancelled: the log stays, and the attempt is over.
    q.cancel(&id).unwrap();
    let page = read(q, &id, None, 0, None);
    assert_eq!((page.text.as_str(), page.finished), ("attempt two\n", true));
}

fn a_lease_handed_back_and_leased_again_goes_on_after_a_separator(b: Backend) {
    let q = queue_with_cap(b, 1 << 20);
    let q = &*q;
    let id = load_one(q, "a");
    let first = claim(q, "w1");
    send(q, &id, "w1", &first.lease, 0, "before shutdown\n");
    q.fail(
        &id,
        &FailRequest {
            report: Default::default(),
            worker: worker("w1"),
            lease: first.lease.clone(),
            reason: "agent-shutdown".into(),
            exit_code: None,
            log_tail: None,
            retryable: true,
            cause: Default::default(),
        },
    )
    .unwrap();
    let again = claim(q, "w2");
    assert_eq!(again.lease.attempt, first.lease.attempt);
    // The new lease's file starts at 0.
    assert_eq!(send(q, &id, "w2", &again.lease, 0, "after\n"), 6);
    let text = read_all(q, &id, None, None);
    assert!(text.starts_with("before shutdown\n"));
    assert!(text.contains("leased again, to w2"), "{text}");
    assert!(text.ends_with("after\n"));
}

#[test]
fn an_acknowledged_append_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.db");
    let id;
    {
        let q = Queue::open(&path, QueueConfig::default()).unwrap();
        id = load_one(&q, "a");
        let c = claim(&q, "w1");
        send(&q, &id, "w1", &c.lease, 0, "acknowledged\n");
    }
    let q = Queue::open(&path, QueueConfig::default()).unwrap();
    assert_eq!(read_all(&q, &id, Some(1), None), "acknowledged\n");
}

super::test_support::on_both_backends!(
    chunks_append_in_order_resends_are_ignored_and_pages_follow_offsets,
    a_page_never_splits_a_character,
    over_the_cap_the_head_and_the_latest_part_stay_with_one_marker,
    a_stale_lease_appends_nothing,
    each_attempt_keeps_its_own_log_and_finished_follows_the_lease,
    a_lease_handed_back_and_leased_again_goes_on_after_a_separator,
);
