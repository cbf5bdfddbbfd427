//! One agent per name (instance IDs) and "complete only what you uploaded".

use crate::queue::JobQueue;
use chrono::Duration;
use cis490_api::{
    AgentInstance, ArtifactId, ArtifactView, Capability, CompleteRequest, HeartbeatRequest, JobId,
    JobSpec, JobStatus, Lease,
};

use super::events::kind;
use super::test_support::Backend;
use super::test_support::{cpu, manual_clock, specs, worker};
use super::{ManifestSource, Queue, QueueConfig, QueueError};
use crate::plan::plan;

fn queue_with(config: QueueConfig) -> Queue {
    Queue::open_in_memory(config).unwrap()
}

fn queue() -> Queue {
    queue_with(QueueConfig::default())
}

fn load(q: &dyn JobQueue, jobs: &[JobSpec]) {
    let p = plan(jobs, &q.actual().unwrap());
    q.apply(&p, &[], &ManifestSource::default()).unwrap();
}

/// A CPU host reported by agent process `id` (pid 4242) on host `host`.
fn agent(id: &str, host: &str) -> Capability {
    Capability {
        hostname: host.to_string(),
        instance: Some(AgentInstance {
            id: id.to_string(),
            pid: Some(4242),
            stopping: false,
            replaces: None,
        }),
        ..cpu(8)
    }
}

fn stopping(cap: &Capability) -> Capability {
    let mut cap = cap.clone();
    if let Some(i) = cap.instance.as_mut() {
        i.stopping = true;
    }
    cap
}

fn event_kinds(q: &dyn JobQueue) -> Vec<String> {
    q.events_since(0, 1000)
        .unwrap()
        .events
        .into_iter()
        .map(|e| e.kind)
        .collect()
}

fn name_in_use(result: Result<impl std::fmt::Debug, QueueError>) -> String {
    match result {
        Err(QueueError::NameInUse { message, .. }) => message,
        other => panic!("expected NameInUse, got {other:?}"),
    }
}

fn a_second_instance_is_refused_while_the_first_is_live_and_the_first_is_undisturbed(b: Backend) {
    let q = b.queue();
    let q = &*q;
    load(q, &specs("j", 2));
    let first = agent("aaaa1111", "box-a");
    let second = agent("bbbb2222", "box-b");
    let gpu1 = worker("gpu-1");
    q.report_node(&gpu1, &first).unwrap();
    let claimed = q.claim(&gpu1, &first).unwrap().unwrap();

    let message = name_in_use(q.claim(&gpu1, &second));
    for needed in [
        "another agent (instance aaaa1111, pid 4242 on host box-a)",
        "holds worker name gpu-1",
        "seen 0 s ago",
        "--name",
    ] {
        assert!(message.contains(needed), "{needed:?} missing: {message}");
    }
    name_in_use(q.report_node(&gpu1, &second));
    assert!(event_kinds(q).contains(&kind::NAME_IN_USE.to_string()));

    // The first keeps its job, heartbeats and completes.
    let hb = HeartbeatRequest {
        worker: gpu1.clone(),
        lease: claimed.lease.clone(),
        log_tail: None,
        log: None,
        progress: None,
    };
    assert!(!q.heartbeat(&claimed.job.id, &hb).unwrap().cancel);
    let done = CompleteRequest {
        worker: gpu1.clone(),
        lease: claimed.lease.clone(),
        artifact_id: None,
        upload: None,
        report: Default::default(),
    };
    assert_eq!(
        q.complete(&claimed.job.id, &done).unwrap().status,
        JobStatus::Completed
    );
    assert!(q.claim(&gpu1, &first).unwrap().is_some());
    // The refused agent's report changed nothing the worker shows.
    assert_eq!(q.worker(&gpu1).unwrap().capability.hostname, "box-a");
}

