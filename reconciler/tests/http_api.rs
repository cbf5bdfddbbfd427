//! Every endpoint's success and error paths over real HTTP, through `cis490_api::Client`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod http_common;

use std::time::Duration;

use cis490_api::client::NodeAction;
use cis490_api::{
    ArtifactId, Client, CompleteRequest, FailRequest, HeartbeatRequest, IdPrefix, JobFilter,
    JobStatus, Lease, UploadStatus,
};
use http_common::*;
use reqwest::StatusCode;

fn prefix(s: &str) -> IdPrefix {
    IdPrefix::parse(s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_routes_list_and_describe_jobs() {
    let app = spawn_app(AppOptions {
        manifest: jobs_manifest(1..=20),
        ..AppOptions::default()
    })
    .await;
    let health = app.anon.health().await.unwrap();
    assert_eq!(health.status, "ok");
    assert_eq!(health.jobs.get("pending"), Some(&20));

    let jobs = app.anon.jobs(&JobFilter::default()).await.unwrap();
    assert_eq!(jobs.len(), 20);
    let filtered = app
        .anon
        .jobs(&JobFilter {
            status: Some(JobStatus::Completed),
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert!(filtered.is_empty());

    // A unique prefix resolves; detail carries the Created event.
    let target = &jobs[0].id;
    let short = (1..=64)
        .map(|n| &target.as_str()[..n])
        .find(|p| jobs.iter().filter(|j| j.id.as_str().starts_with(p)).count() == 1)
        .unwrap();
    let detail = app.anon.job(&prefix(short)).await.unwrap();
    assert_eq!(&detail.id, target);
    assert!(
        detail.events.iter().any(|e| e.kind == "Created"),
        "{:?}",
        detail.events
    );

    // 20 IDs over 16 hex digits: some first digit is shared, so it is ambiguous.
    let shared = (0..16)
        .map(|d| format!("{d:x}"))
        .find(|p| {
            jobs.iter()
                .filter(|j| j.id.as_str().starts_with(p.as_str()))
                .count()
                > 1
        })
        .unwrap();
    let err = app.anon.job(&prefix(&shared)).await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::CONFLICT));
    assert_eq!(err.code(), Some("ambiguous_id"));

    let missing = "0".repeat(64);
    let err = app.anon.job(&prefix(&missing)).await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::NOT_FOUND));
    assert_eq!(err.code(), Some("not_found"));

    let explain = app.anon.explain(&prefix(short)).await.unwrap();
    assert_eq!(&explain.job_id, target);
    assert_eq!(explain.pending_total, 20);

    let manifest = app.anon.manifest().await.unwrap();
    assert!(manifest.sha256.is_some());
    assert!(manifest.last_errors.is_empty());
    assert!(manifest.generation >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_ids_malformed_json_and_unknown_routes_are_json_errors() {
    use reqwest::Method;
    let app = spawn_app(AppOptions::default()).await;
    let http = reqwest::Client::new();
    // (method, path, body, expected status, expected error code)
    let cases: &[(Method, &str, Option<&str>, StatusCode, &str)] = &[
        (
            Method::GET,
            "/v1/job/not-hex!",
            None,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            Method::GET,
            "/v1/worker/.hidden",
            None,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            Method::GET,
            "/v1/model/abc",
            None,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            Method::POST,
            "/v1/job/short/heartbeat",
            Some("{}"),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            Method::POST,
            "/v1/job/claim",
            Some("{\"worker\": "),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            Method::POST,
            "/v1/job/claim",
            Some("{\"worker\": \"../x\", \"capability\": {}}"),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            Method::GET,
            "/v1/jobs?status=done",
            None,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            Method::GET,
            "/v1/nothing-here",
            None,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::DELETE,
            "/v1/jobs",
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let mut request = http
            .request(method.clone(), format!("{}{path}", app.url))
            .bearer_auth(WORKER_TOKEN)
            .header("content-type", "application/json");
        if let Some(body) = body {
            request = request.body(*body);
        }
        let resp = request.send().await.unwrap();
        assert_eq!(resp.status(), *status, "{method} {path}");
        let answer: cis490_api::ApiError = resp.json().await.unwrap();
        assert_eq!(answer.error, *code, "{method} {path}: {}", answer.message);
        if body.is_some_and(|b| b.ends_with(": ")) {
            assert!(answer.message.contains("JSON"), "{}", answer.message);
        }
    }

    // JSON bodies are capped (1 MiB by default). The server answers 413 before reading the
    // whole body and then closes that connection, so this request has a client of its own.
    let huge = format!("{{\"worker\": \"{}\"}}", "a".repeat(2 << 20));
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/job/claim", app.url))
        .bearer_auth(WORKER_TOKEN)
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let answer: cis490_api::ApiError = resp.json().await.unwrap();
    assert_eq!(answer.error, "payload_too_large", "{}", answer.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn worker_and_operator_routes_need_their_tokens() {
    let app = spawn_app(AppOptions::default()).await;
    let some_id = app.anon.jobs(&JobFilter::default()).await.unwrap()[0]
        .id
        .clone();

    // Worker routes: no token 401, wrong token 403.
    let err = app.anon.claim(&cpu_claim("w1"), None).await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED));
    assert_eq!(err.code(), Some("unauthorized"));
    let wrong = Client::new(&app.url)
        .unwrap()
        .with_worker_token(Some("nope".into()))
        .with_operator_token(Some("nope".into()));
    let err = wrong.claim(&cpu_claim("w1"), None).await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::FORBIDDEN));
    let err = wrong
        .report_node(&worker("w1"), &cpu_claim("w1").capability)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::FORBIDDEN));

    // Operator routes: no token 401, wrong token 403, the worker token is not enough.
    let err = app
        .anon
        .cancel(&prefix(some_id.as_str()))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED));
    let err = wrong.reload().await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::FORBIDDEN));
    let worker_only = Client::new(&app.url)
        .unwrap()
        .with_worker_token(Some(WORKER_TOKEN.into()))
        .with_operator_token(Some(WORKER_TOKEN.into()));
    let err = worker_only
        .requeue(&prefix(some_id.as_str()))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::FORBIDDEN));
    // Nothing was cancelled by the refused calls.
    assert_eq!(app.count(JobStatus::Cancelled).await, 0);

    // Read routes stay open.
    assert!(app.anon.workers().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operator_routes_are_refused_when_no_operator_token_is_configured() {
    let app = spawn_app(AppOptions {
        operator_token: None,
        worker_token: None,
        ..AppOptions::default()
    })
    .await;
    let client = app.anon.clone().with_operator_token(Some("guess".into()));
    let err = client.reload().await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::FORBIDDEN));
    let ClientErrorMessage(message) = ClientErrorMessage::of(&err);
    assert!(message.contains("CIS490_OPERATOR_TOKEN"), "{message}");
    // With no worker token configured, worker routes are open.
    assert!(app
        .anon
        .claim(&cpu_claim("w1"), None)
        .await
        .unwrap()
        .is_some());
}

