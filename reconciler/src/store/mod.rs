//! The artifact store: sha256-addressed tar.zst bundles, streamed, verified, fsynced.
//!
//! A port of the seed's `store.py` with its same-second race fixed (every upload streams to
//! its own partial file with a random suffix) and a start-up scan that repairs what a crash
//! can leave behind.
//!
//! Layout under the store root (content-addressed: each byte sequence is stored once,
//! whichever jobs, models and modes produced it):
//!
//! ```text
//! index.jsonl                          append-only ingest log, one ArtifactView per line
//! .incoming/<job_id>-<random>.partial  uploads in flight (removed on any error)
//! blobs/<artifact_id>/
//!     meta.json                        the ArtifactView of the first upload of these bytes
//!     bundle.tar.zst                   the uploaded bytes; artifact_id = their sha256
//! ```
//!
//! Which job uploaded what is the queue's record (its `uploads` table, one row per job,
//! attempt and artifact); [`ArtifactStore::listing`] joins it with what is stored. Stores
//! written before this layout kept one copy per `<model>_<mode>/<artifact_id>/` (a name
//! that two (model, mode) pairs could share); the start-up scan moves them into `blobs/`
//! and drops the duplicate copies ([`ArtifactStore::recover`]).
//!
//! Several servers may share one store (`store_dir` on a network file system, beside one
//! PostgreSQL database): each partial is locked while its upload streams, so the start-up
//! scan of one server removes only partials nobody holds; commits take a store-wide file
//! lock (`.commit.lock`), so identical bytes committed by two servers at once end as one
//! bundle and one index row, and the scan removes a bundle-less folder only under it.
//! Which job uploaded what is in the shared database.
//!
//! Commit order (so a crash at any instant is repairable): the bundle is fsynced in
//! `.incoming/`, `meta.json` is written (temp + fsync + rename), the bundle is renamed into
//! place, the directories are fsynced, then the index row is appended and fsynced. A bundle
//! therefore never exists without its meta.json; a missing index row is restored from it at
//! start-up ([`ArtifactStore::recover`]).
//!
//! How bytes travel: a large upload is hashed as it arrives and handed, chunk by chunk, to
//! one blocking thread that writes it in 128 KiB pieces (no blocking-pool hop per
//! chunk). A small one (announced at most [`SMALL_UPLOAD`] bytes) is collected in memory
//! and written, fsynced and committed in one blocking task. Bytes that are already stored
//! are only hashed: nothing is written, and the answer waits for the commit lock, so it
//! never reports a bundle whose commit (and its fsyncs) is still under way.

mod recover;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use chrono::Utc;
use cis490_api::{ArtifactId, ArtifactView, JobId, UploadStatus};
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

pub use recover::RecoveryReport;

/// File name of an artifact's bytes inside its directory.
pub const BUNDLE_FILE: &str = "bundle.tar.zst";
/// File name of an artifact's metadata inside its directory.
pub const META_FILE: &str = "meta.json";
/// The append-only ingest log at the store root.
pub const INDEX_FILE: &str = "index.jsonl";
/// The folder that holds one folder per stored byte sequence, named by its sha256.
pub const BLOBS_DIR: &str = "blobs";
/// Where uploads stream to before they are verified.
pub const INCOMING_DIR: &str = ".incoming";
/// Locked (flock) around each commit, so that servers sharing the store commit one at a
/// time and the start-up scan never takes a commit in flight for a crash's leftovers.
pub const COMMIT_LOCK_FILE: &str = ".commit.lock";
/// Suffix of an upload in flight.
pub const PARTIAL_SUFFIX: &str = ".partial";
/// Uploads announced at most this large are received in memory and written in one go.
pub const SMALL_UPLOAD: u64 = 1 << 20;
/// Received chunks (often a few KiB each) are copied into buffers of this size, each one
/// wake-up of the writer thread and one write.
const WRITE_BATCH: usize = 128 << 10;
/// Buffers that circulate between the request and the writer thread (so a slow disk slows
/// the client instead of filling memory). They are reused, so hyper's read buffer is
/// released chunk by chunk and reused too: holding hyper's chunks instead made it allocate
/// fresh memory all along (page faults and munmap cost more than the copy). Small on
/// purpose: 4 x 1 MiB buffers (out of L2 cache) tripled the server's CPU per upload.
const WRITE_BUFFERS: usize = 2;

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
    /// A file system operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
        let context = context.into();
        move |source| StoreError::Io { context, source }
    }
}

