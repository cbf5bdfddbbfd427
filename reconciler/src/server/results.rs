//! Training results (read routes): the leaderboard of completed jobs with their metrics,
//! and one job's progress per attempt.

use axum::extract::State;
use axum::Json;
use cis490_api::{page_limit, ApiError, IdPrefix, JobProgress, Page, ResultRow, ResultsQuery};

use super::error::ApiFailure;
use super::extract::{id_prefix, ApiPath, ApiQuery};
use super::{blocking, AppState};

/// Completed jobs with their metrics, filtered and sorted.
///
/// One row per completed job (its latest completion), or with `attempts=true` one per
/// completed attempt, so re-runs of a job can be compared. `sort` orders by a metric, a
/// hyper key or a field, `-` first for descending; rows without the value come last. At
/// most `limit` rows a page (default 500, at most 1,000); `next` is the `after` of the
/// next page.
#[utoipa::path(get, path = "/v1/results", params(ResultsQuery), responses(
    (status = 200, description = "A page of completed jobs and their metrics", body = Page<ResultRow>),
    (status = 400, description = "A bad filter, sort key, limit or cursor", body = ApiError),
))]
pub async fn results(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ResultsQuery>,
) -> Result<Json<Page<ResultRow>>, ApiFailure> {
    let limit = page_limit(query.limit).map_err(|e| ApiFailure::bad_request(e.to_string()))?;
    let queue = state.queue.clone();
    Ok(Json(
        blocking(move || queue.results_page(&query, limit)).await?,
    ))
}

/// One job's progress: every attempt that reported, oldest first.
///
/// Each attempt's latest progress point, its series (the heartbeats' points while it runs,
/// the agent's thinned history once it ended), its final metrics and the warnings about
/// the trainer's files.
#[utoipa::path(get, path = "/v1/job/{id}/progress", params(
    ("id" = IdPrefix, Path, description = "The job's ID or a unique prefix of it"),
), responses(
    (status = 200, description = "The job's attempts and their progress", body = JobProgress),
    (status = 404, description = "No job has this ID or prefix", body = ApiError),
    (status = 409, description = "`ambiguous_id`: the prefix matches more than one job", body = ApiError),
))]
pub async fn progress(
    State(state): State<AppState>,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<JobProgress>, ApiFailure> {
    let prefix = id_prefix(&raw)?;
    let queue = state.queue.clone();
    Ok(Json(
        blocking(move || {
            let id = queue.resolve(&prefix)?;
            queue.job_progress(&id)
        })
        .await?,
    ))
}
