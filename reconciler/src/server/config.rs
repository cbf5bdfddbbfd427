//! The server's settings: defaults, then the config file, then environment variables, then
//! command-line flags (each later source wins). Secrets are redacted in `Debug`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use cis490_api::config_file::{self, ConfigFileError};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::limits::RequestCaps;
use super::listen::ConnectionOptions;
use crate::queue::{Clock, QueueConfig, SystemClock};

/// Default `--listen`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8787";
/// Default `--state-dir`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/cis490";
/// Default upload cap: 4 GiB.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 4 << 30;
/// Default cap on JSON (and manifest-text) request bodies: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;

/// Environment variables `serve` reads.
pub mod env {
    pub const MANIFEST: &str = "CIS490_MANIFEST";
    pub const STATE_DIR: &str = "CIS490_STATE_DIR";
    pub const LISTEN: &str = "CIS490_LISTEN";
    pub const OPERATOR_TOKEN: &str = "CIS490_OPERATOR_TOKEN";
    pub const WORKER_TOKEN: &str = "CIS490_WORKER_TOKEN";
    pub const TLS_CERT_FILE: &str = "CIS490_TLS_CERT_FILE";
    pub const TLS_KEY_FILE: &str = "CIS490_TLS_KEY_FILE";
    pub const CLIENT_CA_FILE: &str = "CIS490_CLIENT_CA_FILE";
    pub const DATABASE: &str = "CIS490_DATABASE";
    pub const STORE_DIR: &str = "CIS490_STORE_DIR";
}

/// The server's TLS files (PEM). Read when the server is built (see `server::tls`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The server's certificate chain, leaf first (`--tls-cert-file`).
    pub cert_file: PathBuf,
    /// The private key of that certificate (`--tls-key-file`).
    pub key_file: PathBuf,
    /// CA certificates that sign client certificates (`--client-ca-file`). When set, worker
    /// routes require a client certificate and the worker name is the certificate's.
    pub client_ca_file: Option<PathBuf>,
}

/// A token. Never printed: `Debug` shows `Secret(redacted)`.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// None for an empty (or all-whitespace) value, which means "not configured".
    pub fn new(value: &str) -> Option<Secret> {
        let trimmed = value.trim();
        (!trimmed.is_empty()).then(|| Secret(trimmed.to_string()))
    }

    /// Compares in constant time. Both sides are hashed first, so neither the content nor
    /// the length of the configured token leaks through timing.
    pub fn matches(&self, given: &str) -> bool {
        let expected = Sha256::digest(self.0.as_bytes());
        let given = Sha256::digest(given.as_bytes());
        expected.ct_eq(&given).into()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

/// Everything the server needs to run.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The manifest file to watch and reconcile.
    pub manifest: PathBuf,
    /// Holds `queue.db` and the artifact store (`models/`).
    pub state_dir: PathBuf,
    /// The artifact store's root when it is not `state_dir/models`: a directory several
    /// servers on one PostgreSQL database share.
    pub store_dir: Option<PathBuf>,
    /// The queue's database when `--database` names one; None: the SQLite file
    /// `state_dir/queue.db`.
    pub database: Option<Database>,
    /// Where to listen (used by `serve`; tests pass their own listener).
    pub listen: String,
    /// Allow a non-loopback listen address without TLS or without a worker credential.
    pub insecure: bool,
    /// Serve HTTPS with these files; None: plain HTTP.
    pub tls: Option<TlsSettings>,
    /// `X-Operator-Token`; when None, operator routes answer 403.
    pub operator_token: Option<Secret>,
    /// The shared `Authorization: Bearer` token (proves no worker name). Without it and
    /// without per-worker tokens, worker routes are open (see `require_worker_credentials`).
    pub worker_token: Option<Secret>,
    /// Refuse worker requests even while no worker credential exists (set by `serve` when
    /// it listens beyond loopback without `--insecure`), so revoking the last per-worker
    /// token of an exposed server closes the worker routes instead of opening them.
    pub require_worker_credentials: bool,
    /// Require a worker or operator token on read routes too.
    pub protect_reads: bool,
    /// Let operators replace the manifest file through `PUT /v1/manifest`
    /// (`cis490ctl apply -f`); the server then needs write access to its directory.
    pub allow_manifest_writes: bool,
    pub max_upload_bytes: u64,
    pub max_body_bytes: usize,
    /// Most jobs the manifest may make; more is an invalid manifest (nothing changes).
    pub max_manifest_jobs: usize,
    /// How often the manifest is reconciled even when no change was seen.
    pub resync_interval: Duration,
    /// How often expired leases are swept.
    pub sweep_interval: Duration,
    /// Quiet time after a file event before the manifest is read.
    pub watch_debounce: Duration,
    /// Watch the manifest's directory (off: only start-up, resync and the reload route).
    pub watch: bool,
    pub queue: QueueConfig,
    /// The queue's clock (tests move a `ManualClock`).
    pub clock: std::sync::Arc<dyn Clock>,
    /// Timeouts and the cap on open connections.
    pub connections: ConnectionOptions,
    /// Caps on concurrent uploads and long-polls.
    pub caps: RequestCaps,
}

