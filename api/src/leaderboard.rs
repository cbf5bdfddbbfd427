//! The leaderboard of `cis490ctl results` and of the dashboard's results page: which
//! columns a set of results gets (the hyper keys that vary, the metrics), their cells, and
//! aggregation over seeds (`--group-by`: mean, sample standard deviation and count per
//! group). Pure functions over [`ResultRow`]s; the callers fetch and print.

use std::collections::{BTreeMap, BTreeSet};

use crate::results::short_number;
use crate::{MetricValue, ResultRow};

/// One column of the leaderboard, named as `--sort`, `--columns` and `--group-by` name it:
/// a field (`id`, `model`, `mode`, `seed`, `worker`, `attempt`, `duration`, `finished`,
/// `artifact`), `hyper.KEY`, or a metric (`metrics.KEY` or the bare key).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    Id,
    Model,
    Mode,
    Seed,
    Worker,
    Attempt,
    Duration,
    Finished,
    Artifact,
    Hyper(String),
    Metric(String),
}

impl Key {
    pub fn parse(spec: &str) -> Key {
        let spec = spec.trim();
        match spec {
            "id" => Key::Id,
            "model" => Key::Model,
            "mode" => Key::Mode,
            "seed" => Key::Seed,
            "worker" => Key::Worker,
            "attempt" => Key::Attempt,
            "duration" | "duration_s" => Key::Duration,
            "finished" | "finished_at" => Key::Finished,
            "artifact" | "artifact_id" => Key::Artifact,
            _ => match spec.strip_prefix("hyper.") {
                Some(k) => Key::Hyper(k.to_string()),
                None => Key::Metric(spec.strip_prefix("metrics.").unwrap_or(spec).to_string()),
            },
        }
    }

    /// The column's name: fields upper-case in tables (like every cis490ctl table), keys
    /// as written; in CSV everything as `--columns` names it, so pandas columns are the
    /// names the operator typed.
    pub fn header(&self, table: bool) -> String {
        let field = |name: &str| {
            if table {
                name.to_uppercase()
            } else {
                name.to_string()
            }
        };
        match self {
            Key::Id => field("id"),
            Key::Model => field("model"),
            Key::Mode => field("mode"),
            Key::Seed => field("seed"),
            Key::Worker => field("worker"),
            Key::Attempt => field("attempt"),
            Key::Duration => field(if table { "duration" } else { "duration_s" }),
            Key::Finished => field("finished"),
            Key::Artifact => field("artifact"),
            Key::Hyper(k) if table => k.clone(),
            Key::Hyper(k) => format!("hyper.{k}"),
            Key::Metric(k) => k.clone(),
        }
    }

    /// The row's value in this column.
    pub fn value(&self, row: &ResultRow) -> Value {
        match self {
            Key::Id => Value::Text(row.id.to_string()),
            Key::Model => Value::Text(row.model.clone()),
            Key::Mode => Value::Text(row.mode.clone()),
            Key::Seed => Value::number(row.seed as f64, row.seed.to_string()),
            Key::Worker => Value::Text(row.worker.clone()),
            Key::Attempt => Value::number(f64::from(row.attempt), row.attempt.to_string()),
            Key::Duration => row
                .duration_s
                .map_or(Value::Missing, |d| Value::number(d, d.to_string())),
            Key::Finished => row
                .finished_at
                .map_or(Value::Missing, |t| Value::Text(t.to_rfc3339())),
            Key::Artifact => row
                .artifact_id
                .as_ref()
                .map_or(Value::Missing, |a| Value::Text(a.to_string())),
            Key::Hyper(k) => row.hyper.get(k).map_or(Value::Missing, Value::of_json),
            Key::Metric(k) => row.metrics.get(k).map_or(Value::Missing, |v| match v {
                MetricValue::Number(n) => {
                    Value::number(n.as_f64().unwrap_or(f64::NAN), n.to_string())
                }
                MetricValue::Text(s) => Value::Text(s.clone()),
            }),
        }
    }
}

/// One cell's value: a number (with its text as written), text, or nothing.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Number(f64, String),
    Text(String),
    Missing,
}

impl Value {
    fn number(x: f64, raw: String) -> Value {
        Value::Number(x, raw)
    }

