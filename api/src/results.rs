//! Training results: the final metrics a trainer leaves in `$CIS490_OUTPUT_DIR/metrics.json`,
//! the progress lines it appends to `$CIS490_PROGRESS_FILE`, and how the API serves them
//! (`GET /v1/results`, `GET /v1/job/{id}/progress`).
//!
//! Both files are flat JSON objects of numbers and strings. The agent reads them within the
//! bounds below and the server refuses anything beyond them, so a trainer can never make a
//! request (or a row) grow without bound. A bad file is a warning, never a failed job.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{ArtifactId, JobId};
use crate::job::Hyper;

/// Largest `metrics.json` the agent reads, in bytes.
pub const MAX_METRICS_BYTES: usize = 64 * 1024;
/// Longest progress line the agent sends, in bytes (longer lines are skipped).
pub const MAX_PROGRESS_LINE_BYTES: usize = 4 * 1024;
/// Most progress points kept per attempt; a longer series is thinned evenly.
pub const MAX_PROGRESS_POINTS: usize = 1000;
/// Most bytes of a whole progress series as JSON; a larger one is thinned further.
pub const MAX_PROGRESS_SERIES_BYTES: usize = 256 * 1024;
/// Most warnings one report carries, and the longest one (characters).
pub const MAX_WARNINGS: usize = 16;
pub const MAX_WARNING_CHARS: usize = 1000;
/// Longest metric (or progress) key, in bytes.
pub const MAX_KEY_BYTES: usize = 200;

/// One value of a metrics or progress object: a JSON number (as written) or a string.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum MetricValue {
    #[cfg_attr(feature = "openapi", schema(value_type = f64))]
    Number(serde_json::Number),
    Text(String),
}

impl MetricValue {
    /// The value as a number, when it is one.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            MetricValue::Number(n) => n.as_f64(),
            MetricValue::Text(_) => None,
        }
    }
}

impl std::fmt::Display for MetricValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetricValue::Number(n) => write!(f, "{n}"),
            MetricValue::Text(s) => f.write_str(s),
        }
    }
}

/// A flat object of metrics (or one progress point): key -> number or string, sorted.
pub type Metrics = BTreeMap<String, MetricValue>;

/// Why a metrics or progress object is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResultsProblem {
    #[error("is not JSON: {0}")]
    NotJson(String),
    #[error("is not a flat JSON object of numbers and strings: {0}")]
    NotFlat(String),
    #[error("is {size} bytes, more than the {limit} allowed")]
    TooLarge { size: usize, limit: usize },
    #[error("has an empty key or one longer than {MAX_KEY_BYTES} bytes")]
    BadKey,
    #[error("has {0} points, more than the {MAX_PROGRESS_POINTS} allowed")]
    TooManyPoints(usize),
    #[error("has {0} warnings, more than the {MAX_WARNINGS} allowed")]
    TooManyWarnings(usize),
    #[error("has a warning longer than {MAX_WARNING_CHARS} characters")]
    LongWarning,
}

/// Parses one flat object of numbers and strings of at most `limit` bytes.
pub fn parse_flat(text: &[u8], limit: usize) -> Result<Metrics, ResultsProblem> {
    if text.len() > limit {
        return Err(ResultsProblem::TooLarge {
            size: text.len(),
            limit,
        });
    }
    let value: serde_json::Value =
        serde_json::from_slice(text).map_err(|e| ResultsProblem::NotJson(e.to_string()))?;
    let serde_json::Value::Object(map) = value else {
        return Err(ResultsProblem::NotFlat(format!(
            "the top level is {}",
            kind_of(&value)
        )));
    };
    let mut out = Metrics::new();
    for (key, value) in map {
        let value = match value {
            serde_json::Value::Number(n) => MetricValue::Number(n),
            serde_json::Value::String(s) => MetricValue::Text(s),
            other => {
                return Err(ResultsProblem::NotFlat(format!(
                    "{key:?} is {}",
                    kind_of(&other)
                )))
            }
        };
        out.insert(key, value);
    }
    check_keys(&out)?;
    Ok(out)
}

