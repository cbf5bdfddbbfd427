//! The agent's loop, as two explicit state machines (after buildomat's agent):
//!
//! * [`AgentStage`]: report node status -> long-poll claim (advertising what is free) ->
//!   start the job in its own task -> claim again while slots are free -> on SIGTERM stop
//!   claiming and wait for every job to release itself.
//! * [`JobStage`], one per claimed job: start the trainer -> run it, heartbeating ->
//!   pack -> upload -> complete, or report the failure; a cancel, a lost lease or shutdown
//!   stops the trainer's process group on the way.
//!
//! A job holds its slot only while its trainer runs: once the trainer has exited, the slot
//! starts the next job while the previous one packs, uploads and reports in its own task
//! (bounded: see [`Slots::has_room`]). Shutdown waits for those tasks like any other, so a
//! job past its trainer still completes, or is released, before the agent exits.
//!
//! The server being unreachable never stops a trainer: heartbeats, uploads and reports are
//! retried with capped exponential backoff and jitter until it answers.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cis490_api::results::MAX_WARNING_CHARS;
use cis490_api::{
    AgentInstance, ArtifactId, ClaimRequest, ClaimResponse, Client, ClientError, CompleteRequest,
    FailRequest, FailureCause, HeartbeatRequest, JobId, JobSpec, Lease, TrainerReport,
    UploadReceipt, WorkerName, MAX_LOG_CHUNK_BYTES,
};
use rand::Rng;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use crate::config::AgentConfig;
use crate::lease_keeper::{KeepLease, LeaseKeeper};
use crate::log_ship::LogShipper;
use crate::pack::{self, Packed};
use crate::runner::{self, Attempt, RunError, Trainer};
use crate::slots::{Allocation, Slots};
use crate::{metrics_file, progress};

/// The reason a job released on shutdown carries, so the server requeues it at once.
pub const SHUTDOWN_REASON: &str = "agent-shutdown";

/// How often a running trainer's new output is sent (with a heartbeat) when there is any,
/// so `cis490ctl logs -f` follows it closely.
const LOG_SHIP_INTERVAL: Duration = Duration::from_secs(1);

/// The first heartbeat (which shows the job running) goes out once the trainer has run
/// this long: a trainer that ends sooner is reported by its completion or failure alone,
/// which saves the server a request and a commit for each short job.
const FIRST_HEARTBEAT_AFTER: Duration = Duration::from_millis(500);
/// How long one API call (other than a long-poll claim or an upload) may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long reports may take once shutdown has stopped the trainers.
const SHUTDOWN_REPORT_WINDOW: Duration = Duration::from_secs(5);
/// Longest wait between retries of a claim or a report while the server is away.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a claim abandoned because a slot came free may still take to land, so that a
/// job the server is handing over right then is taken rather than left leased to nobody.
const CLAIM_SETTLE: Duration = Duration::from_millis(300);

/// Capped exponential backoff with jitter: attempt 1 waits about `base`, each further
/// attempt doubles it up to `cap`; the wait is drawn from [half, full] so a fleet that lost
/// its server does not come back in lockstep.
pub fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let exp = base.saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(16)));
    let full = exp.min(cap).max(Duration::from_millis(10));
    let factor = rand::rng().random_range(0.5..=1.0);
    full.mul_f64(factor)
}

/// Shared state of the agent's tasks. Locks are std mutexes, never held across `.await`.
#[derive(Clone)]
struct Shared {
    cfg: Arc<AgentConfig>,
    client: Client,
    slots: Arc<Mutex<Slots>>,
    trainers: TrainerRegistry,
    launch: Arc<runner::Launch>,
    /// Bumped whenever a trainer slot comes free, so a waiting claim (which advertised
    /// less) is renewed and a full agent claims again.
    freed: Arc<watch::Sender<u64>>,
}

/// Pids (process groups) of running trainers, so a second SIGINT can kill them at once.
#[derive(Clone, Default)]
pub struct TrainerRegistry(Arc<Mutex<BTreeSet<u32>>>);

impl TrainerRegistry {
    fn lock(&self) -> MutexGuard<'_, BTreeSet<u32>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self, pid: u32) {
        self.lock().insert(pid);
    }

    fn remove(&self, pid: u32) {
        self.lock().remove(&pid);
    }

    /// SIGKILLs every running trainer's tree.
    pub fn kill_all(&self) {
        for pid in self.lock().iter() {
            runner::kill_tree(*pid, true);
        }
    }
}

