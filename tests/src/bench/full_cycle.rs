//! Figure 2: claim + heartbeat + complete per job, no trainer: jobs/s. 64 simulated agents
//! each loop over the three calls until nothing is left for them. Figure 2r is the same
//! cycle carrying what a trainer reports: a progress point on the heartbeat and a small
//! metrics.json with a short progress series on the completion.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cis490_api::results::{parse_flat, MAX_METRICS_BYTES, MAX_PROGRESS_LINE_BYTES};
use cis490_api::{ClaimRequest, CompleteRequest, HeartbeatRequest, JobId, Metrics, TrainerReport};
use cis490_reconciler::queue::{JobQueue, Queue};

use super::claim_throughput::{check_exactly_once, load_queue, wait_pending, AGENTS};
use super::server::{Backend, BenchServer};
use super::workload::{capability, manifest_text, worker};
use super::{Ctx, Row};

const TARGET: f64 = 2_000.0;
const TARGET_TEXT: &str = ">= 2000 jobs/s";

fn rows(
    ctx: &Ctx,
    name: &str,
    done: &[JobId],
    ids: &HashSet<JobId>,
    elapsed: Duration,
) -> Vec<Row> {
    let rate = done.len() as f64 / elapsed.as_secs_f64().max(1e-9);
    match check_exactly_once(done, ids) {
        Ok(()) => vec![Row::measured(
            ctx,
            name,
            TARGET_TEXT,
            rate,
            "jobs/s",
            rate >= TARGET,
        )],
        Err(e) => vec![Row::error(name, TARGET_TEXT, &e)],
    }
}

/// In-process: 64 threads on the `Queue`.
pub fn run_queue(ctx: &Ctx) -> Vec<Row> {
    let name = "2q. full cycle, in-process Queue";
    let result = (|| -> anyhow::Result<Vec<Row>> {
        let dir = ctx.dir("cycle-queue")?;
        let (queue, ids) = load_queue(&dir, ctx.jobs(10_000, 500))?;
        let start = Instant::now();
        let handles: Vec<_> = (0..AGENTS)
            .map(|k| {
                let queue = queue.clone();
                std::thread::spawn(move || cycle_thread(&queue, k))
            })
            .collect();
        let mut done = Vec::new();
        for h in handles {
            done.extend(
                h.join()
                    .map_err(|_| anyhow::anyhow!("an agent thread panicked"))??,
            );
        }
        let elapsed = start.elapsed();
        let completed = queue.counts()?.get("completed").copied().unwrap_or(0);
        if completed != ids.len() as u64 {
            bail!("{completed} of {} jobs completed", ids.len());
        }
        Ok(rows(ctx, name, &done, &ids, elapsed))
    })();
    result.unwrap_or_else(|e| vec![Row::error(name, TARGET_TEXT, &e)])
}

fn cycle_thread(queue: &Queue, k: usize) -> anyhow::Result<Vec<JobId>> {
    let me = worker(k)?;
    let cap = capability(k);
    let mut done = Vec::new();
    while let Some(c) = queue.claim(&me, &cap)? {
        let hb = HeartbeatRequest {
            worker: me.clone(),
            lease: c.lease.clone(),
            log_tail: None,
            log: None,
            progress: None,
        };
        queue.heartbeat(&c.job.id, &hb)?;
        let req = CompleteRequest {
            worker: me.clone(),
            lease: c.lease,
            artifact_id: None,
            upload: None,
            report: Default::default(),
        };
        queue.complete(&c.job.id, &req)?;
        done.push(c.job.id);
    }
    Ok(done)
}

/// What figure 2r's trainers report: six metrics, and a point per tenth of the run.
fn sample_report() -> anyhow::Result<(Metrics, TrainerReport)> {
    let point = |step: u32| {
        parse_flat(
            format!(
                r#"{{"step": {step}, "of": 10, "loss": {}}}"#,
                1.0 / f64::from(step)
            )
            .as_bytes(),
            MAX_PROGRESS_LINE_BYTES,
        )
    };
    let metrics = parse_flat(
        br#"{"accuracy": 0.9132, "val_accuracy": 0.8871, "loss": 0.2311, "val_loss": 0.2954, "train_seconds": 12.5, "note": "early stop at epoch 10"}"#,
        MAX_METRICS_BYTES,
    )?;
    let report = TrainerReport {
        metrics: Some(metrics),
        progress: (1..=10).map(point).collect::<Result<_, _>>()?,
        warnings: Vec::new(),
    };
    Ok((point(10)?, report))
}

