//! The queue's error type: what went wrong, and the API code each case answers with.

use cis490_api::JobId;

/// Why a queue operation failed. `code()` gives the API error code.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// No job (or worker) matches the ID, prefix or name.
    #[error("no {what} matches {key:?}")]
    NotFound { what: &'static str, key: String },
    /// An ID prefix matches more than one job.
    #[error("job ID prefix {prefix:?} is ambiguous: it matches {}", candidates.join(", "))]
    Ambiguous {
        prefix: String,
        /// Short IDs of (some of) the matching jobs.
        candidates: Vec<String>,
    },
    /// The caller's lease is not the job's current lease (expired and reassigned, wrong
    /// worker, or the job is no longer leased): a fencing refusal.
    #[error("lease lost for job {id}: {reason}")]
    LeaseLost { id: String, reason: String },
    /// The operation is not allowed from the job's (or worker's) current state.
    #[error("{message}")]
    InvalidState { message: String },
    /// Another live agent process (instance) holds the worker name: two agents may not
    /// share one name.
    #[error("{message}")]
    NameInUse { worker: String, message: String },
    /// A completion names an artifact that was not uploaded under the job's current lease
    /// (another job's, or one never uploaded).
    #[error("{message}")]
    ArtifactNotUploaded { message: String },
    /// A completion names no artifact although one was uploaded under the job's current
    /// lease.
    #[error("{message}")]
    ArtifactRequired { message: String },
    /// The request itself is malformed (e.g. a label selector term that is not `key=value`, `key!=value`, `key` or `!key`).
    #[error("{message}")]
    BadRequest { message: String },
    /// The database failed; the message is the backend's own (no backend type leaks into
    /// this error, so every backend answers with the same one).
    #[error("database error: {0}")]
    Db(String),
    /// The database gave up a transaction for a conflict with another one (deadlock,
    /// serialization failure); running it again may succeed.
    #[error("database conflict, try again: {0}")]
    Transient(String),
    /// A group commit failed; none of its operations took effect.
    #[error("the database could not commit: {0}")]
    Commit(String),
    /// Creating the database's directory failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A stored value could not be read back (bad JSON, bad ID, unknown status).
    #[error("corrupt queue data: {0}")]
    Corrupt(String),
}

impl QueueError {
    /// The API error code: not_found, ambiguous_id, lease_lost, invalid_state, name_in_use,
    /// artifact_not_uploaded, artifact_required, bad_request, internal.
    pub fn code(&self) -> &'static str {
        match self {
            QueueError::NotFound { .. } => "not_found",
            QueueError::Ambiguous { .. } => "ambiguous_id",
            QueueError::LeaseLost { .. } => "lease_lost",
            QueueError::InvalidState { .. } => "invalid_state",
            QueueError::NameInUse { .. } => "name_in_use",
            QueueError::ArtifactNotUploaded { .. } => "artifact_not_uploaded",
            QueueError::ArtifactRequired { .. } => "artifact_required",
            QueueError::BadRequest { .. } => "bad_request",
            QueueError::Db(_)
            | QueueError::Transient(_)
            | QueueError::Commit(_)
            | QueueError::Io(_)
            | QueueError::Corrupt(_) => "internal",
        }
    }

    pub(crate) fn corrupt(what: impl std::fmt::Display) -> Self {
        QueueError::Corrupt(what.to_string())
    }

    pub(crate) fn job_not_found(id: &JobId) -> Self {
        QueueError::NotFound {
            what: "job",
            key: id.to_string(),
        }
    }
}

/// A request refused for what it carries (a trainer report beyond its bounds).
pub(crate) fn bad_request(message: String) -> QueueError {
    QueueError::BadRequest { message }
}

impl From<rusqlite::Error> for QueueError {
    fn from(e: rusqlite::Error) -> Self {
        QueueError::Db(e.to_string())
    }
}
