//! The typed HTTP client for the reconciler's API, shared by the agent, cis490ctl and tests.
//! One method per route; every route's path is written here once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::ids::{ArtifactId, IdPrefix, JobId, WorkerName};
use crate::job::{JobView, Lease};
use crate::node::{Capability, WorkerView};
use crate::paging::{Page, PageQuery};
use crate::tls::{read_certificates_pem, ClientTls, TlsFileError, TlsProblem};
use crate::wire::*;

/// How long an idle pooled connection is kept. Below the server's default 30 s idle and
/// header-read timeouts (`idle_timeout_s`, `header_read_timeout_s`), so a connection is
/// never reused at the moment the server drops it.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(20);

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
    Api {
        status: StatusCode,
        api: ApiError,
        /// The answer's `Retry-After` (seconds), sent with 429 and 503 at a server's cap.
        retry_after: Option<Duration>,
    },
    /// The answer was not what the API promises.
    #[error("unexpected answer from {url}: {message}")]
    Protocol { url: String, message: String },
    /// The base URL given is not a usable URL.
    #[error("invalid server URL {0:?}: expected something like http://127.0.0.1:8787")]
    BadUrl(String),
    /// TLS with the server failed; `problem` says what fixes it.
    #[error("cannot connect securely to the reconciler at {url}: {problem}")]
    Tls {
        url: String,
        problem: TlsProblem,
        #[source]
        source: reqwest::Error,
    },
    /// A CA, certificate or key file given to the client is unusable; `flag` names it.
    #[error("{flag}: {source}")]
    TlsFile {
        flag: &'static str,
        #[source]
        source: TlsFileError,
    },
}

impl ClientError {
    /// A failed send: [`ClientError::Tls`] when the handshake failed, else
    /// [`ClientError::Unreachable`].
    fn transport(url: &str, source: reqwest::Error) -> ClientError {
        match TlsProblem::of(&source) {
            Some(problem) => ClientError::Tls {
                url: url.to_string(),
                problem,
                source,
            },
            None => ClientError::Unreachable {
                url: url.to_string(),
                source,
            },
        }
    }

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

    /// True when retrying later may succeed: unreachable server, a 5xx (503 `busy` at a
    /// cap included), 429 (a long-poll budget is spent), or a failed TLS handshake (mid-run
    /// that may be a server certificate being replaced; the agent treats one at start-up as
    /// final, see [`ClientError::tls_problem`]). Wait at least [`ClientError::retry_after`]
    /// when it says.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } | ClientError::Tls { .. } => true,
            ClientError::Api { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            _ => false,
        }
    }

    /// How long the server asked the client to wait before trying again (its `Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The server is at one of its caps (429 or 503): try again after
    /// [`ClientError::retry_after`].
    pub fn is_busy(&self) -> bool {
        matches!(
            self.status(),
            Some(StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE)
        )
    }

    /// What went wrong with TLS, when that is why the call failed.
    pub fn tls_problem(&self) -> Option<&TlsProblem> {
        match self {
            ClientError::Tls { problem, .. } => Some(problem),
            _ => None,
        }
    }

    /// True when the server could not be reached, or the connection broke before its answer.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ClientError::Unreachable { .. })
    }

    /// True when the server refused a call because the caller's lease is stale.
    pub fn is_lease_lost(&self) -> bool {
        self.code() == Some("lease_lost")
    }
}

/// How many times [`Client::send`] sends again a request hyper never sent.
const NEVER_SENT_RESENDS: u32 = 2;

/// True when hyper dropped the request before sending any of it (hyper's `Canceled`: the
/// connection was gone before the request was dispatched on it).
fn never_sent(err: &reqwest::Error) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if e.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_canceled)
        {
            return true;
        }
        current = e.source();
    }
    false
}

/// The filters of `GET /v1/events`: one job (an ID or unique prefix) and/or one worker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventsFilter {
    pub job: Option<IdPrefix>,
    pub worker: Option<WorkerName>,
}

