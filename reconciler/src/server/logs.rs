//! `GET /v1/job/{id}/log`: an attempt's log, paged by offset (see `queue::logs`).

use axum::extract::State;
use axum::Json;
use cis490_api::{ApiError, IdPrefix, LogPage, LogQuery};

use super::error::ApiFailure;
use super::extract::{id_prefix, ApiPath, ApiQuery};
use super::{blocking, AppState};

/// One page of an attempt's log.
///
/// Reads `limit` bytes (default 256 KiB, at most 1 MiB) of the attempt's log from
/// `offset`; pass `next_offset` as the next `offset` to read on, or to follow a running
/// attempt without gaps until `finished`. A log longer than the server's
/// `max_log_bytes_per_attempt` keeps its first half and its latest part; a page that
/// starts in the dropped middle begins with a `[... truncated: N bytes dropped ...]` line.
#[utoipa::path(get, path = "/v1/job/{id}/log", params(
    ("id" = IdPrefix, Path, description = "The job's ID or a unique prefix of it"),
    LogQuery,
), responses(
    (status = 200, description = "A page of the attempt's log", body = LogPage),
    (status = 400, description = "`bad_request`: the offset is past the end of the log", body = ApiError),
    (status = 404, description = "No job has this ID or prefix", body = ApiError),
    (status = 409, description = "`ambiguous_id`: the prefix matches more than one job", body = ApiError),
))]
pub async fn job_log(
    State(state): State<AppState>,
    ApiPath(raw): ApiPath<String>,
    ApiQuery(query): ApiQuery<LogQuery>,
) -> Result<Json<LogPage>, ApiFailure> {
    let prefix = id_prefix(&raw)?;
    let queue = state.queue.clone();
    Ok(Json(
        blocking(move || {
            let id = queue.resolve(&prefix)?;
            queue.job_log(&id, &query)
        })
        .await?,
    ))
}
