//! The rules of the queue: what each transition does to a job, decided from the job's
//! typed state alone, with no SQL. The `i_*` functions load the row, ask one of these
//! functions, and write what it decided (the new state, the events, or the refusal), so a
//! second backend can share the rules and tests can check them case by case
//! (`transitions_tests.rs`).

use cis490_api::{FailRequest, FailureCause, JobId, JobStatus, Lease, WorkerName, SHORT_ID_LEN};

use super::events::kind;
use super::failures::MAX_HOST_FAILURES;
use super::results::outcome;
use super::rows::JobRow;
use super::QueueError;

/// The lease a claimed, running or cancelled-while-leased job still holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeldLease<'r> {
    pub attempt: u32,
    pub token: &'r str,
    pub worker: &'r str,
    pub expires_at: Option<i64>,
}

/// A job's status with the lease only where one exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State<'r> {
    Pending,
    Held,
    Claimed(HeldLease<'r>),
    Running(HeldLease<'r>),
    Completed,
    Failed,
    /// A job cancelled while leased keeps its old lease (heartbeat answers `cancel`) until
    /// the sweep drops it once it expires.
    Cancelled(Option<HeldLease<'r>>),
}

impl<'r> State<'r> {
    pub(crate) fn status(&self) -> JobStatus {
        match self {
            State::Pending => JobStatus::Pending,
            State::Held => JobStatus::Held,
            State::Claimed(_) => JobStatus::Claimed,
            State::Running(_) => JobStatus::Running,
            State::Completed => JobStatus::Completed,
            State::Failed => JobStatus::Failed,
            State::Cancelled(_) => JobStatus::Cancelled,
        }
    }

    /// The typed state of stored columns. A claimed or running row without its lease
    /// columns is corrupt.
    pub(crate) fn of(
        id: &JobId,
        status: JobStatus,
        worker: Option<&'r str>,
        lease_attempt: Option<u32>,
        lease_token: Option<&'r str>,
        lease_expires_at: Option<i64>,
    ) -> Result<State<'r>, QueueError> {
        let lease = match (lease_attempt, lease_token) {
            (Some(attempt), Some(token)) => Some(HeldLease {
                attempt,
                token,
                worker: worker.unwrap_or(""),
                expires_at: lease_expires_at,
            }),
            _ => None,
        };
        let leased = || {
            lease
                .ok_or_else(|| QueueError::corrupt(format!("job {id} is {status} without a lease")))
        };
        Ok(match status {
            JobStatus::Pending => State::Pending,
            JobStatus::Held => State::Held,
            JobStatus::Claimed => State::Claimed(leased()?),
            JobStatus::Running => State::Running(leased()?),
            JobStatus::Completed => State::Completed,
            JobStatus::Failed => State::Failed,
            JobStatus::Cancelled => State::Cancelled(lease),
        })
    }

    /// The lease of a claimed or running job.
    fn live_lease(&self) -> Option<&HeldLease<'r>> {
        match self {
            State::Claimed(lease) | State::Running(lease) => Some(lease),
            _ => None,
        }
    }
}

/// What the rules read of a job.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Job<'r> {
    pub id: &'r JobId,
    pub state: State<'r>,
    pub tombstoned: bool,
    /// The worker of the job's last lease (kept after the lease ends).
    pub worker: Option<&'r str>,
    /// Attempts used so far.
    pub attempts: u32,
    pub max_attempts: u32,
    pub trainer_failures: u32,
    pub retries_on_failure: u32,
    pub lease_expiries: u32,
    pub stale_after_s: u64,
    pub artifact_id: Option<&'r str>,
    pub error_reason: Option<&'r str>,
}

impl<'r> Job<'r> {
    /// The typed view of a stored row. A claimed or running row without its lease columns
    /// is corrupt.
    pub(crate) fn of(row: &'r JobRow) -> Result<Job<'r>, QueueError> {
        let state = State::of(
            &row.spec.id,
            row.status,
            row.worker.as_deref(),
            row.lease_attempt,
            row.lease_token.as_deref(),
            row.lease_expires_at,
        )?;
        Ok(Job {
            id: &row.spec.id,
            state,
            tombstoned: row.tombstoned,
            worker: row.worker.as_deref(),
            attempts: row.attempts,
            max_attempts: row.spec.max_attempts,
            trainer_failures: row.trainer_failures,
            retries_on_failure: row.spec.retry.retries_on_failure,
            lease_expiries: row.lease_expiries,
            stale_after_s: row.spec.stale_after_s,
            artifact_id: row.artifact_id.as_deref(),
            error_reason: row.error_reason.as_deref(),
        })
    }

    fn fence(&self) -> Fence<'r> {
        Fence {
            id: self.id,
            state: self.state,
            tombstoned: self.tombstoned,
        }
    }

