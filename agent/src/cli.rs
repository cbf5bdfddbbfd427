//! The two subcommands, `capability` and `run`, and signal handling. `main` only parses.

use std::time::Duration;

use anyhow::Context;
use cis490_api::{Capability, Client, ClientError};
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
    /// Check that the server answers and accepts this agent's worker credential for its
    /// --name (GET /v1/health, then GET /v1/whoami; changes nothing). Exit 1 with the
    /// reason otherwise. The install scripts run it as their self-test.
    CheckServer {
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
    for warning in cfg.advertise.check(&cap)? {
        tracing::warn!("{warning}");
    }
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

/// The client `run` and `check-server` talk to the reconciler with: its TLS files and its
/// worker token.
fn server_client(cfg: &AgentConfig) -> anyhow::Result<Client> {
    Ok(Client::builder(cfg.server_url()?)
        .tls(cfg.tls.clone())
        .build()?
        .with_worker_token(cfg.worker_token.clone()))
}

/// How long each call of `check-server` may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(20);

/// `cis490-agent check-server`: prints what it checked; any failure is the error.
pub async fn check_server_command(flags: &RunFlags) -> anyhow::Result<()> {
    let cfg = AgentConfig::resolve(flags)?;
    let url = cfg.server_url()?.to_string();
    let client = server_client(&cfg)?;
    let health = tokio::time::timeout(CHECK_TIMEOUT, client.health())
        .await
        .map_err(|_| anyhow::anyhow!("the reconciler at {url} did not answer within {CHECK_TIMEOUT:?}: check --server / `server` and that the server runs"))?
        .map_err(|e| anyhow::anyhow!("{e}: check --server / `server` and that the server runs and is reachable from this host"))?;
    println!(
        "server {url}: {} (version {})",
        health.status, health.version
    );
    for warning in &health.warnings {
        println!("  server warning: {warning}");
    }
    let me = tokio::time::timeout(CHECK_TIMEOUT, client.whoami())
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "the reconciler at {url} did not answer GET /v1/whoami within {CHECK_TIMEOUT:?}"
            )
        })?
        .map_err(|e| credential_problem(&e, cfg.worker_token.is_some()))?;
    let name = &cfg.name;
    match &me.worker {
        Some(bound) if bound == name => {
            println!(
                "worker credential: accepted, {} of worker {bound}",
                me.credential
            );
        }
        Some(bound) => anyhow::bail!(
            "the {} belongs to worker {bound}, but this agent runs as worker {name}: set \
             --name / `name` to {bound}, or issue a token for {name} \
             (cis490-reconciler tokens issue {name})",
            me.credential
        ),
        None => println!(
            "worker credential: accepted ({}): this agent may act as any worker, {name} included",
            me.credential
        ),
    }
    Ok(())
}

/// A refused whoami, with what fixes it.
fn credential_problem(e: &ClientError, has_token: bool) -> anyhow::Error {
    match e.status().map(|s| s.as_u16()) {
        Some(401) if !has_token => anyhow::anyhow!(
            "the server needs a worker token and this agent has none: put the token in a file \
             only root and the agent's user can read and name it as worker_token_file (or \
             --worker-token-file / CIS490_WORKER_TOKEN_FILE) ({e})"
        ),
        Some(401) | Some(403) => anyhow::anyhow!(
            "the server refused this agent's worker token ({e}): use the token \
             `cis490-reconciler tokens issue NAME` printed for this worker (a new issue \
             replaces the old one), or the server's shared worker token"
        ),
        _ => anyhow::anyhow!("GET /v1/whoami failed: {e}"),
    }
}

/// `cis490-agent run`
pub async fn run_command(flags: &RunFlags) -> anyhow::Result<()> {
    // Signals first: one that arrives while the host is being detected must stop the agent
    // cleanly (probes killed, exit 0), not kill it by the default action and orphan them.
    let trainers = TrainerRegistry::default();
    let mut shutdown = listen_for_signals(trainers.clone())?;
    let cfg = AgentConfig::resolve(flags)?;
    let client = server_client(&cfg)?;
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating state dir {}", cfg.state_dir.display()))?;
    // Held for the agent's life: the leftover sweep below must never end the trainers of
    // another live agent on this state dir.
    let _state_lock =
        cis490_api::state_lock::StateLock::acquire(&cfg.state_dir, "agent.lock", "cis490-agent")?;
    let instance = succeeding_instance(&cfg.state_dir);
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
    let mut cap = tokio::select! {
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
    cap.instance = Some(instance);
    let summary = Agent::new(cfg, client, cap, shutdown, trainers)
        .with_launch(launch)
        .run()
        .await?;
    tracing::info!(jobs = summary.jobs.len(), "agent stopped");
    Ok(())
}

/// This process's instance, naming the one its previous life on this state dir had (kept
/// in `<state_dir>/instance`). Called under the state dir's lock, so that life is over and
/// the server may hand the worker name over at once.
fn succeeding_instance(state_dir: &std::path::Path) -> cis490_api::AgentInstance {
    let path = state_dir.join("instance");
    let mut instance = crate::worker::new_instance();
    instance.replaces = std::fs::read_to_string(&path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|id| cis490_api::AgentInstance::id_problem(id).is_none());
    if let Err(e) = std::fs::write(&path, format!("{}\n", instance.id)) {
        tracing::warn!(path = %path.display(), "cannot record this agent's instance: {e}");
    }
    instance
}

/// Trainers start watched by the trainer guard (else through the parent-death shim) and
/// are recorded under the state dir, where the next start finds what a killed agent left.
fn trainer_launch(cfg: &AgentConfig) -> crate::runner::Launch {
    use crate::runner::DiesWithAgent;
    let records = Some(crate::leftover_trainers::records_dir(&cfg.state_dir));
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            tracing::warn!("cannot find the agent's own executable ({e}): trainers will not die with the agent");
            return crate::runner::Launch {
                death: DiesWithAgent::Not,
                records,
            };
        }
    };
    match crate::trainer_guard::TrainerGuard::start(&exe) {
        Ok(guard) => crate::runner::Launch {
            death: DiesWithAgent::Guard(std::sync::Arc::new(guard)),
            records,
        },
        Err(e) => {
            tracing::warn!("cannot start the trainer guard ({e}): trainers start through the parent-death shim");
            crate::runner::Launch {
                death: DiesWithAgent::Shim(exe),
                records,
            }
        }
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
