//! Every route of the API, in one place, grouped by who may call it. The paths are the
//! ones `cis490_api::Client` calls.

use axum::extract::DefaultBodyLimit;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post, put};
use axum::Router;
use tower_http::trace::TraceLayer;

use super::error::ApiFailure;
use super::{auth, operator, read, worker, AppState};

/// The API router with its state, auth layers, body limit and request tracing.
pub fn router(state: AppState) -> Router {
    let reads = Router::new()
        .route("/v1/health", get(read::health))
        .route("/v1/jobs", get(read::jobs))
        .route("/v1/job/{id}", get(read::job))
        .route("/v1/job/{id}/explain", get(read::explain))
        .route("/v1/events", get(read::events))
        .route("/v1/workers", get(read::workers))
        .route("/v1/worker/{name}", get(read::worker))
        .route("/v1/manifest", get(read::manifest))
        .route("/v1/models", get(read::models))
        .route("/v1/model/{artifact_id}", get(read::download))
        .route_layer(from_fn_with_state(state.clone(), auth::require_reader));

    let workers = Router::new()
        .route("/v1/job/claim", post(worker::claim))
        .route("/v1/job/{id}/heartbeat", post(worker::heartbeat))
        .route("/v1/job/{id}/complete", post(worker::complete))
        .route("/v1/job/{id}/fail", post(worker::fail))
        .route("/v1/model/{artifact_id}", put(worker::upload))
        .route("/v1/worker/{name}", put(worker::report_node))
        .route_layer(from_fn_with_state(state.clone(), auth::require_worker));

    let operators = Router::new()
        .route("/v1/job/{id}/cancel", post(operator::cancel))
        .route("/v1/job/{id}/requeue", post(operator::requeue))
        .route("/v1/manifest/reload", post(operator::reload))
        .route("/v1/manifest/diff", post(operator::diff))
        .route("/v1/worker/{name}/cordon", post(operator::cordon))
        .route("/v1/worker/{name}/uncordon", post(operator::uncordon))
        .route("/v1/worker/{name}/drain", post(operator::drain))
        .route_layer(from_fn_with_state(state.clone(), auth::require_operator));

    let max_body = state.config.max_body_bytes;
    Router::new()
        .merge(reads)
        .merge(workers)
        .merge(operators)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

async fn not_found(uri: axum::http::Uri) -> ApiFailure {
    ApiFailure::not_found(format!("no route {}", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiFailure {
    ApiFailure::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}
