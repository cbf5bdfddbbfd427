//! Paging of the list routes against the real server: every item exactly once in order,
//! `next` absent exactly on the last page, filters across pages, and clear 400s for a bad
//! limit, cursor or query key.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod http_common;

use std::collections::HashSet;

use cis490_api::{
    ArtifactView, JobFilter, JobStatus, JobView, Page, UploadStatus, WorkerView, MAX_PAGE_LIMIT,
};
use http_common::*;
use reqwest::StatusCode;

/// 7 jobs at priority 5, 40 at the default 0, 5 at -2.
fn three_priorities() -> String {
    format!(
        "{}\n[[jobs]]\nmodel = \"gbt\"\nmode = \"high\"\npriority = 5\nmatrix = {{ seed = [1, 2, 3, 4, 5, 6, 7] }}\n\
         \n[[jobs]]\nmodel = \"gbt\"\nmode = \"low\"\npriority = -2\nlabels = {{ team = \"b\" }}\nmatrix = {{ seed = [1, 2, 3, 4, 5] }}\n",
        jobs_manifest(1..=40)
    )
}

async fn get_page<T: serde::de::DeserializeOwned>(app: &TestApp, path_and_query: &str) -> Page<T> {
    let resp = reqwest::get(format!("{}{path_and_query}", app.url))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{path_and_query}");
    resp.json().await.unwrap()
}

/// Follows `next` from the first page of `path` with `query`, checking each page's size.
async fn all_pages<T: serde::de::DeserializeOwned>(
    app: &TestApp,
    path: &str,
    query: &str,
    limit: usize,
) -> (Vec<T>, usize) {
    let mut items = Vec::new();
    let mut pages = 0;
    let mut after: Option<String> = None;
    loop {
        let cursor = after
            .as_deref()
            .map(|a| format!("&after={a}"))
            .unwrap_or_default();
        let page: Page<T> = get_page(app, &format!("{path}?limit={limit}{query}{cursor}")).await;
        pages += 1;
        assert!(page.items.len() <= limit);
        let last = page.next.is_none();
        if !last {
            assert_eq!(page.items.len(), limit, "only the last page may be short");
        }
        items.extend(page.items);
        match page.next {
            Some(next) => after = Some(next),
            None => return (items, pages),
        }
        assert!(pages < 1000, "the listing never ended");
    }
}

fn ids(jobs: &[JobView]) -> Vec<String> {
    jobs.iter().map(|j| j.id.to_string()).collect()
}

#[tokio::test]
async fn jobs_pages_hold_every_job_once_in_queue_order() {
    let app = spawn_app(AppOptions {
        manifest: three_priorities(),
        ..AppOptions::default()
    })
    .await;
    let (one_page, pages) = all_pages::<JobView>(&app, "/v1/jobs", "", 1000).await;
    assert_eq!((one_page.len(), pages), (52, 1));
    let priorities: Vec<i32> = one_page.iter().map(|j| j.priority).collect();
    assert!(
        priorities.windows(2).all(|w| w[0] >= w[1]),
        "{priorities:?}"
    );
    // 52 = 13 pages of 4: the last page is full and still has no `next`.
    let (paged, pages) = all_pages::<JobView>(&app, "/v1/jobs", "", 4).await;
    assert_eq!(pages, 13);
    assert_eq!(
        ids(&paged),
        ids(&one_page),
        "pages of 4 give the one page's order"
    );
    let (paged, _) = all_pages::<JobView>(&app, "/v1/jobs", "", 5).await;
    assert_eq!(ids(&paged), ids(&one_page));

    // Filters hold across pages: the label, and the status once some jobs are claimed.
    let (team_b, _) = all_pages::<JobView>(&app, "/v1/jobs", "&label=team=b", 2).await;
    assert_eq!(team_b.len(), 5);
    assert!(team_b.iter().all(|j| j.mode == "low"));
    for n in 0..3 {
        app.client
            .claim(&cpu_claim(&format!("w{n}")), None)
            .await
            .unwrap()
            .unwrap();
    }
    let (pending, _) = all_pages::<JobView>(&app, "/v1/jobs", "&status=pending", 6).await;
    assert_eq!(pending.len(), 49);
    assert!(pending.iter().all(|j| j.status == JobStatus::Pending));
    let unique: HashSet<_> = ids(&pending).into_iter().collect();
    assert_eq!(unique.len(), 49);

    // The typed client follows the pages itself.
    let all = app
        .anon
        .jobs(&JobFilter {
            limit: Some(3),
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&all), ids(&one_page));
}

#[tokio::test]
async fn a_page_larger_than_the_maximum_is_served_as_the_maximum() {
    let seeds = 1..=i64::from(MAX_PAGE_LIMIT) + 5;
    let app = spawn_app(AppOptions {
        manifest: jobs_manifest(seeds),
        ..AppOptions::default()
    })
    .await;
    let page: Page<JobView> = get_page(&app, "/v1/jobs?limit=4000000000").await;
    assert_eq!(page.items.len(), MAX_PAGE_LIMIT as usize);
    let rest: Page<JobView> = get_page(
        &app,
        &format!("/v1/jobs?after={}", page.next.as_deref().unwrap()),
    )
    .await;
    assert_eq!((rest.items.len(), rest.next), (5, None));
    let default: Page<JobView> = get_page(&app, "/v1/jobs").await;
    assert_eq!(default.items.len(), cis490_api::DEFAULT_PAGE_LIMIT as usize);
}

