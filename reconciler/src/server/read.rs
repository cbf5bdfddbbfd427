//! Read routes (open unless `protect_reads`): health, jobs, job detail, explain, events,
//! workers, manifest status, artifacts.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cis490_api::{
    page_limit, ApiError, ArtifactId, ArtifactView, EventsPage, Explain, Health, IdPrefix,
    JobFilter, JobView, ManifestStatus, Page, PageQuery, WorkerName, WorkerView, MAX_CLAIM_WAIT_S,
};
use serde::Deserialize;
use tokio::time::Instant;
use utoipa::IntoParams;

use super::error::ApiFailure;
use super::extract::{artifact_id, id_prefix, worker_name, ApiPath, ApiQuery};
use super::meta::BundleBytes;
use super::{blocking, AppState};
use crate::queue::listing::JobCursor;
use crate::queue::EventFilter;

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
        leader: state.reconciler.leadership().is_leader(),
    }))
}

/// List jobs, filtered, one page at a time.
///
/// In queue order (priority, then manifest order). Tombstoned jobs (removed from the
/// manifest) are left out unless `all` is true. At most `limit` jobs a page (default 500,
/// at most 1,000); `next` is the `after` of the next page.
#[utoipa::path(get, path = "/v1/jobs", params(JobFilter), responses(
    (status = 200, description = "A page of the jobs that match", body = Page<JobView>),
    (status = 400, description = "A bad filter, limit or cursor", body = ApiError),
))]
pub async fn jobs(
    State(state): State<AppState>,
    ApiQuery(filter): ApiQuery<JobFilter>,
) -> Result<Json<Page<JobView>>, ApiFailure> {
    let limit = page_limit(filter.limit).map_err(|e| ApiFailure::bad_request(e.to_string()))?;
    let after = filter.after.as_deref().map(JobCursor::decode).transpose()?;
    let queue = state.queue.clone();
    Ok(Json(
        blocking(move || queue.jobs_page(&filter, after.as_ref(), limit)).await?,
    ))
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
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Answer events after this sequence number (the `next` of the previous page).
    #[serde(default)]
    pub since: u64,
    /// Seconds to wait for an event when there is none yet; more than 60 waits 60.
    #[serde(default)]
    pub wait: u64,
    /// Most events to answer (default and most: 1,000).
    #[serde(default)]
    #[param(minimum = 1)]
    pub limit: Option<u32>,
    /// Only the events of this job (its ID or a unique prefix).
    #[param(value_type = Option<IdPrefix>)]
    pub job: Option<String>,
    /// Only the events that name this worker.
    #[param(value_type = Option<WorkerName>)]
    pub worker: Option<String>,
}

