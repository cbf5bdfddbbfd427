//! `cancel JOB...` (operator): a running job stops at its agent's next heartbeat.

use super::{each_job, Ctx, JobVerb};
use crate::cli::CancelArgs;

pub async fn run(ctx: &Ctx, args: &CancelArgs) -> anyhow::Result<()> {
    let client = ctx.operator("cancel")?;
    let verb = JobVerb {
        verb: "cancel",
        doing: "cancelling",
        done: "cancelled",
    };
    each_job(&args.jobs, verb, |id| {
        let client = client.clone();
        async move { client.cancel(&id).await }
    })
    .await
}