fn an_agent_restarted_on_its_state_dir_takes_its_name_over_from_its_previous_life_at_once(
    b: Backend,
) {
    let q = b.queue();
    let q = &*q;
    load(q, &specs("j", 2));
    let gpu1 = worker("gpu-1");
    let dead = agent("aaaa1111", "box-a");
    q.report_node(&gpu1, &dead).unwrap();
    // The dead life still holds a lease: without `replaces` the name stays taken.
    q.claim(&gpu1, &dead).unwrap().unwrap();
    let stranger = agent("bbbb2222", "box-a");
    name_in_use(q.report_node(&gpu1, &stranger));
    let mut successor = agent("cccc3333", "box-a");
    if let Some(i) = successor.instance.as_mut() {
        i.replaces = Some("aaaa1111".into());
    }
    q.report_node(&gpu1, &successor).unwrap();
    assert!(q.claim(&gpu1, &successor).unwrap().is_some());
    assert!(event_kinds(q).contains(&kind::INSTANCE_REPLACED.to_string()));
    // Naming an instance that does not hold the name proves nothing.
    let mut pretender = agent("dddd4444", "box-b");
    if let Some(i) = pretender.instance.as_mut() {
        i.replaces = Some("aaaa1111".into());
    }
    name_in_use(q.report_node(&gpu1, &pretender));
}

fn a_stale_holder_is_taken_over_and_then_refused_itself(b: Backend) {
    let clock = manual_clock();
    let q = b.queue_on(&clock, QueueConfig::default());
    let q = &*q;
    let first = agent("aaaa1111", "box-a");
    let second = agent("bbbb2222", "box-b");
    let gpu1 = worker("gpu-1");
    q.report_node(&gpu1, &first).unwrap();
    clock.advance(Duration::seconds(60));
    let message = name_in_use(q.report_node(&gpu1, &second));
    assert!(
        message.contains("seen 60 s ago") && message.contains("frees in 30 s"),
        "{message}"
    );
    clock.advance(Duration::seconds(31));
    q.report_node(&gpu1, &second).unwrap();
    assert!(event_kinds(q).contains(&kind::INSTANCE_REPLACED.to_string()));
    let message = name_in_use(q.claim(&gpu1, &first));
    assert!(message.contains("instance bbbb2222"), "{message}");
}

fn a_holder_with_an_unexpired_lease_keeps_the_name_after_it_goes_stale(b: Backend) {
    let clock = manual_clock();
    let q = b.queue_on(
        &clock,
        QueueConfig {
            node_stale_after_s: 10,
            ..QueueConfig::default()
        },
    );
    let q = &*q;
    load(q, &specs("j", 1)); // 90 s leases
    let first = agent("aaaa1111", "box-a");
    let second = agent("bbbb2222", "box-b");
    let gpu1 = worker("gpu-1");
    q.claim(&gpu1, &first).unwrap().unwrap();
    clock.advance(Duration::seconds(20));
    let message = name_in_use(q.claim(&gpu1, &second));
    assert!(message.contains("holds a lease until"), "{message}");
    clock.advance(Duration::seconds(71));
    // The lease has expired (the sweep has not run yet): the name is free.
    assert!(q.report_node(&gpu1, &second).is_ok());
}

fn a_holder_that_signs_off_frees_the_name_at_once(b: Backend) {
    let q = b.queue();
    let q = &*q;
    let first = agent("aaaa1111", "box-a");
    let second = agent("bbbb2222", "box-b");
    let third = agent("cccc3333", "box-c");
    let gpu1 = worker("gpu-1");
    q.report_node(&gpu1, &first).unwrap();
    // A sign-off from an agent that does not hold the name changes nothing.
    q.report_node(&gpu1, &stopping(&second)).unwrap();
    name_in_use(q.report_node(&gpu1, &second));
    q.report_node(&gpu1, &stopping(&first)).unwrap();
    assert!(event_kinds(q).contains(&kind::INSTANCE_STOPPED.to_string()));
    q.report_node(&gpu1, &second).unwrap();
    name_in_use(q.report_node(&gpu1, &third));
}

