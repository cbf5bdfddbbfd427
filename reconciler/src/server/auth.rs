//! Who may call what. Worker routes need a TLS client certificate when a client CA is
//! configured (the certificate then names the worker, and no token is needed); otherwise
//! they take a per-worker token (`cis490-reconciler tokens issue NAME`, bound to that
//! worker) or the shared worker token (any worker) as `Authorization: Bearer`, and are open
//! only while no worker credential exists at all. Operator routes
//! need `X-Operator-Token` and are refused outright when the server has no operator token
//! (a safe default: no token, no remote control); read routes are open unless
//! `protect_reads` is set (then a token or a client certificate). A missing credential is
//! 401, a wrong one 403.
//! Tokens are compared in constant time ([`Secret::matches`]) or looked up by their sha256
//! (per-worker tokens), and never logged.

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use cis490_api::OPERATOR_TOKEN_HEADER;

use super::config::{env, ServerConfig};
use super::error::ApiFailure;
use super::identity::{ClientCertName, IdentitySource, WorkerIdentity};
use super::limits::refuse;
use super::{blocking, AppState};
use crate::queue::SharedQueue;

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

/// Warning that `GET /v1/health` (and `cis490ctl status`) gives while worker routes are open.
pub const OPEN_WORKER_ROUTES: &str = "worker routes are open: no worker token configured";
/// Warning that `GET /v1/health` gives while the shared worker token is configured.
pub const SHARED_WORKER_TOKEN: &str =
    "the shared worker token is configured: any holder can act as any worker";

/// Warning while an exposed server has no worker credential at all (every worker request
/// is refused).
pub const NO_WORKER_CREDENTIAL: &str =
    "worker routes are closed: no worker token exists and the server listens beyond loopback";

/// What the worker credentials configured allow, as warnings for `GET /v1/health`.
pub async fn worker_credential_warnings(
    config: &ServerConfig,
    queue: &SharedQueue,
) -> Result<Vec<String>, ApiFailure> {
    // Client certificates name every worker; neither token kind is used then.
    if config.requires_client_certs() {
        return Ok(Vec::new());
    }
    if config.worker_token.is_some() {
        return Ok(vec![format!(
            "{SHARED_WORKER_TOKEN}; give each agent its own token (cis490-reconciler tokens \
             issue NAME) and unset {} to bind every worker to its name",
            env::WORKER_TOKEN
        )]);
    }
    let queue = queue.clone();
    if blocking(move || queue.worker_tokens_exist()).await? {
        return Ok(Vec::new());
    }
    if config.require_worker_credentials {
        return Ok(vec![format!(
            "{NO_WORKER_CREDENTIAL}; issue per-worker tokens (cis490-reconciler tokens issue \
             NAME) or set {}",
            env::WORKER_TOKEN
        )]);
    }
    Ok(vec![format!(
        "{OPEN_WORKER_ROUTES}; anyone who can reach the server can act as any worker: issue \
         per-worker tokens (cis490-reconciler tokens issue NAME) or set {}",
        env::WORKER_TOKEN
    )])
}

