//! `/metrics` against the real server: the counters of claims, empty claims, completions
//! and failures by model and cause, reconciles by result, and the claim and upload
//! histograms move as the fleet works, beside the gauges it always served.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod http_common;

use cis490_api::{CompleteRequest, FailRequest};
use http_common::*;

async fn metrics(app: &TestApp) -> String {
    let resp = reqwest::get(format!("{}/metrics", app.url)).await.unwrap();
    assert!(resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/openmetrics-text")));
    resp.text().await.unwrap()
}

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_and_histograms_follow_claims_completions_failures_and_uploads() {
    let app = spawn_app(AppOptions::default()).await;
    let c = &app.client;
    let first = c.claim(&cpu_claim("w1"), None).await.unwrap().unwrap();
    let second = c.claim(&cpu_claim("w1"), None).await.unwrap().unwrap();
    let third = c.claim(&cpu_claim("w1"), None).await.unwrap().unwrap();
    assert!(c.claim(&cpu_claim("w1"), None).await.unwrap().is_none());

    let bytes = b"model bytes".to_vec();
    let up = c
        .upload(
            &first.job.id,
            &worker("w1"),
            &first.lease,
            &sha256_hex(&bytes),
            reqwest::Body::from(bytes.clone()),
        )
        .await
        .unwrap();
    c.complete(
        &first.job.id,
        &CompleteRequest {
            worker: worker("w1"),
            lease: first.lease.clone(),
            artifact_id: Some(up.artifact_id),
            upload: None,
            report: Default::default(),
        },
    )
    .await
    .unwrap();
    let fail = |lease, retryable| FailRequest {
        cause: Default::default(),
        worker: worker("w1"),
        lease,
        reason: "trainer exited with code 1".into(),
        exit_code: Some(1),
        log_tail: None,
        retryable,
        report: Default::default(),
    };
    c.fail(&second.job.id, &fail(second.lease.clone(), false))
        .await
        .unwrap();
    c.fail(&third.job.id, &fail(third.lease.clone(), true))
        .await
        .unwrap();

    let text = metrics(&app).await;
    assert_eq!(value(&text, "cis490_claims_total{model=\"gbt\"}"), 3.0);
    assert_eq!(value(&text, "cis490_claims_empty_total"), 1.0);
    assert_eq!(
        value(&text, "cis490_job_completions_total{model=\"gbt\"}"),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "cis490_job_failures_total{model=\"gbt\",cause=\"trainer\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "cis490_job_failures_total{model=\"gbt\",cause=\"released\"}"
        ),
        1.0
    );
    assert_eq!(value(&text, "cis490_claim_duration_seconds_count"), 4.0);
    assert_eq!(value(&text, "cis490_upload_duration_seconds_count"), 1.0);
    assert_eq!(
        value(&text, "cis490_upload_bytes_total"),
        bytes.len() as f64
    );
    assert_eq!(
        value(&text, "cis490_reconciles_total{result=\"applied\"}"),
        1.0
    );
    assert_eq!(value(&text, "cis490_lease_expiries_total"), 0.0);
    // The gauges and counters served before keep their names.
    assert_eq!(value(&text, "cis490_jobs{status=\"completed\"}"), 1.0);
    assert!(value(&text, "cis490_http_bytes_read_total") > 0.0);
    assert_eq!(value(&text, "cis490_manifest_errors"), 0.0);
    assert!(text.ends_with("# EOF\n"), "{text}");

    // A reload of the same file changes nothing.
    c.reload().await.unwrap();
    let text = metrics(&app).await;
    assert_eq!(
        value(&text, "cis490_reconciles_total{result=\"unchanged\"}"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_counts_the_leases_it_expires() {
    let app = spawn_app(AppOptions::default()).await;
    app.client
        .claim(&cpu_claim("w1"), None)
        .await
        .unwrap()
        .unwrap();
    // No heartbeat: past the lease, the sweeper (every 100 ms here) takes the job back.
    app.clock.advance(chrono::Duration::seconds(3600));
    wait_for(
        std::time::Duration::from_secs(10),
        "a lease expiry in /metrics",
        || async {
            let text = metrics(&app).await;
            (value(&text, "cis490_lease_expiries_total") == 1.0).then_some(())
        },
    )
    .await;
}