    fn of_json(v: &serde_json::Value) -> Value {
        match v {
            serde_json::Value::Number(n) => {
                Value::Number(n.as_f64().unwrap_or(f64::NAN), n.to_string())
            }
            serde_json::Value::String(s) => Value::Text(s.clone()),
            serde_json::Value::Null => Value::Missing,
            other => Value::Text(other.to_string()),
        }
    }

    /// As a table shows it: numbers short, IDs short, nothing as `<none>`.
    pub fn table_text(&self, key: &Key) -> String {
        match (self, key) {
            (Value::Missing, _) => "<none>".to_string(),
            (Value::Text(id), Key::Id | Key::Artifact) => id.chars().take(12).collect(),
            (Value::Number(d, _), Key::Duration) => {
                crate::human::human_duration(chrono::TimeDelta::milliseconds((d * 1000.0) as i64))
            }
            (Value::Number(x, _), _) => short_number(*x),
            (Value::Text(s), _) => s.clone(),
        }
    }

    /// As CSV and JSON carry it: in full.
    pub fn raw_text(&self) -> String {
        match self {
            Value::Missing => String::new(),
            Value::Number(_, raw) => raw.clone(),
            Value::Text(s) => s.clone(),
        }
    }

    fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Number(x, _) if x.is_finite() => Some(*x),
            _ => None,
        }
    }

    fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Missing => serde_json::Value::Null,
            Value::Number(_, raw) => {
                serde_json::from_str(raw).unwrap_or_else(|_| serde_json::Value::String(raw.clone()))
            }
            Value::Text(s) => serde_json::Value::String(s.clone()),
        }
    }
}

/// Orders values: numbers by value, then text, nothing last.
fn compare(a: &Value, b: &Value) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a, b) {
        (Value::Number(x, _), Value::Number(y, _)) => x.partial_cmp(y).unwrap_or(Ordering::Equal),
        (Value::Number(..), _) => Ordering::Less,
        (_, Value::Number(..)) => Ordering::Greater,
        (Value::Text(x), Value::Text(y)) => x.cmp(y),
        (Value::Text(_), Value::Missing) => Ordering::Less,
        (Value::Missing, Value::Text(_)) => Ordering::Greater,
        (Value::Missing, Value::Missing) => Ordering::Equal,
    }
}

/// Whether `key` takes more than one value over `rows` (a missing value counts as one).
fn varies(rows: &[ResultRow], key: &Key) -> bool {
    let mut seen: Vec<Value> = Vec::new();
    for row in rows {
        let v = key.value(row);
        if !seen.contains(&v) {
            seen.push(v);
            if seen.len() > 1 {
                return true;
            }
        }
    }
    false
}

/// Every hyper key and every metric key of `rows`, sorted.
fn keys_of(rows: &[ResultRow]) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut hyper = BTreeSet::new();
    let mut metrics = BTreeSet::new();
    for row in rows {
        hyper.extend(row.hyper.keys().cloned());
        metrics.extend(row.metrics.keys().cloned());
    }
    (hyper, metrics)
}

/// The default columns: ID; model, mode and seed when they vary; the hyper keys that vary;
/// every metric (the sorted-by one first); the duration. `wide` adds every field and every
/// hyper key.
pub fn default_columns(rows: &[ResultRow], sort: Option<&Key>, wide: bool) -> Vec<Key> {
    let (hyper, metrics) = keys_of(rows);
    let mut cols = vec![Key::Id];
    for key in [Key::Model, Key::Mode, Key::Seed] {
        if wide || varies(rows, &key) {
            cols.push(key);
        }
    }
    cols.extend(
        hyper
            .into_iter()
            .map(Key::Hyper)
            .filter(|k| wide || varies(rows, k)),
    );
    let mut metric_cols: Vec<Key> = metrics.into_iter().map(Key::Metric).collect();
    if let Some(at) = sort.and_then(|s| metric_cols.iter().position(|k| k == s)) {
        let first = metric_cols.remove(at);
        metric_cols.insert(0, first);
    }
    cols.extend(metric_cols);
    cols.push(Key::Duration);
    if wide {
        cols.extend([Key::Worker, Key::Attempt, Key::Finished, Key::Artifact]);
    }
    cols
}

/// A sort key as `--sort` gives it: the key and whether it descends.
pub fn parse_sort(spec: &str) -> (Key, bool) {
    match spec.trim().strip_prefix('-') {
        Some(rest) => (Key::parse(rest), true),
        None => (Key::parse(spec.trim().trim_start_matches('+')), false),
    }
}

