//! Hostile input against the real server on 127.0.0.1:0: path traversal in every ID and
//! name, oversized and slow bodies, missing, wrong and swapped tokens, a worker using
//! another worker's lease, unknown JSON fields and malformed JSON. Every refusal is a 4xx
//! with an `ApiError` body, never a 5xx; nothing outside what a request may change moves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod http_common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use cis490_api::{
    ApiError, ClaimResponse, Client, CompleteRequest, FailRequest, HeartbeatRequest, JobStatus,
    Lease, OPERATOR_TOKEN_HEADER,
};
use cis490_reconciler::server::routes::openapi_document;
use http_common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An answer read off a raw connection.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    body: Vec<u8>,
}

impl RawResponse {
    fn api_error(&self) -> Option<ApiError> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// Sends `request` as written (reqwest would normalise `..` and re-encode the path) on a
/// fresh connection and reads the answer until the server closes it.
async fn raw(app: &TestApp, request: &[u8]) -> RawResponse {
    let addr = app.url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "no answer within 20 s to {:?}",
        String::from_utf8_lossy(&request[..request.len().min(200)])
    );
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = match buf.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(at) => buf[at + 4..].to_vec(),
        None => Vec::new(),
    };
    RawResponse { status, body }
}

fn request(method: &str, path: &str, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn both_tokens() -> Vec<(&'static str, String)> {
    vec![
        ("Authorization", format!("Bearer {WORKER_TOKEN}")),
        (OPERATOR_TOKEN_HEADER, OPERATOR_TOKEN.to_string()),
    ]
}

/// Every file under `dir` with its size and modification time, but the queue database
/// (which any request may write).
fn snapshot(dir: &Path) -> BTreeMap<String, (u64, SystemTime)> {
    let mut out = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let md = entry.metadata().unwrap();
            let name = entry.path().display().to_string();
            if md.is_dir() {
                out.insert(format!("{name}/"), (0, md.modified().unwrap()));
                pending.push(entry.path());
            } else if !entry.file_name().to_string_lossy().starts_with("queue.db") {
                out.insert(name, (md.len(), md.modified().unwrap()));
            }
        }
    }
    out
}

/// (METHOD, path template, operationId) of every documented operation.
fn operations() -> Vec<(String, String, String)> {
    let doc = openapi_document();
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap().to_string();
            out.push((method.to_ascii_uppercase(), path.clone(), id));
        }
    }
    out
}

