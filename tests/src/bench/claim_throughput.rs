//! Figure 1: 64 simulated agents with mixed capabilities drain 20,000 pending jobs with
//! mixed constraints. Claims/s, claim latency p99, and every job claimed exactly once.
//!
//! Measured twice: through the real server over loopback (the figure), and straight on
//! the `Queue` from 64 threads (no HTTP: what the queue alone can do, which bounds the
//! figure and is what a profile of the queue looks at).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cis490_api::{ClaimRequest, JobId};
use cis490_reconciler::manifest::parse_manifest;
use cis490_reconciler::plan::plan;
use cis490_reconciler::queue::{JobQueue, ManifestSource, Queue, QueueConfig};

use super::server::{Backend, BenchServer};
use super::workload::{capability, manifest_text, worker};
use super::{ms, percentile, Ctx, Row};

/// Simulated agents.
pub const AGENTS: usize = 64;
const TARGET_RATE: f64 = 10_000.0;
const TARGET_P99_MS: f64 = 20.0;

/// What a drain saw.
pub struct Drain {
    pub claimed: Vec<JobId>,
    pub latencies: Vec<Duration>,
    pub elapsed: Duration,
}

impl Drain {
    pub fn rate(&self) -> f64 {
        self.claimed.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A queue database in `dir` holding `jobs` pending jobs from a generated manifest; also
/// returns their IDs.
pub fn load_queue(dir: &Path, jobs: usize) -> anyhow::Result<(Queue, HashSet<JobId>)> {
    let queue = Queue::open(&dir.join("queue.db"), QueueConfig::default())?;
    let text = manifest_text(jobs, 10, &["true"], 0);
    let loaded = parse_manifest(&text, Path::new("bench.toml")).map_err(anyhow::Error::msg)?;
    let p = plan(&loaded.manifest.jobs, &queue.actual()?);
    queue.apply(&p, &loaded.manifest.hosts, &ManifestSource::default())?;
    let ids = loaded.manifest.jobs.iter().map(|j| j.id.clone()).collect();
    Ok((queue, ids))
}

/// `agents` threads claim from `queue` until each is answered "nothing for you".
pub fn drain_queue(queue: &Queue, agents: usize) -> anyhow::Result<Drain> {
    let start = Instant::now();
    let handles: Vec<_> = (0..agents)
        .map(|k| {
            let queue = queue.clone();
            std::thread::spawn(move || -> anyhow::Result<(Vec<JobId>, Vec<Duration>)> {
                let me = worker(k)?;
                let cap = capability(k);
                let mut got = Vec::new();
                let mut latencies = Vec::new();
                loop {
                    let t = Instant::now();
                    let claimed = queue.claim(&me, &cap)?;
                    latencies.push(t.elapsed());
                    match claimed {
                        Some(c) => got.push(c.job.id),
                        None => return Ok((got, latencies)),
                    }
                }
            })
        })
        .collect();
    let mut drain = Drain {
        claimed: Vec::new(),
        latencies: Vec::new(),
        elapsed: Duration::ZERO,
    };
    for h in handles {
        let (got, lat) = h
            .join()
            .map_err(|_| anyhow::anyhow!("an agent thread panicked"))??;
        drain.claimed.extend(got);
        drain.latencies.extend(lat);
    }
    drain.elapsed = start.elapsed();
    Ok(drain)
}

/// One thread claims for `agents` agents in turn (agent 0, 1, ..., 0, ...), each until it
/// is answered "nothing for you": a drain whose work does not depend on thread scheduling,
/// so that `callgrind`'s instruction counts of it repeat (every claim is its own commit).
pub fn drain_round_robin(queue: &Queue, agents: usize) -> anyhow::Result<Drain> {
    let start = Instant::now();
    let mut active: Vec<(cis490_api::WorkerName, cis490_api::Capability)> = (0..agents)
        .map(|k| Ok((worker(k)?, capability(k))))
        .collect::<anyhow::Result<_>>()?;
    let mut drain = Drain {
        claimed: Vec::new(),
        latencies: Vec::new(),
        elapsed: Duration::ZERO,
    };
    while !active.is_empty() {
        let mut still = Vec::with_capacity(active.len());
        for (me, cap) in active {
            let t = Instant::now();
            let claimed = queue.claim(&me, &cap)?;
            drain.latencies.push(t.elapsed());
            if let Some(c) = claimed {
                drain.claimed.push(c.job.id);
                still.push((me, cap));
            }
        }
        active = still;
    }
    drain.elapsed = start.elapsed();
    Ok(drain)
}

/// `cis490-bench claim-profile`: loads `jobs` jobs into a queue in `dir` and drains it with
/// `threads` threads (0: one thread, agents in turn, see [`drain_round_robin`]); prints
/// the load and drain times. For `perf` and `callgrind` (toggle collection on
/// `*drain_round_robin*` to count only the claims).
pub fn profile_main(jobs: usize, threads: usize, dir: &Path) -> anyhow::Result<()> {
    let t = Instant::now();
    let (queue, ids) = load_queue(dir, jobs)?;
    let loaded = t.elapsed();
    let drain = if threads == 0 {
        drain_round_robin(&queue, AGENTS)?
    } else {
        drain_queue(&queue, threads)?
    };
    check_exactly_once(&drain.claimed, &ids)?;
    println!(
        "{jobs} jobs: load {:.3} s; drain {:.3} s, {:.0} claims/s",
        loaded.as_secs_f64(),
        drain.elapsed.as_secs_f64(),
        drain.rate()
    );
    Ok(())
}

/// `agents` tokio tasks claim over HTTP until each is answered 204; agent `k` talks to
/// `clients[k % clients.len()]` (several servers of one database: the agents split
/// between them).
pub async fn drain_http(clients: &[cis490_api::Client], agents: usize) -> anyhow::Result<Drain> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..agents {
        let client = clients
            .get(k % clients.len().max(1))
            .context("no client to drain with")?
            .clone();
        let req = Arc::new(ClaimRequest {
            worker: worker(k)?,
            capability: capability(k),
        });
        tasks.push(tokio::spawn(async move {
            claim_until_empty(&client, &req).await
        }));
    }
    let mut drain = Drain {
        claimed: Vec::new(),
        latencies: Vec::new(),
        elapsed: Duration::ZERO,
    };
    for t in tasks {
        let (got, lat) = t.await.context("an agent task panicked")??;
        drain.claimed.extend(got);
        drain.latencies.extend(lat);
    }
    drain.elapsed = start.elapsed();
    Ok(drain)
}

async fn claim_until_empty(
    client: &cis490_api::Client,
    req: &ClaimRequest,
) -> anyhow::Result<(Vec<JobId>, Vec<Duration>)> {
    let mut got = Vec::new();
    let mut latencies = Vec::new();
    loop {
        let t = Instant::now();
        let claimed = client.claim(req, None).await?;
        latencies.push(t.elapsed());
        match claimed {
            Some(c) => got.push(c.job.id),
            None => return Ok((got, latencies)),
        }
    }
}

/// Fails unless `claimed` is exactly `expected`, each once.
pub fn check_exactly_once(claimed: &[JobId], expected: &HashSet<JobId>) -> anyhow::Result<()> {
    let mut seen = HashSet::with_capacity(claimed.len());
    for id in claimed {
        if !seen.insert(id) {
            bail!("job {} was claimed twice", id.short());
        }
        if !expected.contains(id) {
            bail!("job {} was claimed but never created", id.short());
        }
    }
    if seen.len() != expected.len() {
        bail!(
            "{} of {} jobs were never claimed",
            expected.len() - seen.len(),
            expected.len()
        );
    }
    Ok(())
}

/// The rows of one drain: rate, p99, exactly-once.
fn drain_rows(ctx: &Ctx, name: &str, mut drain: Drain, expected: &HashSet<JobId>) -> Vec<Row> {
    let rate = drain.rate();
    let p99 = ms(percentile(&mut drain.latencies, 99.0));
    let mut rows = vec![
        Row::measured(
            ctx,
            &format!("{name}: claims/s"),
            ">= 10000/s",
            rate,
            "claims/s",
            rate >= TARGET_RATE,
        ),
        Row::measured(
            ctx,
            &format!("{name}: claim p99"),
            "<= 20 ms",
            p99,
            "ms",
            p99 <= TARGET_P99_MS,
        ),
    ];
    let once_target = "every job claimed exactly once";
    rows.push(match check_exactly_once(&drain.claimed, expected) {
        Ok(()) => Row {
            measured: format!(
                "{} of {} jobs, each once",
                drain.claimed.len(),
                expected.len()
            ),
            status: if ctx.quick {
                super::Status::Ran
            } else {
                super::Status::Ok
            },
            ..Row::not_measured(&format!("{name}: exactly once"), once_target, "")
        },
        Err(e) => Row::error(&format!("{name}: exactly once"), once_target, &e),
    });
    rows
}

/// The in-process variant (no HTTP).
pub fn run_queue(ctx: &Ctx) -> Vec<Row> {
    let name = "1q. claim, in-process Queue, 64 threads";
    let result = (|| -> anyhow::Result<Vec<Row>> {
        let jobs = ctx.jobs(20_000, 1_000);
        let dir = ctx.dir("claim-queue")?;
        let (queue, ids) = load_queue(&dir, jobs)?;
        let drain = drain_queue(&queue, AGENTS)?;
        let pending = queue.counts()?.get("pending").copied().unwrap_or(0);
        if pending != 0 {
            bail!("{pending} jobs still pending after the drain");
        }
        Ok(drain_rows(ctx, name, drain, &ids))
    })();
    result.unwrap_or_else(|e| vec![Row::error(name, ">= 10000 claims/s", &e)])
}

/// The figure: through the real server over loopback, on `backend`'s queue; with
/// `servers` > 1, that many servers on one database (PostgreSQL), the agents split
/// between them.
pub async fn run_http(
    ctx: &Ctx,
    server_missing: Option<&str>,
    backend: &Backend,
    servers: usize,
) -> Vec<Row> {
    let name = &if servers > 1 {
        format!(
            "1{}{servers}. claim over HTTP, {servers} servers{}, 64 agents",
            backend.tag(),
            backend.label()
        )
    } else {
        format!(
            "1{}. claim over HTTP{}, 64 agents",
            backend.tag(),
            backend.label()
        )
    };
    if let Some(why) = server_missing {
        return vec![Row::not_measured(
            name,
            ">= 10000 claims/s, p99 <= 20 ms",
            why,
        )];
    }
    let result = async {
        let jobs = ctx.jobs(20_000, 1_000);
        let dir = ctx.dir("claim-http")?;
        let text = manifest_text(jobs, 10, &["true"], 0);
        let loaded = parse_manifest(&text, Path::new("bench.toml")).map_err(anyhow::Error::msg)?;
        let ids: HashSet<JobId> = loaded.manifest.jobs.iter().map(|j| j.id.clone()).collect();
        let db = backend.database("claim")?;
        let url = db.as_ref().map(|d| d.url.as_str());
        let mut running = Vec::new();
        for n in 0..servers.max(1) {
            let instance = if n == 0 { String::new() } else { n.to_string() };
            running.push(BenchServer::start_on(&dir, &text, None, url, &instance)?);
        }
        let clients = running
            .iter()
            .map(BenchServer::client)
            .collect::<anyhow::Result<Vec<_>>>()?;
        wait_pending(&clients[0], jobs as u64).await?;
        let drain = drain_http(&clients, AGENTS).await?;
        drop(running);
        drop(db);
        Ok::<_, anyhow::Error>(drain_rows(ctx, name, drain, &ids))
    }
    .await;
    result.unwrap_or_else(|e| vec![Row::error(name, ">= 10000 claims/s", &e)])
}

/// Polls /v1/health until `n` jobs are pending (the server applies its manifest at start).
pub async fn wait_pending(client: &cis490_api::Client, n: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(h) = client.health().await {
            if h.jobs.get("pending").copied().unwrap_or(0) >= n {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("the server did not show {n} pending jobs within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
