//! Command line, config file (`etc/agent.toml.example`) and environment, merged into one
//! [`AgentConfig`]. Precedence: flags, then environment (`CIS490_SERVER`,
//! `CIS490_WORKER_TOKEN`, `CIS490_WORKER_TOKEN_FILE`, `CIS490_CA_FILE`, `CIS490_CERT_FILE`,
//! `CIS490_KEY_FILE`), then the file, then defaults.
//!
//! The worker token is a secret, so it never has to be on a command line: a file named by
//! `worker_token_file` (config) or `--worker-token-file` holds it, root-only.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use cis490_api::config_file::{self, ConfigFileError};
use cis490_api::{Capability, ClientTls, Gpu, WorkerName};
use serde::Deserialize;

/// Why a configuration is not usable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read or parsed.
    #[error(transparent)]
    File(#[from] ConfigFileError),
    /// An `--advertise` entry is malformed.
    #[error("invalid --advertise entry {0:?}: {1}")]
    Advertise(String, String),
    /// A `--label` is not `key=value`.
    #[error("invalid label {0:?}: expected key=value")]
    Label(String),
    /// No server URL from flag, environment or file.
    #[error("no server URL: pass --server, set CIS490_SERVER or `server` in the config file")]
    NoServer,
    /// The worker name is not usable.
    #[error("invalid worker name: {0}")]
    Name(String),
    /// A numeric setting is out of range.
    #[error("{0}")]
    Range(String),
    /// The worker token is given twice at the same level, so which one is meant is unclear.
    #[error("{0}")]
    TwoTokens(String),
    /// The worker token file is empty.
    #[error("the worker token file {0} is empty: put the token `cis490-reconciler tokens issue NAME` printed in it")]
    EmptyTokenFile(PathBuf),
}

/// How GPUs are handed to jobs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuSharing {
    /// Each CUDA job gets a GPU of its own.
    #[default]
    Exclusive,
    /// Jobs that declare `min_vram_gib` share a GPU while their declared VRAM fits in it.
    Vram,
}

impl FromStr for GpuSharing {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "exclusive" => Ok(GpuSharing::Exclusive),
            "vram" => Ok(GpuSharing::Vram),
            _ => Err(format!("expected exclusive or vram, got {s:?}")),
        }
    }
}

impl fmt::Display for GpuSharing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GpuSharing::Exclusive => "exclusive",
            GpuSharing::Vram => "vram",
        })
    }
}

/// Overrides of what the agent advertises (`--advertise cuda=false,ram_gib=8`): to keep
/// resources for other work, or to simulate a host in tests.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Advertise {
    pub cuda: Option<bool>,
    pub ram_gib: Option<f64>,
    /// VRAM per GPU, in GiB.
    pub vram_gib: Option<f64>,
    pub gpus: Option<u32>,
    pub cores: Option<u32>,
}

fn gib_to_mib(gib: f64) -> u64 {
    (gib * 1024.0).round().max(0.0) as u64
}

