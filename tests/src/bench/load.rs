//! Figures 12a-12c (issue 12): the server under hostile and careless clients, over loopback
//! against the real `cis490-reconciler serve`.
//! - 12a: seven slow-client patterns (silent, half a head, a trickled head, a stalled and a
//!   trickled JSON body, a stalled upload, an idle kept-alive connection) are each closed
//!   within their configured timeout (+1 s). Full: the default 30 s timeouts; quick: 1 s.
//! - 12b: an unauthenticated `PUT /v1/model/{id}` announcing 20 GiB and streaming zeros is
//!   answered 401 after the server read at most 64 KiB of its body (the server's own count
//!   of bytes read, `cis490_http_bytes_read_total`, before and after).
//! - 12c: a worker's claim+complete median with 1,000 unauthenticated long-polls of
//!   `/v1/events` open (following the event log like `cis490ctl get -w`, honouring
//!   `Retry-After`) is within 2x of its median with none.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cis490_api::{ClaimRequest, Client, CompleteRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::server::{BenchServer, WORKER_TOKEN};
use super::workload::{capability, plain_manifest_text, worker};
use super::{fmt_value, ms, percentile, Ctx, Row};

/// The server's refusal bound (`limits::REFUSED_BODY_READ_BYTES`).
const REFUSED_BODY_BOUND: u64 = 64 * 1024;

fn host_of(server: &BenchServer) -> String {
    server
        .reconciler
        .url
        .trim_start_matches("http://")
        .to_string()
}

async fn connect(server: &BenchServer) -> anyhow::Result<TcpStream> {
    TcpStream::connect(host_of(server))
        .await
        .context("connecting to the server")
}

/// Reads until the server closes `stream` (EOF or reset); when it did. Gives up after
/// `limit`.
async fn closed_at(stream: &mut TcpStream, limit: Duration) -> anyhow::Result<Instant> {
    let mut buf = [0u8; 4096];
    let drain = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, drain)
        .await
        .with_context(|| format!("still open after {} s", limit.as_secs()))
}

/// Reads one answer with a Content-Length body; its status and body.
async fn read_answer(stream: &mut TcpStream) -> anyhow::Result<(u16, String)> {
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let read = async {
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if got.len() >= end + 4 + length {
                    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
                    let body = String::from_utf8_lossy(&got[end + 4..end + 4 + length]);
                    return Ok((status, body.into_owned()));
                }
            }
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                bail!("the connection closed mid-answer");
            }
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .context("no answer within 30 s")?
}

// ---- 12a ----

/// One slow-client pattern: opens its connection, misbehaves, and answers when the server
/// closed it and from which moment the timeout counts.
struct Pattern {
    name: &'static str,
    /// The key whose timeout cuts it.
    key: &'static str,
}

const PATTERNS: [Pattern; 7] = [
    Pattern {
        name: "connects, sends nothing",
        key: "idle_timeout_s",
    },
    Pattern {
        name: "half a request head, then nothing",
        key: "header_read_timeout_s",
    },
    Pattern {
        name: "a head trickled a header at a time",
        key: "header_read_timeout_s",
    },
    Pattern {
        name: "a JSON body that stops",
        key: "body_read_timeout_s",
    },
    Pattern {
        name: "a JSON body trickled a byte at a time",
        key: "body_read_timeout_s",
    },
    Pattern {
        name: "an upload that stops after 64 KiB",
        key: "body_read_timeout_s",
    },
    Pattern {
        name: "idle kept-alive after an answer",
        key: "idle_timeout_s",
    },
];

