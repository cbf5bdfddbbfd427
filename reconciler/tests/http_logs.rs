//! `GET /v1/job/{id}/log` over real HTTP: a log streamed in chunks on heartbeats reads back
//! whole, page by page by offset, per attempt; a stale lease adds nothing; bad offsets are
//! 400 and unknown jobs 404.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod http_common;

use cis490_api::{
    FailRequest, HeartbeatRequest, IdPrefix, JobStatus, Lease, LogChunk, LogQuery, WorkerName,
};
use http_common::*;
use reqwest::StatusCode;

fn prefix(s: &str) -> IdPrefix {
    IdPrefix::parse(s).unwrap()
}

fn beat(w: &WorkerName, lease: &Lease, from: u64, text: &str) -> HeartbeatRequest {
    HeartbeatRequest {
        progress: Default::default(),
        worker: w.clone(),
        lease: lease.clone(),
        log_tail: None,
        log: Some(LogChunk {
            from,
            to: from + text.len() as u64,
            text: text.to_string(),
        }),
    }
}

/// The whole log of `attempt`, read in pages of `limit` bytes.
async fn read_all(app: &TestApp, id: &str, attempt: Option<u32>, limit: u64) -> String {
    let mut text = String::new();
    let mut offset = 0;
    loop {
        let page = app
            .anon
            .job_log(
                &prefix(id),
                &LogQuery {
                    attempt,
                    offset: Some(offset),
                    limit: Some(limit),
                },
            )
            .await
            .unwrap();
        assert_eq!(page.offset, offset);
        text.push_str(&page.text);
        if page.next_offset == offset {
            return text;
        }
        offset = page.next_offset;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_streamed_log_reads_back_whole_by_offset_per_attempt() {
    let app = spawn_app(AppOptions {
        manifest: jobs_manifest(1..=1)
            .replace("[defaults]\n", "[defaults]\nretries_on_failure = 1\n"),
        ..AppOptions::default()
    })
    .await;
    let c = &app.client;
    let w1 = worker("w1");
    let first = c.claim(&cpu_claim("w1"), None).await.unwrap().unwrap();
    let id = first.job.id.to_string();

    // 3,000 numbered lines in chunks of 100 lines, one chunk per heartbeat.
    let lines: Vec<String> = (0..3000).map(|i| format!("line {i:05}\n")).collect();
    let mut offset = 0;
    for chunk in lines.chunks(100) {
        let text: String = chunk.concat();
        let answer = c
            .heartbeat(&first.job.id, &beat(&w1, &first.lease, offset, &text))
            .await
            .unwrap();
        assert_eq!(answer.log_offset, Some(offset + text.len() as u64));
        offset += text.len() as u64;
    }
    let all: String = lines.concat();
    assert_eq!(read_all(&app, &id, None, 4096).await, all);
    let page = app
        .anon
        .job_log(&prefix(&id[..8]), &LogQuery::default())
        .await
        .unwrap();
    assert_eq!((page.attempt, page.finished), (Some(1), false));
    assert_eq!(page.size, all.len() as u64);

    // The trainer fails; the retry runs elsewhere with a log of its own.
    let fail = FailRequest {
        report: Default::default(),
        worker: w1.clone(),
        lease: first.lease.clone(),
        reason: "trainer exited with code 1".into(),
        exit_code: Some(1),
        log_tail: None,
        retryable: false,
        cause: Default::default(),
    };
    assert_eq!(
        c.fail(&first.job.id, &fail).await.unwrap().status,
        JobStatus::Pending
    );
    // The failed attempt's old lease cannot add to its log.
    let late = c
        .heartbeat(&first.job.id, &beat(&w1, &first.lease, offset, "late\n"))
        .await
        .unwrap_err();
    assert!(late.is_lease_lost(), "{late}");
    let second = c.claim(&cpu_claim("w2"), None).await.unwrap().unwrap();
    assert_eq!(second.lease.attempt, 2);
    c.heartbeat(
        &second.job.id,
        &beat(&worker("w2"), &second.lease, 0, "second try\n"),
    )
    .await
    .unwrap();
    assert_eq!(read_all(&app, &id, None, 1 << 20).await, "second try\n");
    assert_eq!(read_all(&app, &id, Some(1), 1 << 20).await, all);
    let page = app
        .anon
        .job_log(
            &prefix(&id),
            &LogQuery {
                attempt: Some(1),
                ..LogQuery::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page.attempts, vec![1, 2]);
    assert!(page.finished);

    // Past the end: 400; no such job: 404.
    let err = app
        .anon
        .job_log(
            &prefix(&id),
            &LogQuery {
                attempt: Some(2),
                offset: Some(1000),
                limit: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST));
    let err = app
        .anon
        .job_log(&prefix("0000000000"), &LogQuery::default())
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::NOT_FOUND));
}
