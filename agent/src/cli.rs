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
    // The probes run in their own process groups, out of reach of a terminal's Ctrl-C:
    // the signal has to reach us so that dropping the detection kills them.
    let mut shutdown = listen_for_signals(TrainerRegistry::default())?;
    let cfg = AgentConfig::resolve(flags)?;
    let cap = tokio::select! {
        cap = advertised_capability(&cfg) => cap?,
        _ = shutdown.wait_for(|s| *s) => anyhow::bail!("interrupted by a signal"),
    };
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&cap)?),
        Output::Text => print!("{}", capability::render_text(&cap)),
    }
    Ok(())
}

/// `cis490-agent run`
pub async fn run_command(flags: &RunFlags) -> anyhow::Result<()> {
    // Signals first: one that arrives while the host is being detected must stop the agent
    // cleanly (probes killed, exit 0), not kill it by the default action and orphan them.
    let trainers = TrainerRegistry::default();
    let mut shutdown = listen_for_signals(trainers.clone())?;
    let cfg = AgentConfig::resolve(flags)?;
    let client = Client::builder(cfg.server_url()?)
        .tls(cfg.tls.clone())
        .build()?
        .with_worker_token(cfg.worker_token.clone());
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating state dir {}", cfg.state_dir.display()))?;
    // Held for the agent's life: the leftover sweep below must never end the trainers of
    // another live agent on this state dir.
    let _state_lock =
        cis490_api::state_lock::StateLock::acquire(&cfg.state_dir, "agent.lock", "cis490-agent")?;
    let launch = trainer_launch(&cfg);
    if let Some(records) = &launch.records {
        for ended in crate::leftover_trainers::end_leftovers(records) {
            tracing::warn!(
                pgid = ended.pgid,
                job = %ended.job,
                processes = ended.processes,
                "ended a trainer a previous run of this agent left behind"
            );
        }
    }
    let cap = tokio::select! {
        cap = advertised_capability(&cfg) => cap?,
        _ = shutdown.wait_for(|s| *s) => {
            tracing::info!("signal during start-up: stopped before claiming anything");
            return Ok(());
        }
    };
    tracing::info!(
        worker = %cfg.name,
        cuda = cap.cuda,
        gpus = cap.gpus.len(),
        ram_mib = cap.ram_allocatable_mib,
        max_concurrent = cfg.max_concurrent,
        "agent starting"
    );
    let summary = Agent::new(cfg, client, cap, shutdown, trainers)
        .with_launch(launch)
        .run()
        .await?;
    tracing::info!(jobs = summary.jobs.len(), "agent stopped");
    Ok(())
}

/// Trainers start through this binary's parent-death shim (when it can find itself) and
/// are recorded under the state dir, where the next start finds what a killed agent left.
fn trainer_launch(cfg: &AgentConfig) -> crate::runner::Launch {
    let shim = match std::env::current_exe() {
        Ok(exe) => Some(exe),
        Err(e) => {
            tracing::warn!("cannot find the agent's own executable ({e}): trainers will not die with the agent");
            None
        }
    };
    crate::runner::Launch {
        shim,
        records: Some(crate::leftover_trainers::records_dir(&cfg.state_dir)),
    }
}

/// Installs the SIGTERM/SIGINT handlers now (before returning, so no signal that comes
/// later meets the default action) and watches them in a task. The receiver turns true on
/// the first signal; a second one kills every trainer in `trainers` and exits at once.
fn listen_for_signals(trainers: TrainerRegistry) -> anyhow::Result<watch::Receiver<bool>> {
    let signals = Signals::install().context("installing signal handlers")?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(watch_signals(signals, tx, trainers));
    Ok(rx)
}

/// The shutdown signals, registered with the OS.
#[cfg(unix)]
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Windows: Ctrl-C (and the service stop a scheduled task sends) as the shutdown signal.
#[cfg(windows)]
struct Signals(tokio::signal::windows::CtrlC);

#[cfg(windows)]
impl Signals {
    fn install() -> std::io::Result<Self> {
        tokio::signal::windows::ctrl_c().map(Self)
    }

    async fn recv(&mut self) {
        if self.0.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
    }
}

/// First signal: graceful shutdown. A second one: kill every trainer and exit now.
async fn watch_signals(mut signals: Signals, tx: watch::Sender<bool>, trainers: TrainerRegistry) {
    signals.recv().await;
    tracing::info!(
        "shutting down: no new claims, releasing running jobs (signal again to stop at once)"
    );
    let _ = tx.send(true);
    signals.recv().await;
    tracing::warn!("second signal: killing trainers and exiting now");
    trainers.kill_all();
    std::process::exit(130);
}