/// Events after `since`, long-polled.
///
/// Answers at once when there are events after `since` (at most 1,000 a page), otherwise
/// when one arrives or `wait` seconds pass. Waiting takes one of `max_event_waits` places
/// (429 `too_many_long_polls` when none is free); an answer that is there at once needs none.
///
/// With `job` and/or `worker`, only the matching events are answered, and `next` is the
/// last event looked at (the log's head when the page is not full), so a follower skips
/// what the filter dropped.
#[utoipa::path(get, path = "/v1/events", params(EventsQuery), responses(
    (status = 200, description = "The events after `since` (possibly none) and the `since` of the next call", body = EventsPage),
    (status = 400, description = "A bad limit, job ID prefix or worker name", body = ApiError),
    (status = 404, description = "`job` matches no job", body = ApiError),
    (status = 409, description = "`ambiguous_id`: `job` matches more than one job", body = ApiError),
))]
pub async fn events(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Result<Json<EventsPage>, ApiFailure> {
    let limit = match q.limit {
        None => EVENTS_PAGE_LIMIT,
        Some(0) => {
            return Err(ApiFailure::bad_request(
                "limit must be at least 1 (it is 0)",
            ))
        }
        Some(n) => EVENTS_PAGE_LIMIT.min(n as usize),
    };
    let filter = event_filter(&state, &q).await?;
    let mut since = q.since;
    let mut deadline = Instant::now() + Duration::from_secs(q.wait.min(MAX_CLAIM_WAIT_S));
    let mut changes = state.queue.subscribe();
    let mut shutdown = state.shutdown.clone();
    let mut place = None;
    loop {
        let last_event = *changes.borrow_and_update();
        let answer_now = Instant::now() >= deadline || *shutdown.borrow();
        // Reads share the queue's one connection with the workers' commits: a poll that
        // the last event's seq says can find nothing does not query.
        if last_event > since || answer_now {
            let queue = state.queue.clone();
            let filter = filter.clone();
            let turn = state.budgets.event_read_turn().await;
            let page = blocking(move || queue.events_filtered(since, limit, &filter)).await?;
            drop(turn);
            if !page.events.is_empty() || answer_now {
                return Ok(Json(page));
            }
            // Events the filter dropped are not looked at again.
            since = page.next.max(since);
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

/// The filter of an events query: the job prefix resolved to its one job.
async fn event_filter(state: &AppState, q: &EventsQuery) -> Result<EventFilter, ApiFailure> {
    let worker = q.worker.as_deref().map(worker_name).transpose()?;
    let job = match q.job.as_deref() {
        None => None,
        Some(raw) => {
            let prefix = id_prefix(raw)?;
            let queue = state.queue.clone();
            Some(blocking(move || queue.resolve(&prefix)).await?)
        }
    };
    Ok(EventFilter { job, worker })
}

/// List workers with their node status, by name, one page at a time.
#[utoipa::path(get, path = "/v1/workers", params(PageQuery), responses(
    (status = 200, description = "A page of the workers that have reported", body = Page<WorkerView>),
    (status = 400, description = "A bad limit or cursor", body = ApiError),
))]
pub async fn workers(
    State(state): State<AppState>,
    ApiQuery(page): ApiQuery<PageQuery>,
) -> Result<Json<Page<WorkerView>>, ApiFailure> {
    let limit = page_limit(page.limit).map_err(|e| ApiFailure::bad_request(e.to_string()))?;
    let after = page.after.map(|a| worker_name(&a)).transpose()?;
    let queue = state.queue.clone();
    Ok(Json(
        blocking(move || queue.workers_page(after.as_ref().map(WorkerName::as_str), limit)).await?,
    ))
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

/// List stored artifacts, one page at a time: one row per (job, attempt, artifact)
/// uploaded, newest first, then one row for each stored byte sequence no recorded upload
/// names (an upload whose lease was lost while it streamed).
#[utoipa::path(get, path = "/v1/models", params(PageQuery), responses(
    (status = 200, description = "A page of the uploads of stored artifacts", body = Page<ArtifactView>),
    (status = 400, description = "A bad limit or cursor", body = ApiError),
))]
pub async fn models(
    State(state): State<AppState>,
    ApiQuery(page): ApiQuery<PageQuery>,
) -> Result<Json<Page<ArtifactView>>, ApiFailure> {
    let limit = page_limit(page.limit).map_err(|e| ApiFailure::bad_request(e.to_string()))?;
    let cursor = page
        .after
        .as_deref()
        .map(ArtifactCursor::decode)
        .transpose()?;
    let queue = state.queue.clone();
    let page = tokio::task::spawn_blocking(move || -> Result<_, ApiFailure> {
        let (mut items, mut next) = (Vec::new(), None);
        let unrecorded_after = match cursor {
            Some(ArtifactCursor::Unrecorded(after)) => Some(after),
            upload => {
                let before = match upload {
                    Some(ArtifactCursor::Upload(row)) => Some(row),
                    _ => None,
                };
                let (rows, more) = queue.uploads_page(before, limit)?;
                items = rows;
                match more {
                    Some(row) => {
                        next = Some(ArtifactCursor::Upload(row));
                        None
                    }
                    // The recorded rows are done: the unrecorded ones follow, on this page
                    // as far as it has room.
                    None => Some(None),
                }
            }
        };
        if let Some(after) = unrecorded_after {
            let room = limit - items.len();
            let (rows, more) = queue.unrecorded_artifacts_page(after.as_ref(), room)?;
            if more {
                let last = rows.last().map(|r| r.artifact_id.clone()).or(after);
                next = Some(ArtifactCursor::Unrecorded(last));
            }
            items.extend(rows);
        }
        Ok(Page {
            items,
            next: next.map(|c| c.encode()),
        })
    })
    .await??;
    Ok(Json(page))
}

/// Where an artifact page ends: before an upload row (`u<row>`), or among the stored
/// bytes no upload names, after an artifact ID (`s<id>`, or `s` for their start).
#[derive(Debug, Clone, PartialEq, Eq)]
enum ArtifactCursor {
    Upload(i64),
    Unrecorded(Option<ArtifactId>),
}

impl ArtifactCursor {
    fn encode(&self) -> String {
        match self {
            Self::Upload(row) => format!("u{row}"),
            Self::Unrecorded(None) => "s".into(),
            Self::Unrecorded(Some(id)) => format!("s{id}"),
        }
    }

    fn decode(text: &str) -> Result<Self, ApiFailure> {
        let bad = || {
            ApiFailure::bad_request(
                "`after` is not a cursor of this listing; pass the `next` of the previous page",
            )
        };
        if let Some(row) = text.strip_prefix('u') {
            return row.parse().map(Self::Upload).map_err(|_| bad());
        }
        match text.strip_prefix('s') {
            Some("") => Ok(Self::Unrecorded(None)),
            Some(id) => ArtifactId::parse(id)
                .map(|id| Self::Unrecorded(Some(id)))
                .map_err(|_| bad()),
            None => Err(bad()),
        }
    }
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
    let blob = state.store.open(&id).await?;
    let size = blob.size_bytes;
    let body = Body::from_stream(blob.bytes);
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
