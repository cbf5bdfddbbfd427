//! `describe job|worker`: everything about one object, then its events, like
//! `kubectl describe pod`.

use std::fmt::Write as _;

use anyhow::Context;
use chrono::{DateTime, Utc};
use cis490_api::{Event, Explain, JobFilter, JobStatus, JobView, WorkerName, WorkerView};

use super::get::constraints_summary;
use super::Ctx;
use crate::cli::{DataFormat, DescribeArgs, DescribeResource};
use crate::output::{
    age, mib_as_gib, or_none, print, to_json, to_yaml, Cell, Column, Paint, Table, Terminal,
};
use crate::resolve::parse_prefix;
use serde::{Deserialize, Serialize};

/// Width of the label column (`Lease Expires:` plus padding).
const LABEL: usize = 16;

pub async fn run(ctx: &Ctx, args: &DescribeArgs) -> anyhow::Result<()> {
    let client = ctx.client()?;
    match &args.resource {
        DescribeResource::Job { id, output } => {
            let prefix = parse_prefix(id)?;
            let job = client
                .job(&prefix)
                .await
                .with_context(|| format!("describing job {id}"))?;
            // The job is shown even when the server cannot say why it waits.
            let explain =
                if matches!(job.status, JobStatus::Pending | JobStatus::Held) && !job.tombstoned {
                    let full = parse_prefix(job.id.as_str())?;
                    Some(
                        client
                            .explain(&full)
                            .await
                            .map_err(|e| crate::errors::describe_client_error(&e)),
                    )
                } else {
                    None
                };
            if let Some(text) = described_data(*output, || DescribedJob {
                job: job.clone(),
                explain: explain.as_ref().and_then(|e| e.as_ref().ok()).cloned(),
            })? {
                return print(&text);
            }
            print(&describe_job(&job, explain.as_ref(), Utc::now(), ctx.term))
        }
        DescribeResource::Worker { name, output } => {
            let name = WorkerName::parse(name)?;
            let worker = client
                .worker_detail(&name)
                .await
                .with_context(|| format!("describing worker {name}"))?;
            let jobs = client
                .jobs(&JobFilter {
                    worker: Some(name.to_string()),
                    all: true,
                    ..JobFilter::default()
                })
                .await
                .with_context(|| format!("listing the jobs of worker {name}"))?;
            let events = recent_worker_events(&client, &name).await?;
            if let Some(text) = described_data(*output, || DescribedWorker {
                worker: worker.clone(),
                jobs: jobs.clone(),
                events: events.clone(),
            })? {
                return print(&text);
            }
            print(&describe_worker(
                &worker,
                &jobs,
                &events,
                Utc::now(),
                ctx.term,
            ))
        }
    }
}

/// What `describe job -o json|yaml` prints: the job with every event, and why it waits
/// (pending or held jobs only; absent when the server could not say).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DescribedJob {
    pub job: JobView,
    #[serde(default)]
    pub explain: Option<Explain>,
}

/// What `describe worker -o json|yaml` prints: the worker, its jobs and its latest events.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DescribedWorker {
    pub worker: WorkerView,
    pub jobs: Vec<JobView>,
    pub events: Vec<Event>,
}

/// The JSON or YAML text of what `view` builds; None for text output.
fn described_data<T: Serialize>(
    format: DataFormat,
    view: impl FnOnce() -> T,
) -> anyhow::Result<Option<String>> {
    Ok(match format {
        DataFormat::Text => None,
        DataFormat::Json => Some(to_json(&view())?),
        DataFormat::Yaml => Some(to_yaml(&view())?),
    })
}

/// How many of a worker's events `describe worker` shows.
const RECENT_EVENTS: usize = 20;

/// The worker's latest events (its jobs' claims and results, cordons, registrations). The
/// API pages the log oldest first, filtered to this worker, so this reads it through and
/// keeps the tail.
async fn recent_worker_events(
    client: &cis490_api::Client,
    name: &WorkerName,
) -> anyhow::Result<Vec<Event>> {
    let mut recent: std::collections::VecDeque<Event> = std::collections::VecDeque::new();
    let mut since = 0;
    loop {
        let filter = cis490_api::client::EventsFilter {
            job: None,
            worker: Some(name.clone()),
        };
        let page = client
            .events_filtered(since, std::time::Duration::ZERO, &filter)
            .await
            .context("reading the event log")?;
        let next = page.next.max(since);
        // A page may hold no events while `next` moves on (a worker filter looks at one
        // window of the log per page): the log is read through when `next` stops.
        let done = next == since;
        for e in page.events {
            if e.worker.as_ref() == Some(name) {
                if recent.len() == RECENT_EVENTS {
                    recent.pop_front();
                }
                recent.push_back(e);
            }
        }
        if done {
            return Ok(recent.into());
        }
        since = next;
    }
}