impl ServerConfig {
    /// Defaults for everything but the two paths.
    pub fn new(manifest: impl Into<PathBuf>, state_dir: impl Into<PathBuf>) -> Self {
        Self {
            manifest: manifest.into(),
            state_dir: state_dir.into(),
            store_dir: None,
            database: None,
            listen: DEFAULT_LISTEN.to_string(),
            insecure: false,
            tls: None,
            operator_token: None,
            worker_token: None,
            require_worker_credentials: false,
            protect_reads: false,
            allow_manifest_writes: true,
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_manifest_jobs: crate::manifest::DEFAULT_MAX_MANIFEST_JOBS,
            resync_interval: Duration::from_secs(60),
            sweep_interval: Duration::from_secs(5),
            watch_debounce: Duration::from_millis(200),
            watch: true,
            queue: QueueConfig::default(),
            clock: std::sync::Arc::new(SystemClock),
            connections: ConnectionOptions::default(),
            caps: RequestCaps::default(),
        }
    }

    /// The queue's SQLite file: the one `--database` names, else `state_dir/queue.db`;
    /// None when the queue is on PostgreSQL.
    pub fn database_path(&self) -> Option<PathBuf> {
        match &self.database {
            None => Some(self.state_dir.join("queue.db")),
            Some(Database::Sqlite(path)) => Some(path.clone()),
            Some(Database::Postgres(_)) => None,
        }
    }

    /// The artifact store's root: `store_dir`, else `state_dir/models`.
    pub fn store_root(&self) -> PathBuf {
        self.store_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("models"))
    }

    /// Worker routes require a TLS client certificate.
    pub fn requires_client_certs(&self) -> bool {
        self.tls
            .as_ref()
            .is_some_and(|t| t.client_ca_file.is_some())
    }

    /// Something proves who may call worker routes: a worker token or client certificates.
    pub fn has_worker_credential(&self) -> bool {
        self.worker_token.is_some() || self.requires_client_certs()
    }
}

/// What the server tells clients about its own security (`GET /v1/health`): computed once
/// from the settings and the address it actually listens on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecurityPosture {
    pub tls: bool,
    pub client_certs: bool,
    /// `--insecure` relaxed a safe default (see [`check_listen`]).
    pub insecure: bool,
    pub warnings: Vec<String>,
}

impl SecurityPosture {
    /// The posture of `config` listening on `addr` (`exposed`: not loopback only).
    pub fn of(config: &ServerConfig, addr: &str, exposed: bool) -> SecurityPosture {
        let mut warnings = Vec::new();
        if exposed && config.tls.is_none() {
            warnings.push(format!(
                "plain HTTP on {addr} (--insecure): tokens, jobs and artifacts cross the network \
                 unencrypted; give the server --tls-cert-file and --tls-key-file \
                 (`cis490-reconciler certs init` makes them)"
            ));
        }
        // Open or closed worker routes depend on the per-worker tokens issued, which change
        // while the server runs: `auth::worker_credential_warnings` says those.
        SecurityPosture {
            tls: config.tls.is_some(),
            client_certs: config.requires_client_certs(),
            insecure: !warnings.is_empty()
                || (exposed && config.insecure && !config.has_worker_credential()),
            warnings,
        }
    }
}