fn kind_of(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn check_keys(m: &Metrics) -> Result<(), ResultsProblem> {
    if m.keys().any(|k| k.is_empty() || k.len() > MAX_KEY_BYTES) {
        return Err(ResultsProblem::BadKey);
    }
    Ok(())
}

fn json_len(m: &impl Serialize) -> usize {
    serde_json::to_vec(m).map_or(usize::MAX, |v| v.len())
}

/// Checks one metrics object against the bounds (`limit` bytes as JSON).
pub fn check_flat(m: &Metrics, limit: usize) -> Result<(), ResultsProblem> {
    check_keys(m)?;
    let size = json_len(m);
    if size > limit {
        return Err(ResultsProblem::TooLarge { size, limit });
    }
    Ok(())
}

/// Keeps at most `max` of `points`, spread evenly over the series, the first and the last
/// always among them (so a thinned curve still starts and ends where the run did).
pub fn thin_evenly<T: Clone>(points: &[T], max: usize) -> Vec<T> {
    if points.len() <= max {
        return points.to_vec();
    }
    match max {
        0 => Vec::new(),
        1 => points.last().cloned().into_iter().collect(),
        _ => {
            let last = points.len() - 1;
            (0..max)
                .map(|i| points[i * last / (max - 1)].clone())
                .collect()
        }
    }
}

/// Thins a series until it holds at most [`MAX_PROGRESS_POINTS`] points and
/// [`MAX_PROGRESS_SERIES_BYTES`] bytes as JSON.
pub fn bound_series(points: &[Metrics]) -> Vec<Metrics> {
    let mut kept = thin_evenly(points, MAX_PROGRESS_POINTS);
    while kept.len() > 1 && json_len(&kept) > MAX_PROGRESS_SERIES_BYTES {
        kept = thin_evenly(&kept, kept.len() / 2);
    }
    kept
}

/// What a trainer left beside its exit status, as the agent read it: the final metrics
/// (exit 0 only), the progress series, and what was wrong with either file. Carried by
/// complete and fail; each warning becomes a `TrainerWarning` event of the job.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TrainerReport {
    /// `metrics.json`, when the trainer wrote a valid one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<BTreeMap<String, MetricValue>>))]
    pub metrics: Option<Metrics>,
    /// The progress lines, thinned evenly to at most 1,000 points.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<BTreeMap<String, MetricValue>>))]
    pub progress: Vec<Metrics>,
    /// What was wrong with the trainer's files (the job's result stands).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl TrainerReport {
    /// Nothing to report (the field is then left out of the request, so older servers,
    /// which refuse unknown fields, still accept it).
    pub fn is_empty(&self) -> bool {
        self.metrics.is_none() && self.progress.is_empty() && self.warnings.is_empty()
    }

    /// Checks the report against the bounds; the error names what is wrong.
    pub fn check(&self) -> Result<(), String> {
        if let Some(m) = &self.metrics {
            check_flat(m, MAX_METRICS_BYTES).map_err(|e| format!("report.metrics {e}"))?;
        }
        if self.progress.len() > MAX_PROGRESS_POINTS {
            return Err(format!(
                "report.progress {}",
                ResultsProblem::TooManyPoints(self.progress.len())
            ));
        }
        for point in &self.progress {
            check_flat(point, MAX_PROGRESS_LINE_BYTES)
                .map_err(|e| format!("a point of report.progress {e}"))?;
        }
        let size = json_len(&self.progress);
        if size > MAX_PROGRESS_SERIES_BYTES {
            return Err(format!(
                "report.progress {}",
                ResultsProblem::TooLarge {
                    size,
                    limit: MAX_PROGRESS_SERIES_BYTES
                }
            ));
        }
        check_warnings(&self.warnings).map_err(|e| format!("report.warnings: {e}"))
    }
}

/// Checks a list of warnings against [`MAX_WARNINGS`] and [`MAX_WARNING_CHARS`].
pub fn check_warnings(warnings: &[String]) -> Result<(), ResultsProblem> {
    if warnings.len() > MAX_WARNINGS {
        return Err(ResultsProblem::TooManyWarnings(warnings.len()));
    }
    if warnings
        .iter()
        .any(|w| w.chars().count() > MAX_WARNING_CHARS)
    {
        return Err(ResultsProblem::LongWarning);
    }
    Ok(())
}