/// Runs pattern `index`; how long after its clock started the server closed it.
async fn slow_client(
    server: &BenchServer,
    client: &Client,
    index: usize,
    tick: Duration,
    limit: Duration,
) -> anyhow::Result<Duration> {
    let mut stream = connect(server).await?;
    let json_head = |length: usize| {
        format!(
            "PUT /v1/worker/{} HTTP/1.1\r\nhost: b\r\nauthorization: Bearer {WORKER_TOKEN}\r\n\
             content-length: {length}\r\n\r\n",
            super::workload::agent_name(index)
        )
    };
    let started = match index {
        0 => Instant::now(),
        1 => {
            let at = Instant::now();
            stream
                .write_all(b"GET /v1/health HTTP/1.1\r\nhost: b\r\n")
                .await?;
            at
        }
        2 => {
            let at = Instant::now();
            stream.write_all(b"GET /v1/health HTTP/1.1\r\n").await?;
            let (mut reader, mut writer) = stream.into_split();
            let trickle = tokio::spawn(async move {
                for i in 0.. {
                    tokio::time::sleep(tick).await;
                    if writer
                        .write_all(format!("x-{i}: y\r\n").as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
            let mut buf = [0u8; 1024];
            let closed = tokio::time::timeout(limit, async {
                loop {
                    match reader.read(&mut buf).await {
                        Ok(0) | Err(_) => return Instant::now(),
                        Ok(_) => {}
                    }
                }
            })
            .await;
            trickle.abort();
            let closed = closed.context("still open")?;
            return Ok(closed - at);
        }
        3 => {
            stream.write_all(json_head(1000).as_bytes()).await?;
            stream.write_all(b"{\"hostname\":").await?;
            Instant::now()
        }
        4 => {
            stream.write_all(json_head(1000).as_bytes()).await?;
            let at = Instant::now();
            let (mut reader, mut writer) = stream.into_split();
            let trickle = tokio::spawn(async move {
                loop {
                    if writer.write_all(b" ").await.is_err() {
                        return;
                    }
                    tokio::time::sleep(tick).await;
                }
            });
            let mut buf = [0u8; 4096];
            let closed = tokio::time::timeout(limit, async {
                loop {
                    match reader.read(&mut buf).await {
                        Ok(0) | Err(_) => return Instant::now(),
                        Ok(_) => {}
                    }
                }
            })
            .await;
            trickle.abort();
            let closed = closed.context("still open")?;
            return Ok(closed - at);
        }
        5 => {
            let req = ClaimRequest {
                worker: worker(0)?,
                capability: capability(0),
            };
            let claimed = client
                .claim(&req, None)
                .await?
                .context("no job to upload for")?;
            let head = format!(
                "PUT /v1/model/{} HTTP/1.1\r\nhost: b\r\nauthorization: Bearer {WORKER_TOKEN}\r\n\
                 x-worker: {}\r\nx-lease-token: {}\r\nx-lease-attempt: {}\r\n\
                 x-content-sha256: {}\r\ncontent-length: {}\r\n\r\n",
                claimed.job.id,
                req.worker,
                claimed.lease.token,
                claimed.lease.attempt,
                "ab".repeat(32),
                10u64 << 20
            );
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(&vec![0u8; 64 * 1024]).await?;
            Instant::now()
        }
        _ => {
            stream
                .write_all(b"GET /v1/health HTTP/1.1\r\nhost: b\r\n\r\n")
                .await?;
            let (status, _) = read_answer(&mut stream).await?;
            if status != 200 {
                bail!("health answered {status}");
            }
            Instant::now()
        }
    };
    let closed = closed_at(&mut stream, limit).await?;
    Ok(closed - started)
}

pub async fn run_slow_clients(ctx: &Ctx, server_missing: Option<&str>) -> Vec<Row> {
    let timeout_s: u64 = if ctx.quick { 1 } else { 30 };
    let target = format!("<= {} s (timeout {timeout_s} s)", timeout_s + 1);
    let names: Vec<String> = PATTERNS
        .iter()
        .map(|p| format!("12a. slow client cut off: {}", p.name))
        .collect();
    if let Some(why) = server_missing {
        return names
            .iter()
            .map(|n| Row::not_measured(n, &target, why))
            .collect();
    }
    let result = async {
        let dir = ctx.dir("slow-clients")?;
        // Full: the defaults a Pi runs with; quick: 1 s each.
        let config = ctx
            .quick
            .then_some("header_read_timeout_s = 1\nbody_read_timeout_s = 1\nidle_timeout_s = 1\n");
        let server =
            BenchServer::start_with_config(&dir, &plain_manifest_text(4, &["true"]), config)?;
        let client = server.client()?;
        super::claim_throughput::wait_pending(&client, 4).await?;
        let tick = if ctx.quick {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(1)
        };
        let limit = Duration::from_secs(timeout_s * 2 + 10);
        let runs: Vec<_> = (0..PATTERNS.len())
            .map(|i| {
                let (server, client) = (&server, &client);
                async move { slow_client(server, client, i, tick, limit).await }
            })
            .collect();
        let results = futures_util::future::join_all(runs).await;
        let mut rows = Vec::new();
        for ((name, pattern), result) in names.iter().zip(&PATTERNS).zip(results) {
            rows.push(match result {
                Ok(after) => {
                    let seconds = after.as_secs_f64();
                    let mut row = Row::measured(
                        ctx,
                        name,
                        &target,
                        seconds,
                        "s",
                        seconds <= (timeout_s + 1) as f64,
                    );
                    row.measured = format!("{} s ({})", fmt_value(seconds), pattern.key);
                    row
                }
                Err(e) => Row::error(name, &target, &e),
            });
        }
        Ok::<_, anyhow::Error>(rows)
    }
    .await;
    result.unwrap_or_else(|e| vec![Row::error(&names[0], &target, &e)])
}

// ---- 12b ----

const METRICS_REQUEST: &[u8] = b"GET /metrics HTTP/1.1\r\nhost: b\r\n\r\n";

async fn bytes_read(metrics: &mut TcpStream) -> anyhow::Result<u64> {
    metrics.write_all(METRICS_REQUEST).await?;
    let (status, body) = read_answer(metrics).await?;
    if status != 200 {
        bail!("/metrics answered {status}");
    }
    body.lines()
        .find_map(|l| l.strip_prefix("cis490_http_bytes_read_total "))
        .and_then(|v| v.trim().parse().ok())
        .context("/metrics has no cis490_http_bytes_read_total")
}

/// One refused PUT: (body bytes the server read, bytes the client got out, time to the
/// answer).
async fn refused_put(server: &BenchServer) -> anyhow::Result<(u64, u64, Duration)> {
    let mut metrics = connect(server).await?;
    let before = bytes_read(&mut metrics).await?;
    let head = format!(
        "PUT /v1/model/{} HTTP/1.1\r\nhost: b\r\ncontent-type: application/zstd\r\n\
         content-length: {}\r\n\r\n",
        "ab".repeat(32),
        20u64 << 30
    );
    let (mut reader, mut writer) = connect(server).await?.into_split();
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let writing = {
        let (sent, head) = (Arc::clone(&sent), head.clone());
        tokio::spawn(async move {
            if writer.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let zeros = vec![0u8; 256 * 1024];
            while writer.write_all(&zeros).await.is_ok() {
                sent.fetch_add(zeros.len() as u64, Ordering::Relaxed);
            }
        })
    };
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let mut answered = None;
    let read = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    answered.get_or_insert_with(Instant::now);
                    answer.extend_from_slice(&buf[..n]);
                }
            }
        }
    })
    .await;
    writing.abort();
    read.context("the refused upload's connection was still open after 60 s")?;
    let text = String::from_utf8_lossy(&answer);
    if !text.starts_with("HTTP/1.1 401") {
        bail!("expected 401, got {:?}", text.lines().next().unwrap_or(""));
    }
    let after = bytes_read(&mut metrics).await?;
    let body = after
        .saturating_sub(before)
        .saturating_sub(METRICS_REQUEST.len() as u64)
        .saturating_sub(head.len() as u64);
    let answered = answered.unwrap_or_else(Instant::now) - started;
    Ok((body, sent.load(Ordering::Relaxed), answered))
}