impl Shared {
    fn slots(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn worker(&self) -> &WorkerName {
        &self.cfg.name
    }

    fn slot_freed(&self) {
        self.freed.send_modify(|n| *n = n.wrapping_add(1));
    }

    async fn report_node(&self) -> Result<(), ClientError> {
        let status = self.slots().node_status();
        self.send_node_status(status).await
    }

    /// The last node report, as the agent exits: frees the worker name at once for the
    /// next agent (a restart), instead of after the server's `node_stale_after_s`.
    async fn sign_off(&self) {
        let mut status = self.slots().node_status();
        let Some(instance) = status.instance.as_mut() else {
            return;
        };
        instance.stopping = true;
        match tokio::time::timeout(SHUTDOWN_REPORT_WINDOW, self.send_node_status(status)).await {
            Ok(Ok(())) => tracing::info!(worker = %self.worker(), "signed off: the name is free"),
            Ok(Err(e)) => tracing::warn!(
                "could not sign off ({e}); the name frees once the server sees this agent stale"
            ),
            Err(_) => tracing::warn!(
                "could not sign off in time; the name frees once the server sees this agent stale"
            ),
        }
    }

    async fn send_node_status(&self, status: cis490_api::Capability) -> Result<(), ClientError> {
        match tokio::time::timeout(
            CALL_TIMEOUT,
            self.client.report_node(self.worker(), &status),
        )
        .await
        {
            Ok(r) => r.map(|_| ()),
            Err(_) => Err(timeout_error(&self.client)),
        }
    }
}

/// The error of a call that took too long; the next call goes to the next server, if any.
fn timeout_error(client: &Client) -> ClientError {
    let url = client.base_url().to_string();
    client.gave_up_waiting();
    ClientError::Protocol {
        url,
        message: "no answer in time".into(),
    }
}

/// How long to wait before retrying after `e`: the backoff, or longer when the server's
/// `Retry-After` asks for it (429/503 at one of its caps), never past [`MAX_BACKOFF`].
fn retry_wait(e: &ClientError, backoff: Duration) -> Duration {
    match e.retry_after() {
        Some(after) => backoff.max(after.min(MAX_BACKOFF)),
        None => backoff,
    }
}

/// Transient: the call may succeed later (unreachable, 5xx, 429, or no answer in time).
fn is_transient(e: &ClientError) -> bool {
    e.is_transient()
        || matches!(e, ClientError::Protocol { message, .. } if message == "no answer in time")
}

/// The job is no longer ours: its lease moved on, or the server no longer has it.
fn is_gone(e: &ClientError) -> bool {
    e.is_lease_lost() || matches!(e.code(), Some("not_found") | Some("invalid_state"))
}

/// The server will not take this agent's calls: a wrong or missing worker token.
fn is_refusal(e: &ClientError) -> bool {
    matches!(e.status().map(|s| s.as_u16()), Some(401) | Some(403))
}

/// Another live agent process holds this agent's worker name (409 `name_in_use`).
fn is_name_in_use(e: &ClientError) -> bool {
    e.code() == Some("name_in_use")
}

/// A fresh instance for this agent process: a random ID and the process ID.
pub fn new_instance() -> AgentInstance {
    let bytes: [u8; 8] = rand::rng().random();
    AgentInstance {
        id: bytes.iter().map(|b| format!("{b:02x}")).collect(),
        pid: Some(std::process::id()),
        stopping: false,
        replaces: None,
    }
}

/// Why the agent stopped without being asked to.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Another live agent holds the worker name; retrying cannot help until it stops.
    #[error("{0}")]
    NameInUse(String),
    /// The server refused the agent's node report (401/403): retrying cannot help.
    #[error(
        "the reconciler refused this worker ({0}); check its credentials: the worker token \
         (worker_token_file, --worker-token-file or CIS490_WORKER_TOKEN) and that it was issued \
         for this --name, or --cert-file and --key-file when the server requires client \
         certificates"
    )]
    Refused(String),
    /// TLS with the server failed before it ever heard of this agent: a wrong CA file or
    /// client certificate, which retrying cannot fix. The message names the fix.
    #[error("{0}")]
    Tls(String),
}

/// How a job ended for this agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    Completed(ArtifactId),
    /// Reported as failed (the reason sent).
    Failed(String),
    /// An operator cancelled it; output discarded.
    Cancelled,
    /// The lease moved on (expired, or the job is gone); output discarded.
    LeaseLost,
    /// Released on shutdown (`agent-shutdown`, retryable).
    Released,
    /// The server refused a report for another reason, or could not be told in time.
    Unreported(String),
}

impl std::fmt::Display for JobOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobOutcome::Completed(a) => write!(f, "completed (artifact {})", a.short()),
            JobOutcome::Failed(reason) => write!(f, "failed: {reason}"),
            JobOutcome::Cancelled => f.write_str("cancelled; output discarded"),
            JobOutcome::LeaseLost => f.write_str("lease lost; output discarded"),
            JobOutcome::Released => f.write_str("released for another worker (agent-shutdown)"),
            JobOutcome::Unreported(why) => write!(f, "not reported: {why}"),
        }
    }
}

/// What happened while a trainer runs.
enum RunEvent {
    Exited(std::io::Result<std::process::ExitStatus>),
    Shutdown,
    BeatDue,
    /// Time to send new log output, if there is any.
    LogDue,
    /// The heartbeat's answer: `Ok(true)` means cancelled.
    Answer(Result<bool, ClientError>),
    /// The job's `timeout_s` has passed.
    TimedOut,
}

/// The stages of one job.
enum JobStage {
    Start,
    Run(Trainer),
    Pack,
    Upload(Packed),
    Complete(ArtifactId, Option<UploadReceipt>),
    Report(FailRequest),
    Done(JobOutcome),
}

/// One claimed job and everything it needs.
struct JobRun {
    shared: Shared,
    spec: JobSpec,
    lease: Lease,
    allocation: Allocation,
    attempt: Option<Attempt>,
    shutdown: watch::Receiver<bool>,
    /// Set once shutdown stopped the trainer: reports get a short window after it.
    report_deadline: Option<Instant>,
    /// The trainer is gone and its slot handed back for the next job.
    slot_freed: bool,
    /// Streams the trainer's log to the server (set once the attempt dir exists).
    log: Option<LogShipper>,
    /// What the trainer's files said, read once it exited (metrics only at exit 0).
    report: TrainerReport,
}

impl JobRun {
    fn fail(&self, reason: String, exit_code: Option<i32>, retryable: bool) -> FailRequest {
        FailRequest {
            worker: self.shared.worker().clone(),
            lease: self.lease.clone(),
            reason,
            exit_code,
            log_tail: self.attempt.as_ref().and_then(Attempt::log_tail),
            retryable,
            cause: Default::default(),
            report: TrainerReport {
                metrics: None,
                ..self.report.clone()
            },
        }
    }

    /// A failure of this host, not of the trainer: it could not be started at all. The
    /// server gives the job to another worker without using an attempt and flags this one.
    fn host_failure(&self, reason: String) -> FailRequest {
        FailRequest {
            cause: FailureCause::Host,
            ..self.fail(reason, None, false)
        }
    }

    fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Drives the job to its end.
    async fn drive(mut self) -> JobOutcome {
        let mut stage = JobStage::Start;
        let mut keeper: Option<LeaseKeeper> = None;
        loop {
            stage = match stage {
                JobStage::Start => self.start(),
                JobStage::Run(trainer) => self.run(trainer).await,
                JobStage::Pack => self.pack().await,
                JobStage::Upload(packed) => self.upload(packed).await,
                JobStage::Complete(artifact, receipt) => self.complete(artifact, receipt).await,
                JobStage::Report(req) => self.report(req).await,
                JobStage::Done(outcome) => {
                    drop(keeper);
                    self.clean_up(&outcome);
                    return outcome;
                }
            };
            if !matches!(stage, JobStage::Run(_)) {
                self.free_slot();
                if keeper.is_none() && !matches!(stage, JobStage::Done(_)) {
                    keeper = Some(self.keep_lease());
                }
            }
        }
    }

    /// Heartbeats the lease while the job packs, uploads and reports.
    fn keep_lease(&self) -> LeaseKeeper {
        LeaseKeeper::start(KeepLease {
            client: self.shared.client.clone(),
            worker: self.shared.worker().clone(),
            job: self.spec.id.clone(),
            lease: self.lease.clone(),
            period: self.shared.cfg.heartbeat,
            call_timeout: CALL_TIMEOUT,
            log: self.log.clone(),
        })
    }

    /// Past the trainer (it exited, was stopped, or never started): the slot, GPU and RAM
    /// go to the next job while this one finishes.
    fn free_slot(&mut self) {
        if self.slot_freed {
            return;
        }
        self.slot_freed = true;
        if self.shared.slots().trainer_done(&self.spec.id) {
            self.shared.slot_freed();
        }
    }

    fn start(&mut self) -> JobStage {
        let cfg = &self.shared.cfg;
        let attempt = match Attempt::prepare(&cfg.state_dir, &self.spec, &self.lease) {
            Ok(a) => a,
            Err(e) => return JobStage::Report(self.host_failure(format!("agent: {e}"))),
        };
        self.attempt = Some(attempt.clone());
        self.log = Some(LogShipper::new(&attempt.log_path));
        let argv = match runner::trainer_argv(&self.spec.command, &self.spec.hyper) {
            Ok(argv) => argv,
            Err(e) => return JobStage::Report(self.fail(e.to_string(), None, false)),
        };
        let env = runner::trainer_env(&self.spec, &self.lease, &attempt, &self.allocation.gpus);
        let launch = &self.shared.launch;
        match Trainer::spawn(&argv, &env, &cfg.work_dir, &attempt.log_path, launch) {
            Ok(trainer) => {
                tracing::info!(job = %self.spec.id.short(), pid = trainer.pid(), gpus = ?self.allocation.gpus, "trainer started");
                self.shared.trainers.add(trainer.pid());
                JobStage::Run(trainer)
            }
            // The program is missing or not executable here, the work dir unreadable, the
            // log not writable: this host cannot run trainers, whatever the job is.
            Err(e @ (RunError::Spawn { .. } | RunError::Prepare { .. })) => {
                JobStage::Report(self.host_failure(e.to_string()))
            }
            Err(e) => JobStage::Report(self.fail(e.to_string(), None, false)),
        }
    }

    /// Stops the trainer's tree and forgets it.
    async fn stop(&mut self, trainer: &mut Trainer) {
        trainer.stop(self.shared.cfg.grace).await;
        self.shared.trainers.remove(trainer.pid());
    }

