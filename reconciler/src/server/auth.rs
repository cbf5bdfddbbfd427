//! Who may call what. Worker routes need `Authorization: Bearer <worker token>` when one is
//! configured; operator routes need `X-Operator-Token` and are refused outright when the
//! server has no operator token (a safe default: no token, no remote control); read routes
//! are open unless `protect_reads` is set. A missing token is 401, a wrong one 403.
//! Tokens are compared in constant time ([`Secret::matches`]) and never logged.

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cis490_api::OPERATOR_TOKEN_HEADER;

use super::config::{env, ServerConfig};
use super::error::ApiFailure;
use super::extract::{drain_body, drain_bound};
use super::identity::WorkerIdentity;
use super::AppState;

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn operator_header(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(OPERATOR_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// Worker routes: claim, heartbeat, complete, fail, upload, node status. Answers who the
/// request is (see [`WorkerIdentity`]); the handler then checks each name the request gives.
pub fn check_worker(
    headers: &HeaderMap,
    config: &ServerConfig,
) -> Result<WorkerIdentity, ApiFailure> {
    let Some(expected) = &config.worker_token else {
        return Ok(WorkerIdentity::AnyName);
    };
    match bearer(headers) {
        None => Err(ApiFailure::unauthorized(
            "this route needs `Authorization: Bearer <worker token>` (the agent reads it from CIS490_WORKER_TOKEN)",
        )),
        Some(given) if expected.matches(given) => Ok(WorkerIdentity::AnyName),
        Some(_) => Err(ApiFailure::forbidden("the worker token is not valid")),
    }
}

/// Operator routes: cancel, requeue, reload, diff, cordon, uncordon, drain.
pub fn check_operator(headers: &HeaderMap, config: &ServerConfig) -> Result<(), ApiFailure> {
    let Some(expected) = &config.operator_token else {
        return Err(ApiFailure::forbidden(format!(
            "operator routes are disabled because the server has no operator token: set {} \
             (or operator_token_file in the config file) where the reconciler runs",
            env::OPERATOR_TOKEN
        )));
    };
    match operator_header(headers) {
        None => Err(ApiFailure::unauthorized(format!(
            "this route needs the {OPERATOR_TOKEN_HEADER} header (cis490ctl sends {})",
            env::OPERATOR_TOKEN
        ))),
        Some(given) if expected.matches(given) => Ok(()),
        Some(_) => Err(ApiFailure::forbidden("the operator token is not valid")),
    }
}

/// Read routes: open unless `protect_reads`, then either token will do.
pub fn check_reader(headers: &HeaderMap, config: &ServerConfig) -> Result<(), ApiFailure> {
    if !config.protect_reads {
        return Ok(());
    }
    let worker = bearer(headers);
    let operator = operator_header(headers);
    if worker.is_none() && operator.is_none() {
        return Err(ApiFailure::unauthorized(
            "this server requires a worker token (Authorization: Bearer) or an operator token \
             (X-Operator-Token) to read",
        ));
    }
    let worker_ok =
        worker.is_some_and(|t| config.worker_token.as_ref().is_some_and(|s| s.matches(t)));
    let operator_ok =
        operator.is_some_and(|t| config.operator_token.as_ref().is_some_and(|s| s.matches(t)));
    if worker_ok || operator_ok {
        Ok(())
    } else {
        Err(ApiFailure::forbidden("the token is not valid"))
    }
}

/// Middleware for the worker route group. A refused upload's body is drained first (see
/// [`drain_body`]) so the client reads the 401/403 instead of a connection reset.
pub async fn require_worker(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    match check_worker(req.headers(), &state.config) {
        Ok(identity) => {
            req.extensions_mut().insert(identity);
            next.run(req).await
        }
        Err(e) => {
            let bound = drain_bound(state.config.max_upload_bytes);
            let mut body = req.into_body().into_data_stream();
            drain_body(&mut body, bound).await;
            e.into_response()
        }
    }
}

/// Middleware for the operator route group.
pub async fn require_operator(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match check_operator(req.headers(), &state.config) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// Middleware for the read route group.
pub async fn require_reader(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match check_reader(req.headers(), &state.config) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderValue, StatusCode};

    use super::super::config::Secret;
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn config() -> ServerConfig {
        let mut c = ServerConfig::new("m.toml", "state");
        c.worker_token = Secret::new("wtok");
        c.operator_token = Secret::new("otok");
        c
    }

    #[test]
    fn worker_token_missing_wrong_right() {
        let c = config();
        let status = |h: HeaderMap| check_worker(&h, &c).map_err(|e| e.status);
        assert_eq!(status(headers(&[])), Err(StatusCode::UNAUTHORIZED));
        assert_eq!(
            status(headers(&[("authorization", "Bearer nope")])),
            Err(StatusCode::FORBIDDEN)
        );
        assert_eq!(
            status(headers(&[("authorization", "Bearer wtok")])),
            Ok(WorkerIdentity::AnyName)
        );
        let open = ServerConfig::new("m.toml", "state");
        assert!(check_worker(&headers(&[]), &open).is_ok());
    }

    #[test]
    fn operator_routes_are_refused_without_a_configured_token() {
        let open = ServerConfig::new("m.toml", "state");
        let err = check_operator(&headers(&[("x-operator-token", "anything")]), &open).unwrap_err();
        assert_eq!(err.status, StatusCode::FORBIDDEN);
        assert!(
            err.message.contains("CIS490_OPERATOR_TOKEN"),
            "{}",
            err.message
        );
        let c = config();
        assert_eq!(
            check_operator(&headers(&[]), &c).unwrap_err().status,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            check_operator(&headers(&[("x-operator-token", "wtok")]), &c)
                .unwrap_err()
                .status,
            StatusCode::FORBIDDEN
        );
        assert!(check_operator(&headers(&[("x-operator-token", "otok")]), &c).is_ok());
    }

    #[test]
    fn protected_reads_take_either_token() {
        let mut c = config();
        assert!(check_reader(&headers(&[]), &c).is_ok());
        c.protect_reads = true;
        assert_eq!(
            check_reader(&headers(&[]), &c).unwrap_err().status,
            StatusCode::UNAUTHORIZED
        );
        assert!(check_reader(&headers(&[("authorization", "Bearer wtok")]), &c).is_ok());
        assert!(check_reader(&headers(&[("x-operator-token", "otok")]), &c).is_ok());
        assert_eq!(
            check_reader(&headers(&[("x-operator-token", "wtok")]), &c)
                .unwrap_err()
                .status,
            StatusCode::FORBIDDEN
        );
    }
}