/// Worker routes: claim, heartbeat, complete, fail, upload, node status, whoami. Answers
/// who the request is (see [`WorkerIdentity`]); the handler then checks each name the
/// request gives.
///
/// First the client certificate: with a client CA configured it is required, and it alone
/// proves the name (a bearer token beside it is not looked at: the certificate is the
/// stronger proof, and asking for both would make every agent carry two secrets). Then
/// tokens: a per-worker token proves its name (looked up on every request, so a revoke
/// takes effect at once); the shared token (while configured) proves none. A request with
/// no token passes only while no worker credential exists at all.
pub async fn check_worker(
    headers: &HeaderMap,
    client_cert: Option<&ClientCertName>,
    config: &ServerConfig,
    queue: &SharedQueue,
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
    let given = bearer(headers);
    if let (Some(shared), Some(token)) = (&config.worker_token, given) {
        if shared.matches(token) {
            return Ok(WorkerIdentity::AnyName);
        }
    }
    let queue = queue.clone();
    match given {
        Some(token) => {
            let token = token.to_string();
            match blocking(move || queue.worker_for_token(&token)).await? {
                Some(name) => Ok(WorkerIdentity::Named {
                    name,
                    via: IdentitySource::WorkerToken,
                }),
                None => Err(ApiFailure::forbidden(
                    "the worker token is not valid: it is neither a per-worker token issued by \
                     `cis490-reconciler tokens issue NAME` (it may have been revoked or \
                     replaced) nor the server's shared worker token",
                )),
            }
        }
        None => {
            let credentials_exist = config.worker_token.is_some()
                || blocking(move || queue.worker_tokens_exist()).await?;
            if !credentials_exist && config.require_worker_credentials {
                Err(ApiFailure::unauthorized(format!(
                    "{NO_WORKER_CREDENTIAL}: issue this agent a token (cis490-reconciler tokens \
                     issue NAME) or set {} on the server",
                    env::WORKER_TOKEN
                )))
            } else if credentials_exist {
                Err(ApiFailure::unauthorized(
                    "this route needs `Authorization: Bearer <worker token>` (the agent reads it \
                     from worker_token_file, --worker-token-file, CIS490_WORKER_TOKEN or \
                     --worker-token)",
                ))
            } else {
                Ok(WorkerIdentity::AnyName)
            }
        }
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

/// Read routes: open unless `protect_reads`, then any valid token (operator, shared worker
/// or per-worker), or a verified client certificate, will do.
pub async fn check_reader(
    headers: &HeaderMap,
    client_cert: Option<&ClientCertName>,
    config: &ServerConfig,
    queue: &SharedQueue,
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
    let operator_ok =
        operator.is_some_and(|t| config.operator_token.as_ref().is_some_and(|s| s.matches(t)));
    let shared_worker_ok =
        worker.is_some_and(|t| config.worker_token.as_ref().is_some_and(|s| s.matches(t)));
    if operator_ok || shared_worker_ok {
        return Ok(());
    }
    if let Some(token) = worker.map(str::to_string) {
        let queue = queue.clone();
        if blocking(move || queue.worker_for_token(&token))
            .await?
            .is_some()
        {
            return Ok(());
        }
    }
    Err(ApiFailure::forbidden("the token is not valid"))
}

/// Middleware for the worker route group, deciding from the headers (and the connection's
/// client certificate) alone. A refused request's body is read only as far as [`refuse`]
/// allows: an unauthenticated upload costs the server at most 64 KiB of its body.
pub async fn require_worker(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let client_cert = req.extensions().get::<ClientCertName>().cloned();
    match check_worker(
        req.headers(),
        client_cert.as_ref(),
        &state.config,
        &state.queue,
    )
    .await
    {
        Ok(identity) => {
            req.extensions_mut().insert(identity);
            next.run(req).await
        }
        Err(e) => refuse(req, e).await,
    }
}

/// Middleware for the operator route group (a refusal reads the body as [`refuse`] allows).
pub async fn require_operator(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match check_operator(req.headers(), &state.config) {
        Ok(()) => next.run(req).await,
        Err(e) => refuse(req, e).await,
    }
}

/// Middleware for the read route group (a refusal reads the body as [`refuse`] allows).
pub async fn require_reader(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let client_cert = req.extensions().get::<ClientCertName>().cloned();
    match check_reader(
        req.headers(),
        client_cert.as_ref(),
        &state.config,
        &state.queue,
    )
    .await
    {
        Ok(()) => next.run(req).await,
        Err(e) => refuse(req, e).await,
    }
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderValue, StatusCode};
    use cis490_api::WorkerName;

    use super::super::config::Secret;
    use super::*;
    use crate::queue::{Queue, QueueConfig};
    use std::sync::Arc;

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

    fn queue() -> SharedQueue {
        Arc::new(Queue::open_in_memory(QueueConfig::default()).unwrap())
    }

    fn name(s: &str) -> WorkerName {
        WorkerName::parse(s).unwrap()
    }

    fn bearer_of(token: &str) -> HeaderMap {
        headers(&[("authorization", &format!("Bearer {token}"))])
    }

    #[tokio::test]
    async fn worker_token_missing_wrong_right() {
        let c = config();
        let q = queue();
        let status = |h: HeaderMap| {
            let (c, q) = (c.clone(), q.clone());
            async move { check_worker(&h, None, &c, &q).await.map_err(|e| e.status) }
        };
        assert_eq!(status(headers(&[])).await, Err(StatusCode::UNAUTHORIZED));
        assert_eq!(status(bearer_of("nope")).await, Err(StatusCode::FORBIDDEN));
        assert_eq!(status(bearer_of("wtok")).await, Ok(WorkerIdentity::AnyName));
        let open = ServerConfig::new("m.toml", "state");
        assert_eq!(
            check_worker(&headers(&[]), None, &open, &q).await,
            Ok(WorkerIdentity::AnyName)
        );
    }

    #[tokio::test]
    async fn a_per_worker_token_proves_its_name_with_or_without_the_shared_token() {
        let q = queue();
        let issued = q.issue_worker_token(&name("gpu-1")).unwrap();
        let named = Ok(WorkerIdentity::Named {
            name: name("gpu-1"),
            via: IdentitySource::WorkerToken,
        });
        for c in [config(), ServerConfig::new("m.toml", "state")] {
            assert_eq!(
                check_worker(&bearer_of(&issued.token), None, &c, &q).await,
                named
            );
        }
        // The shared token still proves no name while it is configured.
        assert_eq!(
            check_worker(&bearer_of("wtok"), None, &config(), &q).await,
            Ok(WorkerIdentity::AnyName)
        );
    }

    #[tokio::test]
    async fn once_a_per_worker_token_exists_no_token_is_401_and_a_revoked_one_403() {
        let q = queue();
        let open = ServerConfig::new("m.toml", "state");
        let issued = q.issue_worker_token(&name("gpu-1")).unwrap();
        let err = check_worker(&headers(&[]), None, &open, &q)
            .await
            .unwrap_err();
        assert_eq!(err.status, StatusCode::UNAUTHORIZED);
        assert!(err.message.contains("worker_token_file"), "{}", err.message);
        q.revoke_worker_token(&name("gpu-1")).unwrap();
        let err = check_worker(&bearer_of(&issued.token), None, &open, &q)
            .await
            .unwrap_err();
        assert_eq!(err.status, StatusCode::FORBIDDEN);
        assert!(err.message.contains("revoked"), "{}", err.message);
        // No credential left at all: open again (and health says so)...
        assert_eq!(
            check_worker(&headers(&[]), None, &open, &q).await,
            Ok(WorkerIdentity::AnyName)
        );
        // ...unless the server listens beyond loopback: then closed.
        let exposed = ServerConfig {
            require_worker_credentials: true,
            ..open
        };
        let err = check_worker(&headers(&[]), None, &exposed, &q)
            .await
            .unwrap_err();
        assert_eq!(err.status, StatusCode::UNAUTHORIZED);
        let warnings = worker_credential_warnings(&exposed, &q).await.unwrap();
        assert!(
            warnings[0].starts_with(NO_WORKER_CREDENTIAL),
            "{warnings:?}"
        );
    }

    #[tokio::test]
    async fn health_warns_about_open_routes_and_the_shared_token() {
        let q = queue();
        let open = ServerConfig::new("m.toml", "state");
        let warnings = worker_credential_warnings(&open, &q).await.unwrap();
        assert!(
            warnings.len() == 1 && warnings[0].starts_with(OPEN_WORKER_ROUTES),
            "{warnings:?}"
        );
        let warnings = worker_credential_warnings(&config(), &q).await.unwrap();
        assert!(
            warnings.len() == 1 && warnings[0].starts_with(SHARED_WORKER_TOKEN),
            "{warnings:?}"
        );
        q.issue_worker_token(&name("gpu-1")).unwrap();
        assert!(worker_credential_warnings(&open, &q)
            .await
            .unwrap()
            .is_empty());
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

    #[tokio::test]
    async fn protected_reads_take_any_valid_token() {
        let mut c = config();
        let q = queue();
        assert!(check_reader(&headers(&[]), None, &c, &q).await.is_ok());
        c.protect_reads = true;
        assert_eq!(
            check_reader(&headers(&[]), None, &c, &q)
                .await
                .unwrap_err()
                .status,
            StatusCode::UNAUTHORIZED
        );
        assert!(check_reader(&bearer_of("wtok"), None, &c, &q).await.is_ok());
        assert!(
            check_reader(&headers(&[("x-operator-token", "otok")]), None, &c, &q)
                .await
                .is_ok()
        );
        assert_eq!(
            check_reader(&headers(&[("x-operator-token", "wtok")]), None, &c, &q)
                .await
                .unwrap_err()
                .status,
            StatusCode::FORBIDDEN
        );
        let issued = q.issue_worker_token(&name("gpu-1")).unwrap();
        assert!(check_reader(&bearer_of(&issued.token), None, &c, &q)
            .await
            .is_ok());
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
        ClientCertName(WorkerName::parse(name).unwrap())
    }

    #[tokio::test]
    async fn with_a_client_ca_worker_routes_need_a_certificate_and_it_names_the_worker() {
        let c = with_client_ca(config());
        let q = queue();
        // No certificate: 401 naming the command that makes one, even with the worker token.
        for h in [headers(&[]), bearer_of("wtok")] {
            let err = check_worker(&h, None, &c, &q).await.unwrap_err();
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
        for h in [headers(&[]), bearer_of("nope")] {
            assert_eq!(
                check_worker(&h, Some(&gpu), &c, &q).await.unwrap(),
                WorkerIdentity::Named {
                    name: gpu.0.clone(),
                    via: IdentitySource::ClientCert,
                }
            );
        }
        // Without a client CA a certificate proves nothing and the token rules apply.
        assert_eq!(
            check_worker(&headers(&[]), Some(&gpu), &config(), &q)
                .await
                .unwrap_err()
                .status,
            StatusCode::UNAUTHORIZED
        );
        // Certificates name every worker: no token warning applies.
        assert!(worker_credential_warnings(&c, &q).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn protected_reads_accept_a_client_certificate() {
        let mut c = with_client_ca(config());
        c.protect_reads = true;
        let q = queue();
        assert!(check_reader(&headers(&[]), Some(&cert("a")), &c, &q)
            .await
            .is_ok());
        assert!(check_reader(&headers(&[]), None, &c, &q).await.is_err());
    }
}