    /// One heartbeat with the next piece of the log. `trainer_done`: the log is complete.
    async fn heartbeat_with_log(&self, trainer_done: bool) -> Result<bool, ClientError> {
        let req = HeartbeatRequest {
            worker: self.shared.worker().clone(),
            lease: self.lease.clone(),
            log_tail: None,
            log: self.log.as_ref().and_then(|l| l.next_chunk(trainer_done)),
            progress: self
                .attempt
                .as_ref()
                .and_then(|a| progress::latest_point(&a.progress_path())),
        };
        let client = &self.shared.client;
        match tokio::time::timeout(CALL_TIMEOUT, client.heartbeat(&self.spec.id, &req)).await {
            Ok(Ok(resp)) => {
                if let Some(log) = &self.log {
                    log.ack(resp.log_offset);
                }
                Ok(resp.cancel)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(timeout_error(client)),
        }
    }

    async fn heartbeat(&self) -> Result<bool, ClientError> {
        self.heartbeat_with_log(false).await
    }

    /// Sends the rest of the trainer's log (it has exited), so the server holds all of it
    /// before the job is reported; gives up on a lost lease or after a few failed tries
    /// (the lease keeper sends what is left with its heartbeats).
    async fn flush_log(&self) {
        let Some(log) = &self.log else { return };
        let mut failures = 0u32;
        // Each chunk moves the offset on, so this many calls send any file that is there.
        let mut calls = log.unsent() / MAX_LOG_CHUNK_BYTES + 3;
        while log.unsent() > 0 && calls > 0 {
            calls -= 1;
            let before = log.acked();
            match self.heartbeat_with_log(true).await {
                Ok(_) if log.acked() > before => failures = 0,
                // Nothing moved: a server without log streaming, or nothing it can take.
                Ok(_) => return,
                Err(e) if is_gone(&e) => return,
                Err(e) => {
                    failures += 1;
                    if failures >= 3 || self.shutting_down() {
                        tracing::warn!(job = %self.spec.id.short(), "could not send the end of the log ({e}); the lease keeper tries again");
                        return;
                    }
                    tokio::time::sleep(backoff(failures, Duration::from_millis(200), MAX_BACKOFF))
                        .await;
                }
            }
        }
    }

    async fn run(&mut self, mut trainer: Trainer) -> JobStage {
        let period = self.shared.cfg.heartbeat;
        let started = Instant::now();
        let mut tick =
            tokio::time::interval_at(started + FIRST_HEARTBEAT_AFTER.min(period), period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut log_tick = tokio::time::interval_at(started + LOG_SHIP_INTERVAL, LOG_SHIP_INTERVAL);
        log_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut failures = 0u32;
        let mut retry_at: Option<Instant> = None;
        let mut shutdown = self.shutdown.clone();
        // Counted from here, just after the spawn: the limit is on the trainer's run.
        let timeout_at = self
            .spec
            .timeout_s
            .map(|s| Instant::now() + Duration::from_secs(s));
        loop {
            // Wait for the next heartbeat, then send it; the trainer's exit and shutdown are
            // watched throughout, so a slow server never delays either.
            let event = tokio::select! {
                status = trainer.wait() => RunEvent::Exited(status),
                _ = shutdown_signalled(&mut shutdown) => RunEvent::Shutdown,
                _ = sleep_until_opt(timeout_at), if timeout_at.is_some() => RunEvent::TimedOut,
                _ = tick.tick(), if retry_at.is_none() => RunEvent::BeatDue,
                _ = log_tick.tick(), if retry_at.is_none() => RunEvent::LogDue,
                _ = sleep_until_opt(retry_at), if retry_at.is_some() => RunEvent::BeatDue,
            };
            let event = match event {
                // New output goes out between heartbeats; without any, nothing is sent.
                RunEvent::LogDue if self.log.as_ref().is_some_and(|l| l.unsent() > 0) => {
                    RunEvent::BeatDue
                }
                other => other,
            };
            let event = match event {
                RunEvent::BeatDue => tokio::select! {
                    status = trainer.wait() => RunEvent::Exited(status),
                    _ = shutdown_signalled(&mut shutdown) => RunEvent::Shutdown,
                    _ = sleep_until_opt(timeout_at), if timeout_at.is_some() => RunEvent::TimedOut,
                    answer = self.heartbeat() => RunEvent::Answer(answer),
                },
                other => other,
            };
            match event {
                RunEvent::BeatDue | RunEvent::LogDue => {}
                RunEvent::Exited(status) => {
                    self.shared.trainers.remove(trainer.pid());
                    self.flush_log().await;
                    let success = matches!(&status, Ok(s) if s.success());
                    self.read_report(success).await;
                    return match status {
                        Ok(s) if s.success() => JobStage::Pack,
                        Ok(s) => JobStage::Report(self.exit_failure(s)),
                        Err(e) => JobStage::Report(self.fail(
                            format!("agent lost the trainer: {e}"),
                            None,
                            true,
                        )),
                    };
                }
                RunEvent::Shutdown => {
                    tracing::info!(job = %self.spec.id.short(), "shutdown: stopping the trainer");
                    self.stop(&mut trainer).await;
                    self.report_deadline = Some(Instant::now() + SHUTDOWN_REPORT_WINDOW);
                    return JobStage::Report(self.fail(SHUTDOWN_REASON.into(), None, true));
                }
                RunEvent::TimedOut => {
                    let limit = self.spec.timeout_s.unwrap_or_default();
                    tracing::info!(job = %self.spec.id.short(), "timed out after {limit} s: stopping the trainer");
                    self.stop(&mut trainer).await;
                    self.flush_log().await;
                    self.read_report(false).await;
                    // A trainer failure: retried only as `retries_on_failure` says (like
                    // Slurm's TIMEOUT, not retried by default).
                    return JobStage::Report(self.fail(timeout_reason(limit), None, false));
                }
                RunEvent::Answer(Ok(true)) => {
                    tracing::info!(job = %self.spec.id.short(), "cancelled by an operator: stopping the trainer");
                    self.stop(&mut trainer).await;
                    self.flush_log().await;
                    return JobStage::Done(JobOutcome::Cancelled);
                }
                RunEvent::Answer(Ok(false)) => {
                    if failures > 0 {
                        tracing::info!(job = %self.spec.id.short(), "server is back");
                    }
                    failures = 0;
                    retry_at = None;
                    tick.reset();
                    if self
                        .log
                        .as_ref()
                        .is_some_and(|l| l.unsent() >= MAX_LOG_CHUNK_BYTES)
                    {
                        // The trainer writes faster than one chunk a tick: keep up.
                        log_tick.reset_immediately();
                    }
                }
                RunEvent::Answer(Err(e)) if is_gone(&e) => {
                    tracing::warn!(job = %self.spec.id.short(), "lease lost ({e}): stopping the trainer");
                    self.stop(&mut trainer).await;
                    return JobStage::Done(JobOutcome::LeaseLost);
                }
                RunEvent::Answer(Err(e)) => {
                    failures += 1;
                    let wait = retry_wait(
                        &e,
                        backoff(failures, Duration::from_secs(1), period.min(MAX_BACKOFF)),
                    );
                    tracing::warn!(job = %self.spec.id.short(), "heartbeat failed ({e}); trainer keeps running, retry in {wait:?}");
                    retry_at = Some(Instant::now() + wait);
                }
            }
        }
    }

    /// Reads the trainer's progress file and, after exit 0, its `metrics.json` (off the
    /// async threads: a long progress file is read whole). Bad files become warnings.
    async fn read_report(&mut self, success: bool) {
        let Some(attempt) = self.attempt.clone() else {
            return;
        };
        let read = tokio::task::spawn_blocking(move || {
            let history = progress::read_history(&attempt.progress_path());
            let metrics = success.then(|| metrics_file::read_metrics(&attempt.output_dir));
            (history, metrics.unwrap_or_default())
        })
        .await;
        let (history, metrics) = match read {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!(job = %self.spec.id.short(), "reading the trainer's report failed: {e}");
                return;
            }
        };
        let warnings: Vec<String> = [history.warning, metrics.warning]
            .into_iter()
            .flatten()
            .map(|w| w.chars().take(MAX_WARNING_CHARS).collect())
            .collect();
        for w in &warnings {
            tracing::warn!(job = %self.spec.id.short(), "{w}");
        }
        self.report = TrainerReport {
            metrics: metrics.metrics,
            progress: history.points,
            warnings,
        };
    }

    fn exit_failure(&self, status: std::process::ExitStatus) -> FailRequest {
        let last_line = self
            .attempt
            .as_ref()
            .and_then(Attempt::log_tail)
            .and_then(|t| {
                t.lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .map(str::to_string)
            })
            .map(|l| format!(": {}", l.chars().take(200).collect::<String>()))
            .unwrap_or_default();
        let why = match status.code() {
            Some(code) => format!("trainer exited with code {code}"),
            None => signal_text(&status),
        };
        self.fail(format!("{why}{last_line}"), status.code(), false)
    }

    async fn pack(&mut self) -> JobStage {
        let Some(attempt) = self.attempt.clone() else {
            return JobStage::Report(self.fail("agent: no attempt dir".into(), None, true));
        };
        let bundle = attempt.dir.join("bundle.tar.zst");
        let output = attempt.output_dir.clone();
        match tokio::task::spawn_blocking(move || pack::pack_output(&output, &bundle)).await {
            Ok(Ok(packed)) => JobStage::Upload(packed),
            Ok(Err(e)) => {
                JobStage::Report(self.fail(format!("packing the output failed: {e}"), None, false))
            }
            Err(e) => JobStage::Report(self.fail(format!("packing task failed: {e}"), None, true)),
        }
    }

    /// Waits `attempt`'s backoff (longer when `error` carries a `Retry-After`); false when
    /// shutdown came first.
    async fn wait_retry(&mut self, attempt: u32, error: &ClientError) -> bool {
        if self.shutting_down() {
            return false;
        }
        let wait = retry_wait(
            error,
            backoff(attempt, Duration::from_millis(500), MAX_BACKOFF),
        );
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            _ = shutdown_signalled(&mut shutdown) => false,
        }
    }

