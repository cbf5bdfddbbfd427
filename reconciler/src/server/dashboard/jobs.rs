//! The jobs page: filtered by status, model, mode and label selector, a search by ID
//! prefix, one keyset page at a time (`GET /v1/jobs`' own handler and cursor), so a queue
//! of 100,000 jobs costs a page of work, not the queue.

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use cis490_api::{JobFilter, JobStatus, JobView, Page};
use maud::{html, Markup};
use serde::Deserialize;

use super::super::error::ApiFailure;
use super::super::extract::{ApiPath, ApiQuery};
use super::super::{read, AppState};
use super::layout::{status_badge, time, Nav};
use super::{given, Viewer};

/// Jobs a page shows.
const PAGE_SIZE: u32 = 100;

/// The query of `/ui/jobs`, as its form sends it (empty fields are no filter).
#[derive(Debug, Default, Deserialize)]
pub struct JobsQuery {
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub label: Option<String>,
    /// An ID or a unique prefix: goes to that job.
    #[serde(default)]
    pub q: Option<String>,
    #[serde(default)]
    pub all: Option<String>,
    #[serde(default)]
    pub after: Option<String>,
}

impl JobsQuery {
    fn filter(&self) -> Result<JobFilter, ApiFailure> {
        let status = given(&self.status)
            .map(|s| s.parse::<JobStatus>())
            .transpose()
            .map_err(|e| ApiFailure::bad_request(format!("status: {e}")))?;
        Ok(JobFilter {
            status,
            model: given(&self.model),
            mode: given(&self.mode),
            label: given(&self.label),
            all: given(&self.all).is_some(),
            limit: Some(PAGE_SIZE),
            after: given(&self.after),
            ..JobFilter::default()
        })
    }

    /// This query's URL with `after` set to `next`.
    fn next_url(&self, next: &str) -> String {
        let mut pairs: Vec<(&str, String)> = Vec::new();
        for (key, value) in [
            ("status", &self.status),
            ("model", &self.model),
            ("mode", &self.mode),
            ("label", &self.label),
            ("all", &self.all),
        ] {
            if let Some(v) = given(value) {
                pairs.push((key, v));
            }
        }
        pairs.push(("after", next.to_string()));
        format!("/ui/jobs?{}", encode_query(&pairs))
    }
}

/// `key=value&...`, percent-encoded.
pub fn encode_query(pairs: &[(&str, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", percent(k), percent(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-encodes everything but unreserved characters.
pub fn percent(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub async fn page(
    State(state): State<AppState>,
    viewer: Viewer,
    query: Result<Query<JobsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let query = match query {
        Ok(Query(q)) => q,
        Err(e) => return viewer.fail(&ApiFailure::bad_request(e.body_text())),
    };
    if let Some(prefix) = given(&query.q) {
        return match read::job(State(state.clone()), ApiPath(prefix)).await {
            Ok(job) => Redirect::to(&format!("/ui/job/{}", job.0.id)).into_response(),
            Err(failure) => viewer.fail(&failure),
        };
    }
    let made = async {
        let filter = query.filter()?;
        let page = read::jobs(State(state.clone()), ApiQuery(filter)).await?.0;
        Ok(viewer.page(
            "Jobs",
            Nav::Jobs,
            Some(controls(&query)),
            render(&page, &query),
        ))
    };
    viewer.answer(made.await)
}

fn controls(q: &JobsQuery) -> Markup {
    let selected = given(&q.status).unwrap_or_default();
    html! {
        form.filters method="get" action="/ui/jobs" {
            label { "Status"
                select name="status" {
                    option value="" { "any" }
                    @for s in JobStatus::ALL {
                        option value=(s.as_str()) selected[selected == s.as_str()] { (s.as_str()) }
                    }
                }
            }
            label { "Model" input name="model" value=[given(&q.model)]; }
            label { "Mode" input name="mode" value=[given(&q.mode)]; }
            label { "Labels" input name="label" placeholder="team=a,!draft" value=[given(&q.label)]; }
            label { "Tombstoned too" input type="checkbox" name="all" value="1" checked[given(&q.all).is_some()]; }
            button type="submit" { "Filter" }
        }
        form.filters method="get" action="/ui/jobs" {
            label { "Job ID or prefix" input #job-search name="q" placeholder="31a5"; }
            button type="submit" { "Go" }
        }
    }
}

/// A job's latest progress, short (`7/20 loss=0.31`), or nothing.
pub fn progress_text(job: &JobView) -> String {
    job.progress
        .as_ref()
        .map(|p| cis490_api::results::progress_summary(p, 3))
        .unwrap_or_default()
}

fn render(page: &Page<JobView>, q: &JobsQuery) -> Markup {
    html! {
        h1 { "Jobs" }
        @if page.items.is_empty() {
            p.muted { "No job matches." }
        } @else {
            table #jobs {
                thead { tr { th { "ID" } th { "Model" } th { "Mode" } th { "Status" } th { "Worker" } th.num { "Attempts" } th { "Progress" } th { "Updated" } } }
                tbody {
                    @for job in &page.items {
                        tr data-id=(job.id) {
                            td.mono { a href={ "/ui/job/" (job.id) } { (job.id.short()) } }
                            td { (job.model) }
                            td { (job.mode) }
                            td { (status_badge(job.status.as_str())) @if job.tombstoned { " " span.muted { "tombstoned" } } }
                            td { (job.worker.as_ref().map(|w| w.as_str()).unwrap_or("")) }
                            td.num { (job.attempts) "/" (job.max_attempts) }
                            td { (progress_text(job)) }
                            td { (time(&job.updated_at)) }
                        }
                    }
                }
            }
        }
        p {
            @if let Some(next) = &page.next {
                a #next-page href=(q.next_url(next)) { "Next page →" }
            }
            @if given(&q.after).is_some() {
                " " a href="/ui/jobs" { "First page" }
            }
        }
    }
}
