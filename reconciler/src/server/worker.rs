//! Worker routes (`Authorization: Bearer` with a per-worker or the shared worker token):
//! claim (long-polled), heartbeat, complete, fail, artifact upload and node status. Each
//! checks every worker name its request gives against the proven identity ([`authorize`]).

use std::time::Duration;

use axum::body::{Body, BodyDataStream};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use cis490_api::{
    ApiError, ArtifactId, Capability, ClaimRequest, ClaimResponse, CompleteRequest, FailRequest,
    HeartbeatRequest, HeartbeatResponse, JobId, JobStatusResponse, Lease, UploadResponse, WhoAmI,
    WorkerName, WorkerView, CONTENT_SHA256_HEADER, LEASE_ATTEMPT_HEADER, LEASE_TOKEN_HEADER,
    MAX_CLAIM_WAIT_S, UPLOAD_RECEIPT_HEADER, WORKER_HEADER,
};
use serde::Deserialize;
use tokio::time::Instant;
use utoipa::IntoParams;

use super::claim_handoff::{claim_answer, start_claim};
use super::error::ApiFailure;
use super::extract::{drain_body, drain_bound, job_id, worker_name, ApiJson, ApiPath, ApiQuery};
use super::identity::WorkerIdentity;
use super::meta::BundleBytes;
use super::telemetry::FailureCause;
use super::{blocking, AppState};
use crate::store::Upload;

/// A waiting claim retries at least this often even when no event arrives: some things
/// that make a job claimable for one worker are the passing of time (a `prefer_cuda` job
/// waiting long enough, a CUDA node going stale), not a commit.
const CLAIM_RECHECK: Duration = Duration::from_secs(5);

/// Ok when `identity` may act as `claimed`. A refusal (403 `wrong_worker`) is recorded as an
/// event naming the proven worker and the name it tried, on `job` when the route has one.
pub(crate) async fn authorize(
    state: &AppState,
    identity: &WorkerIdentity,
    claimed: &WorkerName,
    job: Option<&JobId>,
) -> Result<(), ApiFailure> {
    let Err(refusal) = identity.authorize(claimed) else {
        return Ok(());
    };
    if let Some(proven) = identity.name() {
        let (queue, proven, claimed, job) = (
            state.queue.clone(),
            proven.clone(),
            claimed.clone(),
            job.cloned(),
        );
        let message = refusal.message.clone();
        let recorded =
            blocking(move || queue.record_wrong_worker(job.as_ref(), &proven, &claimed, &message))
                .await;
        if let Err(e) = recorded {
            tracing::warn!(error = %e.message, "could not record a wrong_worker refusal");
        }
    }
    tracing::warn!(message = %refusal.message, "worker request refused");
    Err(refusal)
}

/// Query of `POST /v1/job/claim`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ClaimQuery {
    /// Seconds to wait for a claimable job; more than 60 waits 60. None or 0: answer at once.
    #[serde(default)]
    pub wait: Option<u64>,
}

