//! `GET /v1/results` on PostgreSQL: completed jobs (or attempts) with their metrics,
//! filtered and sorted in the database, as SQLite's `results::i_results_page` (JSON kept as
//! TEXT is read with `::jsonb`; a JSON sort key orders by jsonb's own order, nulls last).

use cis490_api::{ArtifactId, JobSpec, Page, ResultRow, ResultsQuery};

use super::rows::{count, from_json};
use super::tx::PgTx;
use crate::queue::results::{decode_offset, json_member};
use crate::queue::rows::from_ms;
use crate::queue::QueueError;

/// What a `sort` orders by: SQL over the listing's columns, with a JSON key bound as $8.
struct SortKey {
    expr: &'static str,
    key: Option<String>,
    descending: bool,
}

/// The keys SQLite's `results::sort_key` accepts, with the same refusals.
fn sort_key(sort: Option<&str>) -> Result<Option<SortKey>, QueueError> {
    let Some(sort) = sort.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let (descending, key) = match sort.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, sort.strip_prefix('+').unwrap_or(sort)),
    };
    let of = |expr, key| {
        Ok(Some(SortKey {
            expr,
            key,
            descending,
        }))
    };
    match key {
        "id" => of("id", None),
        "model" => of("model", None),
        "mode" => of("mode", None),
        "seed" => of("(spec::jsonb -> 'seed')", None),
        "worker" => of("worker", None),
        "attempt" => of("attempt", None),
        "duration" | "duration_s" => of("(finished - started)", None),
        "finished" | "finished_at" => of("finished", None),
        "started" | "started_at" => of("started", None),
        _ => {
            if let Some(h) = key.strip_prefix("hyper.") {
                json_member(h, "hyper key")?;
                of("(spec::jsonb -> 'hyper' -> $8::text)", Some(h.to_string()))
            } else {
                let m = key.strip_prefix("metrics.").unwrap_or(key);
                json_member(m, "metric")?;
                of("(metrics::jsonb -> $8::text)", Some(m.to_string()))
            }
        }
    }
}

pub(crate) fn i_results_page(
    tx: &mut PgTx<'_>,
    query: &ResultsQuery,
    limit: usize,
) -> Result<Page<ResultRow>, QueueError> {
    let (label_key, label_value) = match query.label.as_deref() {
        None => (None, None),
        Some(sel) => {
            let (k, v) = sel.split_once('=').ok_or_else(|| QueueError::BadRequest {
                message: format!("label selector {sel:?} is not key=value"),
            })?;
            json_member(k, "label key")?;
            (Some(k.to_string()), Some(v.to_string()))
        }
    };
    let offset = decode_offset(query.after.as_deref())?;
    let sort = sort_key(query.sort.as_deref())?;
    let order = match &sort {
        None => String::new(),
        Some(key) => format!(
            "{e} IS NULL, {e} {}, ",
            if key.descending { "DESC" } else { "ASC" },
            e = key.expr
        ),
    };
    let job_filter = "($1::text IS NULL OR j.model = $1) AND ($2::text IS NULL OR j.mode = $2) \
                      AND ($3::text IS NULL OR (j.spec::jsonb -> 'labels' ->> $3) = $4::text)";
    let sql = format!(
        "SELECT spec, attempt, worker, metrics, started, finished, artifact FROM ( \
           SELECT j.spec AS spec, j.id AS id, j.model AS model, j.mode AS mode, \
             j.priority AS priority, j.manifest_order AS manifest_order, \
             COALESCE(r.attempt, j.attempts) AS attempt, \
             COALESCE(r.worker, j.worker, '') AS worker, r.metrics AS metrics, \
             j.started_at AS started, j.finished_at AS finished, j.artifact_id AS artifact, \
             9223372036854775807 AS seq \
           FROM jobs j LEFT JOIN attempt_results r ON r.job_id = j.id \
             AND r.outcome = 'completed' AND r.finished_at = j.finished_at \
           WHERE j.status = 'completed' AND {job_filter} \
           UNION ALL \
           SELECT j.spec, j.id, j.model, j.mode, j.priority, j.manifest_order, r.attempt, \
             r.worker, r.metrics, r.started_at, r.finished_at, r.artifact_id, r.finished_at \
           FROM attempt_results r JOIN jobs j ON j.id = r.job_id \
           WHERE $5 AND r.outcome = 'completed' AND {job_filter} \
             AND NOT (j.status = 'completed' AND r.finished_at IS NOT DISTINCT FROM j.finished_at) \
         ) AS listed \
         WHERE ($8::text IS NULL OR $8::text IS NOT NULL) \
         ORDER BY {order}priority DESC, manifest_order, id, seq \
         LIMIT $6 OFFSET $7",
    );
    let want = i64::try_from(limit + 1).unwrap_or(i64::MAX);
    let offset_i = i64::try_from(offset).unwrap_or(i64::MAX);
    let key = sort.and_then(|k| k.key);
    let rows = tx.db.query(
        sql.as_str(),
        &[
            &query.model,
            &query.mode,
            &label_key,
            &label_value,
            &query.attempts,
            &want,
            &offset_i,
            &key,
        ],
    )?;
    let more = rows.len() > limit;
    let mut items = Vec::with_capacity(rows.len().min(limit));
    for r in rows.iter().take(limit) {
        let spec: String = r.try_get(0)?;
        let spec: JobSpec = from_json("job spec", &spec)?;
        let metrics: Option<String> = r.try_get(3)?;
        let started: Option<i64> = r.try_get(4)?;
        let finished: Option<i64> = r.try_get(5)?;
        let artifact: Option<String> = r.try_get(6)?;
        items.push(ResultRow {
            id: spec.id,
            model: spec.model,
            mode: spec.mode,
            seed: spec.seed,
            hyper: spec.hyper,
            labels: spec.labels,
            metrics: metrics
                .map(|t| from_json("metrics", &t))
                .transpose()?
                .unwrap_or_default(),
            attempt: count(r.try_get(1)?, "attempt")?,
            worker: r.try_get(2)?,
            started_at: started.map(from_ms),
            finished_at: finished.map(from_ms),
            duration_s: match (started, finished) {
                (Some(s), Some(f)) => Some((f - s).max(0) as f64 / 1000.0),
                _ => None,
            },
            artifact_id: artifact
                .as_deref()
                .map(ArtifactId::parse)
                .transpose()
                .map_err(QueueError::corrupt)?,
        });
    }
    let next = more.then(|| (offset + limit as u64).to_string());
    Ok(Page { items, next })
}
