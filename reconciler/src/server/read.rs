//! Read routes (open unless `protect_reads`): health, jobs, job detail, explain, events,
//! workers, manifest status, artifacts.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cis490_api::{
    ApiError, ArtifactId, ArtifactView, EventsPage, Explain, Health, IdPrefix, JobFilter, JobView,
    ManifestStatus, WorkerName, WorkerView, MAX_CLAIM_WAIT_S,
};
use serde::Deserialize;
use tokio::time::Instant;
use utoipa::IntoParams;

use super::error::ApiFailure;
use super::extract::{artifact_id, id_prefix, worker_name, ApiPath, ApiQuery};
use super::meta::BundleBytes;
use super::{blocking, AppState};

/// Most events one page returns.
const EVENTS_PAGE_LIMIT: usize = 1000;

/// How long a waiting event poll lets further commits land after the first wakes it (what
/// a follower like `cis490ctl get -w` waits more for a change, at most).
const EVENTS_BATCH: Duration = Duration::from_millis(50);

/// Liveness, version and jobs per status.
#[utoipa::path(get, path = "/v1/health", responses(
    (status = 200, description = "The server is up", body = Health),
))]
pub async fn health(State(state): State<AppState>) -> Result<Json<Health>, ApiFailure> {
    let queue = state.queue.clone();
    let (jobs, tombstoned) = blocking(move || queue.live_counts()).await?;
    let posture = &state.posture;
    let mut warnings = posture.warnings.clone();
    warnings.extend(super::auth::worker_credential_warnings(&state.config, &state.queue).await?);
    Ok(Json(Health {
        status: "ok".into(),
        version: cis490_api::VERSION.into(),
        jobs,
        tombstoned,
        tls: posture.tls,
        client_certs: posture.client_certs,
        insecure: posture.insecure,
        warnings,
    }))
}

/// List jobs, filtered.
///
/// Tombstoned jobs (removed from the manifest) are left out unless `all` is true.
#[utoipa::path(get, path = "/v1/jobs", params(JobFilter), responses(
    (status = 200, description = "The jobs that match", body = Vec<JobView>),
))]
pub async fn jobs(
    State(state): State<AppState>,
    ApiQuery(filter): ApiQuery<JobFilter>,
) -> Result<Json<Vec<JobView>>, ApiFailure> {
    let queue = state.queue.clone();
    Ok(Json(blocking(move || queue.jobs(&filter)).await?))
}

/// One job with its events.
///
/// A unique prefix of the ID is accepted, like git's abbreviated hashes.
#[utoipa::path(get, path = "/v1/job/{id}", params(
    ("id" = IdPrefix, Path, description = "The job's ID or a unique prefix of it"),
), responses(
    (status = 200, description = "The job, its lease and its events", body = JobView),
    (status = 404, description = "No job has this ID or prefix", body = ApiError),
    (status = 409, description = "`ambiguous_id`: the prefix matches more than one job", body = ApiError),
))]
pub async fn job(
    State(state): State<AppState>,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<JobView>, ApiFailure> {
    let prefix = id_prefix(&raw)?;
    let queue = state.queue.clone();
    Ok(Json(
        blocking(move || {
            let id = queue.resolve(&prefix)?;
            queue.job(&id)
        })
        .await?,
    ))
}

/// Why a pending job is not running.
///
/// Each known worker with the reasons it cannot take the job now, and the job's place in
/// the queue.
#[utoipa::path(get, path = "/v1/job/{id}/explain", params(
    ("id" = IdPrefix, Path, description = "The job's ID or a unique prefix of it"),
), responses(
    (status = 200, description = "The job's fit against every known worker", body = Explain),
    (status = 404, description = "No job has this ID or prefix", body = ApiError),
    (status = 409, description = "`ambiguous_id`: the prefix matches more than one job", body = ApiError),
))]
pub async fn explain(
    State(state): State<AppState>,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<Explain>, ApiFailure> {
    let prefix = id_prefix(&raw)?;
    let queue = state.queue.clone();
    Ok(Json(
        blocking(move || {
            let id = queue.resolve(&prefix)?;
            queue.explain(&id)
        })
        .await?,
    ))
}

/// Query of `GET /v1/events`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Answer events after this sequence number (the `next` of the previous page).
    #[serde(default)]
    pub since: u64,
    /// Seconds to wait for an event when there is none yet; more than 60 waits 60.
    #[serde(default)]
    pub wait: u64,
}