    /// When a lease granted or extended at `now` expires.
    fn lease_expiry(&self, now: i64) -> i64 {
        now.saturating_add(
            i64::try_from(self.stale_after_s)
                .unwrap_or(i64::MAX / 1000)
                .saturating_mul(1000),
        )
    }
}

/// One event a transition appends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Emit<'a> {
    pub kind: &'static str,
    pub worker: Option<&'a str>,
    pub message: String,
}

impl<'a> Emit<'a> {
    fn new(kind: &'static str, worker: Option<&'a str>, message: impl Into<String>) -> Self {
        Emit {
            kind,
            worker,
            message: message.into(),
        }
    }
}

fn invalid(message: String) -> QueueError {
    QueueError::InvalidState { message }
}

/// Fencing: Ok when `lease` is the job's current lease held by `worker`. With
/// `allow_cancelled`, a job cancelled while leased still matches its old lease (heartbeat
/// learns of the cancel through it).
pub(crate) fn check_lease(
    job: &Job<'_>,
    worker: &WorkerName,
    lease: &Lease,
    allow_cancelled: bool,
) -> Result<(), QueueError> {
    check_fence(&job.fence(), worker, lease, allow_cancelled)
}

/// What the lease fence reads of a job: an upload's fence reads these columns alone
/// (`rows::LeaseColumns`), not the whole row.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fence<'r> {
    pub id: &'r JobId,
    pub state: State<'r>,
    pub tombstoned: bool,
}

/// [`check_lease`] over the fence's columns.
pub(crate) fn check_fence(
    job: &Fence<'_>,
    worker: &WorkerName,
    lease: &Lease,
    allow_cancelled: bool,
) -> Result<(), QueueError> {
    let lost = |reason: String| QueueError::LeaseLost {
        id: job.id.short().to_string(),
        reason,
    };
    let current = match &job.state {
        State::Claimed(held) | State::Running(held) => Some(held),
        State::Cancelled(held) if allow_cancelled => held.as_ref(),
        other => {
            return Err(lost(format!(
                "the job is {}, not leased",
                if job.tombstoned && *other == State::Pending {
                    "pending (tombstoned)".to_string()
                } else {
                    other.status().to_string()
                }
            )))
        }
    };
    let Some(current) = current else {
        return Err(lost(format!(
            "lease attempt {} is not the current lease (attempt none)",
            lease.attempt
        )));
    };
    if current.attempt == lease.attempt && current.token != lease.token {
        // A lease handed back (agent shutdown, cannot fit) or requeued does not use up its
        // attempt, so the next claim has the same number with a new token.
        return Err(lost(format!(
            "this lease ended and the job was leased again, to {}, under the same attempt \
             number {} (a lease handed back or requeued does not use up an attempt); stop \
             working on it",
            nobody_if_empty(current.worker),
            lease.attempt
        )));
    }
    if current.attempt != lease.attempt {
        return Err(lost(format!(
            "lease attempt {} is not the current lease (attempt {})",
            lease.attempt, current.attempt
        )));
    }
    if current.worker != worker.as_str() {
        return Err(lost(format!(
            "the lease belongs to {}, not {worker}",
            nobody_if_empty(current.worker)
        )));
    }
    Ok(())
}

fn nobody_if_empty(worker: &str) -> &str {
    if worker.is_empty() {
        "nobody"
    } else {
        worker
    }
}

/// A claim's lease: pending -> claimed with one more attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Grant<'a> {
    pub attempt: u32,
    pub expires_at: i64,
    pub event: Emit<'a>,
}

/// The lease a claim grants `worker` on `job` at `now`; only a pending job that is still
/// in the manifest can be leased.
pub(crate) fn grant_lease<'a>(
    job: &Job<'_>,
    worker: &'a WorkerName,
    now: i64,
) -> Result<Grant<'a>, QueueError> {
    if job.state != State::Pending || job.tombstoned {
        return Err(invalid(format!(
            "job {} is no longer pending",
            job.id.short()
        )));
    }
    let attempt = job.attempts.saturating_add(1);
    Ok(Grant {
        attempt,
        expires_at: job.lease_expiry(now),
        event: Emit::new(
            kind::CLAIMED,
            Some(worker.as_str()),
            format!(
                "claimed by {worker} (attempt {attempt} of {})",
                job.max_attempts
            ),
        ),
    })
}

