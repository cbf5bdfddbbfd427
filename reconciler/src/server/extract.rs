//! Request extractors whose rejections are our JSON errors, and path parsers that validate
//! IDs and names before anything touches the disk or the database.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use cis490_api::{ArtifactId, IdPrefix, JobId, WorkerName};
use serde::de::DeserializeOwned;

use super::error::ApiFailure;

/// A JSON body, size-capped by `DefaultBodyLimit`; any rejection is a JSON 400 (413 when
/// over the cap). The content type is not checked: the body is the contract.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiFailure;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiFailure> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|rejection| body_failure(rejection.status(), rejection.body_text()))?;
        serde_json::from_slice(&bytes)
            .map(ApiJson)
            .map_err(|e| ApiFailure::bad_request(format!("invalid JSON body: {e}")))
    }
}

/// A UTF-8 text body (a manifest for `diff`), size-capped like JSON.
#[derive(Debug)]
pub struct ApiText(pub String);

impl<S: Send + Sync> FromRequest<S> for ApiText {
    type Rejection = ApiFailure;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiFailure> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|rejection| body_failure(rejection.status(), rejection.body_text()))?;
        String::from_utf8(bytes.to_vec())
            .map(ApiText)
            .map_err(|e| ApiFailure::bad_request(format!("the body is not UTF-8 text: {e}")))
    }
}

fn body_failure(status: StatusCode, text: String) -> ApiFailure {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiFailure::too_large(format!("request body too large: {text}"))
    } else {
        ApiFailure::bad_request(format!("cannot read the request body: {text}"))
    }
}

/// Query parameters; a bad one is a JSON 400.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiFailure;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiFailure> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|q| ApiQuery(q.0))
            .map_err(|e| ApiFailure::bad_request(format!("invalid query: {}", e.body_text())))
    }
}

/// A full job ID from the path.
pub fn job_id(raw: &str) -> Result<JobId, ApiFailure> {
    JobId::parse(raw).map_err(|e| ApiFailure::bad_request(e.to_string()))
}

/// A job ID or unique prefix from the path.
pub fn id_prefix(raw: &str) -> Result<IdPrefix, ApiFailure> {
    IdPrefix::parse(raw).map_err(|e| ApiFailure::bad_request(e.to_string()))
}

/// An artifact ID from the path.
pub fn artifact_id(raw: &str) -> Result<ArtifactId, ApiFailure> {
    ArtifactId::parse(raw).map_err(|e| ApiFailure::bad_request(e.to_string()))
}

/// A worker name from the path.
pub fn worker_name(raw: &str) -> Result<WorkerName, ApiFailure> {
    WorkerName::parse(raw).map_err(|e| ApiFailure::bad_request(e.to_string()))
}

/// Path parameters as strings (each is then parsed by one of the functions above); a
/// rejection is a JSON 400.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiFailure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiFailure> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e| ApiFailure::bad_request(format!("invalid path: {}", e.body_text())))
    }
}

/// How much of an authenticated worker's refused upload (409, 413, 422) is drained: at most
/// what a worker may upload (the upload cap, never less than 64 MiB), inside the upload's
/// place among `max_concurrent_uploads` and under the body-read timeout. Refusals before
/// the handler (no credential, a full upload cap) read far less: see `limits::refuse`.
pub fn drain_bound(max_upload_bytes: u64) -> u64 {
    max_upload_bytes.max(64 << 20)
}

/// Reads and discards what is left of a request body (at most `max` bytes) before an error
/// answer. Closing a connection with unread bytes in its receive buffer makes the kernel
/// send a reset, which destroys the answer on its way to the client: an agent uploading a
/// large bundle would see "connection reset" instead of 409 or 413. Returns false when the
/// body was longer than `max` (the connection then closes with it unread).
pub async fn drain_body<S, E>(stream: &mut S, max: u64) -> bool
where
    S: futures_util::Stream<Item = Result<Bytes, E>> + Unpin,
{
    use futures_util::StreamExt;
    let mut read: u64 = 0;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => {
                read += bytes.len() as u64;
                if read > max {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
    true
}