/// What an upload is for: what its meta.json says (its bytes go where their sha256 says).
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

/// The result of a successful upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub artifact_id: ArtifactId,
    pub status: UploadStatus,
    pub size_bytes: u64,
}

/// The artifact store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    max_upload_bytes: u64,
    /// Serializes the commit step (existence check, renames, index append) so that two
    /// identical uploads finishing together store one bundle and one index row.
    commit: Mutex<()>,
}

/// Removes the partial file when dropped unless it was committed: covers every error path,
/// a panic, and a handler future dropped because the client disconnected.
struct PartialFile {
    path: Option<PathBuf>,
}

impl PartialFile {
    fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The file was renamed into place: nothing to clean up.
    fn disarm(&mut self) {
        self.path = None;
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            match std::fs::remove_file(&path) {
                Ok(()) => tracing::debug!(path = %path.display(), "removed partial upload"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "could not remove partial upload")
                }
            }
        }
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

/// True when `name` is a full artifact ID as the store names its folders.
fn is_artifact_dir_name(name: &str) -> bool {
    ArtifactId::parse(name).is_ok_and(|id| id.as_str() == name)
}

/// fsyncs a directory so that renames and creations inside it survive a power cut.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io(format!(
            "syncing directory {}",
            dir.display()
        )))
}

impl ArtifactStore {
    /// Opens (creating) the store at `root`. Call [`ArtifactStore::recover`] before serving.
    pub fn open(root: &Path, max_upload_bytes: u64) -> Result<Self, StoreError> {
        let new_blobs = !root.join(BLOBS_DIR).is_dir();
        for dir in [root.join(INCOMING_DIR), root.join(BLOBS_DIR)] {
            std::fs::create_dir_all(&dir)
                .map_err(StoreError::io(format!("creating {}", dir.display())))?;
        }
        // Commits fsync blobs/ itself; its own entry in the root is made durable here, once.
        if new_blobs {
            sync_dir(root)?;
        }
        let index = root.join(INDEX_FILE);
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&index)
            .map_err(StoreError::io(format!("creating {}", index.display())))?;
        Ok(Self {
            inner: Arc::new(Inner {
                root: root.to_path_buf(),
                max_upload_bytes,
                commit: Mutex::new(()),
            }),
        })
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The largest upload accepted, in bytes.
    pub fn max_upload_bytes(&self) -> u64 {
        self.inner.max_upload_bytes
    }

    /// Where uploads in flight live.
    pub fn incoming_dir(&self) -> PathBuf {
        self.inner.root.join(INCOMING_DIR)
    }

    fn index_path(&self) -> PathBuf {
        self.inner.root.join(INDEX_FILE)
    }

    fn blobs_dir(&self) -> PathBuf {
        self.inner.root.join(BLOBS_DIR)
    }

