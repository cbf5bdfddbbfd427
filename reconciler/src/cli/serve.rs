//! `cis490-reconciler serve`: the control plane.
//!
//! Settings: command-line flags beat environment variables (CIS490_MANIFEST,
//! CIS490_STATE_DIR, CIS490_LISTEN, CIS490_TLS_CERT_FILE, CIS490_TLS_KEY_FILE,
//! CIS490_CLIENT_CA_FILE), which beat the `--config` file, which beats the defaults. Tokens
//! come from CIS490_OPERATOR_TOKEN and CIS490_WORKER_TOKEN, or from files the config names.
//! Without an operator token the operator routes answer 403.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

use crate::queue::tokens::tokens_issued_in;
use crate::server::config::{
    check_listen_with, parse_database, resolve, Database, FileConfig, Flags,
};
use crate::server::Server;

/// Arguments of `serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The training manifest to reconcile [env: CIS490_MANIFEST]
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,
    /// Holds queue.db and the artifact store (models/) [env: CIS490_STATE_DIR]
    /// [default: /var/lib/cis490]
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The artifact store's root, when not STATE_DIR/models: one directory several servers
    /// on one PostgreSQL database share (a network file system) [env: CIS490_STORE_DIR]
    #[arg(long, value_name = "DIR")]
    pub store_dir: Option<PathBuf>,
    /// The queue's database: sqlite:PATH, or postgres://USER@HOST/DB (TLS:
    /// ?sslmode=verify-full&sslrootcert=CA.pem[&sslcert=FILE&sslkey=FILE]; plain text
    /// only to a Unix socket, loopback, or with sslmode=disable)
    /// [env: CIS490_DATABASE] [default: sqlite:STATE_DIR/queue.db]
    #[arg(long, value_name = "URL")]
    pub database: Option<String>,
    /// Address to listen on; port 0 picks a free port [env: CIS490_LISTEN]
    /// [default: 127.0.0.1:8787]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// A TOML config file (see etc/reconciler.toml.example): token files, upload and body
    /// caps, and what a client may cost: header_read_timeout_s, body_read_timeout_s,
    /// idle_timeout_s, tls_handshake_timeout_s, max_connections, max_concurrent_uploads,
    /// max_event_waits, max_claim_waits
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Serve HTTPS with this certificate chain (PEM; `certs init` makes server.pem)
    /// [env: CIS490_TLS_CERT_FILE]
    #[arg(long, value_name = "FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert-file (`certs init` makes server-key.pem)
    /// [env: CIS490_TLS_KEY_FILE]
    #[arg(long, value_name = "FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// Require a client certificate signed by this CA (PEM) on worker routes; the worker
    /// name is the certificate's (mTLS; `certs init` makes ca.pem) [env: CIS490_CLIENT_CA_FILE]
    #[arg(long, value_name = "FILE")]
    pub client_ca_file: Option<PathBuf>,
    /// Allow a non-loopback listen address without TLS or without a worker credential
    /// (a client CA, the shared worker token or per-worker tokens)
    #[arg(long)]
    pub insecure: bool,
}

/// Logs to stderr; `RUST_LOG` overrides the `info` default. Shared with `dev`.
pub(crate) fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never in log files or journald.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Resolves when SIGTERM or Ctrl-C (SIGINT) arrives.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("Ctrl-C received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}

/// Returns the process exit code.
pub fn run(args: ServeArgs) -> anyhow::Result<i32> {
    init_tracing();
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let flags = Flags {
        manifest: args.manifest,
        state_dir: args.state_dir,
        store_dir: args.store_dir,
        listen: args.listen,
        insecure: args.insecure,
        tls_cert_file: args.tls_cert_file,
        tls_key_file: args.tls_key_file,
        client_ca_file: args.client_ca_file,
    };
    let mut config = resolve(&flags, |k| std::env::var(k).ok(), file)?;
    if let Some(url) = &args.database {
        config.database = Some(parse_database(url)?);
    }
    let tokens_issued = match (&config.database, config.database_path()) {
        (Some(Database::Postgres(url)), _) => {
            use crate::queue::JobQueue;
            crate::queue::PgQueue::open(url, config.queue.clone())
                .and_then(|q| q.worker_tokens_exist())
                .context("reading the worker tokens on PostgreSQL")?
        }
        (_, Some(path)) => {
            tokens_issued_in(&path).with_context(|| format!("reading {}", path.display()))?
        }
        (_, None) => false,
    };
    let addrs = check_listen_with(&config, tokens_issued)?;
    let exposed = addrs.iter().any(|a| !a.ip().is_loopback());
    // What --insecure exposes is logged once the listener is bound (`Server::run`).
    config.require_worker_credentials = exposed && !config.insecure;
    if config.operator_token.is_none() {
        tracing::warn!(
            "no operator token configured: operator routes (cancel, requeue, reload, diff, \
             cordon, drain) answer 403 until CIS490_OPERATOR_TOKEN is set"
        );
    }
    tracing::debug!(?config, "configuration");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        let manifest = config.manifest.display().to_string();
        let state_dir = config.state_dir.display().to_string();
        let server = Server::build(config).await?;
        let scheme = if server.tls() { "https" } else { "http" };
        tracing::info!(%addr, %manifest, %state_dir, tls = server.tls(), "serving");
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "cis490-reconciler listening on {scheme}://{addr}")
                .and_then(|()| out.flush())
                .context("writing the listening line")?;
        }
        server.run(listener, shutdown_signal()).await?;
        Ok(0)
    })
}