impl Advertise {
    /// Parses `key=value,...` with keys cuda, ram_gib, vram_gib, gpus, cores.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let mut out = Advertise::default();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let bad = |why: &str| ConfigError::Advertise(entry.to_string(), why.to_string());
            let (key, value) = entry
                .split_once('=')
                .ok_or_else(|| bad("expected key=value"))?;
            let value = value.trim();
            let num = |v: &str| -> Result<f64, ConfigError> {
                v.parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite() && *x >= 0.0)
                    .ok_or_else(|| bad("expected a number >= 0"))
            };
            let count = |v: &str| v.parse::<u32>().map_err(|_| bad("expected a whole number"));
            match key.trim() {
                "cuda" => {
                    out.cuda = Some(match value {
                        "true" | "1" | "yes" => true,
                        "false" | "0" | "no" => false,
                        _ => return Err(bad("expected true or false")),
                    })
                }
                "ram_gib" => out.ram_gib = Some(num(value)?),
                "vram_gib" => out.vram_gib = Some(num(value)?),
                "gpus" => out.gpus = Some(count(value)?),
                "cores" => out.cores = Some(count(value)?),
                _ => {
                    return Err(bad(
                        "unknown key (expected cuda, ram_gib, vram_gib, gpus or cores)",
                    ))
                }
            }
        }
        Ok(out)
    }

    /// `self` with every key `over` sets replaced.
    pub fn overridden_by(&self, over: &Advertise) -> Advertise {
        Advertise {
            cuda: over.cuda.or(self.cuda),
            ram_gib: over.ram_gib.or(self.ram_gib),
            vram_gib: over.vram_gib.or(self.vram_gib),
            gpus: over.gpus.or(self.gpus),
            cores: over.cores.or(self.cores),
        }
    }

    /// What is wrong with the overrides for the `detected` host: an error where they
    /// contradict themselves (`vram_gib` with no GPU to give it), warnings where they claim
    /// more than the host has (the server would hand it jobs it cannot hold).
    pub fn check(&self, detected: &Capability) -> Result<Vec<String>, ConfigError> {
        let bad = |entry: String, why: &str| ConfigError::Advertise(entry, why.to_string());
        if let Some(vram) = self.vram_gib {
            let gpus = match (self.cuda, self.gpus) {
                (Some(false), _) => 0,
                (_, Some(n)) => n as usize,
                (Some(true), None) => detected.gpus.len().max(1),
                (None, None) => detected.gpus.len(),
            };
            if gpus == 0 {
                return Err(bad(
                    format!("vram_gib={vram}"),
                    "this host advertises no GPU to give it: add gpus=N (or cuda=true)",
                ));
            }
        }
        let mut warnings = Vec::new();
        let detected_ram_gib = detected.ram_total_mib as f64 / 1024.0;
        if let Some(ram) = self.ram_gib.filter(|r| *r > detected_ram_gib) {
            warnings.push(format!(
                "--advertise ram_gib={ram} is more than this host's {detected_ram_gib:.1} GiB: it may be handed jobs it cannot hold"
            ));
        }
        if let Some(cores) = self.cores.filter(|c| *c > detected.cores) {
            warnings.push(format!(
                "--advertise cores={cores} is more than this host's {} cores",
                detected.cores
            ));
        }
        let detected_vram_gib = detected
            .gpus
            .iter()
            .map(|g| g.vram_total_mib as f64 / 1024.0)
            .fold(0.0, f64::max);
        if let Some(vram) = self
            .vram_gib
            .filter(|v| !detected.gpus.is_empty() && *v > detected_vram_gib)
        {
            warnings.push(format!(
                "--advertise vram_gib={vram} is more than this host's largest GPU ({detected_vram_gib:.1} GiB)"
            ));
        }
        if let Some(gpus) = self.gpus.filter(|g| *g as usize > detected.gpus.len()) {
            warnings.push(format!(
                "--advertise gpus={gpus} declares GPUs this host's driver does not show (it shows {})",
                detected.gpus.len()
            ));
        }
        Ok(warnings)
    }

    /// Applies the overrides to a detected capability. `gpus=N` keeps the first N GPUs or
    /// adds declared ones; `vram_gib` sets each GPU's VRAM; `cuda=false` hides every GPU,
    /// `cuda=true` on a host without one declares one.
    pub fn apply(&self, cap: &mut Capability) {
        if let Some(cores) = self.cores {
            cap.cores = cores;
        }
        if let Some(ram) = self.ram_gib {
            cap.ram_total_mib = gib_to_mib(ram);
            cap.ram_allocatable_mib = cap.ram_total_mib;
            cap.ram_available_mib = cap.ram_available_mib.min(cap.ram_total_mib);
        }
        if let Some(n) = self.gpus {
            let n = n as usize;
            cap.gpus.truncate(n);
            while cap.gpus.len() < n {
                cap.gpus.push(declared_gpu(cap.gpus.len()));
            }
        }
        if self.cuda == Some(true) && cap.gpus.is_empty() {
            cap.gpus.push(declared_gpu(0));
        }
        if let Some(vram) = self.vram_gib {
            for g in &mut cap.gpus {
                g.vram_total_mib = gib_to_mib(vram);
                g.vram_free_mib = g.vram_total_mib;
                g.vram_allocatable_mib = g.vram_total_mib;
            }
        }
        if self.cuda == Some(false) {
            cap.gpus.clear();
        }
        let changed_gpus = self.cuda.is_some() || self.gpus.is_some();
        if changed_gpus {
            cap.cuda = !cap.gpus.is_empty();
            if cap.gpus.is_empty() {
                cap.gpu_note = Some("no GPU advertised (--advertise)".into());
            } else if cap.gpu_note.is_none() || self.cuda == Some(true) {
                cap.gpu_note = None;
            }
        }
    }
}

