//! Bounded work per request (issue 12), over a real socket: slow headers, slow bodies and
//! idle connections are cut off at their configured timeouts; a refused upload is answered
//! after at most 64 KiB of its body; the connection cap; the upload cap (503 busy); the
//! long-poll budgets (429), which never slow a worker's calls. Timeouts here are 1 s so the
//! tests are quick; what they check is that the cut happens, not how long it takes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod http_common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cis490_api::{HeartbeatRequest, Lease};
use cis490_reconciler::server::{ConnectionOptions, RequestCaps};
use http_common::*;
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Well past any of this file's configured timeouts: a connection still open then was not cut.
const NOT_CUT: Duration = Duration::from_secs(10);

fn connections(
    header: Duration,
    body: Duration,
    idle: Duration,
    max_connections: usize,
) -> ConnectionOptions {
    ConnectionOptions {
        header_read_timeout: header,
        body_read_timeout: body,
        idle_timeout: idle,
        max_connections,
        ..ConnectionOptions::default()
    }
}

const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);

async fn raw(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.url.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// Reads until the server closes the connection (or resets it); what it sent, and when it
/// closed. Panics when it is still open after [`NOT_CUT`].
async fn until_closed(stream: &mut TcpStream) -> (String, Instant) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(NOT_CUT, read_all)
        .await
        .expect("the server did not close the connection");
    (String::from_utf8_lossy(&got).into_owned(), Instant::now())
}

/// Reads one answer (head and a Content-Length body) from `stream`.
async fn read_answer(stream: &mut TcpStream) -> (u16, String, String) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if got.len() >= end + 4 + length {
                    let body = String::from_utf8_lossy(&got[end + 4..end + 4 + length]);
                    let status = head[9..12].parse().unwrap();
                    return (status, head, body.into_owned());
                }
            }
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed mid-answer: {got:?}");
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(NOT_CUT, read)
        .await
        .expect("no answer")
}

