//! Routes about the API itself: the OpenAPI document (built from [`routes::ROUTES`]) and
//! Prometheus metrics.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

use super::error::ApiFailure;
use super::limits::Budgets;
use super::routes::{Access, ROUTES};
use super::AppState;

/// `GET /v1/openapi.json`: every route with its method, access and summary.
pub async fn openapi() -> Json<Value> {
    Json(openapi_document())
}

/// The OpenAPI 3 document of [`ROUTES`].
pub fn openapi_document() -> Value {
    let mut paths: BTreeMap<&str, serde_json::Map<String, Value>> = BTreeMap::new();
    for route in ROUTES {
        let params: Vec<Value> = route
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let security = match route.access {
            Access::Read => json!([{}, {"worker": []}, {"operator": []}]),
            Access::Worker => json!([{"worker": []}]),
            Access::Operator => json!([{"operator": []}]),
        };
        let op = json!({
            "summary": route.summary,
            "tags": [route.access.as_str()],
            "parameters": params,
            "security": security,
            "responses": {
                "default": {
                    "description": "JSON body; errors are {\"error\": code, \"message\": text}"
                }
            }
        });
        paths
            .entry(route.path)
            .or_default()
            .insert(route.method.to_ascii_lowercase(), op);
    }
    json!({
        "openapi": "3.0.3",
        "info": {"title": "cis490 reconciler", "version": cis490_api::VERSION},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "worker": {"type": "http", "scheme": "bearer"},
                "operator": {"type": "apiKey", "in": "header", "name": cis490_api::OPERATOR_TOKEN_HEADER}
            }
        }
    })
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiFailure> {
    let queue = state.queue.clone();
    let (counts, workers, manifest) =
        super::blocking(move || Ok((queue.counts()?, queue.workers()?, queue.manifest_status()?)))
            .await?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP cis490_jobs Jobs per status (tombstoned included)."
    );
    let _ = writeln!(out, "# TYPE cis490_jobs gauge");
    for (status, n) in &counts {
        let _ = writeln!(out, "cis490_jobs{{status=\"{status}\"}} {n}");
    }
    let mut by_state: BTreeMap<String, u64> = BTreeMap::new();
    for w in &workers {
        *by_state.entry(w.state.to_string()).or_default() += 1;
    }
    let _ = writeln!(out, "# HELP cis490_workers Known workers per node state.");
    let _ = writeln!(out, "# TYPE cis490_workers gauge");
    for (node_state, n) in &by_state {
        let _ = writeln!(out, "cis490_workers{{state=\"{node_state}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP cis490_manifest_generation Applies that changed something."
    );
    let _ = writeln!(out, "# TYPE cis490_manifest_generation gauge");
    let _ = writeln!(out, "cis490_manifest_generation {}", manifest.generation);
    let _ = writeln!(
        out,
        "# HELP cis490_manifest_errors Errors of the last reload (0: it applied)."
    );
    let _ = writeln!(out, "# TYPE cis490_manifest_errors gauge");
    let _ = writeln!(out, "cis490_manifest_errors {}", manifest.last_errors.len());
    write_load(&mut out, &state.budgets);
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    ))
}

/// What clients cost now: bytes read, connections, and the places in use under each cap.
fn write_load(out: &mut String, budgets: &Budgets) {
    let traffic = &budgets.traffic;
    let (uploads, event_waits, claim_waits) = budgets.in_use();
    let metrics: [(&str, &str, &str, u64); 6] = [
        (
            "cis490_http_bytes_read_total",
            "counter",
            "Bytes read from client connections (request heads and bodies).",
            traffic.bytes_read.load(Ordering::Relaxed),
        ),
        (
            "cis490_http_connections_open",
            "gauge",
            "Client connections open (max_connections).",
            traffic.connections_open.load(Ordering::Relaxed) as u64,
        ),
        (
            "cis490_http_connections_refused_total",
            "counter",
            "Connections closed at accept because max_connections were open.",
            traffic.connections_refused.load(Ordering::Relaxed),
        ),
        (
            "cis490_uploads_in_flight",
            "gauge",
            "Uploads streaming (max_concurrent_uploads).",
            uploads as u64,
        ),
        (
            "cis490_event_waits",
            "gauge",
            "GET /v1/events long-polls waiting (max_event_waits).",
            event_waits as u64,
        ),
        (
            "cis490_claim_waits",
            "gauge",
            "Claim long-polls waiting (max_claim_waits).",
            claim_waits as u64,
        ),
    ];
    for (name, kind, help, value) in metrics {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {value}");
    }
}