fn agents_that_send_no_instance_are_not_checked_and_bad_ids_are_refused(b: Backend) {
    let q = b.queue();
    let q = &*q;
    let gpu1 = worker("gpu-1");
    q.report_node(&gpu1, &agent("aaaa1111", "box-a")).unwrap();
    assert!(q.report_node(&gpu1, &cpu(8)).is_ok());
    // An old agent's report keeps the holder.
    name_in_use(q.report_node(&gpu1, &agent("bbbb2222", "box-b")));
    for bad in ["", "has space", &"x".repeat(65)] {
        let err = q.report_node(&worker("w"), &agent(bad, "h")).unwrap_err();
        assert!(
            matches!(err, QueueError::BadRequest { .. }),
            "{bad:?}: {err}"
        );
    }
}

fn artifact(byte: &str) -> ArtifactId {
    ArtifactId::parse(&byte.repeat(32)).unwrap()
}

/// The store's record that it holds `id` (`size` bytes), as an upload or the start-up scan
/// writes it.
fn stored(q: &dyn JobQueue, id: &ArtifactId, size: u64) {
    q.index_artifacts(&[ArtifactView {
        artifact_id: id.clone(),
        job_id: JobId::parse(&"f".repeat(64)).unwrap(),
        attempt: Some(1),
        model: "first".into(),
        mode: "upload".into(),
        worker: "w0".into(),
        size_bytes: size,
        received_at: chrono::DateTime::from_timestamp_millis(1_000).unwrap(),
    }])
    .unwrap();
}

/// Two running jobs, each claimed by its own worker.
fn two_running(q: &dyn JobQueue) -> Vec<(JobSpec, Lease, &'static str)> {
    load(q, &specs("j", 2));
    ["w1", "w2"]
        .into_iter()
        .map(|w| {
            let c = q.claim(&worker(w), &cpu(8)).unwrap().unwrap();
            let hb = HeartbeatRequest {
                worker: worker(w),
                lease: c.lease.clone(),
                log_tail: None,
                log: None,
                progress: None,
            };
            q.heartbeat(&c.job.id, &hb).unwrap();
            (c.job, c.lease, w)
        })
        .collect()
}

fn complete(
    q: &dyn JobQueue,
    (job, lease, w): &(JobSpec, Lease, &str),
    artifact: Option<ArtifactId>,
) -> Result<JobStatus, QueueError> {
    let req = CompleteRequest {
        worker: worker(w),
        lease: lease.clone(),
        artifact_id: artifact,
        upload: None,
        report: Default::default(),
    };
    q.complete(&job.id, &req).map(|r| r.status)
}

fn status_of(q: &dyn JobQueue, job: &JobSpec) -> JobStatus {
    q.job(&job.id).unwrap().status
}

fn a_completion_may_name_only_an_artifact_its_lease_uploaded(b: Backend) {
    let q = b.queue();
    let q = &*q;
    let jobs = two_running(q);
    let (one, two) = (&jobs[0], &jobs[1]);
    q.record_upload(&two.0.id, &worker(two.2), &two.1, &artifact("bb"), 100)
        .unwrap();

    // Another job's artifact.
    let err = complete(q, one, Some(artifact("bb"))).unwrap_err();
    assert!(
        matches!(&err, QueueError::ArtifactNotUploaded { message }
            if message.contains(&format!("uploaded for job {}", two.0.id.short()))),
        "{err}"
    );
    assert_eq!(err.code(), "artifact_not_uploaded");
    // One never uploaded.
    let err = complete(q, one, Some(artifact("ee"))).unwrap_err();
    assert!(
        matches!(&err, QueueError::ArtifactNotUploaded { message } if message.contains("never uploaded")),
        "{err}"
    );
    assert_eq!(status_of(q, &one.0), JobStatus::Running);

    // Having uploaded, job one may not complete without its artifact.
    q.record_upload(&one.0.id, &worker(one.2), &one.1, &artifact("aa"), 100)
        .unwrap();
    let err = complete(q, one, None).unwrap_err();
    assert!(
        matches!(&err, QueueError::ArtifactRequired { message } if message.contains(artifact("aa").as_str())),
        "{err}"
    );
    assert_eq!(err.code(), "artifact_required");
    assert_eq!(status_of(q, &one.0), JobStatus::Running);

    assert_eq!(
        complete(q, one, Some(artifact("aa"))).unwrap(),
        JobStatus::Completed
    );
    assert_eq!(q.job(&one.0.id).unwrap().artifact_id, Some(artifact("aa")));
    assert_eq!(
        complete(q, two, Some(artifact("bb"))).unwrap(),
        JobStatus::Completed
    );
}