/// Claim a job: the best pending job this worker may run, with a new lease.
///
/// A waiting claim (`wait`) is retried on every queue commit that appended events (new
/// job, requeue, retry, sweep), so it is answered the moment a job it may run becomes
/// claimable. Waiting takes one of `max_claim_waits` places (429 `too_many_long_polls`
/// when none is free).
#[utoipa::path(post, path = "/v1/job/claim", params(ClaimQuery), request_body = ClaimRequest, responses(
    (status = 200, description = "The claimed job and its lease", body = ClaimResponse),
    (status = 204, description = "No job this worker may run became claimable within `wait`"),
    (status = 409, description = "`name_in_use`: another live agent holds this worker name", body = ApiError),
))]
pub async fn claim(
    State(state): State<AppState>,
    Extension(identity): Extension<WorkerIdentity>,
    ApiQuery(q): ApiQuery<ClaimQuery>,
    ApiJson(req): ApiJson<ClaimRequest>,
) -> Result<Response, ApiFailure> {
    authorize(&state, &identity, &req.worker, None).await?;
    let wait = Duration::from_secs(q.wait.unwrap_or(0).min(MAX_CLAIM_WAIT_S));
    let deadline = Instant::now() + wait;
    let mut changes = state.queue.subscribe();
    let mut shutdown = state.shutdown.clone();
    let mut place = None;
    loop {
        changes.borrow_and_update();
        let started = std::time::Instant::now();
        let (answer, _task) = start_claim(
            state.queue.clone(),
            req.worker.clone(),
            req.capability.clone(),
        );
        let answer = claim_answer(answer).await;
        state.telemetry.claim_took(started.elapsed());
        if let Some(claimed) = answer? {
            state.telemetry.claimed(&claimed.job.model);
            tracing::info!(
                job = %claimed.job.id.short(),
                worker = %req.worker,
                attempt = claimed.lease.attempt,
                "claimed"
            );
            return Ok((StatusCode::OK, Json(claimed)).into_response());
        }
        let now = Instant::now();
        if now >= deadline || *shutdown.borrow() {
            state.telemetry.claim_empty();
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        if place.is_none() {
            place = Some(state.budgets.claim_wait()?);
        }
        let recheck = (now + CLAIM_RECHECK).min(deadline);
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    state.telemetry.claim_empty();
                    return Ok(StatusCode::NO_CONTENT.into_response());
                }
            }
            _ = tokio::time::sleep_until(recheck) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Heartbeat a lease: the job is still being worked on.
///
/// The first heartbeat moves a claimed job to running; the answer says whether an
/// operator cancelled it.
#[utoipa::path(post, path = "/v1/job/{id}/heartbeat", params(
    ("id" = JobId, Path, description = "The job's full ID"),
), request_body = HeartbeatRequest, responses(
    (status = 200, description = "The lease is extended", body = HeartbeatResponse),
    (status = 404, description = "No job has this ID", body = ApiError),
    (status = 409, description = "`lease_lost`: the lease is stale (expired, reassigned or the job moved on)", body = ApiError),
))]
pub async fn heartbeat(
    State(state): State<AppState>,
    Extension(identity): Extension<WorkerIdentity>,
    ApiPath(raw): ApiPath<String>,
    ApiJson(req): ApiJson<HeartbeatRequest>,
) -> Result<Json<HeartbeatResponse>, ApiFailure> {
    let id = job_id(&raw)?;
    authorize(&state, &identity, &req.worker, Some(&id)).await?;
    let queue = state.queue.clone();
    Ok(Json(blocking(move || queue.heartbeat(&id, &req)).await?))
}

/// Complete a job with the artifact its trainer made.
#[utoipa::path(post, path = "/v1/job/{id}/complete", params(
    ("id" = JobId, Path, description = "The job's full ID"),
), request_body = CompleteRequest, responses(
    (status = 200, description = "The job is completed", body = JobStatusResponse),
    (status = 404, description = "No job has this ID", body = ApiError),
    (status = 409, description = "`lease_lost`: the lease is stale; `artifact_not_uploaded`: the artifact was not uploaded under this lease; `artifact_required`: this lease uploaded an artifact, complete with it", body = ApiError),
))]
pub async fn complete(
    State(state): State<AppState>,
    Extension(identity): Extension<WorkerIdentity>,
    ApiPath(raw): ApiPath<String>,
    ApiJson(req): ApiJson<CompleteRequest>,
) -> Result<Json<JobStatusResponse>, ApiFailure> {
    let id = job_id(&raw)?;
    authorize(&state, &identity, &req.worker, Some(&id)).await?;
    let queue = state.queue.clone();
    let done = blocking(move || queue.complete_with_model(&id, &req)).await?;
    state.telemetry.completed(&done.model);
    Ok(Json(done.answer))
}

