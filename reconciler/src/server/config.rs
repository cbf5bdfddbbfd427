//! The server's settings: defaults, then the config file, then environment variables, then
//! command-line flags (each later source wins). Secrets are redacted in `Debug`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use cis490_api::config_file::{self, ConfigFileError};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::queue::QueueConfig;

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
    /// Where to listen (used by `serve`; tests pass their own listener).
    pub listen: String,
    /// Allow a non-loopback listen address without a worker token.
    pub insecure: bool,
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
    pub max_upload_bytes: u64,
    pub max_body_bytes: usize,
    /// How often the manifest is reconciled even when no change was seen.
    pub resync_interval: Duration,
    /// How often expired leases are swept.
    pub sweep_interval: Duration,
    /// Quiet time after a file event before the manifest is read.
    pub watch_debounce: Duration,
    /// Watch the manifest's directory (off: only start-up, resync and the reload route).
    pub watch: bool,
    pub queue: QueueConfig,
}

impl ServerConfig {
    /// Defaults for everything but the two paths.
    pub fn new(manifest: impl Into<PathBuf>, state_dir: impl Into<PathBuf>) -> Self {
        Self {
            manifest: manifest.into(),
            state_dir: state_dir.into(),
            listen: DEFAULT_LISTEN.to_string(),
            insecure: false,
            operator_token: None,
            worker_token: None,
            require_worker_credentials: false,
            protect_reads: false,
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            resync_interval: Duration::from_secs(60),
            sweep_interval: Duration::from_secs(5),
            watch_debounce: Duration::from_millis(200),
            watch: true,
            queue: QueueConfig::default(),
        }
    }

    /// The queue database.
    pub fn database_path(&self) -> PathBuf {
        self.state_dir.join("queue.db")
    }

    /// The artifact store's root.
    pub fn store_root(&self) -> PathBuf {
        self.state_dir.join("models")
    }
}

/// The optional TOML config file (`--config FILE`); see `etc/reconciler.toml.example`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub manifest: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub listen: Option<String>,
    /// A file holding the operator token (used when CIS490_OPERATOR_TOKEN is unset).
    pub operator_token_file: Option<PathBuf>,
    /// A file holding the worker token (used when CIS490_WORKER_TOKEN is unset).
    pub worker_token_file: Option<PathBuf>,
    pub protect_reads: Option<bool>,
    pub max_upload_bytes: Option<u64>,
    pub max_body_bytes: Option<usize>,
    pub resync_interval_s: Option<u64>,
    pub sweep_interval_s: Option<u64>,
    pub watch_debounce_ms: Option<u64>,
    pub watch: Option<bool>,
    pub prefer_cuda_wait_s: Option<u64>,
    pub node_stale_after_s: Option<u64>,
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
    pub listen: Option<String>,
    pub insecure: bool,
}

fn read_token_file(path: &Path) -> Result<Option<Secret>, ConfigError> {
    Ok(Secret::new(&config_file::read_text(path)?))
}

/// Merges the sources: flags > environment (`env` looks a variable up) > config file >
/// defaults.
pub fn resolve(
    flags: &Flags,
    env: impl Fn(&str) -> Option<String>,
    file: FileConfig,
) -> Result<ServerConfig, ConfigError> {
    let env_nonempty = |name: &str| env(name).filter(|v| !v.trim().is_empty());
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
    config.listen = flags
        .listen
        .clone()
        .or_else(|| env_nonempty(env::LISTEN))
        .or(file.listen)
        .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
    config.insecure = flags.insecure;
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
    if let Some(v) = file.max_upload_bytes {
        config.max_upload_bytes = v;
    }
    if let Some(v) = file.max_body_bytes {
        config.max_body_bytes = v;
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
    Ok(config)
}

/// Resolves `listen` and refuses a non-loopback address unless a worker token is set or
/// `insecure` is true.
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
    if exposed && config.worker_token.is_none() && !worker_tokens_issued && !config.insecure {
        return Err(ConfigError::Exposed {
            addr: config.listen.clone(),
        });
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
    }

    #[test]
    fn unknown_config_keys_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.toml");
        std::fs::write(&path, "manifest = \"m.toml\"\nlisten_addr = \"x\"\n").unwrap();
        let err = FileConfig::load(&path).unwrap_err();
        assert!(err.to_string().contains("listen_addr"), "{err}");
    }

    #[test]
    fn non_loopback_needs_a_worker_token_or_insecure() {
        let mut c = ServerConfig::new("m.toml", "state");
        c.listen = "0.0.0.0:8787".into();
        let err = check_listen(&c).unwrap_err();
        assert!(err.to_string().contains("CIS490_WORKER_TOKEN"), "{err}");
        c.insecure = true;
        assert!(check_listen(&c).is_ok());
        c.insecure = false;
        assert!(check_listen_with(&c, true).is_ok());
        c.worker_token = Secret::new("t");
        assert!(check_listen(&c).is_ok());
        let mut local = ServerConfig::new("m.toml", "state");
        local.listen = "127.0.0.1:0".into();
        assert!(check_listen(&local).is_ok());
    }

    #[test]
    fn secrets_compare_exactly() {
        let s = Secret::new("abc").unwrap();
        assert!(s.matches("abc"));
        assert!(!s.matches("abcd"));
        assert!(!s.matches(""));
        assert!(Secret::new("  ").is_none());
    }
}