    /// Streams `body` into the store: hashed while written, capped, verified against the
    /// announced sha256, fsynced and renamed into place. Identical bytes already stored
    /// answer `AlreadyPresent`. On any error (including the future being dropped) no file
    /// is left behind.
    pub async fn ingest<S, E>(&self, upload: &Upload, body: S) -> Result<Stored, StoreError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        let limit = self.inner.max_upload_bytes;
        if upload.content_length.is_some_and(|n| n > limit) {
            return Err(StoreError::TooLarge { limit });
        }
        let body = std::pin::pin!(body);
        let known = self
            .bundle_path(&upload.expected_sha256)
            .try_exists()
            .unwrap_or(false);
        if known {
            return self.verify_known(upload, body).await;
        }
        if upload.content_length.is_some_and(|n| n <= SMALL_UPLOAD) {
            return self.ingest_small(upload, body).await;
        }
        self.ingest_streamed(upload, body).await
    }

    fn bundle_path(&self, id: &ArtifactId) -> PathBuf {
        self.blobs_dir().join(id.as_str()).join(BUNDLE_FILE)
    }

    fn partial_path(&self, upload: &Upload) -> PathBuf {
        self.incoming_dir().join(format!(
            "{}-{:016x}{:016x}{PARTIAL_SUFFIX}",
            upload.job_id.short(),
            rand::random::<u64>(),
            rand::random::<u64>()
        ))
    }

    fn lock_commit(&self) -> MutexGuard<'_, ()> {
        self.inner
            .commit
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The store-wide commit lock other servers sharing the store also take; released when
    /// the file is dropped. Taken inside [`Self::lock_commit`] (threads of this server queue
    /// on the mutex, not on the file).
    fn lock_commit_across_servers(&self) -> Result<std::fs::File, StoreError> {
        let path = self.root().join(COMMIT_LOCK_FILE);
        open_locked(
            &path,
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true),
        )
    }

    /// The announced bytes are already stored: hash the body to check it, write nothing.
    async fn verify_known<S, E>(
        &self,
        upload: &Upload,
        mut body: std::pin::Pin<&mut S>,
    ) -> Result<Stored, StoreError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        let limit = self.inner.max_upload_bytes;
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| StoreError::BodyRead(e.to_string()))?;
            size += chunk.len() as u64;
            if size > limit {
                return Err(StoreError::TooLarge { limit });
            }
            hasher.update(&chunk);
        }
        verify_sha(upload, hasher)?;
        let store = self.clone();
        let id = upload.expected_sha256.clone();
        // Under the commit lock: a bundle seen there has finished its commit (fsyncs and
        // index row included), so "already present" is as durable as "stored".
        let present = blocking(move || {
            let _guard = store.lock_commit();
            Ok(store.bundle_path(&id).is_file())
        })
        .await?;
        if !present {
            return Err(StoreError::Io {
                context: "deduplicating the upload".into(),
                source: std::io::Error::other("the stored bundle vanished; upload again"),
            });
        }
        Ok(Stored {
            artifact_id: upload.expected_sha256.clone(),
            status: UploadStatus::AlreadyPresent,
            size_bytes: size,
        })
    }

    /// A small upload: received in memory, then written, fsynced and committed by one
    /// blocking task.
    async fn ingest_small<S, E>(
        &self,
        upload: &Upload,
        mut body: std::pin::Pin<&mut S>,
    ) -> Result<Stored, StoreError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        let limit = self.inner.max_upload_bytes;
        let announced = upload.content_length.unwrap_or(0);
        let mut bytes = BytesMut::with_capacity(usize::try_from(announced).unwrap_or(0));
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| StoreError::BodyRead(e.to_string()))?;
            // The announced length only sized the buffer: the cap holds whatever arrives.
            if (bytes.len() + chunk.len()) as u64 > limit {
                return Err(StoreError::TooLarge { limit });
            }
            bytes.extend_from_slice(&chunk);
        }
        let bytes = bytes.freeze();
        let mut hasher = Sha256::new();
        hasher.update(&bytes);
        verify_sha(upload, hasher)?;
        let size = bytes.len() as u64;
        let record = self.record(upload, size);
        let partial_path = self.partial_path(upload);
        let store = self.clone();
        let status = blocking(move || {
            let mut partial = PartialFile {
                path: Some(partial_path.clone()),
            };
            let mut file = create_partial(&partial_path)?;
            file.write_all(&bytes)
                .and_then(|()| file.sync_all())
                .map_err(StoreError::io(format!(
                    "writing {}",
                    partial_path.display()
                )))?;
            drop(file);
            store.commit(&mut partial, &record)
        })
        .await?;
        Ok(Stored {
            artifact_id: upload.expected_sha256.clone(),
            status,
            size_bytes: size,
        })
    }

    /// A large (or unannounced) upload: hashed here as it arrives, written by one blocking
    /// thread.
    async fn ingest_streamed<S, E>(
        &self,
        upload: &Upload,
        mut body: std::pin::Pin<&mut S>,
    ) -> Result<Stored, StoreError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        let limit = self.inner.max_upload_bytes;
        let partial_path = self.partial_path(upload);
        // Held here: if this future is dropped (the client went away) the file goes with it.
        let mut partial = PartialFile {
            path: Some(partial_path.clone()),
        };
        let file = {
            let path = partial_path.clone();
            blocking(move || create_partial(&path)).await?
        };
        let (full, received) = mpsc::channel::<WriterMsg>(WRITE_BUFFERS + 1);
        let (recycle, mut empty) = mpsc::unbounded_channel::<Vec<u8>>();
        let writer = {
            let path = partial_path.clone();
            tokio::task::spawn_blocking(move || write_partial(file, received, &recycle, &path))
        };
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        let mut buffers = 1;
        let mut buffer = Vec::with_capacity(WRITE_BATCH);
        let mut writer_gone = false;
        'body: while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| StoreError::BodyRead(e.to_string()))?;
            size += chunk.len() as u64;
            if size > limit {
                return Err(StoreError::TooLarge { limit });
            }
            hasher.update(&chunk);
            let mut rest = &chunk[..];
            while !rest.is_empty() {
                let take = rest.len().min(WRITE_BATCH - buffer.len());
                buffer.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if buffer.len() == WRITE_BATCH {
                    let next = match empty.try_recv() {
                        Ok(b) => Some(b),
                        Err(_) if buffers < WRITE_BUFFERS => {
                            buffers += 1;
                            Some(Vec::with_capacity(WRITE_BATCH))
                        }
                        Err(_) => None,
                    };
                    let sent = std::mem::replace(&mut buffer, next.unwrap_or_default());
                    if full.send(WriterMsg::Buffer(sent)).await.is_err() {
                        writer_gone = true;
                        break 'body;
                    }
                    if buffer.capacity() == 0 {
                        match empty.recv().await {
                            Some(b) => buffer = b,
                            None => {
                                writer_gone = true;
                                break 'body;
                            }
                        }
                    }
                }
            }
        }
        // `End` tells the writer the body is complete; a sender dropped without it (this
        // future dropped, an error above) means the upload was abandoned. When the writer
        // stopped early its error is the answer.
        if !writer_gone {
            if !buffer.is_empty() {
                let _ = full.send(WriterMsg::Buffer(buffer)).await;
            }
            let _ = full.send(WriterMsg::End).await;
        }
        drop(full);
        writer.await.map_err(|e| StoreError::Io {
            context: "writing the upload".into(),
            source: std::io::Error::other(e.to_string()),
        })??;
        verify_sha(upload, hasher)?;
        let record = self.record(upload, size);
        let store = self.clone();
        // The partial guard moves into the blocking task, so a dropped request future
        // cannot remove a file the commit is renaming; the task removes it on error itself.
        let status = blocking(move || {
            let result = store.commit(&mut partial, &record);
            drop(partial);
            result
        })
        .await?;
        Ok(Stored {
            artifact_id: upload.expected_sha256.clone(),
            status,
            size_bytes: size,
        })
    }

    fn record(&self, upload: &Upload, size: u64) -> ArtifactView {
        ArtifactView {
            artifact_id: upload.expected_sha256.clone(),
            job_id: upload.job_id.clone(),
            attempt: upload.attempt,
            model: upload.model.clone(),
            mode: upload.mode.clone(),
            worker: upload.worker.clone(),
            size_bytes: size,
            received_at: Utc::now(),
        }
    }

    /// Moves a verified partial file into place (see the module docs for the order).
    fn commit(
        &self,
        partial: &mut PartialFile,
        record: &ArtifactView,
    ) -> Result<UploadStatus, StoreError> {
        let _guard = self.lock_commit();
        let _across_servers = self.lock_commit_across_servers()?;
        let blobs = self.blobs_dir();
        let final_dir = blobs.join(record.artifact_id.as_str());
        let bundle = final_dir.join(BUNDLE_FILE);
        if bundle.exists() {
            return Ok(UploadStatus::AlreadyPresent);
        }
        let Some(partial_path) = partial.path().map(Path::to_path_buf) else {
            return Err(StoreError::Io {
                context: "committing the upload".into(),
                source: std::io::Error::other("partial file already gone"),
            });
        };
        std::fs::create_dir_all(&final_dir)
            .map_err(StoreError::io(format!("creating {}", final_dir.display())))?;
        write_meta(&final_dir, record)?;
        std::fs::rename(&partial_path, &bundle).map_err(StoreError::io(format!(
            "moving {} to {}",
            partial_path.display(),
            bundle.display()
        )))?;
        partial.disarm();
        sync_dir(&final_dir)?;
        sync_dir(&blobs)?;
        self.append_index(record)?;
        tracing::info!(
            artifact = %record.artifact_id.short(),
            job = %record.job_id.short(),
            worker = %record.worker,
            size_bytes = record.size_bytes,
            "stored artifact"
        );
        Ok(UploadStatus::Stored)
    }

    /// Appends one row to index.jsonl and fsyncs it.
    pub(crate) fn append_index(&self, record: &ArtifactView) -> Result<(), StoreError> {
        let path = self.index_path();
        let mut line = serde_json::to_string(record).map_err(|e| StoreError::Io {
            context: "encoding an index row".into(),
            source: std::io::Error::other(e),
        })?;
        line.push('\n');
        // Servers sharing the store append one at a time (on a network file system an
        // append is not atomic); the lock goes with `f`.
        let mut f = open_locked(&path, std::fs::OpenOptions::new().create(true).append(true))?;
        f.write_all(line.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(StoreError::io(format!("appending to {}", path.display())))
    }

    /// Every stored byte sequence, once each (its meta.json: the upload that first stored
    /// it), newest first.
    pub fn list(&self) -> Result<Vec<ArtifactView>, StoreError> {
        let mut out = Vec::new();
        for dir in self.artifact_dirs()? {
            if !dir.join(BUNDLE_FILE).is_file() {
                continue;
            }
            match read_meta(&dir) {
                Ok(meta) => out.push(meta),
                Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "skipping artifact"),
            }
        }
        sort_newest_first(&mut out);
        Ok(out)
    }

    /// The rows of `recorded` (uploads the queue names) whose bytes the store holds, each
    /// with the stored size (rows backfilled from old queues report none): one `stat` per
    /// row.
    pub fn held(&self, recorded: Vec<ArtifactView>) -> Vec<ArtifactView> {
        recorded
            .into_iter()
            .filter_map(|mut row| {
                let (_, size) = self.locate(&row.artifact_id).ok()?;
                row.size_bytes = size;
                Some(row)
            })
            .collect()
    }

    /// Up to `limit` stored byte sequences that no recorded upload names (an upload whose
    /// lease was lost while it streamed), by artifact ID after `after`, each as its
    /// meta.json tells; `recorded` says which of a batch of IDs the queue names. They are
    /// listed after the recorded uploads, so nothing stored is invisible. Every call walks
    /// the blob directory; its memory is in `limit` and in the unrecorded blobs.
    pub fn unrecorded_page<E>(
        &self,
        after: Option<&ArtifactId>,
        limit: usize,
        mut recorded: impl FnMut(&[ArtifactId]) -> Result<std::collections::HashSet<ArtifactId>, E>,
    ) -> Result<(Vec<ArtifactView>, bool), E>
    where
        E: From<StoreError>,
    {
        const BATCH: usize = 512;
        let dir = self.blobs_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), false)),
            Err(e) => return Err(StoreError::io(format!("listing {}", dir.display()))(e).into()),
        };
        let mut unrecorded: Vec<ArtifactId> = Vec::new();
        let mut batch: Vec<ArtifactId> = Vec::with_capacity(BATCH);
        let mut sift = |batch: &mut Vec<ArtifactId>, out: &mut Vec<ArtifactId>| -> Result<(), E> {
            let named = recorded(batch)?;
            out.extend(batch.drain(..).filter(|id| !named.contains(id)));
            Ok(())
        };
        for entry in entries {
            let entry = entry.map_err(StoreError::io(format!("listing {}", dir.display())))?;
            let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|name| ArtifactId::parse(name).ok())
            else {
                continue;
            };
            if after.is_some_and(|after| id <= *after) {
                continue;
            }
            batch.push(id);
            if batch.len() == BATCH {
                sift(&mut batch, &mut unrecorded)?;
            }
        }
        sift(&mut batch, &mut unrecorded)?;
        unrecorded.sort();
        let mut out = Vec::new();
        let mut more = false;
        for id in unrecorded {
            let dir = self.blobs_dir().join(id.as_str());
            if !dir.join(BUNDLE_FILE).is_file() {
                continue;
            }
            if out.len() == limit {
                more = true;
                break;
            }
            match read_meta(&dir) {
                Ok(meta) => out.push(meta),
                Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "skipping artifact"),
            }
        }
        Ok((out, more))
    }

    /// The bundle file of one artifact and its size.
    pub fn locate(&self, id: &ArtifactId) -> Result<(PathBuf, u64), StoreError> {
        let bundle = self.bundle_path(id);
        match std::fs::metadata(&bundle) {
            Ok(md) if md.is_file() => Ok((bundle, md.len())),
            _ => Err(StoreError::NotFound(id.clone())),
        }
    }

    /// `<root>/<model>_<mode>/` directories of the layout before `blobs/`.
    fn legacy_group_dirs(&self) -> Result<Vec<PathBuf>, StoreError> {
        let root = &self.inner.root;
        let mut out = Vec::new();
        let entries = std::fs::read_dir(root)
            .map_err(StoreError::io(format!("listing {}", root.display())))?;
        for entry in entries {
            let entry = entry.map_err(StoreError::io(format!("listing {}", root.display())))?;
            let name = entry.file_name();
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            // A legacy group is `<model>_<mode>`, so never `blobs` (no underscore).
            if is_dir && name != BLOBS_DIR && name.to_str().is_some_and(is_safe_component) {
                out.push(entry.path());
            }
        }
        out.sort();
        Ok(out)
    }

    /// The folders named by a full artifact ID directly under `dir`.
    fn artifact_dirs_in(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
        let mut out = Vec::new();
        let entries =
            std::fs::read_dir(dir).map_err(StoreError::io(format!("listing {}", dir.display())))?;
        for entry in entries {
            let entry = entry.map_err(StoreError::io(format!("listing {}", dir.display())))?;
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if is_dir && entry.file_name().to_str().is_some_and(is_artifact_dir_name) {
                out.push(entry.path());
            }
        }
        out.sort();
        Ok(out)
    }

    /// `<root>/blobs/<artifact_id>/` directories.
    fn artifact_dirs(&self) -> Result<Vec<PathBuf>, StoreError> {
        Self::artifact_dirs_in(&self.blobs_dir())
    }
}

