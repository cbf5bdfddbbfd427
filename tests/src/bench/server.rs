//! Starting the real `cis490-reconciler serve` for a figure, and the load generator's
//! client.

use std::path::{Path, PathBuf};

use anyhow::Context;
use cis490_api::Client;

use crate::scratch_postgres::ScratchPostgres;
use crate::Reconciler;

/// The queue database a figure's servers run on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// `STATE_DIR/queue.db`, the server's default.
    Sqlite,
    /// A fresh database per figure on the PostgreSQL server with this admin URL.
    Postgres { admin: String },
}

impl Backend {
    /// What follows the figure's number: "" on SQLite, "pg" on PostgreSQL ("1pg.").
    pub fn tag(&self) -> &'static str {
        match self {
            Backend::Sqlite => "",
            Backend::Postgres { .. } => "pg",
        }
    }

    /// What the figure's name says of its backend.
    pub fn label(&self) -> &'static str {
        match self {
            Backend::Sqlite => "",
            Backend::Postgres { .. } => " on PostgreSQL",
        }
    }

    /// A fresh database for one figure (none on SQLite); dropped with the value.
    pub fn database(&self, figure: &str) -> anyhow::Result<Option<ScratchPostgres>> {
        match self {
            Backend::Sqlite => Ok(None),
            Backend::Postgres { admin } => {
                ScratchPostgres::create_on(admin, &format!("bench_{figure}")).map(Some)
            }
        }
    }
}

/// The operator token the benchmark's servers use.
pub const OPERATOR_TOKEN: &str = "bench-operator-token";
/// The worker token the benchmark's servers use.
pub const WORKER_TOKEN: &str = "bench-worker-token";

/// A running server with its manifest and state directory.
pub struct BenchServer {
    pub reconciler: Reconciler,
    pub manifest: PathBuf,
    pub state_dir: PathBuf,
    pub stderr_log: PathBuf,
}

impl BenchServer {
    /// Writes `manifest_text` to `dir/training_manifest.toml` and starts
    /// `cis490-reconciler serve` on a loopback port with its state in `dir/state`.
    pub fn start(dir: &Path, manifest_text: &str) -> anyhow::Result<BenchServer> {
        Self::start_with_config(dir, manifest_text, None)
    }

    /// [`BenchServer::start`] with `config` (TOML keys of `serve --config`) written to
    /// `dir/reconciler.toml` and passed.
    pub fn start_with_config(
        dir: &Path,
        manifest_text: &str,
        config: Option<&str>,
    ) -> anyhow::Result<BenchServer> {
        Self::start_on(dir, manifest_text, config, None, "")
    }

    /// [`BenchServer::start_with_config`] on the queue `database` (a URL; None: SQLite in
    /// the state dir). `instance` tells several servers in one `dir` apart (their state
    /// dirs and logs); "" for the first.
    pub fn start_on(
        dir: &Path,
        manifest_text: &str,
        config: Option<&str>,
        database: Option<&str>,
        instance: &str,
    ) -> anyhow::Result<BenchServer> {
        let manifest = dir.join("training_manifest.toml");
        std::fs::write(&manifest, manifest_text)
            .with_context(|| format!("writing {}", manifest.display()))?;
        let suffix = if instance.is_empty() {
            String::new()
        } else {
            format!("-{instance}")
        };
        let state_dir = dir.join(format!("state{suffix}"));
        std::fs::create_dir_all(&state_dir)?;
        let stderr_log = dir.join(format!("reconciler{suffix}.log"));
        let manifest_arg = manifest.display().to_string();
        let state_arg = state_dir.display().to_string();
        let mut args = vec!["--manifest", &manifest_arg, "--state-dir", &state_arg];
        if let Some(url) = database {
            args.extend(["--database", url]);
        }
        let config_file = dir.join("reconciler.toml");
        let config_arg = config_file.display().to_string();
        if let Some(text) = config {
            std::fs::write(&config_file, text)
                .with_context(|| format!("writing {}", config_file.display()))?;
            args.extend(["--config", &config_arg]);
        }
        let reconciler = Reconciler::start(
            &args,
            &[
                ("CIS490_OPERATOR_TOKEN", OPERATOR_TOKEN),
                ("CIS490_WORKER_TOKEN", WORKER_TOKEN),
                ("RUST_LOG", "warn"),
            ],
            &stderr_log,
        )
        .context("starting cis490-reconciler serve")?;
        Ok(BenchServer {
            reconciler,
            manifest,
            state_dir,
            stderr_log,
        })
    }