struct ClientErrorMessage(String);

impl ClientErrorMessage {
    fn of(err: &cis490_api::ClientError) -> Self {
        match err {
            cis490_api::ClientError::Api { api, .. } => Self(api.message.clone()),
            other => Self(other.to_string()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_job_lifecycle_over_http() {
    let app = spawn_app(AppOptions {
        manifest: jobs_manifest(1..=2),
        ..AppOptions::default()
    })
    .await;
    let c = &app.client;

    let first = c.claim(&cpu_claim("w1"), None).await.unwrap().unwrap();
    let second = c.claim(&cpu_claim("w2"), None).await.unwrap().unwrap();
    assert_ne!(first.job.id, second.job.id);
    assert!(
        c.claim(&cpu_claim("w3"), None).await.unwrap().is_none(),
        "204"
    );

    // Heartbeat with the lease: running, no cancel. With a stale token: 409 lease_lost.
    let hb = HeartbeatRequest {
        worker: worker("w1"),
        lease: first.lease.clone(),
        log_tail: Some("epoch 1".into()),
        log: None,
        progress: None,
    };
    assert!(!c.heartbeat(&first.job.id, &hb).await.unwrap().cancel);
    let stale = HeartbeatRequest {
        lease: Lease {
            attempt: first.lease.attempt,
            token: "stale".into(),
        },
        ..hb.clone()
    };
    let err = c.heartbeat(&first.job.id, &stale).await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::CONFLICT));
    assert!(err.is_lease_lost());
    let view = app.anon.job(&prefix(first.job.id.as_str())).await.unwrap();
    assert_eq!(view.status, JobStatus::Running);
    assert_eq!(view.log_tail.as_deref(), Some("epoch 1"));

    // Upload and complete the first job.
    let bytes = b"trained model bytes".to_vec();
    let sha = sha256_hex(&bytes);
    let up = c
        .upload(
            &first.job.id,
            &worker("w1"),
            &first.lease,
            &sha,
            reqwest::Body::from(bytes.clone()),
        )
        .await
        .unwrap();
    assert_eq!(up.status, UploadStatus::Stored);
    assert_eq!(up.artifact_id.as_str(), sha);
    let done = c
        .complete(
            &first.job.id,
            &CompleteRequest {
                worker: worker("w1"),
                lease: first.lease.clone(),
                artifact_id: Some(up.artifact_id.clone()),
                upload: None,
                report: Default::default(),
            },
        )
        .await
        .unwrap();
    assert_eq!(done.status, JobStatus::Completed);
    // Completing again with the now-stale lease is refused.
    let err = c
        .complete(
            &first.job.id,
            &CompleteRequest {
                worker: worker("w1"),
                lease: first.lease.clone(),
                artifact_id: None,
                upload: None,
                report: Default::default(),
            },
        )
        .await
        .unwrap_err();
    assert!(err.is_lease_lost(), "{err}");

    // The artifact is listed and downloads byte for byte.
    let listed = app.anon.artifacts().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].job_id, first.job.id);
    let body = app
        .anon
        .download(&up.artifact_id)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(body.as_ref(), bytes.as_slice());
    let err = app
        .anon
        .download(&ArtifactId::parse(&"1".repeat(64)).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::NOT_FOUND));

    // Fail the second job (not retryable): failed, with its reason kept.
    let failed = c
        .fail(
            &second.job.id,
            &FailRequest {
                worker: worker("w2"),
                lease: second.lease.clone(),
                reason: "trainer exited 3".into(),
                exit_code: Some(3),
                log_tail: Some("Traceback ...".into()),
                retryable: false,
                cause: Default::default(),
                report: Default::default(),
            },
        )
        .await
        .unwrap();
    assert_eq!(failed.status, JobStatus::Failed);
    let view = app.anon.job(&prefix(second.job.id.as_str())).await.unwrap();
    assert_eq!(view.error.unwrap().exit_code, Some(3));

    // Operator: requeue the failed job (by prefix), cancel it, and a second cancel is 409.
    let p = prefix(&second.job.id.as_str()[..12]);
    assert_eq!(c.requeue(&p).await.unwrap().status, JobStatus::Pending);
    let err = c.requeue(&p).await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::CONFLICT));
    assert_eq!(err.code(), Some("invalid_state"));
    assert_eq!(c.cancel(&p).await.unwrap().status, JobStatus::Cancelled);
    let err = c.cancel(&p).await.unwrap_err();
    assert_eq!(err.code(), Some("invalid_state"));
    let err = c.cancel(&prefix(&"0".repeat(64))).await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::NOT_FOUND));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploads_check_the_lease_the_cap_and_the_sha() {
    let app = spawn_app(AppOptions {
        max_upload_bytes: 1024,
        ..AppOptions::default()
    })
    .await;
    let c = &app.client;
    let claimed = c.claim(&cpu_claim("w1"), None).await.unwrap().unwrap();
    let id = &claimed.job.id;
    let bytes = vec![42u8; 512];
    let sha = sha256_hex(&bytes);

    // A stale lease: 409 before a byte is stored.
    let stale = Lease {
        attempt: claimed.lease.attempt,
        token: "not-the-token".into(),
    };
    // Bodies far larger than socket buffers: the refusal must still reach the client. The
    // server closes a connection whose body it refused unread, so each such upload goes
    // through a client of its own, keeping that connection out of the shared pool.
    let refused_client = || {
        Client::new(&app.url)
            .unwrap()
            .with_worker_token(Some(WORKER_TOKEN.into()))
    };
    let big = vec![1u8; 16 << 20];
    let err = refused_client()
        .upload(id, &worker("w1"), &stale, &sha, big.clone().into())
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::CONFLICT));
    assert!(err.is_lease_lost());
    // Another worker's upload with the right token is refused too.
    let err = c
        .upload(
            id,
            &worker("w2"),
            &claimed.lease,
            &sha,
            bytes.clone().into(),
        )
        .await
        .unwrap_err();
    assert!(err.is_lease_lost(), "{err}");

    // A wrong worker token: 403, read by the client. (Refused before the handler, so the
    // server reads at most 64 KiB of the body: a larger one is cut off, see http_limits.rs.)
    let wrong = Client::new(&app.url)
        .unwrap()
        .with_worker_token(Some("wrong".into()));
    let err = wrong
        .upload(
            id,
            &worker("w1"),
            &claimed.lease,
            &sha,
            bytes.clone().into(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::FORBIDDEN));

    // Over the cap: 413 (announced by Content-Length, and streamed without one).
    let err = refused_client()
        .upload(
            id,
            &worker("w1"),
            &claimed.lease,
            &sha256_hex(&big),
            big.clone().into(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::PAYLOAD_TOO_LARGE));
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let streamed = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let err = refused_client()
        .upload(
            id,
            &worker("w1"),
            &claimed.lease,
            &sha256_hex(&big),
            streamed,
        )
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::PAYLOAD_TOO_LARGE));

    // The bytes do not match the announced sha256: 422.
    let err = c
        .upload(
            id,
            &worker("w1"),
            &claimed.lease,
            &sha256_hex(b"other"),
            bytes.clone().into(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::UNPROCESSABLE_ENTITY));
    assert_eq!(err.code(), Some("sha_mismatch"));

    // A malformed sha header: 400.
    let err = c
        .upload(
            id,
            &worker("w1"),
            &claimed.lease,
            "abc",
            bytes.clone().into(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST));

    // No refused upload left anything behind.
    assert!(app.partial_files().is_empty(), "{:?}", app.partial_files());
    assert!(app.anon.artifacts().await.unwrap().is_empty());

    // The right upload is stored; the same bytes again dedupe.
    let ok = c
        .upload(
            id,
            &worker("w1"),
            &claimed.lease,
            &sha,
            bytes.clone().into(),
        )
        .await
        .unwrap();
    assert_eq!(ok.status, UploadStatus::Stored);
    let again = c
        .upload(
            id,
            &worker("w1"),
            &claimed.lease,
            &sha,
            bytes.clone().into(),
        )
        .await
        .unwrap();
    assert_eq!(again.status, UploadStatus::AlreadyPresent);
    assert_eq!(again.artifact_id, ok.artifact_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reload_diff_and_invalid_manifests() {
    let app = spawn_app(AppOptions {
        watch: false,
        manifest: jobs_manifest(1..=2),
        ..AppOptions::default()
    })
    .await;
    let c = &app.client;

    // diff: the plan for new text, nothing applied.
    let diff = c.diff(jobs_manifest(1..=4), "local.toml").await.unwrap();
    assert_eq!(diff.create.len(), 2);
    assert_eq!(diff.keep, 2);
    assert!(!diff.applied);
    assert_eq!(app.anon.jobs(&JobFilter::default()).await.unwrap().len(), 2);
    let err = c
        .diff("version = ".into(), "edits/local.toml")
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::UNPROCESSABLE_ENTITY));
    assert_eq!(err.code(), Some("invalid_manifest"));
    // The errors are in the client's file, named as the client named it.
    let server_dir = app.dir.path().display().to_string();
    let message = err.to_string();
    assert!(message.contains("edits/local.toml:1:"), "{message}");
    assert!(!message.contains(&server_dir), "{message}");

    // reload applies what the file says.
    std::fs::write(&app.manifest, jobs_manifest(2..=4)).unwrap();
    let before = app.anon.manifest().await.unwrap().generation;
    let summary = c.reload().await.unwrap();
    assert!(summary.applied);
    assert_eq!(summary.create.len(), 2);
    assert_eq!(summary.tombstone.len(), 1);
    assert!(summary.generation > before);
    let live = app.anon.jobs(&JobFilter::default()).await.unwrap();
    assert_eq!(live.len(), 3);

    // An invalid file: 422 with the line, nothing changes, GET /v1/manifest shows it.
    let jobs_before = app
        .anon
        .jobs(&JobFilter {
            all: true,
            ..JobFilter::default()
        })
        .await
        .unwrap();
    std::fs::write(
        &app.manifest,
        "version = 1\n[defaults]\ncommand = [\"true\"]\n[models.gbt]\n[[jobs]]\nmodel = \"gbt\"\nmdoe = \"x\"\n",
    )
    .unwrap();
    let err = c.reload().await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::UNPROCESSABLE_ENTITY));
    assert_eq!(err.code(), Some("invalid_manifest"));
    let message = err.to_string();
    assert!(message.contains("training_manifest.toml:7:"), "{message}");
    assert!(!message.contains(&server_dir), "{message}");
    let status = app.anon.manifest().await.unwrap();
    assert!(!status.last_errors.is_empty());
    assert!(
        status.last_errors.iter().any(|e| e.line == Some(7)),
        "{:?}",
        status.last_errors
    );
    let jobs_after = app
        .anon
        .jobs(&JobFilter {
            all: true,
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(jobs_before, jobs_after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_report_cordon_and_drain() {
    let app = spawn_app(AppOptions::default()).await;
    let c = &app.client;
    let name = worker("gpu-box");
    let view = c
        .report_node(&name, &cpu_claim("gpu-box").capability)
        .await
        .unwrap();
    assert_eq!(view.name, name);
    assert_eq!(app.anon.workers().await.unwrap().len(), 1);
    assert_eq!(app.anon.worker_detail(&name).await.unwrap().name, name);
    let err = app.anon.worker_detail(&worker("nobody")).await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::NOT_FOUND));

    let cordoned = c.node_action(&name, NodeAction::Cordon).await.unwrap();
    assert!(cordoned.cordoned);
    // A cordoned node gets no job.
    assert!(c
        .claim(&cpu_claim("gpu-box"), None)
        .await
        .unwrap()
        .is_none());
    let uncordoned = c.node_action(&name, NodeAction::Uncordon).await.unwrap();
    assert!(!uncordoned.cordoned);
    assert!(c
        .claim(&cpu_claim("gpu-box"), None)
        .await
        .unwrap()
        .is_some());
    let drained = c.node_action(&name, NodeAction::Drain).await.unwrap();
    assert!(drained.cordoned);
    let err = app
        .anon
        .node_action(&name, NodeAction::Cordon)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_long_poll_answers_when_something_happens() {
    let app = spawn_app(AppOptions::default()).await;
    let first = app.anon.events(0, Duration::ZERO).await.unwrap();
    assert!(!first.events.is_empty(), "Created events exist");
    let next = first.next;
    // Nothing new: a zero wait answers at once with no events.
    let empty = app.anon.events(next, Duration::ZERO).await.unwrap();
    assert!(empty.events.is_empty());
    assert_eq!(empty.next, next);

    let anon = app.anon.clone();
    let poll = tokio::spawn(async move { anon.events(next, Duration::from_secs(30)).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!poll.is_finished(), "the poll waits while nothing happens");
    let claimed = app
        .client
        .claim(&cpu_claim("w1"), None)
        .await
        .unwrap()
        .unwrap();
    let page = tokio::time::timeout(Duration::from_secs(20), poll)
        .await
        .expect("the poll answered after the claim")
        .unwrap()
        .unwrap();
    assert!(page
        .events
        .iter()
        .any(|e| e.kind == "Claimed" && e.job_id.as_ref() == Some(&claimed.job.id)));
    assert!(page.next > next);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_shutdown_answers_waiting_claims() {
    let app = spawn_app(AppOptions {
        manifest: jobs_manifest(std::iter::empty()),
        ..AppOptions::default()
    })
    .await;
    let client = app.client.clone();
    let waiting = tokio::spawn(async move {
        client
            .claim(&cpu_claim("w1"), Some(Duration::from_secs(60)))
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished());
    app.shutdown().await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting claim was answered at shutdown")
        .unwrap()
        .unwrap();
    assert!(answer.is_none(), "204 at shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_disconnects_mid_upload_leaves_no_partial_file() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let app = spawn_app(AppOptions::default()).await;
    let claimed = app
        .client
        .claim(&cpu_claim("w1"), None)
        .await
        .unwrap()
        .unwrap();
    let incoming = app.store_root.join(".incoming");
    let saw_partial = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&saw_partial);
    // Some bytes, then (once the server is writing its partial file) the client breaks off.
    let body = futures_util::stream::unfold(0u32, move |i| {
        let (incoming, seen) = (incoming.clone(), Arc::clone(&seen));
        async move {
            if i < 4 {
                return Some((Ok(bytes::Bytes::from(vec![9u8; 64 * 1024])), i + 1));
            }
            if i > 4 {
                return None;
            }
            for _ in 0..1000 {
                let present = std::fs::read_dir(&incoming)
                    .map(|mut rd| rd.next().is_some())
                    .unwrap_or(false);
                if present {
                    seen.store(true, Ordering::SeqCst);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Some((Err(std::io::Error::other("client gives up")), i + 1))
        }
    });
    let result = app
        .client
        .upload(
            &claimed.job.id,
            &worker("w1"),
            &claimed.lease,
            &"ab".repeat(32),
            reqwest::Body::wrap_stream(body),
        )
        .await;
    assert!(result.is_err(), "the upload was broken off");
    assert!(
        saw_partial.load(Ordering::SeqCst),
        "the server had started writing"
    );
    wait_for(
        Duration::from_secs(20),
        "the partial file to go",
        || async { app.partial_files().is_empty().then_some(()) },
    )
    .await;
    assert!(app.anon.artifacts().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_started_on_an_invalid_manifest_serves_and_reports_it() {
    let app = spawn_app(AppOptions {
        manifest: "version = 1\n[[jobs]]\nmodel = \"gbt\"\nmode = \"realistic\"\nwat = 1\n".into(),
        watch: false,
        ..AppOptions::default()
    })
    .await;
    let status = app.anon.manifest().await.unwrap();
    assert!(!status.last_errors.is_empty());
    assert!(status.sha256.is_none(), "nothing was ever applied");
    assert!(app
        .anon
        .jobs(&JobFilter::default())
        .await
        .unwrap()
        .is_empty());
    // Fixing the file and reloading recovers.
    std::fs::write(&app.manifest, jobs_manifest([1])).unwrap();
    app.client.reload().await.unwrap();
    assert!(app.anon.manifest().await.unwrap().last_errors.is_empty());
    assert_eq!(app.anon.jobs(&JobFilter::default()).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn protected_reads_need_a_token() {
    let app = spawn_app(AppOptions {
        protect_reads: true,
        ..AppOptions::default()
    })
    .await;
    // Raw HTTP first, to check each header on its own; then the typed client.
    let http = reqwest::Client::new();
    let jobs = format!("{}/v1/jobs", app.url);
    let resp = http.get(&jobs).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // Liveness and metrics stay open for load balancers and scrapers.
    for open in ["/v1/health", "/metrics"] {
        let resp = http.get(format!("{}{open}", app.url)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{open}");
    }
    let resp = http.get(&jobs).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = http
        .get(&jobs)
        .bearer_auth(WORKER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = http
        .get(&jobs)
        .header("X-Operator-Token", OPERATOR_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let listed: cis490_api::Page<cis490_api::JobView> = resp.json().await.unwrap();
    assert_eq!(listed.items.len(), 3);

    let filter = cis490_api::JobFilter::default();
    let anonymous = cis490_api::Client::new(&app.url).unwrap();
    assert_eq!(
        anonymous.jobs(&filter).await.unwrap_err().status(),
        Some(StatusCode::UNAUTHORIZED)
    );
    let agent = anonymous
        .clone()
        .with_worker_token(Some(WORKER_TOKEN.to_string()));
    assert_eq!(agent.jobs(&filter).await.unwrap().len(), 3);
    let operator = anonymous.with_operator_token(Some(OPERATOR_TOKEN.to_string()));
    assert_eq!(operator.jobs(&filter).await.unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_count_jobs_and_workers() {
    let app = spawn_app(AppOptions::default()).await;
    app.client.claim(&cpu_claim("w1"), None).await.unwrap();
    let text = reqwest::get(format!("{}/metrics", app.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("cis490_jobs{status=\"pending\"} 2"), "{text}");
    assert!(text.contains("cis490_jobs{status=\"claimed\"} 1"), "{text}");
    assert!(text.contains("cis490_workers{state=\"Ready\"} 1"), "{text}");
    assert!(text.contains("cis490_manifest_errors 0"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_removes_partial_uploads_a_crash_left() {
    use cis490_reconciler::server::{Server, ServerConfig};
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("m.toml");
    std::fs::write(&manifest, jobs_manifest([1])).unwrap();
    let config = ServerConfig::new(&manifest, dir.path().join("state"));
    let incoming = config.store_root().join(".incoming");
    std::fs::create_dir_all(&incoming).unwrap();
    std::fs::write(incoming.join("abc-0123.partial"), b"half an upload").unwrap();
    let server = Server::build(config).await.unwrap();
    assert_eq!(server.recovery().removed_partials, 1);
    assert_eq!(std::fs::read_dir(&incoming).unwrap().count(), 0);
}

/// A store written by a version that kept its index in `index.jsonl` (or one whose server
/// died between storing bytes and indexing them): the start-up scan puts each blob into
/// the database's index, so the listing shows it and identical uploads dedupe against it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_indexes_stored_artifacts_the_database_lacks() {
    use cis490_reconciler::server::{Server, ServerConfig};
    use cis490_reconciler::store::fs::{BLOBS_DIR, BUNDLE_FILE, META_FILE};
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("m.toml");
    std::fs::write(&manifest, jobs_manifest([1])).unwrap();
    let config = ServerConfig::new(&manifest, dir.path().join("state"));
    let bytes = b"a bundle stored before the index moved into the database";
    let id = cis490_api::ArtifactId::parse(&sha256_hex(bytes)).unwrap();
    let blob = config.store_root().join(BLOBS_DIR).join(id.as_str());
    std::fs::create_dir_all(&blob).unwrap();
    std::fs::write(blob.join(BUNDLE_FILE), bytes).unwrap();
    let meta = cis490_api::ArtifactView {
        artifact_id: id.clone(),
        job_id: cis490_api::JobId::parse(&"e".repeat(64)).unwrap(),
        attempt: Some(1),
        model: "gbt".into(),
        mode: "realistic".into(),
        worker: "w1".into(),
        size_bytes: bytes.len() as u64,
        received_at: chrono::Utc::now(),
    };
    std::fs::write(blob.join(META_FILE), serde_json::to_string(&meta).unwrap()).unwrap();

    let server = Server::build(config.clone()).await.unwrap();
    assert_eq!(server.recovery().indexed, 1, "{:?}", server.recovery());
    let (rows, more) = server.queue().unrecorded_artifacts_page(None, 10).unwrap();
    assert!(!more);
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (
            &rows[0].artifact_id,
            rows[0].size_bytes,
            rows[0].job_id.clone()
        ),
        (&id, bytes.len() as u64, meta.job_id.clone())
    );
    drop(server);
    let again = Server::build(config).await.unwrap();
    assert!(again.recovery().is_clean(), "{:?}", again.recovery());
}
