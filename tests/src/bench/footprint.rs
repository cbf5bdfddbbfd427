//! Figure 6: footprint. The reconciler holding 100,000 jobs with 1,000 simulated workers,
//! each heartbeating its job every 30 s: CPU (% of one core) and RSS over 60 s. And a real
//! idle agent's RSS and CPU.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use cis490_api::{ClaimRequest, HeartbeatRequest};

use super::claim_throughput::wait_pending;
use super::proc_stats::{cpu_seconds, rss_mib};
use super::server::{start_agent, wait_registered, BenchServer};
use super::workload::{capability, manifest_text, plain_manifest_text, worker};
use super::{Ctx, Row};

pub async fn run(ctx: &Ctx, server_missing: Option<&str>) -> Vec<Row> {
    let (jobs, workers) = (ctx.size(100_000, 2_000), ctx.size(1_000, 50));
    let cpu_name = &format!("6. footprint: reconciler CPU, {jobs} jobs, {workers} workers");
    let rss_name = &format!("6. footprint: reconciler RSS, {jobs} jobs, {workers} workers");
    let mut rows = Vec::new();
    if let Some(why) = server_missing {
        rows.push(Row::not_measured(cpu_name, "<= 5% of a core", why));
        rows.push(Row::not_measured(rss_name, "<= 100 MiB", why));
    } else {
        match reconciler(ctx).await {
            Ok((cpu_pct, rss)) => {
                rows.push(Row::measured(
                    ctx,
                    cpu_name,
                    "<= 5% of a core",
                    cpu_pct,
                    "%",
                    cpu_pct <= 5.0,
                ));
                rows.push(Row::measured(
                    ctx,
                    rss_name,
                    "<= 100 MiB",
                    rss,
                    "MiB",
                    rss <= 100.0,
                ));
            }
            Err(e) => rows.push(Row::error(cpu_name, "<= 5% of a core", &e)),
        }
    }
    let rss_name = "6. footprint: idle agent RSS";
    let cpu_name = &format!("6. footprint: idle agent CPU over {} s", ctx.size(60, 3));
    if let Some(why) = server_missing {
        rows.push(Row::not_measured(rss_name, "<= 10 MiB", why));
        rows.push(Row::not_measured(cpu_name, "<= 0.1%", why));
        return rows;
    }
    match idle_agent(ctx).await {
        Ok((rss, cpu_pct)) => {
            rows.push(Row::measured(
                ctx,
                rss_name,
                "<= 10 MiB",
                rss,
                "MiB",
                rss <= 10.0,
            ));
            rows.push(Row::measured(
                ctx,
                cpu_name,
                "<= 0.1%",
                cpu_pct,
                "%",
                cpu_pct <= 0.1,
            ));
        }
        Err(e) => rows.push(Row::error(rss_name, "<= 10 MiB", &e)),
    }
    rows
}

/// A real agent with nothing to do (the only job is parked for another host), default
/// heartbeat and long-poll settings: (RSS MiB at the end, CPU % of one core over the
/// window, after a settling time).
async fn idle_agent(ctx: &Ctx) -> anyhow::Result<(f64, f64)> {
    let dir = ctx.dir("idle-agent")?;
    let server = BenchServer::start(&dir, &plain_manifest_text(0, &["true"]))?;
    let client = server.client()?;
    let agent = start_agent(&server, &dir, "idle-agent", &[])?;
    wait_registered(&client, "idle-agent").await?;
    tokio::time::sleep(Duration::from_secs(ctx.size(5, 1) as u64)).await;
    let pid = agent.pid();
    let window = Duration::from_secs(ctx.size(60, 3) as u64);
    let cpu_before = cpu_seconds(pid)?;
    let start = Instant::now();
    tokio::time::sleep(window).await;
    let cpu = cpu_seconds(pid)? - cpu_before;
    let pct = 100.0 * cpu / start.elapsed().as_secs_f64();
    Ok((rss_mib(pid)?, pct))
}

/// Returns (CPU % of one core, RSS MiB at the end) over the window.
async fn reconciler(ctx: &Ctx) -> anyhow::Result<(f64, f64)> {
    let jobs = ctx.size(100_000, 2_000);
    let workers = ctx.size(1_000, 50);
    let window = Duration::from_secs(ctx.size(60, 5) as u64);
    let period = Duration::from_secs(30);
    let dir = ctx.dir("footprint")?;
    let server = BenchServer::start(&dir, &manifest_text(jobs, 10, &["true"], 0))?;
    let client = server.client()?;
    wait_pending(&client, jobs as u64).await?;
    // Every worker claims one job (the running fleet), then heartbeats it every 30 s, the
    // workers spread evenly over the period.
    let mut leases = Vec::new();
    for k in 0..workers {
        let req = ClaimRequest {
            worker: worker(k)?,
            capability: capability(k),
        };
        let c = client
            .claim(&req, None)
            .await?
            .context("a worker got no job")?;
        leases.push((req.worker, c.job.id, c.lease));
    }
    let pid = server.pid();
    let cpu_before = cpu_seconds(pid)?;
    let start = Instant::now();
    let deadline = start + window;
    let mut tasks = Vec::new();
    for (i, (name, id, lease)) in leases.into_iter().enumerate() {
        let client = client.clone();
        let offset = period.mul_f64(i as f64 / workers as f64);
        let req = Arc::new(HeartbeatRequest {
            worker: name,
            lease,
            log_tail: Some("epoch 3/10 loss 0.412".to_string()),
            log: None,
            progress: None,
        });
        tasks.push(tokio::spawn(async move {
            let mut next = start + offset;
            while next < deadline {
                tokio::time::sleep_until(next.into()).await;
                client.heartbeat(&id, &req).await?;
                next += period;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await.context("a heartbeat task panicked")??;
    }
    tokio::time::sleep_until(deadline.into()).await;
    let cpu = cpu_seconds(pid)? - cpu_before;
    let pct = 100.0 * cpu / start.elapsed().as_secs_f64();
    Ok((pct, rss_mib(pid)?))
}
