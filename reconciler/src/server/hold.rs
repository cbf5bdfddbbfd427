//! Operator routes `POST /v1/job/{id}/hold` and `/release`: set a pending job aside and
//! let it go again.

use axum::extract::State;
use axum::Json;
use cis490_api::{ApiError, IdPrefix, JobStatusResponse};

use super::error::ApiFailure;
use super::extract::{mutating_id_prefix, ApiPath};
use super::{blocking, AppState};

/// Hold a pending job: it keeps its place in the manifest and its history, but no worker
/// claims it until it is released.
///
/// A held job takes manifest updates and can be tombstoned or cancelled like a pending
/// one; `requeue` refuses it (release it instead).
#[utoipa::path(post, path = "/v1/job/{id}/hold", params(
    ("id" = IdPrefix, Path, description = "The job's ID or a unique prefix of it"),
), responses(
    (status = 200, description = "The job is held", body = JobStatusResponse),
    (status = 404, description = "No job has this ID or prefix", body = ApiError),
    (status = 409, description = "`ambiguous_id`: the prefix matches more than one job; `invalid_state`: the job is not pending", body = ApiError),
))]
pub async fn hold(
    State(state): State<AppState>,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<JobStatusResponse>, ApiFailure> {
    let prefix = mutating_id_prefix(&raw, "hold")?;
    let queue = state.queue.clone();
    let answer = blocking(move || {
        let id = queue.resolve(&prefix)?;
        queue.hold(&id)
    })
    .await?;
    tracing::info!(job = %answer.id.short(), "held by operator");
    Ok(Json(answer))
}

/// Release a held job: it is pending again, claimable in its queue order.
#[utoipa::path(post, path = "/v1/job/{id}/release", params(
    ("id" = IdPrefix, Path, description = "The job's ID or a unique prefix of it"),
), responses(
    (status = 200, description = "The job is pending again", body = JobStatusResponse),
    (status = 404, description = "No job has this ID or prefix", body = ApiError),
    (status = 409, description = "`ambiguous_id`: the prefix matches more than one job; `invalid_state`: the job is not held", body = ApiError),
))]
pub async fn release(
    State(state): State<AppState>,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<JobStatusResponse>, ApiFailure> {
    let prefix = mutating_id_prefix(&raw, "release")?;
    let queue = state.queue.clone();
    let answer = blocking(move || {
        let id = queue.resolve(&prefix)?;
        queue.release(&id)
    })
    .await?;
    tracing::info!(job = %answer.id.short(), "released by operator");
    Ok(Json(answer))
}
