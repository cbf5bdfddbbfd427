//! `cis490-reconciler serve`: the control plane.

/// Arguments of `serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {}

/// Returns the process exit code.
pub fn run(_args: ServeArgs) -> anyhow::Result<i32> {
    eprintln!("cis490-reconciler serve: not yet implemented");
    Ok(2)
}
