//! Operator routes (`X-Operator-Token`; refused when the server has none): cancel, requeue,
//! manifest reload and diff, cordon / uncordon / drain.

use axum::extract::State;
use axum::Json;
use cis490_api::{ApiError, IdPrefix, JobStatusResponse, PlanSummary, WorkerName, WorkerView};

use super::error::ApiFailure;
use serde::Deserialize;
use utoipa::IntoParams;

use super::extract::{mutating_id_prefix, worker_name, ApiPath, ApiQuery, ApiText};
use super::reconcile::Trigger;
use super::{blocking, AppState};
use crate::queue::{JobQueue, QueueError};

/// Cancel a job.
///
/// A pending job is cancelled at once; a claimed or running one when its agent learns it
/// on its next heartbeat.
#[utoipa::path(post, path = "/v1/job/{id}/cancel", params(
    ("id" = IdPrefix, Path, description = "The job's ID or a unique prefix of it"),
), responses(
    (status = 200, description = "The job is cancelled", body = JobStatusResponse),
    (status = 404, description = "No job has this ID or prefix", body = ApiError),
    (status = 409, description = "`ambiguous_id`: the prefix matches more than one job; `invalid_state`: the job has finished", body = ApiError),
))]
pub async fn cancel(
    State(state): State<AppState>,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<JobStatusResponse>, ApiFailure> {
    let prefix = mutating_id_prefix(&raw, "cancel")?;
    let queue = state.queue.clone();
    let answer = blocking(move || {
        let id = queue.resolve(&prefix)?;
        queue.cancel(&id)
    })
    .await?;
    tracing::info!(job = %answer.id.short(), "cancelled by operator");
    Ok(Json(answer))
}

/// Requeue a failed, cancelled or completed job.
#[utoipa::path(post, path = "/v1/job/{id}/requeue", params(
    ("id" = IdPrefix, Path, description = "The job's ID or a unique prefix of it"),
), responses(
    (status = 200, description = "The job is pending again", body = JobStatusResponse),
    (status = 404, description = "No job has this ID or prefix", body = ApiError),
    (status = 409, description = "`ambiguous_id`: the prefix matches more than one job; `invalid_state`: the job has not finished", body = ApiError),
))]
pub async fn requeue(
    State(state): State<AppState>,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<JobStatusResponse>, ApiFailure> {
    let prefix = mutating_id_prefix(&raw, "requeue")?;
    let queue = state.queue.clone();
    let answer = blocking(move || {
        let id = queue.resolve(&prefix)?;
        queue.requeue(&id)
    })
    .await?;
    tracing::info!(job = %answer.id.short(), "requeued by operator");
    Ok(Json(answer))
}

/// Reconcile the manifest file now.
///
/// An invalid manifest changes nothing: the last good state stays.
#[utoipa::path(post, path = "/v1/manifest/reload", responses(
    (status = 200, description = "The plan, applied", body = PlanSummary),
    (status = 422, description = "`invalid_manifest`: every error with its line and column; nothing changed", body = ApiError),
))]
pub async fn reload(State(state): State<AppState>) -> Result<Json<PlanSummary>, ApiFailure> {
    Ok(Json(
        state.reconciler.reconcile(Trigger::ReloadRoute).await?,
    ))
}

/// Query of `POST /v1/manifest/diff`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DiffQuery {
    /// How errors and warnings name the text (the client's file); default `manifest`.
    #[param(max_length = 255)]
    pub file: Option<String>,
}

/// The plan for the manifest text in the body, not applied.
///
/// Errors and warnings name the text by `file` (the client's own file name), never by the
/// server's manifest path.
#[utoipa::path(post, path = "/v1/manifest/diff", params(DiffQuery),
    request_body(content = String, content_type = "text/plain", description = "A whole manifest (TOML)"),
    responses(
        (status = 200, description = "What applying the manifest would do", body = PlanSummary),
        (status = 400, description = "A `file` name of more than 255 characters or with control characters", body = ApiError),
        (status = 422, description = "`invalid_manifest`: every error with its line and column", body = ApiError),
    ))]
pub async fn diff(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<DiffQuery>,
    ApiText(text): ApiText,
) -> Result<Json<PlanSummary>, ApiFailure> {
    let name = query.file.unwrap_or_else(|| "manifest".into());
    if name.chars().count() > 255 || name.chars().any(char::is_control) {
        return Err(ApiFailure::bad_request(
            "`file` must be at most 255 characters, with no control characters",
        ));
    }
    let reconciler = state.reconciler.clone();
    let summary =
        tokio::task::spawn_blocking(move || reconciler.diff_blocking(&text, &name)).await??;
    Ok(Json(summary))
}

/// Cordon a worker: no new jobs go to it.
#[utoipa::path(post, path = "/v1/worker/{name}/cordon", params(
    ("name" = WorkerName, Path, description = "The worker's name"),
), responses(
    (status = 200, description = "The worker, cordoned", body = WorkerView),
    (status = 404, description = "No worker of this name has reported", body = ApiError),
))]
pub async fn cordon(
    state: State<AppState>,
    raw: ApiPath<String>,
) -> Result<Json<WorkerView>, ApiFailure> {
    set_schedulable(state, raw, |q: &dyn JobQueue, n: &WorkerName| q.cordon(n)).await
}

/// Uncordon a worker: it takes jobs again.
#[utoipa::path(post, path = "/v1/worker/{name}/uncordon", params(
    ("name" = WorkerName, Path, description = "The worker's name"),
), responses(
    (status = 200, description = "The worker, schedulable", body = WorkerView),
    (status = 404, description = "No worker of this name has reported", body = ApiError),
))]
pub async fn uncordon(
    state: State<AppState>,
    raw: ApiPath<String>,
) -> Result<Json<WorkerView>, ApiFailure> {
    set_schedulable(state, raw, |q: &dyn JobQueue, n: &WorkerName| q.uncordon(n)).await
}

/// Drain a worker: cordon it and let its running jobs finish.
#[utoipa::path(post, path = "/v1/worker/{name}/drain", params(
    ("name" = WorkerName, Path, description = "The worker's name"),
), responses(
    (status = 200, description = "The worker, draining", body = WorkerView),
    (status = 404, description = "No worker of this name has reported", body = ApiError),
))]
pub async fn drain(
    state: State<AppState>,
    raw: ApiPath<String>,
) -> Result<Json<WorkerView>, ApiFailure> {
    set_schedulable(state, raw, |q: &dyn JobQueue, n: &WorkerName| q.drain(n)).await
}

/// The one body of cordon, uncordon and drain: which queue operation is the only difference.
async fn set_schedulable(
    State(state): State<AppState>,
    ApiPath(raw): ApiPath<String>,
    operation: fn(&dyn JobQueue, &WorkerName) -> Result<WorkerView, QueueError>,
) -> Result<Json<WorkerView>, ApiFailure> {
    let name = worker_name(&raw)?;
    let queue = state.queue.clone();
    Ok(Json(
        blocking(move || operation(queue.as_ref(), &name)).await?,
    ))
}