/// Fail a job: reason, exit code, log tail, and whether to retry.
///
/// A retryable failure (`agent-shutdown`) or one within `retries_on_failure` puts the job
/// back to pending.
#[utoipa::path(post, path = "/v1/job/{id}/fail", params(
    ("id" = JobId, Path, description = "The job's full ID"),
), request_body = FailRequest, responses(
    (status = 200, description = "Where the job now stands: failed, or pending again", body = JobStatusResponse),
    (status = 404, description = "No job has this ID", body = ApiError),
    (status = 409, description = "`lease_lost`: the lease is stale", body = ApiError),
))]
pub async fn fail(
    State(state): State<AppState>,
    Extension(identity): Extension<WorkerIdentity>,
    ApiPath(raw): ApiPath<String>,
    ApiJson(req): ApiJson<FailRequest>,
) -> Result<Json<JobStatusResponse>, ApiFailure> {
    let id = job_id(&raw)?;
    authorize(&state, &identity, &req.worker, Some(&id)).await?;
    let queue = state.queue.clone();
    let cause = if req.retryable {
        FailureCause::Released
    } else {
        FailureCause::Trainer
    };
    let done = blocking(move || queue.fail_with_model(&id, &req)).await?;
    state.telemetry.failed(&done.model, cause);
    Ok(Json(done.answer))
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Result<&'h str, ApiFailure> {
    headers
        .get(name)
        .ok_or_else(|| ApiFailure::bad_request(format!("missing header {name}")))?
        .to_str()
        .map(str::trim)
        .map_err(|_| ApiFailure::bad_request(format!("header {name} is not visible ASCII")))
}

/// The upload's headers, validated before the lease check and before any byte is read.
fn upload_headers(headers: &HeaderMap) -> Result<(WorkerName, Lease, ArtifactId), ApiFailure> {
    let worker = worker_name(header(headers, WORKER_HEADER)?)?;
    let token = header(headers, LEASE_TOKEN_HEADER)?.to_string();
    let attempt = header(headers, LEASE_ATTEMPT_HEADER)?
        .parse::<u32>()
        .map_err(|e| ApiFailure::bad_request(format!("header {LEASE_ATTEMPT_HEADER}: {e}")))?;
    let sha = ArtifactId::parse(header(headers, CONTENT_SHA256_HEADER)?).map_err(|_| {
        ApiFailure::bad_request(format!(
            "header {CONTENT_SHA256_HEADER} must be the body's sha256 as 64 hex digits"
        ))
    })?;
    Ok((worker, Lease { attempt, token }, sha))
}

/// Whether the upload asked for a receipt (`X-Upload-Receipt: requested`); another value is
/// refused before the body is read.
fn wants_receipt(headers: &HeaderMap) -> Result<bool, ApiFailure> {
    match headers.get(UPLOAD_RECEIPT_HEADER) {
        None => Ok(false),
        Some(v) if v.as_bytes().eq_ignore_ascii_case(b"requested") => Ok(true),
        Some(_) => Err(ApiFailure::bad_request(format!(
            "header {UPLOAD_RECEIPT_HEADER}: the only value is \"requested\""
        ))),
    }
}

