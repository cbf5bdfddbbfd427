//! Routes about the API itself: the OpenAPI document and Prometheus metrics, and the
//! parts of the document that are not one handler's: the security schemes, the error
//! answers every route shares, and strict request bodies.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Extension;
use cis490_api::{ApiError, ArtifactId, IdPrefix, JobId, WorkerName, OPERATOR_TOKEN_HEADER};
use serde_json::{json, Value};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{ComponentsBuilder, InfoBuilder, OpenApi, OpenApiBuilder};
use utoipa::{PartialSchema, ToSchema};

use super::error::ApiFailure;
use super::routes::Access;
use super::telemetry::Snapshot;
use super::AppState;

/// The served document, serialised once when the router is built.
#[derive(Debug, Clone)]
pub struct OpenApiJson(Bytes);

impl OpenApiJson {
    pub fn new(doc: &Value) -> Self {
        Self(Bytes::from(doc.to_string()))
    }
}

/// This document: every route with its parameters, bodies and answers (OpenAPI 3.1).
#[utoipa::path(get, path = "/v1/openapi.json", responses(
    (status = 200, description = "The OpenAPI 3.1 document of this server", content_type = "application/json", body = Object),
))]
pub async fn openapi(Extension(doc): Extension<OpenApiJson>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], doc.0)
}

/// The schema of an artifact bundle's bytes (a tar.zst) in uploads and downloads.
pub struct BundleBytes;

impl PartialSchema for BundleBytes {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .description(Some("A tar.zst bundle of a job's output directory"))
            .into()
    }
}

impl ToSchema for BundleBytes {}

/// What every group's document starts from: info, security schemes, tags, `ApiError`.
pub(super) fn base_document() -> OpenApi {
    let worker = HttpBuilder::new()
        .scheme(HttpAuthScheme::Bearer)
        .description(Some(
            "The worker token (`CIS490_WORKER_TOKEN`), as `Authorization: Bearer <token>`; \
             worker routes are open when the server has none",
        ))
        .build();
    let operator = ApiKey::Header(ApiKeyValue::with_description(
        OPERATOR_TOKEN_HEADER,
        "The operator token (`CIS490_OPERATOR_TOKEN`); operator routes are refused when the \
         server has none",
    ));
    let components = ComponentsBuilder::new()
        .security_scheme("worker", SecurityScheme::Http(worker))
        .security_scheme("operator", SecurityScheme::ApiKey(operator))
        .schema(ApiError::name(), ApiError::schema())
        // utoipa collects the schemas of bodies, not of path and header parameters.
        .schema(IdPrefix::name(), IdPrefix::schema())
        .schema(JobId::name(), JobId::schema())
        .schema(ArtifactId::name(), ArtifactId::schema())
        .schema(WorkerName::name(), WorkerName::schema())
        .build();
    let info = InfoBuilder::new()
        .title("cis490 reconciler")
        .version(cis490_api::VERSION)
        .description(Some(
            "The control plane of a cis490 training fleet. Errors are JSON \
             `{\"error\": code, \"message\": text}` (`ApiError`).",
        ))
        .build();
    OpenApiBuilder::new()
        .info(info)
        .components(Some(components))
        .build()
}

/// Tags one group's operations and sets who may call them.
pub(super) fn set_access(part: &mut OpenApi, access: Access) {
    let security = match access {
        Access::Open => vec![SecurityRequirement::default()],
        // Open unless `protect_reads`; then either token will do.
        Access::Read => vec![
            SecurityRequirement::default(),
            SecurityRequirement::new("worker", Vec::<String>::new()),
            SecurityRequirement::new("operator", Vec::<String>::new()),
        ],
        Access::Worker => vec![SecurityRequirement::new("worker", Vec::<String>::new())],
        Access::Operator => vec![SecurityRequirement::new("operator", Vec::<String>::new())],
    };
    for item in part.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
            &mut item.head,
            &mut item.options,
            &mut item.trace,
        ];
        for operation in operations.into_iter().flatten() {
            operation.tags = Some(vec![access.as_str().to_string()]);
            operation.security = Some(security.clone());
        }
    }
}

