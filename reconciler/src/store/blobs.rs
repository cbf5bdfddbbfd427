//! The interface between the artifact store and where its bytes live. [`super::fs::FsBlobs`]
//! keeps them in a directory (a local disk or a shared file system); an object store
//! (S3, GCS) would be another implementation: a put that verifies the sha256 while it
//! streams and makes the bytes durable before it answers, a get, and a start-up scan.

use bytes::Bytes;
use cis490_api::{ArtifactId, ArtifactView};
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

use super::{RecoveryReport, StoreError, Stored, Upload};

/// An upload's body as the blob store reads it; an error is the reason the body broke off.
pub type UploadBody<'a> = BoxStream<'a, Result<Bytes, String>>;

/// A stored blob, opened for reading.
pub struct Blob {
    pub size_bytes: u64,
    pub bytes: BoxStream<'static, std::io::Result<Bytes>>,
}

/// What the start-up scan found and did.
#[derive(Debug, Default)]
pub struct Scan {
    pub report: RecoveryReport,
    /// The first upload of every blob held, as the blob's own metadata tells.
    pub held: Vec<ArtifactView>,
}

/// Where artifact bytes live, addressed by their sha256.
pub trait BlobStore: std::fmt::Debug + Send + Sync + 'static {
    /// The largest upload accepted, in bytes.
    fn max_upload_bytes(&self) -> u64;

    /// Streams `body` in: hashed while it arrives, capped at [`Self::max_upload_bytes`],
    /// kept only when it hashes to `upload.expected_sha256`, and durable before the answer.
    /// Bytes already held answer `AlreadyPresent` once their first put is durable. On any
    /// error, and when the future is dropped, nothing is left behind.
    fn put<'a>(
        &'a self,
        upload: &'a Upload,
        body: UploadBody<'a>,
    ) -> BoxFuture<'a, Result<Stored, StoreError>>;

    /// Opens a blob (`NotFound` when none has this ID).
    fn get<'a>(&'a self, id: &'a ArtifactId) -> BoxFuture<'a, Result<Blob, StoreError>>;

    /// The start-up scan (blocking): removes what interrupted puts left behind and lists
    /// every blob held. In a store shared with other servers, puts alive there are kept.
    fn recover(&self) -> Result<Scan, StoreError>;
}
