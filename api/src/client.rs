//! The typed HTTP client for the reconciler's API, shared by the agent, cis490ctl and tests.
//! One method per route; every route's path is written here once.

use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::ids::{ArtifactId, IdPrefix, JobId, WorkerName};
use crate::job::{JobView, Lease};
use crate::node::{Capability, WorkerView};
use crate::wire::*;

/// What can go wrong talking to the reconciler.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached (connection refused, DNS, timeout, reset).
    #[error("cannot reach the reconciler at {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with an error status and a JSON error body.
    #[error("{status}: {}", api.message)]
    Api { status: StatusCode, api: ApiError },
    /// The answer was not what the API promises.
    #[error("unexpected answer from {url}: {message}")]
    Protocol { url: String, message: String },
    /// The base URL given is not a usable URL.
    #[error("invalid server URL {0:?}: expected something like http://127.0.0.1:8787")]
    BadUrl(String),
}

impl ClientError {
    /// The server's error code (`lease_lost`, `not_found`, ...) when it answered one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { api, .. } => Some(api.error.as_str()),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True when retrying later may succeed: unreachable server or a 5xx.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } => true,
            ClientError::Api { status, .. } => status.is_server_error(),
            _ => false,
        }
    }

    /// True when the server refused a call because the caller's lease is stale.
    pub fn is_lease_lost(&self) -> bool {
        self.code() == Some("lease_lost")
    }
}

/// A client for one reconciler. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    worker_token: Option<String>,
    operator_token: Option<String>,
}

impl Client {
    /// `base` is the server's root URL, e.g. `http://127.0.0.1:8787`.
    pub fn new(base: &str) -> Result<Self, ClientError> {
        let trimmed = base.trim_end_matches('/');
        if !(trimmed.starts_with("http://") || trimmed.starts_with("https://"))
            || reqwest::Url::parse(trimmed).is_err()
        {
            return Err(ClientError::BadUrl(base.to_string()));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|source| ClientError::Unreachable {
                url: trimmed.to_string(),
                source,
            })?;
        Ok(Self {
            base: trimmed.to_string(),
            http,
            worker_token: None,
            operator_token: None,
        })
    }

    /// Sent as `Authorization: Bearer` on worker routes.
    pub fn with_worker_token(mut self, token: Option<String>) -> Self {
        self.worker_token = token.filter(|t| !t.is_empty());
        self
    }

    /// Sent as `X-Operator-Token` on operator routes.
    pub fn with_operator_token(mut self, token: Option<String>) -> Self {
        self.operator_token = token.filter(|t| !t.is_empty());
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub fn has_operator_token(&self) -> bool {
        self.operator_token.is_some()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Every request carries whichever tokens the client has: worker routes check the
    /// bearer token, operator routes the operator token, and a server with `protect_reads`
    /// accepts either on read routes, so the agent and cis490ctl both keep reading there.
    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let mut rb = self.http.request(method, self.url(path));
        if let Some(t) = &self.operator_token {
            rb = rb.header(OPERATOR_TOKEN_HEADER, t);
        }
        if let Some(t) = &self.worker_token {
            rb = rb.bearer_auth(t);
        }
        rb
    }

    /// Sends a request; turns transport failures and error statuses into `ClientError`.
    pub async fn send(&self, rb: RequestBuilder) -> Result<Response, ClientError> {
        let resp = rb.send().await.map_err(|source| ClientError::Unreachable {
            url: self.base.clone(),
            source,
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let url = resp.url().to_string();
        let text = resp.text().await.unwrap_or_default();
        let api = serde_json::from_str::<ApiError>(&text).unwrap_or_else(|_| ApiError {
            error: status
                .canonical_reason()
                .unwrap_or("error")
                .to_ascii_lowercase()
                .replace(' ', "_"),
            message: format!("{url} answered {status}: {}", text.trim()),
        });
        Err(ClientError::Api { status, api })
    }

    async fn json<T: DeserializeOwned>(&self, rb: RequestBuilder) -> Result<T, ClientError> {
        let resp = self.send(rb).await?;
        let url = resp.url().to_string();
        let bytes = resp
            .bytes()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: url.clone(),
                source,
            })?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol {
            url,
            message: e.to_string(),
        })
    }

