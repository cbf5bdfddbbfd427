//! Nodes: what an agent can run (`Capability`), and how the API shows a worker.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{JobId, WorkerName};

/// MiB in one GiB, for comparing manifest constraints (GiB) with capability (MiB).
pub const MIB_PER_GIB: f64 = 1024.0;

/// One NVIDIA GPU.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Gpu {
    /// NVML index; what CUDA_VISIBLE_DEVICES names.
    pub index: u32,
    pub name: String,
    #[serde(default)]
    pub uuid: Option<String>,
    pub vram_total_mib: u64,
    /// Free VRAM as NVML reports it right now (observation).
    pub vram_free_mib: u64,
    /// VRAM the agent can still hand to a job: total minus what its running jobs declared
    /// (or what `--advertise` says). The server matches `min_vram_gib` against this.
    pub vram_allocatable_mib: u64,
    /// VRAM that running jobs declared on this GPU (claims of an agent sharing GPUs by
    /// VRAM): 0 when no job holds any part of it. A CUDA job without `min_vram_gib` needs
    /// a GPU to itself, so the server hands it out only when some GPU shows 0 here. Absent
    /// (0) from older agents.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub vram_allocated_mib: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What a host is and what it can take right now. Agents report it as node status
/// (`PUT /v1/worker/{name}`) and send it with every claim; on a claim the allocatable
/// fields describe what is free at that moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Capability {
    pub hostname: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub arch: String,
    pub cores: u32,
    /// Cores the agent can still hand to a job: `cores` minus what its running jobs asked
    /// for (`cores` in the manifest). The server matches a job's `cores` against this.
    /// Absent from older agents (all cores are offered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores_allocatable: Option<u32>,
    pub ram_total_mib: u64,
    /// Available RAM as the OS reports it right now (observation).
    #[serde(default)]
    pub ram_available_mib: u64,
    /// RAM the agent can still hand to a job. The server matches `min_ram_gib` against this.
    pub ram_allocatable_mib: u64,
    /// GPUs the agent can hand to a job now (on a claim: only those with room left).
    #[serde(default)]
    pub gpus: Vec<Gpu>,
    /// True when CUDA jobs can run here (an NVIDIA GPU and driver were found, or advertised).
    #[serde(default)]
    pub cuda: bool,
    #[serde(default)]
    pub driver_version: Option<String>,
    #[serde(default)]
    pub cuda_version: Option<String>,
    #[serde(default)]
    pub torch_version: Option<String>,
    #[serde(default)]
    pub torch_cuda: Option<bool>,
    /// Why no GPU was found, in one line (e.g. "NVML library not found").
    #[serde(default)]
    pub gpu_note: Option<String>,
    #[serde(default)]
    pub git_commit: Option<String>,
    #[serde(default)]
    pub agent_version: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// How many jobs the agent runs at once.
    #[serde(default = "one")]
    pub max_concurrent: u32,
    /// Jobs the agent is running now.
    #[serde(default)]
    pub running_jobs: Vec<JobId>,
    /// Which agent process sent this (claims and node reports), so the server can refuse a
    /// second live agent under the same worker name. Not a resource; absent from old agents
    /// and from `cis490-agent capability`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<AgentInstance>,
}

/// One agent process. Each `cis490-agent run` makes a random ID at start; the server lets
/// one live instance hold a worker name at a time (409 `name_in_use` for another).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentInstance {
    /// Random, 1 to 64 characters of `[A-Za-z0-9_-]`.
    pub id: String,
    /// The agent's process ID, shown to whoever is refused the name.
    #[serde(default)]
    pub pid: Option<u32>,
    /// Set on the agent's last node report as it exits: the name is free at once instead
    /// of after `node_stale_after_s`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopping: bool,
    /// The instance of this agent's previous life on the same state dir. The agent holds
    /// that state dir's lock, so the previous instance is gone however it ended (SIGKILL,
    /// OOM, power cut): the server hands the name over at once instead of making a
    /// restarted agent wait until the dead one goes stale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
}

impl AgentInstance {
    /// Longest instance ID the server accepts.
    pub const MAX_ID_LEN: usize = 64;

    /// None when `id` is usable; otherwise why not.
    pub fn id_problem(id: &str) -> Option<String> {
        if id.is_empty() || id.len() > Self::MAX_ID_LEN {
            return Some(format!(
                "instance ID must be 1 to {} characters, got {}",
                Self::MAX_ID_LEN,
                id.len()
            ));
        }
        if !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Some(format!(
                "instance ID {id:?} may hold only letters, digits, '-' and '_'"
            ));
        }
        None
    }
}

fn one() -> u32 {
    1
}

impl Capability {
    /// The most allocatable VRAM on any one GPU, in GiB.
    pub fn max_gpu_allocatable_gib(&self) -> f64 {
        self.gpus
            .iter()
            .map(|g| g.vram_allocatable_mib as f64 / MIB_PER_GIB)
            .fold(0.0, f64::max)
    }

    /// True when some listed GPU has no job holding any part of it (what a CUDA job
    /// without `min_vram_gib` needs).
    pub fn has_whole_gpu(&self) -> bool {
        self.gpus.iter().any(|g| g.vram_allocated_mib == 0)
    }

    pub fn ram_allocatable_gib(&self) -> f64 {
        self.ram_allocatable_mib as f64 / MIB_PER_GIB
    }
}

/// A node's condition, as `cis490ctl get workers` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum NodeState {
    /// Heartbeats are fresh and the node takes new jobs.
    Ready,
    /// No report within the lease length.
    NotReady,
    /// An operator stopped new jobs going to it.
    Cordoned,
    /// Cordoned and waiting for its running jobs to finish.
    Draining,
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeState::Ready => "Ready",
            NodeState::NotReady => "NotReady",
            NodeState::Cordoned => "Cordoned",
            NodeState::Draining => "Draining",
        })
    }
}

/// A worker as the API serves it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkerView {
    pub name: WorkerName,
    pub state: NodeState,
    /// Heartbeats fresh (independent of cordon).
    pub ready: bool,
    pub cordoned: bool,
    pub draining: bool,
    pub capability: Capability,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// Jobs the queue says this worker holds (claimed or running).
    pub running_jobs: Vec<JobId>,
    /// The last failure of this host itself (a trainer it could not start), until the
    /// worker next completes a job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_problem: Option<HostProblem>,
    /// The labels `node_selector` matches: the agent's (`capability.labels`) with the
    /// manifest's `[[hosts]]` entry's on top.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A failure that was the host's, not the trainer's: `HostProblem` in `get workers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostProblem {
    pub reason: String,
    pub job_id: JobId,
    pub at: DateTime<Utc>,
}