/// What a heartbeat does to the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Beat<'a> {
    /// The job was cancelled: the agent must stop its trainer; the lease is left alone.
    Cancel,
    /// The lease now expires at `expires_at`; `started` (claimed -> running) on the first
    /// heartbeat.
    Extend {
        expires_at: i64,
        started: Option<Emit<'a>>,
    },
}

pub(crate) fn heartbeat<'a>(
    job: &Job<'_>,
    worker: &'a WorkerName,
    lease: &Lease,
    now: i64,
) -> Result<Beat<'a>, QueueError> {
    check_lease(job, worker, lease, true)?;
    let started = match job.state {
        State::Cancelled(_) => return Ok(Beat::Cancel),
        State::Claimed(_) => Some(Emit::new(
            kind::STARTED,
            Some(worker.as_str()),
            format!(
                "running on {worker} (attempt {} of {})",
                lease.attempt, job.max_attempts
            ),
        )),
        _ => None,
    };
    Ok(Beat::Extend {
        expires_at: job.lease_expiry(now),
        started,
    })
}

/// A completion's events: completed, and orphaned when the job left the manifest.
pub(crate) fn complete<'a>(
    job: &Job<'_>,
    worker: &'a WorkerName,
    lease: &Lease,
    artifact: Option<&cis490_api::ArtifactId>,
) -> Result<Vec<Emit<'a>>, QueueError> {
    check_lease(job, worker, lease, false)?;
    let artifact = artifact.map_or_else(
        || "no artifact".to_string(),
        |a| format!("artifact {}", a.short()),
    );
    let mut events = vec![Emit::new(
        kind::COMPLETED,
        Some(worker.as_str()),
        format!(
            "completed on {worker} (attempt {}), {artifact}",
            lease.attempt
        ),
    )];
    if job.tombstoned {
        events.push(Emit::new(
            kind::ORPHANED,
            Some(worker.as_str()),
            "finished after it was removed from the manifest: orphaned, artifact kept",
        ));
    }
    Ok(events)
}

/// The completion rule for the artifact named: only one uploaded under this lease, and not
/// none when the lease uploaded one. `uploaded` is what the lease uploaded, oldest first;
/// `uploaded_elsewhere` looks up (only when the answer is a refusal) another job that
/// uploaded the named bytes, to say so.
pub(crate) fn completion_artifact(
    id: &JobId,
    lease: &Lease,
    artifact: Option<&cis490_api::ArtifactId>,
    uploaded: &[String],
    uploaded_elsewhere: impl FnOnce() -> Result<Option<String>, QueueError>,
) -> Result<(), QueueError> {
    let attempt = lease.attempt;
    match artifact {
        Some(artifact) if uploaded.iter().any(|u| u == artifact.as_str()) => Ok(()),
        Some(artifact) => {
            let whose = match uploaded_elsewhere()? {
                Some(other) => format!(
                    "it was uploaded for job {}",
                    other.chars().take(SHORT_ID_LEN).collect::<String>()
                ),
                None => "it was never uploaded under it".to_string(),
            };
            Err(QueueError::ArtifactNotUploaded {
                message: format!(
                    "artifact {} was not uploaded under job {}'s current lease (attempt \
                     {attempt}): {whose}; upload the job's own bundle (PUT /v1/model/{}) and \
                     complete with the artifact ID that answer gives",
                    artifact.short(),
                    id.short(),
                    id
                ),
            })
        }
        None => match uploaded.last() {
            Some(last) => Err(QueueError::ArtifactRequired {
                message: format!(
                    "job {} uploaded artifact {last} under this lease (attempt {attempt}); \
                     complete with it (artifact_id)",
                    id.short()
                ),
            }),
            None => Ok(()),
        },
    }
}

/// Where a reported failure sends the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure<'a> {
    /// The host could not start the trainer: the attempt is refunded and the host
    /// flagged; whether the job fails depends on the other workers ([`host_failure`]).
    Host,
    /// The agent handed the lease back (shutting down): pending, with `attempts` (the
    /// attempt refunded).
    Released { attempts: u32, event: Emit<'a> },
    /// A trainer failure the retry policy retries: pending.
    Retry {
        trainer_failures: u32,
        event: Emit<'a>,
    },
    /// A trainer failure with no retry left: failed.
    Failed {
        trainer_failures: u32,
        event: Emit<'a>,
    },
}

