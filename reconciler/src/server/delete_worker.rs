//! Operator route `DELETE /v1/worker/{name}`: forget a worker that is gone.

use axum::extract::State;
use axum::Json;
use cis490_api::{ApiError, WorkerName, WorkerView};

use super::error::ApiFailure;
use super::extract::{worker_name, ApiPath};
use super::{blocking, AppState};

/// Forget a worker, like `kubectl delete node`.
///
/// Any worker that holds no lease can be deleted; one that holds a lease is refused (409)
/// with its jobs named. The jobs' history and the event log keep its name, and its
/// tokens stay valid (`cis490-reconciler tokens revoke` takes them). An agent still running
/// under the name registers again at its next report. Answers the worker as it was.
#[utoipa::path(delete, path = "/v1/worker/{name}", params(
    ("name" = WorkerName, Path, description = "The worker's name"),
), responses(
    (status = 200, description = "The worker, as it was before it was forgotten", body = WorkerView),
    (status = 404, description = "No worker of this name has reported", body = ApiError),
    (status = 409, description = "`invalid_state`: the worker holds the lease of a job", body = ApiError),
))]
pub async fn delete_worker(
    State(state): State<AppState>,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<WorkerView>, ApiFailure> {
    let name = worker_name(&raw)?;
    let queue = state.queue.clone();
    let gone = blocking(move || queue.forget_worker(&name)).await?;
    tracing::info!(worker = %gone.name, "deleted by operator");
    Ok(Json(gone))
}