    fn release_on_shutdown(&mut self) -> JobStage {
        self.report_deadline = Some(Instant::now() + SHUTDOWN_REPORT_WINDOW);
        JobStage::Report(self.fail(SHUTDOWN_REASON.into(), None, true))
    }

    async fn upload(&mut self, packed: Packed) -> JobStage {
        let client = self.shared.client.clone();
        let mut tries = 0u32;
        loop {
            tries += 1;
            let body = match packed.body().await {
                Ok(b) => b,
                Err(e) => {
                    return JobStage::Report(self.fail(
                        format!("reading the bundle failed: {e}"),
                        None,
                        true,
                    ))
                }
            };
            let (id, worker, lease) = (
                self.spec.id.clone(),
                self.shared.worker().clone(),
                self.lease.clone(),
            );
            let upload = client.upload_with_receipt(&id, &worker, &lease, &packed.sha256, body);
            tokio::pin!(upload);
            let mut shutdown = self.shutdown.clone();
            // On shutdown an upload in flight gets the grace period to finish; a slower one
            // is abandoned and the job released, so the agent still stops in time.
            let result = tokio::select! {
                r = &mut upload => r,
                _ = shutdown_signalled(&mut shutdown) => {
                    match tokio::time::timeout(self.shared.cfg.grace, &mut upload).await {
                        Ok(r) => r,
                        Err(_) => return self.release_on_shutdown(),
                    }
                }
            };
            match result {
                Ok(resp) if resp.artifact_id.as_str() == packed.sha256 => {
                    tracing::info!(job = %self.spec.id.short(), artifact = %resp.artifact_id.short(), bytes = resp.size_bytes, "uploaded");
                    return JobStage::Complete(resp.artifact_id, resp.receipt);
                }
                Ok(resp) => {
                    return JobStage::Report(self.fail(
                        format!(
                            "server stored artifact {} for a bundle with sha256 {}",
                            resp.artifact_id, packed.sha256
                        ),
                        None,
                        true,
                    ))
                }
                Err(e) if e.is_lease_lost() => return JobStage::Done(JobOutcome::LeaseLost),
                Err(e) if is_transient(&e) => {
                    tracing::warn!(job = %self.spec.id.short(), "upload failed ({e}); retrying");
                    if !self.wait_retry(tries, &e).await {
                        return self.release_on_shutdown();
                    }
                }
                Err(e) => {
                    return JobStage::Report(self.fail(format!("upload refused: {e}"), None, false))
                }
            }
        }
    }

    /// `receipt`: the upload's, when the server gave one (it records the upload with the
    /// completion).
    async fn complete(&mut self, artifact: ArtifactId, receipt: Option<UploadReceipt>) -> JobStage {
        // Whatever the lease keeper has not sent yet: once completed, the lease is gone.
        self.flush_log().await;
        let mut req = CompleteRequest {
            worker: self.shared.worker().clone(),
            lease: self.lease.clone(),
            artifact_id: Some(artifact.clone()),
            upload: receipt,
            report: self.report.clone(),
        };
        let client = self.shared.client.clone();
        let mut tries = 0u32;
        loop {
            tries += 1;
            let result = match tokio::time::timeout(
                CALL_TIMEOUT,
                client.complete(&self.spec.id, &req),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => Err(timeout_error(&client)),
            };
            match result {
                Ok(_) => return JobStage::Done(JobOutcome::Completed(artifact)),
                Err(e) if e.is_lease_lost() => return JobStage::Done(JobOutcome::LeaseLost),
                Err(e) if refused_report(&e, &req.report) => {
                    tracing::warn!(job = %self.spec.id.short(), "the server refused the trainer's report ({e}); completing without it");
                    req.report = report_refused(&e);
                }
                Err(e) if is_transient(&e) => {
                    tracing::warn!(job = %self.spec.id.short(), "complete failed ({e}); retrying");
                    if !self.wait_retry(tries, &e).await {
                        return self.release_on_shutdown();
                    }
                }
                Err(e) => {
                    return JobStage::Done(JobOutcome::Unreported(format!("complete refused: {e}")))
                }
            }
        }
    }