impl Failure<'_> {
    /// How the attempt ended, for its outcome row.
    pub(crate) fn outcome(&self) -> &'static str {
        match self {
            Failure::Host | Failure::Released { .. } => outcome::RELEASED,
            Failure::Retry { .. } | Failure::Failed { .. } => outcome::FAILED,
        }
    }

    /// The job's status afterwards (a host failure's is decided later).
    pub(crate) fn status(&self) -> Option<JobStatus> {
        match self {
            Failure::Host => None,
            Failure::Released { .. } | Failure::Retry { .. } => Some(JobStatus::Pending),
            Failure::Failed { .. } => Some(JobStatus::Failed),
        }
    }
}

/// The failure rules: a retryable report (agent shutting down) refunds the attempt; a
/// host failure is the host's, not the job's; a trainer failure is retried while the
/// policy's retries and the attempts last.
pub(crate) fn fail<'a>(job: &Job<'_>, req: &'a FailRequest) -> Result<Failure<'a>, QueueError> {
    check_lease(job, &req.worker, &req.lease, false)?;
    let worker = req.worker.as_str();
    let max = job.max_attempts;
    if req.cause == FailureCause::Host && !req.retryable {
        return Ok(Failure::Host);
    }
    let exit = req
        .exit_code
        .map_or_else(String::new, |c| format!(" (exit code {c})"));
    if req.retryable {
        return Ok(Failure::Released {
            attempts: job.attempts.saturating_sub(1),
            event: Emit::new(
                kind::RELEASED,
                Some(worker),
                format!(
                    "released by {worker}: {}{exit}; back to pending, the attempt does not \
                     count",
                    req.reason
                ),
            ),
        });
    }
    let failures = job.trainer_failures.saturating_add(1);
    let retries = job.retries_on_failure;
    if failures <= retries && job.attempts < max {
        return Ok(Failure::Retry {
            trainer_failures: failures,
            event: Emit::new(
                kind::RETRYING,
                Some(worker),
                format!(
                    "attempt {} of {max} failed on {worker}: {}{exit}; retrying (retry \
                     {failures} of {retries}){}",
                    req.lease.attempt,
                    req.reason,
                    tail_note(req.log_tail.as_deref())
                ),
            ),
        });
    }
    let why = if failures <= retries {
        format!("no attempts left ({} of {max} used)", job.attempts)
    } else if retries == 0 {
        "the retry policy allows no retries".to_string()
    } else {
        format!("all {retries} retries used")
    };
    Ok(Failure::Failed {
        trainer_failures: failures,
        event: Emit::new(
            kind::FAILED,
            Some(worker),
            format!(
                "attempt {} of {max} failed on {worker}: {}{exit}; {why}{}",
                req.lease.attempt,
                req.reason,
                tail_note(req.log_tail.as_deref())
            ),
        ),
    })
}

/// The end of a failure's log tail for its event, so every failure's output stays in the
/// job's history even after a later attempt replaces the job's `error`.
fn tail_note(log_tail: Option<&str>) -> String {
    const KEEP_LINES: usize = 20;
    const KEEP_CHARS: usize = 4000;
    let Some(tail) = log_tail.map(str::trim_end).filter(|t| !t.is_empty()) else {
        return String::new();
    };
    let lines: Vec<&str> = tail.lines().collect();
    let mut kept = lines[lines.len().saturating_sub(KEEP_LINES)..].join("\n");
    if kept.chars().count() > KEEP_CHARS {
        kept = kept
            .chars()
            .skip(kept.chars().count() - KEEP_CHARS)
            .collect();
    }
    format!("\n--- log tail ---\n{kept}")
}