/// A client for a reconciler, or for several servers of one fleet (one PostgreSQL
/// database): built from `http://a:8787,http://b:8787`, it talks to one at a time and moves
/// on to the next when the one it talks to cannot be reached. Cheap to clone; clones share
/// which server is current.
#[derive(Clone, Debug)]
pub struct Client {
    servers: Arc<[Server]>,
    /// Index into `servers` of the one requests go to.
    current: Arc<AtomicUsize>,
    http: reqwest::Client,
    worker_token: Option<String>,
    operator_token: Option<String>,
}

/// One server a [`Client`] may talk to.
#[derive(Clone, Debug)]
struct Server {
    /// As given, without a trailing `/`: named in errors and logs.
    base: String,
    url: reqwest::Url,
}

/// Splits a comma-separated list of server URLs and checks each.
fn parse_servers(list: &str) -> Result<Vec<Server>, ClientError> {
    let mut out = Vec::new();
    for base in list.split(',').map(str::trim) {
        let trimmed = base.trim_end_matches('/');
        let url = (trimmed.starts_with("http://") || trimmed.starts_with("https://"))
            .then(|| reqwest::Url::parse(trimmed).ok())
            .flatten()
            .ok_or_else(|| ClientError::BadUrl(base.to_string()))?;
        out.push(Server {
            base: trimmed.to_string(),
            url,
        });
    }
    Ok(out)
}

/// Methods that change nothing on the server: sent again elsewhere after any failure.
fn is_read_only(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD)
}

/// `url`, a request to `from`, sent to `to` instead: the same path below the server's root
/// and the same query.
fn retarget(url: &reqwest::Url, from: &reqwest::Url, to: &reqwest::Url) -> reqwest::Url {
    let root = from.path().trim_end_matches('/');
    let below = url.path().strip_prefix(root).unwrap_or(url.path());
    let mut out = to.clone();
    out.set_path(&format!("{}{below}", to.path().trim_end_matches('/')));
    out.set_query(url.query());
    out
}

/// Builds a [`Client`] with TLS settings: `Client::builder(url).tls(files).build()`.
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    base: String,
    tls: ClientTls,
}

impl ClientBuilder {
    /// All three TLS files at once (each optional), as the agent and cis490ctl resolve them.
    pub fn tls(mut self, tls: ClientTls) -> Self {
        self.tls = tls;
        self
    }

    /// Trust the CA certificates in this PEM file (a private lab CA), besides the public roots.
    pub fn ca_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.tls.ca_file = Some(path.into());
        self
    }

    /// Present this client certificate and key (PEM) when the server asks for one (mTLS).
    pub fn identity(
        mut self,
        cert_file: impl Into<std::path::PathBuf>,
        key_file: impl Into<std::path::PathBuf>,
    ) -> Self {
        self.tls.cert_file = Some(cert_file.into());
        self.tls.key_file = Some(key_file.into());
        self
    }

    /// Checks the URL, reads the TLS files and builds the client.
    pub fn build(self) -> Result<Client, ClientError> {
        let servers = parse_servers(&self.base)?;
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(POOL_IDLE_TIMEOUT);
        let file_error = |flag| move |source| ClientError::TlsFile { flag, source };
        if let Some(path) = &self.tls.ca_file {
            let pem = read_certificates_pem(path).map_err(file_error("--ca-file"))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                file_error("--ca-file")(TlsFileError::Rejected {
                    what: format!("the CA file {}", path.display()),
                    message: e.to_string(),
                })
            })?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let identity = self
            .tls
            .identity_pem()
            .map_err(|(flag, source)| ClientError::TlsFile { flag, source })?;
        if let Some((pem, what)) = identity {
            let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                file_error("--cert-file/--key-file")(TlsFileError::Rejected {
                    what: what.clone(),
                    message: e.to_string(),
                })
            })?;
            builder = builder.identity(identity);
        }
        let http = builder.build().map_err(|e| {
            file_error("--ca-file/--cert-file/--key-file")(TlsFileError::Rejected {
                what: "the TLS settings".into(),
                message: e.to_string(),
            })
        })?;
        Ok(Client {
            servers: servers.into(),
            current: Arc::new(AtomicUsize::new(0)),
            http,
            worker_token: None,
            operator_token: None,
        })
    }
}

