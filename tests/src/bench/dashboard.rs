//! Figures 15a-15b (issue 15): the dashboard stays light however large the queue.
//! - 15a: `GET /ui/` (the overview) of a 100,000-job queue answers within 300 ms: the
//!   median of five requests after one to warm up, each timed from sending to the last
//!   byte on loopback.
//! - 15b: the overview's page weight (its HTML, the stylesheet and the script) is under
//!   100 KiB.

use std::time::Instant;

use anyhow::{bail, Context};

use super::server::BenchServer;
use super::{fmt_value, Ctx, Row};

/// Requests timed for 15a (after one to warm up).
const TIMED: usize = 5;

async fn body(http: &reqwest::Client, url: &str) -> anyhow::Result<Vec<u8>> {
    let resp = http.get(url).send().await?.error_for_status()?;
    Ok(resp.bytes().await?.to_vec())
}

pub async fn run(ctx: &Ctx, server_missing: Option<&str>) -> Vec<Row> {
    let jobs = ctx.size(100_000, 2_000);
    let time_name = format!("15a. dashboard overview of {jobs} jobs: GET /ui/ (median of {TIMED})");
    let weight_name = "15b. dashboard overview page weight (HTML + CSS + JS)".to_string();
    let (time_target, weight_target) = ("<= 300 ms", "< 100 KiB");
    if let Some(why) = server_missing {
        return vec![
            Row::not_measured(&time_name, time_target, why),
            Row::not_measured(&weight_name, weight_target, why),
        ];
    }
    let result = async {
        let server = BenchServer::start_pending(&ctx.dir("dashboard")?, jobs).await?;
        let http = reqwest::Client::new();
        let url = server.reconciler.url.clone();
        let overview = body(&http, &format!("{url}/ui/")).await?;
        let html = String::from_utf8_lossy(&overview);
        if !html.contains(&format!("({jobs} live")) {
            bail!("the overview does not count {jobs} live jobs");
        }
        let mut times = Vec::with_capacity(TIMED);
        for _ in 0..TIMED {
            let started = Instant::now();
            body(&http, &format!("{url}/ui/")).await?;
            times.push(super::ms(started.elapsed()));
        }
        times.sort_by(f64::total_cmp);
        let median = times[TIMED / 2];
        let css = body(&http, &format!("{url}/ui/static/dashboard.css")).await?;
        let js = body(&http, &format!("{url}/ui/static/live.js")).await?;
        let weight = overview.len() + css.len() + js.len();
        let mut time = Row::measured(ctx, &time_name, time_target, median, "ms", median <= 300.0);
        time.measured = format!(
            "{} ms (fastest {} ms, slowest {} ms)",
            fmt_value(median),
            fmt_value(times[0]),
            fmt_value(times[TIMED - 1])
        );
        let kib = weight as f64 / 1024.0;
        let mut size = Row::measured(ctx, &weight_name, weight_target, kib, "KiB", kib < 100.0);
        size.measured = format!(
            "{} KiB ({} B HTML, {} B CSS, {} B JS)",
            fmt_value(kib),
            overview.len(),
            css.len(),
            js.len()
        );
        Ok::<_, anyhow::Error>(vec![time, size])
    };
    match result.await.context("figure 15") {
        Ok(rows) => rows,
        Err(e) => vec![
            Row::error(&time_name, time_target, &e),
            Row::error(&weight_name, weight_target, &e),
        ],
    }
}