/// Where a host failure sends the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostVerdict<'a> {
    /// Failed for good: `why` becomes the job's error.
    Failed { why: String, event: Emit<'a> },
    /// Back to pending for a worker that has not had a host failure with it.
    Pending { event: Emit<'a> },
}

/// The host failure rule: the job fails once every Ready worker able to run it had a host
/// failure with it (`untried` is empty) or after [`MAX_HOST_FAILURES`]; else it waits for
/// another worker. `failed_on` lists (worker, last reason) of its host failures.
pub(crate) fn host_failure<'a>(
    req: &'a FailRequest,
    host_failures: u32,
    failed_on: &[(String, String)],
    untried: &[&str],
) -> HostVerdict<'a> {
    let worker = req.worker.as_str();
    let where_ = failed_on
        .iter()
        .map(|(w, why)| format!("{w} ({why})"))
        .collect::<Vec<_>>()
        .join("; ");
    if untried.is_empty() || host_failures >= MAX_HOST_FAILURES {
        let why = if untried.is_empty() {
            format!(
                "every Ready worker that can run it failed to start its trainer: {where_}; fix \
                 the hosts, then requeue it"
            )
        } else {
            format!(
                "{host_failures} host failures (at most {MAX_HOST_FAILURES}): {where_}; fix the \
                 hosts, then requeue it"
            )
        };
        let event = Emit::new(
            kind::FAILED,
            Some(worker),
            format!(
                "attempt {} could not start on {worker}: {}; {why}",
                req.lease.attempt, req.reason
            ),
        );
        return HostVerdict::Failed { why, event };
    }
    HostVerdict::Pending {
        event: Emit::new(
            kind::HOST_PROBLEM,
            Some(worker),
            format!(
                "attempt {} could not start on {worker}: {}; a problem of the host, not the \
                 trainer: the attempt does not count, back to pending for another worker ({} \
                 not tried yet)",
                req.lease.attempt,
                req.reason,
                untried.join(", ")
            ),
        ),
    }
}

/// What the sweep does to a job whose lease expired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Expiry<'a> {
    /// Back to pending: attempts remain.
    Requeue {
        lease_expiries: u32,
        event: Emit<'a>,
    },
    /// Failed: that was the last attempt; `reason` becomes the job's error.
    Fail {
        lease_expiries: u32,
        reason: String,
        events: [Emit<'a>; 2],
    },
}

/// The sweep's rule for `job` at `now`: None unless it is claimed or running with a lease
/// that expired before `now`.
pub(crate) fn expire_lease<'a>(job: &Job<'a>, now: i64) -> Option<Expiry<'a>> {
    let lease = job
        .state
        .live_lease()
        .filter(|l| l.expires_at.is_some_and(|at| at < now))?;
    let worker = lease.worker;
    let expiries = job.lease_expiries.saturating_add(1);
    let max = job.max_attempts;
    if job.attempts < max {
        return Some(Expiry::Requeue {
            lease_expiries: expiries,
            event: Emit::new(
                kind::LEASE_EXPIRED,
                Some(worker),
                format!(
                    "lease of {worker} expired (no heartbeat for {} s; attempt {} of {max} \
                     used); back to pending",
                    job.stale_after_s, job.attempts
                ),
            ),
        });
    }
    let reason = format!(
        "lease expired {expiries} time{} (agent vanished)",
        if expiries == 1 { "" } else { "s" }
    );
    Some(Expiry::Fail {
        lease_expiries: expiries,
        events: [
            Emit::new(
                kind::LEASE_EXPIRED,
                Some(worker),
                format!(
                    "lease of {worker} expired on the last attempt ({} of {max}); {reason}",
                    job.attempts
                ),
            ),
            Emit::new(kind::FAILED, Some(worker), reason.clone()),
        ],
        reason,
    })
}

/// An operator's cancel: pending, held, claimed or running -> cancelled (a leased job
/// keeps its lease, so its next heartbeat hears of the cancel).
pub(crate) fn cancel<'a>(job: &Job<'a>) -> Result<Emit<'a>, QueueError> {
    let status = job.state.status();
    let message = match job.state {
        State::Pending | State::Held => format!("cancelled by an operator while {status}"),
        State::Claimed(_) | State::Running(_) => format!(
            "cancelled by an operator while {status} on {}; the worker stops it at its next \
             heartbeat",
            job.worker.unwrap_or("?")
        ),
        _ => {
            return Err(invalid(format!(
                "cannot cancel job {} in state {status} (only pending, held, claimed or \
                 running jobs can be cancelled)",
                job.id.short()
            )))
        }
    };
    // The event names the job's last worker, leased or not.
    Ok(Emit::new(kind::CANCELLED, job.worker, message))
}

