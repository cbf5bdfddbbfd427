//! The agent's loop, in process, against a small mock of the reconciler's worker routes:
//! the state machine's paths (complete, trainer failure, cancel, shutdown) without the real
//! server. Black-box tests against the real server live in `tests/tests/agent_e2e.rs`.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use axum::{Json, Router};
use cis490_agent::config::{Advertise, AgentConfig, GpuSharing};
use cis490_agent::worker::{Agent, JobOutcome, TrainerRegistry};
use cis490_api::*;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

#[derive(Default)]
struct Mock {
    pending: VecDeque<JobSpec>,
    leases: BTreeMap<String, Lease>,
    cancel: HashSet<String>,
    heartbeats: Vec<HeartbeatRequest>,
    uploads: BTreeMap<String, Bytes>,
    completed: Vec<CompleteRequest>,
    failed: Vec<FailRequest>,
    claims: Vec<Capability>,
    /// Answers for the next uploads, before they are accepted (e.g. 503, 413).
    upload_refusals: VecDeque<StatusCode>,
    upload_attempts: u32,
    /// Hold a claim that finds nothing for its `?wait=` (as the real server does) instead
    /// of answering 204 at once.
    long_poll: bool,
    /// A file the trainer creates as it exits: each claim records whether it existed.
    exit_marker: Option<std::path::PathBuf>,
    claims_after_exit: Vec<bool>,
    /// Uploads are not answered while this is set (they stay in flight).
    hold_uploads: bool,
    /// Jobs whose upload reached the mock (answered or not).
    uploads_started: Vec<String>,
    /// Completions carrying metrics are refused 400 (a server stricter than the agent).
    refuse_metrics: bool,
}

type Shared = Arc<Mutex<Mock>>;

fn api_error(status: StatusCode, code: &str) -> Response {
    (
        status,
        Json(ApiError {
            error: code.into(),
            message: code.into(),
        }),
    )
        .into_response()
}

async fn report(State(_): State<Shared>, Json(cap): Json<Capability>) -> Response {
    let view = WorkerView {
        name: WorkerName::parse("agent-under-test").unwrap(),
        state: NodeState::Ready,
        ready: true,
        cordoned: false,
        draining: false,
        running_jobs: cap.running_jobs.clone(),
        capability: cap,
        first_seen: chrono::Utc::now(),
        last_seen: chrono::Utc::now(),
        host_problem: None,
        labels: Default::default(),
    };
    Json(view).into_response()
}

/// Whether `job`'s RAM fits in what the claim advertised as free (the one constraint the
/// mock matches on).
fn fits(job: &JobSpec, free: &Capability) -> bool {
    (job.constraints.min_ram_gib * 1024.0).ceil() as u64 <= free.ram_allocatable_mib
}

