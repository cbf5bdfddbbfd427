//! Rendering tests of the dashboard's pages: what users wrote comes out escaped, and the
//! overview's counts walk an index.

use std::collections::BTreeMap;

use cis490_api::results::parse_flat;
use cis490_api::{JobId, ManifestError, ManifestStatus, ResultRow};

use super::results::{chart, render as render_results, ResultsPageQuery};
use crate::queue::{Queue, QueueConfig};

fn row(i: u8, seed: i64, lr: &str, acc: f64) -> ResultRow {
    ResultRow {
        id: JobId::parse(&format!("{i:02x}").repeat(32)).unwrap(),
        model: "<script>alert('model')</script>".into(),
        mode: "oracle".into(),
        seed,
        hyper: [
            (
                "learning_rate".to_string(),
                serde_json::json!(lr.parse::<f64>().unwrap()),
            ),
            (
                "note".to_string(),
                serde_json::json!("<img src=x onerror=alert(1)>"),
            ),
        ]
        .into_iter()
        .collect(),
        labels: BTreeMap::new(),
        metrics: parse_flat(format!("{{\"accuracy\": {acc}}}").as_bytes(), 1000).unwrap(),
        attempt: 1,
        worker: "w1".into(),
        started_at: None,
        finished_at: None,
        duration_s: Some(1.5),
        artifact_id: None,
    }
}

#[test]
fn the_leaderboard_and_its_chart_escape_model_names_and_hyper_values() {
    let rows = vec![
        row(1, 1, "0.1", 0.9),
        row(2, 2, "0.1", 0.8),
        row(3, 1, "0.01", 0.7),
    ];
    let q = ResultsPageQuery {
        model: Some(rows[0].model.clone()),
        ..ResultsPageQuery::default()
    };
    let html = render_results(&q, &rows, false).into_string();
    assert!(!html.contains("<script>"), "{html}");
    assert!(html.contains("&lt;script&gt;alert('model')"), "{html}");
    assert!(!html.contains("<img"), "{html}");
    // Sortable: each header links to sorting by it.
    assert!(html.contains("sort=metrics.accuracy"), "{html}");
    // Seeds aggregated: two learning rates, two points, one of them a mean of two.
    let c = chart(&rows, "accuracy", "learning_rate");
    assert_eq!(c.series.len(), 1);
    let points = &c.series[0].points;
    assert_eq!(points.len(), 2, "{points:?}");
    assert!((points[1].y - 0.85).abs() < 1e-9 && points[1].err.is_some());
    assert_eq!(points[0].err, None);
}

#[test]
fn the_manifest_page_marks_the_error_line_and_escapes_the_file() {
    let status = ManifestStatus {
        path: "/srv/secret/dir/training_manifest.toml".into(),
        sha256: None,
        generation: 3,
        last_applied_at: None,
        last_errors: vec![ManifestError {
            path: "/srv/secret/dir/training_manifest.toml".into(),
            line: Some(2),
            column: Some(5),
            message: "expected a value, got <oops>".into(),
        }],
        last_error_at: None,
        warnings: Vec::new(),
    };
    let text = "version = 1\nx = <script>\n";
    let html = super::manifest::render(&status, Some(text)).into_string();
    assert!(html.contains("<span id=\"L2\" class=\"bad\">"), "{html}");
    assert!(
        html.contains("&lt;script&gt;") && !html.contains("<script>"),
        "{html}"
    );
    assert!(html.contains("training_manifest.toml:2:5"), "{html}");
    assert!(
        !html.contains("/srv/secret"),
        "a server path leaked: {html}"
    );
}

#[test]
fn the_overview_counts_walk_an_index_not_the_table() {
    let q = Queue::open_in_memory(QueueConfig::default()).unwrap();
    let plan = q
        .read(|tx| {
            let sql = format!("EXPLAIN QUERY PLAN {}", crate::queue::reads::LIVE_COUNTS);
            let mut stmt = tx.db.prepare(&sql)?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(3))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?.join("; "))
        })
        .unwrap();
    assert!(plan.contains("COVERING INDEX"), "{plan}");
    assert!(
        !plan.contains("TEMP B-TREE"),
        "the counts are sorted again: {plan}"
    );
}