    async fn report(&mut self, mut req: FailRequest) -> JobStage {
        match self.report_deadline {
            // Shutting down: the log may use half of what is left of the window.
            Some(deadline) => {
                let half = deadline.saturating_duration_since(Instant::now()) / 2;
                let _ = tokio::time::timeout(half, self.flush_log()).await;
            }
            None => self.flush_log().await,
        }
        let client = self.shared.client.clone();
        let mut tries = 0u32;
        loop {
            tries += 1;
            let limit = match self.report_deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => CALL_TIMEOUT,
            };
            let result = match tokio::time::timeout(limit, client.fail(&self.spec.id, &req)).await {
                Ok(r) => r,
                Err(_) => Err(timeout_error(&client)),
            };
            let outcome = match result {
                Ok(_) if req.retryable && req.reason == SHUTDOWN_REASON => JobOutcome::Released,
                Ok(_) => JobOutcome::Failed(req.reason.clone()),
                Err(e) if is_gone(&e) => JobOutcome::LeaseLost,
                Err(e) if refused_report(&e, &req.report) => {
                    tracing::warn!(job = %self.spec.id.short(), "the server refused the trainer's report ({e}); reporting without it");
                    req.report = report_refused(&e);
                    continue;
                }
                Err(e) if is_transient(&e) => {
                    let past_deadline = self.report_deadline.is_some_and(|d| Instant::now() >= d);
                    if past_deadline {
                        JobOutcome::Unreported(format!("could not report {:?}: {e}", req.reason))
                    } else {
                        tracing::warn!(job = %self.spec.id.short(), "reporting the failure failed ({e}); retrying");
                        let wait =
                            retry_wait(&e, backoff(tries, Duration::from_millis(200), MAX_BACKOFF));
                        let wait = match self.report_deadline {
                            Some(d) => wait.min(d.saturating_duration_since(Instant::now())),
                            None => wait,
                        };
                        tokio::time::sleep(wait).await;
                        // Shutdown during these retries: release instead of failing for good.
                        if self.shutting_down() && self.report_deadline.is_none() {
                            return self.release_on_shutdown();
                        }
                        continue;
                    }
                }
                Err(e) => JobOutcome::Unreported(format!("fail refused: {e}")),
            };
            return JobStage::Done(outcome);
        }
    }

    /// Output is discarded whatever happened; the log stays for anything but a success.
    fn clean_up(&self, outcome: &JobOutcome) {
        let Some(attempt) = &self.attempt else { return };
        let result = if matches!(outcome, JobOutcome::Completed(_)) {
            std::fs::remove_dir_all(&attempt.dir)
        } else {
            let _ = std::fs::remove_file(attempt.dir.join("bundle.tar.zst"));
            std::fs::remove_dir_all(&attempt.output_dir)
        };
        if let Err(e) = result {
            tracing::debug!("cleaning {}: {e}", attempt.dir.display());
        }
    }
}

/// A 400 to a call that carried a trainer report: the report (the trainer's files) is what
/// the server refused, so the call goes again without it and the job's result stands.
fn refused_report(e: &ClientError, report: &TrainerReport) -> bool {
    e.status().is_some_and(|s| s.as_u16() == 400)
        && !report.is_empty()
        && !is_report_refusal(report)
}

/// The report that replaces a refused one: only a warning saying so.
fn report_refused(e: &ClientError) -> TrainerReport {
    TrainerReport {
        warnings: vec![format!("{REPORT_REFUSED}: {e}")
            .chars()
            .take(MAX_WARNING_CHARS)
            .collect()],
        ..TrainerReport::default()
    }
}

const REPORT_REFUSED: &str = "the server refused the trainer's metrics and progress";

fn is_report_refusal(report: &TrainerReport) -> bool {
    report.metrics.is_none()
        && report.progress.is_empty()
        && report.warnings.len() == 1
        && report.warnings[0].starts_with(REPORT_REFUSED)
}

