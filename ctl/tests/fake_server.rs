//! Runs the real `cis490ctl` against a small in-process stand-in for the reconciler that
//! serves the routes of `cis490_api::Client` from fixed data. It checks what the CLI does
//! with the answers: following the event log (`get jobs -w`, `wait`, `logs -f`), verifying
//! a download's sha256 (`pull`), and resolving artifact prefixes. The real server is
//! exercised by `tests/tests/ctl_e2e.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;
use cis490_api::*;
use sha2::{Digest, Sha256};

const BIN: &str = env!("CARGO_BIN_EXE_cis490ctl");
const WAIT: Duration = Duration::from_secs(20);

#[derive(Default)]
struct Data {
    jobs: Vec<JobView>,
    events: Vec<Event>,
    artifacts: Vec<(ArtifactView, Vec<u8>)>,
    /// Bytes served instead of the artifact's own (to fake a corrupt download).
    corrupt: bool,
    /// This many waiting event polls are answered 429 with `Retry-After: 1` (a server at
    /// its long-poll cap); when each was refused.
    busy_polls: u32,
    refused_at: Vec<Instant>,
}

#[derive(Clone)]
struct Fake {
    data: Arc<Mutex<Data>>,
    changed: Arc<tokio::sync::Notify>,
}

fn api_error(status: StatusCode, code: &str, message: String) -> Response {
    (
        status,
        Json(ApiError {
            error: code.into(),
            message,
        }),
    )
        .into_response()
}

impl Fake {
    fn find(&self, prefix: &str) -> Result<JobView, Box<Response>> {
        let data = self.data.lock().unwrap();
        let found: Vec<&JobView> = data
            .jobs
            .iter()
            .filter(|j| j.id.as_str().starts_with(prefix))
            .collect();
        match found.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(Box::new(api_error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no job matches {prefix}"),
            ))),
            many => Err(Box::new(api_error(
                StatusCode::CONFLICT,
                "ambiguous_id",
                format!(
                    "ID prefix {prefix} matches {} jobs: {}",
                    many.len(),
                    many.iter()
                        .map(|j| j.id.short())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ))),
        }
    }

    /// Changes a job the way the server would, appending an event and waking long-polls.
    fn set(&self, id: &JobId, change: impl FnOnce(&mut JobView), kind: &str) {
        {
            let mut data = self.data.lock().unwrap();
            let job = data.jobs.iter_mut().find(|j| &j.id == id).unwrap();
            change(job);
            let worker = job.worker.clone();
            let seq = data.events.len() as u64 + 1;
            data.events.push(Event {
                seq,
                at: Utc::now(),
                job_id: Some(id.clone()),
                worker,
                kind: kind.into(),
                message: kind.to_lowercase(),
            });
        }
        self.changed.notify_waiters();
    }
}

/// Pages by position: `after` is the index of the next job.
async fn jobs(State(f): State<Fake>, Query(filter): Query<JobFilter>) -> Json<Page<JobView>> {
    let data = f.data.lock().unwrap();
    let start: usize = filter.after.as_deref().map_or(0, |a| a.parse().unwrap());
    let limit = filter.limit.unwrap_or(500) as usize;
    let matching: Vec<JobView> = data
        .jobs
        .iter()
        .filter(|j| filter.status.is_none_or(|s| s == j.status))
        .map(|j| JobView {
            events: vec![],
            ..j.clone()
        })
        .collect();
    let end = (start + limit).min(matching.len());
    Json(Page {
        items: matching[start..end].to_vec(),
        next: (end < matching.len()).then(|| end.to_string()),
    })
}

async fn job(State(f): State<Fake>, Path(id): Path<String>) -> Response {
    match f.find(&id) {
        Ok(j) => Json(j).into_response(),
        Err(r) => *r,
    }
}

#[derive(serde::Deserialize)]
struct EventsQuery {
    since: u64,
    wait: u64,
}

