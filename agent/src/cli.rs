//! The two subcommands, `capability` and `run`, and signal handling. `main` only parses.

use std::time::Duration;

use anyhow::Context;
use cis490_api::{Capability, Client};
use clap::{Parser, Subcommand, ValueEnum};
use tokio::sync::watch;

use crate::capability::{self, DetectOptions, NvmlProbe};
use crate::config::{AgentConfig, RunFlags};
use crate::worker::{Agent, TrainerRegistry};

/// How long the torch and git probes may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// cis490-agent: runs training jobs from a cis490 reconciler on this host.
#[derive(Debug, Parser)]
#[command(name = "cis490-agent", version = cis490_api::VERSION)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Detect and print what this host can run (the self-test run before enrolling).
    Capability {
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
        output: Output,
        #[command(flatten)]
        flags: RunFlags,
    },
    /// Claim and run jobs until SIGTERM/SIGINT.
    Run {
        #[command(flatten)]
        flags: RunFlags,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// Detects the host and applies `--advertise`.
pub async fn advertised_capability(cfg: &AgentConfig) -> anyhow::Result<Capability> {
    let opts = DetectOptions {
        work_dir: cfg.work_dir.clone(),
        python: cfg.python.clone(),
        probe_timeout: PROBE_TIMEOUT,
        labels: cfg.labels.clone(),
        max_concurrent: cfg.max_concurrent,
    };
    let mut cap = capability::detect(&opts, &NvmlProbe)
        .await
        .context("this host cannot run jobs")?;
    cfg.advertise.apply(&mut cap);
    Ok(cap)
}

/// `cis490-agent capability [-o json]`
pub async fn capability_command(flags: &RunFlags, output: Output) -> anyhow::Result<()> {
    let cfg = AgentConfig::resolve(flags)?;
    let cap = advertised_capability(&cfg).await?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&cap)?),
        Output::Text => print!("{}", capability::render_text(&cap)),
    }
    Ok(())
}

/// `cis490-agent run`
pub async fn run_command(flags: &RunFlags) -> anyhow::Result<()> {
    let cfg = AgentConfig::resolve(flags)?;
    let client = Client::new(cfg.server_url()?)?.with_worker_token(cfg.worker_token.clone());
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating state dir {}", cfg.state_dir.display()))?;
    let cap = advertised_capability(&cfg).await?;
    tracing::info!(
        worker = %cfg.name,
        cuda = cap.cuda,
        gpus = cap.gpus.len(),
        ram_mib = cap.ram_allocatable_mib,
        max_concurrent = cfg.max_concurrent,
        "agent starting"
    );
    let (tx, rx) = watch::channel(false);
    let trainers = TrainerRegistry::default();
    tokio::spawn(watch_signals(tx, trainers.clone()));
    let summary = Agent::new(cfg, client, cap, rx, trainers).run().await?;
    tracing::info!(jobs = summary.jobs.len(), "agent stopped");
    Ok(())
}

/// First SIGTERM/SIGINT: graceful shutdown. A second one: kill every trainer and exit now.
#[cfg(unix)]
async fn watch_signals(tx: watch::Sender<bool>, trainers: TrainerRegistry) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!(
        "shutting down: no new claims, releasing running jobs (signal again to stop at once)"
    );
    let _ = tx.send(true);
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::warn!("second signal: killing trainers and exiting now");
    trainers.kill_all();
    std::process::exit(130);
}

/// Windows: Ctrl-C (and the service stop a scheduled task sends) as the shutdown signal.
#[cfg(not(unix))]
async fn watch_signals(tx: watch::Sender<bool>, trainers: TrainerRegistry) {
    if tokio::signal::ctrl_c().await.is_err() {
        return;
    }
    let _ = tx.send(true);
    if tokio::signal::ctrl_c().await.is_ok() {
        trainers.kill_all();
        std::process::exit(130);
    }
}