/// The optional TOML config file (`--config FILE`); see `etc/reconciler.toml.example`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub manifest: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    /// The artifact store's root (default `STATE_DIR/models`).
    pub store_dir: Option<PathBuf>,
    /// The queue's database as a URL (`sqlite:PATH`; default `sqlite:STATE_DIR/queue.db`).
    pub database: Option<String>,
    pub listen: Option<String>,
    /// A file holding the operator token (used when CIS490_OPERATOR_TOKEN is unset).
    pub operator_token_file: Option<PathBuf>,
    /// A file holding the worker token (used when CIS490_WORKER_TOKEN is unset).
    pub worker_token_file: Option<PathBuf>,
    /// The server's certificate chain (PEM); with `tls_key_file`, the server speaks HTTPS.
    pub tls_cert_file: Option<PathBuf>,
    /// The private key (PEM) of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// CA certificates (PEM) of client certificates; worker routes then require one.
    pub client_ca_file: Option<PathBuf>,
    pub protect_reads: Option<bool>,
    /// `PUT /v1/manifest` (`cis490ctl apply -f`) may replace the manifest (default true).
    pub allow_manifest_writes: Option<bool>,
    pub max_upload_bytes: Option<u64>,
    pub max_body_bytes: Option<usize>,
    /// Most jobs the manifest may make (default 100,000).
    pub max_manifest_jobs: Option<usize>,
    pub resync_interval_s: Option<u64>,
    pub sweep_interval_s: Option<u64>,
    pub watch_debounce_ms: Option<u64>,
    pub watch: Option<bool>,
    pub prefer_cuda_wait_s: Option<u64>,
    pub node_stale_after_s: Option<u64>,
    /// The most log text kept per attempt (bytes); past it the first half and the latest
    /// part are kept, with a truncation marker between them.
    pub max_log_bytes_per_attempt: Option<u64>,
    /// Seconds a job that failed on a worker waits for a worker it has not failed on
    /// before that worker may take it again.
    pub retry_elsewhere_wait_s: Option<u64>,
    /// Seconds a client may take to send a request's headers.
    pub header_read_timeout_s: Option<u64>,
    /// Seconds a request body may send nothing before it is cut off.
    pub body_read_timeout_s: Option<u64>,
    /// Seconds a kept-alive connection may wait for its next request.
    pub idle_timeout_s: Option<u64>,
    /// Seconds a client may take to finish the TLS handshake.
    pub tls_handshake_timeout_s: Option<u64>,
    /// Open connections at most; more are closed as soon as they are accepted.
    pub max_connections: Option<usize>,
    /// Uploads at once; more are answered 503 `busy`.
    pub max_concurrent_uploads: Option<usize>,
    /// Waiting `GET /v1/events?wait=` at once; more are answered 429.
    pub max_event_waits: Option<usize>,
    /// Waiting `POST /v1/job/claim?wait=` at once; more are answered 429.
    pub max_claim_waits: Option<usize>,
}

/// Why the settings are unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file (or a token file it names) could not be read or parsed.
    #[error(transparent)]
    File(#[from] ConfigFileError),
    /// No manifest was named anywhere.
    #[error("no manifest given: pass --manifest FILE, set CIS490_MANIFEST, or set `manifest` in the config file")]
    NoManifest,
    /// The listen address does not parse or resolve.
    #[error("invalid listen address {addr:?}: {message}")]
    BadListen { addr: String, message: String },
    /// A non-loopback address without a worker token and without `--insecure`.
    #[error(
        "refusing to listen on {addr} without a worker token: any host that can reach it could \
         claim jobs and upload artifacts. Issue per-worker tokens (cis490-reconciler tokens \
         issue NAME), set CIS490_WORKER_TOKEN (or worker_token_file in the config file), or \
         pass --insecure if the network is trusted"
    )]
    Exposed { addr: String },
    /// A non-loopback address without TLS and without `--insecure`.
    #[error("{}", plain_http_message(addr, *no_worker_credential))]
    PlainHttp {
        addr: String,
        /// There is no worker credential either.
        no_worker_credential: bool,
    },
    /// Only one of the certificate and its key was given.
    #[error(
        "TLS needs both --tls-cert-file ({cert_env}) and --tls-key-file ({key_env}); only \
         {given} was given"
    )]
    HalfTls {
        given: &'static str,
        cert_env: &'static str,
        key_env: &'static str,
    },
    /// `--database` names a backend this build does not have.
    #[error(
        "database URL {url:?}: the {scheme}: scheme is not supported by this build; only \
         sqlite: (e.g. --database sqlite:/var/lib/cis490/queue.db) and postgres:// are"
    )]
    UnsupportedDatabase { url: String, scheme: String },
    /// `--database` is not `sqlite:PATH`.
    #[error("database URL {url:?}: {why} (expected sqlite:PATH)")]
    BadDatabase { url: String, why: &'static str },
    /// A timeout or cap of the config file that cannot work.
    #[error("config key {key} = {value}: {why}")]
    BadLimit {
        key: &'static str,
        value: u64,
        why: &'static str,
    },
    /// A client CA without a server certificate.
    #[error(
        "--client-ca-file needs TLS: give the server a certificate too with --tls-cert-file and \
         --tls-key-file (`cis490-reconciler certs init --dir DIR` makes server.pem, \
         server-key.pem and the ca.pem to pass as --client-ca-file)"
    )]
    ClientCaWithoutTls,
}

fn plain_http_message(addr: &str, no_worker_credential: bool) -> String {
    let (what, risk, fix) = if no_worker_credential {
        (
            "plain HTTP and no worker token",
            ", and any host that can reach it could claim jobs and upload artifacts",
            "; and set CIS490_WORKER_TOKEN (or worker_token_file, or --client-ca-file for \
             client certificates)",
        )
    } else {
        ("plain HTTP", "", "")
    };
    format!(
        "refusing to listen on {addr} with {what}: tokens, jobs and artifacts would cross the \
         network unencrypted{risk}. Give the server a certificate with --tls-cert-file FILE \
         --tls-key-file FILE (`cis490-reconciler certs init --dir DIR` makes a lab CA and \
         one){fix}; or listen on 127.0.0.1; or pass --insecure if the network is trusted"
    )
}

