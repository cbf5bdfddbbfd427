//! cis490-api: the contract between the cis490 programs. Wire types (serde) and a typed
//! HTTP client that the agent and cis490ctl share. No server code lives here.

pub mod client;
pub mod config_file;
pub mod human;
pub mod ids;
pub mod job;
pub mod leaderboard;
pub mod node;
pub mod paging;
pub mod results;
pub mod selector;
pub mod state_lock;
pub mod tls;
pub mod wire;

pub use client::{Client, ClientBuilder, ClientError};
pub use config_file::ConfigFileError;
pub use ids::{
    ArtifactId, IdError, IdPrefix, JobId, WorkerName, MIN_MUTATING_PREFIX, SHORT_ID_LEN,
};
pub use job::{
    Constraints, Event, Hyper, JobError, JobSpec, JobStatus, JobView, Lease, RetryPolicy,
};
pub use node::{AgentInstance, Capability, Gpu, HostProblem, NodeState, WorkerView};
pub use paging::{page_limit, BadLimit, Page, PageQuery, DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT};
pub use results::{
    AttemptProgress, JobProgress, MetricValue, Metrics, ResultRow, ResultsQuery, TrainerReport,
};
pub use selector::{BadSelector, LabelSelector, LabelTerm};
pub use tls::{ClientTls, TlsFileError, TlsProblem};
pub use wire::*;

/// This build's version, reported by every binary and the health route.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
