//! The artifact store: sha256-addressed tar.zst bundles, streamed, verified and durable
//! before an upload is answered, each byte sequence stored once.
//!
//! Two parts behind small interfaces: the bytes ([`BlobStore`]; [`FsBlobs`] keeps them in
//! a directory, see `fs/` for its layout and crash order) and the index of what is stored
//! ([`ArtifactIndex`]; the `artifacts` table of the queue's database). An upload is put,
//! then indexed, then answered: a crash in between leaves bytes without their index row,
//! which the next start-up scan (of any server on the store) or a retried upload of the
//! same bytes puts back. Which job uploaded what is the queue's record (its `uploads`
//! table, one row per job, attempt and artifact); the artifact listing joins the two.

mod blobs;
pub mod fs;
mod index;

use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;
use cis490_api::{ArtifactId, ArtifactView, JobId, UploadStatus};
use futures_util::{Stream, StreamExt};

pub use blobs::{Blob, BlobStore, Scan, UploadBody};
pub use fs::FsBlobs;
pub use index::{ArtifactIndex, QueueIndex};

use crate::queue::QueueError;

/// Why the store refused or failed an operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The upload is larger than the configured cap (announced or streamed).
    #[error("upload exceeds the size cap of {limit} bytes")]
    TooLarge { limit: u64 },
    /// The uploaded bytes do not hash to the sha256 the client announced.
    #[error("sha256 mismatch: the client announced {expected}, the bytes hash to {actual}")]
    ShaMismatch { expected: String, actual: String },
    /// The request body could not be read to its end (the client went away or sent garbage).
    #[error("reading the upload body failed: {0}")]
    BodyRead(String),
    /// No artifact with this ID is stored.
    #[error("no artifact {0}")]
    NotFound(ArtifactId),
    /// The index has the artifact, but this server's store does not hold its bytes (servers
    /// on one database without a shared store, or bytes removed by hand).
    #[error(
        "artifact {0} is in the index, but this server's store does not hold its bytes: give \
         every server of the database the same store_dir, or pull it through the server that \
         received it"
    )]
    NotHeld(ArtifactId),
    /// A file system operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The artifact index (the database) failed.
    #[error("artifact index: {0}")]
    Index(#[from] QueueError),
}

impl StoreError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
        let context = context.into();
        move |source| StoreError::Io { context, source }
    }
}

/// What an upload is for: what its blob's metadata says (its bytes go where their sha256
/// says).
#[derive(Debug, Clone)]
pub struct Upload {
    pub job_id: JobId,
    pub model: String,
    pub mode: String,
    pub worker: String,
    /// The lease attempt the upload was made under (None where unknown).
    pub attempt: Option<u32>,
    /// The sha256 the client announced (`X-Content-Sha256`).
    pub expected_sha256: ArtifactId,
    /// The `Content-Length` the client announced, if any: checked against the cap up front.
    pub content_length: Option<u64>,
}

impl Upload {
    /// The record of these bytes as stored by this upload, now.
    pub fn view(&self, size_bytes: u64) -> ArtifactView {
        ArtifactView {
            artifact_id: self.expected_sha256.clone(),
            job_id: self.job_id.clone(),
            attempt: self.attempt,
            model: self.model.clone(),
            mode: self.mode.clone(),
            worker: self.worker.clone(),
            size_bytes,
            received_at: Utc::now(),
        }
    }
}

/// The result of a successful upload.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub artifact_id: ArtifactId,
    pub status: UploadStatus,
    pub size_bytes: u64,
    /// This upload's record, as the blob store wrote it beside new bytes: the index row is
    /// this one, so the two never disagree (on `received_at`, say).
    pub record: ArtifactView,
}

/// What the start-up scan found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Partial uploads removed.
    pub removed_partials: usize,
    /// Artifact directories without a bundle (a crash before the rename) removed.
    pub removed_incomplete: usize,
    /// meta.json files rewritten from an older version's index.jsonl.
    pub repaired_meta: usize,
    /// Bundles that could not be repaired (no metadata to index them by), left in place.
    pub unrepairable: Vec<String>,
    /// Artifact folders of the old `<model>_<mode>/` layout moved into `blobs/`.
    pub migrated_legacy: usize,
    /// Old-layout copies of bytes `blobs/` already held, removed.
    pub removed_duplicates: usize,
    /// Stored blobs the index lacked, added (all of them the first time a store of an older
    /// version is opened; after that, the bytes of an upload a crash cut off before its
    /// index row).
    pub indexed: usize,
}

