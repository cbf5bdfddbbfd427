//! `cis490-reconciler check FILE [-o json]`: validate a manifest and print its expanded jobs.

use std::path::PathBuf;

/// Arguments of `check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The manifest to validate.
    pub file: PathBuf,
    /// Output format: table (default) or json.
    #[arg(short = 'o', long = "output", default_value = "table")]
    pub output: String,
}

/// Returns the process exit code.
pub fn run(_args: CheckArgs) -> anyhow::Result<i32> {
    eprintln!("cis490-reconciler check: not yet implemented");
    Ok(2)
}
