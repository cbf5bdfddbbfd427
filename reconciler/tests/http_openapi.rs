//! The OpenAPI document (`GET /v1/openapi.json`): generated from the same `routes!` calls
//! as the router, so every served route is in it and every documented operation is
//! served; and a valid OpenAPI 3.1 document (typed model, references, path parameters,
//! error answers), with the validated IDs' real patterns.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod http_common;

use std::collections::{BTreeMap, BTreeSet};

use cis490_reconciler::server::routes::openapi_document;
use http_common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

/// Every (METHOD, path) the document describes.
fn operations(doc: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            if item.get(method).is_some() {
                out.push((method.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    out
}

/// A request path with each `{param}` filled by a value its schema accepts.
fn concrete(path: &str) -> String {
    path.replace("{id}", &"ab".repeat(32))
        .replace("{name}", "w1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_served_document_is_the_routers_and_each_operation_is_served_and_nothing_else() {
    let app = spawn_app(AppOptions::default()).await;
    let http = reqwest::Client::new();
    let served: Value = http
        .get(format!("{}/v1/openapi.json", app.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        served,
        openapi_document(),
        "the served document is not the router's"
    );

    let documented = operations(&served);
    assert!(documented.len() >= 25, "{documented:?}");
    for (method, path) in &documented {
        let url = format!("{}{}", app.url, concrete(path));
        let resp = http
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                &url,
            )
            .body("{}")
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert_ne!(
            status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: {text}"
        );
        assert!(
            !text.contains("no route"),
            "{method} {path} is documented but not served: {text}"
        );
    }

    // The other direction, on every documented path: a method the document does not list
    // is not served either (a route registered outside `routes!` is caught by clippy's
    // disallowed-methods in reconciler/clippy.toml).
    let by_path: BTreeMap<&str, BTreeSet<&str>> =
        documented.iter().fold(BTreeMap::new(), |mut map, (m, p)| {
            map.entry(p.as_str()).or_default().insert(m.as_str());
            map
        });
    for (path, methods) in by_path {
        for method in ["GET", "PUT", "POST", "DELETE", "PATCH"] {
            if methods.contains(method) {
                continue;
            }
            let resp = http
                .request(
                    reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                    format!("{}{}", app.url, concrete(path)),
                )
                .body("{}")
                .send()
                .await
                .unwrap();
            assert_eq!(
                resp.status(),
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path} is served but not in the document"
            );
        }
    }
}

/// Every problem that makes `doc` not a valid, self-consistent OpenAPI 3.1 document.
fn problems(doc: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    if !doc["openapi"]
        .as_str()
        .is_some_and(|v| v.starts_with("3.1."))
    {
        problems.push(format!("openapi is {}, not 3.1.x", doc["openapi"]));
    }

    // The typed model of OpenAPI 3.1 must read the document, and lose nothing of it when
    // it writes it back: a key it drops is one OpenAPI does not define there.
    match oas3::from_json(doc.to_string()) {
        Err(e) => problems.push(format!("not an OpenAPI 3.1 document: {e}")),
        Ok(spec) => {
            let back: Value = serde_json::from_str(&oas3::to_json(&spec).unwrap()).unwrap();
            missing_in(doc, &back, "#", &mut problems);
        }
    }

    let mut refs = Vec::new();
    collect_refs(doc, &mut refs);
    for reference in refs {
        match reference.strip_prefix('#') {
            Some(pointer) if doc.pointer(pointer).is_some() => {}
            _ => problems.push(format!("$ref {reference} does not resolve")),
        }
    }

    let schemes: BTreeSet<&String> = doc["components"]["securitySchemes"]
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    let mut operation_ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        let templated: BTreeSet<String> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(str::to_string)
            .collect();
        for method in METHODS {
            let Some(op) = item.get(method) else { continue };
            let at = format!("{} {path}", method.to_ascii_uppercase());
            match op["operationId"].as_str() {
                Some(id) if operation_ids.insert(id.to_string()) => {}
                Some(id) => problems.push(format!("{at}: operationId {id} is not unique")),
                None => problems.push(format!("{at}: no operationId")),
            }
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            let declared: BTreeSet<String> = params
                .iter()
                .filter(|p| p["in"] == "path")
                .map(|p| p["name"].as_str().unwrap_or_default().to_string())
                .collect();
            if declared != templated {
                problems.push(format!(
                    "{at}: path parameters {declared:?} are not the template's {templated:?}"
                ));
            }
            for p in params.iter().filter(|p| p["in"] == "path") {
                if p["required"] != json!(true) {
                    problems.push(format!(
                        "{at}: path parameter {} is not required",
                        p["name"]
                    ));
                }
            }
            let responses = op["responses"].as_object();
            if responses.is_none_or(|r| r.is_empty()) {
                problems.push(format!("{at}: no responses"));
            }
            for (status, response) in responses.into_iter().flatten() {
                let code: u16 = status.parse().unwrap_or(0);
                if !(100..600).contains(&code) {
                    problems.push(format!(
                        "{at}: response status {status} is not a status code"
                    ));
                }
                if code >= 400
                    && error_schema(doc, response) != Some("#/components/schemas/ApiError")
                {
                    problems.push(format!("{at}: the {status} answer is not an ApiError"));
                }
            }
            for requirement in op["security"].as_array().into_iter().flatten() {
                for name in requirement
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, _)| k)
                {
                    if !schemes.contains(name) {
                        problems.push(format!("{at}: security scheme {name} is not defined"));
                    }
                }
            }
        }
    }

    let mut links = Vec::new();
    collect_links(doc, &mut links);
    for (name, target) in links {
        if !operation_ids.contains(&target) {
            problems.push(format!("link {name} points to no operation ({target})"));
        }
    }

    for (name, schema) in doc["components"]["schemas"]
        .as_object()
        .into_iter()
        .flatten()
    {
        let properties = schema["properties"].as_object();
        for required in schema["required"].as_array().into_iter().flatten() {
            let required = required.as_str().unwrap_or_default();
            if !properties.is_some_and(|p| p.contains_key(required)) {
                problems.push(format!(
                    "schema {name}: required {required} is not a property"
                ));
            }
        }
    }
    problems
}