/// Mean, sample standard deviation (None below two values) and count of one metric in one
/// group.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Summary {
    pub mean: f64,
    pub std: Option<f64>,
    pub n: usize,
}

impl Summary {
    fn of(values: &[f64]) -> Option<Summary> {
        let n = values.len();
        if n == 0 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let std = (n > 1).then(|| {
            let var = values.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            var.sqrt()
        });
        Some(Summary { mean, std, n })
    }

    /// `0.9120 ± 0.0040` (no `±` for a single value).
    pub fn table_text(&self) -> String {
        match self.std {
            Some(std) => format!("{} ± {}", short_number(self.mean), short_number(std)),
            None => short_number(self.mean),
        }
    }
}

/// One group of `--group-by`: its key values, how many results, and per metric a summary.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub values: Vec<Value>,
    pub n: usize,
    pub metrics: BTreeMap<String, Summary>,
}

impl Group {
    /// The group as JSON or YAML carry it.
    pub fn to_json(&self, by: &[Key]) -> serde_json::Value {
        let group: serde_json::Map<String, serde_json::Value> = by
            .iter()
            .zip(&self.values)
            .map(|(k, v)| (k.header(false), v.to_json()))
            .collect();
        serde_json::json!({ "group": group, "n": self.n, "metrics": self.metrics })
    }
}

/// Groups `rows` by the values of `by` (in order of first appearance) and summarises every
/// numeric metric, or only `metrics` when given.
pub fn group(rows: &[ResultRow], by: &[Key], metrics: Option<&[String]>) -> Vec<Group> {
    let (_, all_metrics) = keys_of(rows);
    let names: Vec<String> = match metrics {
        Some(m) => m.to_vec(),
        None => all_metrics.into_iter().collect(),
    };
    let mut groups: Vec<(Vec<Value>, Vec<&ResultRow>)> = Vec::new();
    for row in rows {
        let values: Vec<Value> = by.iter().map(|k| k.value(row)).collect();
        match groups.iter_mut().find(|(v, _)| *v == values) {
            Some((_, members)) => members.push(row),
            None => groups.push((values, vec![row])),
        }
    }
    groups
        .into_iter()
        .map(|(values, members)| {
            let metrics = names
                .iter()
                .filter_map(|name| {
                    let key = Key::Metric(name.clone());
                    let xs: Vec<f64> = members
                        .iter()
                        .filter_map(|r| key.value(r).as_f64())
                        .collect();
                    Summary::of(&xs).map(|s| (name.clone(), s))
                })
                .collect();
            Group {
                values,
                n: members.len(),
                metrics,
            }
        })
        .collect()
}

/// Orders groups by `sort`: a metric by its mean, a group key by its value; nothing last.
pub fn sort_groups(groups: &mut [Group], by: &[Key], sort: &Key, descending: bool) {
    let value_of = |g: &Group| -> Value {
        match sort {
            Key::Metric(m) => g.metrics.get(m).map_or(Value::Missing, |s| {
                Value::Number(s.mean, s.mean.to_string())
            }),
            other => by
                .iter()
                .position(|k| k == other)
                .map_or(Value::Missing, |i| g.values[i].clone()),
        }
    };
    groups.sort_by(|a, b| {
        let (va, vb) = (value_of(a), value_of(b));
        match (&va, &vb) {
            (Value::Missing, Value::Missing) => std::cmp::Ordering::Equal,
            (Value::Missing, _) => std::cmp::Ordering::Greater,
            (_, Value::Missing) => std::cmp::Ordering::Less,
            _ if descending => compare(&vb, &va),
            _ => compare(&va, &vb),
        }
    });
}

