//! `requeue JOB...` or `requeue --status failed` (operator): finished jobs back to pending.

use anyhow::{bail, Context};
use cis490_api::{JobFilter, JobStatus};

use super::{each_job, Ctx, JobVerb};
use crate::cli::RequeueArgs;
use crate::output::print;

/// The statuses a job can be requeued from.
pub const REQUEUEABLE: [JobStatus; 3] = [
    JobStatus::Failed,
    JobStatus::Cancelled,
    JobStatus::Completed,
];

pub async fn run(ctx: &Ctx, args: &RequeueArgs) -> anyhow::Result<()> {
    let client = ctx.operator("requeue")?;
    let ids: Vec<String> = match args.status {
        None => args.jobs.clone(),
        Some(status) => {
            if !REQUEUEABLE.contains(&status) {
                bail!(
                    "only failed, cancelled or completed jobs can be requeued, not {status} ones"
                );
            }
            let jobs = client
                .jobs(&JobFilter {
                    status: Some(status),
                    ..JobFilter::default()
                })
                .await
                .with_context(|| format!("listing {status} jobs"))?;
            if jobs.is_empty() {
                return print(&format!("no {status} jobs to requeue\n"));
            }
            jobs.into_iter().map(|j| j.id.to_string()).collect()
        }
    };
    let verb = JobVerb {
        verb: "requeue",
        doing: "requeueing",
        done: "requeued",
    };
    each_job(&ids, verb, |id| {
        let client = client.clone();
        async move { client.requeue(&id).await }
    })
    .await
}