fn a_completion_without_an_upload_and_without_an_artifact_is_allowed(b: Backend) {
    let q = b.queue();
    let q = &*q;
    let jobs = two_running(q);
    assert_eq!(complete(q, &jobs[0], None).unwrap(), JobStatus::Completed);
}

#[test]
fn an_upload_of_an_earlier_lease_does_not_count_and_a_lost_lease_records_nothing() {
    let q = queue();
    load(&q, &specs("j", 1));
    let first = q.claim(&worker("w1"), &cpu(8)).unwrap().unwrap();
    let id = first.job.id.clone();
    q.record_upload(&id, &worker("w1"), &first.lease, &artifact("aa"), 1)
        .unwrap();
    q.sweep(q.now() + Duration::seconds(91)).unwrap();
    // The expired lease's upload (the bytes finished after the sweep) is refused.
    let late = q
        .record_upload(&id, &worker("w1"), &first.lease, &artifact("ab"), 1)
        .unwrap_err();
    assert!(matches!(late, QueueError::LeaseLost { .. }), "{late}");
    let second = q.claim(&worker("w2"), &cpu(8)).unwrap().unwrap();
    let now_running = (second.job.clone(), second.lease.clone(), "w2");
    let err = complete(&q, &now_running, Some(artifact("aa"))).unwrap_err();
    assert!(
        matches!(err, QueueError::ArtifactNotUploaded { .. }),
        "{err}"
    );
    // Nothing this lease uploaded: completing without an artifact is allowed.
    assert_eq!(
        complete(&q, &now_running, None).unwrap(),
        JobStatus::Completed
    );
    let rows: i64 = q
        .read(|tx| {
            Ok(tx
                .db
                .query_row("SELECT COUNT(*) FROM uploads", [], |r| r.get(0))?)
        })
        .unwrap();
    assert_eq!(rows, 1);
}

/// The artifact listing's rows: one per (job, attempt, artifact), however often the same
/// lease uploaded the same bytes, with the job's model and mode.
#[test]
fn uploads_are_listed_once_per_job_attempt_and_artifact() {
    let q = queue();
    let jobs = two_running(&q);
    let (one, two) = (&jobs[0], &jobs[1]);
    for _ in 0..2 {
        q.record_upload(&one.0.id, &worker(one.2), &one.1, &artifact("aa"), 100)
            .unwrap();
    }
    q.record_upload(&two.0.id, &worker(two.2), &two.1, &artifact("aa"), 100)
        .unwrap();
    stored(&q, &artifact("aa"), 100);
    let rows = q.uploads().unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    for (job, _, w) in [one, two] {
        let row = rows.iter().find(|r| r.job_id == job.id).unwrap();
        assert_eq!(row.artifact_id, artifact("aa"));
        assert_eq!(row.attempt, Some(1));
        assert_eq!(row.worker, *w);
        assert_eq!((&row.model, &row.mode), (&job.model, &job.mode));
    }
}