async fn events(State(f): State<Fake>, Query(q): Query<EventsQuery>) -> Response {
    {
        let mut data = f.data.lock().unwrap();
        if q.wait > 0 && data.busy_polls > 0 {
            data.busy_polls -= 1;
            data.refused_at.push(Instant::now());
            let mut refusal = api_error(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_long_polls",
                "64 event long-polls are waiting already (max_event_waits)".into(),
            );
            refusal
                .headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
            return refusal;
        }
    }
    events_page(f, q).await.into_response()
}

async fn events_page(f: Fake, q: EventsQuery) -> Json<EventsPage> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(q.wait);
    loop {
        let notified = f.changed.notified();
        {
            let data = f.data.lock().unwrap();
            let events: Vec<Event> = data
                .events
                .iter()
                .filter(|e| e.seq > q.since)
                .cloned()
                .collect();
            let next = data.events.len() as u64;
            if !events.is_empty() || tokio::time::Instant::now() >= deadline {
                return Json(EventsPage {
                    events,
                    next: next.max(q.since),
                });
            }
        }
        let _ = tokio::time::timeout_at(deadline, notified).await;
    }
}

async fn artifacts(State(f): State<Fake>) -> Json<Page<ArtifactView>> {
    let data = f.data.lock().unwrap();
    Json(Page {
        items: data.artifacts.iter().map(|(a, _)| a.clone()).collect(),
        next: None,
    })
}

async fn download(State(f): State<Fake>, Path(id): Path<String>) -> Response {
    let data = f.data.lock().unwrap();
    match data
        .artifacts
        .iter()
        .find(|(a, _)| a.artifact_id.as_str() == id)
    {
        Some((_, bytes)) if data.corrupt => {
            let mut b = bytes.clone();
            b[0] ^= 0xff;
            b.into_response()
        }
        Some((_, bytes)) => bytes.clone().into_response(),
        None => api_error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no artifact {id}"),
        ),
    }
}

struct Server {
    url: String,
    fake: Fake,
    _runtime: tokio::runtime::Runtime,
}

fn id_of(c: char) -> String {
    std::iter::repeat_n(c, 64).collect()
}

fn sample_job(id: String, status: JobStatus) -> JobView {
    let now = Utc::now();
    JobView {
        id: JobId::parse(&id).unwrap(),
        model: "gbt".into(),
        mode: "realistic".into(),
        hyper: Hyper::new(),
        split_recipe: None,
        train_hosts: vec![],
        seed: 1,
        constraints: Constraints::default(),
        priority: 0,
        labels: BTreeMap::new(),
        timeout_s: None,
        env: BTreeMap::new(),
        status,
        worker: None,
        attempts: 0,
        max_attempts: 3,
        artifact_id: None,
        error: None,
        tombstoned: false,
        created_at: now,
        updated_at: now,
        started_at: None,
        finished_at: None,
        lease_expires_at: None,
        log_tail: None,
        events: vec![],
        progress: None,
        metrics: None,
    }
}

fn start() -> Server {
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let artifact_id = ArtifactId::parse(&hex::encode(Sha256::digest(&bytes))).unwrap();
    let mut done = sample_job(id_of('a'), JobStatus::Completed);
    done.artifact_id = Some(artifact_id.clone());
    let artifact = ArtifactView {
        artifact_id,
        job_id: done.id.clone(),
        attempt: Some(1),
        model: "gbt".into(),
        mode: "realistic".into(),
        worker: "gpu-box".into(),
        size_bytes: bytes.len() as u64,
        received_at: Utc::now(),
    };
    let data = Data {
        jobs: vec![
            done,
            sample_job(id_of('b'), JobStatus::Pending),
            sample_job(format!("c1{}", &id_of('0')[2..]), JobStatus::Pending),
            sample_job(format!("c2{}", &id_of('0')[2..]), JobStatus::Pending),
        ],
        events: vec![],
        artifacts: vec![(artifact, bytes)],
        corrupt: false,
        busy_polls: 0,
        refused_at: vec![],
    };
    let fake = Fake {
        data: Arc::new(Mutex::new(data)),
        changed: Arc::new(tokio::sync::Notify::new()),
    };
    let app = Router::new()
        .route("/v1/jobs", get(jobs))
        .route("/v1/job/{id}", get(job))
        .route("/v1/events", get(events))
        .route("/v1/models", get(artifacts))
        .route("/v1/model/{id}", get(download))
        .with_state(fake.clone());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    runtime.spawn(async move { axum::serve(listener, app).await });
    Server {
        url,
        fake,
        _runtime: runtime,
    }
}

