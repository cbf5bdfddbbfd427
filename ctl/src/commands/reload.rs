//! `reload` (operator; `apply` without -f does the same): the server re-reads its manifest and applies it now.

use anyhow::Context;

use super::Ctx;
use crate::cli::ReloadArgs;
use crate::output::print;

pub async fn run(ctx: &Ctx, args: &ReloadArgs) -> anyhow::Result<()> {
    let client = ctx.operator("reload")?;
    let plan = client.reload().await.context("reloading the manifest")?;
    print(&super::diff::render(&plan, args.output, ctx.term.color)?)
}