async fn claim(
    State(m): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
    Json(req): Json<ClaimRequest>,
) -> Response {
    let wait = query
        .get("wait")
        .and_then(|w| w.parse().ok())
        .map_or(Duration::ZERO, Duration::from_secs);
    let deadline = Instant::now() + wait;
    {
        let mut m = m.lock().unwrap();
        m.claims.push(req.capability.clone());
        let exited = m.exit_marker.as_ref().is_some_and(|p| p.exists());
        m.claims_after_exit.push(exited);
    }
    loop {
        {
            let mut m = m.lock().unwrap();
            if let Some(at) = m.pending.iter().position(|j| fits(j, &req.capability)) {
                let job = m.pending.remove(at).unwrap();
                let lease = Lease {
                    attempt: 1,
                    token: format!("token-{}", job.id.short()),
                };
                m.leases.insert(job.id.to_string(), lease.clone());
                return Json(ClaimResponse { job, lease }).into_response();
            }
            if !m.long_poll || Instant::now() >= deadline {
                return StatusCode::NO_CONTENT.into_response();
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn heartbeat(
    State(m): State<Shared>,
    UrlPath(id): UrlPath<String>,
    Json(req): Json<HeartbeatRequest>,
) -> Response {
    let mut m = m.lock().unwrap();
    if m.leases.get(&id) != Some(&req.lease) {
        return api_error(StatusCode::CONFLICT, "lease_lost");
    }
    // Acknowledges every chunk as it comes (a real server ignores one that does not start
    // where its copy ends).
    let log_offset = req.log.as_ref().map(|c| c.to);
    m.heartbeats.push(req);
    let cancel = m.cancel.contains(&id);
    Json(HeartbeatResponse { cancel, log_offset }).into_response()
}

async fn upload(
    State(m): State<Shared>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    {
        let mut m = m.lock().unwrap();
        m.upload_attempts += 1;
        if let Some(status) = m.upload_refusals.pop_front() {
            let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "payload_too_large"
            } else {
                "unavailable"
            };
            return api_error(status, code);
        }
        m.uploads_started.push(id.clone());
    }
    while m.lock().unwrap().hold_uploads {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sha = hex::encode(Sha256::digest(&body));
    let claimed = headers
        .get(CONTENT_SHA256_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if sha != claimed {
        return api_error(StatusCode::UNPROCESSABLE_ENTITY, "sha_mismatch");
    }
    let size = body.len() as u64;
    m.lock().unwrap().uploads.insert(id, body);
    // As the real server: a receipt only for an upload that asked for one.
    let receipt = headers
        .get(UPLOAD_RECEIPT_HEADER)
        .is_some_and(|v| v == "requested")
        .then(|| UploadReceipt {
            size_bytes: size,
            mac: format!("mock-{sha}"),
        });
    Json(UploadResponse {
        artifact_id: ArtifactId::parse(&sha).unwrap(),
        status: UploadStatus::Stored,
        size_bytes: size,
        receipt,
    })
    .into_response()
}

fn status(id: &str, status: JobStatus) -> Response {
    Json(JobStatusResponse {
        id: JobId::parse(id).unwrap(),
        status,
    })
    .into_response()
}

async fn complete(
    State(m): State<Shared>,
    UrlPath(id): UrlPath<String>,
    Json(req): Json<CompleteRequest>,
) -> Response {
    let mut m = m.lock().unwrap();
    if m.refuse_metrics && req.report.metrics.is_some() {
        m.completed.push(req);
        return api_error(StatusCode::BAD_REQUEST, "bad_request");
    }
    if m.leases.remove(&id).as_ref() != Some(&req.lease) {
        return api_error(StatusCode::CONFLICT, "lease_lost");
    }
    m.completed.push(req);
    status(&id, JobStatus::Completed)
}

async fn fail(
    State(m): State<Shared>,
    UrlPath(id): UrlPath<String>,
    Json(req): Json<FailRequest>,
) -> Response {
    let mut m = m.lock().unwrap();
    if m.leases.remove(&id).as_ref() != Some(&req.lease) {
        return api_error(StatusCode::CONFLICT, "lease_lost");
    }
    let st = if req.retryable {
        JobStatus::Pending
    } else {
        JobStatus::Failed
    };
    m.failed.push(req);
    status(&id, st)
}

async fn start_mock(mock: Shared) -> String {
    let app = Router::new()
        .route("/v1/worker/{name}", put(report))
        .route("/v1/job/claim", post(claim))
        .route("/v1/job/{id}/heartbeat", post(heartbeat))
        .route("/v1/job/{id}/complete", post(complete))
        .route("/v1/job/{id}/fail", post(fail))
        .route("/v1/model/{id}", put(upload))
        .with_state(mock);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn job(n: u8, command: Vec<String>) -> JobSpec {
    let mut hyper = Hyper::new();
    hyper.insert("lr".into(), serde_json::json!(0.5));
    JobSpec {
        id: JobId::parse(&format!("{n:02x}").repeat(32)).unwrap(),
        model: "mlp".into(),
        mode: "oracle".into(),
        hyper,
        split_recipe: None,
        train_hosts: vec![],
        seed: 11,
        constraints: Constraints::default(),
        priority: 0,
        max_attempts: 3,
        stale_after_s: 90,
        retry: RetryPolicy::default(),
        command,
        labels: BTreeMap::new(),
        timeout_s: None,
        env: BTreeMap::new(),
        manifest_order: 0,
    }
}

fn config(work: &Path, state: &Path, url: &str) -> AgentConfig {
    AgentConfig {
        server: Some(url.into()),
        worker_token: None,
        tls: Default::default(),
        name: WorkerName::parse("agent-under-test").unwrap(),
        work_dir: work.to_path_buf(),
        state_dir: state.to_path_buf(),
        python: "python3".into(),
        max_concurrent: 1,
        heartbeat: Duration::from_millis(200),
        claim_wait: Duration::from_secs(1),
        grace: Duration::from_millis(500),
        gpu_sharing: GpuSharing::Exclusive,
        advertise: Advertise::default(),
        labels: BTreeMap::new(),
    }
}

fn capability() -> Capability {
    Capability {
        hostname: "test".into(),
        cores: 2,
        ram_total_mib: 4096,
        ram_allocatable_mib: 4096,
        max_concurrent: 1,
        agent_version: VERSION.into(),
        ..Capability::default()
    }
}

struct Harness {
    mock: Shared,
    shutdown: watch::Sender<bool>,
    agent: tokio::task::JoinHandle<
        Result<cis490_agent::worker::RunSummary, cis490_agent::worker::AgentError>,
    >,
    work: tempfile::TempDir,
    _state: tempfile::TempDir,
}

async fn start(jobs: Vec<JobSpec>, script: &str) -> Harness {
    start_with(jobs, script, capability()).await
}

async fn start_with(jobs: Vec<JobSpec>, script: &str, cap: Capability) -> Harness {
    let mock = Mock {
        pending: jobs.into(),
        ..Mock::default()
    };
    start_mock_state(mock, script, cap).await
}

async fn start_mock_state(mock: Mock, script: &str, cap: Capability) -> Harness {
    start_configured(mock, script, cap, |_| {}).await
}

/// Like `start_mock_state`, with `adjust` applied to the agent's configuration.
async fn start_configured(
    mock: Mock,
    script: &str,
    cap: Capability,
    adjust: impl FnOnce(&mut AgentConfig),
) -> Harness {
    let work = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("train.sh"), script).unwrap();
    let mock: Shared = Arc::new(Mutex::new(mock));
    let url = start_mock(mock.clone()).await;
    let (tx, rx) = watch::channel(false);
    let mut cfg = config(work.path(), state.path(), &url);
    cfg.max_concurrent = cap.max_concurrent;
    adjust(&mut cfg);
    let client = Client::new(&url).unwrap();
    let agent = Agent::new(cfg, client, cap, rx, TrainerRegistry::default());
    Harness {
        mock,
        shutdown: tx,
        agent: tokio::spawn(agent.run()),
        work,
        _state: state,
    }
}

async fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), script.into()]
}

fn pid_alive(pid: i32) -> bool {
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        return !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'));
    }
    if Path::new("/proc/self").exists() {
        return false;
    }
    std::process::Command::new("kill")
        .arg("-0")
        .arg(pid.to_string())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[tokio::test]
async fn completed_job_uploads_its_output_with_matching_sha256() {
    let marks = tempfile::tempdir().unwrap();
    let exited = marks.path().join("trainer-exited");
    let script = format!(
        "#!/bin/sh\necho \"$*\" > \"$CIS490_OUTPUT_DIR/args.txt\"\necho \"$CIS490_MODEL $CIS490_SEED\" > \"$CIS490_OUTPUT_DIR/env.txt\"\nsleep 0.5\ntouch '{}'\n",
        exited.display()
    );
    let mock = Mock {
        pending: [job(1, sh("./train.sh"))].into(),
        exit_marker: Some(exited),
        ..Mock::default()
    };
    let h = start_mock_state(mock, &script, capability()).await;
    let done = wait_for("completion", || {
        h.mock.lock().unwrap().completed.first().cloned()
    })
    .await;
    let bundle = h
        .mock
        .lock()
        .unwrap()
        .uploads
        .values()
        .next()
        .cloned()
        .unwrap();
    let artifact = done.artifact_id.unwrap();
    assert_eq!(artifact.as_str(), hex::encode(Sha256::digest(&bundle)));
    assert_eq!(
        done.upload,
        Some(UploadReceipt {
            size_bytes: bundle.len() as u64,
            mac: format!("mock-{artifact}"),
        }),
        "the completion carries the upload's receipt"
    );
    // Unpack and look at what the trainer wrote.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.tar.zst");
    std::fs::write(&path, &bundle).unwrap();
    cis490_agent::pack::unpack(&path, &dir.path().join("x")).unwrap();
    let args = std::fs::read_to_string(dir.path().join("x/args.txt")).unwrap();
    assert_eq!(args.trim(), "--lr 0.5");
    let env = std::fs::read_to_string(dir.path().join("x/env.txt")).unwrap();
    assert_eq!(env.trim(), "mlp 11");
    {
        let m = h.mock.lock().unwrap();
        assert!(!m.heartbeats.is_empty(), "no heartbeat before completion");
        assert!(m.failed.is_empty());
        // While the trainer ran, no claim was made (max_concurrent 1); once it exited the
        // slot claimed again while the job uploaded and completed, listing it as on hand.
        assert_eq!(m.claims.len(), m.claims_after_exit.len());
        for (claim, after_exit) in m.claims.iter().zip(&m.claims_after_exit) {
            assert!(
                claim.running_jobs.is_empty() || *after_exit,
                "a claim was made while the only slot's trainer ran"
            );
        }
    }
    h.shutdown.send(true).unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(10), h.agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(summary.jobs[0].1, JobOutcome::Completed(_)));
}

#[tokio::test]
async fn non_zero_exit_fails_with_the_code_and_the_last_stderr_line() {
    let script = "#!/bin/sh\necho starting\necho 'ValueError: bad split' >&2\nexit 3\n";
    let h = start(vec![job(2, sh("./train.sh"))], script).await;
    let failed = wait_for("failure", || h.mock.lock().unwrap().failed.first().cloned()).await;
    assert_eq!(failed.exit_code, Some(3));
    assert!(!failed.retryable);
    assert!(failed.reason.contains("code 3"), "{}", failed.reason);
    assert!(
        failed.reason.contains("ValueError: bad split"),
        "{}",
        failed.reason
    );
    assert!(failed
        .log_tail
        .unwrap()
        .ends_with("ValueError: bad split\n"));
    assert!(h.mock.lock().unwrap().uploads.is_empty());
    h.shutdown.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), h.agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_trainer_that_cannot_start_is_the_hosts_failure_not_the_jobs() {
    let h = start(vec![job(4, vec!["./no-such-trainer.sh".into()])], "").await;
    let failed = wait_for("failure", || h.mock.lock().unwrap().failed.first().cloned()).await;
    assert_eq!(failed.cause, cis490_api::FailureCause::Host);
    assert!(!failed.retryable);
    assert!(
        failed.reason.contains("no-such-trainer.sh"),
        "{}",
        failed.reason
    );
    h.shutdown.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), h.agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// A trainer that records its pid and its child's, then waits forever (ignoring SIGTERM).
const STUBBORN: &str =
    "#!/bin/sh\ntrap '' TERM\nsleep 300 &\necho \"$$ $!\" > pids\necho running\nwait\n";

async fn pids(work: &Path) -> (i32, i32) {
    let path = work.join("pids");
    wait_for("the trainer's pids", || {
        let text = std::fs::read_to_string(&path).ok()?;
        let mut it = text.split_whitespace().map(|p| p.parse::<i32>().ok());
        Some((it.next()??, it.next()??))
    })
    .await
}

#[tokio::test]
async fn cancel_on_heartbeat_kills_trainer_and_child_and_reports_nothing() {
    let j = job(3, sh("./train.sh"));
    let id = j.id.to_string();
    let h = start(vec![j], STUBBORN).await;
    let (leader, child) = pids(h.work.path()).await;
    wait_for("a heartbeat with the log", || {
        let m = h.mock.lock().unwrap();
        m.heartbeats
            .iter()
            .any(|b| b.log.as_ref().is_some_and(|c| c.text.contains("running")))
            .then_some(())
    })
    .await;
    h.mock.lock().unwrap().cancel.insert(id);
    wait_for("trainer and child gone", || {
        (!pid_alive(leader) && !pid_alive(child)).then_some(())
    })
    .await;
    h.shutdown.send(true).unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(10), h.agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(summary.jobs[0].1, JobOutcome::Cancelled);
    let m = h.mock.lock().unwrap();
    assert!(m.failed.is_empty() && m.completed.is_empty() && m.uploads.is_empty());
}

#[tokio::test]
async fn shutdown_stops_the_trainer_and_releases_the_job_as_retryable() {
    let h = start(vec![job(4, sh("./train.sh"))], STUBBORN).await;
    let (leader, child) = pids(h.work.path()).await;
    h.shutdown.send(true).unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(10), h.agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(summary.jobs[0].1, JobOutcome::Released);
    wait_for("trainer and child gone", || {
        (!pid_alive(leader) && !pid_alive(child)).then_some(())
    })
    .await;
    let m = h.mock.lock().unwrap();
    assert_eq!(m.failed.len(), 1);
    assert_eq!(m.failed[0].reason, "agent-shutdown");
    assert!(m.failed[0].retryable);
}

#[tokio::test]
async fn lost_lease_stops_the_trainer() {
    let j = job(5, sh("./train.sh"));
    let id = j.id.to_string();
    let h = start(vec![j], STUBBORN).await;
    let (leader, child) = pids(h.work.path()).await;
    h.mock.lock().unwrap().leases.remove(&id);
    wait_for("trainer and child gone", || {
        (!pid_alive(leader) && !pid_alive(child)).then_some(())
    })
    .await;
    h.shutdown.send(true).unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(10), h.agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(summary.jobs[0].1, JobOutcome::LeaseLost);
}

#[tokio::test]
async fn a_refused_worker_token_stops_the_agent_with_a_clear_error() {
    let app = Router::new().route(
        "/v1/worker/{name}",
        put(|| async { api_error(StatusCode::UNAUTHORIZED, "unauthorized") }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let work = tempfile::tempdir().unwrap();
    let (_tx, rx) = watch::channel(false);
    let agent = Agent::new(
        config(work.path(), work.path(), &url),
        Client::new(&url).unwrap(),
        capability(),
        rx,
        TrainerRegistry::default(),
    );
    let err = tokio::time::timeout(Duration::from_secs(10), agent.run())
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("worker_token"), "{err}");
}

#[tokio::test]
async fn concurrent_cuda_jobs_get_a_gpu_each_and_claims_advertise_only_what_is_free() {
    let mut cap = capability();
    cap.max_concurrent = 2;
    Advertise {
        gpus: Some(2),
        vram_gib: Some(24.0),
        ..Advertise::default()
    }
    .apply(&mut cap);
    let cuda = |n| {
        let mut j = job(n, sh("./train.sh"));
        j.constraints.require_cuda = true;
        j
    };
    let (a, b) = (cuda(6), cuda(7));
    let script = "#!/bin/sh\necho \"$CUDA_VISIBLE_DEVICES\" > \"gpu-$CIS490_JOB_ID\"\nwhile [ ! -e go ]; do sleep 0.05; done\n";
    let h = start_with(vec![a.clone(), b.clone()], script, cap).await;
    let gpu_of = |id: &JobId| {
        let path = h.work.path().join(format!("gpu-{id}"));
        move || {
            std::fs::read_to_string(&path)
                .ok()
                .map(|s| s.trim().to_string())
        }
    };
    let gpu_a = wait_for("job A's GPU", gpu_of(&a.id)).await;
    let gpu_b = wait_for("job B's GPU", gpu_of(&b.id)).await;
    assert_eq!(gpu_a, "0");
    assert_eq!(gpu_b, "1");
    {
        let m = h.mock.lock().unwrap();
        // The claim made while A ran offered only the other GPU, and said A was running.
        let second = &m.claims[1];
        assert_eq!(second.running_jobs, vec![a.id.clone()]);
        assert_eq!(
            second.gpus.iter().map(|g| g.index).collect::<Vec<_>>(),
            vec![1]
        );
        assert_eq!(second.gpus[0].vram_allocatable_mib, 24 * 1024);
        // With both slots taken the agent stops asking for work.
        assert_eq!(m.claims.len(), 2, "claimed with no free slot");
    }
    std::fs::write(h.work.path().join("go"), b"").unwrap();
    wait_for("both completions", || {
        (h.mock.lock().unwrap().completed.len() == 2).then_some(())
    })
    .await;
    h.shutdown.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), h.agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

const WRITES_OUTPUT: &str = "#!/bin/sh\necho weights > \"$CIS490_OUTPUT_DIR/w.txt\"\n";

#[tokio::test]
async fn upload_is_retried_after_server_errors() {
    let mock = Mock {
        pending: [job(8, sh("./train.sh"))].into(),
        upload_refusals: [StatusCode::SERVICE_UNAVAILABLE, StatusCode::BAD_GATEWAY].into(),
        ..Mock::default()
    };
    let h = start_mock_state(mock, WRITES_OUTPUT, capability()).await;
    wait_for("completion", || {
        h.mock.lock().unwrap().completed.first().cloned()
    })
    .await;
    assert_eq!(h.mock.lock().unwrap().upload_attempts, 3);
    h.shutdown.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), h.agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn upload_refused_as_too_large_fails_the_job_with_that_reason() {
    let mock = Mock {
        pending: [job(9, sh("./train.sh"))].into(),
        upload_refusals: [StatusCode::PAYLOAD_TOO_LARGE].into(),
        ..Mock::default()
    };
    let h = start_mock_state(mock, WRITES_OUTPUT, capability()).await;
    let failed = wait_for("failure", || h.mock.lock().unwrap().failed.first().cloned()).await;
    assert!(
        failed.reason.starts_with("upload refused"),
        "{}",
        failed.reason
    );
    assert!(failed.reason.contains("413"), "{}", failed.reason);
    assert!(!failed.retryable);
    {
        let m = h.mock.lock().unwrap();
        assert_eq!(m.upload_attempts, 1);
        assert!(m.completed.is_empty());
    }
    h.shutdown.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), h.agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_slot_freed_during_a_long_poll_claim_is_offered_at_once() {
    // 4 GiB to allocate, two slots, two jobs of 3 GiB: while A runs, the claim in flight
    // advertises 1 GiB, which B does not fit in; the server would hold that claim for the
    // whole (long) claim wait.
    let mut cap = capability();
    cap.max_concurrent = 2;
    let big = |n| {
        let mut j = job(n, sh("./train.sh"));
        j.constraints.min_ram_gib = 3.0;
        j
    };
    let (a, b) = (big(10), big(11));
    let mock = Mock {
        pending: [a.clone(), b.clone()].into(),
        long_poll: true,
        ..Mock::default()
    };
    let script = "#!/bin/sh\ntouch \"started-$CIS490_JOB_ID\"\nwhile [ ! -e go ]; do sleep 0.05; done\necho ok > \"$CIS490_OUTPUT_DIR/o.txt\"\n";
    let claim_wait = Duration::from_secs(40);
    let h = start_configured(mock, script, cap, |cfg| cfg.claim_wait = claim_wait).await;
    let started = |id: &JobId| h.work.path().join(format!("started-{id}"));
    wait_for("job A to start", || started(&a.id).exists().then_some(())).await;
    let advertised = wait_for("the claim made while A runs", || {
        let m = h.mock.lock().unwrap();
        let claim = m.claims.get(1)?;
        (claim.running_jobs == vec![a.id.clone()]).then_some(claim.ram_allocatable_mib)
    })
    .await;
    assert_eq!(
        advertised, 1024,
        "the claim while A runs offers what A left"
    );
    assert!(!started(&b.id).exists(), "B ran while A held its RAM");
    // A finishes while that claim waits; B must not wait for the claim to time out.
    let freed = Instant::now();
    std::fs::write(h.work.path().join("go"), b"").unwrap();
    wait_for("job B to start", || started(&b.id).exists().then_some(())).await;
    let waited = freed.elapsed();
    assert!(
        waited < claim_wait / 4,
        "B started {waited:?} after A's slot came free (claim wait {claim_wait:?})"
    );
    wait_for("both completions", || {
        (h.mock.lock().unwrap().completed.len() == 2).then_some(())
    })
    .await;
    {
        let m = h.mock.lock().unwrap();
        // The claim that took B advertised the freed RAM.
        let last_with_room = m
            .claims
            .iter()
            .rposition(|c| c.ram_allocatable_mib >= 3 * 1024)
            .unwrap();
        assert!(last_with_room >= 2, "claims: {:?}", m.claims.len());
    }
    h.shutdown.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), h.agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// A trainer that records its start and waits for `go-<job id>` before writing its output.
const WAITS_FOR_GO: &str = "#!/bin/sh\ntouch \"started-$CIS490_JOB_ID\"\nwhile [ ! -e \"go-$CIS490_JOB_ID\" ]; do sleep 0.02; done\necho \"$CIS490_JOB_ID\" > \"$CIS490_OUTPUT_DIR/o.txt\"\n";

fn go(h: &Harness, id: &JobId) {
    std::fs::write(h.work.path().join(format!("go-{id}")), b"").unwrap();
}

fn started(h: &Harness, id: &JobId) -> bool {
    h.work.path().join(format!("started-{id}")).exists()
}

#[tokio::test]
async fn a_slot_runs_the_next_trainer_while_the_previous_upload_is_in_flight() {
    let (a, b) = (job(20, sh("./train.sh")), job(21, sh("./train.sh")));
    let mock = Mock {
        pending: [a.clone(), b.clone()].into(),
        hold_uploads: true,
        ..Mock::default()
    };
    // One slot.
    let h = start_mock_state(mock, WAITS_FOR_GO, capability()).await;
    wait_for("A to start", || started(&h, &a.id).then_some(())).await;
    assert!(!started(&h, &b.id));
    go(&h, &a.id);
    wait_for("A's upload in flight", || {
        let m = h.mock.lock().unwrap();
        m.uploads_started.contains(&a.id.to_string()).then_some(())
    })
    .await;
    // A's upload is not answered, yet its slot already runs B's trainer.
    wait_for("B to start while A uploads", || {
        started(&h, &b.id).then_some(())
    })
    .await;
    {
        let m = h.mock.lock().unwrap();
        assert!(m.completed.is_empty(), "A completed before B started");
        assert!(m.uploads.is_empty());
    }
    h.mock.lock().unwrap().hold_uploads = false;
    go(&h, &b.id);
    wait_for("both completions", || {
        (h.mock.lock().unwrap().completed.len() == 2).then_some(())
    })
    .await;
    h.shutdown.send(true).unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(10), h.agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(summary.jobs.len(), 2);
    assert!(summary
        .jobs
        .iter()
        .all(|(_, o)| matches!(o, JobOutcome::Completed(_))));
    let m = h.mock.lock().unwrap();
    assert_eq!(m.uploads.len(), 2);
    assert!(m.failed.is_empty());
}

/// One slot: A's trainer is done and its upload held by the server; B's trainer runs.
async fn a_uploads_while_b_runs() -> (Harness, JobId, JobId) {
    let (a, b) = (job(22, sh("./train.sh")), job(23, sh("./train.sh")));
    let mock = Mock {
        pending: [a.clone(), b.clone()].into(),
        hold_uploads: true,
        ..Mock::default()
    };
    let h = start_mock_state(mock, WAITS_FOR_GO, capability()).await;
    wait_for("A to start", || started(&h, &a.id).then_some(())).await;
    go(&h, &a.id);
    wait_for("B to start while A uploads", || {
        let uploading = h
            .mock
            .lock()
            .unwrap()
            .uploads_started
            .contains(&a.id.to_string());
        (uploading && started(&h, &b.id)).then_some(())
    })
    .await;
    (h, a.id, b.id)
}

#[tokio::test]
async fn shutdown_during_a_background_upload_still_completes_that_job() {
    let (h, a, b) = a_uploads_while_b_runs().await;
    h.shutdown.send(true).unwrap();
    // The server answers within the grace period (500 ms here).
    tokio::time::sleep(Duration::from_millis(100)).await;
    h.mock.lock().unwrap().hold_uploads = false;
    let summary = tokio::time::timeout(Duration::from_secs(10), h.agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let outcome = |id: &JobId| {
        summary
            .jobs
            .iter()
            .find(|(j, _)| j == id)
            .map(|(_, o)| o.clone())
    };
    assert!(
        matches!(outcome(&a), Some(JobOutcome::Completed(_))),
        "{summary:?}"
    );
    assert_eq!(outcome(&b), Some(JobOutcome::Released));
    let m = h.mock.lock().unwrap();
    assert_eq!(m.completed.len(), 1);
    assert_eq!(m.failed.len(), 1);
    assert_eq!(m.failed[0].reason, "agent-shutdown");
    assert!(m.failed[0].retryable);
    // Every lease was handed back one way or the other.
    assert!(m.leases.is_empty(), "left leased: {:?}", m.leases.keys());
}

#[tokio::test]
async fn shutdown_during_a_background_upload_that_hangs_releases_that_job() {
    let (h, a, b) = a_uploads_while_b_runs().await;
    h.shutdown.send(true).unwrap();
    // The upload never answers: past the grace period it is abandoned and A released.
    let summary = tokio::time::timeout(Duration::from_secs(10), h.agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(summary.jobs.len(), 2);
    assert!(
        summary.jobs.iter().all(|(_, o)| *o == JobOutcome::Released),
        "{summary:?}"
    );
    let m = h.mock.lock().unwrap();
    assert!(m.completed.is_empty());
    let mut released: Vec<_> = m.failed.iter().map(|f| f.reason.as_str()).collect();
    released.sort();
    assert_eq!(released, ["agent-shutdown", "agent-shutdown"]);
    assert!(m.leases.is_empty(), "left leased: {:?}", m.leases.keys());
    let _ = (a, b);
}

#[tokio::test]
async fn the_lease_is_heartbeat_while_the_upload_is_in_flight() {
    let a = job(24, sh("./train.sh"));
    let mock = Mock {
        pending: [a.clone()].into(),
        hold_uploads: true,
        ..Mock::default()
    };
    let h = start_mock_state(
        mock,
        "echo done > \"$CIS490_OUTPUT_DIR/o.txt\"\n",
        capability(),
    )
    .await;
    wait_for("the upload in flight", || {
        let m = h.mock.lock().unwrap();
        m.uploads_started.contains(&a.id.to_string()).then_some(())
    })
    .await;
    let before = h.mock.lock().unwrap().heartbeats.len();
    // Several heartbeat periods (200 ms) pass with the upload unanswered: each one must
    // still renew the lease, or a long upload would outlive it.
    wait_for("heartbeats during the upload", || {
        (h.mock.lock().unwrap().heartbeats.len() >= before + 3).then_some(())
    })
    .await;
    h.mock.lock().unwrap().hold_uploads = false;
    wait_for("the completion", || {
        (h.mock.lock().unwrap().completed.len() == 1).then_some(())
    })
    .await;
    // And they stop once the job is completed.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after_complete = h.mock.lock().unwrap().heartbeats.len();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(h.mock.lock().unwrap().heartbeats.len(), after_complete);
    h.shutdown.send(true).unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), h.agent).await;
}

/// The steps of a progress series.
fn steps(points: &[Metrics]) -> Vec<String> {
    points.iter().map(|p| p["step"].to_string()).collect()
}

async fn stop(h: Harness) {
    h.shutdown.send(true).unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), h.agent).await;
}