fn line(out: &mut String, label: &str, value: impl std::fmt::Display) {
    let label = format!("{label}:");
    let _ = writeln!(out, "{label:<LABEL$}{value}");
}

fn time_with_age(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    match t {
        Some(t) => format!(
            "{} ({} ago)",
            t.format("%Y-%m-%d %H:%M:%S UTC"),
            age(t, now)
        ),
        None => "<none>".to_string(),
    }
}

fn indented(out: &mut String, text: &str) {
    for l in text.lines() {
        let _ = writeln!(out, "    {l}");
    }
}

/// The job page: spec, status, lease, attempts, artifact, error, why pending, events.
pub fn describe_job(
    job: &JobView,
    explain: Option<&Result<Explain, String>>,
    now: DateTime<Utc>,
    term: Terminal,
) -> String {
    let mut out = String::new();
    line(&mut out, "ID", &job.id);
    line(&mut out, "Model", &job.model);
    line(&mut out, "Mode", &job.mode);
    line(&mut out, "Status", job.status);
    line(&mut out, "Tombstoned", job.tombstoned);
    line(&mut out, "Priority", job.priority);
    line(&mut out, "Seed", job.seed);
    line(&mut out, "Split Recipe", or_none(job.split_recipe.as_ref()));
    line(
        &mut out,
        "Train Hosts",
        if job.train_hosts.is_empty() {
            "<none>".to_string()
        } else {
            job.train_hosts.join(", ")
        },
    );
    let labels: Vec<String> = job.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    line(
        &mut out,
        "Labels",
        if labels.is_empty() {
            "<none>".to_string()
        } else {
            labels.join(", ")
        },
    );
    if job.hyper.is_empty() {
        line(&mut out, "Hyper", "<none>");
    } else {
        let _ = writeln!(out, "Hyper:");
        for (k, v) in &job.hyper {
            let _ = writeln!(out, "  {k}: {v}");
        }
    }
    line(
        &mut out,
        "Constraints",
        constraints_summary(&job.constraints),
    );
    line(
        &mut out,
        "Timeout",
        job.timeout_s
            .map_or_else(|| "<none>".to_string(), |t| format!("{t}s")),
    );
    if !job.env.is_empty() {
        let _ = writeln!(out, "Env:");
        for (k, v) in &job.env {
            let _ = writeln!(out, "  {k}={v}");
        }
    }
    line(&mut out, "Worker", or_none(job.worker.as_ref()));
    line(
        &mut out,
        "Attempts",
        format!("{}/{}", job.attempts, job.max_attempts),
    );
    if job.status.is_leased() {
        let expires = match job.lease_expires_at {
            Some(t) if t >= now => format!(
                "{} (in {})",
                t.format("%Y-%m-%d %H:%M:%S UTC"),
                crate::output::human_duration(t - now)
            ),
            Some(t) => format!("{} (expired)", t.format("%Y-%m-%d %H:%M:%S UTC")),
            None => "<none>".to_string(),
        };
        line(&mut out, "Lease Holder", or_none(job.worker.as_ref()));
        line(&mut out, "Lease Expires", expires);
    }
    line(
        &mut out,
        "Created",
        time_with_age(Some(job.created_at), now),
    );
    line(&mut out, "Started", time_with_age(job.started_at, now));
    line(&mut out, "Finished", time_with_age(job.finished_at, now));
    line(&mut out, "Artifact", or_none(job.artifact_id.as_ref()));
    if let Some(point) = &job.progress {
        line(
            &mut out,
            "Progress",
            cis490_api::results::progress_summary(point, usize::MAX),
        );
    }
    match &job.metrics {
        Some(metrics) if !metrics.is_empty() => {
            let _ = writeln!(out, "Metrics:");
            for (k, v) in metrics {
                let _ = writeln!(out, "  {k}: {v}");
            }
        }
        _ if job.status == cis490_api::JobStatus::Completed => line(&mut out, "Metrics", "<none>"),
        _ => {}
    }
    match &job.error {
        None => line(&mut out, "Error", "<none>"),
        Some(err) => {
            let _ = writeln!(out, "Error:");
            let _ = writeln!(out, "  Reason:     {}", err.reason);
            let _ = writeln!(out, "  Exit Code:  {}", or_none(err.exit_code));
            if let Some(tail) = err.log_tail.as_deref().filter(|t| !t.trim().is_empty()) {
                let _ = writeln!(out, "  Log Tail:");
                indented(&mut out, tail.trim_end());
            }
        }
    }
    if job.error.is_none() {
        if let Some(tail) = job.log_tail.as_deref().filter(|t| !t.trim().is_empty()) {
            let _ = writeln!(out, "Log Tail:");
            indented(&mut out, tail.trim_end());
        }
    }
    if let Some(Err(why)) = explain {
        line(&mut out, "Why Not Running", format!("<unknown: {why}>"));
    }
    if let Some(Ok(ex)) = explain {
        let _ = writeln!(out, "Why Not Running:");
        let position = match ex.queue_position {
            Some(p) if ex.never_runnable_ahead > 0 => format!(
                "{p} of {} pending ({} ahead of it can never run where it can; not counted)",
                ex.pending_total, ex.never_runnable_ahead
            ),
            Some(p) => format!("{p} of {} pending", ex.pending_total),
            None => format!("not claimable ({} pending)", ex.pending_total),
        };
        let _ = writeln!(out, "  Queue Position:  {position}");
        let _ = writeln!(out, "  Summary:         {}", ex.summary);
        if ex.workers.is_empty() {
            let _ = writeln!(out, "  Workers:         <none known>");
        } else {
            let _ = writeln!(out, "  Workers:");
            let width = ex
                .workers
                .iter()
                .map(|w| w.worker.as_str().len())
                .max()
                .unwrap_or(0);
            for fit in &ex.workers {
                let verdict = fit_verdict(fit);
                let _ = writeln!(out, "    {:<width$}  {verdict}", fit.worker.as_str());
            }
        }
    }
    out.push_str(&events_section(&job.events, now, term));
    out
}

