//! Request extractors whose rejections are our JSON errors, and path parsers that validate
//! IDs and names before anything touches the disk or the database.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cis490_api::{ArtifactId, IdPrefix, JobId, WorkerName};
use serde::de::DeserializeOwned;

use super::error::ApiFailure;
use super::AppState;

/// A JSON body, size-capped by `DefaultBodyLimit`; any rejection is a JSON 400 (413 when
/// over the cap). The content type is not checked: the body is the contract.
///
/// A field the server does not know, at any depth, is a 400 that names it: a typo'd or
/// misplaced field would otherwise be dropped without a word. This is checked here rather
/// than with `#[serde(deny_unknown_fields)]` on the wire types, which agent and cis490ctl
/// also use to read answers: they keep accepting fields that a newer server adds.
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
        parse_json_body(&bytes).map(ApiJson)
    }
}

/// Parses a JSON request body strictly: malformed JSON, a wrong type, trailing data or an
/// unknown field are each a 400 that says which.
pub fn parse_json_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiFailure> {
    let mut unknown: Vec<String> = Vec::new();
    let mut json = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_ignored::deserialize(&mut json, |path| unknown.push(path.to_string()))
        .and_then(|value| json.end().map(|()| value))
        .map_err(|e| ApiFailure::bad_request(format!("invalid JSON body: {e}")))?;
    if unknown.is_empty() {
        return Ok(value);
    }
    let names = unknown
        .iter()
        .map(|field| format!("`{field}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let (noun, pronoun) = if unknown.len() == 1 {
        ("field", "it")
    } else {
        ("fields", "them")
    };
    Err(ApiFailure::bad_request(format!(
        "unknown {noun} {names} in the JSON body: this server does not know {pronoun} (a typo, \
         or a client newer than the server: upgrade the reconciler before its agents)"
    )))
}

/// The one route whose body is not capped by `max_body_bytes`, `PUT /v1/model/{id}` (an
/// artifact upload has its own cap, `max_upload_bytes`, checked by the store).
fn is_upload(req: &Request) -> bool {
    req.method() == Method::PUT && req.uri().path().starts_with("/v1/model/")
}

/// Middleware: a body whose `Content-Length` is over `max_body_bytes` is refused with 413 from
/// the headers, before a byte of it is read. Without this the request would wait for bytes
/// up to the cap that a hostile client need never send.
pub async fn refuse_oversized_bodies(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let announced = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let limit = state.config.max_body_bytes as u64;
    match announced {
        Some(n) if n > limit && !is_upload(&req) => {
            let refusal = ApiFailure::too_large(format!(
                "request body too large: {n} bytes announced, the limit is {limit} (max_body_bytes)"
            ));
            // A body a little over the cap is read and dropped so that the client gets the
            // 413 rather than a reset (see [`drain_body`]); a far larger one is not read.
            let bound = limit.saturating_mul(4);
            let drained =
                n <= bound && drain_body(&mut req.into_body().into_data_stream(), bound).await;
            let mut response = refusal.into_response();
            if !drained {
                close_after(&mut response);
            }
            response
        }
        _ => {
            let mut response = next.run(req).await;
            // A body refused as too large on its way in (chunked, or an upload over its cap)
            // was not read to its end: hyper closes such a connection after the answer.
            if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
                close_after(&mut response);
            }
            response
        }
    }
}

/// Says `Connection: close` on an answer after which the server drops the connection (a
/// request body left unread), so that no client pools it and sends its next request into
/// a closing socket, which it would see as a reset with no answer.
fn close_after(response: &mut Response) {
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
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

/// A job ID prefix from the path of a route that changes the job (`verb`: cancel,
/// requeue): at least 4 hex digits.
pub fn mutating_id_prefix(raw: &str, verb: &str) -> Result<IdPrefix, ApiFailure> {
    let prefix = id_prefix(raw)?;
    prefix
        .check_mutating(verb)
        .map_err(ApiFailure::bad_request)?;
    Ok(prefix)
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

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;
    use cis490_api::{ClaimRequest, HeartbeatRequest};
    use serde_json::json;

    use super::*;

    fn claim_body() -> serde_json::Value {
        json!({
            "worker": "w1",
            "capability": {"hostname": "h", "cores": 1, "ram_total_mib": 1, "ram_allocatable_mib": 1}
        })
    }

    #[test]
    fn a_known_body_parses() {
        let body = serde_json::to_vec(&claim_body()).unwrap();
        let req: ClaimRequest = parse_json_body(&body).unwrap();
        assert_eq!(req.worker.as_str(), "w1");
    }

    #[test]
    fn unknown_fields_at_any_depth_are_named() {
        let mut body = claim_body();
        body["workr"] = json!("typo");
        body["capability"]["gpus"] = json!([{"index": 0, "name": "g", "vram_total_mib": 1,
            "vram_free_mib": 1, "vram_allocatable_mib": 1, "colour": "green"}]);
        let err = parse_json_body::<ClaimRequest>(&serde_json::to_vec(&body).unwrap()).unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert!(err.message.contains("`workr`"), "{}", err.message);
        assert!(
            err.message.contains("`capability.gpus.0.colour`"),
            "{}",
            err.message
        );
        assert!(err.message.contains("unknown fields"), "{}", err.message);
    }

    #[test]
    fn malformed_and_trailing_json_are_bad_requests() {
        for body in [&b"{"[..], b"{\"worker\": 1}", b"[]", b"", b"{} {}", b"\xff"] {
            let err = parse_json_body::<HeartbeatRequest>(body).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST, "{body:?}");
            assert!(
                err.message.starts_with("invalid JSON body"),
                "{}",
                err.message
            );
        }
    }
}
