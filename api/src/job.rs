//! Jobs: what the manifest asks for (`JobSpec`), where a job stands (`JobStatus`), and the
//! view of a job that the API serves (`JobView`).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{ArtifactId, JobId, WorkerName};

/// Hyperparameters: key -> JSON value (TOML values converted), sorted by key.
pub type Hyper = BTreeMap<String, serde_json::Value>;

/// Where a job may run. None of these fields are part of the job's identity: changing them
/// updates a job that has not started yet.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Constraints {
    /// The job needs an NVIDIA GPU with CUDA.
    #[serde(default)]
    pub require_cuda: bool,
    /// A soft preference: CUDA hosts get the job first.
    #[serde(default)]
    pub prefer_cuda: bool,
    /// Free VRAM needed on one GPU, in GiB (implies a GPU).
    #[serde(default)]
    pub min_vram_gib: f64,
    /// Allocatable RAM needed on the host, in GiB.
    #[serde(default)]
    pub min_ram_gib: f64,
    /// When non-empty, only these workers may run the job.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Worker labels the job needs, every pair (`node_selector = { gpu = "rtx-4090" }`):
    /// the worker's labels are its agent's (`--label`, config `[labels]`) with its
    /// `[[hosts]]` entry's on top.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// CPU cores the job holds while it runs (0: it claims none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cores: u32,
    /// Whole GPUs the job holds while it runs (0: none, unless `require_cuda` asks for one).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gpus: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Constraints {
    /// The constraints as short terms for tables and listings, in a fixed order:
    /// `cuda`, `prefer-cuda`, `vram>=8Gi`, `ram>=16Gi`, `hosts=a|b`, `cores=4`, `gpus=2`, then
    /// each node_selector pair as `key=value`; empty when none apply.
    pub fn terms(&self) -> Vec<String> {
        let mut terms = Vec::new();
        if self.require_cuda {
            terms.push("cuda".to_string());
        }
        if self.prefer_cuda {
            terms.push("prefer-cuda".to_string());
        }
        if self.min_vram_gib > 0.0 {
            terms.push(format!("vram>={}Gi", self.min_vram_gib));
        }
        if self.min_ram_gib > 0.0 {
            terms.push(format!("ram>={}Gi", self.min_ram_gib));
        }
        if !self.allowed_hosts.is_empty() {
            terms.push(format!("hosts={}", self.allowed_hosts.join("|")));
        }
        if self.cores > 0 {
            terms.push(format!("cores={}", self.cores));
        }
        if self.gpus > 0 {
            terms.push(format!("gpus={}", self.gpus));
        }
        for (key, value) in &self.node_selector {
            terms.push(format!("{key}={value}"));
        }
        terms
    }
}

/// How failures are retried. A trainer's non-zero exit fails the job unless
/// `retries_on_failure` says otherwise; a vanished agent (lease expired) is always retried
/// while attempts remain; an agent shutting down releases the job without using an attempt.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// How many times a trainer failure (non-zero exit) is retried. 0 = never.
    #[serde(default)]
    pub retries_on_failure: u32,
}

/// One job as the manifest declares it, fully expanded (matrix applied, defaults filled in).
/// This is also what a worker receives on claim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobSpec {
    pub id: JobId,
    pub model: String,
    pub mode: String,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = BTreeMap<String, serde_json::Value>))]
    pub hyper: Hyper,
    #[serde(default)]
    pub split_recipe: Option<String>,
    #[serde(default)]
    pub train_hosts: Vec<String>,
    #[serde(default)]
    pub seed: i64,
    #[serde(default)]
    pub constraints: Constraints,
    /// Higher runs first.
    #[serde(default)]
    pub priority: i32,
    /// Attempts allowed before the job is failed for good (lease expiries and retried
    /// failures count; agent shutdowns do not).
    pub max_attempts: u32,
    /// Lease length: a worker that has not heartbeated for this long has lost the job.
    pub stale_after_s: u64,
    #[serde(default)]
    pub retry: RetryPolicy,
    /// The trainer's argv (never run through a shell); the agent appends hyper as
    /// `--key value`.
    pub command: Vec<String>,
    /// Free-form labels (`-l key=value` filters).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Wall-clock limit of one attempt in seconds: the agent stops the trainer (SIGTERM,
    /// then SIGKILL) and fails the attempt "timed out after N s (timeout_s)". None: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u64>,
    /// Extra environment for the trainer (the model's, then the job's per key).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Position in the expanded manifest: the last tie-breaker of the queue order.
    #[serde(default)]
    pub manifest_order: u64,
}