/// Jobs completed before uploads were recorded (schema 6 and older) get their artifact's
/// row when the database migrates, so the listing still names each job.
#[test]
fn jobs_completed_before_uploads_were_recorded_are_listed_after_migration() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v6.db");
    let done = specs("done", 2);
    {
        let mut conn = rusqlite::Connection::open(&path).unwrap();
        super::schema::migrate_to(&mut conn, 6).unwrap();
        for job in &done {
            conn.execute(
                "INSERT INTO jobs (id, spec, status, priority, manifest_order, model, mode, \
                 require_cuda, prefer_cuda, min_vram_gib, min_ram_gib, allowed_hosts, worker, \
                 attempts, artifact_id, created_at, updated_at, pending_since, finished_at) \
                 VALUES (?1, ?2, 'completed', 0, ?3, 'gbt', 'realistic', 0, 0, 0, 0, '[]', \
                 'w1', 2, ?4, 0, 0, 0, 5000)",
                rusqlite::params![
                    job.id.as_str(),
                    serde_json::to_string(job).unwrap(),
                    job.manifest_order as i64,
                    artifact("cc").as_str(),
                ],
            )
            .unwrap();
        }
    }
    let q = Queue::open(&path, QueueConfig::default()).unwrap();
    stored(&q, &artifact("cc"), 9);
    let rows = q.uploads().unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    for job in &done {
        let row = rows.iter().find(|r| r.job_id == job.id).unwrap();
        assert_eq!(row.artifact_id, artifact("cc"));
        assert_eq!(row.attempt, Some(2));
        assert_eq!(row.received_at.timestamp_millis(), 5000);
    }
}

/// An upload repeated under one lease in a schema-7 database (where nothing stopped it) is
/// kept once by the migration that makes uploads unique per (job, lease, artifact).
#[test]
fn uploads_repeated_under_one_lease_are_kept_once_after_migration() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v7.db");
    let job = &specs("dup", 1)[0];
    {
        let mut conn = rusqlite::Connection::open(&path).unwrap();
        super::schema::migrate_to(&mut conn, 7).unwrap();
        conn.execute(
            "INSERT INTO jobs (id, spec, status, priority, manifest_order, model, mode, \
             require_cuda, prefer_cuda, min_vram_gib, min_ram_gib, allowed_hosts, worker, \
             attempts, artifact_id, created_at, updated_at, pending_since, finished_at) \
             VALUES (?1, ?2, 'completed', 0, 0, 'gbt', 'realistic', 0, 0, 0, 0, '[]', \
             'w1', 1, ?3, 0, 0, 0, 5000)",
            rusqlite::params![
                job.id.as_str(),
                serde_json::to_string(job).unwrap(),
                artifact("dd").as_str()
            ],
        )
        .unwrap();
        for at in [100, 200, 300] {
            conn.execute(
                "INSERT INTO uploads (job_id, attempt, lease_token, artifact_id, worker, \
                 size_bytes, at) VALUES (?1, 1, 'tok', ?2, 'w1', 7, ?3)",
                rusqlite::params![job.id.as_str(), artifact("dd").as_str(), at],
            )
            .unwrap();
        }
    }
    let q = Queue::open(&path, QueueConfig::default()).unwrap();
    stored(&q, &artifact("dd"), 7);
    let rows = q.uploads().unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        rows[0].received_at.timestamp_millis(),
        100,
        "the first is kept"
    );
    let stored: i64 = q
        .read(|tx| {
            Ok(tx
                .db
                .query_row("SELECT COUNT(*) FROM uploads", [], |r| r.get(0))?)
        })
        .unwrap();
    assert_eq!(stored, 1);
}

