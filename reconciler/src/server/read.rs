//! Read routes (open unless `protect_reads`): health, jobs, job detail, explain, events,
//! workers, manifest status, artifacts.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cis490_api::{
    EventsPage, Explain, Health, JobFilter, JobView, ManifestStatus, WorkerView, MAX_CLAIM_WAIT_S,
};
use serde::Deserialize;
use tokio::time::Instant;

use super::error::ApiFailure;
use super::extract::{artifact_id, id_prefix, worker_name, ApiPath, ApiQuery};
use super::{blocking, AppState};

/// Most events one page returns.
const EVENTS_PAGE_LIMIT: usize = 1000;

/// How long a waiting event poll lets further commits land after the first wakes it (what
/// a follower like `cis490ctl get -w` waits more for a change, at most).
const EVENTS_BATCH: Duration = Duration::from_millis(50);

/// `GET /v1/health`
pub async fn health(State(state): State<AppState>) -> Result<Json<Health>, ApiFailure> {
    let queue = state.queue.clone();
    let jobs = blocking(move || queue.counts()).await?;
    let posture = &state.posture;
    let mut warnings = posture.warnings.clone();
    warnings.extend(super::auth::worker_credential_warnings(&state.config, &state.queue).await?);
    Ok(Json(Health {
        status: "ok".into(),
        version: cis490_api::VERSION.into(),
        jobs,
        tls: posture.tls,
        client_certs: posture.client_certs,
        insecure: posture.insecure,
        warnings,
    }))
}

/// `GET /v1/jobs?status=&model=&worker=&label=&all=`
pub async fn jobs(
    State(state): State<AppState>,
    ApiQuery(filter): ApiQuery<JobFilter>,
) -> Result<Json<Vec<JobView>>, ApiFailure> {
    let queue = state.queue.clone();
    Ok(Json(blocking(move || queue.jobs(&filter)).await?))
}

/// `GET /v1/job/{id}`: a full ID or a unique prefix.
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

/// `GET /v1/job/{id}/explain`
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
#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    #[serde(default)]
    pub since: u64,
    /// Seconds to wait for an event when there is none yet (at most 60).
    #[serde(default)]
    pub wait: u64,
}

/// `GET /v1/events?since=&wait=`: long-polls until an event after `since` exists. Waiting
/// takes one of `max_event_waits` places (429 `too_many_long_polls` when none is free); an
/// answer that is there at once needs none.
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

/// `GET /v1/workers`
pub async fn workers(State(state): State<AppState>) -> Result<Json<Vec<WorkerView>>, ApiFailure> {
    let queue = state.queue.clone();
    Ok(Json(blocking(move || queue.workers()).await?))
}

/// `GET /v1/worker/{name}`
pub async fn worker(
    State(state): State<AppState>,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<WorkerView>, ApiFailure> {
    let name = worker_name(&raw)?;
    let queue = state.queue.clone();
    Ok(Json(blocking(move || queue.worker(&name)).await?))
}

/// `GET /v1/manifest`
pub async fn manifest(State(state): State<AppState>) -> Result<Json<ManifestStatus>, ApiFailure> {
    let queue = state.queue.clone();
    Ok(Json(blocking(move || queue.manifest_status()).await?))
}

/// `GET /v1/models`
pub async fn models(
    State(state): State<AppState>,
) -> Result<Json<Vec<cis490_api::ArtifactView>>, ApiFailure> {
    let store = state.store.clone();
    let list = tokio::task::spawn_blocking(move || store.list()).await??;
    Ok(Json(list))
}

/// `GET /v1/model/{artifact_id}`: streams the bundle.
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