/// One worker's line under "Why Not Running": "could run it now" only when nothing stops
/// it; what lasts (it can never run the job as things are) before what passes.
fn fit_verdict(fit: &cis490_api::WorkerFit) -> String {
    let (lasting, passing) = (fit.lasting(), fit.passing());
    match (lasting.is_empty(), passing.is_empty()) {
        (true, true) => "could run it now".to_string(),
        (true, false) => format!("not now: {}", passing.join("; ")),
        (false, true) => format!("never (as configured): {}", lasting.join("; ")),
        (false, false) => format!(
            "never (as configured): {}; also now: {}",
            lasting.join("; "),
            passing.join("; ")
        ),
    }
}

/// `Events:` then a table (AGE, KIND, WORKER, MESSAGE), or `<none>`.
fn events_section(events: &[Event], now: DateTime<Utc>, term: Terminal) -> String {
    if events.is_empty() {
        return "Events:         <none>\n".to_string();
    }
    let mut table = Table::new(vec![
        Column::fixed("AGE"),
        Column::fixed("KIND"),
        Column::flex("WORKER"),
        Column::flex("MESSAGE"),
    ]);
    for e in events {
        let paint = match e.kind.as_str() {
            "Failed" | "LeaseExpired" => Paint::Red,
            "Completed" => Paint::Green,
            _ => Paint::None,
        };
        table.push(vec![
            Cell::from(age(e.at, now)),
            Cell::painted(e.kind.clone(), paint),
            Cell::from(or_none(e.worker.as_ref())),
            Cell::from(e.message.replace('\n', " ")),
        ]);
    }
    let indented_term = Terminal {
        width: term.width.map(|w| w.saturating_sub(2)),
        ..term
    };
    let mut out = String::from("Events:\n");
    for l in table.render(indented_term).lines() {
        out.push_str("  ");
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// The worker page: state, conditions, capability, running and recent jobs.
pub fn describe_worker(
    w: &WorkerView,
    jobs: &[JobView],
    events: &[Event],
    now: DateTime<Utc>,
    term: Terminal,
) -> String {
    let cap = &w.capability;
    let mut out = String::new();
    line(&mut out, "Name", &w.name);
    line(&mut out, "State", w.state);
    line(&mut out, "Hostname", &cap.hostname);
    line(&mut out, "OS", format!("{}/{}", cap.os, cap.arch));
    line(
        &mut out,
        "Agent Version",
        or_none(Some(&cap.agent_version).filter(|v| !v.is_empty())),
    );
    line(&mut out, "Git Commit", or_none(cap.git_commit.as_ref()));
    line(
        &mut out,
        "First Seen",
        time_with_age(Some(w.first_seen), now),
    );
    line(&mut out, "Last Seen", time_with_age(Some(w.last_seen), now));
    let _ = writeln!(out, "Conditions:");
    let _ = writeln!(out, "  Ready:         {}", w.ready);
    let _ = writeln!(out, "  Cordoned:      {}", w.cordoned);
    let _ = writeln!(out, "  Draining:      {}", w.draining);
    match &w.host_problem {
        Some(p) => {
            let _ = writeln!(
                out,
                "  HostProblem:   {} (job {}, {})",
                p.reason,
                p.job_id.short(),
                time_with_age(Some(p.at), now)
            );
        }
        None => {
            let _ = writeln!(out, "  HostProblem:   none");
        }
    }
    let _ = writeln!(out, "Capability:");
    let _ = writeln!(out, "  Cores:         {}", cap.cores);
    let _ = writeln!(
        out,
        "  RAM:           {} total, {} allocatable",
        mib_as_gib(cap.ram_total_mib),
        mib_as_gib(cap.ram_allocatable_mib)
    );
    let _ = writeln!(
        out,
        "  CUDA:          {}",
        match (cap.cuda, cap.cuda_version.as_deref()) {
            (true, Some(version)) => version.to_string(),
            (true, None) => "yes (version unknown)".to_string(),
            (false, _) => "no".to_string(),
        }
    );
    let _ = writeln!(
        out,
        "  Driver:        {}",
        or_none(cap.driver_version.as_ref())
    );
    let _ = writeln!(
        out,
        "  Torch:         {}",
        or_none(cap.torch_version.as_ref())
    );
    let _ = writeln!(out, "  Max Concurrent: {}", cap.max_concurrent);
    if let Some(note) = &cap.gpu_note {
        let _ = writeln!(out, "  GPU Note:      {note}");
    }
    if cap.gpus.is_empty() {
        let _ = writeln!(out, "  GPUs:          <none>");
    } else {
        let _ = writeln!(out, "  GPUs:");
        for g in &cap.gpus {
            let _ = writeln!(
                out,
                "    {}: {} ({} total, {} free, {} allocatable)",
                g.index,
                g.name,
                mib_as_gib(g.vram_total_mib),
                mib_as_gib(g.vram_free_mib),
                mib_as_gib(g.vram_allocatable_mib)
            );
        }
    }
    // The merged labels from a server that sends them, else the agent's own.
    let labels = if w.labels.is_empty() {
        &cap.labels
    } else {
        &w.labels
    };
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    line(
        &mut out,
        "Labels",
        if labels.is_empty() {
            "<none>".to_string()
        } else {
            labels.join(", ")
        },
    );
    let running: Vec<&JobView> = jobs.iter().filter(|j| j.status.is_leased()).collect();
    if running.is_empty() && w.running_jobs.is_empty() {
        line(&mut out, "Running Jobs", "<none>");
    } else {
        let _ = writeln!(out, "Running Jobs:");
        for id in &w.running_jobs {
            match jobs.iter().find(|j| &j.id == id) {
                Some(j) => {
                    let _ = writeln!(
                        out,
                        "  {}  {}/{}  {}",
                        id.short(),
                        j.model,
                        j.mode,
                        j.status
                    );
                }
                None => {
                    let _ = writeln!(out, "  {}", id.short());
                }
            }
        }
    }
    let mut recent: Vec<&JobView> = jobs.iter().filter(|j| !j.status.is_leased()).collect();
    recent.sort_by_key(|j| std::cmp::Reverse(j.updated_at));
    recent.truncate(10);
    if recent.is_empty() {
        line(&mut out, "Recent Jobs", "<none>");
    } else {
        let _ = writeln!(out, "Recent Jobs:");
        let mut table = Table::new(vec![
            Column::fixed("ID"),
            Column::flex("MODEL"),
            Column::flex("MODE"),
            Column::fixed("STATUS"),
            Column::fixed("UPDATED"),
        ]);
        for j in recent {
            table.push(vec![
                Cell::from(j.id.short()),
                Cell::from(j.model.as_str()),
                Cell::from(j.mode.as_str()),
                Cell::painted(j.status.to_string(), Paint::for_status(j.status)),
                Cell::from(age(j.updated_at, now)),
            ]);
        }
        for l in table.render(term).lines() {
            let _ = writeln!(out, "  {l}");
        }
    }
    out.push_str(&events_section(events, now, term));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::samples::{job, now, worker};
    use cis490_api::{WorkerFit, WorkerName};

    #[test]
    fn completed_job_shows_its_metrics_and_a_running_one_its_progress() {
        let mut done = job('c', JobStatus::Completed);
        let text = describe_job(&done, None, now(), Terminal::plain());
        assert!(text.contains("Metrics:        <none>"), "{text}");
        done.metrics = Some(
            cis490_api::results::parse_flat(br#"{"accuracy": 0.91, "note": "ok"}"#, 1000).unwrap(),
        );
        let text = describe_job(&done, None, now(), Terminal::plain());
        assert!(
            text.contains("Metrics:\n  accuracy: 0.91\n  note: ok\n"),
            "{text}"
        );
        let mut running = job('a', JobStatus::Running);
        running.progress =
            Some(cis490_api::results::parse_flat(br#"{"step": 3, "of": 9}"#, 1000).unwrap());
        let text = describe_job(&running, None, now(), Terminal::plain());
        assert!(text.contains("Progress:       3/9\n"), "{text}");
        assert!(!text.contains("Metrics"), "{text}");
    }

    #[test]
    fn a_job_page_shows_its_timeout_env_and_node_selector() {
        let mut j = job('d', JobStatus::Pending);
        let text = describe_job(&j, None, now(), Terminal::plain());
        assert!(text.contains("Timeout:        <none>"), "{text}");
        assert!(!text.contains("Env:"), "{text}");
        j.timeout_s = Some(3600);
        j.env = [("OMP_NUM_THREADS".to_string(), "4".to_string())].into();
        j.constraints.node_selector = [("gpu".to_string(), "rtx-4090".to_string())].into();
        j.constraints.cores = 4;
        let text = describe_job(&j, None, now(), Terminal::plain());
        assert!(text.contains("Timeout:        3600s"), "{text}");
        assert!(text.contains("Env:\n  OMP_NUM_THREADS=4\n"), "{text}");
        assert!(
            text.contains("cores=4") && text.contains("gpu=rtx-4090"),
            "{text}"
        );
    }

    #[test]
    fn failed_job_shows_error_exit_code_log_tail_and_events() {
        let j = job('b', JobStatus::Failed);
        let text = describe_job(&j, None, now(), Terminal::plain());
        assert!(
            text.contains(&format!("ID:             {}", j.id)),
            "{text}"
        );
        assert!(text.contains("Status:         failed"), "{text}");
        assert!(text.contains("Attempts:       1/3"), "{text}");
        assert!(
            text.contains("Reason:     trainer exited with status 3"),
            "{text}"
        );
        assert!(text.contains("Exit Code:  3"), "{text}");
        assert!(text.contains("    ValueError: bad"), "{text}");
        assert!(text.contains("Events:\n  AGE   KIND      WORKER   MESSAGE\n  5m    Created   <none>   created by manifest generation 1"), "{text}");
        assert!(!text.contains("Why Not Running"), "{text}");
    }

    #[test]
    fn running_job_shows_lease_holder_and_expiry() {
        let j = job('a', JobStatus::Running);
        let text = describe_job(&j, None, now(), Terminal::plain());
        assert!(text.contains("Lease Holder:   gpu-box"), "{text}");
        assert!(text.contains("(in 60s)"), "{text}");
    }

    #[test]
    fn pending_job_explains_why_it_is_not_running() {
        let j = job('c', JobStatus::Pending);
        let ex = Explain {
            job_id: j.id.clone(),
            queue_position: Some(2),
            pending_total: 5,
            never_runnable_ahead: 2,
            workers: vec![
                WorkerFit {
                    worker: WorkerName::parse("cpu-1").unwrap(),
                    reasons: vec!["no CUDA".into(), "needs 8 GiB VRAM".into()],
                    lasting_reasons: 2,
                },
                WorkerFit {
                    worker: WorkerName::parse("gpu-box").unwrap(),
                    reasons: vec![],
                    lasting_reasons: 0,
                },
                WorkerFit {
                    worker: WorkerName::parse("gpu-busy").unwrap(),
                    reasons: vec!["busy: all 2 slots hold jobs".into()],
                    lasting_reasons: 0,
                },
                WorkerFit {
                    worker: WorkerName::parse("gpu-deny").unwrap(),
                    reasons: vec!["host policy denies gbt".into(), "cordoned".into()],
                    lasting_reasons: 1,
                },
            ],
            summary: "no Ready worker has CUDA".into(),
        };
        let text = describe_job(&j, Some(&Ok(ex)), now(), Terminal::plain());
        assert!(
            text.contains(
                "Queue Position:  2 of 5 pending (2 ahead of it can never run where it can; \
                 not counted)"
            ),
            "{text}"
        );
        assert!(
            text.contains("Summary:         no Ready worker has CUDA"),
            "{text}"
        );
        assert!(
            text.contains("    cpu-1     never (as configured): no CUDA; needs 8 GiB VRAM"),
            "{text}"
        );
        assert!(text.contains("    gpu-box   could run it now"), "{text}");
        assert!(
            text.contains("    gpu-busy  not now: busy: all 2 slots hold jobs"),
            "{text}"
        );
        assert!(
            text.contains(
                "    gpu-deny  never (as configured): host policy denies gbt; also now: cordoned"
            ),
            "{text}"
        );
    }

    #[test]
    fn worker_page_shows_conditions_capability_jobs_and_events() {
        let w = worker();
        let running = job('a', JobStatus::Running);
        let mut done = job('b', JobStatus::Completed);
        done.worker = Some(w.name.clone());
        let events = vec![Event {
            seq: 9,
            at: now() - chrono::TimeDelta::seconds(20),
            job_id: Some(running.id.clone()),
            worker: Some(w.name.clone()),
            kind: "Claimed".into(),
            message: "claimed by gpu-box (attempt 1)".into(),
        }];
        let text = describe_worker(&w, &[running, done], &events, now(), Terminal::plain());
        assert!(text.contains("State:          Ready"), "{text}");
        assert!(
            text.contains("  Ready:         true\n  Cordoned:      false"),
            "{text}"
        );
        assert!(text.contains("  CUDA:          12.4"), "{text}");
        // A CUDA worker that did not say which version (e.g. `--advertise cuda=true`).
        let mut unknown = worker();
        unknown.capability.cuda_version = None;
        let unknown_text = describe_worker(&unknown, &[], &[], now(), Terminal::plain());
        assert!(
            unknown_text.contains("  CUDA:          yes (version unknown)"),
            "{unknown_text}"
        );
        assert!(text.contains("    0: RTX 4090 (24Gi total"), "{text}");
        // The merged labels (the agent's and the manifest's [[hosts]] entry's).
        assert!(
            text.contains("Labels:") && text.contains("gpu=rtx-4090"),
            "{text}"
        );
        assert!(
            text.contains("Running Jobs:\n  aaaaaaaaaaaa  gbt/realistic  running"),
            "{text}"
        );
        assert!(
            text.contains("Recent Jobs:\n  ID             MODEL"),
            "{text}"
        );
        assert!(
            text.contains("  bbbbbbbbbbbb   gbt     realistic   completed"),
            "{text}"
        );
        assert!(
            text.contains("  20s   Claimed   gpu-box   claimed by gpu-box (attempt 1)"),
            "{text}"
        );
        assert!(text.contains("  HostProblem:   none\n"), "{text}");
        let mut flagged = worker();
        flagged.host_problem = Some(cis490_api::HostProblem {
            reason: "cannot start trainer \"./train.sh\": not found".into(),
            job_id: cis490_api::JobId::parse(&"c".repeat(64)).unwrap(),
            at: now() - chrono::TimeDelta::seconds(30),
        });
        let flagged_text = describe_worker(&flagged, &[], &[], now(), Terminal::plain());
        assert!(
            flagged_text.contains(
                "  HostProblem:   cannot start trainer \"./train.sh\": not found (job cccccccccccc, "
            ),
            "{flagged_text}"
        );
    }
}
