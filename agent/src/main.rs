//! cis490-agent: see `cis490_agent::cli`.

use cis490_agent::cli::{self, Cli, Command};
use clap::Parser;

fn main() {
    // Before anything else: as the trainer shim this process becomes the trainer, and as
    // the trainer guard it guards.
    cis490_agent::exec_trainer::run_if_requested();
    cis490_agent::trainer_guard::run_if_requested();
    agent_main();
}

#[tokio::main]
async fn agent_main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never in log files or journald.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Cli::parse();
    let result = match &args.command {
        Command::Capability { output, flags } => cli::capability_command(flags, *output).await,
        Command::Run { flags } => cli::run_command(flags).await,
        Command::CheckServer { flags } => cli::check_server_command(flags).await,
    };
    if let Err(e) = result {
        eprintln!("cis490-agent: {e:#}");
        std::process::exit(1);
    }
}