/// One CSV field (RFC 4180: quoted when it holds a comma, quote or line break).
pub fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// One CSV line of fields, ending in CRLF-free `\n` (pandas and Python's csv read both).
pub fn csv_line<S: AsRef<str>>(fields: impl IntoIterator<Item = S>) -> String {
    let mut line = fields
        .into_iter()
        .map(|f| csv_field(f.as_ref()))
        .collect::<Vec<_>>()
        .join(",");
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::parse_flat;

    fn row(i: u8, seed: i64, lr: f64, metrics: &str) -> ResultRow {
        ResultRow {
            id: crate::JobId::parse(&format!("{i:02x}").repeat(32)).unwrap(),
            model: "gbt".into(),
            mode: "oracle".into(),
            seed,
            hyper: [
                ("learning_rate".to_string(), serde_json::json!(lr)),
                ("depth".to_string(), serde_json::json!(6)),
            ]
            .into(),
            labels: Default::default(),
            metrics: parse_flat(metrics.as_bytes(), 10_000).unwrap(),
            attempt: 1,
            worker: "w1".into(),
            started_at: None,
            finished_at: None,
            duration_s: Some(1.5),
            artifact_id: None,
        }
    }

    fn rows() -> Vec<ResultRow> {
        vec![
            row(1, 1, 0.1, r#"{"accuracy": 0.80, "loss": 0.5}"#),
            row(2, 2, 0.1, r#"{"accuracy": 0.90, "loss": 0.4}"#),
            row(3, 1, 0.01, r#"{"accuracy": 0.70}"#),
            row(4, 2, 0.01, r#"{"accuracy": 0.72, "note": "x"}"#),
        ]
    }

    #[test]
    fn keys_parse_like_the_server_sorts() {
        assert_eq!(Key::parse("seed"), Key::Seed);
        assert_eq!(Key::parse("hyper.lr"), Key::Hyper("lr".into()));
        assert_eq!(Key::parse("metrics.acc"), Key::Metric("acc".into()));
        assert_eq!(Key::parse("acc"), Key::Metric("acc".into()));
        assert_eq!(parse_sort("-acc"), (Key::Metric("acc".into()), true));
        assert_eq!(parse_sort("duration"), (Key::Duration, false));
    }

    #[test]
    fn default_columns_are_the_varying_hyper_keys_and_the_metrics() {
        let cols = default_columns(&rows(), Some(&Key::Metric("loss".into())), false);
        assert_eq!(
            cols,
            [
                Key::Id,
                Key::Seed,
                Key::Hyper("learning_rate".into()),
                Key::Metric("loss".into()),
                Key::Metric("accuracy".into()),
                Key::Metric("note".into()),
                Key::Duration,
            ],
            "depth is 6 everywhere, model and mode never change"
        );
        let wide = default_columns(&rows(), None, true);
        assert!(wide.contains(&Key::Hyper("depth".into())) && wide.contains(&Key::Worker));
        let headers: Vec<String> = cols.iter().map(|k| k.header(false)).collect();
        assert_eq!(headers[..3], ["id", "seed", "hyper.learning_rate"]);
        assert_eq!(Key::Duration.header(true), "DURATION");
    }

    #[test]
    fn groups_have_the_mean_sample_std_and_count_over_seeds() {
        let by = [Key::Hyper("learning_rate".into())];
        let mut groups = group(&rows(), &by, None);
        assert_eq!(groups.len(), 2);
        let first = &groups[0];
        assert_eq!(first.values, [Value::Number(0.1, "0.1".into())]);
        assert_eq!(first.n, 2);
        let acc = &first.metrics["accuracy"];
        assert!((acc.mean - 0.85).abs() < 1e-12);
        assert!(
            (acc.std.unwrap() - 0.0707106781).abs() < 1e-9,
            "sample std, as pandas"
        );
        assert!(
            !groups[1].metrics.contains_key("loss"),
            "no values, no summary"
        );
        assert_eq!(groups[1].metrics["accuracy"].n, 2);
        sort_groups(&mut groups, &by, &Key::Metric("accuracy".into()), false);
        assert_eq!(groups[0].values, [Value::Number(0.01, "0.01".into())]);
        sort_groups(&mut groups, &by, &Key::Metric("loss".into()), true);
        assert_eq!(
            groups[0].values,
            [Value::Number(0.1, "0.1".into())],
            "a missing mean goes last"
        );
        assert_eq!(Summary::of(&[1.0]).unwrap().table_text(), "1");
        assert_eq!(
            Summary::of(&[1.0, 2.0]).unwrap().table_text(),
            "1.5 ± 0.7071"
        );
    }

    #[test]
    fn csv_fields_are_quoted_only_when_they_must_be() {
        assert_eq!(
            csv_line(["a", "b,c", "say \"hi\"", ""]),
            "a,\"b,c\",\"say \"\"hi\"\"\",\n"
        );
    }
}
