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
    ArtifactId, Capability, ClaimRequest, CompleteRequest, FailRequest, HeartbeatRequest,
    HeartbeatResponse, JobId, JobStatusResponse, Lease, UploadResponse, WhoAmI, WorkerName,
    WorkerView, CONTENT_SHA256_HEADER, LEASE_ATTEMPT_HEADER, LEASE_TOKEN_HEADER, MAX_CLAIM_WAIT_S,
    WORKER_HEADER,
};
use serde::Deserialize;
use tokio::time::Instant;

use super::claim_handoff::{claim_answer, start_claim};
use super::error::ApiFailure;
use super::extract::{drain_body, drain_bound, job_id, worker_name, ApiJson, ApiPath, ApiQuery};
use super::identity::WorkerIdentity;
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
#[derive(Debug, Deserialize)]
pub struct ClaimQuery {
    /// Seconds to wait for a claimable job (at most 60).
    #[serde(default)]
    pub wait: Option<u64>,
}

/// `POST /v1/job/claim[?wait=S]`: 200 with the job and its lease, or 204. A waiting claim
/// is retried on every queue commit that appended events (new job, requeue, retry, sweep),
/// so it is answered the moment a job it may run becomes claimable. Waiting takes one of
/// `max_claim_waits` places (429 `too_many_long_polls` when none is free).
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
        let (answer, _task) = start_claim(
            state.queue.clone(),
            req.worker.clone(),
            req.capability.clone(),
        );
        if let Some(claimed) = claim_answer(answer).await? {
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
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        if place.is_none() {
            place = Some(state.budgets.claim_wait()?);
        }
        let recheck = (now + CLAIM_RECHECK).min(deadline);
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return Ok(StatusCode::NO_CONTENT.into_response());
                }
            }
            _ = tokio::time::sleep_until(recheck) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// `POST /v1/job/{id}/heartbeat`
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

/// `POST /v1/job/{id}/complete`
pub async fn complete(
    State(state): State<AppState>,
    Extension(identity): Extension<WorkerIdentity>,
    ApiPath(raw): ApiPath<String>,
    ApiJson(req): ApiJson<CompleteRequest>,
) -> Result<Json<JobStatusResponse>, ApiFailure> {
    let id = job_id(&raw)?;
    authorize(&state, &identity, &req.worker, Some(&id)).await?;
    let queue = state.queue.clone();
    Ok(Json(blocking(move || queue.complete(&id, &req)).await?))
}

/// `POST /v1/job/{id}/fail`
pub async fn fail(
    State(state): State<AppState>,
    Extension(identity): Extension<WorkerIdentity>,
    ApiPath(raw): ApiPath<String>,
    ApiJson(req): ApiJson<FailRequest>,
) -> Result<Json<JobStatusResponse>, ApiFailure> {
    let id = job_id(&raw)?;
    authorize(&state, &identity, &req.worker, Some(&id)).await?;
    let queue = state.queue.clone();
    Ok(Json(blocking(move || queue.fail(&id, &req)).await?))
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

/// `PUT /v1/model/{job_id}`: checks the lease, then streams the body into the store. On
/// any refusal the rest of the body is drained (see [`drain_bound`]) so the client
/// reads the answer instead of a connection reset.
pub async fn upload(
    State(state): State<AppState>,
    Extension(identity): Extension<WorkerIdentity>,
    ApiPath(raw): ApiPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<UploadResponse>, ApiFailure> {
    let mut stream = body.into_data_stream();
    let result = store_upload(&state, &identity, &raw, &headers, &mut stream).await;
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
    authorize(state, identity, &worker, Some(&id)).await?;
    let queue = state.queue.clone();
    let (check_id, check_worker, record_id, record_lease) =
        (id.clone(), worker.clone(), id.clone(), lease.clone());
    let spec = blocking(move || queue.check_lease(&check_id, &check_worker, &lease)).await?;
    let upload = Upload {
        job_id: id,
        model: spec.model,
        mode: spec.mode,
        worker: worker.to_string(),
        expected_sha256,
        content_length: content_length(headers),
    };
    let stored = state.store.ingest(&upload, stream).await?;
    // Fenced again now that the bytes are in: an upload whose lease was lost while it
    // streamed is refused (409 lease_lost) and cannot complete the job. Its bundle stays
    // in the store, harmless: nothing refers to it.
    let queue = state.queue.clone();
    let artifact = stored.artifact_id.clone();
    let size = stored.size_bytes;
    blocking(move || queue.record_upload(&record_id, &worker, &record_lease, &artifact, size))
        .await?;
    Ok(UploadResponse {
        artifact_id: stored.artifact_id,
        status: stored.status,
        size_bytes: stored.size_bytes,
    })
}

/// `PUT /v1/worker/{name}`: node status from the agent.
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