/// Resolves once shutdown has been signalled (holds no borrow of the channel afterwards).
async fn shutdown_signalled(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// The failure reason of an attempt stopped at its `timeout_s`.
pub fn timeout_reason(limit_s: u64) -> String {
    format!("timed out after {limit_s} s (timeout_s)")
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(unix)]
fn signal_text(status: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status.signal() {
        Some(sig) => format!("trainer killed by signal {sig}"),
        None => format!("trainer ended: {status}"),
    }
}

#[cfg(not(unix))]
fn signal_text(status: &std::process::ExitStatus) -> String {
    format!("trainer ended: {status}")
}

/// The agent's stages.
enum AgentStage {
    /// Telling the server who we are (retried until it answers).
    Register,
    /// Slots free: long-poll for a job.
    Claim,
    /// Every slot busy: wait for a job to end.
    Full,
    /// Shutdown: no more claims; wait for the jobs to release themselves.
    Draining,
}

/// What one claim attempt came to.
enum ClaimOutcome {
    Job(Box<ClaimResponse>),
    Nothing,
    /// A job ended while the claim waited: what it advertised is out of date.
    Stale,
    Error(ClientError),
    Shutdown,
}

/// The running agent.
pub struct Agent {
    shared: Shared,
    shutdown: watch::Receiver<bool>,
    /// Follows [`Shared::freed`].
    freed: watch::Receiver<u64>,
    jobs: JoinSet<(JobId, JobOutcome)>,
    job_ids: HashMap<tokio::task::Id, JobId>,
}

/// What `Agent::run` hands back when it stops.
#[derive(Debug, Default)]
pub struct RunSummary {
    /// Each job's ID and how it ended, in the order they ended.
    pub jobs: Vec<(JobId, JobOutcome)>,
}

impl Agent {
    /// `base` is the advertised capability (detected, with `--advertise` applied). Unless
    /// it names an instance already, the agent makes one ([`new_instance`]) and sends it
    /// with every claim and node report.
    pub fn new(
        cfg: AgentConfig,
        client: Client,
        mut base: cis490_api::Capability,
        shutdown: watch::Receiver<bool>,
        trainers: TrainerRegistry,
    ) -> Self {
        if base.instance.is_none() {
            base.instance = Some(new_instance());
        }
        let slots = Slots::new(base, cfg.gpu_sharing);
        let (freed, freed_rx) = watch::channel(0u64);
        Self {
            shared: Shared {
                cfg: Arc::new(cfg),
                client,
                slots: Arc::new(Mutex::new(slots)),
                trainers,
                launch: Arc::new(runner::Launch::default()),
                freed: Arc::new(freed),
            },
            shutdown,
            freed: freed_rx,
            jobs: JoinSet::new(),
            job_ids: HashMap::new(),
        }
    }

    /// Starts trainers this way (the real agent: watched by its trainer guard, recorded).
    pub fn with_launch(mut self, launch: runner::Launch) -> Self {
        self.shared.launch = Arc::new(launch);
        self
    }

    fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Runs until shutdown is signalled and every job has been released.
    pub async fn run(mut self) -> Result<RunSummary, AgentError> {
        let mut summary = RunSummary::default();
        let mut stage = AgentStage::Register;
        let mut failures = 0u32;
        // Set when a claim learns that another agent took this worker name over: no more
        // claims; the jobs on hand finish (or learn their leases are lost), then it stops.
        let mut lost_name: Option<String> = None;
        let mut registered = false;
        loop {
            stage = match stage {
                AgentStage::Register => {
                    let mut shutdown = self.shutdown.clone();
                    let reported = tokio::select! {
                        biased;
                        _ = shutdown_signalled(&mut shutdown) => None,
                        r = self.shared.report_node() => Some(r),
                    };
                    match reported {
                        // Shutdown before the server heard of us: nothing to release.
                        None => AgentStage::Draining,
                        Some(Ok(())) => {
                            tracing::info!(worker = %self.shared.worker(), server = self.shared.client.base_url(), "registered");
                            failures = 0;
                            registered = true;
                            AgentStage::Claim
                        }
                        Some(Err(e)) if is_refusal(&e) => {
                            return Err(AgentError::Refused(e.to_string()));
                        }
                        Some(Err(e)) if e.tls_problem().is_some() => {
                            return Err(AgentError::Tls(e.to_string()));
                        }
                        Some(Err(e)) if is_name_in_use(&e) => {
                            return Err(AgentError::NameInUse(e.to_string()));
                        }
                        Some(Err(e)) => {
                            failures += 1;
                            tracing::warn!("cannot report node status: {e}");
                            let wait = backoff(failures, Duration::from_secs(1), MAX_BACKOFF);
                            self.pause(retry_wait(&e, wait)).await;
                            AgentStage::Register
                        }
                    }
                }
                AgentStage::Claim => {
                    if self.shutting_down() || lost_name.is_some() {
                        AgentStage::Draining
                    } else if !self.shared.slots().has_room() {
                        AgentStage::Full
                    } else {
                        let started = Instant::now();
                        match self.claim_once(&mut summary).await {
                            ClaimOutcome::Job(resp) => {
                                failures = 0;
                                self.start_job(*resp).await;
                            }
                            ClaimOutcome::Nothing => {
                                failures = 0;
                                // A server that answers 204 at once (no long-poll) is not spun on.
                                if started.elapsed() < Duration::from_secs(1) {
                                    self.pause(Duration::from_secs(1)).await;
                                }
                            }
                            ClaimOutcome::Error(e) if is_name_in_use(&e) => {
                                tracing::error!("{e}; finishing the jobs on hand, then stopping");
                                lost_name = Some(e.to_string());
                            }
                            ClaimOutcome::Error(e) => {
                                failures += 1;
                                let wait = retry_wait(
                                    &e,
                                    backoff(failures, Duration::from_secs(1), MAX_BACKOFF),
                                );
                                tracing::warn!("claim failed ({e}); retry in {wait:?}");
                                self.pause(wait).await;
                            }
                            // Claim again at once, advertising the slot that came free.
                            ClaimOutcome::Stale | ClaimOutcome::Shutdown => {}
                        }
                        AgentStage::Claim
                    }
                }
                AgentStage::Full => {
                    let mut shutdown = self.shutdown.clone();
                    tokio::select! {
                        Some(done) = self.jobs.join_next_with_id() => {
                            self.finished(done, &mut summary).await;
                            AgentStage::Claim
                        }
                        Ok(()) = self.freed.changed() => AgentStage::Claim,
                        _ = shutdown_signalled(&mut shutdown) => AgentStage::Draining,
                    }
                }
                AgentStage::Draining => {
                    while let Some(done) = self.jobs.join_next_with_id().await {
                        self.finished(done, &mut summary).await;
                    }
                    if let Some(message) = lost_name {
                        return Err(AgentError::NameInUse(message));
                    }
                    tracing::info!("all jobs released; stopping");
                    if registered {
                        self.shared.sign_off().await;
                    }
                    return Ok(summary);
                }
            };
        }
    }

    /// Sleeps `wait` unless shutdown comes first.
    async fn pause(&self, wait: Duration) {
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown_signalled(&mut shutdown) => {}
        }
    }

    /// One long-poll claim, advertising what is free now. A trainer that exits meanwhile
    /// frees what it held, which the waiting claim does not offer: that claim is abandoned
    /// (after a moment to land) and the caller claims again with the new free capacity,
    /// instead of leaving the slot idle until the long-poll times out. On shutdown a claim
    /// in flight gets a moment to land so that a job the server just handed over is
    /// released rather than left claimed.
    async fn claim_once(&mut self, summary: &mut RunSummary) -> ClaimOutcome {
        // Slots freed before this point are in the capability below.
        self.freed.borrow_and_update();
        let req = ClaimRequest {
            worker: self.shared.worker().clone(),
            capability: self.shared.slots().free_capability(),
        };
        let client = self.shared.client.clone();
        let wait = self.shared.cfg.claim_wait;
        let claim = async move { client.claim(&req, Some(wait)).await };
        tokio::pin!(claim);
        let mut shutdown = self.shutdown.clone();
        loop {
            tokio::select! {
                result = &mut claim => {
                    return match result {
                        Ok(Some(resp)) => ClaimOutcome::Job(Box::new(resp)),
                        Ok(None) => ClaimOutcome::Nothing,
                        Err(e) => ClaimOutcome::Error(e),
                    };
                }
                // A job that ends had freed its slot when its trainer exited (below).
                Some(done) = self.jobs.join_next_with_id() => {
                    self.finished(done, summary).await;
                }
                Ok(()) = self.freed.changed() => {
                    if self.shutting_down() {
                        continue;
                    }
                    return match tokio::time::timeout(CLAIM_SETTLE, &mut claim).await {
                        Ok(Ok(Some(resp))) => ClaimOutcome::Job(Box::new(resp)),
                        Ok(Err(e)) => ClaimOutcome::Error(e),
                        Ok(Ok(None)) | Err(_) => ClaimOutcome::Stale,
                    };
                }
                _ = shutdown_signalled(&mut shutdown) => {
                    return match tokio::time::timeout(Duration::from_secs(2), &mut claim).await {
                        Ok(Ok(Some(resp))) => ClaimOutcome::Job(Box::new(resp)),
                        _ => ClaimOutcome::Shutdown,
                    };
                }
            }
        }
    }

    /// Reserves slots for a claimed job and starts its task; a job that does not fit (or
    /// arrives during shutdown) is handed straight back as retryable.
    async fn start_job(&mut self, resp: ClaimResponse) {
        let ClaimResponse { job, lease } = resp;
        let refusal = if self.shutting_down() {
            Some(SHUTDOWN_REASON.to_string())
        } else {
            match self.shared.slots().allocate(&job) {
                Ok(allocation) => {
                    tracing::info!(job = %job.id.short(), model = %job.model, mode = %job.mode, attempt = lease.attempt, "claimed");
                    let run = JobRun {
                        shared: self.shared.clone(),
                        spec: job.clone(),
                        lease,
                        allocation,
                        attempt: None,
                        shutdown: self.shutdown.clone(),
                        report_deadline: None,
                        slot_freed: false,
                        log: None,
                        report: TrainerReport::default(),
                    };
                    let id = job.id.clone();
                    let handle = self.jobs.spawn(async move { (id, run.drive().await) });
                    self.job_ids.insert(handle.id(), job.id);
                    return;
                }
                Err(e) => Some(format!("agent-cannot-fit: {e}")),
            }
        };
        if let Some(reason) = refusal {
            tracing::warn!(job = %job.id.short(), "handing the job back: {reason}");
            let req = FailRequest {
                worker: self.shared.worker().clone(),
                lease,
                reason,
                exit_code: None,
                log_tail: None,
                retryable: true,
                cause: Default::default(),
                report: Default::default(),
            };
            let client = &self.shared.client;
            if let Ok(Err(e)) | Err(e) =
                tokio::time::timeout(CALL_TIMEOUT, client.fail(&job.id, &req))
                    .await
                    .map_err(|_| timeout_error(client))
            {
                tracing::warn!(job = %job.id.short(), "could not hand the job back: {e}");
            }
            if !self.shutting_down() {
                self.pause(Duration::from_secs(2)).await;
            }
        }
    }

    async fn finished(
        &mut self,
        done: Result<(tokio::task::Id, (JobId, JobOutcome)), tokio::task::JoinError>,
        summary: &mut RunSummary,
    ) {
        let (id, outcome) = match done {
            Ok((task, (id, outcome))) => {
                self.job_ids.remove(&task);
                (id, outcome)
            }
            Err(e) => {
                let Some(id) = self.job_ids.remove(&e.id()) else {
                    return;
                };
                (id, JobOutcome::Unreported(format!("job task failed: {e}")))
            }
        };
        tracing::info!(job = %id.short(), "job ended: {outcome}");
        let held_a_slot = self.shared.slots().release(&id);
        if held_a_slot {
            // Its task ended without passing its trainer (it failed): the slot is free now.
            self.shared.slot_freed();
        }
        summary.jobs.push((id, outcome));
        // No node report here: every claim carries the node status, and the server derives
        // a node's running jobs from its leases; a report per job cost a commit (and an
        // fsync) per job, awaited before the next claim.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter_in_bounds() {
        let base = Duration::from_secs(1);
        let cap = Duration::from_secs(30);
        for attempt in 1..40 {
            let full = base
                .saturating_mul(2u32.saturating_pow((attempt - 1).min(16)))
                .min(cap);
            let w = backoff(attempt, base, cap);
            assert!(
                w <= full && w >= full / 2,
                "attempt {attempt}: {w:?} vs {full:?}"
            );
        }
        assert!(backoff(30, base, cap) >= Duration::from_secs(15));
    }

    #[test]
    fn lease_loss_and_vanished_jobs_are_final_server_errors_are_not() {
        use cis490_api::ApiError;
        use reqwest::StatusCode;
        let api = |status: StatusCode, code: &str| ClientError::Api {
            status,
            api: ApiError {
                error: code.into(),
                message: String::new(),
            },
            retry_after: None,
        };
        assert!(is_gone(&api(StatusCode::CONFLICT, "lease_lost")));
        assert!(is_gone(&api(StatusCode::NOT_FOUND, "not_found")));
        assert!(!is_gone(&api(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal"
        )));
        assert!(is_transient(&api(StatusCode::BAD_GATEWAY, "bad_gateway")));
        assert!(!is_transient(&api(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large"
        )));
    }

    #[test]
    fn a_servers_retry_after_lengthens_the_wait_up_to_the_cap() {
        use cis490_api::ApiError;
        use reqwest::StatusCode;
        let busy = |after: u64| ClientError::Api {
            status: StatusCode::SERVICE_UNAVAILABLE,
            api: ApiError {
                error: "busy".into(),
                message: String::new(),
            },
            retry_after: Some(Duration::from_secs(after)),
        };
        assert!(is_transient(&busy(5)));
        let short = Duration::from_millis(500);
        assert_eq!(retry_wait(&busy(5), short), Duration::from_secs(5));
        assert_eq!(
            retry_wait(&busy(1), Duration::from_secs(8)),
            Duration::from_secs(8)
        );
        assert_eq!(retry_wait(&busy(3600), short), MAX_BACKOFF);
        let unreachable = timeout_error(&Client::new("http://127.0.0.1:9").unwrap());
        assert_eq!(retry_wait(&unreachable, short), short);
        let too_many = ClientError::Api {
            status: StatusCode::TOO_MANY_REQUESTS,
            api: ApiError {
                error: "too_many_long_polls".into(),
                message: String::new(),
            },
            retry_after: Some(Duration::from_secs(5)),
        };
        assert!(is_transient(&too_many));
    }
}
