//! `cis490-reconciler dev`: a whole fleet on one machine, like `nomad agent -dev`.
//!
//! The server runs in this process (the same [`Server`] `serve` runs); two agents run as
//! child processes, named after the example manifest's hosts so that every example job
//! can run on a laptop: `cpu-box` advertises no CUDA, `gpu-box` advertises one simulated
//! CUDA GPU with 24 GiB (no real GPU is used; the example trainer runs on the CPU either
//! way). State lives in `<workspace>/.cis490-dev/`, so running it again resumes.
//!
//! Stopping (Ctrl-C or SIGTERM): each agent gets SIGTERM and releases its jobs while the
//! server still answers, then the server stops. A second signal kills everything at once.
//!
//! `--tls`: on first start a lab CA, a server certificate and one client certificate per
//! agent are made in `<state>/tls/` (`certs init`, `certs issue-agent`); the server serves
//! HTTPS with client certificates required on worker routes, each agent gets its own
//! certificate, and the banner says how to point cis490ctl at the CA.
//!
//! The agents run in their own process groups, so a terminal's Ctrl-C reaches only this
//! process, which then stops them in order (a Ctrl-C reaching an agent directly as well
//! would count as its second signal, which skips releasing its jobs).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use rand::Rng;
use tokio::process::{Child, Command};

use super::serve::init_tracing;
use crate::certs;
use crate::queue::QueueConfig;
use crate::server::config::{
    check_listen, env as config_env, ConfigError, Secret, ServerConfig, TlsSettings,
};
use crate::server::Server;

/// The example manifest, relative to the workspace.
const EXAMPLE_MANIFEST: &str = "etc/training_manifest.toml.example";
/// The dev state folder's name inside the workspace (ignored by git).
const STATE_DIR_NAME: &str = ".cis490-dev";
/// The agent binary's name.
const AGENT_BIN: &str = "cis490-agent";
/// The ctl binary's name.
const CTL_BIN: &str = "cis490ctl";
/// How long agents get to release their jobs and exit after SIGTERM.
const AGENT_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Arguments of `dev`.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Address the in-process server listens on
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8787")]
    pub listen: String,
    /// The checkout holding etc/training_manifest.toml.example and etc/examples/ (the agents'
    /// working directory) [default: the current directory or the nearest parent holding it]
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// Dev state: queue, artifacts, manifest copy, tokens, logs [default: WORKSPACE/.cis490-dev]
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Do not run `cargo build` for the agent and ctl when started by `cargo run`
    #[arg(long)]
    pub no_build: bool,
    /// Serve HTTPS with client certificates: a lab CA, the server's certificate and one per
    /// agent are made in STATE_DIR/tls on first start
    #[arg(long)]
    pub tls: bool,
    /// Allow a non-loopback --listen address without --tls
    #[arg(long)]
    pub insecure: bool,
}

/// The dev fleet's certificate folder, made on first start by `dev --tls`.
struct DevTls {
    dir: PathBuf,
}

impl DevTls {
    /// Makes what is missing: the CA and server certificate, and each agent's certificate.
    fn prepare(state_dir: &Path) -> anyhow::Result<DevTls> {
        let dir = state_dir.join("tls");
        if !dir.join(certs::SERVER_CERT).is_file() || !dir.join(certs::SERVER_KEY).is_file() {
            let report = certs::init(&dir, &[], false).with_context(|| {
                format!("making the dev fleet's certificates in {}", dir.display())
            })?;
            eprintln!(
                "cis490 dev: made a lab CA and a server certificate ({}) in {}",
                report.sans.join(", "),
                dir.display()
            );
        }
        let tls = DevTls { dir };
        for spec in &AGENTS {
            let name = cis490_api::WorkerName::parse(spec.name)
                .context("a dev agent's name is not a worker name")?;
            if !tls.agent_cert(spec).is_file() || !tls.agent_key(spec).is_file() {
                certs::issue_agent(&tls.dir, &name, true)
                    .with_context(|| format!("making agent {}'s certificate", spec.name))?;
            }
        }
        Ok(tls)
    }

    fn ca(&self) -> PathBuf {
        self.dir.join(certs::CA_CERT)
    }

    fn agent_cert(&self, spec: &AgentSpec) -> PathBuf {
        self.dir.join(format!("{}.pem", spec.name))
    }

