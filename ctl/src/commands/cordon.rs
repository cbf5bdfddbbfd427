//! `cordon|uncordon|drain NODE` (operator).

use anyhow::Context;
use cis490_api::client::NodeAction;
use cis490_api::WorkerName;

use super::Ctx;
use crate::cli::NodeArgs;
use crate::output::print;

pub async fn run(ctx: &Ctx, args: &NodeArgs, action: NodeAction) -> anyhow::Result<()> {
    let client = ctx.operator(action.as_str())?;
    let name = WorkerName::parse(&args.name)?;
    let worker = client
        .node_action(&name, action)
        .await
        .with_context(|| format!("{} worker {name}", action.as_str()))?;
    let word = match action {
        NodeAction::Cordon => "cordoned",
        NodeAction::Uncordon => "uncordoned",
        NodeAction::Drain => "draining",
    };
    print(&format!(
        "worker/{} {word} (state {}, {} running jobs)\n",
        worker.name,
        worker.state,
        worker.running_jobs.len()
    ))
}