/// The figure: through the real server over loopback, on `backend`'s queue.
pub async fn run_http(ctx: &Ctx, server_missing: Option<&str>, backend: &Backend) -> Vec<Row> {
    let name = format!(
        "2{}. full cycle over HTTP{}, 64 agents",
        backend.tag(),
        backend.label()
    );
    cycle_http(ctx, server_missing, &name, false, backend).await
}

/// Figure 2r: figure 2 with results (progress on heartbeats, metrics on completions). Its
/// target is figure 2's rate less 10% when figure 2 ran in the same invocation (`baseline`).
pub async fn run_http_results(
    ctx: &Ctx,
    server_missing: Option<&str>,
    baseline: Option<f64>,
) -> Vec<Row> {
    let name = "2r. full cycle over HTTP with metrics and progress, 64 agents";
    let mut rows = cycle_http(ctx, server_missing, name, true, &Backend::Sqlite).await;
    if let (Some(base), Some(rate)) = (baseline, rows.first().and_then(|r| r.value)) {
        let ratio = rate / base.max(1e-9);
        rows.push(Row::measured(
            ctx,
            "2r. full cycle with results vs figure 2",
            ">= 0.90 of figure 2",
            ratio,
            "x figure 2",
            ratio >= 0.9,
        ));
    }
    rows
}

async fn cycle_http(
    ctx: &Ctx,
    server_missing: Option<&str>,
    name: &str,
    with_results: bool,
    backend: &Backend,
) -> Vec<Row> {
    if let Some(why) = server_missing {
        return vec![Row::not_measured(name, TARGET_TEXT, why)];
    }
    let result = async {
        let (point, report) = sample_report()?;
        let (point, report) = (Arc::new(point), Arc::new(report));
        let jobs = ctx.jobs(10_000, 500);
        let dir = ctx.dir("cycle-http")?;
        let text = manifest_text(jobs, 10, &["true"], 0);
        let loaded =
            cis490_reconciler::manifest::parse_manifest(&text, std::path::Path::new("bench.toml"))
                .map_err(anyhow::Error::msg)?;
        let ids: HashSet<JobId> = loaded.manifest.jobs.iter().map(|j| j.id.clone()).collect();
        let db = backend.database("cycle")?;
        let url = db.as_ref().map(|d| d.url.as_str());
        let server = BenchServer::start_on(&dir, &text, None, url, "")?;
        let client = server.client()?;
        wait_pending(&client, jobs as u64).await?;
        let start = Instant::now();
        let mut tasks = Vec::new();
        for k in 0..AGENTS {
            let client = client.clone();
            let req = Arc::new(ClaimRequest {
                worker: worker(k)?,
                capability: capability(k),
            });
            let (point, report) = (Arc::clone(&point), Arc::clone(&report));
            tasks.push(tokio::spawn(async move {
                let mut done = Vec::new();
                while let Some(c) = client.claim(&req, None).await? {
                    let hb = HeartbeatRequest {
                        worker: req.worker.clone(),
                        lease: c.lease.clone(),
                        log_tail: None,
                        log: None,
                        progress: with_results.then(|| (*point).clone()),
                    };
                    client.heartbeat(&c.job.id, &hb).await?;
                    let complete = CompleteRequest {
                        worker: req.worker.clone(),
                        lease: c.lease,
                        artifact_id: None,
                        upload: None,
                        report: if with_results {
                            (*report).clone()
                        } else {
                            TrainerReport::default()
                        },
                    };
                    client.complete(&c.job.id, &complete).await?;
                    done.push(c.job.id);
                }
                Ok::<_, anyhow::Error>(done)
            }));
        }
        let mut done = Vec::new();
        for t in tasks {
            done.extend(t.await.context("an agent task panicked")??);
        }
        let elapsed = start.elapsed();
        Ok::<_, anyhow::Error>(rows(ctx, name, &done, &ids, elapsed))
    }
    .await;
    result.unwrap_or_else(|e| vec![Row::error(name, TARGET_TEXT, &e)])
}