impl RecoveryReport {
    /// True when the scan found nothing to do.
    pub fn is_clean(&self) -> bool {
        *self == RecoveryReport::default()
    }
}

/// The longest model or mode name the store takes (each is one part of a directory name).
pub const MAX_NAME_LEN: usize = 128;
/// The longest directory name `<model>_<mode>`: 255 bytes is the limit of common file
/// systems (ext4, XFS, NTFS, APFS).
pub const MAX_GROUP_NAME_LEN: usize = 255;

/// True when `s` is safe as one path component (the seed's `_ID_RE`, minus leading dots).
pub fn is_safe_component(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Index rows the start-up scan adds per transaction.
const INDEX_BATCH: usize = 512;

/// How many artifacts [`ArtifactStore`] remembers as indexed before it starts over.
const KNOWN_INDEXED_CAP: usize = 4096;

/// The artifact store: its bytes and its index. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    blobs: Arc<dyn BlobStore>,
    index: Arc<dyn ArtifactIndex>,
    /// Artifacts the index answered as indexed: index rows are never removed, so a
    /// deduplicated upload of one of these needs no lookup (many jobs of a lab make the
    /// same bytes). Only lookups fill it, so an index row lost to a crash is still put back
    /// by the next upload of those bytes.
    known_indexed: Arc<std::sync::Mutex<std::collections::HashSet<ArtifactId>>>,
}

impl ArtifactStore {
    /// A store of `blobs` indexed in `index`. Call [`ArtifactStore::recover`] before serving.
    pub fn new(blobs: Arc<dyn BlobStore>, index: Arc<dyn ArtifactIndex>) -> Self {
        Self {
            blobs,
            index,
            known_indexed: Arc::default(),
        }
    }

    fn known_indexed(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<ArtifactId>> {
        self.known_indexed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The largest upload accepted, in bytes.
    pub fn max_upload_bytes(&self) -> u64 {
        self.blobs.max_upload_bytes()
    }

    /// Streams `body` into the store (see [`BlobStore::put`]) and indexes it. Identical
    /// bytes already stored answer `AlreadyPresent`; their index row is put back if a crash
    /// lost it.
    pub async fn ingest<S, E>(&self, upload: &Upload, body: S) -> Result<Stored, StoreError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let body: UploadBody<'_> = Box::pin(body.map(|chunk| chunk.map_err(|e| e.to_string())));
        let stored = self.blobs.put(upload, body).await?;
        let present = stored.status == UploadStatus::AlreadyPresent;
        if present && self.known_indexed().contains(&stored.artifact_id) {
            return Ok(stored);
        }
        let index = Arc::clone(&self.index);
        let row = stored.record.clone();
        let was_indexed = blocking(move || {
            if present && index.contains(&row.artifact_id)? {
                return Ok(true);
            }
            index.add(std::slice::from_ref(&row))?;
            Ok(false)
        })
        .await?;
        if was_indexed {
            let mut known = self.known_indexed();
            if known.len() >= KNOWN_INDEXED_CAP {
                known.clear();
            }
            known.insert(stored.artifact_id.clone());
        }
        Ok(stored)
    }

    /// Opens an artifact's bundle.
    pub async fn open(&self, id: &ArtifactId) -> Result<Blob, StoreError> {
        match self.blobs.get(id).await {
            Err(StoreError::NotFound(id)) => {
                let index = Arc::clone(&self.index);
                let lookup = id.clone();
                let indexed = blocking(move || Ok(index.contains(&lookup)?)).await?;
                Err(if indexed {
                    StoreError::NotHeld(id)
                } else {
                    StoreError::NotFound(id)
                })
            }
            other => other,
        }
    }

    /// The start-up scan (blocking): the blob store's repairs, then every blob held that the
    /// index lacks is indexed.
    pub fn recover(&self) -> Result<RecoveryReport, StoreError> {
        let Scan { mut report, held } = self.blobs.recover()?;
        for rows in held.chunks(INDEX_BATCH) {
            report.indexed += self.index.add(rows)?;
        }
        if report.indexed > 0 {
            tracing::info!(
                indexed = report.indexed,
                "stored artifacts the database index lacked were indexed"
            );
        }
        Ok(report)
    }
}

/// Runs store work on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StoreError::Io {
            context: "store task".into(),
            source: std::io::Error::other(e.to_string()),
        })?
}

#[cfg(test)]
mod tests;