    async fn post_json<B: Serialize, T: DeserializeOwned>(
        &self,
        rb: RequestBuilder,
        body: &B,
    ) -> Result<T, ClientError> {
        self.json(rb.json(body)).await
    }

    // ---- anyone ----

    /// `GET /v1/health`
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.json(self.request(Method::GET, "/v1/health")).await
    }

    /// `GET /v1/jobs`
    pub async fn jobs(&self, filter: &JobFilter) -> Result<Vec<JobView>, ClientError> {
        self.json(self.request(Method::GET, "/v1/jobs").query(filter))
            .await
    }

    /// `GET /v1/job/{id}`: detail with events; accepts a unique prefix (409 `ambiguous_id`).
    pub async fn job(&self, id: &IdPrefix) -> Result<JobView, ClientError> {
        self.json(self.request(Method::GET, &format!("/v1/job/{id}")))
            .await
    }

    /// `GET /v1/job/{id}/explain`: why a pending job is not running.
    pub async fn explain(&self, id: &IdPrefix) -> Result<Explain, ClientError> {
        self.json(self.request(Method::GET, &format!("/v1/job/{id}/explain")))
            .await
    }

    /// `GET /v1/events?since=&wait=`: long-polls for events after `since`.
    pub async fn events(&self, since: u64, wait: Duration) -> Result<EventsPage, ClientError> {
        let rb = self
            .request(Method::GET, "/v1/events")
            .query(&[("since", since), ("wait", wait.as_secs())])
            .timeout(wait + Duration::from_secs(30));
        self.json(rb).await
    }

    /// `GET /v1/workers`
    pub async fn workers(&self) -> Result<Vec<WorkerView>, ClientError> {
        self.json(self.request(Method::GET, "/v1/workers")).await
    }

    /// `GET /v1/worker/{name}`
    pub async fn worker_detail(&self, name: &WorkerName) -> Result<WorkerView, ClientError> {
        self.json(self.request(Method::GET, &format!("/v1/worker/{name}")))
            .await
    }

    /// `GET /v1/manifest`
    pub async fn manifest(&self) -> Result<ManifestStatus, ClientError> {
        self.json(self.request(Method::GET, "/v1/manifest")).await
    }

    /// `GET /v1/models`
    pub async fn artifacts(&self) -> Result<Vec<ArtifactView>, ClientError> {
        self.json(self.request(Method::GET, "/v1/models")).await
    }

    /// `GET /v1/model/{artifact_id}`: the response streams the tar.zst bundle.
    pub async fn download(&self, artifact: &ArtifactId) -> Result<Response, ClientError> {
        self.send(self.request(Method::GET, &format!("/v1/model/{artifact}")))
            .await
    }

    // ---- worker ----

    /// `POST /v1/job/claim[?wait=]`: `None` when nothing is eligible (204).
    pub async fn claim(
        &self,
        req: &ClaimRequest,
        wait: Option<Duration>,
    ) -> Result<Option<ClaimResponse>, ClientError> {
        let mut rb = self.request(Method::POST, "/v1/job/claim").json(req);
        if let Some(w) = wait {
            rb = rb
                .query(&[("wait", w.as_secs())])
                .timeout(w + Duration::from_secs(30));
        }
        let resp = self.send(rb).await?;
        if resp.status() == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let url = resp.url().to_string();
        let bytes = resp
            .bytes()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: url.clone(),
                source,
            })?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ClientError::Protocol {
                url,
                message: e.to_string(),
            })
    }

    /// `POST /v1/job/{id}/heartbeat`
    pub async fn heartbeat(
        &self,
        id: &JobId,
        req: &HeartbeatRequest,
    ) -> Result<HeartbeatResponse, ClientError> {
        let rb = self.request(Method::POST, &format!("/v1/job/{id}/heartbeat"));
        self.post_json(rb, req).await
    }

    /// `POST /v1/job/{id}/complete`
    pub async fn complete(
        &self,
        id: &JobId,
        req: &CompleteRequest,
    ) -> Result<JobStatusResponse, ClientError> {
        let rb = self.request(Method::POST, &format!("/v1/job/{id}/complete"));
        self.post_json(rb, req).await
    }

    /// `POST /v1/job/{id}/fail`
    pub async fn fail(
        &self,
        id: &JobId,
        req: &FailRequest,
    ) -> Result<JobStatusResponse, ClientError> {
        let rb = self.request(Method::POST, &format!("/v1/job/{id}/fail"));
        self.post_json(rb, req).await
    }

    /// `PUT /v1/model/{job_id}`: streams `body` to the artifact store.
    pub async fn upload(
        &self,
        id: &JobId,
        worker: &WorkerName,
        lease: &Lease,
        sha256: &str,
        body: reqwest::Body,
    ) -> Result<UploadResponse, ClientError> {
        let rb = self
            .request(Method::PUT, &format!("/v1/model/{id}"))
            .header(WORKER_HEADER, worker.as_str())
            .header(LEASE_TOKEN_HEADER, &lease.token)
            .header(LEASE_ATTEMPT_HEADER, lease.attempt.to_string())
            .header(CONTENT_SHA256_HEADER, sha256)
            .header(reqwest::header::CONTENT_TYPE, "application/zstd")
            .body(body);
        self.json(rb).await
    }

    /// `GET /v1/whoami`: who the server takes this client's worker credential to be
    /// (changes nothing; 401/403 when the credential is missing or refused).
    pub async fn whoami(&self) -> Result<WhoAmI, ClientError> {
        self.json(self.request(Method::GET, "/v1/whoami")).await
    }

    /// `PUT /v1/worker/{name}`: node status.
    pub async fn report_node(
        &self,
        name: &WorkerName,
        capability: &Capability,
    ) -> Result<WorkerView, ClientError> {
        let rb = self.request(Method::PUT, &format!("/v1/worker/{name}"));
        self.post_json(rb, capability).await
    }

    // ---- operator ----

    /// `POST /v1/job/{id}/cancel`
    pub async fn cancel(&self, id: &IdPrefix) -> Result<JobStatusResponse, ClientError> {
        self.json(self.request(Method::POST, &format!("/v1/job/{id}/cancel")))
            .await
    }

    /// `POST /v1/job/{id}/requeue`
    pub async fn requeue(&self, id: &IdPrefix) -> Result<JobStatusResponse, ClientError> {
        self.json(self.request(Method::POST, &format!("/v1/job/{id}/requeue")))
            .await
    }

    /// `POST /v1/manifest/reload`
    pub async fn reload(&self) -> Result<PlanSummary, ClientError> {
        self.json(self.request(Method::POST, "/v1/manifest/reload"))
            .await
    }

    /// `POST /v1/manifest/diff`: the plan for `manifest_text`, not applied.
    pub async fn diff(&self, manifest_text: String) -> Result<PlanSummary, ClientError> {
        let rb = self
            .request(Method::POST, "/v1/manifest/diff")
            .header(reqwest::header::CONTENT_TYPE, "application/toml")
            .body(manifest_text);
        self.json(rb).await
    }

    /// `POST /v1/worker/{name}/{cordon|uncordon|drain}`
    pub async fn node_action(
        &self,
        name: &WorkerName,
        action: NodeAction,
    ) -> Result<WorkerView, ClientError> {
        let path = format!("/v1/worker/{name}/{}", action.as_str());
        self.json(self.request(Method::POST, &path)).await
    }
}

/// Operator actions on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeAction {
    Cordon,
    Uncordon,
    Drain,
}

impl NodeAction {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeAction::Cordon => "cordon",
            NodeAction::Uncordon => "uncordon",
            NodeAction::Drain => "drain",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_urls_without_scheme() {
        assert!(matches!(
            Client::new("127.0.0.1:8787"),
            Err(ClientError::BadUrl(_))
        ));
        assert!(Client::new("http://127.0.0.1:8787/").is_ok());
    }

    #[tokio::test]
    async fn unreachable_server_is_transient_and_names_the_url() {
        // Port 9 on loopback (discard) is closed on test machines: connection refused.
        let client = Client::new("http://127.0.0.1:9").unwrap();
        let err = client.health().await.unwrap_err();
        assert!(err.is_transient());
        assert!(err.to_string().contains("http://127.0.0.1:9"), "{err}");
    }
}