fn ctl(server: &Server, args: &[&str], cwd: &std::path::Path) -> Output {
    Command::new(BIN)
        .arg("--server")
        .arg(&server.url)
        .args(args)
        .current_dir(cwd)
        .env_remove("CIS490_OPERATOR_TOKEN")
        .output()
        .unwrap()
}

/// A cis490ctl that keeps running; killed on drop.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn spawn(server: &Server, args: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .arg("--server")
            .arg(&server.url)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: vec![],
        }
    }

    /// Waits until some stdout line satisfies `want`.
    fn wait_line(&mut self, what: &str, want: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            if self.seen.iter().any(|l| want(l)) {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => self.seen.push(l),
                Err(_) => panic!("timed out waiting for {what}; saw {:?}", self.seen),
            }
        }
    }

    fn wait_exit(&mut self) -> (i32, String) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                self.child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                return (status.code().unwrap_or(-1), err);
            }
            assert!(Instant::now() < deadline, "cis490ctl did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn watch_prints_a_row_when_a_job_changes_status() {
    let server = start();
    let mut watch = Running::spawn(&server, &["get", "jobs", "-w"]);
    watch.wait_line("the first listing", |l| l.starts_with("c2000000000"));
    let listed = watch.seen.len();
    assert_eq!(listed, 5, "{:?}", watch.seen);
    let b = JobId::parse(&id_of('b')).unwrap();
    server.fake.set(
        &b,
        |j| {
            j.status = JobStatus::Claimed;
            j.worker = Some(WorkerName::parse("gpu-box").unwrap());
            j.attempts = 1;
        },
        "Claimed",
    );
    watch.wait_line("a row for the claimed job", |l| {
        l.starts_with("bbbbbbbbbbbb") && l.contains("claimed") && l.contains("gpu-box")
    });
    server
        .fake
        .set(&b, |j| j.status = JobStatus::Running, "Started");
    watch.wait_line("a row for the running job", |l| {
        l.starts_with("bbbbbbbbbbbb") && l.contains("running")
    });
    // Only the changed job is printed again.
    assert!(watch.seen[listed..]
        .iter()
        .all(|l| l.starts_with("bbbbbbbbbbbb")));
}

#[test]
fn followers_wait_out_a_servers_long_poll_cap_and_keep_following() {
    let server = start();
    server.fake.data.lock().unwrap().busy_polls = 2;
    let mut watch = Running::spawn(&server, &["get", "jobs", "-w"]);
    watch.wait_line("the first listing", |l| l.starts_with("c2000000000"));
    let deadline = Instant::now() + WAIT;
    while server.fake.data.lock().unwrap().busy_polls > 0 {
        assert!(Instant::now() < deadline, "the watch stopped polling");
        std::thread::sleep(Duration::from_millis(20));
    }
    let b = JobId::parse(&id_of('b')).unwrap();
    server
        .fake
        .set(&b, |j| j.status = JobStatus::Running, "Started");
    watch.wait_line("a row for the running job", |l| {
        l.starts_with("bbbbbbbbbbbb") && l.contains("running")
    });
    // It honoured Retry-After: 1 instead of polling again at once.
    let refused = server.fake.data.lock().unwrap().refused_at.clone();
    assert!(
        refused[1] - refused[0] >= Duration::from_millis(900),
        "{refused:?}"
    );

    // `wait` too: refused polls delay it, never fail it.
    server.fake.data.lock().unwrap().busy_polls = 1;
    let mut wait = Running::spawn(&server, &["wait", "bbbb", "--timeout", "1m"]);
    while server.fake.data.lock().unwrap().busy_polls > 0 {
        assert!(Instant::now() < deadline, "wait stopped polling");
        std::thread::sleep(Duration::from_millis(20));
    }
    server
        .fake
        .set(&b, |j| j.status = JobStatus::Completed, "Completed");
    let (code, err) = wait.wait_exit();
    assert_eq!(code, 0, "{err}");
}

