//! `get job ID`: one job, in any listing format. JSON and YAML print the job itself (with
//! its events, from the detail route), like `kubectl get pod NAME -o json`.

use anyhow::Context;
use chrono::Utc;

use super::get::{jobs_table, render_jobs};
use super::Ctx;
use crate::cli::OutputFormat;
use crate::output::{print, to_json, to_yaml};
use crate::resolve::parse_prefix;

pub async fn job(ctx: &Ctx, id: &str, format: OutputFormat) -> anyhow::Result<()> {
    let prefix = parse_prefix(id)?;
    let job = ctx
        .client()?
        .job(&prefix)
        .await
        .with_context(|| format!("getting job {id}"))?;
    let text = match format {
        OutputFormat::Json => to_json(&job)?,
        OutputFormat::Yaml => to_yaml(&job)?,
        other => {
            let one = std::slice::from_ref(&job);
            let table = jobs_table(one, other == OutputFormat::Wide, Utc::now());
            render_jobs(one, other, &table, ctx.term)?
        }
    };
    print(&text)
}