/// What each operation needs besides its path to get past everything but the path check.
fn valid_request_parts(operation_id: &str) -> (Vec<(&'static str, String)>, Vec<u8>) {
    let lease = json!({"attempt": 1, "token": "t"});
    let capability = serde_json::to_value(cpu_claim("w1").capability).unwrap();
    let body = match operation_id {
        "heartbeat" | "complete" => json!({"worker": "w1", "lease": lease}),
        "fail" => json!({"worker": "w1", "lease": lease, "reason": "r"}),
        "report_node" => capability,
        "upload" => {
            let headers = vec![
                ("X-Worker", "w1".to_string()),
                ("X-Lease-Token", "t".to_string()),
                ("X-Lease-Attempt", "1".to_string()),
                ("X-Content-Sha256", sha256_hex(b"bundle")),
            ];
            return (headers, b"bundle".to_vec());
        }
        _ => return (Vec::new(), Vec::new()),
    };
    (Vec::new(), serde_json::to_vec(&body).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn traversal_in_every_id_and_name_is_a_json_4xx_and_touches_no_file() {
    let app = spawn_app(AppOptions::default()).await;
    // A worker named like the values below must not exist for the check to mean anything;
    // one real worker and one claimed job make the store and queue non-empty.
    app.client
        .claim(&cpu_claim("w1"), None)
        .await
        .unwrap()
        .unwrap();
    std::fs::write(app.dir.path().join("sentinel"), b"outside the store").unwrap();
    let before = snapshot(app.dir.path());

    // Too long for an ID (64), a prefix (64) and a worker name (128) alike.
    let long_hex = "a".repeat(129);
    let very_long = "b".repeat(10_000);
    let hostile: Vec<&str> = vec![
        "..",
        ".",
        "%2e%2e",
        "%2E%2E",
        "..%2f..%2f..%2fsentinel",
        "%2e%2e%2f%2e%2e%2fsentinel",
        "..%5c..%5csentinel",
        "%252e%252e%252fsentinel",
        "a%2Fb",
        "%2F",
        "%00",
        "w1%00",
        "ab%00cd",
        "%C3%A9t%C3%A9",
        "%F0%9F%92%A5",
        "%FF%FE",
        "w1%20",
        "-rf",
        ".hidden",
        "~",
        &long_hex,
        &very_long,
    ];
    let mut checked = 0;
    for (method, template, operation_id) in operations() {
        if !template.contains('{') {
            continue;
        }
        let (mut headers, body) = valid_request_parts(&operation_id);
        headers.extend(both_tokens());
        for value in &hostile {
            let path = template.replace("{id}", value).replace("{name}", value);
            let answer = raw(&app, &request(&method, &path, &headers, &body)).await;
            let at = format!("{method} {path:.120}");
            assert!(
                answer.status == 400 || answer.status == 404,
                "{at}: {} {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            );
            let error = answer.api_error().unwrap_or_else(|| {
                panic!(
                    "{at}: not an ApiError: {:?}",
                    String::from_utf8_lossy(&answer.body)
                )
            });
            assert!(
                ["bad_request", "not_found"].contains(&error.error.as_str()),
                "{at}: {error:?}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 14 * hostile.len(), "only {checked} requests");

    // Literal `..` segments and a raw `/` inside a name reach the router unnormalised.
    for path in [
        "/v1/job/../../../sentinel",
        "/v1/worker/../../sentinel/cordon",
        "/v1/model/../../../../sentinel",
        "/v1/worker/a/b",
    ] {
        for method in ["GET", "PUT", "POST"] {
            let answer = raw(&app, &request(method, path, &both_tokens(), b"{}")).await;
            assert!(
                (400..500).contains(&answer.status) && answer.api_error().is_some(),
                "{method} {path}: {answer:?}"
            );
        }
    }
    // Bytes no request line may hold are refused by the HTTP parser itself: a 4xx, and
    // the server carries on.
    for path in [
        &b"/v1/job/ab\x00cd"[..],
        b"/v1/worker/\xc3\xa9",
        b"/v1/worker/a b",
    ] {
        let mut req = b"GET ".to_vec();
        req.extend_from_slice(path);
        req.extend_from_slice(b" HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        let answer = raw(&app, &req).await;
        assert!((400..500).contains(&answer.status), "{path:?}: {answer:?}");
    }
    let huge = format!("/v1/job/{}", "c".repeat(100_000));
    let answer = raw(&app, &request("GET", &huge, &[], b"")).await;
    assert!(
        (400..500).contains(&answer.status),
        "100 kB path: {}",
        answer.status
    );

    assert_eq!(snapshot(app.dir.path()), before, "a file changed");
    assert!(app.partial_files().is_empty());
    assert_eq!(app.anon.health().await.unwrap().status, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversized_bodies_are_413_and_leave_nothing_behind() {
    let app = spawn_app(AppOptions {
        max_upload_bytes: 64 << 10,
        ..AppOptions::default()
    })
    .await;
    let http = reqwest::Client::new();
    let body_cap = 1 << 20; // ServerConfig's default max_body_bytes
    let over = |n: usize| {
        let mut body = b"{\"worker\": \"w1\", \"pad\": \"".to_vec();
        body.resize(n, b'x');
        body
    };
    // JSON and text bodies over the cap, with a length and chunked.
    let cases = [
        ("POST", "/v1/job/claim"),
        ("PUT", "/v1/worker/w1"),
        ("POST", "/v1/manifest/diff"),
        ("POST", &*format!("/v1/job/{}/heartbeat", "ab".repeat(32))),
    ];
    for (method, path) in cases {
        let url = format!("{}{path}", app.url);
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let sized = http
            .request(method.clone(), &url)
            .header("Authorization", format!("Bearer {WORKER_TOKEN}"))
            .header(OPERATOR_TOKEN_HEADER, OPERATOR_TOKEN)
            .body(over(body_cap + 1))
            .send()
            .await
            .unwrap();
        assert_eq!(
            sized.status(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "{method} {path}"
        );
        let error: ApiError = sized.json().await.unwrap();
        assert_eq!(error.error, "payload_too_large");

        let chunks = futures_util::stream::iter(
            (0..20).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; 64 << 10]))),
        );
        let chunked = http
            .request(method.clone(), &url)
            .header("Authorization", format!("Bearer {WORKER_TOKEN}"))
            .header(OPERATOR_TOKEN_HEADER, OPERATOR_TOKEN)
            .body(reqwest::Body::wrap_stream(chunks))
            .send()
            .await
            .unwrap();
        assert_eq!(
            chunked.status(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "chunked {method} {path}"
        );
        // The rest of that body is never read, so the server closes the connection after
        // its answer, and says so: a client that pooled it would send its next request into
        // a closing socket and see no answer at all.
        assert_eq!(
            chunked
                .headers()
                .get(reqwest::header::CONNECTION)
                .map(|v| v.as_bytes()),
            Some(&b"close"[..]),
            "chunked {method} {path}"
        );
    }

    // An announced length far over the cap is refused before the body arrives.
    let started = Instant::now();
    let mut req = format!(
        "POST /v1/job/claim HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
         Authorization: Bearer {WORKER_TOKEN}\r\nContent-Length: {}\r\n\r\n{{",
        10u64 << 30
    )
    .into_bytes();
    req.extend_from_slice(b"\"worker\"");
    let answer = raw(&app, &req).await;
    assert_eq!(answer.status, 413, "{answer:?}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // An upload over max_upload_bytes: 413, no partial file, no artifact.
    let claimed = app
        .client
        .claim(&cpu_claim("w1"), None)
        .await
        .unwrap()
        .unwrap();
    let bundle = vec![7u8; (64 << 10) + 1];
    let err = Client::new(&app.url)
        .unwrap()
        .with_worker_token(Some(WORKER_TOKEN.into()))
        .upload(
            &claimed.job.id,
            &worker("w1"),
            &claimed.lease,
            &sha256_hex(&bundle),
            bundle.into(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::PAYLOAD_TOO_LARGE));
    assert_eq!(err.code(), Some("payload_too_large"));
    assert!(app.partial_files().is_empty());
    assert!(app.anon.artifacts().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_bodies_do_not_hold_up_other_requests() {
    let app = spawn_app(AppOptions {
        manifest: jobs_manifest(1..=30),
        ..AppOptions::default()
    })
    .await;
    let addr = app.url.trim_start_matches("http://").to_string();
    // Twenty clients each announce a body and send a trickle of it, then stall.
    let mut stalled = Vec::new();
    for i in 0..20 {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        let (method, path) = if i % 2 == 0 {
            ("POST", "/v1/job/claim".to_string())
        } else {
            ("PUT", format!("/v1/model/{}", "ab".repeat(32)))
        };
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {WORKER_TOKEN}\r\n\
             X-Worker: w1\r\nX-Lease-Token: t\r\nX-Lease-Attempt: 1\r\n\
             X-Content-Sha256: {}\r\nContent-Length: 100000\r\n\r\n{{\"wor",
            "cd".repeat(32)
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stalled.push(stream);
    }
    // Meanwhile reads, claims and heartbeats are answered promptly.
    for n in 0..20 {
        let started = Instant::now();
        let health = app.anon.health().await.unwrap();
        assert_eq!(health.status, "ok");
        let claimed: ClaimResponse = app
            .client
            .claim(&cpu_claim(&format!("fast-{n}")), None)
            .await
            .unwrap()
            .unwrap();
        app.client
            .heartbeat(
                &claimed.job.id,
                &HeartbeatRequest {
                    worker: worker(&format!("fast-{n}")),
                    lease: claimed.lease.clone(),
                    log_tail: None,
                    log: None,
                    progress: None,
                },
            )
            .await
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "request {n} took {:?} with 20 stalled bodies",
            started.elapsed()
        );
    }
    // A stalled body that resumes is still read and answered.
    let resumed = &mut stalled[0];
    let sent = "{\"wor".len();
    let rest = "ker\": \"w1\"}";
    let rest = format!("{rest}{}", " ".repeat(100_000 - sent - rest.len()));
    resumed.write_all(rest.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), resumed.read_exact(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    drop(stalled);
    assert_eq!(app.anon.health().await.unwrap().status, "ok");
}

/// Who may call an operation, from the document (the same source as the router's layers).
fn access(operation_id: &str) -> &'static str {
    let doc = openapi_document();
    for item in doc["paths"].as_object().unwrap().values() {
        for op in item.as_object().unwrap().values() {
            if op["operationId"] == operation_id {
                return match op["tags"][0].as_str().unwrap() {
                    "open" => "open",
                    "read" => "read",
                    "worker" => "worker",
                    _ => "operator",
                };
            }
        }
    }
    panic!("no operation {operation_id}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_wrong_and_swapped_tokens_are_401_and_403_on_every_route() {
    let app = spawn_app(AppOptions {
        protect_reads: true,
        ..AppOptions::default()
    })
    .await;
    let bearer = |t: &str| ("Authorization", format!("Bearer {t}"));
    let operator = |t: &str| (OPERATOR_TOKEN_HEADER, t.to_string());
    let mut checked = 0;
    for (method, template, operation_id) in operations() {
        let path = template
            .replace("{id}", &"ab".repeat(32))
            .replace("{name}", "w1");
        let (extra, body) = valid_request_parts(&operation_id);
        // (credentials, expected status) for who may call the route.
        let cases: Vec<(Vec<(&str, String)>, u16)> = match access(&operation_id) {
            // Open routes take no credential: a wrong one is not looked at.
            "open" => {
                for credentials in [vec![], vec![bearer("wrong")], vec![operator("wrong")]] {
                    let mut headers = extra.clone();
                    headers.extend(credentials);
                    let answer = raw(&app, &request(&method, &path, &headers, &body)).await;
                    assert_eq!(answer.status, 200, "{method} {path}: {answer:?}");
                    checked += 1;
                }
                continue;
            }
            "worker" => vec![
                (vec![], 401),
                (vec![bearer("wrong")], 403),
                (vec![bearer(OPERATOR_TOKEN)], 403),
                (vec![operator(OPERATOR_TOKEN)], 401),
                (vec![operator(WORKER_TOKEN)], 401),
                (
                    vec![("Authorization", format!("Basic {WORKER_TOKEN}"))],
                    401,
                ),
                (vec![("Authorization", "Bearer".to_string())], 401),
            ],
            "operator" => vec![
                (vec![], 401),
                (vec![operator("wrong")], 403),
                (vec![operator(WORKER_TOKEN)], 403),
                (vec![bearer(OPERATOR_TOKEN)], 401),
                (vec![bearer(WORKER_TOKEN)], 401),
                (vec![operator("")], 403),
            ],
            _ => vec![
                (vec![], 401),
                (vec![bearer("wrong")], 403),
                (vec![operator("wrong")], 403),
                // Swapped: each token under the other's header.
                (vec![bearer(OPERATOR_TOKEN)], 403),
                (vec![operator(WORKER_TOKEN)], 403),
            ],
        };
        for (credentials, expected) in cases {
            let mut headers = extra.clone();
            headers.extend(credentials.iter().cloned());
            let answer = raw(&app, &request(&method, &path, &headers, &body)).await;
            let shown: Vec<&str> = credentials.iter().map(|(k, _)| *k).collect();
            assert_eq!(
                answer.status, expected,
                "{method} {path} with {shown:?}: {answer:?}"
            );
            let error = answer.api_error().unwrap();
            let code = if expected == 401 {
                "unauthorized"
            } else {
                "forbidden"
            };
            assert_eq!(error.error, code, "{method} {path}");
            assert!(
                !error.message.contains(WORKER_TOKEN) && !error.message.contains(OPERATOR_TOKEN)
            );
            checked += 1;
        }
    }
    assert!(checked > 100, "{checked}");
    // Nothing a refused request named was created.
    assert!(app.queue.workers().unwrap().is_empty());
    assert_eq!(app.queue.counts().unwrap().get("pending"), Some(&3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_using_another_workers_lease_changes_nothing() {
    let app = spawn_app(AppOptions::default()).await;
    let c = &app.client;
    let claimed = c.claim(&cpu_claim("w1"), None).await.unwrap().unwrap();
    let id = claimed.job.id.clone();
    let before = c.job(&id.as_str().parse().unwrap()).await.unwrap();
    let lease = claimed.lease.clone();
    let intruder = worker("w2");
    c.report_node(&intruder, &cpu_claim("w2").capability)
        .await
        .unwrap();

    let refused = |status: Option<StatusCode>| {
        matches!(
            status,
            Some(StatusCode::CONFLICT) | Some(StatusCode::FORBIDDEN)
        )
    };
    let hb = HeartbeatRequest {
        worker: intruder.clone(),
        lease: lease.clone(),
        log_tail: Some("x".into()),
        log: None,
        progress: None,
    };
    assert!(refused(c.heartbeat(&id, &hb).await.unwrap_err().status()));
    let complete = CompleteRequest {
        worker: intruder.clone(),
        lease: lease.clone(),
        artifact_id: None,
        upload: None,
        report: Default::default(),
    };
    assert!(refused(
        c.complete(&id, &complete).await.unwrap_err().status()
    ));
    let fail = FailRequest {
        worker: intruder.clone(),
        lease: lease.clone(),
        reason: "stolen".into(),
        exit_code: Some(1),
        log_tail: None,
        retryable: false,
        cause: Default::default(),
        report: Default::default(),
    };
    assert!(refused(c.fail(&id, &fail).await.unwrap_err().status()));
    let bundle = b"not yours".to_vec();
    let err = c
        .upload(&id, &intruder, &lease, &sha256_hex(&bundle), bundle.into())
        .await
        .unwrap_err();
    assert!(refused(err.status()), "{err}");
    // A lease's token with another attempt number is not the lease either.
    let forged = Lease {
        attempt: lease.attempt + 1,
        token: lease.token.clone(),
    };
    let hb = HeartbeatRequest {
        worker: worker("w1"),
        lease: forged,
        log_tail: None,
        log: None,
        progress: None,
    };
    assert!(refused(c.heartbeat(&id, &hb).await.unwrap_err().status()));

    let after = c.job(&id.as_str().parse().unwrap()).await.unwrap();
    assert_eq!(after.status, JobStatus::Claimed);
    assert_eq!(
        (after.worker.as_ref(), after.attempts),
        (before.worker.as_ref(), before.attempts)
    );
    assert!(after.log_tail.is_none() && after.error.is_none());
    assert!(app.partial_files().is_empty() && app.anon.artifacts().await.unwrap().is_empty());
    // The real holder carries on.
    let hb = HeartbeatRequest {
        worker: worker("w1"),
        lease,
        log_tail: None,
        log: None,
        progress: None,
    };
    assert!(!c.heartbeat(&id, &hb).await.unwrap().cancel);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_json_fields_are_400_naming_the_field_and_change_nothing() {
    let app = spawn_app(AppOptions::default()).await;
    let claimed = app
        .client
        .claim(&cpu_claim("w1"), None)
        .await
        .unwrap()
        .unwrap();
    let id = claimed.job.id.as_str().to_string();
    let lease = serde_json::to_value(&claimed.lease).unwrap();
    let capability = serde_json::to_value(cpu_claim("w2").capability).unwrap();
    let with = |mut v: Value, pointer: &str, key: &str| {
        v.pointer_mut(pointer).unwrap()[key] = json!("surprise");
        v
    };
    let claim = json!({"worker": "w2", "capability": capability});
    let heartbeat = json!({"worker": "w1", "lease": lease});
    let fail = json!({"worker": "w1", "lease": lease, "reason": "r"});
    let cases = [
        (
            "POST",
            "/v1/job/claim".to_string(),
            with(claim.clone(), "", "priority"),
            "priority",
        ),
        (
            "POST",
            "/v1/job/claim".to_string(),
            with(claim, "/capability", "tpu"),
            "capability.tpu",
        ),
        (
            "POST",
            format!("/v1/job/{id}/heartbeat"),
            // (`progress` is a field now: the trainer's latest progress point.)
            with(heartbeat.clone(), "", "eta"),
            "eta",
        ),
        (
            "POST",
            format!("/v1/job/{id}/heartbeat"),
            with(heartbeat.clone(), "/lease", "expires"),
            "lease.expires",
        ),
        (
            "POST",
            format!("/v1/job/{id}/complete"),
            with(heartbeat, "", "artifact"),
            "artifact",
        ),
        (
            "POST",
            format!("/v1/job/{id}/fail"),
            with(fail, "", "retry"),
            "retry",
        ),
        (
            "PUT",
            "/v1/worker/w2".to_string(),
            with(capability.clone(), "", "gpu_count"),
            "gpu_count",
        ),
    ];
    let http = reqwest::Client::new();
    for (method, path, body, field) in cases {
        let resp = http
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{}{path}", app.url),
            )
            .header("Authorization", format!("Bearer {WORKER_TOKEN}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::BAD_REQUEST,
            "{method} {path} +{field}"
        );
        let error: ApiError = resp.json().await.unwrap();
        assert_eq!(error.error, "bad_request");
        assert!(
            error.message.contains(&format!("`{field}`")),
            "{method} {path}: {}",
            error.message
        );
    }
    // None of them claimed, heartbeat, completed, failed or registered anything.
    let job = app.client.job(&id.parse().unwrap()).await.unwrap();
    assert_eq!(job.status, JobStatus::Claimed);
    assert_eq!(app.count(JobStatus::Pending).await, 2);
    assert_eq!(app.queue.workers().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_json_is_a_400_on_every_json_route() {
    let app = spawn_app(AppOptions::default()).await;
    let id = "ab".repeat(32);
    let routes = [
        ("POST", "/v1/job/claim".to_string()),
        ("POST", format!("/v1/job/{id}/heartbeat")),
        ("POST", format!("/v1/job/{id}/complete")),
        ("POST", format!("/v1/job/{id}/fail")),
        ("PUT", "/v1/worker/w1".to_string()),
    ];
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"{".to_vec(),
        b"null".to_vec(),
        b"[]".to_vec(),
        b"\"worker\"".to_vec(),
        b"{\"worker\": 12}".to_vec(),
        b"{\"worker\": \"w1\", \"worker\": \"w2\"}".to_vec(),
        b"{\"worker\": \"../../etc\", \"capability\": {}}".to_vec(),
        b"\xff\xfe{}".to_vec(),
        b"{} trailing".to_vec(),
        b"{\"worker\": \"w1\"\x00}".to_vec(),
        deep.into_bytes(),
        format!(
            "{{\"worker\": \"w1\", \"capability\": {{\"cores\": {}}}}}",
            "9".repeat(400)
        )
        .into_bytes(),
    ];
    let http = reqwest::Client::new();
    for (method, path) in &routes {
        for body in &bodies {
            let resp = http
                .request(
                    reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                    format!("{}{path}", app.url),
                )
                .header("Authorization", format!("Bearer {WORKER_TOKEN}"))
                .header("Content-Type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            let shown = String::from_utf8_lossy(&body[..body.len().min(40)]).to_string();
            assert_eq!(
                resp.status(),
                StatusCode::BAD_REQUEST,
                "{method} {path} {shown:?}"
            );
            let error: ApiError = resp.json().await.unwrap();
            assert_eq!(error.error, "bad_request", "{method} {path} {shown:?}");
        }
    }
    assert_eq!(app.count(JobStatus::Pending).await, 3);
    assert!(app.queue.workers().unwrap().is_empty());
}