/// Events after `since`, long-polled.
///
/// Answers at once when there are events after `since` (at most 1,000 a page), otherwise
/// when one arrives or `wait` seconds pass. Waiting takes one of `max_event_waits` places
/// (429 `too_many_long_polls` when none is free); an answer that is there at once needs none.
#[utoipa::path(get, path = "/v1/events", params(EventsQuery), responses(
    (status = 200, description = "The events after `since` (possibly none) and the `since` of the next call", body = EventsPage),
))]
pub async fn events(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Result<Json<EventsPage>, ApiFailure> {
    let mut deadline = Instant::now() + Duration::from_secs(q.wait.min(MAX_CLAIM_WAIT_S));
    let mut changes = state.queue.subscribe();
    let mut shutdown = state.shutdown.clone();
    let mut place = None;
    loop {
        let last_event = *changes.borrow_and_update();
        let answer_now = Instant::now() >= deadline || *shutdown.borrow();
        // Reads share the queue's one connection with the workers' commits: a poll that
        // the last event's seq says can find nothing does not query.
        if last_event > q.since || answer_now {
            let queue = state.queue.clone();
            let since = q.since;
            let turn = state.budgets.event_read_turn().await;
            let page = blocking(move || queue.events_since(since, EVENTS_PAGE_LIMIT)).await?;
            drop(turn);
            if !page.events.is_empty() || answer_now {
                return Ok(Json(page));
            }
        }
        if place.is_none() {
            place = Some(state.budgets.event_wait()?);
        }
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    deadline = Instant::now();
                    continue;
                }
                // Let a burst of commits (a claim, its heartbeat, its completion) land
                // first: one query per waiting poll for the burst, not one per commit.
                let batch = (Instant::now() + EVENTS_BATCH).min(deadline);
                tokio::select! {
                    _ = tokio::time::sleep_until(batch) => {}
                    _ = shutdown.changed() => {}
                }
            }
            _ = tokio::time::sleep_until(deadline) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// List workers with their node status.
#[utoipa::path(get, path = "/v1/workers", responses(
    (status = 200, description = "Every worker that has reported", body = Vec<WorkerView>),
))]
pub async fn workers(State(state): State<AppState>) -> Result<Json<Vec<WorkerView>>, ApiFailure> {
    let queue = state.queue.clone();
    Ok(Json(blocking(move || queue.workers()).await?))
}

/// One worker.
#[utoipa::path(get, path = "/v1/worker/{name}", params(
    ("name" = WorkerName, Path, description = "The worker's name"),
), responses(
    (status = 200, description = "The worker's node status", body = WorkerView),
    (status = 404, description = "No worker of this name has reported", body = ApiError),
))]
pub async fn worker(
    State(state): State<AppState>,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<WorkerView>, ApiFailure> {
    let name = worker_name(&raw)?;
    let queue = state.queue.clone();
    Ok(Json(blocking(move || queue.worker(&name)).await?))
}

/// Manifest status: path, sha256, generation and the last reload's errors.
#[utoipa::path(get, path = "/v1/manifest", responses(
    (status = 200, description = "What was last applied, and why the last reload failed if it did", body = ManifestStatus),
))]
pub async fn manifest(State(state): State<AppState>) -> Result<Json<ManifestStatus>, ApiFailure> {
    let queue = state.queue.clone();
    Ok(Json(blocking(move || queue.manifest_status()).await?))
}

/// List stored artifacts: one row per (job, attempt, artifact) uploaded, see
/// [`crate::store::ArtifactStore::listing`].
#[utoipa::path(get, path = "/v1/models", responses(
    (status = 200, description = "One row per (job, attempt, artifact) uploaded, newest first", body = Vec<ArtifactView>),
))]
pub async fn models(State(state): State<AppState>) -> Result<Json<Vec<ArtifactView>>, ApiFailure> {
    let queue = state.queue.clone();
    let recorded = blocking(move || queue.uploads()).await?;
    let store = state.store.clone();
    let list = tokio::task::spawn_blocking(move || store.listing(recorded)).await??;
    Ok(Json(list))
}

/// Download an artifact's tar.zst bundle.
#[utoipa::path(get, path = "/v1/model/{id}", params(
    ("id" = ArtifactId, Path, description = "The artifact's ID (the bundle's sha256)"),
), responses(
    (status = 200, description = "The bundle, streamed", content_type = "application/zstd", body = BundleBytes),
    (status = 404, description = "No artifact has this ID", body = ApiError),
))]
pub async fn download(
    State(state): State<AppState>,
    ApiPath(raw): ApiPath<String>,
) -> Result<Response, ApiFailure> {
    let id = artifact_id(&raw)?;
    let store = state.store.clone();
    let lookup = id.clone();
    let (path, size) = tokio::task::spawn_blocking(move || store.locate(&lookup)).await??;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiFailure::internal(format!("cannot open artifact {}: {e}", id.short())))?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok((
        [
            (header::CONTENT_TYPE, "application/zstd".to_string()),
            (header::CONTENT_LENGTH, size.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}.tar.zst\"", id.as_str()),
            ),
        ],
        body,
    )
        .into_response())
}