#[tokio::test]
async fn progress_rides_on_heartbeats_and_metrics_and_the_series_on_the_completion() {
    // Each step waits longer than a heartbeat period, so heartbeats see the steps move.
    let script = "#!/bin/sh\nfor i in 1 2 3; do\n  echo \"{\\\"step\\\": $i, \\\"of\\\": 3, \\\"loss\\\": 0.$i}\" >> \"$CIS490_PROGRESS_FILE\"\n  sleep 0.5\ndone\necho '{\"accuracy\": 0.91, \"note\": \"ok\"}' > \"$CIS490_OUTPUT_DIR/metrics.json\"\n";
    let h = start(vec![job(1, sh("./train.sh"))], script).await;
    let done = wait_for("completion", || {
        h.mock.lock().unwrap().completed.first().cloned()
    })
    .await;
    let report = &done.report;
    assert_eq!(report.warnings, Vec::<String>::new());
    let metrics = report.metrics.as_ref().expect("metrics.json was sent");
    assert_eq!(metrics["accuracy"].as_f64(), Some(0.91));
    assert_eq!(metrics["note"], MetricValue::Text("ok".into()));
    assert_eq!(steps(&report.progress), ["1", "2", "3"]);
    let seen: Vec<String> = {
        let m = h.mock.lock().unwrap();
        m.heartbeats
            .iter()
            .filter_map(|hb| hb.progress.as_ref())
            .map(|p| p["step"].to_string())
            .collect()
    };
    assert!(
        seen.len() >= 2 && seen.first() != seen.last(),
        "heartbeats should carry the moving latest step: {seen:?}"
    );
    // The progress file is not part of the artifact.
    let bundle = h
        .mock
        .lock()
        .unwrap()
        .uploads
        .values()
        .next()
        .cloned()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.tar.zst");
    std::fs::write(&path, &bundle).unwrap();
    cis490_agent::pack::unpack(&path, &dir.path().join("x")).unwrap();
    assert!(dir.path().join("x/metrics.json").exists());
    assert!(!dir.path().join("x/progress.jsonl").exists());
    stop(h).await;
}