/// Checks one progress point (a heartbeat's `progress`).
pub fn check_point(point: &Metrics) -> Result<(), String> {
    check_flat(point, MAX_PROGRESS_LINE_BYTES).map_err(|e| format!("progress {e}"))
}

/// A progress point as a short column: `7/20 loss=0.31` (`step`/`of` first, then the other
/// numbers, at most `max_values` of them).
pub fn progress_summary(point: &Metrics, max_values: usize) -> String {
    let mut parts = Vec::new();
    let step = point.get("step");
    match (step, point.get("of")) {
        (Some(s), Some(of)) => parts.push(format!("{s}/{of}")),
        (Some(s), None) => parts.push(format!("step {s}")),
        _ => {}
    }
    let rest = point
        .iter()
        .filter(|(k, _)| k.as_str() != "step" && k.as_str() != "of")
        .take(max_values)
        .map(|(k, v)| match v.as_f64() {
            Some(x) => format!("{k}={}", short_number(x)),
            None => format!("{k}={v}"),
        });
    parts.extend(rest);
    parts.join(" ")
}

/// A number in at most about 4 significant digits, integers as they are.
pub fn short_number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        return format!("{x}");
    }
    if x.abs() < 1e-3 || x.abs() >= 1e15 {
        return format!("{x:.3e}");
    }
    let text = format!("{x:.4}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Query of `GET /v1/results`: which completed jobs, in what order, how many.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::IntoParams),
    into_params(parameter_in = Query)
)]
#[serde(deny_unknown_fields)]
pub struct ResultsQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// `key=value` label selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", param(pattern = "="))]
    pub label: Option<String>,
    /// What to order by, `-` first for descending: a metric (`-val_accuracy`,
    /// `metrics.loss`), a hyper key (`hyper.learning_rate`), or one of `id`, `model`,
    /// `mode`, `seed`, `worker`, `attempt`, `duration`, `finished`. Rows without the
    /// value come last either way. Default: queue order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sort: Option<String>,
    /// One row per completed attempt (re-runs of a job after requeues) instead of one per
    /// job (its latest completion).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub attempts: bool,
    /// Most rows to answer (default 500, at most 1,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", param(minimum = 1))]
    pub limit: Option<u32>,
    /// The `next` of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// One row of `GET /v1/results`: a completed attempt and what it measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResultRow {
    pub id: JobId,
    pub model: String,
    pub mode: String,
    pub seed: i64,
    #[cfg_attr(feature = "openapi", schema(value_type = BTreeMap<String, serde_json::Value>))]
    pub hyper: Hyper,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The attempt's `metrics.json`; empty when it wrote none (or completed before metrics
    /// were kept).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = BTreeMap<String, MetricValue>))]
    pub metrics: Metrics,
    pub attempt: u32,
    pub worker: String,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Seconds from the first heartbeat to the completion.
    pub duration_s: Option<f64>,
    pub artifact_id: Option<ArtifactId>,
}

/// One attempt's progress, as `GET /v1/job/{id}/progress` serves it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AttemptProgress {
    pub attempt: u32,
    pub worker: String,
    /// completed, failed, released, or running (the job's current lease), or lost (a lease
    /// that ended without a report: expired or handed on).
    pub outcome: String,
    /// The latest point a heartbeat carried.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<BTreeMap<String, MetricValue>>))]
    pub latest: Option<Metrics>,
    /// The series: the heartbeats' points while it runs, the agent's full (thinned)
    /// history once it ended.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<BTreeMap<String, MetricValue>>))]
    pub series: Vec<Metrics>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<BTreeMap<String, MetricValue>>))]
    pub metrics: Option<Metrics>,
    #[serde(default)]
    pub warnings: Vec<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// The answer of `GET /v1/job/{id}/progress`: every attempt that reported anything,
/// oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobProgress {
    pub job_id: JobId,
    pub attempts: Vec<AttemptProgress>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(n: i64) -> MetricValue {
        MetricValue::Number(n.into())
    }

    #[test]
    fn flat_objects_parse_and_anything_else_is_named() {
        let m = parse_flat(br#"{"acc": 0.9, "step": 7, "note": "ok"}"#, 1000).unwrap();
        assert_eq!(m["step"], num(7));
        assert_eq!(m["acc"].as_f64(), Some(0.9));
        assert_eq!(m["note"], MetricValue::Text("ok".into()));
        // Integers stay integers on the way back out.
        assert_eq!(serde_json::to_string(&m["step"]).unwrap(), "7");
        for (bad, says) in [
            (&br#"[1, 2]"#[..], "top level is an array"),
            (br#"{"a": {"b": 1}}"#, "\"a\" is an object"),
            (br#"{"a": true}"#, "\"a\" is a boolean"),
            (br#"{"a": null}"#, "\"a\" is null"),
            (b"{nope", "not JSON"),
            (br#"{"": 1}"#, "empty key"),
        ] {
            let err = parse_flat(bad, 1000).unwrap_err().to_string();
            assert!(err.contains(says), "{err}");
        }
        let big = format!(r#"{{"a": "{}"}}"#, "x".repeat(100));
        assert!(matches!(
            parse_flat(big.as_bytes(), 50),
            Err(ResultsProblem::TooLarge { limit: 50, .. })
        ));
    }

    #[test]
    fn thinning_keeps_ends_and_spreads_evenly() {
        let points: Vec<u32> = (0..10).collect();
        assert_eq!(thin_evenly(&points, 20), points);
        assert_eq!(thin_evenly(&points, 4), vec![0, 3, 6, 9]);
        assert_eq!(thin_evenly(&points, 2), vec![0, 9]);
        assert_eq!(thin_evenly(&points, 1), vec![9]);
        let many: Vec<usize> = (0..5000).collect();
        let kept = thin_evenly(&many, MAX_PROGRESS_POINTS);
        assert_eq!(kept.len(), MAX_PROGRESS_POINTS);
        assert_eq!((kept[0], *kept.last().unwrap()), (0, 4999));
    }

    #[test]
    fn series_are_bounded_in_points_and_bytes() {
        let fat: Metrics = [("note".to_string(), MetricValue::Text("x".repeat(3000)))].into();
        let series = bound_series(&vec![fat; 500]);
        assert!(series.len() < 500);
        assert!(serde_json::to_vec(&series).unwrap().len() <= MAX_PROGRESS_SERIES_BYTES);
        let report = TrainerReport {
            progress: series,
            ..Default::default()
        };
        report.check().unwrap();
    }

    #[test]
    fn reports_beyond_the_bounds_are_refused() {
        let report = TrainerReport {
            progress: vec![Metrics::new(); MAX_PROGRESS_POINTS + 1],
            ..Default::default()
        };
        assert!(report.check().unwrap_err().contains("points"));
        let report = TrainerReport {
            warnings: vec!["w".into(); MAX_WARNINGS + 1],
            ..Default::default()
        };
        assert!(report.check().unwrap_err().contains("warnings"));
        let huge: Metrics = [(
            "a".to_string(),
            MetricValue::Text("x".repeat(MAX_METRICS_BYTES)),
        )]
        .into();
        let report = TrainerReport {
            metrics: Some(huge),
            ..Default::default()
        };
        assert!(report.check().unwrap_err().contains("metrics"));
        assert!(TrainerReport::default().is_empty());
    }

    #[test]
    fn progress_summaries_read_like_a_column() {
        let p = parse_flat(br#"{"step": 7, "of": 20, "loss": 0.312345}"#, 1000).unwrap();
        assert_eq!(progress_summary(&p, 2), "7/20 loss=0.3123");
        let p = parse_flat(br#"{"epoch": 3}"#, 1000).unwrap();
        assert_eq!(progress_summary(&p, 2), "epoch=3");
        assert_eq!(short_number(0.5), "0.5");
        assert_eq!(short_number(12.0), "12");
        assert_eq!(short_number(0.00001234), "1.234e-5");
    }
}
