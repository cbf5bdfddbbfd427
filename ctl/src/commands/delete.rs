//! `delete worker NAME...` (operator): forget workers that are gone, like
//! `kubectl delete node`. The server refuses one that holds a lease.

use anyhow::Context;
use cis490_api::WorkerName;

use super::Ctx;
use crate::cli::{DeleteArgs, DeleteResource};

pub async fn run(ctx: &Ctx, args: &DeleteArgs) -> anyhow::Result<()> {
    let DeleteResource::Worker { names } = &args.resource;
    let client = ctx.operator("delete")?;
    let mut failed = 0;
    for typed in names {
        let result = async {
            let name = WorkerName::parse(typed)?;
            client
                .delete_worker(&name)
                .await
                .with_context(|| format!("deleting worker {typed}"))
        }
        .await;
        match result {
            Ok(gone) => println!("worker/{} deleted", gone.name),
            Err(e) if names.len() == 1 => return Err(e),
            Err(e) => {
                eprintln!("error: {e:#}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} workers could not be deleted", names.len());
    }
    Ok(())
}
