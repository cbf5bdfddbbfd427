//! `cis490-reconciler`: thin entry point; the work is in `cis490_reconciler::cli`.

use clap::{Parser, Subcommand};

use cis490_reconciler::cli;

/// mimalloc, not glibc malloc: a 100k-job reconcile allocates and frees a few hundred MiB
/// (the parsed manifest, the plan, the queue's snapshot). glibc kept most of it,
/// fragmented over the arenas of the blocking pool's threads, for the life of the server
/// (~170 MiB resident while serving 100k jobs); mimalloc returns freed pages to the OS.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The cis490 fleet's control plane.
#[derive(Debug, Parser)]
#[command(name = "cis490-reconciler", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a manifest and print its expanded jobs (like `nomad job validate`).
    Check(cli::check::CheckArgs),
    /// Run the control plane: HTTP API, manifest watch, sweeper.
    Serve(cli::serve::ServeArgs),
    /// Run a whole fleet on this machine: the server plus two local agents, with the
    /// example manifest (like `nomad agent -dev`). State in ./.cis490-dev/.
    Dev(cli::dev::DevArgs),
    /// Make a small lab CA, the server's certificate and agents' client certificates (TLS
    /// and mTLS for a lab with no PKI).
    Certs(cli::certs::CertsArgs),
    /// Per-worker tokens (issue, revoke, list): each binds an agent to its worker name, for
    /// labs without PKI. Works on the state directory, also while the server runs.
    Tokens(cli::tokens::TokensArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check(args) => cli::check::run(args),
        Command::Serve(args) => cli::serve::run(args),
        Command::Dev(args) => cli::dev::run(args),
        Command::Certs(args) => cli::certs::run(args),
        Command::Tokens(args) => cli::tokens::run(args),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(err) => {
            eprintln!("cis490-reconciler: {err:#}");
            std::process::exit(1);
        }
    }
}
