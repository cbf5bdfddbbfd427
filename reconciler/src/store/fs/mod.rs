//! The artifact store's bytes on a file system (a local disk, or a network file system
//! several servers share): sha256-addressed tar.zst bundles, streamed, verified, fsynced.
//!
//! A port of the seed's `store.py` with its same-second race fixed (every upload streams to
//! its own partial file with a random suffix) and a start-up scan that repairs what a crash
//! can leave behind.
//!
//! Layout under the store root (content-addressed: each byte sequence is stored once,
//! whichever jobs, models and modes produced it):
//!
//! ```text
//! .incoming/<job_id>-<random>.partial  uploads in flight (removed on any error)
//! .commit.lock                         flock-ed around each commit
//! blobs/<artifact_id>/
//!     meta.json                        the ArtifactView of the first upload of these bytes
//!     bundle.tar.zst                   the uploaded bytes; artifact_id = their sha256
//! ```
//!
//! The index of what is stored is in the database (see `super`); `meta.json` keeps each
//! blob self-describing, so the start-up scan can put back an index row a crash left out.
//! Stores written by older versions also have `index.jsonl` (an ingest log this store no
//! longer writes; the scan still reads it to repair a lost `meta.json`) and may keep one
//! copy per `<model>_<mode>/<artifact_id>/` (a name that two (model, mode) pairs could
//! share); the scan moves those into `blobs/` and drops duplicate copies
//! ([`FsBlobs::recover`]).
//!
//! Several servers may share one store: each partial is locked while its upload streams,
//! so the start-up scan of one server removes only partials nobody holds; commits take a
//! store-wide file lock (`.commit.lock`), so identical bytes committed by two servers at
//! once end as one bundle, and the scan removes a bundle-less folder only under it.
//!
//! Commit order (so a crash at any instant is repairable): the bundle is fsynced in
//! `.incoming/`, `meta.json` is written (temp + fsync + rename), the bundle is renamed into
//! place, then the directories are fsynced. A bundle therefore never exists without its
//! meta.json.
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
use cis490_api::{ArtifactId, ArtifactView, UploadStatus};
use futures_util::future::BoxFuture;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::blobs::{Blob, BlobStore, Scan, UploadBody};
use super::{blocking, is_safe_component, StoreError, Stored, Upload};

/// File name of an artifact's bytes inside its directory.
pub const BUNDLE_FILE: &str = "bundle.tar.zst";
/// File name of an artifact's metadata inside its directory.
pub const META_FILE: &str = "meta.json";
/// The ingest log older versions appended to at the store root (read by the start-up
/// scan only).
pub const LEGACY_INDEX_FILE: &str = "index.jsonl";
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
pub(super) const WRITE_BATCH: usize = 128 << 10;
/// Buffers that circulate between the request and the writer thread (so a slow disk slows
/// the client instead of filling memory). They are reused, so hyper's read buffer is
/// released chunk by chunk and reused too: holding hyper's chunks instead made it allocate
/// fresh memory all along (page faults and munmap cost more than the copy). Small on
/// purpose: 4 x 1 MiB buffers (out of L2 cache) tripled the server's CPU per upload.
const WRITE_BUFFERS: usize = 2;

/// The bytes of the artifact store in a directory. Cheap to clone.
#[derive(Debug, Clone)]
pub struct FsBlobs {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    max_upload_bytes: u64,
    /// Serializes the commit step (existence check, renames) so that two identical uploads
    /// finishing together store one bundle.
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

impl FsBlobs {
    /// Opens (creating) the store at `root`. Call [`FsBlobs::recover`] before serving.
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
    pub(super) fn incoming_dir(&self) -> PathBuf {
        self.inner.root.join(INCOMING_DIR)
    }

    pub(super) fn blobs_dir(&self) -> PathBuf {
        self.inner.root.join(BLOBS_DIR)
    }

    /// Streams `body` into the store: hashed while written, capped, verified against the
    /// announced sha256, fsynced and renamed into place. Identical bytes already stored
    /// answer `AlreadyPresent`. On any error (including the future being dropped) no file
    /// is left behind.
    async fn ingest<S, E>(&self, upload: &Upload, body: S) -> Result<Stored, StoreError>
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
    pub(super) fn lock_commit_across_servers(&self) -> Result<std::fs::File, StoreError> {
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
        // Under the commit lock: a bundle seen there has finished its commit (its fsyncs
        // included), so "already present" is as durable as "stored".
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
            record: upload.view(size),
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
        let record = upload.view(size);
        let written = record.clone();
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
            store.commit(&mut partial, &written)
        })
        .await?;
        Ok(Stored {
            artifact_id: upload.expected_sha256.clone(),
            status,
            size_bytes: size,
            record,
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
        let record = upload.view(size);
        let written = record.clone();
        let store = self.clone();
        // The partial guard moves into the blocking task, so a dropped request future
        // cannot remove a file the commit is renaming; the task removes it on error itself.
        let status = blocking(move || {
            let result = store.commit(&mut partial, &written);
            drop(partial);
            result
        })
        .await?;
        Ok(Stored {
            artifact_id: upload.expected_sha256.clone(),
            status,
            size_bytes: size,
            record,
        })
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
        tracing::info!(
            artifact = %record.artifact_id.short(),
            job = %record.job_id.short(),
            worker = %record.worker,
            size_bytes = record.size_bytes,
            "stored artifact"
        );
        Ok(UploadStatus::Stored)
    }

    /// Every stored byte sequence, once each (its meta.json: the upload that first stored
    /// it), newest first.
    #[cfg(test)]
    pub(super) fn list(&self) -> Result<Vec<ArtifactView>, StoreError> {
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

    /// The bundle file of one artifact and its size.
    pub(super) fn locate(&self, id: &ArtifactId) -> Result<(PathBuf, u64), StoreError> {
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

#[cfg(test)]
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

/// Creates an upload's partial file, locked for as long as it is open: the start-up scan
/// of another server sharing the store leaves a locked partial alone (its upload is
/// alive). `create_new`: a name collision is an error, never two uploads sharing one file.
pub(super) fn create_partial(path: &Path) -> Result<std::fs::File, StoreError> {
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

/// Writes meta.json atomically (temp file, fsync, rename).
pub(super) fn write_meta(dir: &Path, record: &ArtifactView) -> Result<(), StoreError> {
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
pub(super) fn read_meta(dir: &Path) -> Result<ArtifactView, StoreError> {
    let path = dir.join(META_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(StoreError::io(format!("reading {}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| StoreError::Io {
        context: format!("parsing {}", path.display()),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })
}

impl BlobStore for FsBlobs {
    fn max_upload_bytes(&self) -> u64 {
        self.inner.max_upload_bytes
    }

    fn put<'a>(
        &'a self,
        upload: &'a Upload,
        body: UploadBody<'a>,
    ) -> BoxFuture<'a, Result<Stored, StoreError>> {
        Box::pin(self.ingest(upload, body))
    }

    fn get<'a>(&'a self, id: &'a ArtifactId) -> BoxFuture<'a, Result<Blob, StoreError>> {
        Box::pin(async move {
            let store = self.clone();
            let lookup = id.clone();
            let (path, size_bytes) = blocking(move || store.locate(&lookup)).await?;
            let file = tokio::fs::File::open(&path)
                .await
                .map_err(StoreError::io(format!("opening {}", path.display())))?;
            Ok(Blob {
                size_bytes,
                bytes: Box::pin(tokio_util::io::ReaderStream::new(file)),
            })
        })
    }

    fn recover(&self) -> Result<Scan, StoreError> {
        FsBlobs::recover(self)
    }
}
