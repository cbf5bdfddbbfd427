//! Figure 3: dispatch latency. An idle agent long-polls the claim; a job is added to the
//! manifest; how long until the claim answers with it:
//! - from `POST /v1/manifest/reload` being sent (target p50 <= 5 ms);
//! - from the manifest file's rename (the editor's save; the server's watcher notices it)
//!   (target p50 <= 300 ms).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cis490_api::{ClaimRequest, ClaimResponse, Client};

use super::server::BenchServer;
use super::workload::{capability, manifest_text, worker};
use super::{ms, percentile, Ctx, Row};

/// A long-poll claim's answer and when it arrived.
type Answered = anyhow::Result<(Option<ClaimResponse>, Instant)>;

/// The agent that waits: agent 0 can run every kind of job the workload makes.
fn waiting_claim(client: &Client) -> anyhow::Result<tokio::task::JoinHandle<Answered>> {
    let client = client.clone();
    let req = ClaimRequest {
        worker: worker(0)?,
        capability: capability(0),
    };
    Ok(tokio::spawn(async move {
        let answer = client.claim(&req, Some(Duration::from_secs(30))).await?;
        Ok((answer, Instant::now()))
    }))
}

/// Writes the manifest with `jobs` jobs beside `path` and renames it over `path`.
fn save_by_rename(path: &Path, jobs: usize) -> anyhow::Result<()> {
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, manifest_text(jobs, 1, &["true"], 0))?;
    std::fs::rename(&tmp, path).context("renaming the manifest into place")
}

/// One sample: the agent is long-polling, the manifest grows to `jobs` jobs; with
/// `reload` the harness also calls reload and times from that call, else from the rename.
async fn sample(
    client: &Client,
    path: &Path,
    jobs: usize,
    reload: bool,
) -> anyhow::Result<Duration> {
    let waiter = waiting_claim(client)?;
    // Give the claim time to reach the server and park (setup, not a synchronisation:
    // an early answer is detected below).
    tokio::time::sleep(Duration::from_millis(150)).await;
    if waiter.is_finished() {
        bail!("the long-poll claim answered before any job was added");
    }
    let start;
    if reload {
        save_by_rename(path, jobs)?;
        start = Instant::now();
        client.reload().await?;
    } else {
        let tmp = path.with_extension("toml.tmp");
        std::fs::write(&tmp, manifest_text(jobs, 1, &["true"], 0))?;
        start = Instant::now();
        std::fs::rename(&tmp, path)?;
    }
    let (answer, at) = tokio::time::timeout(Duration::from_secs(40), waiter)
        .await
        .context("the long-poll claim never answered")?
        .context("the claim task panicked")??;
    if answer.is_none() {
        bail!("the long-poll claim timed out without the new job");
    }
    Ok(at.saturating_duration_since(start))
}

pub async fn run(ctx: &Ctx, server_missing: Option<&str>) -> Vec<Row> {
    let reload_name = "3. dispatch: reload -> claim answer p50";
    let rename_name = "3. dispatch: file rename -> claim answer p50";
    if let Some(why) = server_missing {
        return vec![
            Row::not_measured(reload_name, "<= 5 ms", why),
            Row::not_measured(rename_name, "<= 300 ms", why),
        ];
    }
    let result = async {
        let dir = ctx.dir("dispatch")?;
        let server = BenchServer::start(&dir, &manifest_text(1, 1, &["true"], 0))?;
        let client = server.client()?;
        // Take the first job so the queue is empty and the agent is idle.
        let first = ClaimRequest {
            worker: worker(0)?,
            capability: capability(0),
        };
        if client
            .claim(&first, Some(Duration::from_secs(10)))
            .await?
            .is_none()
        {
            bail!("the first job was never claimable");
        }
        let samples = ctx.size(20, 3);
        let mut jobs = 1;
        let mut by_reload = Vec::new();
        for _ in 0..samples {
            jobs += 1;
            by_reload.push(sample(&client, &server.manifest, jobs, true).await?);
        }
        let mut by_rename = Vec::new();
        for _ in 0..samples {
            jobs += 1;
            by_rename.push(sample(&client, &server.manifest, jobs, false).await?);
        }
        let reload_p50 = ms(percentile(&mut by_reload, 50.0));
        let rename_p50 = ms(percentile(&mut by_rename, 50.0));
        Ok::<_, anyhow::Error>(vec![
            Row::measured(
                ctx,
                reload_name,
                "<= 5 ms",
                reload_p50,
                "ms",
                reload_p50 <= 5.0,
            ),
            Row::measured(
                ctx,
                rename_name,
                "<= 300 ms",
                rename_p50,
                "ms",
                rename_p50 <= 300.0,
            ),
        ])
    }
    .await;
    result.unwrap_or_else(|e| vec![Row::error(reload_name, "<= 5 ms", &e)])
}