pub async fn run_refused_put(ctx: &Ctx, server_missing: Option<&str>) -> Vec<Row> {
    let name = "12b. unauthenticated PUT announcing 20 GiB: body read before its 401";
    let target = "<= 65536 B";
    if let Some(why) = server_missing {
        return vec![Row::not_measured(name, target, why)];
    }
    let result = async {
        let dir = ctx.dir("refused-put")?;
        let server = BenchServer::start(&dir, &plain_manifest_text(1, &["true"]))?;
        let mut worst = (0u64, 0u64, Duration::ZERO);
        for _ in 0..ctx.size(5, 2) {
            let run = refused_put(&server).await?;
            if run.0 >= worst.0 {
                worst = run;
            }
        }
        let (body, sent, answered) = worst;
        let mut row = Row::measured(
            ctx,
            name,
            target,
            body as f64,
            "B",
            body <= REFUSED_BODY_BOUND,
        );
        row.measured = format!(
            "{body} B (worst of {}; the client got {:.1} MiB into the socket buffers; 401 \
             after {} ms)",
            ctx.size(5, 2),
            sent as f64 / (1 << 20) as f64,
            fmt_value(ms(answered))
        );
        Ok::<_, anyhow::Error>(vec![row])
    }
    .await;
    result.unwrap_or_else(|e| vec![Row::error(name, target, &e)])
}

