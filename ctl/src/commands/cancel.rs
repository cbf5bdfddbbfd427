//! `cancel JOB...` (operator): a running job stops at its agent's next heartbeat.

use super::{each_job, Ctx};
use crate::cli::CancelArgs;

pub async fn run(ctx: &Ctx, args: &CancelArgs) -> anyhow::Result<()> {
    let client = ctx.operator("cancel")?;
    each_job(&args.jobs, "cancelled", |id| {
        let client = client.clone();
        async move { client.cancel(&id).await }
    })
    .await
}
