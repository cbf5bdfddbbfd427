//! The results page: per model, the leaderboard `cis490ctl results` prints (the same
//! rows from `GET /v1/results`' handler, the same columns and grouping from
//! `cis490_api::leaderboard`), sortable by any column, and a chart of a chosen metric
//! against a chosen hyper key: one point per job, jobs that differ only in their seed
//! drawn as one point with their mean and standard deviation.

use axum::extract::{Query, State};
use axum::response::Response;
use cis490_api::leaderboard::{default_columns, group, parse_sort, Key, Value};
use cis490_api::{ResultRow, ResultsQuery, MAX_PAGE_LIMIT};
use maud::{html, Markup};
use serde::Deserialize;

use super::super::error::ApiFailure;
use super::super::extract::ApiQuery;
use super::super::{blocking, results, AppState};
use super::jobs::{encode_query, percent};
use super::layout::Nav;
use super::svg::{Chart, Point, Series, XAxis};
use super::{given, Viewer};

/// Most rows the page reads (ten pages of the results route).
const MAX_ROWS: usize = 10 * MAX_PAGE_LIMIT as usize;

#[derive(Debug, Default, Clone, Deserialize)]
pub struct ResultsPageQuery {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub sort: Option<String>,
    /// The chart's metric.
    #[serde(default)]
    pub metric: Option<String>,
    /// The chart's hyper key (without `hyper.`).
    #[serde(default)]
    pub x: Option<String>,
}

impl ResultsPageQuery {
    fn url_with(&self, key: &str, value: &str) -> String {
        let mut pairs: Vec<(&str, String)> = Vec::new();
        for (k, v) in [
            ("model", &self.model),
            ("mode", &self.mode),
            ("sort", &self.sort),
            ("metric", &self.metric),
            ("x", &self.x),
        ] {
            if k == key {
                pairs.push((k, value.to_string()));
            } else if let Some(v) = given(v) {
                pairs.push((k, v));
            }
        }
        format!("/ui/results?{}", encode_query(&pairs))
    }
}

/// Every row of `query`, page by page, up to [`MAX_ROWS`].
async fn rows(
    state: &AppState,
    mut query: ResultsQuery,
) -> Result<(Vec<ResultRow>, bool), ApiFailure> {
    let mut out = Vec::new();
    query.limit = Some(MAX_PAGE_LIMIT);
    loop {
        let page = results::results(State(state.clone()), ApiQuery(query.clone()))
            .await?
            .0;
        out.extend(page.items);
        match page.next {
            Some(next) if out.len() < MAX_ROWS => query.after = Some(next),
            Some(_) => return Ok((out, true)),
            None => return Ok((out, false)),
        }
    }
}

/// A column's key as `sort` names it.
fn sort_name(key: &Key) -> String {
    match key {
        Key::Duration => "duration".into(),
        Key::Finished => "finished".into(),
        Key::Metric(m) => format!("metrics.{m}"),
        other => other.header(false),
    }
}

pub async fn page(
    State(state): State<AppState>,
    viewer: Viewer,
    query: Result<Query<ResultsPageQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let query = match query {
        Ok(Query(q)) => q,
        Err(e) => return viewer.fail(&ApiFailure::bad_request(e.body_text())),
    };
    let made = async {
        let queue = state.queue.clone();
        let models = blocking(move || queue.completed_models()).await?;
        let model = given(&query.model).or_else(|| models.first().cloned());
        let (rows, truncated) = match &model {
            Some(model) => {
                rows(
                    &state,
                    ResultsQuery {
                        model: Some(model.clone()),
                        mode: given(&query.mode),
                        sort: given(&query.sort),
                        ..ResultsQuery::default()
                    },
                )
                .await?
            }
            None => (Vec::new(), false),
        };
        let query = ResultsPageQuery { model, ..query };
        Ok(viewer.page(
            "Results",
            Nav::Results,
            Some(controls(&query, &models, &rows)),
            render(&query, &rows, truncated),
        ))
    };
    viewer.answer(made.await)
}

fn hyper_keys(rows: &[ResultRow]) -> Vec<String> {
    default_columns(rows, None, true)
        .into_iter()
        .filter_map(|k| match k {
            Key::Hyper(h) => Some(h),
            _ => None,
        })
        .collect()
}

fn metric_keys(rows: &[ResultRow]) -> Vec<String> {
    default_columns(rows, None, false)
        .into_iter()
        .filter_map(|k| match k {
            Key::Metric(m) => Some(m),
            _ => None,
        })
        .collect()
}

fn controls(q: &ResultsPageQuery, models: &[String], rows: &[ResultRow]) -> Markup {
    let model = given(&q.model).unwrap_or_default();
    let metric = chart_metric(q, rows).unwrap_or_default();
    let x = chart_x(q, rows).unwrap_or_default();
    html! {
        form.filters method="get" action="/ui/results" {
            label { "Model" select #model name="model" {
                @for m in models { option value=(m) selected[*m == model] { (m) } }
            } }
            label { "Mode" input name="mode" value=[given(&q.mode)]; }
            label { "Chart metric" select #metric name="metric" {
                @for m in metric_keys(rows) { option value=(m) selected[m == metric] { (m) } }
            } }
            label { "against hyper" select #x name="x" {
                @for h in hyper_keys(rows) { option value=(h) selected[h == x] { (h) } }
            } }
            @if let Some(sort) = given(&q.sort) { input type="hidden" name="sort" value=(sort); }
            button type="submit" { "Show" }
        }
    }
}