fn declared_gpu(index: usize) -> Gpu {
    Gpu {
        index: u32::try_from(index).unwrap_or(u32::MAX),
        name: "declared GPU (--advertise)".into(),
        uuid: None,
        vram_total_mib: 0,
        vram_free_mib: 0,
        vram_allocatable_mib: 0,
        vram_allocated_mib: 0,
    }
}

/// Parses `key=value` labels.
pub fn parse_label(text: &str) -> Result<(String, String), ConfigError> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(ConfigError::Label(text.to_string())),
    }
}

/// The config file (`/etc/cis490/agent.toml`). Every key is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub server: Option<String>,
    pub worker_token: Option<String>,
    /// The lab CA (PEM) to trust for an `https://` server.
    pub ca_file: Option<PathBuf>,
    /// This agent's client certificate (PEM), for a server that requires one.
    pub cert_file: Option<PathBuf>,
    /// The private key (PEM) of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// A file holding the worker token (readable only by root and the agent's user).
    pub worker_token_file: Option<PathBuf>,
    pub name: Option<String>,
    pub work_dir: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub python: Option<String>,
    pub max_concurrent: Option<u32>,
    pub heartbeat_s: Option<u64>,
    pub claim_wait_s: Option<u64>,
    pub grace_s: Option<u64>,
    pub gpu_sharing: Option<GpuSharing>,
    pub advertise: Option<Advertise>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Ok(config_file::load_toml(path)?)
    }
}

/// Flags of `run` and `capability` (clap fills it; env vars handled by clap's `env`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RunFlags {
    /// Config file (TOML, like etc/agent.toml.example).
    #[arg(long, env = "CIS490_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// The reconciler's URL, e.g. http://pi.local:8787; several servers of one fleet (one
    /// PostgreSQL database) separated by commas: the agent moves on to the next when the one
    /// it talks to cannot be reached.
    #[arg(long, env = "CIS490_SERVER")]
    pub server: Option<String>,
    /// Bearer token for worker routes (visible to other users in the process list: prefer
    /// --worker-token-file or worker_token_file).
    #[arg(long, env = "CIS490_WORKER_TOKEN", hide_env_values = true)]
    pub worker_token: Option<String>,
    /// Trust the CA certificates in this PEM file for an https:// server (the lab CA: the
    /// ca.pem made by `cis490-reconciler certs init`).
    #[arg(long, value_name = "FILE", env = cis490_api::tls::CA_FILE_ENV)]
    pub ca_file: Option<PathBuf>,
    /// This agent's client certificate (PEM), for a server with --client-ca-file: the
    /// NAME.pem made by `cis490-reconciler certs issue-agent NAME`.
    #[arg(long, value_name = "FILE", env = cis490_api::tls::CERT_FILE_ENV)]
    pub cert_file: Option<PathBuf>,
    /// The private key (PEM) of --cert-file (NAME-key.pem).
    #[arg(long, value_name = "FILE", env = cis490_api::tls::KEY_FILE_ENV)]
    pub key_file: Option<PathBuf>,
    /// A file holding the bearer token for worker routes (per-worker or shared).
    #[arg(long, env = "CIS490_WORKER_TOKEN_FILE", value_name = "FILE")]
    pub worker_token_file: Option<PathBuf>,
    /// Worker name (default: the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// Where trainer commands run (default: the current directory).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Where attempt directories and logs go (default: a folder in the temp dir).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// The trainer's Python, asked for its torch version.
    #[arg(long)]
    pub python: Option<String>,
    /// Jobs to run at once.
    #[arg(long)]
    pub max_concurrent: Option<u32>,
    /// Seconds between heartbeats (default 30).
    #[arg(long)]
    pub heartbeat_s: Option<u64>,
    /// Long-poll length of a claim, seconds (default 20).
    #[arg(long)]
    pub claim_wait_s: Option<u64>,
    /// Seconds a trainer gets between SIGTERM and SIGKILL (default 10).
    #[arg(long)]
    pub grace_s: Option<u64>,
    /// exclusive (a GPU per CUDA job) or vram (share while declared VRAM fits).
    #[arg(long)]
    pub gpu_sharing: Option<GpuSharing>,
    /// Override what is advertised: cuda=BOOL,ram_gib=N,vram_gib=N,gpus=N,cores=N.
    #[arg(long)]
    pub advertise: Option<String>,
    /// A label k=v (repeatable).
    #[arg(long = "label")]
    pub labels: Vec<String>,
}

