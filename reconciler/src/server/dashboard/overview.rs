//! The overview: live jobs per status, workers by state, the manifest's generation and its
//! last error with file:line. What `cis490ctl status` prints, from the same handlers
//! (`GET /v1/health`, `/v1/workers`, `/v1/manifest`); the counts are one `GROUP BY` over
//! an index, so a queue of 100,000 jobs renders as fast as a small one.

use axum::extract::State;
use axum::response::Response;
use cis490_api::{Health, JobStatus, ManifestStatus, PageQuery, WorkerView, MAX_PAGE_LIMIT};
use maud::{html, Markup};

use super::super::error::ApiFailure;
use super::super::extract::ApiQuery;
use super::super::{read, AppState};
use super::layout::{status_badge, time, Nav};
use super::Viewer;

/// Workers by what they can do now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct WorkerCounts {
    pub ready: usize,
    pub not_ready: usize,
    pub cordoned: usize,
    pub draining: usize,
}

impl WorkerCounts {
    pub fn of(workers: &[WorkerView]) -> Self {
        let mut c = WorkerCounts::default();
        for w in workers {
            if w.ready {
                c.ready += 1;
            } else {
                c.not_ready += 1;
            }
            if w.draining {
                c.draining += 1;
            } else if w.cordoned {
                c.cordoned += 1;
            }
        }
        c
    }
}

/// Every worker, page by page through `GET /v1/workers`.
pub async fn all_workers(state: &AppState) -> Result<Vec<WorkerView>, ApiFailure> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = read::workers(
            State(state.clone()),
            ApiQuery(PageQuery {
                limit: Some(MAX_PAGE_LIMIT),
                after,
            }),
        )
        .await?
        .0;
        out.extend(page.items);
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(out),
        }
    }
}

pub async fn page(State(state): State<AppState>, viewer: Viewer) -> Response {
    let made = async {
        let health = read::health(State(state.clone())).await?.0;
        let workers = all_workers(&state).await?;
        let manifest = read::manifest(State(state.clone())).await?.0;
        Ok(viewer.page(
            "Overview",
            Nav::Overview,
            None,
            render(&health, &WorkerCounts::of(&workers), &manifest),
        ))
    };
    viewer.answer(made.await)
}

pub fn render(health: &Health, workers: &WorkerCounts, manifest: &ManifestStatus) -> Markup {
    let live: u64 = health.jobs.values().sum();
    html! {
        h1 { "Overview" }
        h2 { "Jobs " span.muted { "(" (live) " live, " (health.tombstoned) " tombstoned)" } }
        div.cards #job-counts {
            @for status in JobStatus::ALL {
                @let n = health.jobs.get(status.as_str()).copied().unwrap_or(0);
                a.card href={ "/ui/jobs?status=" (status.as_str()) } data-status=(status.as_str()) {
                    div.n { (n) }
                    div.k { (status_badge(status.as_str())) }
                }
            }
        }
        h2 { "Workers" }
        div.cards #worker-counts {
            a.card href="/ui/workers" { div.n #workers-ready { (workers.ready) } div.k { "Ready" } }
            a.card href="/ui/workers" { div.n #workers-not-ready { (workers.not_ready) } div.k { "NotReady" } }
            a.card href="/ui/workers" { div.n #workers-cordoned { (workers.cordoned) } div.k { "Cordoned" } }
            a.card href="/ui/workers" { div.n #workers-draining { (workers.draining) } div.k { "Draining" } }
        }
        h2 { "Manifest" }
        dl.kv #manifest {
            dt { "Generation" } dd #generation { (manifest.generation) }
            dt { "File" } dd { a href="/ui/manifest" { (file_name(&manifest.path)) } }
            dt { "Last applied" } dd { @match &manifest.last_applied_at { Some(t) => (time(t)), None => "never" } }
            dt { "sha256" } dd.mono { (manifest.sha256.as_deref().map(|s| &s[..s.len().min(12)]).unwrap_or("<none>")) }
        }
        @if let Some(error) = manifest.last_errors.first() {
            p.error #manifest-error {
                "The last reload failed"
                @if let Some(at) = &manifest.last_error_at { " at " (time(at)) }
                ": "
                a href={ "/ui/manifest#L" (error.line.unwrap_or(1)) } {
                    (file_name(&error.path))
                    @if let Some(line) = error.line { ":" (line) }
                    @if let Some(column) = error.column { ":" (column) }
                }
                ": " (error.message)
                @if manifest.last_errors.len() > 1 { " (and " (manifest.last_errors.len() - 1) " more)" }
            }
        }
        @for warning in health.warnings.iter().chain(&manifest.warnings) {
            p.muted.warning { "⚠ " (warning) }
        }
    }
}

/// A manifest path as the dashboard shows it: its file name (error answers never name a
/// path on the server).
pub fn file_name(path: &str) -> &str {
    std::path::Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(path)
}