/// Keys of `original` that `back` (the typed model's rewrite) lost.
fn missing_in(original: &Value, back: &Value, at: &str, problems: &mut Vec<String>) {
    match (original, back) {
        (Value::Object(o), Value::Object(b)) => {
            for (key, value) in o {
                let here = format!("{at}/{key}");
                let empty = value.as_array().is_some_and(Vec::is_empty)
                    || value.as_object().is_some_and(serde_json::Map::is_empty);
                // oas3 0.21 does not model a Link's `requestBody` (OpenAPI 3.1 has it);
                // openapi-spec-validator checks it in .ci/schemathesis.sh.
                let link_body = key == "requestBody" && at.contains("/links/");
                match b.get(key) {
                    _ if link_body => {}
                    Some(other) => missing_in(value, other, &here, problems),
                    // The model leaves out empty lists and maps it writes back.
                    None if empty && key != "security" => {}
                    None => problems.push(format!("{here} is not OpenAPI 3.1")),
                }
            }
        }
        (Value::Array(o), Value::Array(b)) => {
            for (i, (value, other)) in o.iter().zip(b).enumerate() {
                missing_in(value, other, &format!("{at}/{i}"), problems);
            }
        }
        _ => {}
    }
}

fn collect_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => collect_refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

/// (link name, target operationId) of every link in the document.
fn collect_links(value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::Object(links)) = map.get("links") {
                for (name, link) in links {
                    let target = link["operationId"].as_str().unwrap_or_default();
                    out.push((name.clone(), target.to_string()));
                }
            }
            map.values().for_each(|v| collect_links(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_links(v, out)),
        _ => {}
    }
}

/// The `$ref` of a response's JSON schema, following a `#/components/responses/` reference.
fn error_schema<'a>(doc: &'a Value, response: &'a Value) -> Option<&'a str> {
    let response = match response["$ref"].as_str() {
        Some(r) => doc.pointer(r.strip_prefix('#')?)?,
        None => response,
    };
    response["content"]["application/json"]["schema"]["$ref"].as_str()
}