impl FileConfig {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        Ok(config_file::load_toml(path)?)
    }
}

/// What the command line said (None: not given).
#[derive(Debug, Clone, Default)]
pub struct Flags {
    pub manifest: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub store_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub insecure: bool,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub client_ca_file: Option<PathBuf>,
}

fn read_token_file(path: &Path) -> Result<Option<Secret>, ConfigError> {
    Ok(Secret::new(&config_file::read_text(path)?))
}

/// Which database holds the queue.
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    /// A SQLite file (`sqlite:PATH`).
    Sqlite(PathBuf),
    /// A PostgreSQL server, as its `postgres://` (or `postgresql://`) URL. The URL may hold
    /// a password, so `Debug` shows only the scheme.
    Postgres(String),
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Database::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            Database::Postgres(_) => f.write_str("Postgres(<url redacted>)"),
        }
    }
}

/// The database a `--database` URL names: `postgres://...` (or `postgresql://...`), else a
/// SQLite file ([`sqlite_path`]).
pub fn parse_database(url: &str) -> Result<Database, ConfigError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Database::Postgres(url.to_string()));
    }
    sqlite_path(url).map(Database::Sqlite)
}

/// The SQLite file a `--database` URL names: `sqlite:PATH` (or `sqlite://PATH`). Any other
/// scheme is refused, naming it.
pub fn sqlite_path(url: &str) -> Result<PathBuf, ConfigError> {
    let bad = |why| ConfigError::BadDatabase {
        url: url.to_string(),
        why,
    };
    let Some((scheme, rest)) = url.split_once(':') else {
        return Err(bad("no scheme"));
    };
    if scheme != "sqlite" {
        return Err(ConfigError::UnsupportedDatabase {
            url: url.to_string(),
            scheme: scheme.to_string(),
        });
    }
    let path = rest.strip_prefix("//").unwrap_or(rest);
    if path.is_empty() {
        return Err(bad("no path"));
    }
    Ok(PathBuf::from(path))
}

/// Merges the sources: flags > environment (`env` looks a variable up) > config file >
/// defaults.
pub fn resolve(
    flags: &Flags,
    env: impl Fn(&str) -> Option<String>,
    file: FileConfig,
) -> Result<ServerConfig, ConfigError> {
    let env_nonempty = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let limits = file_limits(&file)?;
    let manifest = flags
        .manifest
        .clone()
        .or_else(|| env_nonempty(env::MANIFEST).map(PathBuf::from))
        .or(file.manifest)
        .ok_or(ConfigError::NoManifest)?;
    let state_dir = flags
        .state_dir
        .clone()
        .or_else(|| env_nonempty(env::STATE_DIR).map(PathBuf::from))
        .or(file.state_dir)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    let mut config = ServerConfig::new(manifest, state_dir);
    config.store_dir = flags
        .store_dir
        .clone()
        .or_else(|| env_nonempty(env::STORE_DIR).map(PathBuf::from))
        .or(file.store_dir);
    if let Some(url) = env_nonempty(env::DATABASE).or(file.database) {
        config.database = Some(parse_database(&url)?);
    }
    config.listen = flags
        .listen
        .clone()
        .or_else(|| env_nonempty(env::LISTEN))
        .or(file.listen)
        .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
    config.insecure = flags.insecure;
    let path_setting = |flag: &Option<PathBuf>, var: &str, file: &Option<PathBuf>| {
        flag.clone()
            .or_else(|| env_nonempty(var).map(PathBuf::from))
            .or_else(|| file.clone())
    };
    let cert = path_setting(
        &flags.tls_cert_file,
        env::TLS_CERT_FILE,
        &file.tls_cert_file,
    );
    let key = path_setting(&flags.tls_key_file, env::TLS_KEY_FILE, &file.tls_key_file);
    let client_ca = path_setting(
        &flags.client_ca_file,
        env::CLIENT_CA_FILE,
        &file.client_ca_file,
    );
    let half = |given| ConfigError::HalfTls {
        given,
        cert_env: env::TLS_CERT_FILE,
        key_env: env::TLS_KEY_FILE,
    };
    config.tls = match (cert, key) {
        (Some(cert_file), Some(key_file)) => Some(TlsSettings {
            cert_file,
            key_file,
            client_ca_file: client_ca,
        }),
        (Some(_), None) => return Err(half("--tls-cert-file")),
        (None, Some(_)) => return Err(half("--tls-key-file")),
        (None, None) if client_ca.is_some() => return Err(ConfigError::ClientCaWithoutTls),
        (None, None) => None,
    };
    config.operator_token = match env(env::OPERATOR_TOKEN).and_then(|t| Secret::new(&t)) {
        Some(t) => Some(t),
        None => match &file.operator_token_file {
            Some(p) => read_token_file(p)?,
            None => None,
        },
    };
    config.worker_token = match env(env::WORKER_TOKEN).and_then(|t| Secret::new(&t)) {
        Some(t) => Some(t),
        None => match &file.worker_token_file {
            Some(p) => read_token_file(p)?,
            None => None,
        },
    };
    if let Some(v) = file.protect_reads {
        config.protect_reads = v;
    }
    if let Some(v) = file.allow_manifest_writes {
        config.allow_manifest_writes = v;
    }
    if let Some(v) = file.max_upload_bytes {
        config.max_upload_bytes = v;
    }
    if let Some(v) = file.max_body_bytes {
        config.max_body_bytes = v;
    }
    if let Some(v) = file.max_manifest_jobs {
        config.max_manifest_jobs = v;
    }
    if let Some(v) = file.resync_interval_s {
        config.resync_interval = Duration::from_secs(v.max(1));
    }
    if let Some(v) = file.sweep_interval_s {
        config.sweep_interval = Duration::from_secs(v.max(1));
    }
    if let Some(v) = file.watch_debounce_ms {
        config.watch_debounce = Duration::from_millis(v);
    }
    if let Some(v) = file.watch {
        config.watch = v;
    }
    if let Some(v) = file.prefer_cuda_wait_s {
        config.queue.prefer_cuda_wait_s = v;
    }
    if let Some(v) = file.node_stale_after_s {
        config.queue.node_stale_after_s = v;
    }
    if let Some(v) = file.max_log_bytes_per_attempt {
        config.queue.max_log_bytes_per_attempt = v;
    }
    if let Some(v) = file.retry_elsewhere_wait_s {
        config.queue.retry_elsewhere_wait_s = v;
    }
    (config.connections, config.caps) = limits;
    Ok(config)
}