/// An operator's requeue: failed, cancelled or completed -> pending with attempts reset.
pub(crate) fn requeue<'a>(job: &Job<'_>) -> Result<Emit<'a>, QueueError> {
    let status = job.state.status();
    if status == JobStatus::Held {
        return Err(invalid(format!(
            "cannot requeue job {}: it is held, not finished; `cis490ctl release {}` makes it \
             pending again",
            job.id.short(),
            job.id.short()
        )));
    }
    if !status.is_terminal() {
        return Err(invalid(format!(
            "cannot requeue job {} in state {status} (only failed, cancelled or completed jobs \
             can be requeued)",
            job.id.short(),
        )));
    }
    let mut message = format!(
        "requeued by an operator from {status} ({} attempts used before); attempts reset",
        job.attempts
    );
    if let Some(a) = job.artifact_id {
        message.push_str(&format!("; previous artifact {a} kept in the store"));
    }
    if let Some(e) = job.error_reason {
        message.push_str(&format!("; previous error: {e}"));
    }
    Ok(Emit::new(kind::REQUEUED, None, message))
}

/// An operator's hold: pending -> held.
pub(crate) fn hold<'a>(job: &Job<'_>) -> Result<Emit<'a>, QueueError> {
    let hint = match job.state {
        State::Pending => {
            return Ok(Emit::new(
                kind::HELD,
                None,
                "held by an operator: no worker will claim it until it is released",
            ))
        }
        State::Held => " (it is already held)",
        State::Claimed(_) | State::Running(_) => {
            " (a leased job cannot be held; cancel it instead)"
        }
        _ => "",
    };
    Err(invalid(format!(
        "cannot hold job {} in state {}: only pending jobs can be held{hint}",
        job.id.short(),
        job.state.status()
    )))
}

/// An operator's release: held -> pending.
pub(crate) fn release<'a>(job: &Job<'_>) -> Result<Emit<'a>, QueueError> {
    if job.state != State::Held {
        return Err(invalid(format!(
            "cannot release job {} in state {}: only held jobs can be released",
            job.id.short(),
            job.state.status()
        )));
    }
    let note = if job.tombstoned {
        " (it stays tombstoned, so still not claimable)"
    } else {
        ""
    };
    Ok(Emit::new(
        kind::RELEASED_BY_OPERATOR,
        None,
        format!("released by an operator: pending again{note}"),
    ))
}

/// Apply's decision for a job the manifest names with a changed spec: a leased job keeps
/// the spec it runs with (None); else the new spec is written with an `Updated` event.
/// `changes` are the fields that differ (none: nothing to do).
pub(crate) fn update_spec<'a>(job: &Job<'_>, changes: &[String]) -> Option<Emit<'a>> {
    if job.state.live_lease().is_some() || changes.is_empty() {
        return None;
    }
    Some(Emit::new(
        kind::UPDATED,
        None,
        format!("manifest changed {}", changes.join(", ")),
    ))
}

/// Apply's decision for a tombstoned job back in the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Revival<'a> {
    /// Write the manifest's spec (it differs and the job is not leased).
    pub write_spec: bool,
    pub event: Emit<'a>,
}

/// Revives a tombstoned job (None when it is not tombstoned: apply updates it instead).
/// `spec_differs` says whether the manifest's spec differs from the stored one.
pub(crate) fn revive<'a>(job: &Job<'_>, spec_differs: bool) -> Option<Revival<'a>> {
    if !job.tombstoned {
        return None;
    }
    let (write_spec, spec_note) = if job.state.live_lease().is_some() {
        (false, "; it keeps its current spec while leased")
    } else if !spec_differs {
        (false, "")
    } else {
        (true, "; spec updated")
    };
    Some(Revival {
        write_spec,
        event: Emit::new(
            kind::REVIVED,
            None,
            format!(
                "back in the manifest, revived with its history (status {}){spec_note}",
                job.state.status()
            ),
        ),
    })
}

/// Tombstones a job the manifest no longer names (None when it already is).
pub(crate) fn tombstone<'a>(job: &Job<'_>) -> Option<Emit<'a>> {
    if job.tombstoned {
        return None;
    }
    let what = match job.state {
        State::Claimed(_) | State::Running(_) => {
            "it finishes on its worker and will be marked orphaned"
        }
        State::Pending | State::Held => "no longer claimable",
        _ => "history and artifacts kept",
    };
    Some(Emit::new(
        kind::TOMBSTONED,
        None,
        format!("removed from the manifest ({}): {what}", job.state.status()),
    ))
}