    fn agent_key(&self, spec: &AgentSpec) -> PathBuf {
        self.dir.join(format!("{}-key.pem", spec.name))
    }

    fn settings(&self) -> TlsSettings {
        TlsSettings {
            cert_file: self.dir.join(certs::SERVER_CERT),
            key_file: self.dir.join(certs::SERVER_KEY),
            client_ca_file: Some(self.ca()),
        }
    }
}

/// One local agent of the dev fleet.
struct AgentSpec {
    name: &'static str,
    description: &'static str,
    max_concurrent: u32,
    advertise: &'static str,
}

/// The example manifest's two training hosts.
const AGENTS: [AgentSpec; 2] = [
    AgentSpec {
        name: "cpu-box",
        description: "no CUDA",
        max_concurrent: 1,
        advertise: "cuda=false",
    },
    AgentSpec {
        name: "gpu-box",
        description: "simulated CUDA GPU, 24 GiB VRAM (no real GPU is used)",
        max_concurrent: 2,
        advertise: "cuda=true,gpus=1,vram_gib=24,ram_gib=32",
    },
];

/// A running agent child.
struct RunningAgent {
    name: &'static str,
    child: Child,
    log: PathBuf,
    /// The agent's process group (its own PID, taken at spawn: `Child::id` is gone once
    /// the child is reaped).
    #[cfg_attr(not(unix), allow(dead_code))]
    group: i32,
    exited: Option<ExitStatus>,
}

/// Returns the process exit code.
pub fn run(args: DevArgs) -> anyhow::Result<i32> {
    init_tracing();
    let workspace = find_workspace(args.workspace.as_deref())?;
    let state_dir = match &args.state_dir {
        Some(d) => d.clone(),
        None => workspace.join(STATE_DIR_NAME),
    };
    std::fs::create_dir_all(state_dir.join("logs"))
        .with_context(|| format!("creating {}", state_dir.display()))?;
    let manifest = state_dir.join("training_manifest.toml");
    if !manifest.exists() {
        let example = workspace.join(EXAMPLE_MANIFEST);
        std::fs::copy(&example, &manifest)
            .with_context(|| format!("copying {} to {}", example.display(), manifest.display()))?;
    }
    if !args.no_build {
        build_siblings_under_cargo()?;
    }
    let agent_bin = sibling_binary(AGENT_BIN)?;
    let operator_token = match std::env::var(config_env::OPERATOR_TOKEN)
        .ok()
        .filter(|t| !t.trim().is_empty())
    {
        Some(t) => TokenSource::Env(t),
        None => TokenSource::File(persistent_token(&state_dir.join("operator.token"))?),
    };
    let worker_token = persistent_token(&state_dir.join("worker.token"))?;

    let tls = if args.tls {
        Some(DevTls::prepare(&state_dir)?)
    } else {
        None
    };

    let mut config = ServerConfig::new(&manifest, &state_dir);
    config.listen = args.listen.clone();
    config.insecure = args.insecure;
    config.tls = tls.as_ref().map(DevTls::settings);
    config.operator_token = Secret::new(operator_token.value());
    config.worker_token = Secret::new(&worker_token);
    // Dev-friendly timings: edits and expired leases show within seconds.
    config.resync_interval = Duration::from_secs(10);
    config.sweep_interval = Duration::from_secs(1);
    config.queue = QueueConfig {
        node_stale_after_s: 30,
        ..QueueConfig::default()
    };
    match check_listen(&config) {
        Err(ConfigError::PlainHttp { addr, .. }) => bail!(
            "refusing to serve plain HTTP on {addr}: tokens, jobs and artifacts would cross the \
             network unencrypted. Pass --tls (dev makes a lab CA and certificates in {} and \
             points its agents at them), listen on 127.0.0.1, or pass --insecure if the network \
             is trusted",
            state_dir.join("tls").display()
        ),
        other => other?,
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        // First: from here on a signal is held for the loop below, never the default
        // action that would leave the agents orphaned.
        let mut signals = Signals::new()?;
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        let url = local_url(addr, tls.is_some());
        let server = Server::build(config).await?;
        let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
        let mut server_task = tokio::spawn(server.run(listener, async move {
            let _ = server_stopped.await;
        }));
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "cis490-reconciler listening on {url}")
                .and_then(|()| out.flush())
                .context("writing the listening line")?;
        }

        let mut agents = Vec::new();
        for spec in &AGENTS {
            match start_agent(
                &agent_bin,
                spec,
                &url,
                &workspace,
                &state_dir,
                &worker_token,
                tls.as_ref(),
            ) {
                Ok(agent) => agents.push(agent),
                Err(e) => {
                    stop_agents(&mut agents).await;
                    return Err(e);
                }
            }
        }
        let ca = tls.as_ref().map(DevTls::ca);
        print_banner(&manifest, &state_dir, &url, &operator_token, ca.as_deref());

        let mut check = tokio::time::interval(Duration::from_secs(1));
        let outcome = loop {
            tokio::select! {
                () = signals.next() => break Ok(()),
                r = &mut server_task => {
                    break match r {
                        Ok(Ok(())) => Err(anyhow::anyhow!("the server stopped by itself")),
                        Ok(Err(e)) => Err(anyhow::Error::new(e).context("the server stopped")),
                        Err(e) => Err(anyhow::anyhow!("the server task failed: {e}")),
                    };
                }
                _ = check.tick() => report_exited_agents(&mut agents),
            }
        };
        eprintln!("cis490 dev: stopping the agents (they release their jobs), then the server");
        tokio::select! {
            () = stop_agents(&mut agents) => {}
            () = signals.next() => {
                eprintln!("cis490 dev: second signal: killing everything now");
                for agent in &mut agents {
                    kill_group(agent);
                }
                return Ok(130);
            }
        }
        outcome?;
        let _ = stop_server.send(());
        match server_task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(anyhow::Error::new(e).context("stopping the server")),
            Err(e) => bail!("the server task failed: {e}"),
        }
        eprintln!("cis490 dev: stopped; run it again to resume");
        Ok(0)
    })
}