fn chart_metric(q: &ResultsPageQuery, rows: &[ResultRow]) -> Option<String> {
    given(&q.metric).or_else(|| metric_keys(rows).into_iter().next())
}

/// The chart's hyper key: the one asked for, else the first that varies.
fn chart_x(q: &ResultsPageQuery, rows: &[ResultRow]) -> Option<String> {
    given(&q.x).or_else(|| {
        default_columns(rows, None, false)
            .into_iter()
            .find_map(|k| match k {
                Key::Hyper(h) => Some(h),
                _ => None,
            })
            .or_else(|| hyper_keys(rows).into_iter().next())
    })
}

fn value_text(v: &Value) -> String {
    match v {
        Value::Missing => "<none>".into(),
        Value::Number(_, raw) => raw.clone(),
        Value::Text(s) => s.clone(),
    }
}

/// `metric` against `hyper.x`: rows grouped by every varying key but the seed (so seeds
/// are aggregated); one series per combination of the keys other than `x`.
pub fn chart(rows: &[ResultRow], metric: &str, x: &str) -> Chart {
    let x_key = Key::Hyper(x.to_string());
    let mut by: Vec<Key> = default_columns(rows, None, false)
        .into_iter()
        .filter(|k| matches!(k, Key::Mode | Key::Hyper(_)) && *k != x_key)
        .collect();
    by.insert(0, x_key);
    let groups = group(rows, &by, Some(&[metric.to_string()]));
    let numeric = groups
        .iter()
        .all(|g| matches!(g.values[0], Value::Number(..) | Value::Missing));
    let mut categories: Vec<String> = Vec::new();
    let mut series: Vec<Series> = Vec::new();
    for g in &groups {
        let Some(summary) = g.metrics.get(metric) else {
            continue;
        };
        let x_value = match (&g.values[0], numeric) {
            (Value::Number(v, _), true) => *v,
            (Value::Missing, _) => continue,
            (other, _) => {
                let name = value_text(other);
                match categories.iter().position(|c| *c == name) {
                    Some(i) => i as f64,
                    None => {
                        categories.push(name);
                        (categories.len() - 1) as f64
                    }
                }
            }
        };
        let name = by[1..]
            .iter()
            .zip(&g.values[1..])
            .map(|(k, v)| format!("{}={}", k.header(false), value_text(v)))
            .collect::<Vec<_>>()
            .join(" ");
        let point = Point {
            x: x_value,
            y: summary.mean,
            err: summary.std,
        };
        match series.iter_mut().find(|s| s.name == name) {
            Some(s) => s.points.push(point),
            None => series.push(Series {
                name,
                points: vec![point],
            }),
        }
    }
    for s in &mut series {
        s.points.sort_by(|a, b| a.x.total_cmp(&b.x));
    }
    Chart {
        title: format!("{metric} against {x} (mean ± std over seeds)"),
        x_label: x.to_string(),
        y_label: metric.to_string(),
        x_axis: if numeric {
            XAxis::Numbers
        } else {
            XAxis::Categories(categories)
        },
        lines: false,
        series,
    }
}

pub fn render(q: &ResultsPageQuery, rows: &[ResultRow], truncated: bool) -> Markup {
    let (sort_key, descending) = match given(&q.sort) {
        Some(s) => {
            let (k, d) = parse_sort(&s);
            (Some(k), d)
        }
        None => (None, false),
    };
    let columns = default_columns(rows, sort_key.as_ref(), false);
    html! {
        h1 { "Results" @if let Some(m) = given(&q.model) { " · " (m) } }
        @if rows.is_empty() {
            p.muted { "No completed job yet." }
        } @else {
            @if let (Some(metric), Some(x)) = (chart_metric(q, rows), chart_x(q, rows)) {
                div #results-chart { (chart(rows, &metric, &x).render()) }
            }
            @if truncated { p.muted { "The first " (MAX_ROWS) " results; filter by mode to see the rest." } }
            table #leaderboard {
                thead { tr { @for key in &columns {
                    @let name = sort_name(key);
                    @let here = sort_key.as_ref() == Some(key);
                    @let next = if here && !descending { format!("-{name}") } else { name.clone() };
                    th { a href=(q.url_with("sort", &next)) { (key.header(true)) @if here { (if descending { " ▼" } else { " ▲" }) } } }
                } } }
                tbody { @for row in rows { tr {
                    @for key in &columns {
                        @let v = key.value(row);
                        @if *key == Key::Id {
                            td.mono { a href={ "/ui/job/" (percent(row.id.as_str())) } { (v.table_text(key)) } }
                        } @else {
                            td class=[matches!(v, Value::Number(..)).then_some("num")] { (v.table_text(key)) }
                        }
                    }
                } } }
            }
        }
    }
}