/// Upload a job's artifact (a tar.zst bundle) under its lease.
///
/// The lease is checked from the headers before the body is read; the body is then
/// streamed into the store, hashed, and kept only when it matches `X-Content-Sha256`.
#[utoipa::path(put, path = "/v1/model/{id}", params(
    ("id" = JobId, Path, description = "The full ID of the job the bundle is the output of"),
    ("X-Worker" = WorkerName, Header, description = "The uploading worker (the lease holder)"),
    ("X-Lease-Token" = String, Header, description = "The lease's token"),
    ("X-Lease-Attempt" = u32, Header, description = "The lease's attempt number"),
    ("X-Content-Sha256" = ArtifactId, Header, description = "The sha256 of the body, 64 hex digits"),
    ("X-Upload-Receipt" = Option<String>, Header, description = "`requested`: answer with a receipt for the completion to carry, which records the upload (instead of the upload writing its record)"),
), request_body(content = BundleBytes, content_type = "application/octet-stream", description = "The bundle's bytes"), responses(
    (status = 200, description = "Stored, or the same bytes were already stored", body = UploadResponse),
    (status = 404, description = "No job has this ID", body = ApiError),
    (status = 409, description = "`lease_lost`: the lease is stale", body = ApiError),
    (status = 413, description = "`payload_too_large`: the bundle exceeds `max_upload_bytes`", body = ApiError),
    (status = 422, description = "`sha_mismatch`: the bytes do not hash to `X-Content-Sha256`", body = ApiError),
))]
pub async fn upload(
    State(state): State<AppState>,
    Extension(identity): Extension<WorkerIdentity>,
    ApiPath(raw): ApiPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<UploadResponse>, ApiFailure> {
    let mut stream = body.into_data_stream();
    let started = std::time::Instant::now();
    let result = store_upload(&state, &identity, &raw, &headers, &mut stream).await;
    if let Ok(stored) = &result {
        state
            .telemetry
            .uploaded(stored.size_bytes, started.elapsed());
    }
    if result.is_err() {
        let bound = drain_bound(state.store.max_upload_bytes());
        let announced = content_length(&headers);
        if announced.is_none_or(|n| n <= bound) {
            drain_body(&mut stream, bound).await;
        }
    }
    result.map(Json)
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

async fn store_upload(
    state: &AppState,
    identity: &WorkerIdentity,
    raw: &str,
    headers: &HeaderMap,
    stream: &mut BodyDataStream,
) -> Result<UploadResponse, ApiFailure> {
    let id = job_id(raw)?;
    let (worker, lease, expected_sha256) = upload_headers(headers)?;
    let receipt_wanted = wants_receipt(headers)?;
    authorize(state, identity, &worker, Some(&id)).await?;
    let queue = state.queue.clone();
    let (check_id, check_worker, record_id, record_lease) =
        (id.clone(), worker.clone(), id.clone(), lease.clone());
    let leased = blocking(move || queue.check_lease(&check_id, &check_worker, &lease)).await?;
    let upload = Upload {
        job_id: id,
        model: leased.model,
        mode: leased.mode,
        worker: worker.to_string(),
        attempt: Some(record_lease.attempt),
        expected_sha256,
        content_length: content_length(headers),
    };
    let stored = state.store.ingest(&upload, stream).await?;
    // Fenced again now that the bytes are in: an upload whose lease was lost while it
    // streamed is refused (409 lease_lost) and cannot complete the job. Its bundle stays
    // in the store, harmless: nothing refers to it.
    // With a receipt asked for, the fence is a read and the completion writes the upload's
    // row (`queue/receipts.rs`): one write transaction less per job.
    let queue = state.queue.clone();
    let artifact = stored.artifact_id.clone();
    let size = stored.size_bytes;
    let receipt = if receipt_wanted {
        Some(
            blocking(move || {
                queue.receipt_for_upload(&record_id, &worker, &record_lease, &artifact, size)
            })
            .await?,
        )
    } else {
        blocking(move || queue.record_upload(&record_id, &worker, &record_lease, &artifact, size))
            .await?;
        None
    };
    Ok(UploadResponse {
        artifact_id: stored.artifact_id,
        status: stored.status,
        size_bytes: stored.size_bytes,
        receipt,
    })
}

/// Report node status: what the worker's host is and can take now.
#[utoipa::path(put, path = "/v1/worker/{name}", params(
    ("name" = WorkerName, Path, description = "The reporting worker's name"),
), request_body = Capability, responses(
    (status = 200, description = "The worker as the server now sees it", body = WorkerView),
    (status = 409, description = "`name_in_use`: another live agent holds this worker name", body = ApiError),
))]
pub async fn report_node(
    State(state): State<AppState>,
    Extension(identity): Extension<WorkerIdentity>,
    ApiPath(raw): ApiPath<String>,
    ApiJson(capability): ApiJson<Capability>,
) -> Result<Json<WorkerView>, ApiFailure> {
    let name = worker_name(&raw)?;
    authorize(&state, &identity, &name, None).await?;
    let queue = state.queue.clone();
    Ok(Json(
        blocking(move || queue.report_node(&name, &capability)).await?,
    ))
}

/// `GET /v1/whoami`: the proven identity, so an installer can check a credential with a
/// call that changes nothing.
#[utoipa::path(get, path = "/v1/whoami", responses(
    (status = 200, description = "The worker the request's credential proves (none: it may act as any worker)", body = WhoAmI),
))]
pub async fn whoami(
    State(state): State<AppState>,
    Extension(identity): Extension<WorkerIdentity>,
) -> Json<WhoAmI> {
    Json(match identity {
        WorkerIdentity::Named { name, via } => WhoAmI {
            worker: Some(name),
            credential: via.as_str().to_string(),
        },
        WorkerIdentity::AnyName if state.config.worker_token.is_some() => WhoAmI {
            worker: None,
            credential: "shared worker token".to_string(),
        },
        WorkerIdentity::AnyName => WhoAmI {
            worker: None,
            credential: "none (worker routes are open)".to_string(),
        },
    })
}
