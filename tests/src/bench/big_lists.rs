//! Figures 12d-12f (issue 12): answers and validation that stay bounded however large the
//! queue or the manifest.
//! - 12d: `GET /v1/jobs` on a 300,000-job queue: the largest page (default limit) is under
//!   5 MB, and the server's resident memory stays flat while six clients page through every
//!   job at once (at the largest page size).
//! - 12e: a 19.9 KB manifest of 30 entries of a 100 x 100 matrix (300,000 jobs) is refused
//!   by `cis490-reconciler check` at the default `max_manifest_jobs`, naming the entry, and
//!   `check`'s peak memory stays under 300 MB.
//! - 12f: `allowed_hosts` warnings for 200,000 unknown host entries take linear time:
//!   `check` of 200,000 takes at most 2.5x its time for 100,000.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cis490_api::Page;

use super::proc_stats::{peak_rss_mib, rss_mib};
use super::server::BenchServer;
use super::{fmt_value, Ctx, Row};

/// Follows every page of `GET /v1/jobs?limit=LIMIT`; the bytes of the largest page and
/// the jobs seen.
async fn page_through(
    http: &reqwest::Client,
    url: &str,
    limit: Option<u32>,
) -> anyhow::Result<(usize, usize)> {
    let (mut largest, mut seen) = (0usize, 0usize);
    let mut after: Option<String> = None;
    loop {
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(limit) = limit {
            query.push(("limit", limit.to_string()));
        }
        if let Some(after) = &after {
            query.push(("after", after.clone()));
        }
        let resp = http
            .get(format!("{url}/v1/jobs"))
            .query(&query)
            .send()
            .await?
            .error_for_status()?;
        let body = resp.bytes().await?;
        largest = largest.max(body.len());
        let page: Page<serde_json::Value> = serde_json::from_slice(&body)?;
        seen += page.items.len();
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok((largest, seen)),
        }
    }
}

pub async fn run_paging(ctx: &Ctx, server_missing: Option<&str>) -> Vec<Row> {
    let jobs = ctx.size(300_000, 3_000);
    let page_name = format!("12d. GET /v1/jobs on {jobs} jobs: largest page (default limit)");
    let rss_name = format!("12d. server RSS growth, six clients paging through {jobs} jobs");
    let (page_target, rss_target) = ("< 5 MB", "<= 64 MiB");
    if let Some(why) = server_missing {
        return vec![
            Row::not_measured(&page_name, page_target, why),
            Row::not_measured(&rss_name, rss_target, why),
        ];
    }
    let result = async {
        let server = BenchServer::start_pending(&ctx.dir("paging")?, jobs).await?;
        let http = reqwest::Client::new();
        let url = server.reconciler.url.clone();
        let started = Instant::now();
        let (largest, seen) = page_through(&http, &url, None).await?;
        let one_listing = started.elapsed();
        if seen < jobs {
            bail!("paging saw {seen} of {jobs} jobs");
        }

        let pid = server.pid();
        let before = rss_mib(pid)?;
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut peak = 0f64;
                while !stop.load(Ordering::Relaxed) {
                    peak = peak.max(rss_mib(pid).unwrap_or(0.0));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                peak
            })
        };
        let pagers: Vec<_> = (0..6)
            .map(|_| {
                let (http, url) = (http.clone(), url.clone());
                let max = cis490_api::MAX_PAGE_LIMIT;
                tokio::spawn(async move { page_through(&http, &url, Some(max)).await })
            })
            .collect();
        let started = Instant::now();
        for pager in pagers {
            let (_, seen) = pager.await??;
            if seen < jobs {
                bail!("a pager saw {seen} of {jobs} jobs");
            }
        }
        let six_listings = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        let peak = sampler.await?;
        let growth = (peak - before).max(0.0);

        let mut page = Row::measured(
            ctx,
            &page_name,
            page_target,
            largest as f64,
            "B",
            largest < 5_000_000,
        );
        page.measured = format!(
            "{largest} B ({} jobs a page; one listing of every job: {} ms)",
            cis490_api::DEFAULT_PAGE_LIMIT,
            fmt_value(super::ms(one_listing))
        );
        let mut rss = Row::measured(ctx, &rss_name, rss_target, growth, "MiB", growth <= 64.0);
        rss.measured = format!(
            "+{} MiB ({} -> peak {} MiB; the six listings took {} ms)",
            fmt_value(growth),
            fmt_value(before),
            fmt_value(peak),
            fmt_value(super::ms(six_listings))
        );
        Ok::<_, anyhow::Error>(vec![page, rss])
    }
    .await;
    result.unwrap_or_else(|e| {
        vec![
            Row::error(&page_name, page_target, &e),
            Row::error(&rss_name, rss_target, &e),
        ]
    })
}