/// SIGINT and SIGTERM, listened to for the whole run: a signal arriving between two
/// waits is kept, not lost, and a second one is told apart from the first.
struct Signals {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                int: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
                term: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// Resolves at the next SIGINT or SIGTERM (Ctrl-C elsewhere).
    async fn next(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
        #[cfg(not(unix))]
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Where the operator token came from (the banner says so).
enum TokenSource {
    Env(String),
    File(String),
}

impl TokenSource {
    fn value(&self) -> &str {
        match self {
            TokenSource::Env(t) | TokenSource::File(t) => t,
        }
    }
}

/// Finds the checkout: `--workspace`, else the current directory or the nearest parent
/// holding the example manifest, else the package's checkout when started by `cargo run`,
/// else the folders above the executable (`target/release/..`).
fn find_workspace(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    let holds_example = |d: &Path| d.join(EXAMPLE_MANIFEST).is_file();
    if let Some(dir) = flag {
        if !holds_example(dir) {
            bail!(
                "{} has no {EXAMPLE_MANIFEST}: --workspace must name a cis490 checkout",
                dir.display()
            );
        }
        return Ok(dir.to_path_buf());
    }
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        candidates.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    if let Some(pkg) = cargo_package_dir() {
        candidates.extend(pkg.parent().map(Path::to_path_buf));
    }
    if let Ok(exe) = std::env::current_exe() {
        candidates.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    candidates
        .into_iter()
        .find(|d| holds_example(d))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "cannot find {EXAMPLE_MANIFEST}: run this from the cis490 checkout or pass \
                 --workspace DIR"
            )
        })
}

/// This package's folder when `cargo run` started us (cargo sets these variables for the
/// program it runs).
fn cargo_package_dir() -> Option<PathBuf> {
    let name = std::env::var("CARGO_PKG_NAME").ok()?;
    (name == env!("CARGO_PKG_NAME"))
        .then(|| std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from))
        .flatten()
}

/// Under `cargo run`, builds the agent and ctl in the same profile, so the README's one
/// command works on a fresh clone and never runs a stale agent.
fn build_siblings_under_cargo() -> anyhow::Result<()> {
    let (Some(pkg), Some(cargo)) = (cargo_package_dir(), std::env::var_os("CARGO")) else {
        return Ok(());
    };
    let exe = std::env::current_exe().context("locating this executable")?;
    let profile = exe
        .parent()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_string();
    let mut cmd = std::process::Command::new(cargo);
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(pkg.join("../Cargo.toml"))
        .args(["-p", AGENT_BIN, "-p", CTL_BIN]);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    eprintln!("cis490 dev: building {AGENT_BIN} and {CTL_BIN} ({profile})");
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build of {AGENT_BIN} and {CTL_BIN} failed ({status})");
    }
    Ok(())
}