// ---- 12c ----

/// Claim+complete pairs by one worker for at least `span` (and `min_pairs`), each timed
/// from the claim's send to the completion's answer.
async fn cycles(
    client: &Client,
    min_pairs: usize,
    span: Duration,
) -> anyhow::Result<Vec<Duration>> {
    let me = worker(0)?;
    let req = ClaimRequest {
        worker: me.clone(),
        capability: capability(0),
    };
    let mut samples = Vec::new();
    let started = Instant::now();
    while samples.len() < min_pairs || started.elapsed() < span {
        let begun = Instant::now();
        let Some(claimed) = client.claim(&req, None).await? else {
            bail!("the queue ran out of jobs after {} pairs", samples.len());
        };
        let done = CompleteRequest {
            worker: me.clone(),
            lease: claimed.lease,
            artifact_id: None,
            upload: None,
            report: Default::default(),
        };
        client.complete(&claimed.job.id, &done).await?;
        samples.push(begun.elapsed());
    }
    Ok(samples)
}

/// What the long-polls saw.
#[derive(Default)]
struct Pollers {
    stop: AtomicBool,
    answered: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
}

/// One unauthenticated follower of the event log, as `cis490ctl get -w` does it: poll from
/// the head with `?wait=30`, wait out a 429/503's `Retry-After`.
async fn poll_events(client: Client, mut since: u64, seen: Arc<Pollers>) {
    while !seen.stop.load(Ordering::Relaxed) {
        match client.events(since, Duration::from_secs(30)).await {
            Ok(page) => {
                since = page.next.max(since);
                seen.answered.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if e.is_busy() => {
                seen.refused.fetch_add(1, Ordering::Relaxed);
                let pause = e.retry_after().unwrap_or(Duration::from_secs(1));
                tokio::time::sleep(pause).await;
            }
            Err(_) => {
                seen.failed.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Raises this process's open-file limit towards `want` (its children inherit it): 1,000
/// long-polls need 1,000 sockets here and as many in the server.
fn raise_file_limit(want: u64) {
    #[cfg(unix)]
    {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
            let target = want.min(hard);
            if soft < target {
                let _ = setrlimit(Resource::RLIMIT_NOFILE, target, hard);
            }
        }
    }
    #[cfg(not(unix))]
    let _ = want;
}

pub async fn run_long_polls(ctx: &Ctx, server_missing: Option<&str>) -> Vec<Row> {
    let polls = ctx.size(1000, 100);
    let base_name = "12c. claim+complete median, no long-polls";
    let name = format!("12c. claim+complete median, {polls} idle long-polls of /v1/events");
    let target = "<= 2x of none";
    if let Some(why) = server_missing {
        return vec![
            Row::not_measured(base_name, "-", why),
            Row::not_measured(&name, target, why),
        ];
    }
    let result = async {
        raise_file_limit(8192);
        // Each phase lasts longer than two Retry-After periods, so polls refused at the cap
        // come back (and are refused again) while the worker is timed.
        let samples = ctx.size(500, 50);
        let span = Duration::from_secs(ctx.size(12, 2) as u64);
        let dir = ctx.dir("long-polls")?;
        let jobs = ctx.size(30_000, 3_000);
        let server = BenchServer::start(&dir, &many_plain_jobs(jobs))?;
        let client = server.client()?;
        super::claim_throughput::wait_pending(&client, jobs as u64).await?;
        // Warm the connection and the server's caches.
        cycles(&client, 5, Duration::ZERO).await?;
        let mut none = cycles(&client, samples, span).await?;

        let anon = Client::new(&server.reconciler.url)?;
        let head = anon.events(0, Duration::ZERO).await?.next;
        let mut head = head;
        loop {
            let page = anon.events(head, Duration::ZERO).await?;
            if page.events.is_empty() {
                break;
            }
            head = page.next;
        }
        let seen = Arc::new(Pollers::default());
        let tasks: Vec<_> = (0..polls)
            .map(|_| tokio::spawn(poll_events(anon.clone(), head, Arc::clone(&seen))))
            .collect();
        // Let every poll reach the server: waiting, or refused and backing off.
        let settle = Instant::now();
        while (seen.refused.load(Ordering::Relaxed) as usize)
            < polls.saturating_sub(event_waits_cap(polls))
            && settle.elapsed() < Duration::from_secs(30)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let waiting = metric(&server, "cis490_event_waits").await?;
        let open = metric(&server, "cis490_http_connections_open").await?;
        let mut with = cycles(&client, samples, span).await?;
        seen.stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.abort();
        }
        let base = ms(percentile(&mut none, 50.0));
        let base_p95 = ms(percentile(&mut none, 95.0));
        let base_max = ms(percentile(&mut none, 100.0));
        let loaded = ms(percentile(&mut with, 50.0));
        let loaded_p95 = ms(percentile(&mut with, 95.0));
        let loaded_p99 = ms(percentile(&mut with, 99.0));
        let loaded_max = ms(percentile(&mut with, 100.0));
        let ratio = loaded / base.max(1e-9);
        let mut base_row = Row::measured(ctx, base_name, "-", base, "ms", true);
        base_row.measured = format!(
            "{} ms (p95 {} ms, max {} ms, {} pairs in {} s)",
            fmt_value(base),
            fmt_value(base_p95),
            fmt_value(base_max),
            none.len(),
            span.as_secs()
        );
        let mut row = Row::measured(ctx, &name, target, ratio, "x", ratio <= 2.0);
        row.measured = format!(
            "{} x ({} ms, p95 {} ms, p99 {} ms, max {} ms, {} pairs; {waiting} polls waiting, \
             {open} connections open, {} answered, {} refused 429 and backed off, {} failed)",
            fmt_value(ratio),
            fmt_value(loaded),
            fmt_value(loaded_p95),
            fmt_value(loaded_p99),
            fmt_value(loaded_max),
            with.len(),
            seen.answered.load(Ordering::Relaxed),
            seen.refused.load(Ordering::Relaxed),
            seen.failed.load(Ordering::Relaxed),
        );
        Ok::<_, anyhow::Error>(vec![base_row, row])
    }
    .await;
    result.unwrap_or_else(|e| vec![Row::error(&name, target, &e)])
}

/// [`plain_manifest_text`] for more jobs than one matrix may make: entries of 5,000 seeds.
fn many_plain_jobs(jobs: usize) -> String {
    use std::fmt::Write as _;
    let mut text = plain_manifest_text(0, &["true"]);
    for first in (0..jobs).step_by(5_000) {
        let seeds: Vec<String> = (first..jobs.min(first + 5_000))
            .map(|s| s.to_string())
            .collect();
        let _ = write!(
            text,
            "\n[[jobs]]\nmodel = \"trivial\"\nmode = \"bench\"\nmatrix = {{ seed = [{}] }}\n",
            seeds.join(", ")
        );
    }
    text
}

/// The server's default `max_event_waits` (64), or fewer when there are fewer polls.
fn event_waits_cap(polls: usize) -> usize {
    polls.min(64)
}

async fn metric(server: &BenchServer, name: &str) -> anyhow::Result<u64> {
    let mut stream = connect(server).await?;
    stream.write_all(METRICS_REQUEST).await?;
    let (_, body) = read_answer(&mut stream).await?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("/metrics has no {name}"))
}