#[tokio::test]
async fn bad_metrics_and_progress_files_are_warnings_and_the_job_still_completes() {
    let script = "#!/bin/sh\necho 'not json' >> \"$CIS490_PROGRESS_FILE\"\necho '{\"step\": 1}' >> \"$CIS490_PROGRESS_FILE\"\necho '{\"accuracy\": [0.9]}' > \"$CIS490_OUTPUT_DIR/metrics.json\"\n";
    let h = start(vec![job(1, sh("./train.sh"))], script).await;
    let done = wait_for("completion", || {
        h.mock.lock().unwrap().completed.first().cloned()
    })
    .await;
    assert!(done.artifact_id.is_some());
    let report = &done.report;
    assert_eq!(report.metrics, None);
    assert_eq!(steps(&report.progress), ["1"]);
    assert_eq!(report.warnings.len(), 2, "{:?}", report.warnings);
    assert!(
        report.warnings[0].starts_with("progress file: skipped 1 of 2 lines"),
        "{:?}",
        report.warnings
    );
    assert!(
        report.warnings[1].starts_with("metrics.json is not a flat JSON object"),
        "{:?}",
        report.warnings
    );
    assert!(h.mock.lock().unwrap().failed.is_empty());
    stop(h).await;
}

#[tokio::test]
async fn a_failed_trainer_reports_its_progress_but_no_metrics() {
    let script = "#!/bin/sh\necho '{\"step\": 1, \"of\": 9}' >> \"$CIS490_PROGRESS_FILE\"\necho '{\"accuracy\": 0.5}' > \"$CIS490_OUTPUT_DIR/metrics.json\"\nexit 4\n";
    let h = start(vec![job(1, sh("./train.sh"))], script).await;
    let failed = wait_for("failure", || h.mock.lock().unwrap().failed.first().cloned()).await;
    assert_eq!(failed.exit_code, Some(4));
    assert_eq!(failed.report.metrics, None, "metrics count only at exit 0");
    assert_eq!(steps(&failed.report.progress), ["1"]);
    stop(h).await;
}

#[tokio::test]
async fn a_report_the_server_refuses_is_dropped_and_the_job_still_completes() {
    let script = "#!/bin/sh\necho '{\"accuracy\": 0.5}' > \"$CIS490_OUTPUT_DIR/metrics.json\"\n";
    let mock = Mock {
        pending: [job(1, sh("./train.sh"))].into(),
        refuse_metrics: true,
        ..Mock::default()
    };
    let h = start_mock_state(mock, script, capability()).await;
    let second = wait_for("the completion without the report", || {
        h.mock.lock().unwrap().completed.get(1).cloned()
    })
    .await;
    let first = h.mock.lock().unwrap().completed[0].clone();
    assert!(
        first.report.metrics.is_some(),
        "the first try carried the metrics"
    );
    assert_eq!(second.report.metrics, None);
    assert_eq!(second.report.warnings.len(), 1, "{:?}", second.report);
    assert!(
        second.report.warnings[0].starts_with("the server refused the trainer's metrics"),
        "{:?}",
        second.report.warnings
    );
    assert!(second.artifact_id.is_some());
    assert!(h.mock.lock().unwrap().failed.is_empty());
    stop(h).await;
}
