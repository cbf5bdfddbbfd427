//! `hold JOB...` / `release JOB...` (operator): set pending jobs aside, let held ones go.

use super::{each_job, Ctx, JobVerb};
use crate::cli::HoldArgs;

pub async fn hold(ctx: &Ctx, args: &HoldArgs) -> anyhow::Result<()> {
    let client = ctx.operator("hold")?;
    let verb = JobVerb {
        verb: "hold",
        doing: "holding",
        done: "held",
    };
    each_job(&args.jobs, verb, |id| {
        let client = client.clone();
        async move { client.hold(&id).await }
    })
    .await
}

pub async fn release(ctx: &Ctx, args: &HoldArgs) -> anyhow::Result<()> {
    let client = ctx.operator("release")?;
    let verb = JobVerb {
        verb: "release",
        doing: "releasing",
        done: "released",
    };
    each_job(&args.jobs, verb, |id| {
        let client = client.clone();
        async move { client.release(&id).await }
    })
    .await
}