/// A binary of this workspace beside the running executable.
fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this executable")?;
    let dir = exe.parent().context("this executable has no folder")?;
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.is_file() {
        bail!(
            "{} not found beside {}: build it with `cargo build --release -p {name}`, or start \
             the dev fleet with `cargo run --release -p cis490-reconciler -- dev` from the \
             checkout, which builds it",
            path.display(),
            exe.display()
        );
    }
    Ok(path)
}

/// Reads the token in `path`, or creates one there (owner-only) so that a rerun keeps it.
fn persistent_token(path: &Path) -> anyhow::Result<String> {
    if let Ok(text) = std::fs::read_to_string(path) {
        let token = text.trim();
        if !token.is_empty() {
            return Ok(token.to_string());
        }
    }
    let bytes: [u8; 24] = rand::rng().random();
    let token = hex::encode(bytes);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(file, "{token}").with_context(|| format!("writing {}", path.display()))?;
    Ok(token)
}

/// The URL this machine's agents and cis490ctl use: an unspecified listen address
/// (`0.0.0.0`) is reached through loopback, which the server certificate lists.
fn local_url(addr: std::net::SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    let mut local = addr;
    if addr.ip().is_unspecified() {
        local.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    format!("{scheme}://{local}")
}

fn start_agent(
    bin: &Path,
    spec: &AgentSpec,
    url: &str,
    workspace: &Path,
    state_dir: &Path,
    worker_token: &str,
    tls: Option<&DevTls>,
) -> anyhow::Result<RunningAgent> {
    let log = state_dir.join("logs").join(format!("{}.log", spec.name));
    let log_file =
        std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let mut cmd = Command::new(bin);
    cmd.arg("run")
        .args(["--server", url, "--name", spec.name])
        .arg("--work-dir")
        .arg(workspace)
        .arg("--state-dir")
        .arg(state_dir.join("agents").join(spec.name))
        .args([
            "--heartbeat-s",
            "2",
            // Short claim waits: a waiting claim advertises the slots free when it was
            // made, so a slot freed meanwhile is offered at the next one.
            "--claim-wait-s",
            "3",
            "--grace-s",
            "5",
        ])
        .arg("--max-concurrent")
        .arg(spec.max_concurrent.to_string())
        .args(["--advertise", spec.advertise]);
    if let Some(tls) = tls {
        cmd.arg("--ca-file")
            .arg(tls.ca())
            .arg("--cert-file")
            .arg(tls.agent_cert(spec))
            .arg("--key-file")
            .arg(tls.agent_key(spec));
    }
    cmd.env(config_env::WORKER_TOKEN, worker_token)
        .env_remove("CIS490_SERVER")
        .env_remove("CIS490_AGENT_CONFIG")
        .env_remove(cis490_api::tls::CA_FILE_ENV)
        .env_remove(cis490_api::tls::CERT_FILE_ENV)
        .env_remove(cis490_api::tls::KEY_FILE_ENV)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log_file))
        // A last resort if this process unwinds without stopping them.
        .kill_on_drop(true);
    #[cfg(unix)]
    cmd.process_group(0);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting agent {} ({})", spec.name, bin.display()))?;
    let group = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .context("the agent exited at once")?;
    Ok(RunningAgent {
        name: spec.name,
        child,
        log,
        group,
        exited: None,
    })
}

/// Says once when an agent exits on its own (the fleet keeps running without it).
fn report_exited_agents(agents: &mut [RunningAgent]) {
    for agent in agents.iter_mut().filter(|a| a.exited.is_none()) {
        if let Ok(Some(status)) = agent.child.try_wait() {
            kill_group(agent);
            agent.exited = Some(status);
            eprintln!(
                "cis490 dev: agent {} exited ({status}); see {}",
                agent.name,
                agent.log.display()
            );
        }
    }
}