    /// A client with both tokens.
    /// A server whose queue holds `jobs` pending jobs of the workload (entries of 10,000
    /// seeds, the manifest cap raised to fit), once every one is pending.
    pub async fn start_pending(dir: &Path, jobs: usize) -> anyhow::Result<BenchServer> {
        let config = format!("max_manifest_jobs = {}\n", jobs + 10);
        let server = BenchServer::start_with_config(
            dir,
            &super::workload::manifest_text(jobs, 10_000, &["true"], 0),
            Some(&config),
        )?;
        super::claim_throughput::wait_pending(&server.client()?, jobs as u64).await?;
        Ok(server)
    }

    pub fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::new(&self.reconciler.url)?
            .with_worker_token(Some(WORKER_TOKEN.to_string()))
            .with_operator_token(Some(OPERATOR_TOKEN.to_string())))
    }

    /// The server's process ID.
    pub fn pid(&self) -> u32 {
        self.reconciler.process.pid()
    }
}

/// Why the HTTP figures cannot run, or None when a server starts and answers a health
/// check. Run once before the HTTP figures so each can say "not measured: <why>".
pub async fn unavailable(dir: &Path) -> Option<String> {
    let text = super::workload::manifest_text(1, 1, &["true"], 0);
    let server = match BenchServer::start(dir, &text) {
        Ok(s) => s,
        Err(e) => {
            let first = format!("{e:#}");
            let first = first.lines().next().unwrap_or_default();
            let first = first
                .split("; its stderr")
                .next()
                .unwrap_or_default()
                .to_string();
            return Some(format!(
                "the reconciler's HTTP server does not start ({first})"
            ));
        }
    };
    let client = match server.client() {
        Ok(c) => c,
        Err(e) => return Some(format!("client: {e:#}")),
    };
    match client.health().await {
        Ok(_) => None,
        Err(e) => Some(format!("the reconciler's /v1/health fails ({e})")),
    }
}

/// Starts the real `cis490-agent run` named `name` against `server`, its work and state
/// under `dir`, with `extra` flags; its stderr goes to `dir/<name>.log`.
pub fn start_agent(
    server: &BenchServer,
    dir: &Path,
    name: &str,
    extra: &[&str],
) -> anyhow::Result<crate::ChildGuard> {
    let mut cmd = crate::command_dying_with_parent(crate::bin("cis490-agent")?);
    let work = dir.join(format!("{name}-work"));
    let state = dir.join(format!("{name}-state"));
    std::fs::create_dir_all(&work)?;
    cmd.arg("run")
        .args(["--server", &server.reconciler.url, "--name", name])
        .arg("--work-dir")
        .arg(&work)
        .arg("--state-dir")
        .arg(&state)
        .args(extra)
        .env("CIS490_WORKER_TOKEN", WORKER_TOKEN)
        .env_remove("CIS490_SERVER")
        .env_remove("CIS490_AGENT_CONFIG")
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("{name}.log")))?);
    crate::ChildGuard::spawn(name, cmd)
}

/// Polls the server's worker list until `name` is there (the agent registered).
pub async fn wait_registered(client: &Client, name: &str) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Ok(workers) = client.workers().await {
            if workers.iter().any(|w| w.name.as_str() == name) {
                return Ok(());
            }
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("agent {name} did not register within 60 s");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