fn sort_newest_first(rows: &mut [ArtifactView]) {
    rows.sort_by(|a, b| {
        b.received_at
            .cmp(&a.received_at)
            .then_with(|| a.artifact_id.cmp(&b.artifact_id))
            .then_with(|| a.job_id.cmp(&b.job_id))
            .then_with(|| a.attempt.cmp(&b.attempt))
    });
}

/// What the request hands the writer thread.
enum WriterMsg {
    /// Bytes to append; the emptied buffer goes back for reuse.
    Buffer(Vec<u8>),
    /// Every chunk was sent: flush and fsync.
    End,
}

/// Creates an upload's partial file. `create_new`: a name collision is an error, never two
/// uploads sharing one file.
/// A new partial file, locked for as long as it is open: the start-up scan of another
/// server sharing the store leaves a locked partial alone (its upload is alive).
fn create_partial(path: &Path) -> Result<std::fs::File, StoreError> {
    open_locked(
        path,
        std::fs::OpenOptions::new().write(true).create_new(true),
    )
}

/// Opens `path` with `options` and takes its exclusive lock (flock; on a network file
/// system, the server's lock), blocking until it is free. Released when the file closes.
pub(crate) fn open_locked(
    path: &Path,
    options: &std::fs::OpenOptions,
) -> Result<std::fs::File, StoreError> {
    let file = options
        .open(path)
        .map_err(StoreError::io(format!("opening {}", path.display())))?;
    file.lock()
        .map_err(StoreError::io(format!("locking {}", path.display())))?;
    Ok(file)
}

