//! Figure 8: how cost grows. Claim throughput (in-process queue, 64 threads) and reconcile
//! time (first apply, in a child process) at 1k, 10k and 100k jobs. Claims should stay
//! flat; reconcile should grow no worse than linearly.

use super::claim_throughput::{check_exactly_once, drain_queue, load_queue, AGENTS};
use super::reconcile_scale::measure;
use super::{Ctx, Row};

pub fn run(ctx: &Ctx) -> Vec<Row> {
    let sizes: [usize; 3] = if ctx.quick {
        [200, 1_000, 2_000]
    } else {
        [1_000, 10_000, 100_000]
    };
    let mut rows = Vec::new();
    let mut rates = Vec::new();
    let mut per_job = Vec::new();
    for n in sizes {
        let claim = (|| -> anyhow::Result<f64> {
            let dir = ctx.dir(&format!("growth-claim-{n}"))?;
            let (queue, ids) = load_queue(&dir, n)?;
            let drain = drain_queue(&queue, AGENTS)?;
            check_exactly_once(&drain.claimed, &ids)?;
            Ok(drain.rate())
        })();
        let name = format!("8. growth: claims/s at {n} jobs (queue)");
        match claim {
            Ok(rate) => {
                rates.push(rate);
                rows.push(Row::measured(ctx, &name, "flat", rate, "claims/s", true));
            }
            Err(e) => rows.push(Row::error(&name, "flat", &e)),
        }
        let name = format!("8. growth: reconcile first apply at {n} jobs");
        match measure(ctx, n) {
            Ok(t) => {
                per_job.push(t.first_apply_s / n as f64);
                rows.push(Row::measured(
                    ctx,
                    &name,
                    "<= linear",
                    t.first_apply_s,
                    "s",
                    true,
                ));
            }
            Err(e) => rows.push(Row::error(&name, "<= linear", &e)),
        }
    }
    if let ([small, .., large], true) = (rates.as_slice(), rates.len() == 3) {
        let ratio = large / small;
        rows.push(Row::measured(
            ctx,
            &format!("8. growth: claims/s at {} / at {}", sizes[2], sizes[0]),
            ">= 0.5 (flat)",
            ratio,
            "x",
            ratio >= 0.5,
        ));
    }
    if let ([_, mid, large], true) = (per_job.as_slice(), per_job.len() == 3) {
        let ratio = large / mid;
        rows.push(Row::measured(
            ctx,
            &format!(
                "8. growth: reconcile time per job at {} / at {}",
                sizes[2], sizes[1]
            ),
            "<= 1.5 (linear)",
            ratio,
            "x",
            ratio <= 1.5,
        ));
    }
    rows
}