/// One value of `/metrics`.
async fn metric(app: &TestApp, name: &str) -> u64 {
    let text = reqwest::get(format!("{}/metrics", app.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no metric {name} in {text}"))
        .parse()
        .unwrap()
}

async fn wait_metric(app: &TestApp, name: &str, value: u64) {
    wait_for(NOT_CUT, &format!("{name} = {value}"), || async {
        (metric(app, name).await == value).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_headers_are_cut_off_at_the_header_timeout() {
    let app = spawn_app(AppOptions {
        connections: connections(SECOND, MINUTE, MINUTE, 64),
        ..AppOptions::default()
    })
    .await;
    // Half a head, then nothing.
    let mut stalled = raw(&app).await;
    let started = Instant::now();
    stalled
        .write_all(b"GET /v1/health HTTP/1.1\r\nhost: t\r\n")
        .await
        .unwrap();
    let (_, closed) = until_closed(&mut stalled).await;
    assert!(closed - started >= Duration::from_millis(900));

    // A head trickled a header at a time: the timeout bounds the whole head, not the gaps.
    let mut trickle = raw(&app).await;
    trickle
        .write_all(b"GET /v1/health HTTP/1.1\r\n")
        .await
        .unwrap();
    let (mut reader, mut writer) = trickle.into_split();
    let writing = tokio::spawn(async move {
        for i in 0..100 {
            if writer
                .write_all(format!("x-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut buf = [0u8; 1024];
    let cut = tokio::time::timeout(NOT_CUT, async {
        while let Ok(n) = reader.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    assert!(cut.is_ok(), "a trickled head was never cut off");
    writing.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_body_that_stops_sending_is_cut_off_at_the_body_timeout() {
    let app = spawn_app(AppOptions {
        connections: connections(MINUTE, SECOND, MINUTE, 64),
        ..AppOptions::default()
    })
    .await;
    let mut stream = raw(&app).await;
    let started = Instant::now();
    stream
        .write_all(
            format!(
                "PUT /v1/worker/w1 HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {WORKER_TOKEN}\r\n\
                 content-length: 200\r\n\r\n{{\"hostname\":"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let (status, head, body) = read_answer(&mut stream).await;
    assert_eq!(status, 400, "{head}\n{body}");
    assert!(body.contains("body_read_timeout_s"), "{body}");
    let (_, closed) = until_closed(&mut stream).await;
    assert!(closed - started >= Duration::from_millis(900));

    // A body trickled a byte at a time never brings 1 KiB in a timeout: cut off too.
    let stream = raw(&app).await;
    let (mut reader, mut writer) = stream.into_split();
    writer
        .write_all(
            format!(
                "PUT /v1/worker/w1 HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {WORKER_TOKEN}\r\n\
                 content-length: 100000\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let trickle = tokio::spawn(async move {
        while writer.write_all(b" ").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(NOT_CUT, async {
        while let Ok(n) = reader.read(&mut buf).await {
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("a trickled body was never cut off");
    trickle.abort();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("less than 1024 bytes"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_connections_are_closed_at_the_idle_timeout() {
    let app = spawn_app(AppOptions {
        connections: connections(MINUTE, MINUTE, SECOND, 64),
        ..AppOptions::default()
    })
    .await;
    // Connected, never a byte.
    let mut silent = raw(&app).await;
    let started = Instant::now();
    let (sent, closed) = until_closed(&mut silent).await;
    assert!(sent.is_empty(), "{sent}");
    assert!(closed - started >= Duration::from_millis(900));

    // Kept alive after an answer, then idle.
    let mut kept = raw(&app).await;
    kept.write_all(b"GET /v1/health HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let (status, _, _) = read_answer(&mut kept).await;
    assert_eq!(status, 200);
    let answered = Instant::now();
    let (_, closed) = until_closed(&mut kept).await;
    assert!(closed - answered >= Duration::from_millis(900));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn timeouts_never_cut_a_long_poll() {
    let app = spawn_app(AppOptions {
        connections: connections(SECOND, SECOND, SECOND, 64),
        ..AppOptions::default()
    })
    .await;
    let head = app.anon.events(0, Duration::ZERO).await.unwrap().next;
    let started = Instant::now();
    let page = app.anon.events(head, Duration::from_secs(3)).await.unwrap();
    assert!(page.events.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(2900));
}

/// An unauthenticated PUT announcing 20 GiB that streams zeros as fast as it can: 401 with
/// `Connection: close`, after the server read at most 64 KiB of the body (its byte count
/// in `/metrics`, read on a connection of its own before and after).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unauthenticated_big_upload_is_refused_after_at_most_64_kib() {
    let app = spawn_app(AppOptions::default()).await;
    const METRICS: &[u8] = b"GET /metrics HTTP/1.1\r\nhost: t\r\n\r\n";
    let mut metrics = raw(&app).await;
    let bytes_read = |text: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix("cis490_http_bytes_read_total "))
            .unwrap()
            .parse()
            .unwrap()
    };
    metrics.write_all(METRICS).await.unwrap();
    let before = bytes_read(&read_answer(&mut metrics).await.2);

    let head = format!(
        "PUT /v1/model/{} HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\n\r\n",
        "ab".repeat(32),
        20u64 << 30
    );
    let put = raw(&app).await;
    let (mut reader, mut writer) = put.into_split();
    let sent = Arc::new(AtomicU64::new(0));
    let writing = {
        let sent = Arc::clone(&sent);
        let head = head.clone();
        tokio::spawn(async move {
            writer.write_all(head.as_bytes()).await.unwrap();
            let zeros = vec![0u8; 64 * 1024];
            while writer.write_all(&zeros).await.is_ok() {
                sent.fetch_add(zeros.len() as u64, Ordering::Relaxed);
            }
        })
    };
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(NOT_CUT, async {
        while let Ok(n) = reader.read(&mut buf).await {
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the refused upload's connection stayed open");
    writing.abort();
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 401"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(answer.contains("\"unauthorized\""), "{answer}");

    metrics.write_all(METRICS).await.unwrap();
    let after = bytes_read(&read_answer(&mut metrics).await.2);
    let body_read = after - before - METRICS.len() as u64 - head.len() as u64;
    eprintln!(
        "refused body: server read {body_read} bytes, client sent {}",
        sent.load(Ordering::Relaxed)
    );
    assert!(
        body_read <= 64 * 1024,
        "the server read {body_read} bytes of the refused body (the client sent {})",
        sent.load(Ordering::Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_small_refused_body_is_read_and_the_connection_stays_usable() {
    let app = spawn_app(AppOptions::default()).await;
    let mut stream = raw(&app).await;
    let body = "x".repeat(10_000);
    stream
        .write_all(
            format!(
                "PUT /v1/worker/w1 HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let (status, head, _) = read_answer(&mut stream).await;
    assert_eq!(status, 401);
    assert!(!head.contains("connection: close"), "{head}");
    stream
        .write_all(b"GET /v1/health HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_answer(&mut stream).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_over_the_cap_are_closed_at_once() {
    let app = spawn_app(AppOptions {
        connections: connections(MINUTE, MINUTE, MINUTE, 3),
        ..AppOptions::default()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = raw(&app).await;
        // Answered, so the server has taken it (and it counts) before the next one.
        s.write_all(b"GET /v1/health HTTP/1.1\r\nhost: t\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_answer(&mut s).await.0, 200);
        held.push(s);
    }
    let mut over = raw(&app).await;
    let _ = over
        .write_all(b"GET /v1/health HTTP/1.1\r\nhost: t\r\n\r\n")
        .await;
    let (sent, _) = until_closed(&mut over).await;
    assert!(sent.is_empty(), "{sent}");
    // One closes: there is room again.
    drop(held.pop());
    let mut fresh = wait_for(NOT_CUT, "a connection under the cap", || async {
        let mut s = raw(&app).await;
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: t\r\n\r\n")
            .await
            .ok()?;
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).await.ok()?;
        (&buf == b"HTTP/1.1 200").then_some(s)
    })
    .await;
    let (_, _, text) = read_rest_of_answer(&mut fresh).await;
    let refused: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("cis490_http_connections_refused_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(refused >= 1, "{text}");
}

/// [`read_answer`] for an answer whose first 12 bytes (`HTTP/1.1 200`) were read already.
async fn read_rest_of_answer(stream: &mut TcpStream) -> (u16, String, String) {
    let mut got = b"HTTP/1.1 200".to_vec();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if got.len() >= end + 4 + length {
                let body = String::from_utf8_lossy(&got[end + 4..end + 4 + length]);
                return (200, head, body.into_owned());
            }
        }
        let n = tokio::time::timeout(NOT_CUT, stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed mid-answer");
        got.extend_from_slice(&buf[..n]);
    }
}

/// An upload body the test sends when it likes.
fn held_body() -> (tokio::sync::mpsc::Sender<Vec<u8>>, reqwest::Body) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, std::io::Error>(chunk), rx))
    });
    (tx, reqwest::Body::wrap_stream(stream))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploads_over_the_cap_are_503_busy_with_retry_after() {
    let app = spawn_app(AppOptions {
        caps: RequestCaps {
            uploads: 1,
            ..RequestCaps::default()
        },
        ..AppOptions::default()
    })
    .await;
    let c = &app.client;
    let first = c.claim(&cpu_claim("w1"), None).await.unwrap().unwrap();
    let second = c.claim(&cpu_claim("w1"), None).await.unwrap().unwrap();
    let bytes = vec![7u8; 4096];
    let sha = sha256_hex(&bytes);

    let (tx, body) = held_body();
    let streaming = {
        let (c, id, lease, sha) = (
            c.clone(),
            first.job.id.clone(),
            first.lease.clone(),
            sha.clone(),
        );
        tokio::spawn(async move { c.upload(&id, &worker("w1"), &lease, &sha, body).await })
    };
    tx.send(bytes[..1024].to_vec()).await.unwrap();
    wait_metric(&app, "cis490_uploads_in_flight", 1).await;

    let err = c
        .upload(
            &second.job.id,
            &worker("w1"),
            &second.lease,
            &sha,
            bytes.clone().into(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE), "{err}");
    assert_eq!(err.code(), Some("busy"));
    let after = err.retry_after().unwrap();
    assert!((5..=10).contains(&after.as_secs()), "{after:?}");
    assert!(err.is_transient());
    assert!(err.to_string().contains("max_concurrent_uploads"), "{err}");
    // Credentials come first: without them it is 401, busy or not.
    let err = app
        .anon
        .upload(
            &second.job.id,
            &worker("w1"),
            &second.lease,
            &sha,
            bytes.clone().into(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED));

    tx.send(bytes[1024..].to_vec()).await.unwrap();
    drop(tx);
    streaming.await.unwrap().unwrap();
    c.upload(
        &second.job.id,
        &worker("w1"),
        &second.lease,
        &sha,
        bytes.clone().into(),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn long_polls_have_budgets_of_their_own_and_never_slow_a_worker() {
    let app = spawn_app(AppOptions {
        manifest: jobs_manifest([1]),
        caps: RequestCaps {
            event_waits: 2,
            claim_waits: 1,
            ..RequestCaps::default()
        },
        ..AppOptions::default()
    })
    .await;
    let claimed = app
        .client
        .claim(&cpu_claim("w1"), None)
        .await
        .unwrap()
        .unwrap();
    let head = app.anon.events(0, Duration::ZERO).await.unwrap().next;
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let anon = app.anon.clone();
            tokio::spawn(async move { anon.events(head, Duration::from_secs(30)).await })
        })
        .collect();
    wait_metric(&app, "cis490_event_waits", 2).await;

    // The third waiting poll is answered at once: 429 with Retry-After.
    let started = Instant::now();
    let err = app
        .anon
        .events(head, Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(err.status(), Some(StatusCode::TOO_MANY_REQUESTS), "{err}");
    assert_eq!(err.code(), Some("too_many_long_polls"));
    let after = err.retry_after().unwrap();
    assert!((5..=10).contains(&after.as_secs()), "{after:?}");
    assert!(err.to_string().contains("max_event_waits"), "{err}");
    // A poll that need not wait needs no place.
    let page = app.anon.events(0, Duration::from_secs(30)).await.unwrap();
    assert!(!page.events.is_empty());

    // Worker calls take none and are answered at once.
    let started = Instant::now();
    let beat = HeartbeatRequest {
        worker: worker("w1"),
        lease: Lease {
            attempt: claimed.lease.attempt,
            token: claimed.lease.token.clone(),
        },
        log_tail: None,
        log: None,
        progress: None,
    };
    app.client.heartbeat(&claimed.job.id, &beat).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));

    // Claim long-polls have their own budget: the event polls did not take it.
    let claiming = {
        let c = app.client.clone();
        tokio::spawn(async move {
            c.claim(&cpu_claim("w2"), Some(Duration::from_secs(30)))
                .await
        })
    };
    wait_metric(&app, "cis490_claim_waits", 1).await;
    let err = app
        .client
        .claim(&cpu_claim("w3"), Some(Duration::from_secs(30)))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::TOO_MANY_REQUESTS), "{err}");
    assert!(err.to_string().contains("max_claim_waits"), "{err}");
    // A claim that does not wait needs no place either.
    assert!(app
        .client
        .claim(&cpu_claim("w3"), None)
        .await
        .unwrap()
        .is_none());

    claiming.abort();
    for w in waiting {
        w.abort();
    }
}