/// The answers that no handler lists because they come from the layers around it: 400 for
/// a bad parameter or body, 401/403 from the auth layer, 413 from the body cap, 500.
fn shared_responses() -> Value {
    let error = |description: &str| {
        json!({
            "description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ApiError"}}}
        })
    };
    json!({
        "BadRequest": error("`bad_request`: a parameter, header or body is malformed, or a JSON body has a field this server does not know (the message names it)"),
        "Unauthorized": error("`unauthorized`: the route needs a token and none was sent (read routes only with `protect_reads`)"),
        "Forbidden": error("`forbidden`: the token is wrong, the route is disabled (no operator token configured), or the request names another worker than the caller"),
        "PayloadTooLarge": error("`payload_too_large`: the body exceeds `max_body_bytes`"),
        "Internal": error("`internal`: the server failed; its log has the detail"),
    })
}

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

/// The served document: the shared answers added to every operation (a handler's own
/// description of a status wins), and every schema tightened to what the server enforces
/// ([`tighten_schema`]): objects are closed (`additionalProperties: false`), as
/// `extract::ApiJson` is on request bodies and as the server's answers are.
pub(super) fn finish_document(doc: OpenApi) -> Value {
    let mut doc = match serde_json::to_value(&doc) {
        Ok(doc) => doc,
        // utoipa's types serialise to JSON by construction (string keys, no floats).
        Err(e) => unreachable!("the OpenAPI document does not serialise: {e}"),
    };
    doc["components"]["responses"] = shared_responses();
    if let Some(paths) = doc["paths"].as_object_mut() {
        for item in paths.values_mut() {
            for method in METHODS {
                if let Some(operation) = item.get_mut(method) {
                    add_shared_responses(operation);
                }
            }
        }
    }
    tighten_schema(&mut doc["components"]["schemas"]);
    tighten_schema(&mut doc["paths"]);
    add_links(&mut doc);
    doc
}

fn add_shared_responses(operation: &mut Value) {
    let has_body = operation.get("requestBody").is_some();
    let has_params = operation
        .get("parameters")
        .and_then(Value::as_array)
        .is_some_and(|p| !p.is_empty());
    let mut shared: Vec<(&str, &str)> = Vec::new();
    if has_body || has_params {
        shared.push(("400", "BadRequest"));
    }
    shared.push(("401", "Unauthorized"));
    shared.push(("403", "Forbidden"));
    if has_body {
        shared.push(("413", "PayloadTooLarge"));
    }
    shared.push(("500", "Internal"));
    if let Some(responses) = operation["responses"].as_object_mut() {
        for (status, name) in shared {
            responses
                .entry(status)
                .or_insert_with(|| json!({"$ref": format!("#/components/responses/{name}")}));
        }
    }
}

/// How one answer feeds the next call (OpenAPI links): a claim's job and lease are what
/// heartbeat, complete, fail and upload take, a reported worker is what cordon takes, an
/// upload's artifact is what download takes. Clients and test generators (schemathesis's
/// stateful phase) follow them.
fn links() -> Vec<(&'static str, &'static str, &'static str, Value)> {
    let lease_body = json!({"worker": "$request.body#/worker", "lease": "$response.body#/lease"});
    let claimed_job = json!({"path.id": "$response.body#/job/id"});
    let named_worker = json!({"path.name": "$request.path.name"});
    let mut links = vec![
        (
            "claim",
            "200",
            "heartbeat",
            json!({"parameters": claimed_job, "requestBody": lease_body}),
        ),
        (
            "claim",
            "200",
            "complete",
            json!({"parameters": claimed_job, "requestBody": lease_body}),
        ),
        (
            "claim",
            "200",
            "fail",
            json!({"parameters": claimed_job, "requestBody": lease_body}),
        ),
        (
            "claim",
            "200",
            "upload",
            json!({"parameters": {
                "path.id": "$response.body#/job/id",
                "header.X-Worker": "$request.body#/worker",
                "header.X-Lease-Token": "$response.body#/lease/token",
                "header.X-Lease-Attempt": "$response.body#/lease/attempt",
            }}),
        ),
        (
            "upload",
            "200",
            "download",
            json!({"parameters": {"path.id": "$response.body#/artifact_id"}}),
        ),
    ];
    for target in ["job", "explain", "cancel", "requeue"] {
        links.push(("claim", "200", target, json!({"parameters": claimed_job})));
    }
    for target in ["worker", "cordon", "uncordon", "drain"] {
        links.push((
            "report_node",
            "200",
            target,
            json!({"parameters": named_worker}),
        ));
    }
    links
}

