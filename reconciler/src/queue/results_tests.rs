//! Training results per attempt: progress through heartbeats, metrics and series through
//! complete and fail, the results listing and the progress read.

use crate::queue::JobQueue;
use cis490_api::results::parse_flat;
use cis490_api::{
    CompleteRequest, FailRequest, HeartbeatRequest, IdPrefix, JobSpec, JobStatus, Lease, Metrics,
    ResultsQuery, TrainerReport,
};

use super::test_support::{cpu, spec, worker, Backend, TestQueue};
use super::{ManifestSource, Queue, QueueConfig, QueueError};
use crate::plan::plan;

fn queue_with(b: Backend, specs: &[JobSpec]) -> TestQueue {
    let q = b.queue();
    let p = plan(specs, &q.actual().unwrap());
    q.apply(&p, &[], &ManifestSource::default()).unwrap();
    q
}

fn m(json: &str) -> Metrics {
    parse_flat(json.as_bytes(), 10_000).unwrap()
}

fn beat(q: &dyn JobQueue, job: &JobSpec, lease: &Lease, progress: Option<Metrics>) {
    let req = HeartbeatRequest {
        log: Default::default(),
        worker: worker("w1"),
        lease: lease.clone(),
        log_tail: None,
        progress,
    };
    q.heartbeat(&job.id, &req).unwrap();
}

fn complete(q: &dyn JobQueue, job: &JobSpec, lease: &Lease, report: TrainerReport) {
    let req = CompleteRequest {
        worker: worker("w1"),
        lease: lease.clone(),
        artifact_id: None,
        upload: None,
        report,
    };
    q.complete(&job.id, &req).unwrap();
}

/// Claims the next job on w1 and runs it to completion with `metrics`.
fn run_one(q: &dyn JobQueue, metrics: &str) -> JobSpec {
    let claimed = q.claim(&worker("w1"), &cpu(16)).unwrap().unwrap();
    beat(q, &claimed.job, &claimed.lease, None);
    let report = TrainerReport {
        metrics: Some(m(metrics)),
        ..Default::default()
    };
    complete(q, &claimed.job, &claimed.lease, report);
    claimed.job
}

fn matrix() -> Vec<JobSpec> {
    (0..4)
        .map(|i| {
            let mut s = spec(&format!("job{i}"));
            s.manifest_order = i;
            s.seed = (i % 2) as i64;
            s.mode = if i < 3 { "oracle" } else { "realistic" }.to_string();
            s.hyper
                .insert("lr".into(), serde_json::json!([0.1, 0.01][i as usize / 2]));
            s.labels.insert("grid".into(), format!("g{}", i % 2));
            s
        })
        .collect()
}