/// The artifact listing reads the index: recorded uploads of indexed bytes (with the
/// stored size, not the size the upload reported), newest first, then indexed bytes no
/// upload names, by ID, in pages.
fn the_artifact_listing_joins_uploads_with_the_index_and_pages_through_unrecorded_bytes(
    b: Backend,
) {
    let q = b.queue();
    let q = &*q;
    let jobs = two_running(q);
    let (one, two) = (&jobs[0], &jobs[1]);
    q.record_upload(&one.0.id, &worker(one.2), &one.1, &artifact("aa"), 1)
        .unwrap();
    q.record_upload(&two.0.id, &worker(two.2), &two.1, &artifact("aa"), 1)
        .unwrap();
    // Recorded, but the index does not hold its bytes: not listed.
    q.record_upload(&one.0.id, &worker(one.2), &one.1, &artifact("bb"), 1)
        .unwrap();
    assert!(q.uploads().unwrap().is_empty(), "nothing indexed yet");

    stored(q, &artifact("aa"), 100);
    stored(q, &artifact("dd"), 4);
    stored(q, &artifact("cc"), 3);
    assert_eq!(
        q.index_artifacts(&[]).unwrap(),
        0,
        "an empty batch adds nothing"
    );
    assert!(q.artifact_indexed(&artifact("aa")).unwrap());
    assert!(!q.artifact_indexed(&artifact("bb")).unwrap());
    let again = ArtifactView {
        size_bytes: 5,
        ..q.unrecorded_artifacts_page(None, 1).unwrap().0[0].clone()
    };
    assert_eq!(
        q.index_artifacts(&[again]).unwrap(),
        0,
        "a second row for indexed bytes is ignored"
    );

    let rows = q.uploads().unwrap();
    let listed: Vec<(&JobId, &ArtifactId, u64)> = rows
        .iter()
        .map(|r| (&r.job_id, &r.artifact_id, r.size_bytes))
        .collect();
    assert_eq!(
        listed,
        [
            (&two.0.id, &artifact("aa"), 100),
            (&one.0.id, &artifact("aa"), 100)
        ],
        "newest first, stored sizes"
    );

    let (page, more) = q.unrecorded_artifacts_page(None, 1).unwrap();
    assert!(more);
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].artifact_id, artifact("cc"));
    assert_eq!(page[0].size_bytes, 3, "the first row stays");
    assert_eq!(
        (page[0].model.as_str(), page[0].worker.as_str()),
        ("first", "w0")
    );
    let (page, more) = q
        .unrecorded_artifacts_page(Some(&artifact("cc")), 5)
        .unwrap();
    assert!(!more);
    let ids: Vec<&ArtifactId> = page.iter().map(|r| &r.artifact_id).collect();
    assert_eq!(ids, [&artifact("dd")]);
}

fn complete_with_receipt(
    q: &dyn JobQueue,
    (job, lease, w): &(JobSpec, Lease, &str),
    artifact: ArtifactId,
    receipt: cis490_api::UploadReceipt,
) -> Result<JobStatus, QueueError> {
    let req = CompleteRequest {
        worker: worker(w),
        lease: lease.clone(),
        artifact_id: Some(artifact),
        upload: Some(receipt),
        report: Default::default(),
    };
    q.complete(&job.id, &req).map(|r| r.status)
}

/// An upload that asked for a receipt writes nothing; the completion that carries the
/// receipt records it, and one that carries a forged receipt, or one made for another job
/// or artifact, is refused and records nothing.
fn a_completion_with_its_uploads_receipt_records_the_upload_and_a_forged_one_is_refused(
    b: Backend,
) {
    let q = b.queue();
    let q = &*q;
    let jobs = two_running(q);
    let (one, two) = (&jobs[0], &jobs[1]);
    stored(q, &artifact("aa"), 100);
    let receipt = q
        .receipt_for_upload(&one.0.id, &worker(one.2), &one.1, &artifact("aa"), 100)
        .unwrap();
    assert!(q.uploads().unwrap().is_empty(), "a receipt writes no row");
    let err = complete(q, one, Some(artifact("aa"))).unwrap_err();
    assert_eq!(
        err.code(),
        "artifact_not_uploaded",
        "without the receipt: {err}"
    );

    let mut forged = receipt.clone();
    forged.mac = forged.mac.replace(|c: char| c != '0', "0");
    let err = complete_with_receipt(q, one, artifact("aa"), forged).unwrap_err();
    assert_eq!(err.code(), "artifact_not_uploaded", "{err}");
    let err = complete_with_receipt(q, two, artifact("aa"), receipt.clone()).unwrap_err();
    assert_eq!(
        err.code(),
        "artifact_not_uploaded",
        "another job's receipt: {err}"
    );
    let err = complete_with_receipt(q, one, artifact("bb"), receipt.clone()).unwrap_err();
    assert_eq!(
        err.code(),
        "artifact_not_uploaded",
        "another artifact: {err}"
    );
    assert!(q.uploads().unwrap().is_empty(), "refusals record nothing");

    assert_eq!(
        complete_with_receipt(q, one, artifact("aa"), receipt).unwrap(),
        JobStatus::Completed
    );
    let rows = q.uploads().unwrap();
    let listed: Vec<(&JobId, &ArtifactId, Option<u32>)> = rows
        .iter()
        .map(|r| (&r.job_id, &r.artifact_id, r.attempt))
        .collect();
    assert_eq!(listed, [(&one.0.id, &artifact("aa"), Some(one.1.attempt))]);

    // The fence of an upload with a receipt is the lease, as for one without.
    let stale = Lease {
        attempt: two.1.attempt,
        token: "not-the-token".into(),
    };
    let err = q
        .receipt_for_upload(&two.0.id, &worker(two.2), &stale, &artifact("aa"), 100)
        .unwrap_err();
    assert_eq!(err.code(), "lease_lost", "{err}");
}