#[test]
fn wait_fails_at_once_when_a_job_fails_and_succeeds_when_all_complete() {
    let server = start();
    let b = JobId::parse(&id_of('b')).unwrap();
    let c1 = JobId::parse(&format!("c1{}", &id_of('0')[2..])).unwrap();

    let mut wait = Running::spawn(&server, &["wait", "bbbb", "c1", "--timeout", "10m"]);
    // Give the waiter something to follow before the decisive change.
    server
        .fake
        .set(&b, |j| j.status = JobStatus::Running, "Started");
    server.fake.set(
        &c1,
        |j| {
            j.status = JobStatus::Failed;
            j.attempts = 3;
            j.error = Some(JobError {
                reason: "trainer exited with status 2".into(),
                exit_code: Some(2),
                log_tail: None,
            });
        },
        "Failed",
    );
    let (code, err) = wait.wait_exit();
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("job c10000000000 failed after 3/3 attempts: trainer exited with status 2 (exit code 2)"),
        "{err}"
    );

    let mut wait = Running::spawn(&server, &["wait", "bbbb", "--timeout", "1m"]);
    server
        .fake
        .set(&b, |j| j.status = JobStatus::Completed, "Completed");
    let (code, err) = wait.wait_exit();
    assert_eq!(code, 0, "{err}");

    let dir = tempfile::tempdir().unwrap();
    let out = ctl(&server, &["wait", "c2", "--timeout", "1s"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("timed out after 1s") && err.contains("c20000000000 (pending)"),
        "{err}"
    );
}

#[test]
fn logs_follow_prints_new_output_until_the_job_ends() {
    let server = start();
    let b = JobId::parse(&id_of('b')).unwrap();
    server.fake.set(
        &b,
        |j| {
            j.status = JobStatus::Running;
            j.log_tail = Some("epoch 1\n".into());
        },
        "Started",
    );
    let mut logs = Running::spawn(&server, &["logs", "-f", "bbb"]);
    logs.wait_line("the first tail", |l| l == "epoch 1");
    server.fake.set(
        &b,
        |j| {
            j.status = JobStatus::Completed;
            j.log_tail = Some("epoch 1\nepoch 2\ndone\n".into());
        },
        "Completed",
    );
    logs.wait_line("the new output", |l| l == "done");
    let (code, err) = logs.wait_exit();
    assert_eq!(code, 0, "{err}");
    assert_eq!(logs.seen, ["epoch 1", "epoch 2", "done"]);
}

#[test]
fn pull_verifies_the_sha256_and_resolves_job_and_artifact_prefixes() {
    let server = start();
    let dir = tempfile::tempdir().unwrap();
    let artifact = {
        let data = server.fake.data.lock().unwrap();
        data.artifacts[0].0.artifact_id.clone()
    };
    // By job prefix, default file name.
    let out = ctl(&server, &["pull", "aaaa"], dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Named after the job asked for.
    let file = dir.path().join("gbt_realistic_aaaaaaaaaaaa.tar.zst");
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(hex::encode(Sha256::digest(&bytes)), artifact.as_str());
    // By artifact prefix, chosen file.
    let chosen = dir.path().join("x.tar.zst");
    let out = ctl(
        &server,
        &[
            "pull",
            &artifact.as_str()[..8],
            "-o",
            chosen.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&chosen).unwrap(), bytes);
    // A pending job has no artifact.
    let out = ctl(&server, &["pull", "bbbb"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no artifact (status pending)"));
    // Corrupt bytes: an error and no file left behind.
    server.fake.data.lock().unwrap().corrupt = true;
    let bad = dir.path().join("bad.tar.zst");
    let out = ctl(
        &server,
        &["pull", &artifact.as_str()[..8], "-o", bad.to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("do not match"));
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("bad"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn ambiguous_job_prefix_lists_the_candidates() {
    let server = start();
    let dir = tempfile::tempdir().unwrap();
    let out = ctl(&server, &["logs", "c"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("c10000000000") && err.contains("c20000000000"),
        "{err}"
    );
}
