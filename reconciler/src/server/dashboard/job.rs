//! One job: spec and constraints, lease and attempts, what each worker says about it while
//! it is pending (`GET /v1/job/{id}/explain`), artifacts, metrics, a progress chart, the
//! log of its current attempt (followed while the page is open) and its events.

use axum::extract::{Query, State};
use axum::response::Response;
use cis490_api::{Explain, JobProgress, JobStatus, JobView, LogPage, LogQuery, MetricValue};
use maud::{html, Markup};
use serde::Deserialize;

use super::super::error::ApiFailure;
use super::super::extract::{ApiPath, ApiQuery};
use super::super::{logs, read, results, AppState};
use super::layout::{status_badge, time, Nav};
use super::svg::{Chart, Point, Series, XAxis};
use super::{given, Viewer};

/// The end of the log a page shows.
const LOG_TAIL_BYTES: u64 = 64 * 1024;

/// Progress keys that count steps: the chart's x axis when a point has one.
const STEP_KEYS: [&str; 5] = ["step", "epoch", "round", "iteration", "iter"];

#[derive(Debug, Default, Deserialize)]
pub struct JobQuery {
    /// The progress metric to chart.
    #[serde(default)]
    pub metric: Option<String>,
}

/// What the page shows, read through the JSON routes' handlers.
pub struct JobData {
    pub job: JobView,
    pub explain: Option<Explain>,
    pub log: Option<LogPage>,
    pub progress: JobProgress,
}

async fn load(state: &AppState, raw: String) -> Result<JobData, ApiFailure> {
    let job = read::job(State(state.clone()), ApiPath(raw)).await?.0;
    let id = job.id.to_string();
    let explain = if job.status == JobStatus::Pending {
        Some(
            read::explain(State(state.clone()), ApiPath(id.clone()))
                .await?
                .0,
        )
    } else {
        None
    };
    let log = tail_of_log(state, &id).await?;
    let progress = results::progress(State(state.clone()), ApiPath(id))
        .await?
        .0;
    Ok(JobData {
        job,
        explain,
        log,
        progress,
    })
}

/// The last [`LOG_TAIL_BYTES`] of the current attempt's log (none when there is no log).
async fn tail_of_log(state: &AppState, id: &str) -> Result<Option<LogPage>, ApiFailure> {
    let read = |offset: u64, limit: u64| {
        logs::job_log(
            State(state.clone()),
            ApiPath(id.to_string()),
            ApiQuery(LogQuery {
                attempt: None,
                offset: Some(offset),
                limit: Some(limit),
            }),
        )
    };
    let head = read(0, 1).await?.0;
    if head.attempt.is_none() {
        return Ok(None);
    }
    if head.size <= 1 {
        return Ok(Some(head));
    }
    let from = head.size.saturating_sub(LOG_TAIL_BYTES);
    Ok(Some(read(from, LOG_TAIL_BYTES).await?.0))
}

pub async fn page(
    State(state): State<AppState>,
    viewer: Viewer,
    ApiPath(raw): ApiPath<String>,
    query: Result<Query<JobQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let query = query.map(|q| q.0).unwrap_or_default();
    let made = async {
        let data = load(&state, raw).await?;
        let title = format!("{} {}", data.job.model, data.job.id.short());
        let main = render(
            &data,
            &query,
            viewer.csrf.as_deref().filter(|_| viewer.session.operator),
        );
        let active = matches!(data.job.status, JobStatus::Claimed | JobStatus::Running);
        Ok(if active {
            viewer.following_page(title, main)
        } else {
            viewer.page(title, Nav::Jobs, None, main)
        })
    };
    viewer.answer(made.await)
}

/// `GET /ui/job/{id}/artifact`: the job's artifact, through the download route's handler
/// (so a browser signed in by cookie can download when reads are protected).
pub async fn artifact(
    State(state): State<AppState>,
    viewer: Viewer,
    ApiPath(raw): ApiPath<String>,
) -> Response {
    let made = async {
        let job = read::job(State(state.clone()), ApiPath(raw)).await?.0;
        let Some(artifact) = job.artifact_id else {
            return Err(ApiFailure::not_found(format!(
                "job {} has no artifact",
                job.id.short()
            )));
        };
        read::download(State(state.clone()), ApiPath(artifact.to_string())).await
    };
    viewer.answer(made.await)
}

/// The operator's buttons for a job in `status`.
fn actions(job: &JobView, csrf: &str) -> Markup {
    let verbs: &[&str] = match job.status {
        JobStatus::Pending => &["hold", "cancel"],
        JobStatus::Held => &["release", "cancel"],
        JobStatus::Claimed | JobStatus::Running => &["cancel"],
        JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled => &["requeue"],
    };
    html! {
        div.actions {
            @for verb in verbs {
                form.inline method="post" action={ "/ui/job/" (job.id) "/" (verb) } {
                    input type="hidden" name="csrf" value=(csrf);
                    button #{ "action-" (verb) } type="submit" { (verb) }
                }
            }
        }
    }
}

fn metric_text(v: &MetricValue) -> String {
    match v.as_f64() {
        Some(x) => cis490_api::results::short_number(x),
        None => v.to_string(),
    }
}