super::test_support::on_both_backends!(
    the_artifact_listing_joins_uploads_with_the_index_and_pages_through_unrecorded_bytes,
    a_second_instance_is_refused_while_the_first_is_live_and_the_first_is_undisturbed,
    an_agent_restarted_on_its_state_dir_takes_its_name_over_from_its_previous_life_at_once,
    a_stale_holder_is_taken_over_and_then_refused_itself,
    a_holder_with_an_unexpired_lease_keeps_the_name_after_it_goes_stale,
    a_holder_that_signs_off_frees_the_name_at_once,
    agents_that_send_no_instance_are_not_checked_and_bad_ids_are_refused,
    a_completion_may_name_only_an_artifact_its_lease_uploaded,
    a_completion_without_an_upload_and_without_an_artifact_is_allowed,
    a_completion_with_its_uploads_receipt_records_the_upload_and_a_forged_one_is_refused,
);

/// A receipt holds after a restart and on every server of one database: the key is the
/// database's.
#[test]
fn a_receipt_holds_after_the_server_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.db");
    let first = Queue::open(&path, QueueConfig::default()).unwrap();
    let id = JobId::parse(&"1".repeat(64)).unwrap();
    let lease = Lease {
        attempt: 1,
        token: "t".into(),
    };
    let receipt = first.receipt_key().issue(&id, &lease, &artifact("aa"), 7);
    drop(first);
    let again = Queue::open(&path, QueueConfig::default()).unwrap();
    let req = CompleteRequest {
        worker: worker("w1"),
        lease,
        artifact_id: Some(artifact("aa")),
        upload: Some(receipt),
        report: Default::default(),
    };
    assert!(again.receipt_key().check(&id, &req).unwrap().is_some());
    let other = Queue::open(&dir.path().join("other.db"), QueueConfig::default()).unwrap();
    assert!(
        other.receipt_key().check(&id, &req).is_err(),
        "another database's key"
    );
}

#[test]
fn a_receipt_from_one_server_holds_on_another_of_the_same_postgres_database() {
    let Some(db) = super::test_support::postgres_database() else {
        return;
    };
    let a = super::PgQueue::open(db.url(), QueueConfig::default()).unwrap();
    let b = super::PgQueue::open(db.url(), QueueConfig::default()).unwrap();
    let id = JobId::parse(&"1".repeat(64)).unwrap();
    let lease = Lease {
        attempt: 1,
        token: "t".into(),
    };
    let req = CompleteRequest {
        worker: worker("w1"),
        lease: lease.clone(),
        artifact_id: Some(artifact("aa")),
        upload: Some(a.receipt_key().issue(&id, &lease, &artifact("aa"), 7)),
        report: Default::default(),
    };
    assert!(b.receipt_key().check(&id, &req).unwrap().is_some());
}
