//! Training results through the real server: progress on heartbeats shows on the job and
//! its progress route, metrics on completions make the results listing (filtered, sorted,
//! paged), and bad reports or queries are clear 400s.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod http_common;

use cis490_api::results::parse_flat;
use cis490_api::{
    ClaimResponse, CompleteRequest, HeartbeatRequest, IdPrefix, JobProgress, Metrics, Page,
    ResultRow, ResultsQuery, TrainerReport,
};
use http_common::*;
use reqwest::StatusCode;

/// Six gbt jobs: learning rates 0.1 and 0.01 by seeds 1-3, in two modes.
fn matrix_manifest() -> String {
    "version = 1\n\n[defaults]\ncommand = [\"true\"]\n\n[models.gbt]\n\n\
     [[jobs]]\nmodel = \"gbt\"\nmode = \"oracle\"\nlabels = { grid = \"a\" }\n\
     matrix = { seed = [1, 2, 3], \"hyper.learning_rate\" = [0.1, 0.01] }\n"
        .to_string()
}

fn m(json: &str) -> Metrics {
    parse_flat(json.as_bytes(), 1 << 20).unwrap()
}

async fn run(app: &TestApp, name: &str, metrics: Option<Metrics>) -> ClaimResponse {
    let c = &app.client;
    let claimed = c.claim(&cpu_claim(name), None).await.unwrap().unwrap();
    let hb = HeartbeatRequest {
        log: Default::default(),
        worker: worker(name),
        lease: claimed.lease.clone(),
        log_tail: None,
        progress: Some(m(r#"{"step": 1, "of": 2}"#)),
    };
    c.heartbeat(&claimed.job.id, &hb).await.unwrap();
    let req = CompleteRequest {
        worker: worker(name),
        lease: claimed.lease.clone(),
        artifact_id: None,
        upload: None,
        report: TrainerReport {
            metrics,
            progress: vec![m(r#"{"step": 1, "of": 2}"#), m(r#"{"step": 2, "of": 2}"#)],
            warnings: Vec::new(),
        },
    };
    c.complete(&claimed.job.id, &req).await.unwrap();
    claimed
}

async fn get(app: &TestApp, path: &str) -> reqwest::Response {
    reqwest::get(format!("{}{path}", app.url)).await.unwrap()
}

#[tokio::test]
async fn progress_shows_on_running_jobs_and_on_the_progress_route() {
    let app = spawn_app(AppOptions::default()).await;
    let c = &app.client;
    let claimed = c.claim(&cpu_claim("w1"), None).await.unwrap().unwrap();
    let hb = HeartbeatRequest {
        log: Default::default(),
        worker: worker("w1"),
        lease: claimed.lease.clone(),
        log_tail: None,
        progress: Some(m(r#"{"step": 7, "of": 20, "loss": 0.31}"#)),
    };
    c.heartbeat(&claimed.job.id, &hb).await.unwrap();
    let page = app.anon.jobs_page(&Default::default()).await.unwrap();
    let running = page.items.iter().find(|j| j.id == claimed.job.id).unwrap();
    assert_eq!(
        running.progress,
        Some(m(r#"{"step": 7, "of": 20, "loss": 0.31}"#))
    );
    let prefix = IdPrefix::parse(claimed.job.id.short()).unwrap();
    let progress: JobProgress = app.anon.job_progress(&prefix).await.unwrap();
    assert_eq!(progress.attempts.len(), 1);
    assert_eq!(progress.attempts[0].outcome, "running");
    assert_eq!(progress.attempts[0].series.len(), 1);

    // A point beyond its bound is refused, and the lease stands.
    let fat = HeartbeatRequest {
        progress: Some(m(&format!(r#"{{"note": "{}"}}"#, "x".repeat(5000)))),
        ..hb.clone()
    };
    let err = c.heartbeat(&claimed.job.id, &fat).await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST), "{err}");
    c.heartbeat(&claimed.job.id, &hb).await.unwrap();

    let missing = get(&app, &format!("/v1/job/{}/progress", "ab".repeat(32))).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn results_list_completed_jobs_sorted_filtered_and_paged() {
    let app = spawn_app(AppOptions {
        manifest: matrix_manifest(),
        ..AppOptions::default()
    })
    .await;
    // Five of the six complete, with accuracies 0.50 .. 0.90 in claim order (the last
    // without metrics.json); the sixth stays pending.
    let mut claimed = Vec::new();
    for i in 0..5 {
        let metrics = (i < 4).then(|| m(&format!(r#"{{"accuracy": 0.{}, "run": "r{i}"}}"#, 5 + i)));
        claimed.push(run(&app, &format!("w{i}"), metrics).await);
    }
    let results = |q: ResultsQuery| {
        let client = app.anon.clone();
        async move { client.results_page(&q).await.unwrap() }
    };
    let acc = |page: &Page<ResultRow>| -> Vec<Option<f64>> {
        page.items
            .iter()
            .map(|r| r.metrics.get("accuracy").and_then(|v| v.as_f64()))
            .collect()
    };
    let all = results(ResultsQuery::default()).await;
    assert_eq!(all.items.len(), 5, "one row per completed job");
    let row = &all.items[0];
    assert_eq!((row.model.as_str(), row.mode.as_str()), ("gbt", "oracle"));
    assert!(row.hyper.contains_key("learning_rate"));
    assert_eq!(row.labels.get("grid").map(String::as_str), Some("a"));
    assert!(row.duration_s.is_some());

    let best = results(ResultsQuery {
        sort: Some("-accuracy".into()),
        limit: Some(2),
        ..Default::default()
    })
    .await;
    assert_eq!(acc(&best), [Some(0.8), Some(0.7)]);
    let rest = results(ResultsQuery {
        sort: Some("-accuracy".into()),
        limit: Some(2),
        after: best.next.clone(),
        ..Default::default()
    })
    .await;
    assert_eq!(acc(&rest), [Some(0.6), Some(0.5)]);

    let none = results(ResultsQuery {
        mode: Some("realistic".into()),
        ..Default::default()
    })
    .await;
    assert!(none.items.is_empty());
    let labelled = results(ResultsQuery {
        label: Some("grid=a".into()),
        model: Some("gbt".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(labelled.items.len(), 5);

    // The job view of a completed job carries its metrics; the progress route its series.
    let first = IdPrefix::parse(claimed[0].job.id.short()).unwrap();
    let view = app.anon.job(&first).await.unwrap();
    assert_eq!(view.metrics, Some(m(r#"{"accuracy": 0.5, "run": "r0"}"#)));
    let progress = app.anon.job_progress(&first).await.unwrap();
    assert_eq!(progress.attempts[0].series.len(), 2);
    assert_eq!(progress.attempts[0].outcome, "completed");

    for bad in [
        "/v1/results?sort=a%22b",
        "/v1/results?label=nokey",
        "/v1/results?limit=0",
        "/v1/results?after=nope",
        "/v1/results?colour=red",
    ] {
        let resp = get(&app, bad).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{bad}");
        let body: cis490_api::ApiError = resp.json().await.unwrap();
        assert_eq!(body.error, "bad_request", "{bad}: {}", body.message);
    }
}

#[tokio::test]
async fn a_report_beyond_its_bounds_is_refused_and_the_job_stays_leased() {
    let app = spawn_app(AppOptions::default()).await;
    let c = &app.client;
    let claimed = c.claim(&cpu_claim("w1"), None).await.unwrap().unwrap();
    let req = CompleteRequest {
        worker: worker("w1"),
        lease: claimed.lease.clone(),
        artifact_id: None,
        upload: None,
        report: TrainerReport {
            metrics: Some(m(&format!(r#"{{"a": "{}"}}"#, "x".repeat(70_000)))),
            ..Default::default()
        },
    };
    let err = c.complete(&claimed.job.id, &req).await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST), "{err}");
    let ok = CompleteRequest {
        report: TrainerReport {
            warnings: vec!["metrics.json is 70012 bytes, more than 65536".into()],
            ..Default::default()
        },
        ..req
    };
    c.complete(&claimed.job.id, &ok).await.unwrap();
    let view = app
        .anon
        .job(&IdPrefix::parse(claimed.job.id.short()).unwrap())
        .await
        .unwrap();
    assert!(view
        .events
        .iter()
        .any(|e| e.kind == "TrainerWarning" && e.message.contains("70012 bytes")));
}