/// The writer thread: writes the chunks it is handed through a large buffer and fsyncs
/// the file once told the body ended. A channel closed without `End` is an abandoned upload.
fn write_partial(
    file: std::fs::File,
    mut buffers: mpsc::Receiver<WriterMsg>,
    recycle: &mpsc::UnboundedSender<Vec<u8>>,
    path: &Path,
) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    let mut file = file;
    loop {
        match buffers.blocking_recv() {
            Some(WriterMsg::Buffer(mut buffer)) => {
                file.write_all(&buffer)
                    .map_err(StoreError::io(format!("writing {}", path.display())))?;
                buffer.clear();
                // The request may be gone already; then the buffer is simply freed.
                let _ = recycle.send(buffer);
            }
            Some(WriterMsg::End) => break,
            None => {
                return Err(StoreError::BodyRead(
                    "the upload ended before its body".into(),
                ))
            }
        }
    }
    let written = started.elapsed();
    file.sync_all()
        .map_err(StoreError::io(format!("syncing {}", path.display())))?;
    tracing::debug!(path = %path.display(), ?written, synced = ?started.elapsed() - written, "upload written");
    Ok(())
}

/// Checks the hash of what arrived against the announced sha256.
fn verify_sha(upload: &Upload, hasher: Sha256) -> Result<(), StoreError> {
    let actual = hex::encode(hasher.finalize());
    if actual != upload.expected_sha256.as_str() {
        return Err(StoreError::ShaMismatch {
            expected: upload.expected_sha256.to_string(),
            actual,
        });
    }
    Ok(())
}

/// Runs store work on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StoreError::Io {
            context: "store task".into(),
            source: std::io::Error::other(e.to_string()),
        })?
}

/// Writes meta.json atomically (temp file, fsync, rename).
pub(crate) fn write_meta(dir: &Path, record: &ArtifactView) -> Result<(), StoreError> {
    let tmp = dir.join(format!("{META_FILE}.tmp"));
    let path = dir.join(META_FILE);
    let mut text = serde_json::to_string_pretty(record).map_err(|e| StoreError::Io {
        context: "encoding meta.json".into(),
        source: std::io::Error::other(e),
    })?;
    text.push('\n');
    let mut f = std::fs::File::create(&tmp)
        .map_err(StoreError::io(format!("creating {}", tmp.display())))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(StoreError::io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, &path).map_err(StoreError::io(format!("renaming {}", tmp.display())))
}

/// Reads an artifact directory's meta.json.
pub(crate) fn read_meta(dir: &Path) -> Result<ArtifactView, StoreError> {
    let path = dir.join(META_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(StoreError::io(format!("reading {}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| StoreError::Io {
        context: format!("parsing {}", path.display()),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })
}

#[cfg(test)]
mod tests;
