//! Every route of the API, in one place, grouped by who may call it. The paths are the
//! ones `cis490_api::Client` calls.

use axum::extract::DefaultBodyLimit;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post, put};
use axum::Router;
use tower_http::trace::TraceLayer;

use axum::extract::Request;
use axum::response::Response;

use super::error::ApiFailure;
use super::limits::{self, refuse};
use super::{auth, meta, operator, read, worker, AppState};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (or any token holder when `protect_reads` is set).
    Read,
    /// `Authorization: Bearer <worker token>`: per-worker or shared (open while neither
    /// exists).
    Worker,
    /// `X-Operator-Token`; refused when the server has no operator token.
    Operator,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Worker => "worker",
            Access::Operator => "operator",
        }
    }
}

/// One route as the OpenAPI document describes it.
#[derive(Debug, Clone, Copy)]
pub struct RouteDoc {
    pub method: &'static str,
    pub path: &'static str,
    pub access: Access,
    pub summary: &'static str,
}

const fn doc(
    method: &'static str,
    path: &'static str,
    access: Access,
    summary: &'static str,
) -> RouteDoc {
    RouteDoc {
        method,
        path,
        access,
        summary,
    }
}

/// Every route [`router`] serves (a test checks that each one is served).
pub const ROUTES: &[RouteDoc] = &[
    doc("GET", "/v1/health", Access::Read, "Liveness, version and jobs per status"),
    doc("GET", "/v1/jobs", Access::Read, "List jobs (?status=&model=&worker=&label=&all=)"),
    doc("GET", "/v1/job/{id}", Access::Read, "Job detail with events; a unique ID prefix is accepted (409 ambiguous_id)"),
    doc("GET", "/v1/job/{id}/explain", Access::Read, "Why a pending job is not running"),
    doc("GET", "/v1/events", Access::Read, "Events after ?since=, long-polled up to ?wait= seconds (max 60)"),
    doc("GET", "/v1/workers", Access::Read, "List workers (node status)"),
    doc("GET", "/v1/worker/{name}", Access::Read, "One worker"),
    doc("GET", "/v1/manifest", Access::Read, "Manifest status: path, sha256, generation, last errors"),
    doc("GET", "/v1/models", Access::Read, "List stored artifacts"),
    doc("GET", "/v1/model/{id}", Access::Read, "Download an artifact's tar.zst bundle"),
    doc("GET", "/v1/openapi.json", Access::Read, "This document"),
    doc("GET", "/metrics", Access::Read, "Prometheus metrics"),
    doc("POST", "/v1/job/claim", Access::Worker, "Claim a job (200 job + lease, or 204); ?wait= long-polls up to 60 s"),
    doc("POST", "/v1/job/{id}/heartbeat", Access::Worker, "Heartbeat a lease; answers {cancel}; 409 lease_lost when stale"),
    doc("POST", "/v1/job/{id}/complete", Access::Worker, "Complete a job with the artifact ID its lease uploaded; 409 artifact_not_uploaded / artifact_required"),
    doc("POST", "/v1/job/{id}/fail", Access::Worker, "Fail a job (reason, exit code, log tail, retryable)"),
    doc("PUT", "/v1/model/{id}", Access::Worker, "Upload a job's artifact (X-Worker, X-Lease-Token, X-Lease-Attempt, X-Content-Sha256); 413, 422"),
    doc("PUT", "/v1/worker/{name}", Access::Worker, "Report node status; 409 name_in_use while another live agent holds the name"),
    doc("GET", "/v1/whoami", Access::Worker, "The worker the request's credential proves (changes nothing)"),
    doc("POST", "/v1/job/{id}/cancel", Access::Operator, "Cancel a job"),
    doc("POST", "/v1/job/{id}/requeue", Access::Operator, "Requeue a failed, cancelled or completed job"),
    doc("POST", "/v1/manifest/reload", Access::Operator, "Reconcile the manifest file now; 422 invalid_manifest changes nothing"),
    doc("POST", "/v1/manifest/diff", Access::Operator, "The plan for the manifest text in the body, not applied"),
    doc("POST", "/v1/worker/{name}/cordon", Access::Operator, "Stop new jobs going to a worker"),
    doc("POST", "/v1/worker/{name}/uncordon", Access::Operator, "Let a worker take jobs again"),
    doc("POST", "/v1/worker/{name}/drain", Access::Operator, "Cordon a worker and let its running jobs finish"),
];

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
        .route("/v1/model/{id}", get(read::download))
        .route("/v1/openapi.json", get(meta::openapi))
        .route("/metrics", get(meta::metrics))
        .route_layer(from_fn_with_state(state.clone(), auth::require_reader));

    let workers = Router::new()
        .route("/v1/job/claim", post(worker::claim))
        .route("/v1/job/{id}/heartbeat", post(worker::heartbeat))
        .route("/v1/job/{id}/complete", post(worker::complete))
        .route("/v1/job/{id}/fail", post(worker::fail))
        .route(
            "/v1/model/{id}",
            put(worker::upload).route_layer(from_fn_with_state(state.clone(), limits::upload_slot)),
        )
        .route("/v1/worker/{name}", put(worker::report_node))
        .route("/v1/whoami", get(worker::whoami))
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

/// Refused before any handler: the body is read only as [`refuse`] allows.
async fn not_found(req: Request) -> Response {
    let failure = ApiFailure::not_found(format!("no route {}", req.uri().path()));
    refuse(req, failure).await
}

async fn method_not_allowed(req: Request) -> Response {
    let failure = ApiFailure::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    );
    refuse(req, failure).await
}