/// The lifecycle states of design.md. `Claimed` becomes `Running` at the first heartbeat.
/// `Held` is a pending job an operator set aside (`cis490ctl hold`): kept, never claimed,
/// until `release` makes it pending again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Pending,
    Held,
    Claimed,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 7] = [
        JobStatus::Pending,
        JobStatus::Held,
        JobStatus::Claimed,
        JobStatus::Running,
        JobStatus::Completed,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Held => "held",
            JobStatus::Claimed => "claimed",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// True for states a job never leaves without an operator (requeue).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled
        )
    }

    /// True while a worker holds a lease on the job.
    pub fn is_leased(self) -> bool {
        matches!(self, JobStatus::Claimed | JobStatus::Running)
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown status name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown job status {0:?} (expected pending, held, claimed, running, completed, failed or cancelled)"
)]
pub struct UnknownStatus(pub String);

impl FromStr for JobStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, UnknownStatus> {
        JobStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_string()))
    }
}

/// A worker's hold on one attempt of a job. Every call about the job carries it; a stale
/// lease is refused with 409 `lease_lost` (a fencing token).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Lease {
    pub attempt: u32,
    pub token: String,
}

/// Why a job failed, kept for the job's whole life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobError {
    pub reason: String,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub log_tail: Option<String>,
}

/// One transition or notable thing in a job's life, as `describe` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Event {
    /// Position in the server's event log; `GET /v1/events?since=` pages by it.
    #[serde(default)]
    pub seq: u64,
    pub at: DateTime<Utc>,
    pub job_id: Option<JobId>,
    pub worker: Option<WorkerName>,
    /// A short CamelCase kind, like Kubernetes event reasons: Created, Claimed, Started,
    /// Completed, Failed, Retried, LeaseExpired, Released, Cancelled, Requeued, Tombstoned,
    /// Revived, Updated, Cordoned, ...
    pub kind: String,
    pub message: String,
}

/// A job as the API serves it: spec, state and history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobView {
    pub id: JobId,
    pub model: String,
    pub mode: String,
    #[cfg_attr(feature = "openapi", schema(value_type = BTreeMap<String, serde_json::Value>))]
    pub hyper: Hyper,
    pub split_recipe: Option<String>,
    pub train_hosts: Vec<String>,
    pub seed: i64,
    pub constraints: Constraints,
    pub priority: i32,
    pub labels: BTreeMap<String, String>,
    /// The spec's wall-clock limit of an attempt, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u64>,
    /// The spec's extra trainer environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    pub status: JobStatus,
    /// The worker holding the lease, or the last one that ran the job.
    pub worker: Option<WorkerName>,
    /// Attempts used so far (counted toward max_attempts).
    pub attempts: u32,
    pub max_attempts: u32,
    pub artifact_id: Option<ArtifactId>,
    pub error: Option<JobError>,
    /// Removed from the manifest; kept with its history, no longer claimable.
    pub tombstoned: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// The last log tail a heartbeat or failure carried.
    #[serde(default)]
    pub log_tail: Option<String>,
    /// The latest progress point of the current attempt, while the job is claimed or
    /// running (`$CIS490_PROGRESS_FILE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<BTreeMap<String, crate::results::MetricValue>>))]
    pub progress: Option<crate::results::Metrics>,
    /// The final metrics of the attempt that completed the job (`metrics.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<BTreeMap<String, crate::results::MetricValue>>))]
    pub metrics: Option<crate::results::Metrics>,
    /// Present on the detail route (`GET /v1/job/{id}`), empty in lists.
    #[serde(default)]
    pub events: Vec<Event>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_round_trip() {
        for st in JobStatus::ALL {
            assert_eq!(st.as_str().parse::<JobStatus>().unwrap(), st);
            assert_eq!(
                serde_json::to_string(&st).unwrap(),
                format!("\"{}\"", st.as_str())
            );
        }
        assert!("done".parse::<JobStatus>().is_err());
    }

    #[test]
    fn terminal_and_leased_states() {
        assert!(JobStatus::Completed.is_terminal());
        assert!(!JobStatus::Running.is_terminal());
        assert!(JobStatus::Claimed.is_leased());
        assert!(!JobStatus::Pending.is_leased());
    }
}