/// `entries` entries of a `side` x `side` matrix (seed x depth), `side * side * entries`
/// jobs in all.
fn matrix_manifest(entries: usize, side: usize) -> String {
    let list = |from: usize| {
        (from..from + side)
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut text = String::from(
        "version = 1\n[defaults]\ncommand = [\"true\"]\n[models.gbt]\nhyper = { depth = \"int\" }\n",
    );
    for e in 0..entries {
        let _ = write!(
            text,
            "[[jobs]]\nmodel = \"gbt\"\nmode = \"m{e}\"\nmatrix = {{ seed = [{}], \"hyper.depth\" = [{}] }}\n",
            list(0),
            list(0)
        );
    }
    text
}

/// Runs `cis490-reconciler check FILE` to its end: its exit code, stderr, wall time and
/// peak resident memory (MiB: its `VmHWM`, read every 2 ms while it runs, so a peak in its
/// last 2 ms could be missed; the parse, where the peak is, comes long before the end).
fn check(file: &Path) -> anyhow::Result<(i32, String, Duration, f64)> {
    let started = Instant::now();
    let stderr_file = tempfile::NamedTempFile::new()?;
    let mut child = crate::command_dying_with_parent(crate::bin("cis490-reconciler")?)
        .arg("check")
        .arg(file)
        .stdout(std::process::Stdio::null())
        .stderr(stderr_file.reopen()?)
        .spawn()
        .context("running cis490-reconciler check")?;
    let mut peak = 0f64;
    let status = loop {
        if let Ok(hwm) = peak_rss_mib(child.id()) {
            peak = peak.max(hwm);
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let took = started.elapsed();
    let stderr = std::fs::read_to_string(stderr_file.path())?;
    Ok((status.code().unwrap_or(-1), stderr, took, peak))
}

pub fn run_manifest_cap(ctx: &Ctx) -> Vec<Row> {
    let name = "12e. check of a 300,000-job manifest (30 x 100 x 100): refused, peak RSS";
    let target = "refused, <= 300 MB";
    let result = (|| {
        let dir = ctx.dir("manifest-cap")?;
        let file = dir.join("typo.toml");
        let text = matrix_manifest(30, 100);
        std::fs::write(&file, &text)?;
        let (code, stderr, took, peak) = check(&file)?;
        let refused = code == 1 && stderr.contains("max_manifest_jobs");
        if !refused {
            bail!("check exited {code} without naming the job limit: {stderr}");
        }
        let peak_mb = peak * 1.048_576;
        let mut row = Row::measured(ctx, name, target, peak_mb, "MB", peak_mb <= 300.0);
        let first = stderr.lines().next().unwrap_or_default();
        row.measured = format!(
            "refused in {} ms, peak {} MB ({} KB file): {first}",
            fmt_value(super::ms(took)),
            fmt_value(peak_mb),
            text.len() / 1000
        );
        Ok::<_, anyhow::Error>(vec![row])
    })();
    result.unwrap_or_else(|e| vec![Row::error(name, target, &e)])
}

/// One job pinned to `hosts` hosts no `[[hosts]]` entry names.
fn unknown_hosts_manifest(hosts: usize) -> String {
    let list: Vec<String> = (0..hosts).map(|h| format!("\"h{h}\"")).collect();
    format!(
        "version = 1\n[defaults]\ncommand = [\"true\"]\n[models.gbt]\n[[hosts]]\nname = \"known\"\n\
         [[jobs]]\nmodel = \"gbt\"\nmode = \"m\"\nallowed_hosts = [{}]\n",
        list.join(",")
    )
}

pub fn run_host_warnings(ctx: &Ctx) -> Vec<Row> {
    let (small, large) = (ctx.size(100_000, 2_000), ctx.size(200_000, 4_000));
    let name =
        format!("12f. check with {large} unknown allowed_hosts entries: time vs {small} (linear)");
    let target = "<= 2.5x";
    let result = (|| {
        let dir = ctx.dir("host-warnings")?;
        let mut times = Vec::new();
        for n in [small, large] {
            let file = dir.join(format!("hosts-{n}.toml"));
            std::fs::write(&file, unknown_hosts_manifest(n))?;
            let (code, stderr, took, _) = check(&file)?;
            let warned = stderr.lines().filter(|l| l.starts_with("warning:")).count();
            if code != 0 || warned != n {
                bail!("check exited {code} with {warned} warnings for {n} unknown hosts");
            }
            times.push(took);
        }
        let ratio = times[1].as_secs_f64() / times[0].as_secs_f64().max(1e-9);
        let mut row = Row::measured(ctx, &name, target, ratio, "x", ratio <= 2.5);
        row.measured = format!(
            "{}x ({} ms for {small}, {} ms for {large})",
            fmt_value(ratio),
            fmt_value(super::ms(times[0])),
            fmt_value(super::ms(times[1]))
        );
        Ok::<_, anyhow::Error>(vec![row])
    })();
    result.unwrap_or_else(|e| vec![Row::error(&name, target, &e)])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_typo_manifest_is_thirty_entries_of_ten_thousand_jobs_in_20_kb() {
        let text = matrix_manifest(30, 100);
        assert_eq!(text.matches("[[jobs]]").count(), 30);
        assert!(text.len() < 21_000, "{}", text.len());
        let loaded = cis490_reconciler::manifest::parse_manifest_with_limit(
            &matrix_manifest(2, 3),
            Path::new("m.toml"),
            100,
        )
        .unwrap();
        assert_eq!(loaded.manifest.jobs.len(), 18);
    }
}