fn add_links(doc: &mut Value) {
    for (source, status, target, mut link) in links() {
        let Some(pointer) = operation_pointer(doc, source) else {
            continue;
        };
        let Some(response) = doc
            .pointer_mut(&pointer)
            .and_then(|op| op["responses"].get_mut(status))
        else {
            continue;
        };
        link["operationId"] = json!(target);
        response["links"][target] = link;
    }
}

/// The JSON pointer of the operation with this `operationId`.
fn operation_pointer(doc: &Value, operation_id: &str) -> Option<String> {
    let paths = doc["paths"].as_object()?;
    paths.iter().find_map(|(path, item)| {
        METHODS
            .iter()
            .find(|m| {
                item.get(**m)
                    .is_some_and(|op| op["operationId"] == operation_id)
            })
            .map(|m| format!("/paths/{}/{m}", path.replace('~', "~0").replace('/', "~1")))
    })
}

/// Makes one schema (and every schema inside it) say what the server enforces: a struct's
/// object is closed (see [`finish_document`]); an unsigned integer's range is its Rust
/// type's (utoipa gives only the format); a map's `propertyNames: string` goes (JSON keys
/// are strings anyway).
fn tighten_schema(schema: &mut Value) {
    match schema {
        Value::Object(object) => {
            let is_object = object.get("type") == Some(&json!("object"));
            if is_object
                && object.contains_key("properties")
                && !object.contains_key("additionalProperties")
            {
                object.insert("additionalProperties".into(), Value::Bool(false));
            }
            if object.get("propertyNames") == Some(&json!({"type": "string"})) {
                object.remove("propertyNames");
            }
            let maximum = match object.get("format").and_then(Value::as_str) {
                Some("uint8") => Some(u64::from(u8::MAX)),
                Some("uint16") => Some(u64::from(u16::MAX)),
                Some("uint32") => Some(u64::from(u32::MAX)),
                Some("uint64") => Some(u64::MAX),
                _ => None,
            };
            if let Some(maximum) = maximum {
                object.entry("maximum").or_insert(json!(maximum));
                object.entry("minimum").or_insert(json!(0));
            }
            object.values_mut().for_each(tighten_schema);
        }
        Value::Array(items) => items.iter_mut().for_each(tighten_schema),
        _ => {}
    }
}

/// Prometheus metrics (OpenMetrics text): jobs per status, workers per state, the
/// manifest, the listener's load, and counters and histograms of claims, completions,
/// failures, lease expiries, reconciles and uploads.
#[utoipa::path(get, path = "/metrics", responses(
    (status = 200, description = "OpenMetrics text format", content_type = "application/openmetrics-text", body = String),
))]
pub async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiFailure> {
    let queue = state.queue.clone();
    let (counts, workers, manifest) =
        super::blocking(move || Ok((queue.counts()?, queue.workers()?, queue.manifest_status()?)))
            .await?;
    let mut by_state: BTreeMap<String, u64> = BTreeMap::new();
    for w in &workers {
        *by_state.entry(w.state.to_string()).or_default() += 1;
    }
    let snapshot = Snapshot {
        jobs: counts,
        workers: by_state,
        manifest_generation: manifest.generation,
        manifest_errors: manifest.last_errors.len(),
    };
    let text = state
        .telemetry
        .render(&snapshot, &state.budgets)
        .map_err(|_| ApiFailure::internal("encoding the metrics failed"))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    ))
}