/// The chart of `metric` over the attempts' series (x: a step key when the points carry
/// one, else the point's index).
pub fn progress_chart(progress: &JobProgress, metric: Option<&str>) -> Option<Chart> {
    let numeric_keys = |a: &cis490_api::AttemptProgress| -> Vec<String> {
        a.series
            .iter()
            .flat_map(|p| p.iter())
            .filter(|(k, v)| v.as_f64().is_some() && !STEP_KEYS.contains(&k.as_str()))
            .map(|(k, _)| k.clone())
            .collect()
    };
    let metric = match metric {
        Some(m) => m.to_string(),
        None => progress.attempts.iter().flat_map(numeric_keys).next()?,
    };
    let series: Vec<Series> = progress
        .attempts
        .iter()
        .filter(|a| !a.series.is_empty())
        .map(|a| Series {
            name: format!("attempt {}", a.attempt),
            points: a
                .series
                .iter()
                .enumerate()
                .filter_map(|(i, p)| {
                    let y = p.get(&metric)?.as_f64()?;
                    let x = STEP_KEYS
                        .iter()
                        .find_map(|k| p.get(*k).and_then(MetricValue::as_f64))
                        .unwrap_or(i as f64);
                    Some(Point { x, y, err: None })
                })
                .collect(),
        })
        .collect();
    if series.iter().all(|s| s.points.is_empty()) {
        return None;
    }
    Some(Chart {
        title: format!("{metric} while training"),
        x_label: "step".into(),
        y_label: metric,
        x_axis: XAxis::Numbers,
        lines: true,
        series,
    })
}

pub fn render(data: &JobData, query: &JobQuery, operator_csrf: Option<&str>) -> Markup {
    let job = &data.job;
    let c = &job.constraints;
    html! {
        h1 { (job.model) " · " (job.mode) " " span.mono { (job.id.short()) } " " (status_badge(job.status.as_str())) }
        @if let Some(csrf) = operator_csrf { (actions(job, csrf)) }
        @if let Some(error) = &job.error {
            p.error #job-error { (error.reason) }
        }
        dl.kv #spec {
            dt { "ID" } dd.mono { (job.id) }
            dt { "Seed" } dd { (job.seed) }
            dt { "Hyper" } dd.mono {
                @for (k, v) in &job.hyper { (k) "=" (v) " " }
            }
            dt { "Labels" } dd { @for (k, v) in &job.labels { (k) "=" (v) " " } }
            dt { "Priority" } dd { (job.priority) }
            dt { "Constraints" } dd {
                @if c.require_cuda { "require_cuda " }
                @if c.prefer_cuda { "prefer_cuda " }
                @if c.min_vram_gib > 0.0 { "vram≥" (c.min_vram_gib) "GiB " }
                @if c.min_ram_gib > 0.0 { "ram≥" (c.min_ram_gib) "GiB " }
                @if c.cores > 0 { "cores=" (c.cores) " " }
                @if c.gpus > 0 { "gpus=" (c.gpus) " " }
                @if !c.allowed_hosts.is_empty() { "hosts=" (c.allowed_hosts.join(",")) " " }
                @for (k, v) in &c.node_selector { (k) "=" (v) " " }
                @if let Some(t) = job.timeout_s { "timeout=" (t) "s" }
            }
            dt { "Worker" } dd #job-worker { (job.worker.as_ref().map(|w| w.as_str()).unwrap_or("<none>")) }
            dt { "Attempts" } dd { (job.attempts) " of " (job.max_attempts) }
            dt { "Lease expires" } dd { @match &job.lease_expires_at { Some(t) => (time(t)), None => "<none>" } }
            dt { "Created" } dd { (time(&job.created_at)) }
            dt { "Started" } dd { @match &job.started_at { Some(t) => (time(t)), None => "<none>" } }
            dt { "Finished" } dd { @match &job.finished_at { Some(t) => (time(t)), None => "<none>" } }
            dt { "Artifact" } dd {
                @match &job.artifact_id {
                    Some(a) => { a #artifact href={ "/ui/job/" (job.id) "/artifact" } download { span.mono { (a.short()) } ".tar.zst" } }
                    None => "<none>",
                }
            }
        }
        @if let Some(explain) = &data.explain {
            h2 { "Why is it pending" }
            p #explain-summary { (explain.summary) }
            table #explain { thead { tr { th { "Worker" } th { "Verdict" } } }
                tbody { @for fit in &explain.workers {
                    tr {
                        td { (fit.worker) }
                        td {
                            @if fit.reasons.is_empty() { "could run it now" }
                            @if !fit.lasting().is_empty() { "never (as configured): " (fit.lasting().join("; ")) " " }
                            @if !fit.passing().is_empty() { "not now: " (fit.passing().join("; ")) }
                        }
                    }
                } }
            }
        }
        @if let Some(metrics) = &job.metrics {
            h2 { "Metrics" }
            table #metrics { tbody { @for (k, v) in metrics { tr { th { (k) } td.num { (metric_text(v)) } } } } }
        }
        @if let Some(chart) = progress_chart(&data.progress, given(&query.metric).as_deref()) {
            h2 { "Progress" }
            div #progress-chart { (chart.render()) }
        }
        h2 { "Log" }
        @match &data.log {
            Some(log) => {
                p.muted { "attempt " (log.attempt.unwrap_or(0)) ", " (log.size) " bytes" @if !log.finished { ", followed while it runs" } }
                pre.follow #log { (log.text) }
            }
            None => p.muted { "No log yet." },
        }
        h2 { "Events" }
        table #events {
            thead { tr { th { "At" } th { "Kind" } th { "Worker" } th { "Message" } } }
            tbody { @for e in job.events.iter().rev() {
                tr { td { (time(&e.at)) } td { (e.kind) } td { (e.worker.as_ref().map(|w| w.as_str()).unwrap_or("")) } td { (e.message) } }
            } }
        }
    }
}
