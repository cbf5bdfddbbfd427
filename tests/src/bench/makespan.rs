//! Figure 7: makespan. 1,000 trivial jobs (the trainer writes one small file and exits)
//! through one real agent with `--max-concurrent 2`, from the reload that adds them to the
//! last completion; every job packed, uploaded and completed for real.

use std::time::{Duration, Instant};

use anyhow::bail;

use super::claim_throughput::wait_pending;
use super::server::{start_agent, wait_registered, Backend, BenchServer};
use super::workload::plain_manifest_text;
use super::{Ctx, Row};

/// The trainer: one small file in the output directory. The agent appends hyper flags,
/// which `sh -c` takes as $0.. and ignores.
const TRAINER: [&str; 3] = ["sh", "-c", "echo done > \"$CIS490_OUTPUT_DIR/result.txt\""];

pub async fn run(ctx: &Ctx, server_missing: Option<&str>, backend: &Backend) -> Vec<Row> {
    let name = &format!(
        "7{}. makespan{}: {} trivial jobs, one agent, 2 slots",
        backend.tag(),
        backend.label(),
        ctx.size(1_000, 50)
    );
    if let Some(why) = server_missing {
        return vec![Row::not_measured(name, ">= 500 jobs/s", why)];
    }
    match measure(ctx, backend).await {
        Ok((jobs, elapsed)) => {
            let rate = jobs as f64 / elapsed.as_secs_f64();
            let mut row = Row::measured(ctx, name, ">= 500 jobs/s", rate, "jobs/s", rate >= 500.0);
            row.measured = format!(
                "{} ({jobs} jobs in {:.2} s)",
                row.measured,
                elapsed.as_secs_f64()
            );
            vec![row]
        }
        Err(e) => vec![Row::error(name, ">= 500 jobs/s", &e)],
    }
}

/// Returns (jobs, reload-to-last-completion).
async fn measure(ctx: &Ctx, backend: &Backend) -> anyhow::Result<(usize, Duration)> {
    let jobs = ctx.size(1_000, 50);
    let dir = ctx.dir("makespan")?;
    let db = backend.database("makespan")?;
    let url = db.as_ref().map(|d| d.url.as_str());
    let server = BenchServer::start_on(&dir, &plain_manifest_text(0, &TRAINER), None, url, "")?;
    let client = server.client()?;
    let _agent = start_agent(&server, &dir, "makespan-agent", &["--max-concurrent", "2"])?;
    wait_registered(&client, "makespan-agent").await?;
    wait_pending(&client, 1).await?;
    let tmp = server.manifest.with_extension("toml.tmp");
    std::fs::write(&tmp, plain_manifest_text(jobs, &TRAINER))?;
    std::fs::rename(&tmp, &server.manifest)?;
    let start = Instant::now();
    client.reload().await?;
    let deadline = start + Duration::from_secs(600);
    loop {
        let health = client.health().await?;
        let completed = health.jobs.get("completed").copied().unwrap_or(0);
        let failed = health.jobs.get("failed").copied().unwrap_or(0);
        if failed > 0 {
            bail!(
                "{failed} jobs failed (see {})",
                dir.join("makespan-agent.log").display()
            );
        }
        if completed >= jobs as u64 {
            let elapsed = start.elapsed();
            let artifacts = client.artifacts().await?.len();
            if artifacts < 1 {
                bail!("jobs completed but no artifact was stored");
            }
            return Ok((jobs, elapsed));
        }
        if Instant::now() > deadline {
            bail!("only {completed} of {jobs} jobs completed within 600 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