/// Everything the agent runs with.
#[derive(Clone)]
pub struct AgentConfig {
    pub server: Option<String>,
    pub worker_token: Option<String>,
    /// CA to trust and client certificate to present.
    pub tls: ClientTls,
    pub name: WorkerName,
    pub work_dir: PathBuf,
    pub state_dir: PathBuf,
    pub python: String,
    pub max_concurrent: u32,
    pub heartbeat: Duration,
    pub claim_wait: Duration,
    pub grace: Duration,
    pub gpu_sharing: GpuSharing,
    pub advertise: Advertise,
    pub labels: BTreeMap<String, String>,
}

impl fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentConfig")
            .field("server", &self.server)
            .field("tls", &self.tls)
            .field(
                "worker_token",
                &self.worker_token.as_ref().map(|_| "<redacted>"),
            )
            .field("name", &self.name)
            .field("work_dir", &self.work_dir)
            .field("state_dir", &self.state_dir)
            .field("max_concurrent", &self.max_concurrent)
            .field("heartbeat", &self.heartbeat)
            .field("gpu_sharing", &self.gpu_sharing)
            .field("advertise", &self.advertise)
            .finish_non_exhaustive()
    }
}

/// Turns a host name into a valid worker name (invalid characters become '-').
pub fn worker_name_from_host(host: &str) -> String {
    let cleaned: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(128)
        .collect();
    let trimmed = cleaned.trim_start_matches(['-', '.', '_']);
    if trimmed.is_empty() {
        "localhost".to_string()
    } else {
        trimmed.to_string()
    }
}

impl AgentConfig {
    /// Merges flags (already including env) over the file over defaults.
    pub fn resolve(flags: &RunFlags) -> Result<Self, ConfigError> {
        let file = match &flags.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let name_text = flags
            .name
            .clone()
            .or(file.name)
            .unwrap_or_else(|| worker_name_from_host(&crate::capability::hostname()));
        let name = WorkerName::parse(&name_text).map_err(|e| ConfigError::Name(e.to_string()))?;
        let work_dir = match flags.work_dir.clone().or(file.work_dir) {
            Some(d) => d,
            None => std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
        };
        let state_dir = flags
            .state_dir
            .clone()
            .or(file.state_dir)
            .unwrap_or_else(|| {
                std::env::temp_dir()
                    .join("cis490-agent")
                    .join(name.as_str())
            });
        let mut advertise = file.advertise.unwrap_or_default();
        if let Some(text) = &flags.advertise {
            advertise = advertise.overridden_by(&Advertise::parse(text)?);
        }
        let mut labels = file.labels;
        for l in &flags.labels {
            let (k, v) = parse_label(l)?;
            labels.insert(k, v);
        }
        let max_concurrent = flags.max_concurrent.or(file.max_concurrent).unwrap_or(1);
        if max_concurrent == 0 {
            return Err(ConfigError::Range(
                "--max-concurrent must be at least 1".into(),
            ));
        }
        let heartbeat_s = flags.heartbeat_s.or(file.heartbeat_s).unwrap_or(30);
        if heartbeat_s == 0 {
            return Err(ConfigError::Range(
                "--heartbeat-s must be at least 1".into(),
            ));
        }
        let claim_wait_s = flags
            .claim_wait_s
            .or(file.claim_wait_s)
            .unwrap_or(20)
            .min(cis490_api::MAX_CLAIM_WAIT_S);
        let worker_token = match token_at_one_level(
            flags.worker_token.as_deref(),
            flags.worker_token_file.as_deref(),
            "--worker-token (or CIS490_WORKER_TOKEN) and --worker-token-file (or \
             CIS490_WORKER_TOKEN_FILE)",
        )? {
            Some(token) => Some(token),
            None => token_at_one_level(
                file.worker_token.as_deref(),
                file.worker_token_file.as_deref(),
                "worker_token and worker_token_file in the config file",
            )?,
        };
        Ok(AgentConfig {
            server: flags.server.clone().or(file.server),
            worker_token,
            tls: ClientTls {
                ca_file: flags.ca_file.clone().or(file.ca_file),
                cert_file: flags.cert_file.clone().or(file.cert_file),
                key_file: flags.key_file.clone().or(file.key_file),
            },
            name,
            work_dir,
            state_dir,
            python: flags
                .python
                .clone()
                .or(file.python)
                .unwrap_or_else(|| default_python().to_string()),
            max_concurrent,
            heartbeat: Duration::from_secs(heartbeat_s),
            claim_wait: Duration::from_secs(claim_wait_s),
            grace: Duration::from_secs(flags.grace_s.or(file.grace_s).unwrap_or(10)),
            gpu_sharing: flags.gpu_sharing.or(file.gpu_sharing).unwrap_or_default(),
            advertise,
            labels,
        })
    }