impl Client {
    /// `base` is the server's root URL, e.g. `http://127.0.0.1:8787`, or several separated
    /// by commas (servers of one fleet); no TLS files.
    pub fn new(base: &str) -> Result<Self, ClientError> {
        Client::builder(base).build()
    }

    /// A [`ClientBuilder`] for `base`, to add TLS files.
    pub fn builder(base: &str) -> ClientBuilder {
        ClientBuilder {
            base: base.to_string(),
            tls: ClientTls::default(),
        }
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

    /// How many servers the client was given.
    pub fn server_count(&self) -> usize {
        self.servers.len()
    }

    /// The server requests go to now.
    pub fn base_url(&self) -> &str {
        &self.server(self.current_index()).base
    }

    fn current_index(&self) -> usize {
        self.current.load(Ordering::Relaxed) % self.servers.len()
    }

    fn server(&self, index: usize) -> &Server {
        &self.servers[index % self.servers.len()]
    }

    /// The caller stopped waiting for the current server's answer (a timeout of its own,
    /// which drops the request before this client sees any error): with several servers,
    /// the next request goes to the next one, as after a timeout seen here.
    pub fn gave_up_waiting(&self) {
        if self.servers.len() > 1 {
            self.move_on_from(self.current_index());
        }
    }

    /// Moves on from server `from` to the next one, unless a clone moved on already.
    fn move_on_from(&self, from: usize) {
        let _ = self.current.compare_exchange(
            from,
            (from + 1) % self.servers.len(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    pub fn has_operator_token(&self) -> bool {
        self.operator_token.is_some()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url(), path)
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
    ///
    /// With several servers: a request that could not connect to the current server is
    /// sent to the next one, and so on once round the list (a connection never made
    /// delivered nothing, so this is safe for every method; a streamed body cannot be
    /// sent twice and fails instead). A read (GET, HEAD) that failed after connecting (a
    /// timeout, a reset: its server died mid-answer) goes to the next server too; a write
    /// that did is not sent again, since the server may have acted on it, but the next
    /// request goes to the next server. An HTTP answer, errors included, never moves on.
    ///
    /// A request the connection never sent (it died before the request was handed to it)
    /// is sent again on a new connection (at most twice): safe for every method, and it is
    /// how a refused client certificate is told apart from a plain hang-up. In TLS 1.3 the server
    /// refuses the certificate after the client's side of the handshake is done, and when
    /// its alert ends the connection before the request is written, hyper reports only
    /// "connection was not ready" and drops the TLS error; on the next connection the
    /// request is usually written first and the alert is read as the answer.
    pub async fn send(&self, rb: RequestBuilder) -> Result<Response, ClientError> {
        let mut at = self.current_index();
        let mut req = rb
            .build()
            .map_err(|e| ClientError::transport(self.base_url(), e))?;
        // With several servers: the URL as built, and the server it was built against (the
        // current one then; a clone may have moved on since). One server needs neither.
        let built = if self.servers.len() > 1 {
            let url = req.url().clone();
            self.servers
                .iter()
                .find(|s| s.url.origin() == url.origin())
                .map(|s| (url, s.url.clone()))
        } else {
            None
        };
        let mut tried = 0;
        let mut resends = 0;
        let resp = loop {
            let target = self.server(at);
            if let Some((url, from)) = &built {
                *req.url_mut() = retarget(url, from, &target.url);
            }
            let again = req.try_clone();
            match (self.http.execute(req).await, again) {
                (Ok(resp), _) => break resp,
                (Err(e), Some(again)) if resends < NEVER_SENT_RESENDS && never_sent(&e) => {
                    resends += 1;
                    req = again;
                }
                (Err(e), Some(again))
                    if (e.is_connect() || is_read_only(again.method()))
                        && tried + 1 < self.servers.len() =>
                {
                    tracing::warn!(server = %target.base, error = %e, "cannot reach the server; trying the next one");
                    self.move_on_from(at);
                    at = (at + 1) % self.servers.len();
                    tried += 1;
                    resends = 0;
                    req = again;
                }
                (Err(source), _) => {
                    if self.servers.len() > 1 {
                        self.move_on_from(at);
                    }
                    return Err(ClientError::transport(&target.base, source));
                }
            }
        };
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let url = resp.url().to_string();
        let retry_after = retry_after(resp.headers());
        let text = resp.text().await.unwrap_or_default();
        let api = serde_json::from_str::<ApiError>(&text).unwrap_or_else(|_| ApiError {
            error: status
                .canonical_reason()
                .unwrap_or("error")
                .to_ascii_lowercase()
                .replace(' ', "_"),
            message: format!("{url} answered {status}: {}", text.trim()),
        });
        Err(ClientError::Api {
            status,
            api,
            retry_after,
        })
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
    /// Every job that matches, following the pages (`filter.limit` is the page size).
    pub async fn jobs(&self, filter: &JobFilter) -> Result<Vec<JobView>, ClientError> {
        let mut filter = filter.clone();
        let mut out = Vec::new();
        loop {
            let page = self.jobs_page(&filter).await?;
            out.extend(page.items);
            match page.next {
                Some(next) => {
                    filter.after = Some(next_cursor(filter.after.take(), next, "/v1/jobs")?)
                }
                None => return Ok(out),
            }
        }
    }

    /// `GET /v1/jobs`: one page of the jobs that match (`filter.after` continues a listing).
    pub async fn jobs_page(&self, filter: &JobFilter) -> Result<Page<JobView>, ClientError> {
        self.json(self.request(Method::GET, "/v1/jobs").query(filter))
            .await
    }

    /// `GET /v1/job/{id}`: detail with events; accepts a unique prefix (409 `ambiguous_id`).
    pub async fn job(&self, id: &IdPrefix) -> Result<JobView, ClientError> {
        self.json(self.request(Method::GET, &format!("/v1/job/{id}")))
            .await
    }

    /// `GET /v1/job/{id}/log?attempt=&offset=&limit=`: one page of an attempt's log.
    pub async fn job_log(&self, id: &IdPrefix, query: &LogQuery) -> Result<LogPage, ClientError> {
        self.json(
            self.request(Method::GET, &format!("/v1/job/{id}/log"))
                .query(query),
        )
        .await
    }

    /// `GET /v1/results`: one page of completed jobs with their metrics.
    pub async fn results_page(
        &self,
        query: &crate::ResultsQuery,
    ) -> Result<crate::Page<crate::ResultRow>, ClientError> {
        self.json(self.request(Method::GET, "/v1/results").query(query))
            .await
    }

    /// `GET /v1/job/{id}/progress`: the job's progress per attempt.
    pub async fn job_progress(&self, id: &IdPrefix) -> Result<crate::JobProgress, ClientError> {
        self.json(self.request(Method::GET, &format!("/v1/job/{id}/progress")))
            .await
    }

    /// `GET /v1/job/{id}/explain`: why a pending job is not running.
    pub async fn explain(&self, id: &IdPrefix) -> Result<Explain, ClientError> {
        self.json(self.request(Method::GET, &format!("/v1/job/{id}/explain")))
            .await
    }

    /// `GET /v1/events?since=&wait=`: long-polls for events after `since`.
    pub async fn events(&self, since: u64, wait: Duration) -> Result<EventsPage, ClientError> {
        self.events_filtered(since, wait, &EventsFilter::default())
            .await
    }

    /// `GET /v1/events?job=&worker=`: only the events `filter` keeps.
    pub async fn events_filtered(
        &self,
        since: u64,
        wait: Duration,
        filter: &EventsFilter,
    ) -> Result<EventsPage, ClientError> {
        let mut rb = self
            .request(Method::GET, "/v1/events")
            .query(&[("since", since), ("wait", wait.as_secs())])
            .timeout(wait + Duration::from_secs(30));
        if let Some(job) = &filter.job {
            rb = rb.query(&[("job", job.as_str())]);
        }
        if let Some(worker) = &filter.worker {
            rb = rb.query(&[("worker", worker.as_str())]);
        }
        self.json(rb).await
    }

    /// Every worker, following the pages of `GET /v1/workers`.
    pub async fn workers(&self) -> Result<Vec<WorkerView>, ClientError> {
        self.all_pages("/v1/workers").await
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

    /// Every artifact row, following the pages of `GET /v1/models`.
    pub async fn artifacts(&self) -> Result<Vec<ArtifactView>, ClientError> {
        self.all_pages("/v1/models").await
    }

    /// Every item of a list route that takes [`PageQuery`], page after page.
    async fn all_pages<T: DeserializeOwned>(&self, path: &str) -> Result<Vec<T>, ClientError> {
        let mut query = PageQuery::default();
        let mut out = Vec::new();
        loop {
            let page: Page<T> = self
                .json(self.request(Method::GET, path).query(&query))
                .await?;
            out.extend(page.items);
            match page.next {
                Some(next) => query.after = Some(next_cursor(query.after.take(), next, path)?),
                None => return Ok(out),
            }
        }
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

    /// `PUT /v1/model/{job_id}`: streams `body` to the artifact store; the upload records
    /// itself.
    pub async fn upload(
        &self,
        id: &JobId,
        worker: &WorkerName,
        lease: &Lease,
        sha256: &str,
        body: reqwest::Body,
    ) -> Result<UploadResponse, ClientError> {
        self.upload_as(id, worker, lease, sha256, body, false).await
    }

    /// [`Client::upload`] that asks for a receipt ([`UPLOAD_RECEIPT_HEADER`]): the upload
    /// writes nothing in the queue, and the completion, given the answer's `receipt` in
    /// [`CompleteRequest::upload`], records it. What the agent does.
    pub async fn upload_with_receipt(
        &self,
        id: &JobId,
        worker: &WorkerName,
        lease: &Lease,
        sha256: &str,
        body: reqwest::Body,
    ) -> Result<UploadResponse, ClientError> {
        self.upload_as(id, worker, lease, sha256, body, true).await
    }

    async fn upload_as(
        &self,
        id: &JobId,
        worker: &WorkerName,
        lease: &Lease,
        sha256: &str,
        body: reqwest::Body,
        receipt: bool,
    ) -> Result<UploadResponse, ClientError> {
        let mut rb = self
            .request(Method::PUT, &format!("/v1/model/{id}"))
            .header(WORKER_HEADER, worker.as_str())
            .header(LEASE_TOKEN_HEADER, &lease.token)
            .header(LEASE_ATTEMPT_HEADER, lease.attempt.to_string())
            .header(CONTENT_SHA256_HEADER, sha256)
            .header(reqwest::header::CONTENT_TYPE, "application/zstd");
        if receipt {
            rb = rb.header(UPLOAD_RECEIPT_HEADER, "requested");
        }
        self.json(rb.body(body)).await
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

    /// `DELETE /v1/worker/{name}`: forget a worker; answers it as it was.
    pub async fn delete_worker(&self, name: &WorkerName) -> Result<WorkerView, ClientError> {
        self.json(self.request(Method::DELETE, &format!("/v1/worker/{name}")))
            .await
    }

    /// `POST /v1/job/{id}/hold`
    pub async fn hold(&self, id: &IdPrefix) -> Result<JobStatusResponse, ClientError> {
        self.json(self.request(Method::POST, &format!("/v1/job/{id}/hold")))
            .await
    }

    /// `POST /v1/job/{id}/release`
    pub async fn release(&self, id: &IdPrefix) -> Result<JobStatusResponse, ClientError> {
        self.json(self.request(Method::POST, &format!("/v1/job/{id}/release")))
            .await
    }

    /// `POST /v1/manifest/reload`
    pub async fn reload(&self) -> Result<PlanSummary, ClientError> {
        self.json(self.request(Method::POST, "/v1/manifest/reload"))
            .await
    }

    /// `POST /v1/manifest/diff`: the plan for `manifest_text`, not applied.
    /// `POST /v1/manifest/diff?file=`: errors in the text name it `file`.
    pub async fn diff(
        &self,
        manifest_text: String,
        file: &str,
    ) -> Result<PlanSummary, ClientError> {
        let rb = self
            .request(Method::POST, "/v1/manifest/diff")
            .query(&[("file", file)])
            .header(reqwest::header::CONTENT_TYPE, "application/toml")
            .body(manifest_text);
        self.json(rb).await
    }

    /// `PUT /v1/manifest`: replace the server's manifest with `manifest_text` (validated
    /// first; `file` names it in errors) and apply it.
    pub async fn put_manifest(
        &self,
        manifest_text: String,
        file: &str,
    ) -> Result<PlanSummary, ClientError> {
        let rb = self
            .request(Method::PUT, "/v1/manifest")
            .query(&[("file", file)])
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

/// `Retry-After` in seconds (the server never sends the HTTP-date form); at most an hour, so
/// a broken value cannot park a client for good.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds.min(3600)))
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

/// The cursor of the next page, unless the server answered the one just asked for again
/// (a listing that would never end).
fn next_cursor(asked: Option<String>, next: String, path: &str) -> Result<String, ClientError> {
    if asked.as_deref() == Some(next.as_str()) {
        return Err(ClientError::Protocol {
            url: path.to_string(),
            message: format!("the server answered the page after {next:?} with the same cursor"),
        });
    }
    Ok(next)
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

    #[test]
    fn unusable_tls_files_are_named_with_their_flag() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing-ca.pem");
        let err = Client::builder("https://127.0.0.1:1")
            .ca_file(&missing)
            .build()
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("--ca-file: cannot read") && text.contains("missing-ca.pem"),
            "{text}"
        );
        let cert = dir.path().join("a.pem");
        std::fs::write(&cert, "not pem\n").unwrap();
        let err = Client::builder("https://127.0.0.1:1")
            .identity(&cert, dir.path().join("a-key.pem"))
            .build()
            .unwrap_err();
        assert!(err.to_string().starts_with("--cert-file: "), "{err}");
    }

    #[test]
    fn retry_after_is_read_in_seconds_and_bounded() {
        use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(RETRY_AFTER, HeaderValue::from_str(v).unwrap());
            retry_after(&h)
        };
        assert_eq!(with("5"), Some(Duration::from_secs(5)));
        assert_eq!(with("999999"), Some(Duration::from_secs(3600)));
        assert_eq!(with("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn answers_at_a_cap_are_transient_and_busy() {
        let api = |status: StatusCode| ClientError::Api {
            status,
            api: ApiError {
                error: "x".into(),
                message: String::new(),
            },
            retry_after: Some(Duration::from_secs(5)),
        };
        for status in [
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::SERVICE_UNAVAILABLE,
        ] {
            let err = api(status);
            assert!(err.is_transient() && err.is_busy(), "{status}");
            assert_eq!(err.retry_after(), Some(Duration::from_secs(5)));
        }
        let err = api(StatusCode::CONFLICT);
        assert!(!err.is_transient() && !err.is_busy());
    }

    /// A server that answers every request with `status` and its own name as the body.
    async fn named_server(name: &'static str, status: u16) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    let answer = format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{name}",
                        name.len()
                    );
                    let _ = conn.write_all(answer.as_bytes()).await;
                });
            }
        });
        format!("http://{addr}")
    }

    /// A server that accepts each connection, reads the request and hangs up unanswered
    /// (as a server killed mid-request).
    async fn hang_up_server() -> String {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut buf = vec![0u8; 4096];
                let _ = conn.read(&mut buf).await;
                drop(conn);
            }
        });
        format!("http://{addr}")
    }