fn heartbeat_progress_is_the_latest_point_and_grows_the_series(b: Backend) {
    let q = queue_with(b, &[spec("a")]);
    let q = &*q;
    let c = q.claim(&worker("w1"), &cpu(16)).unwrap().unwrap();
    beat(
        q,
        &c.job,
        &c.lease,
        Some(m(r#"{"step": 1, "of": 3, "loss": 0.9}"#)),
    );
    beat(q, &c.job, &c.lease, None);
    beat(
        q,
        &c.job,
        &c.lease,
        Some(m(r#"{"step": 2, "of": 3, "loss": 0.5}"#)),
    );
    let view = q.jobs(&Default::default()).unwrap().remove(0);
    assert_eq!(
        view.progress,
        Some(m(r#"{"step": 2, "of": 3, "loss": 0.5}"#))
    );
    assert_eq!(q.job(&c.job.id).unwrap().progress, view.progress);
    let progress = q.job_progress(&c.job.id).unwrap();
    assert_eq!(progress.attempts.len(), 1);
    let a = &progress.attempts[0];
    assert_eq!((a.attempt, a.outcome.as_str()), (1, "running"));
    assert_eq!(
        a.series.len(),
        2,
        "a heartbeat without progress adds no point"
    );
    // The agent's history replaces the live series at the end; the metrics are kept.
    let history: Vec<Metrics> = (1..=3).map(|i| m(&format!(r#"{{"step": {i}}}"#))).collect();
    complete(
        q,
        &c.job,
        &c.lease,
        TrainerReport {
            metrics: Some(m(r#"{"accuracy": 0.8}"#)),
            progress: history.clone(),
            warnings: vec![],
        },
    );
    let progress = q.job_progress(&c.job.id).unwrap();
    let a = &progress.attempts[0];
    assert_eq!(a.outcome, "completed");
    assert_eq!(a.series, history);
    assert_eq!(a.latest, history.last().cloned());
    assert_eq!(a.metrics, Some(m(r#"{"accuracy": 0.8}"#)));
    let view = q.job(&c.job.id).unwrap();
    assert_eq!(view.progress, None, "only a leased job shows progress");
    assert_eq!(view.metrics, Some(m(r#"{"accuracy": 0.8}"#)));
}

fn a_live_series_past_its_bound_is_thinned_not_cut(b: Backend) {
    let q = queue_with(b, &[spec("a")]);
    let q = &*q;
    let c = q.claim(&worker("w1"), &cpu(16)).unwrap().unwrap();
    let n = cis490_api::results::MAX_PROGRESS_POINTS + 5;
    for i in 0..n {
        beat(q, &c.job, &c.lease, Some(m(&format!(r#"{{"step": {i}}}"#))));
    }
    let series = q.job_progress(&c.job.id).unwrap().attempts.remove(0).series;
    assert!(series.len() <= 200, "{}", series.len());
    assert!(series.len() >= 100, "{}", series.len());
    assert_eq!(series[0], m(r#"{"step": 0}"#));
    assert_eq!(
        series.last(),
        Some(&m(&format!(r#"{{"step": {}}}"#, n - 1)))
    );
}

fn warnings_become_events_and_failures_keep_their_series(b: Backend) {
    let q = queue_with(b, &[spec("a")]);
    let q = &*q;
    let c = q.claim(&worker("w1"), &cpu(16)).unwrap().unwrap();
    let req = FailRequest {
        cause: Default::default(),
        worker: worker("w1"),
        lease: c.lease.clone(),
        reason: "trainer exited with code 1".into(),
        exit_code: Some(1),
        log_tail: None,
        retryable: false,
        report: TrainerReport {
            metrics: None,
            progress: vec![m(r#"{"step": 1}"#)],
            warnings: vec!["progress file: line 2 is not JSON".into()],
        },
    };
    q.fail(&c.job.id, &req).unwrap();
    let view = q.job(&c.job.id).unwrap();
    assert_eq!(view.status, JobStatus::Failed);
    let warning = view
        .events
        .iter()
        .find(|e| e.kind == "TrainerWarning")
        .expect("a TrainerWarning event");
    assert_eq!(
        warning.message,
        "attempt 1: progress file: line 2 is not JSON"
    );
    let a = q.job_progress(&c.job.id).unwrap().attempts.remove(0);
    assert_eq!((a.outcome.as_str(), a.series.len()), ("failed", 1));
    assert!(q
        .results_page(&ResultsQuery::default(), 10)
        .unwrap()
        .items
        .is_empty());
}

fn reports_beyond_their_bounds_are_refused_before_anything_changes(b: Backend) {
    let q = queue_with(b, &[spec("a")]);
    let q = &*q;
    let c = q.claim(&worker("w1"), &cpu(16)).unwrap().unwrap();
    let fat = m(&format!(r#"{{"note": "{}"}}"#, "x".repeat(5000)));
    let req = HeartbeatRequest {
        log: Default::default(),
        worker: worker("w1"),
        lease: c.lease.clone(),
        log_tail: None,
        progress: Some(fat),
    };
    let err = q.heartbeat(&c.job.id, &req).unwrap_err();
    assert!(matches!(err, QueueError::BadRequest { .. }), "{err}");
    let req = CompleteRequest {
        worker: worker("w1"),
        lease: c.lease.clone(),
        artifact_id: None,
        upload: None,
        report: TrainerReport {
            warnings: vec!["w".into(); 100],
            ..Default::default()
        },
    };
    let err = q.complete(&c.job.id, &req).unwrap_err();
    assert!(matches!(err, QueueError::BadRequest { .. }), "{err}");
    assert_eq!(q.job(&c.job.id).unwrap().status, JobStatus::Claimed);
}

fn results_filter_sort_and_page(b: Backend) {
    let q = queue_with(b, &matrix());
    let q = &*q;
    // job0..job3 in manifest order; accuracy 0.5, 0.9, 0.7, and none.
    run_one(q, r#"{"accuracy": 0.5, "loss": 2}"#);
    run_one(q, r#"{"accuracy": 0.9, "loss": 1}"#);
    run_one(q, r#"{"accuracy": 0.7, "loss": 3}"#);
    run_one(q, r#"{"loss": 4}"#);
    let page = |query: ResultsQuery, limit| q.results_page(&query, limit).unwrap();
    let accuracies = |p: &cis490_api::Page<cis490_api::ResultRow>| -> Vec<Option<f64>> {
        p.items
            .iter()
            .map(|r| r.metrics.get("accuracy").and_then(|v| v.as_f64()))
            .collect()
    };
    let all = page(ResultsQuery::default(), 10);
    assert_eq!(
        accuracies(&all),
        [Some(0.5), Some(0.9), Some(0.7), None],
        "queue order by default"
    );
    assert!(all.next.is_none());
    let row = &all.items[0];
    assert_eq!((row.model.as_str(), row.worker.as_str()), ("gbt", "w1"));
    assert!(row.duration_s.is_some() && row.finished_at.is_some());
    let sorted = page(
        ResultsQuery {
            sort: Some("-accuracy".into()),
            ..Default::default()
        },
        10,
    );
    assert_eq!(
        accuracies(&sorted),
        [Some(0.9), Some(0.7), Some(0.5), None],
        "descending, rows without the metric last"
    );
    let ascending = page(
        ResultsQuery {
            sort: Some("metrics.accuracy".into()),
            ..Default::default()
        },
        10,
    );
    assert_eq!(
        accuracies(&ascending),
        [Some(0.5), Some(0.7), Some(0.9), None]
    );
    let by_hyper = page(
        ResultsQuery {
            sort: Some("hyper.lr".into()),
            ..Default::default()
        },
        10,
    );
    assert_eq!(
        accuracies(&by_hyper),
        [Some(0.7), None, Some(0.5), Some(0.9)],
        "lr 0.01 (job2, job3) first, then queue order"
    );
    let oracle = page(
        ResultsQuery {
            mode: Some("oracle".into()),
            label: Some("grid=g0".into()),
            ..Default::default()
        },
        10,
    );
    assert_eq!(accuracies(&oracle), [Some(0.5), Some(0.7)]);
    // Pages of two, sorted, continue where the last one ended.
    let first = page(
        ResultsQuery {
            sort: Some("-loss".into()),
            ..Default::default()
        },
        2,
    );
    let second = page(
        ResultsQuery {
            sort: Some("-loss".into()),
            after: first.next.clone(),
            ..Default::default()
        },
        2,
    );
    let losses: Vec<f64> = first
        .items
        .iter()
        .chain(&second.items)
        .filter_map(|r| r.metrics["loss"].as_f64())
        .collect();
    assert_eq!(losses, [4.0, 3.0, 2.0, 1.0]);
    assert!(second.next.is_none());
    for bad in [
        ResultsQuery {
            label: Some("nokey".into()),
            ..Default::default()
        },
        ResultsQuery {
            after: Some("x".into()),
            ..Default::default()
        },
        ResultsQuery {
            sort: Some("a\"b".into()),
            ..Default::default()
        },
    ] {
        let err = q.results_page(&bad, 10).unwrap_err();
        assert!(matches!(err, QueueError::BadRequest { .. }), "{err}");
    }
}

fn requeued_jobs_keep_each_completed_attempt_for_comparison(b: Backend) {
    let q = queue_with(b, &[spec("a")]);
    let q = &*q;
    let job = run_one(q, r#"{"accuracy": 0.5}"#);
    q.requeue(&job.id).unwrap();
    let rows = |attempts| {
        q.results_page(
            &ResultsQuery {
                attempts,
                ..Default::default()
            },
            10,
        )
        .unwrap()
        .items
    };
    assert!(rows(false).is_empty(), "a requeued job has no result yet");
    assert_eq!(rows(true).len(), 1, "its earlier completion is kept");
    run_one(q, r#"{"accuracy": 0.6}"#);
    let latest = rows(false);
    assert_eq!(latest.len(), 1);
    assert_eq!(latest[0].metrics["accuracy"].as_f64(), Some(0.6));
    let every = rows(true);
    let seen: Vec<f64> = every
        .iter()
        .filter_map(|r| r.metrics["accuracy"].as_f64())
        .collect();
    assert_eq!(seen, [0.5, 0.6]);
    let progress = q
        .job_progress(
            &q.resolve(&IdPrefix::parse(job.id.short()).unwrap())
                .unwrap(),
        )
        .unwrap();
    assert_eq!(progress.attempts.len(), 2);
}

/// Jobs completed before results were kept (schema 8) are listed by `GET /v1/results`
/// after the migration, without metrics, under their last attempt.
#[test]
fn jobs_completed_before_results_were_kept_are_listed_after_migration() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v8.db");
    let job = spec("old");
    {
        let mut conn = rusqlite::Connection::open(&path).unwrap();
        super::schema::migrate_to(&mut conn, 8).unwrap();
        conn.execute(
            "INSERT INTO jobs (id, spec, status, priority, manifest_order, model, mode, \
             require_cuda, prefer_cuda, min_vram_gib, min_ram_gib, allowed_hosts, worker, \
             attempts, created_at, updated_at, pending_since, started_at, finished_at) \
             VALUES (?1, ?2, 'completed', 0, 0, 'gbt', 'realistic', 0, 0, 0, 0, '[]', \
             'w1', 2, 0, 0, 0, 1000, 5000)",
            rusqlite::params![job.id.as_str(), serde_json::to_string(&job).unwrap()],
        )
        .unwrap();
    }
    let q = Queue::open(&path, QueueConfig::default()).unwrap();
    let rows = q.results_page(&ResultsQuery::default(), 10).unwrap().items;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!((row.id.clone(), row.attempt), (job.id.clone(), 2));
    assert!(row.metrics.is_empty());
    assert_eq!(row.duration_s, Some(4.0));
    assert_eq!(row.worker, "w1");
}

fn a_lease_handed_back_with_nothing_to_report_adds_no_attempt(b: Backend) {
    let q = queue_with(b, &[spec("a")]);
    let q = &*q;
    let release = |c: &cis490_api::ClaimResponse| FailRequest {
        cause: Default::default(),
        worker: worker("w1"),
        lease: c.lease.clone(),
        reason: "agent-shutdown".into(),
        exit_code: None,
        log_tail: None,
        retryable: true,
        report: TrainerReport::default(),
    };
    let c = q.claim(&worker("w1"), &cpu(16)).unwrap().unwrap();
    q.fail(&c.job.id, &release(&c)).unwrap();
    assert!(q.job_progress(&c.job.id).unwrap().attempts.is_empty());
    // One that reported progress keeps it, marked released.
    let c = q.claim(&worker("w1"), &cpu(16)).unwrap().unwrap();
    beat(q, &c.job, &c.lease, Some(m(r#"{"step": 1}"#)));
    q.fail(&c.job.id, &release(&c)).unwrap();
    let attempts = q.job_progress(&c.job.id).unwrap().attempts;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome, "released");
    assert!(attempts[0].finished_at.is_some());
}

#[test]
fn a_completion_with_nothing_to_report_writes_no_row_and_is_still_a_result() {
    // Reads SQLite's table directly: this one stays on SQLite.
    let q = Queue::open_in_memory(QueueConfig::default()).unwrap();
    let jobs = [spec("a"), spec("b")];
    q.apply(
        &plan(&jobs, &q.actual().unwrap()),
        &[],
        &ManifestSource::default(),
    )
    .unwrap();
    let c = q.claim(&worker("w1"), &cpu(16)).unwrap().unwrap();
    beat(&q, &c.job, &c.lease, None);
    complete(&q, &c.job, &c.lease, TrainerReport::default());
    let stored: i64 = q
        .read(|tx| {
            Ok(tx
                .db
                .query_row("SELECT COUNT(*) FROM attempt_results", [], |r| r.get(0))?)
        })
        .unwrap();
    assert_eq!(
        stored, 0,
        "the cycle of a trainer without files writes nothing more"
    );
    let rows = q.results_page(&ResultsQuery::default(), 10).unwrap().items;
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].id.clone(), rows[0].attempt), (c.job.id.clone(), 1));
    assert!(rows[0].metrics.is_empty() && rows[0].started_at.is_some());
    // A job whose trainer reported progress but wrote no metrics keeps its row, completed.
    let d = q.claim(&worker("w1"), &cpu(16)).unwrap().unwrap();
    beat(&q, &d.job, &d.lease, Some(m(r#"{"step": 1}"#)));
    complete(&q, &d.job, &d.lease, TrainerReport::default());
    let a = q.job_progress(&d.job.id).unwrap().attempts.remove(0);
    assert_eq!(a.outcome, "completed");
    assert_eq!(
        q.results_page(&ResultsQuery::default(), 10)
            .unwrap()
            .items
            .len(),
        2
    );
}

super::test_support::on_both_backends!(
    heartbeat_progress_is_the_latest_point_and_grows_the_series,
    a_live_series_past_its_bound_is_thinned_not_cut,
    warnings_become_events_and_failures_keep_their_series,
    reports_beyond_their_bounds_are_refused_before_anything_changes,
    results_filter_sort_and_page,
    requeued_jobs_keep_each_completed_attempt_for_comparison,
    a_lease_handed_back_with_nothing_to_report_adds_no_attempt,
);