    /// The server URL, required by `run`.
    pub fn server_url(&self) -> Result<&str, ConfigError> {
        self.server.as_deref().ok_or(ConfigError::NoServer)
    }
}

/// The token given at one level of precedence (flags, or the file): inline or from a file,
/// never both.
fn token_at_one_level(
    inline: Option<&str>,
    file: Option<&Path>,
    both: &str,
) -> Result<Option<String>, ConfigError> {
    let inline = inline.map(str::trim).filter(|t| !t.is_empty());
    match (inline, file) {
        (Some(_), Some(_)) => Err(ConfigError::TwoTokens(format!(
            "both {both} are given: keep one (the file keeps the token off the command line)"
        ))),
        (Some(token), None) => Ok(Some(token.to_string())),
        (None, Some(path)) => {
            let text = config_file::read_text(path)?;
            let token = text.trim();
            if token.is_empty() {
                return Err(ConfigError::EmptyTokenFile(path.to_path_buf()));
            }
            Ok(Some(token.to_string()))
        }
        (None, None) => Ok(None),
    }
}

fn default_python() -> &'static str {
    if cfg!(windows) {
        "python"
    } else {
        "python3"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap_with_gpus(n: u32) -> Capability {
        Capability {
            hostname: "h".into(),
            cores: 8,
            ram_total_mib: 64 * 1024,
            ram_available_mib: 60 * 1024,
            ram_allocatable_mib: 64 * 1024,
            gpus: (0..n)
                .map(|i| Gpu {
                    index: i,
                    name: "real".into(),
                    uuid: None,
                    vram_total_mib: 12 * 1024,
                    vram_free_mib: 11 * 1024,
                    vram_allocatable_mib: 12 * 1024,
                    vram_allocated_mib: 0,
                })
                .collect(),
            cuda: n > 0,
            ..Capability::default()
        }
    }

    /// `vram_gib` with no GPU to give it is an error; claiming more than the host has is a
    /// warning naming what it has; what fits says nothing.
    #[test]
    fn advertise_checks_against_the_detected_host() {
        let check =
            |text: &str, gpus: u32| Advertise::parse(text).unwrap().check(&cap_with_gpus(gpus));
        for impossible in ["vram_gib=8", "vram_gib=8,gpus=0", "vram_gib=8,cuda=false"] {
            let err =
                check(impossible, if impossible == "vram_gib=8" { 0 } else { 2 }).unwrap_err();
            assert!(err.to_string().contains("no GPU"), "{impossible}: {err}");
        }
        assert!(check("vram_gib=8,gpus=1", 0).is_ok());
        assert!(check("vram_gib=8,cuda=true", 0).is_ok());
        let warnings = check("ram_gib=999,cores=64,vram_gib=48,gpus=4", 2).unwrap();
        assert_eq!(warnings.len(), 4, "{warnings:#?}");
        assert!(warnings[0].contains("ram_gib=999") && warnings[0].contains("64.0 GiB"));
        assert!(warnings[2].contains("12.0 GiB"));
        assert!(check("ram_gib=8,cores=2,vram_gib=6,gpus=1", 2)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn advertise_parses_every_key_and_rejects_junk() {
        let a = Advertise::parse("cuda=false, ram_gib=8,vram_gib=24,gpus=2,cores=4").unwrap();
        assert_eq!(
            a,
            Advertise {
                cuda: Some(false),
                ram_gib: Some(8.0),
                vram_gib: Some(24.0),
                gpus: Some(2),
                cores: Some(4)
            }
        );
        assert!(Advertise::parse("cuda=maybe").is_err());
        assert!(Advertise::parse("ram_gib=-1").is_err());
        assert!(Advertise::parse("disk=3").is_err());
        assert!(Advertise::parse("gpus").is_err());
        assert_eq!(Advertise::parse("").unwrap(), Advertise::default());
    }

    #[test]
    fn cuda_false_hides_every_gpu() {
        let mut cap = cap_with_gpus(2);
        Advertise::parse("cuda=false").unwrap().apply(&mut cap);
        assert!(!cap.cuda);
        assert!(cap.gpus.is_empty());
        assert!(cap.gpu_note.is_some());
    }

    #[test]
    fn simulated_gpu_host_gets_declared_gpu_with_vram() {
        let mut cap = cap_with_gpus(0);
        Advertise::parse("cuda=true,vram_gib=24")
            .unwrap()
            .apply(&mut cap);
        assert!(cap.cuda);
        assert_eq!(cap.gpus.len(), 1);
        assert_eq!(cap.gpus[0].vram_allocatable_mib, 24 * 1024);
        let mut two = cap_with_gpus(0);
        Advertise::parse("gpus=2,vram_gib=8")
            .unwrap()
            .apply(&mut two);
        assert!(two.cuda);
        assert_eq!(
            two.gpus.iter().map(|g| g.index).collect::<Vec<_>>(),
            vec![0, 1]
        );
    }

    #[test]
    fn ram_cores_and_gpu_count_overrides() {
        let mut cap = cap_with_gpus(3);
        Advertise::parse("ram_gib=8,cores=2,gpus=1,vram_gib=0")
            .unwrap()
            .apply(&mut cap);
        assert_eq!(cap.ram_total_mib, 8192);
        assert_eq!(cap.ram_allocatable_mib, 8192);
        assert_eq!(cap.ram_available_mib, 8192);
        assert_eq!(cap.cores, 2);
        assert_eq!(cap.gpus.len(), 1);
        assert_eq!(cap.gpus[0].vram_allocatable_mib, 0);
        assert!(cap.cuda);
    }

    #[test]
    fn flag_advertise_overrides_file_per_key() {
        let file = Advertise::parse("cuda=false,ram_gib=8").unwrap();
        let flag = Advertise::parse("ram_gib=4").unwrap();
        let merged = file.overridden_by(&flag);
        assert_eq!(merged.cuda, Some(false));
        assert_eq!(merged.ram_gib, Some(4.0));
    }

    #[test]
    fn config_file_flags_and_defaults_merge() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            "server = \"http://pi:8787\"\nname = \"box-1\"\nmax_concurrent = 2\ngpu_sharing = \"vram\"\n[advertise]\ncuda = false\nram_gib = 8\n[labels]\nrack = \"a\"\n",
        )
        .unwrap();
        let flags = RunFlags {
            config: Some(path),
            max_concurrent: Some(3),
            advertise: Some("ram_gib=4".into()),
            labels: vec!["zone=b".into()],
            ..RunFlags::default()
        };
        let cfg = AgentConfig::resolve(&flags).unwrap();
        assert_eq!(cfg.server.as_deref(), Some("http://pi:8787"));
        assert_eq!(cfg.name.as_str(), "box-1");
        assert_eq!(cfg.max_concurrent, 3);
        assert_eq!(cfg.gpu_sharing, GpuSharing::Vram);
        assert_eq!(cfg.advertise.cuda, Some(false));
        assert_eq!(cfg.advertise.ram_gib, Some(4.0));
        assert_eq!(cfg.heartbeat, Duration::from_secs(30));
        assert_eq!(cfg.labels.get("rack").map(String::as_str), Some("a"));
        assert_eq!(cfg.labels.get("zone").map(String::as_str), Some("b"));
    }

    #[test]
    fn tls_files_come_from_flags_before_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            "ca_file = \"/etc/cis490/ca.pem\"\ncert_file = \"/etc/cis490/a.pem\"\nkey_file = \"/etc/cis490/a-key.pem\"\n",
        )
        .unwrap();
        let flags = RunFlags {
            config: Some(path),
            name: Some("a".into()),
            ca_file: Some("/flag/ca.pem".into()),
            ..RunFlags::default()
        };
        let cfg = AgentConfig::resolve(&flags).unwrap();
        assert_eq!(cfg.tls.ca_file, Some(PathBuf::from("/flag/ca.pem")));
        assert_eq!(cfg.tls.cert_file, Some(PathBuf::from("/etc/cis490/a.pem")));
        assert_eq!(
            cfg.tls.key_file,
            Some(PathBuf::from("/etc/cis490/a-key.pem"))
        );
    }

    #[test]
    fn unknown_config_key_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "sever = \"http://x\"\n").unwrap();
        let flags = RunFlags {
            config: Some(path),
            ..RunFlags::default()
        };
        let err = AgentConfig::resolve(&flags).unwrap_err();
        assert!(err.to_string().contains("agent.toml"), "{err}");
    }

    #[test]
    fn the_example_config_file_loads() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../etc/agent.toml.example");
        let file = FileConfig::load(&example).unwrap();
        assert_eq!(file.server.as_deref(), Some("http://pi.local:8787"));
        assert_eq!(file.gpu_sharing, Some(GpuSharing::Exclusive));
        let flags = RunFlags {
            config: Some(example),
            name: Some("example".into()),
            ..RunFlags::default()
        };
        let cfg = AgentConfig::resolve(&flags).unwrap();
        assert_eq!(cfg.heartbeat, Duration::from_secs(30));
        assert_eq!(cfg.claim_wait, Duration::from_secs(20));
    }

    #[test]
    fn host_names_become_valid_worker_names() {
        assert_eq!(worker_name_from_host("gpu box#1"), "gpu-box-1");
        assert!(WorkerName::parse(&worker_name_from_host("-x")).is_ok());
        assert_eq!(worker_name_from_host(""), "localhost");
    }

    #[test]
    fn the_token_comes_from_a_file_and_never_from_two_places_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("worker.token");
        std::fs::write(&token_file, "cis490w_from_file\n").unwrap();
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "worker_token_file = {:?}\n",
                token_file.display().to_string()
            ),
        )
        .unwrap();
        let from_config = RunFlags {
            config: Some(config.clone()),
            name: Some("n".into()),
            ..RunFlags::default()
        };
        let cfg = AgentConfig::resolve(&from_config).unwrap();
        assert_eq!(cfg.worker_token.as_deref(), Some("cis490w_from_file"));

        // A flag beats the file's key, as every flag does.
        let flag = RunFlags {
            worker_token: Some("from-flag".into()),
            ..from_config.clone()
        };
        assert_eq!(
            AgentConfig::resolve(&flag).unwrap().worker_token.as_deref(),
            Some("from-flag")
        );
        let flag_file = RunFlags {
            config: None,
            worker_token_file: Some(token_file.clone()),
            ..from_config.clone()
        };
        assert_eq!(
            AgentConfig::resolve(&flag_file)
                .unwrap()
                .worker_token
                .as_deref(),
            Some("cis490w_from_file")
        );

        let both = RunFlags {
            worker_token: Some("x".into()),
            worker_token_file: Some(token_file.clone()),
            ..from_config.clone()
        };
        let err = AgentConfig::resolve(&both).unwrap_err();
        assert!(err.to_string().contains("--worker-token-file"), "{err}");

        std::fs::write(&token_file, "\n").unwrap();
        let err = AgentConfig::resolve(&from_config).unwrap_err();
        assert!(
            err.to_string().contains("empty") && err.to_string().contains("worker.token"),
            "{err}"
        );
        std::fs::remove_file(&token_file).unwrap();
        let err = AgentConfig::resolve(&from_config).unwrap_err();
        assert!(err.to_string().contains("worker.token"), "{err}");
    }

    #[test]
    fn token_is_redacted_in_debug() {
        let flags = RunFlags {
            name: Some("n".into()),
            worker_token: Some("s3cret".into()),
            ..RunFlags::default()
        };
        let cfg = AgentConfig::resolve(&flags).unwrap();
        assert!(!format!("{cfg:?}").contains("s3cret"));
    }
}