#[tokio::test]
async fn bad_limits_cursors_and_query_keys_are_refused_with_what_is_wrong() {
    let app = spawn_app(AppOptions::default()).await;
    let cases = [
        ("/v1/jobs?limit=0", "limit"),
        ("/v1/jobs?after=not-a-cursor", "cursor"),
        ("/v1/jobs?after=1.2.xyz", "cursor"),
        ("/v1/jobs?colour=red", "colour"),
        ("/v1/workers?limit=0", "limit"),
        ("/v1/workers?after=..%2Fx", "worker"),
        ("/v1/models?after=q12", "cursor"),
        ("/v1/models?sort=size", "sort"),
        ("/v1/events?since=0&kind=claimed", "kind"),
        ("/v1/events?limit=0", "limit"),
    ];
    for (path, names) in cases {
        let resp = reqwest::get(format!("{}{path}", app.url)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{path}");
        let body: cis490_api::ApiError = resp.json().await.unwrap();
        assert_eq!(body.error, "bad_request", "{path}");
        assert!(
            body.message.contains(names),
            "{path}: {:?} should name {names:?}",
            body.message
        );
    }
}

#[tokio::test]
async fn workers_page_by_name() {
    let app = spawn_app(AppOptions {
        manifest: jobs_manifest(1..=10),
        ..AppOptions::default()
    })
    .await;
    for name in ["e", "a", "d", "c", "b"] {
        app.client.claim(&cpu_claim(name), None).await.unwrap();
    }
    let (workers, pages) = all_pages::<WorkerView>(&app, "/v1/workers", "", 2).await;
    let names: Vec<&str> = workers.iter().map(|w| w.name.as_str()).collect();
    assert_eq!((names, pages), (vec!["a", "b", "c", "d", "e"], 3));
    assert_eq!(app.anon.workers().await.unwrap().len(), 5);
}

/// Five uploads recorded (one of them sent twice under its lease, listed once), then bytes
/// whose lease was lost while they streamed: stored, named by no recorded upload, and
/// listed after the recorded ones.
#[tokio::test]
async fn artifact_pages_hold_recorded_uploads_newest_first_then_unrecorded_bytes() {
    let app = spawn_app(AppOptions {
        manifest: jobs_manifest(1..=6),
        ..AppOptions::default()
    })
    .await;
    let c = &app.client;
    let mut uploaded = Vec::new();
    for n in 0..5 {
        let claim = c.claim(&cpu_claim("w1"), None).await.unwrap().unwrap();
        let bytes = format!("model {n}").into_bytes();
        let sha = sha256_hex(&bytes);
        let times = if n == 2 { 2 } else { 1 };
        for time in 0..times {
            let up = c
                .upload(
                    &claim.job.id,
                    &worker("w1"),
                    &claim.lease,
                    &sha,
                    bytes.clone().into(),
                )
                .await
                .unwrap();
            let expected = if time == 0 {
                UploadStatus::Stored
            } else {
                UploadStatus::AlreadyPresent
            };
            assert_eq!(up.status, expected);
        }
        uploaded.push(sha);
    }
    // The sixth job's upload streams while an operator cancels the job.
    let claim = c.claim(&cpu_claim("w1"), None).await.unwrap().unwrap();
    let lost = b"bytes whose lease was lost".to_vec();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let body = reqwest::Body::wrap_stream(tokio_stream_from(rx));
    let upload = {
        let c = c.clone();
        let (id, lease, sha) = (claim.job.id.clone(), claim.lease.clone(), sha256_hex(&lost));
        tokio::spawn(async move { c.upload(&id, &worker("w1"), &lease, &sha, body).await })
    };
    tx.send(Ok(lost[..5].to_vec())).await.unwrap();
    wait_for(
        std::time::Duration::from_secs(10),
        "the upload to stream",
        || async { (!app.partial_files().is_empty()).then_some(()) },
    )
    .await;
    c.cancel(&cis490_api::IdPrefix::parse(claim.job.id.as_str()).unwrap())
        .await
        .unwrap();
    tx.send(Ok(lost[5..].to_vec())).await.unwrap();
    drop(tx);
    let refused = upload.await.unwrap().unwrap_err();
    assert_eq!(refused.status(), Some(StatusCode::CONFLICT), "{refused}");

    let (rows, pages) = all_pages::<ArtifactView>(&app, "/v1/models", "", 2).await;
    assert_eq!(pages, 3);
    let listed: Vec<String> = rows.iter().map(|r| r.artifact_id.to_string()).collect();
    let mut newest_first = uploaded.clone();
    newest_first.reverse();
    newest_first.push(sha256_hex(&lost));
    assert_eq!(listed, newest_first);
    assert_eq!(rows[4].size_bytes, b"model 0".len() as u64);
    assert_eq!(app.anon.artifacts().await.unwrap(), rows);
}

/// A body stream fed by a channel.
fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
