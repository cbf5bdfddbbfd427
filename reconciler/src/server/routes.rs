//! Every route of the API, in one place, grouped by who may call it. The paths are the
//! ones `cis490_api::Client` calls.
//!
//! Each route is registered through `utoipa_axum::routes!` from its handler's
//! `#[utoipa::path]`, so the router and the OpenAPI document (`GET /v1/openapi.json`) come
//! from the same call and cannot drift. A route added with a plain `.route(...)` would be
//! served but undocumented, so `reconciler/clippy.toml` disallows those methods.

use axum::extract::DefaultBodyLimit;
use axum::middleware::from_fn_with_state;
use axum::{Extension, Router};
use tower_http::trace::TraceLayer;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use axum::extract::Request;
use axum::response::Response;

use super::error::ApiFailure;
use super::limits::{self, refuse};
use super::{
    auth, dashboard, delete_worker, extract, hold, logs, manifest_write, meta, operator, read,
    results, worker, AppState,
};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, always: liveness and Prometheus metrics (counts, never names or IDs), so a
    /// load balancer or a scraper needs no token when `protect_reads` is set.
    Open,
    /// Anyone (or any token holder when `protect_reads` is set).
    Read,
    /// `Authorization: Bearer <worker token>`: per-worker or shared (open while neither
    /// exists).
    Worker,
    /// `X-Operator-Token`; refused when the server has no operator token.
    Operator,
}

impl Access {
    pub const ALL: [Access; 4] = [Access::Open, Access::Read, Access::Worker, Access::Operator];

    /// The OpenAPI tag of the group's routes.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Open => "open",
            Access::Read => "read",
            Access::Worker => "worker",
            Access::Operator => "operator",
        }
    }

    /// The routes of this group.
    fn routes(self) -> OpenApiRouter<AppState> {
        match self {
            Access::Open => OpenApiRouter::new()
                .routes(routes!(read::health))
                .routes(routes!(meta::metrics)),
            Access::Read => OpenApiRouter::new()
                .routes(routes!(read::jobs))
                .routes(routes!(read::job))
                .routes(routes!(read::explain))
                .routes(routes!(logs::job_log))
                .routes(routes!(read::events))
                .routes(routes!(read::workers))
                .routes(routes!(read::worker))
                .routes(routes!(read::manifest))
                .routes(routes!(read::models))
                .routes(routes!(read::download))
                .routes(routes!(results::results))
                .routes(routes!(results::progress))
                .routes(routes!(meta::openapi)),
            Access::Worker => OpenApiRouter::new()
                .routes(routes!(worker::claim))
                .routes(routes!(worker::heartbeat))
                .routes(routes!(worker::complete))
                .routes(routes!(worker::fail))
                .routes(routes!(worker::upload))
                .routes(routes!(worker::report_node))
                .routes(routes!(worker::whoami)),
            Access::Operator => OpenApiRouter::new()
                .routes(routes!(operator::cancel))
                .routes(routes!(operator::requeue))
                .routes(routes!(hold::hold))
                .routes(routes!(hold::release))
                .routes(routes!(operator::reload))
                .routes(routes!(operator::diff))
                .routes(routes!(manifest_write::put_manifest))
                .routes(routes!(operator::cordon))
                .routes(routes!(operator::uncordon))
                .routes(routes!(operator::drain))
                .routes(routes!(delete_worker::delete_worker)),
        }
    }
}

/// Every group's routes, each passed through `guard` (its auth layer), merged into one
/// router, and the document of exactly those routes.
fn assemble(
    mut guard: impl FnMut(Access, Router<AppState>) -> Router<AppState>,
) -> (Router<AppState>, serde_json::Value) {
    let mut doc = meta::base_document();
    let mut router = Router::new();
    for access in Access::ALL {
        let (routes, mut part) = access.routes().split_for_parts();
        meta::set_access(&mut part, access);
        doc.merge(part);
        router = router.merge(guard(access, routes));
    }
    (router, meta::finish_document(doc))
}

/// The OpenAPI document of every route [`router`] serves.
pub fn openapi_document() -> serde_json::Value {
    assemble(|_, routes| routes).1
}

/// The API router with its state, auth layers, body limit and request tracing.
pub fn router(state: AppState) -> Router {
    let (api, doc) = assemble(|access, routes| match access {
        Access::Open => routes,
        Access::Read => routes.route_layer(from_fn_with_state(state.clone(), auth::require_reader)),
        // The upload cap applies inside the worker auth, so an unauthenticated upload never
        // takes a place.
        Access::Worker => routes
            .route_layer(from_fn_with_state(state.clone(), limits::upload_slot))
            .route_layer(from_fn_with_state(state.clone(), auth::require_worker)),
        Access::Operator => {
            routes.route_layer(from_fn_with_state(state.clone(), auth::require_operator))
        }
    });
    let max_body = state.config.max_body_bytes;
    // The dashboard's pages check reads themselves (a cookie, not a header, signs a
    // browser in) and are not in the document.
    api.merge(dashboard::router())
        .layer(from_fn_with_state(
            state.clone(),
            extract::refuse_oversized_bodies,
        ))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(Extension(meta::OpenApiJson::new(&doc)))
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
