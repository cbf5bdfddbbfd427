//! Who may call what. Worker routes need a TLS client certificate when a client CA is
//! configured (the certificate then names the worker, and no token is needed), else
//! `Authorization: Bearer <worker token>` when one is configured; operator routes need
//! `X-Operator-Token` and are refused outright when the server has no operator token (a safe
//! default: no token, no remote control); read routes are open unless `protect_reads` is set
//! (then a token or a client certificate). A missing credential is 401, a wrong one 403.
//! Tokens are compared in constant time ([`Secret::matches`]) and never logged.

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cis490_api::OPERATOR_TOKEN_HEADER;

use super::config::{env, ServerConfig};
use super::error::ApiFailure;
use super::extract::{drain_body, drain_bound};
use super::identity::{ClientCertName, IdentitySource, WorkerIdentity};
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
///
/// First the client certificate: with a client CA configured it is required, and it alone
/// proves the name (a bearer token beside it is not looked at: the certificate is the
/// stronger proof, and asking for both would make every agent carry two secrets). Then
/// tokens.
pub fn check_worker(
    headers: &HeaderMap,
    client_cert: Option<&ClientCertName>,
    config: &ServerConfig,
) -> Result<WorkerIdentity, ApiFailure> {
    if config.requires_client_certs() {
        return match client_cert {
            Some(ClientCertName(name)) => Ok(WorkerIdentity::Named {
                name: name.clone(),
                via: IdentitySource::ClientCert,
            }),
            None => Err(ApiFailure::unauthorized(
                "this route needs a TLS client certificate signed by the server's client CA: \
                 issue one with `cis490-reconciler certs issue-agent NAME` and give it to the \
                 agent with --cert-file and --key-file",
            )),
        };
    }
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

/// Read routes: open unless `protect_reads`, then either token, or a verified client
/// certificate, will do.
pub fn check_reader(
    headers: &HeaderMap,
    client_cert: Option<&ClientCertName>,
    config: &ServerConfig,
) -> Result<(), ApiFailure> {
    if !config.protect_reads || client_cert.is_some() {
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
    let client_cert = req.extensions().get::<ClientCertName>();
    match check_worker(req.headers(), client_cert, &state.config) {
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
    let client_cert = req.extensions().get::<ClientCertName>();
    match check_reader(req.headers(), client_cert, &state.config) {
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
        let status = |h: HeaderMap| check_worker(&h, None, &c).map_err(|e| e.status);
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
        assert!(check_worker(&headers(&[]), None, &open).is_ok());
    }

    fn with_client_ca(mut c: ServerConfig) -> ServerConfig {
        c.tls = Some(super::super::config::TlsSettings {
            cert_file: "server.pem".into(),
            key_file: "server-key.pem".into(),
            client_ca_file: Some("ca.pem".into()),
        });
        c
    }

    fn cert(name: &str) -> ClientCertName {
        ClientCertName(cis490_api::WorkerName::parse(name).unwrap())
    }

    #[test]
    fn with_a_client_ca_worker_routes_need_a_certificate_and_it_names_the_worker() {
        let c = with_client_ca(config());
        // No certificate: 401 naming the command that makes one, even with the worker token.
        for h in [headers(&[]), headers(&[("authorization", "Bearer wtok")])] {
            let err = check_worker(&h, None, &c).unwrap_err();
            assert_eq!(err.status, StatusCode::UNAUTHORIZED);
            assert!(
                err.message.contains("client certificate")
                    && err.message.contains("certs issue-agent NAME"),
                "{}",
                err.message
            );
        }
        // A certificate alone suffices, whatever token rides along.
        let gpu = cert("gpu-1");
        for h in [headers(&[]), headers(&[("authorization", "Bearer nope")])] {
            assert_eq!(
                check_worker(&h, Some(&gpu), &c).unwrap(),
                WorkerIdentity::Named {
                    name: gpu.0.clone(),
                    via: IdentitySource::ClientCert,
                }
            );
        }
        // Without a client CA a certificate proves nothing and the token rules apply.
        let plain = config();
        assert_eq!(
            check_worker(&headers(&[]), Some(&gpu), &plain)
                .unwrap_err()
                .status,
            StatusCode::UNAUTHORIZED
        );
    }

    #[test]
    fn protected_reads_accept_a_client_certificate() {
        let mut c = with_client_ca(config());
        c.protect_reads = true;
        assert!(check_reader(&headers(&[]), Some(&cert("a")), &c).is_ok());
        assert!(check_reader(&headers(&[]), None, &c).is_err());
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
        assert!(check_reader(&headers(&[]), None, &c).is_ok());
        c.protect_reads = true;
        assert_eq!(
            check_reader(&headers(&[]), None, &c).unwrap_err().status,
            StatusCode::UNAUTHORIZED
        );
        assert!(check_reader(&headers(&[("authorization", "Bearer wtok")]), None, &c).is_ok());
        assert!(check_reader(&headers(&[("x-operator-token", "otok")]), None, &c).is_ok());
        assert_eq!(
            check_reader(&headers(&[("x-operator-token", "wtok")]), None, &c)
                .unwrap_err()
                .status,
            StatusCode::FORBIDDEN
        );
    }
}