/// SIGTERM to every agent, then waits for each to release its jobs and exit; one that
/// does not within the timeout is killed with its process group.
async fn stop_agents(agents: &mut [RunningAgent]) {
    for agent in agents.iter_mut().filter(|a| a.exited.is_none()) {
        terminate(agent);
    }
    let deadline = tokio::time::Instant::now() + AGENT_STOP_TIMEOUT;
    for agent in agents.iter_mut().filter(|a| a.exited.is_none()) {
        match tokio::time::timeout_at(deadline, agent.child.wait()).await {
            Ok(Ok(status)) => {
                // Anything the agent left in its process group (a capability probe still
                // running when a signal came before its handlers were set) goes too.
                kill_group(agent);
                agent.exited = Some(status);
                if !status.success() {
                    eprintln!(
                        "cis490 dev: agent {} exited with {status}; see {}",
                        agent.name,
                        agent.log.display()
                    );
                }
            }
            Ok(Err(e)) => eprintln!("cis490 dev: waiting for agent {}: {e}", agent.name),
            Err(_) => {
                eprintln!(
                    "cis490 dev: agent {} did not stop within {AGENT_STOP_TIMEOUT:?}; killing it",
                    agent.name
                );
                kill_group(agent);
                let _ = agent.child.wait().await;
            }
        }
    }
}

