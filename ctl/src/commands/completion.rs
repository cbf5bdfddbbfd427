//! `completion bash|zsh|fish`: a shell completion script on stdout.

use clap::CommandFactory;

use crate::cli::{Cli, CompletionArgs};

pub fn run(args: &CompletionArgs) -> anyhow::Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "cis490ctl", &mut script);
    crate::output::print(&String::from_utf8_lossy(&script))
}
