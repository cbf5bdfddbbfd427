//! Operator routes (`X-Operator-Token`; refused when the server has none): cancel, requeue,
//! manifest reload and diff, cordon / uncordon / drain.

use axum::extract::State;
use axum::Json;
use cis490_api::{JobStatusResponse, PlanSummary, WorkerName, WorkerView};

use super::error::ApiFailure;
use super::extract::{mutating_id_prefix, worker_name, ApiPath, ApiText};
use super::reconcile::Trigger;
use super::{blocking, AppState};
use crate::queue::{Queue, QueueError};

/// `POST /v1/job/{id}/cancel`
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

/// `POST /v1/job/{id}/requeue`
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

/// `POST /v1/manifest/reload`: reconcile now; 422 `invalid_manifest` changes nothing.
pub async fn reload(State(state): State<AppState>) -> Result<Json<PlanSummary>, ApiFailure> {
    Ok(Json(
        state.reconciler.reconcile(Trigger::ReloadRoute).await?,
    ))
}

/// `POST /v1/manifest/diff`: body = manifest text; the plan, not applied.
pub async fn diff(
    State(state): State<AppState>,
    ApiText(text): ApiText,
) -> Result<Json<PlanSummary>, ApiFailure> {
    let reconciler = state.reconciler.clone();
    let summary = tokio::task::spawn_blocking(move || reconciler.diff_blocking(&text)).await??;
    Ok(Json(summary))
}

/// `POST /v1/worker/{name}/cordon`
pub async fn cordon(
    state: State<AppState>,
    raw: ApiPath<String>,
) -> Result<Json<WorkerView>, ApiFailure> {
    set_schedulable(state, raw, Queue::cordon).await
}

/// `POST /v1/worker/{name}/uncordon`
pub async fn uncordon(
    state: State<AppState>,
    raw: ApiPath<String>,
) -> Result<Json<WorkerView>, ApiFailure> {
    set_schedulable(state, raw, Queue::uncordon).await
}

/// `POST /v1/worker/{name}/drain`
pub async fn drain(
    state: State<AppState>,
    raw: ApiPath<String>,
) -> Result<Json<WorkerView>, ApiFailure> {
    set_schedulable(state, raw, Queue::drain).await
}

/// The one body of cordon, uncordon and drain: which queue operation is the only difference.
async fn set_schedulable(
    State(state): State<AppState>,
    ApiPath(raw): ApiPath<String>,
    operation: fn(&Queue, &WorkerName) -> Result<WorkerView, QueueError>,
) -> Result<Json<WorkerView>, ApiFailure> {
    let name = worker_name(&raw)?;
    let queue = state.queue.clone();
    Ok(Json(blocking(move || operation(&queue, &name)).await?))
}