/// Asks an agent to stop (SIGTERM on Unix; elsewhere there is no gentle way: kill).
fn terminate(agent: &mut RunningAgent) {
    #[cfg(unix)]
    {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        if let Some(pid) = agent.child.id().and_then(|p| i32::try_from(p).ok()) {
            if let Err(e) = kill(Pid::from_raw(pid), Signal::SIGTERM) {
                tracing::warn!(agent = agent.name, error = %e, "cannot signal the agent");
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = agent.child.start_kill();
    }
}

/// Kills an agent and its process group at once.
fn kill_group(agent: &mut RunningAgent) {
    #[cfg(unix)]
    {
        use nix::sys::signal::{killpg, Signal};
        use nix::unistd::Pid;
        if agent.exited.is_none() && agent.group > 1 {
            let _ = killpg(Pid::from_raw(agent.group), Signal::SIGKILL);
        }
    }
    let _ = agent.child.start_kill();
}

/// The path shown to the user: relative to the current directory when under it.
fn shown(path: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| path.to_path_buf())
        .display()
        .to_string()
}

fn print_banner(
    manifest: &Path,
    state_dir: &Path,
    url: &str,
    token: &TokenSource,
    ca: Option<&Path>,
) {
    let bin_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf));
    let text = banner(manifest, state_dir, url, token, bin_dir.as_deref(), ca);
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// The start-up banner; `bin_dir` holds this workspace's binaries.
fn banner(
    manifest: &Path,
    state_dir: &Path,
    url: &str,
    token: &TokenSource,
    bin_dir: Option<&Path>,
    ca: Option<&Path>,
) -> String {
    let mut text = String::new();
    let mut line = |s: &str| {
        text.push_str(s);
        text.push('\n');
    };
    line("");
    line("cis490 dev fleet is up. Ctrl-C stops everything; running it again resumes.");
    line("");
    line(&format!(
        "  manifest  {}  (edit me: changes apply on save)",
        shown(manifest)
    ));
    match ca {
        Some(ca) => line(&format!(
            "  API       {url}  (TLS; agents show client certificates; CA {})",
            shown(ca)
        )),
        None => line(&format!("  API       {url}")),
    }
    for spec in &AGENTS {
        line(&format!(
            "  agent     {:<8} {} (max {} at once)",
            spec.name, spec.description, spec.max_concurrent
        ));
    }
    line(&format!(
        "  state     {}  (queue, artifacts, logs/ of each agent)",
        shown(state_dir)
    ));
    line("");
    line("In another terminal:");
    if let Some(dir) = bin_dir {
        if !dir
            .join(format!("{CTL_BIN}{}", std::env::consts::EXE_SUFFIX))
            .is_file()
        {
            line(&format!(
                "  cargo build --release -p {CTL_BIN}   # {CTL_BIN} is not built yet"
            ));
        }
        line(&format!("  export PATH=\"{}:$PATH\"", dir.display()));
    }
    line(&format!("  export CIS490_SERVER={url}"));
    if let Some(ca) = ca {
        line(&format!("  export CIS490_CA_FILE={}", ca.display()));
    }
    match token {
        TokenSource::File(t) => line(&format!("  export CIS490_OPERATOR_TOKEN={t}")),
        TokenSource::Env(_) => {
            line("  # CIS490_OPERATOR_TOKEN: the value already in your environment")
        }
    }
    line(&format!(
        "  {CTL_BIN} get jobs -w          # watch the jobs"
    ));
    line(&format!(
        "  {CTL_BIN} describe job <id>    # spec, events, errors"
    ));
    line(&format!(
        "  {CTL_BIN} pull <id>            # download a job's artifact"
    ));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_flag_must_name_a_checkout() {
        let dir = tempfile::tempdir().unwrap();
        let err = find_workspace(Some(dir.path())).unwrap_err().to_string();
        assert!(err.contains("--workspace"), "{err}");
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join(EXAMPLE_MANIFEST), "version = 1\n").unwrap();
        assert_eq!(find_workspace(Some(dir.path())).unwrap(), dir.path());
    }

    #[test]
    fn tokens_are_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("operator.token");
        let first = persistent_token(&path).unwrap();
        assert_eq!(first.len(), 48);
        assert_eq!(persistent_token(&path).unwrap(), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "token readable by others: {mode:o}");
        }
        let other = persistent_token(&dir.path().join("worker.token")).unwrap();
        assert_ne!(other, first);
    }

    #[test]
    fn banner_names_the_manifest_the_simulated_gpu_and_the_next_commands() {
        let token = TokenSource::File("abc123".into());
        let text = banner(
            Path::new("/w/.cis490-dev/training_manifest.toml"),
            Path::new("/w/.cis490-dev"),
            "http://127.0.0.1:8787",
            &token,
            Some(Path::new("/nowhere/bin")),
            None,
        );
        for want in [
            "training_manifest.toml  (edit me: changes apply on save)",
            "http://127.0.0.1:8787",
            "gpu-box  simulated CUDA GPU",
            "export CIS490_OPERATOR_TOKEN=abc123",
            "export CIS490_SERVER=http://127.0.0.1:8787",
            "cargo build --release -p cis490ctl",
            "cis490ctl get jobs -w",
            "cis490ctl describe job <id>",
            "cis490ctl pull <id>",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        let from_env = banner(
            Path::new("m.toml"),
            Path::new("s"),
            "http://x",
            &TokenSource::Env("secret-value".into()),
            None,
            None,
        );
        assert!(!from_env.contains("secret-value"), "{from_env}");
        assert!(!text.contains("CIS490_CA_FILE"), "{text}");
        let tls = banner(
            Path::new("m.toml"),
            Path::new("s"),
            "https://127.0.0.1:8787",
            &token,
            None,
            Some(Path::new("/w/.cis490-dev/tls/ca.pem")),
        );
        for want in [
            "export CIS490_SERVER=https://127.0.0.1:8787",
            "export CIS490_CA_FILE=/w/.cis490-dev/tls/ca.pem",
            "(TLS; agents show client certificates",
        ] {
            assert!(tls.contains(want), "missing {want:?} in:\n{tls}");
        }
    }

    #[test]
    fn local_urls_reach_an_unspecified_address_through_loopback() {
        let any: std::net::SocketAddr = "0.0.0.0:8787".parse().unwrap();
        assert_eq!(local_url(any, true), "https://127.0.0.1:8787");
        let v6: std::net::SocketAddr = "[::]:1".parse().unwrap();
        assert_eq!(local_url(v6, false), "http://[::1]:1");
        let lan: std::net::SocketAddr = "192.168.1.5:80".parse().unwrap();
        assert_eq!(local_url(lan, false), "http://192.168.1.5:80");
    }

    #[test]
    fn dev_tls_makes_each_certificate_once() {
        let dir = tempfile::tempdir().unwrap();
        let tls = DevTls::prepare(dir.path()).unwrap();
        let ca = std::fs::read(tls.ca()).unwrap();
        for spec in &AGENTS {
            assert!(tls.agent_cert(spec).is_file() && tls.agent_key(spec).is_file());
        }
        let again = DevTls::prepare(dir.path()).unwrap();
        assert_eq!(std::fs::read(again.ca()).unwrap(), ca, "the CA is kept");
        assert!(crate::server::tls::server_config(&again.settings()).is_ok());
    }
}