#[test]
fn the_document_is_valid_openapi_3_1() {
    let doc = openapi_document();
    let problems = problems(&doc);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_validator_finds_what_breaks_a_document() {
    let mut doc = openapi_document();
    doc["components"]["schemas"]
        .as_object_mut()
        .unwrap()
        .remove("JobView");
    doc["paths"]["/v1/health"]["get"]["colour"] = json!("green");
    doc["paths"]["/v1/job/{id}"]["get"]["parameters"] = json!([]);
    doc["paths"]["/v1/jobs"]["get"]["responses"]["404"] = json!({"description": "plain"});
    doc["paths"]["/v1/job/claim"]["post"]["responses"]["200"]["links"]["heartbeat"]
        ["operationId"] = json!("heartbeet");
    let found = problems(&doc).join("\n");
    for expected in [
        "$ref #/components/schemas/JobView does not resolve",
        "#/paths//v1/health/get/colour is not OpenAPI 3.1",
        "GET /v1/job/{id}: path parameters",
        "GET /v1/jobs: the 404 answer is not an ApiError",
        "link heartbeat points to no operation (heartbeet)",
    ] {
        assert!(
            found.contains(expected),
            "missing {expected:?} in:\n{found}"
        );
    }
}

#[test]
fn validated_ids_carry_their_real_patterns_and_every_path_parameter_uses_them() {
    let doc = openapi_document();
    let schemas = &doc["components"]["schemas"];
    for (name, pattern, min, max) in [
        ("JobId", cis490_api::ids::SHA256_PATTERN, 64, 64),
        ("ArtifactId", cis490_api::ids::SHA256_PATTERN, 64, 64),
        ("IdPrefix", cis490_api::ids::ID_PREFIX_PATTERN, 1, 64),
        ("WorkerName", cis490_api::ids::WORKER_NAME_PATTERN, 1, 128),
    ] {
        let schema = &schemas[name];
        assert_eq!(schema["type"], "string", "{name}");
        assert_eq!(schema["pattern"], pattern, "{name}");
        assert_eq!(
            (schema["minLength"].as_u64(), schema["maxLength"].as_u64()),
            (Some(min), Some(max)),
            "{name}"
        );
    }
    for (method, path) in operations(&doc) {
        let op = &doc["paths"][&path][method.to_ascii_lowercase()];
        for p in op["parameters"].as_array().into_iter().flatten() {
            if p["in"] != "path" {
                continue;
            }
            let reference = p["schema"]["$ref"].as_str().unwrap_or_default();
            let expected: &[&str] = match p["name"].as_str().unwrap() {
                "id" => &["JobId", "IdPrefix", "ArtifactId"],
                "name" => &["WorkerName"],
                other => panic!("{method} {path}: unexpected path parameter {other}"),
            };
            assert!(
                expected
                    .iter()
                    .any(|e| reference == format!("#/components/schemas/{e}")),
                "{method} {path}: parameter {} is {reference}",
                p["name"]
            );
        }
    }
}

#[test]
fn every_operation_has_its_access_and_its_shared_answers() {
    let doc = openapi_document();
    for (method, path) in operations(&doc) {
        let op = &doc["paths"][&path][method.to_ascii_lowercase()];
        let tag = op["tags"][0].as_str().unwrap_or_default();
        let security = &op["security"];
        match tag {
            "open" => assert_eq!(security, &json!([{}]), "{method} {path}"),
            "read" => assert_eq!(
                security,
                &json!([{}, {"worker": []}, {"operator": []}]),
                "{method} {path}"
            ),
            "worker" => assert_eq!(security, &json!([{"worker": []}]), "{method} {path}"),
            "operator" => assert_eq!(security, &json!([{"operator": []}]), "{method} {path}"),
            other => panic!("{method} {path}: tag {other:?}"),
        }
        let responses = op["responses"].as_object().unwrap();
        for status in ["401", "403", "500"] {
            assert!(
                responses.contains_key(status),
                "{method} {path} lacks {status}"
            );
        }
        if op.get("requestBody").is_some() {
            assert!(responses.contains_key("413"), "{method} {path} lacks 413");
            assert!(responses.contains_key("400"), "{method} {path} lacks 400");
        }
    }
    // Routes whose special answers are the contract.
    let statuses = |method: &str, path: &str| -> Vec<String> {
        doc["paths"][path][method]["responses"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    assert!(statuses("post", "/v1/job/claim").contains(&"204".to_string()));
    assert!(statuses("put", "/v1/model/{id}").contains(&"422".to_string()));
    assert!(statuses("post", "/v1/job/{id}/heartbeat").contains(&"409".to_string()));
    assert!(statuses("get", "/v1/job/{id}").contains(&"404".to_string()));
    assert!(statuses("post", "/v1/manifest/reload").contains(&"422".to_string()));
    let claim_links = doc["paths"]["/v1/job/claim"]["post"]["responses"]["200"]["links"]
        .as_object()
        .unwrap();
    for target in ["heartbeat", "complete", "fail", "upload"] {
        assert!(
            claim_links.contains_key(target),
            "claim has no link to {target}"
        );
    }
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["worker"]["scheme"], "bearer");
    assert_eq!(schemes["operator"]["in"], "header");
    assert_eq!(
        schemes["operator"]["name"],
        cis490_api::OPERATOR_TOKEN_HEADER
    );
}