/// The timeouts and caps of the config file over the defaults. A timeout of 0 s or a cap of
/// 0 connections or uploads would refuse everything, so those are errors; a long-poll cap
/// of 0 means no long-polls (each waiting request is answered 429 at once).
fn file_limits(file: &FileConfig) -> Result<(ConnectionOptions, RequestCaps), ConfigError> {
    let mut connections = ConnectionOptions::default();
    let mut caps = RequestCaps::default();
    let seconds = |key: &'static str, value: Option<u64>, into: &mut Duration| match value {
        Some(0) => Err(ConfigError::BadLimit {
            key,
            value: 0,
            why: "a timeout must be at least 1 second",
        }),
        Some(v) => {
            *into = Duration::from_secs(v);
            Ok(())
        }
        None => Ok(()),
    };
    seconds(
        "header_read_timeout_s",
        file.header_read_timeout_s,
        &mut connections.header_read_timeout,
    )?;
    seconds(
        "body_read_timeout_s",
        file.body_read_timeout_s,
        &mut connections.body_read_timeout,
    )?;
    seconds(
        "idle_timeout_s",
        file.idle_timeout_s,
        &mut connections.idle_timeout,
    )?;
    seconds(
        "tls_handshake_timeout_s",
        file.tls_handshake_timeout_s,
        &mut connections.tls_handshake_timeout,
    )?;
    let at_least_one = |key: &'static str, value: Option<usize>, into: &mut usize| match value {
        Some(0) => Err(ConfigError::BadLimit {
            key,
            value: 0,
            why: "0 would refuse every request; the cap must be at least 1",
        }),
        Some(v) => {
            *into = v;
            Ok(())
        }
        None => Ok(()),
    };
    at_least_one(
        "max_connections",
        file.max_connections,
        &mut connections.max_connections,
    )?;
    at_least_one(
        "max_concurrent_uploads",
        file.max_concurrent_uploads,
        &mut caps.uploads,
    )?;
    if let Some(v) = file.max_event_waits {
        caps.event_waits = v;
    }
    if let Some(v) = file.max_claim_waits {
        caps.claim_waits = v;
    }
    Ok((connections, caps))
}

/// Resolves `listen` and refuses a non-loopback address without TLS, or without a worker
/// credential (a worker token or a client CA), unless `insecure` is true.
pub fn check_listen(config: &ServerConfig) -> Result<Vec<SocketAddr>, ConfigError> {
    check_listen_with(config, false)
}