    /// A URL nothing listens on: connection refused.
    async fn dead_server() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        format!("http://{addr}")
    }

    async fn answer(client: &Client) -> Result<String, ClientError> {
        let resp = client.send(client.request(Method::GET, "/v1/x")).await?;
        Ok(resp.text().await.unwrap())
    }

    #[tokio::test]
    async fn a_request_that_cannot_connect_goes_to_the_next_server_and_stays_there() {
        let dead = dead_server().await;
        let alive = named_server("b", 200).await;
        let client = Client::new(&format!("{dead}, {alive}/")).unwrap();
        let clone = client.clone();
        assert_eq!(client.base_url(), dead);
        assert_eq!(answer(&client).await.unwrap(), "b");
        assert_eq!(client.base_url(), alive);
        assert_eq!(clone.base_url(), alive, "clones share the current server");
        assert_eq!(answer(&clone).await.unwrap(), "b");
    }

    #[tokio::test]
    async fn a_read_cut_off_mid_answer_goes_to_the_next_server_but_a_write_does_not() {
        let dying = hang_up_server().await;
        let alive = named_server("b", 200).await;
        let client = Client::new(&format!("{dying},{alive}")).unwrap();
        assert_eq!(answer(&client).await.unwrap(), "b");

        let client = Client::new(&format!("{dying},{alive}")).unwrap();
        let write = client.request(Method::POST, "/v1/x").body("{}");
        let err = client.send(write).await.unwrap_err();
        assert!(err.is_unreachable(), "{err}");
        assert!(err.to_string().contains(&dying), "{err}");
        assert_eq!(
            client.base_url(),
            alive,
            "the next request goes to the next server"
        );
    }

    #[tokio::test]
    async fn the_first_server_is_used_while_it_answers() {
        let alive = named_server("a", 200).await;
        let other = named_server("b", 200).await;
        let client = Client::new(&format!("{alive},{other}")).unwrap();
        for _ in 0..3 {
            assert_eq!(answer(&client).await.unwrap(), "a");
        }
        assert_eq!(client.base_url(), alive);
    }

    #[tokio::test]
    async fn an_http_error_never_moves_on_to_another_server() {
        let failing = named_server("a", 500).await;
        let other = named_server("b", 200).await;
        let client = Client::new(&format!("{failing},{other}")).unwrap();
        let err = answer(&client).await.unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::INTERNAL_SERVER_ERROR));
        assert_eq!(client.base_url(), failing);
    }

    #[tokio::test]
    async fn when_no_server_can_be_reached_the_error_is_transient_and_names_the_last_tried() {
        let one = dead_server().await;
        let two = dead_server().await;
        let client = Client::new(&format!("{one},{two}")).unwrap();
        let err = answer(&client).await.unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert!(err.to_string().contains(&two), "{err}");
        assert_eq!(
            client.base_url(),
            one,
            "the next request starts over from the first"
        );
    }

    #[test]
    fn a_list_of_servers_is_checked_url_by_url() {
        assert!(Client::new("http://a:1, https://b:2/").is_ok());
        match Client::new("http://a:1,,http://b:2") {
            Err(ClientError::BadUrl(url)) => assert_eq!(url, ""),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Client::new("http://a:1,b:2"),
            Err(ClientError::BadUrl(url)) if url == "b:2"
        ));
    }

    #[test]
    fn retargeting_keeps_the_path_below_the_root_and_the_query() {
        let url = |s: &str| reqwest::Url::parse(s).unwrap();
        let moved = retarget(
            &url("http://a:1/v1/jobs?status=running"),
            &url("http://a:1"),
            &url("https://b:2/fleet"),
        );
        assert_eq!(moved.as_str(), "https://b:2/fleet/v1/jobs?status=running");
        let back = retarget(&moved, &url("https://b:2/fleet"), &url("http://a:1"));
        assert_eq!(back.as_str(), "http://a:1/v1/jobs?status=running");
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