/// [`check_listen`], where `worker_tokens_issued` (per-worker tokens in the queue) counts
/// as a worker credential like the shared token.
pub fn check_listen_with(
    config: &ServerConfig,
    worker_tokens_issued: bool,
) -> Result<Vec<SocketAddr>, ConfigError> {
    let addrs: Vec<SocketAddr> = config
        .listen
        .to_socket_addrs()
        .map_err(|e| ConfigError::BadListen {
            addr: config.listen.clone(),
            message: e.to_string(),
        })?
        .collect();
    if addrs.is_empty() {
        return Err(ConfigError::BadListen {
            addr: config.listen.clone(),
            message: "it resolves to no address".into(),
        });
    }
    let exposed = addrs.iter().any(|a| !a.ip().is_loopback());
    let has_credential = config.has_worker_credential() || worker_tokens_issued;
    if exposed && !config.insecure {
        if config.tls.is_none() {
            return Err(ConfigError::PlainHttp {
                addr: config.listen.clone(),
                no_worker_credential: !has_credential,
            });
        }
        if !has_credential {
            return Err(ConfigError::Exposed {
                addr: config.listen.clone(),
            });
        }
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn flags_beat_env_beat_file_beat_defaults() {
        let file = || FileConfig {
            manifest: Some("/file/m.toml".into()),
            state_dir: Some("/file/state".into()),
            listen: Some("127.0.0.1:1111".into()),
            ..FileConfig::default()
        };
        let env = env_of(&[
            (env::MANIFEST, "/env/m.toml"),
            (env::LISTEN, "127.0.0.1:2222"),
        ]);
        let flags = Flags {
            listen: Some("127.0.0.1:3333".into()),
            ..Flags::default()
        };
        let c = resolve(&flags, &env, file()).unwrap();
        assert_eq!(c.listen, "127.0.0.1:3333");
        assert_eq!(c.manifest, PathBuf::from("/env/m.toml"));
        assert_eq!(c.state_dir, PathBuf::from("/file/state"));

        let c = resolve(&Flags::default(), env_of(&[]), file()).unwrap();
        assert_eq!(c.listen, "127.0.0.1:1111");
        assert_eq!(c.manifest, PathBuf::from("/file/m.toml"));

        let flags = Flags {
            manifest: Some("m.toml".into()),
            ..Flags::default()
        };
        let c = resolve(&flags, env_of(&[]), FileConfig::default()).unwrap();
        assert_eq!(c.listen, DEFAULT_LISTEN);
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(
            c.store_root(),
            PathBuf::from(DEFAULT_STATE_DIR).join("models")
        );
    }

    #[test]
    fn the_store_dir_comes_from_flag_env_or_file_and_defaults_under_the_state_dir() {
        let file = || FileConfig {
            manifest: Some("m.toml".into()),
            store_dir: Some("/file/store".into()),
            ..FileConfig::default()
        };
        let c = resolve(&Flags::default(), env_of(&[]), file()).unwrap();
        assert_eq!(c.store_root(), PathBuf::from("/file/store"));
        let env = env_of(&[(env::STORE_DIR, "/env/store")]);
        let c = resolve(&Flags::default(), &env, file()).unwrap();
        assert_eq!(c.store_root(), PathBuf::from("/env/store"));
        let flags = Flags {
            store_dir: Some("/flag/store".into()),
            ..Flags::default()
        };
        let c = resolve(&flags, &env, file()).unwrap();
        assert_eq!(c.store_root(), PathBuf::from("/flag/store"));
    }

    #[test]
    fn a_manifest_is_required() {
        let err = resolve(&Flags::default(), env_of(&[]), FileConfig::default()).unwrap_err();
        assert!(matches!(err, ConfigError::NoManifest));
    }

    #[test]
    fn tokens_come_from_env_before_files_and_are_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("op.token");
        std::fs::write(&token_file, "from-file\n").unwrap();
        let file = || FileConfig {
            manifest: Some("m.toml".into()),
            operator_token_file: Some(token_file.clone()),
            ..FileConfig::default()
        };
        let c = resolve(&Flags::default(), env_of(&[]), file()).unwrap();
        assert!(c.operator_token.as_ref().unwrap().matches("from-file"));
        let env = env_of(&[
            (env::OPERATOR_TOKEN, "from-env"),
            (env::WORKER_TOKEN, "w-secret"),
        ]);
        let c = resolve(&Flags::default(), env, file()).unwrap();
        assert!(c.operator_token.as_ref().unwrap().matches("from-env"));
        assert!(!c.operator_token.as_ref().unwrap().matches("from-file"));
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("from-env") && !debug.contains("w-secret"),
            "{debug}"
        );
        assert!(debug.contains("redacted"));
    }

    #[test]
    fn the_example_config_file_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../etc/reconciler.toml.example");
        let file = FileConfig::load(&path).unwrap();
        let c = resolve(&Flags::default(), env_of(&[]), file).unwrap();
        assert_eq!(c.listen, DEFAULT_LISTEN);
        assert_eq!(c.max_upload_bytes, DEFAULT_MAX_UPLOAD_BYTES);
        assert_eq!(c.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert_eq!(c.connections, ConnectionOptions::default());
        assert_eq!(c.caps, RequestCaps::default());
    }

    #[test]
    fn timeouts_and_caps_come_from_the_file_and_zero_is_refused_where_it_would_stop_everything() {
        let file = FileConfig {
            manifest: Some("m.toml".into()),
            header_read_timeout_s: Some(5),
            body_read_timeout_s: Some(6),
            idle_timeout_s: Some(7),
            tls_handshake_timeout_s: Some(8),
            max_connections: Some(100),
            max_concurrent_uploads: Some(2),
            max_event_waits: Some(0),
            max_claim_waits: Some(9),
            ..FileConfig::default()
        };
        let c = resolve(&Flags::default(), env_of(&[]), file).unwrap();
        assert_eq!(
            c.connections,
            ConnectionOptions {
                header_read_timeout: Duration::from_secs(5),
                body_read_timeout: Duration::from_secs(6),
                idle_timeout: Duration::from_secs(7),
                tls_handshake_timeout: Duration::from_secs(8),
                max_connections: 100,
            }
        );
        assert_eq!(
            c.caps,
            RequestCaps {
                uploads: 2,
                event_waits: 0,
                claim_waits: 9,
            }
        );
        for bad in [
            FileConfig {
                body_read_timeout_s: Some(0),
                ..FileConfig::default()
            },
            FileConfig {
                max_connections: Some(0),
                ..FileConfig::default()
            },
            FileConfig {
                max_concurrent_uploads: Some(0),
                ..FileConfig::default()
            },
        ] {
            let file = FileConfig {
                manifest: Some("m.toml".into()),
                ..bad
            };
            let err = resolve(&Flags::default(), env_of(&[]), file).unwrap_err();
            assert!(
                matches!(err, ConfigError::BadLimit { value: 0, .. }),
                "{err}"
            );
            assert!(err.to_string().starts_with("config key "), "{err}");
        }
    }

    #[test]
    fn unknown_config_keys_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.toml");
        std::fs::write(&path, "manifest = \"m.toml\"\nlisten_addr = \"x\"\n").unwrap();
        let err = FileConfig::load(&path).unwrap_err();
        assert!(err.to_string().contains("listen_addr"), "{err}");
    }

    fn tls(client_ca: bool) -> Option<TlsSettings> {
        Some(TlsSettings {
            cert_file: "server.pem".into(),
            key_file: "server-key.pem".into(),
            client_ca_file: client_ca.then(|| "ca.pem".into()),
        })
    }

    #[test]
    fn non_loopback_needs_tls_and_a_worker_credential_or_insecure() {
        let mut c = ServerConfig::new("m.toml", "state");
        c.listen = "0.0.0.0:8787".into();
        let err = check_listen(&c).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ConfigError::PlainHttp { .. }), "{text}");
        assert!(
            text.contains("refusing to listen on 0.0.0.0:8787"),
            "{text}"
        );
        assert!(text.contains("CIS490_WORKER_TOKEN"), "{text}");
        assert!(text.contains("--tls-cert-file"), "{text}");
        c.insecure = true;
        assert!(check_listen(&c).is_ok());
        c.insecure = false;
        // A token alone is no longer enough: it would cross the network in plain text.
        c.worker_token = Secret::new("t");
        let text = check_listen(&c).unwrap_err().to_string();
        assert!(text.contains("with plain HTTP:"), "{text}");
        assert!(
            text.contains("--tls-key-file") && text.contains("certs init"),
            "{text}"
        );
        assert!(!text.contains("CIS490_WORKER_TOKEN"), "{text}");
        c.tls = tls(false);
        assert!(check_listen(&c).is_ok());
        // TLS without any worker credential: the old refusal.
        c.worker_token = None;
        let err = check_listen(&c).unwrap_err();
        assert!(matches!(err, ConfigError::Exposed { .. }), "{err}");
        // So are per-worker tokens in the queue.
        assert!(check_listen_with(&c, true).is_ok());
        // Client certificates are a worker credential.
        c.tls = tls(true);
        assert!(check_listen(&c).is_ok());
        let mut local = ServerConfig::new("m.toml", "state");
        local.listen = "127.0.0.1:0".into();
        assert!(check_listen(&local).is_ok());
    }

    #[test]
    fn tls_files_come_from_flags_env_or_file_and_come_in_pairs() {
        let base = || FileConfig {
            manifest: Some("m.toml".into()),
            tls_cert_file: Some("/file/server.pem".into()),
            tls_key_file: Some("/file/server-key.pem".into()),
            ..FileConfig::default()
        };
        let c = resolve(&Flags::default(), env_of(&[]), base()).unwrap();
        assert_eq!(
            c.tls,
            Some(TlsSettings {
                cert_file: "/file/server.pem".into(),
                key_file: "/file/server-key.pem".into(),
                client_ca_file: None,
            })
        );
        let env = env_of(&[
            (env::TLS_CERT_FILE, "/env/server.pem"),
            (env::CLIENT_CA_FILE, "/env/ca.pem"),
        ]);
        let flags = Flags {
            tls_key_file: Some("/flag/key.pem".into()),
            ..Flags::default()
        };
        let tls = resolve(&flags, env, base()).unwrap().tls.unwrap();
        assert_eq!(tls.cert_file, PathBuf::from("/env/server.pem"));
        assert_eq!(tls.key_file, PathBuf::from("/flag/key.pem"));
        assert_eq!(tls.client_ca_file, Some(PathBuf::from("/env/ca.pem")));

        let half = FileConfig {
            manifest: Some("m.toml".into()),
            tls_cert_file: Some("server.pem".into()),
            ..FileConfig::default()
        };
        let err = resolve(&Flags::default(), env_of(&[]), half).unwrap_err();
        assert!(matches!(err, ConfigError::HalfTls { .. }), "{err}");
        assert!(err.to_string().contains("--tls-key-file"), "{err}");
        let ca_only = FileConfig {
            manifest: Some("m.toml".into()),
            client_ca_file: Some("ca.pem".into()),
            ..FileConfig::default()
        };
        let err = resolve(&Flags::default(), env_of(&[]), ca_only).unwrap_err();
        assert!(matches!(err, ConfigError::ClientCaWithoutTls), "{err}");
    }

    #[test]
    fn posture_warns_about_what_insecure_exposes() {
        let mut c = ServerConfig::new("m.toml", "state");
        c.insecure = true;
        let local = SecurityPosture::of(&c, "127.0.0.1:8787", false);
        assert_eq!(local, SecurityPosture::default());
        let open = SecurityPosture::of(&c, "0.0.0.0:8787", true);
        assert!(open.insecure && !open.tls);
        // (Open worker routes are warned about by auth: they depend on the tokens issued.)
        assert_eq!(open.warnings.len(), 1, "{:?}", open.warnings);
        assert!(open.warnings[0].contains("plain HTTP on 0.0.0.0:8787"));
        c.tls = tls(true);
        let safe = SecurityPosture::of(&c, "0.0.0.0:8787", true);
        assert!(safe.tls && safe.client_certs && !safe.insecure);
        assert!(safe.warnings.is_empty());
    }

    #[test]
    fn secrets_compare_exactly() {
        let s = Secret::new("abc").unwrap();
        assert!(s.matches("abc"));
        assert!(!s.matches("abcd"));
        assert!(!s.matches(""));
        assert!(Secret::new("  ").is_none());
    }

    #[test]
    fn the_database_url_names_a_sqlite_file_or_a_postgres_server_and_others_are_refused() {
        assert_eq!(
            sqlite_path("sqlite:/srv/q.db").unwrap(),
            PathBuf::from("/srv/q.db")
        );
        assert_eq!(
            sqlite_path("sqlite:///srv/q.db").unwrap(),
            PathBuf::from("/srv/q.db")
        );
        assert_eq!(sqlite_path("sqlite:q.db").unwrap(), PathBuf::from("q.db"));
        let url = "postgres://cis490:hunter2@db.lab/cis490";
        let pg = parse_database(url).unwrap();
        assert_eq!(pg, Database::Postgres(url.to_string()));
        assert!(!format!("{pg:?}").contains("hunter2"), "{pg:?}");
        assert_eq!(
            parse_database("postgresql://db.lab/q").unwrap(),
            Database::Postgres("postgresql://db.lab/q".to_string())
        );
        let refused = parse_database("mysql://db.lab/cis490")
            .unwrap_err()
            .to_string();
        assert!(refused.contains("the mysql: scheme is not supported by this build"));
        assert!(refused.contains("postgres:// are"), "{refused}");
        assert!(matches!(
            sqlite_path("/srv/q.db"),
            Err(ConfigError::BadDatabase { .. })
        ));
        assert!(matches!(
            sqlite_path("sqlite:"),
            Err(ConfigError::BadDatabase { .. })
        ));
        let mut config = ServerConfig::new("m.toml", "/state");
        assert_eq!(
            config.database_path(),
            Some(PathBuf::from("/state/queue.db"))
        );
        config.database = Some(Database::Sqlite(PathBuf::from("/srv/q.db")));
        assert_eq!(config.database_path(), Some(PathBuf::from("/srv/q.db")));
        config.database = Some(pg);
        assert_eq!(config.database_path(), None);
    }
}
