//! Queue behaviour: apply, claim and matching, leases, attempts by cause, operator actions,
//! explain, nodes and events.

use crate::queue::JobQueue;
use std::sync::Arc;

use chrono::Duration;
use cis490_api::{
    ArtifactId, Capability, ClaimResponse, CompleteRequest, FailRequest, HeartbeatRequest,
    IdPrefix, JobFilter, JobId, JobSpec, JobStatus, Lease, ManifestError, NodeState, RetryPolicy,
};

use super::test_support::{
    cpu, gpu, id_of, manual_clock, on_both_backends, spec, specs, worker, Backend, TestQueue,
};
use super::ManualClock;
use super::{ManifestSource, Queue, QueueConfig, QueueError};
use crate::plan::plan;
use crate::policy::HostPolicy;

pub(super) fn queue() -> Queue {
    Queue::open_in_memory(QueueConfig::default()).unwrap()
}

fn source() -> ManifestSource {
    ManifestSource {
        path: "etc/training_manifest.toml".to_string(),
        sha256: "ab".repeat(32),
        warnings: Vec::new(),
    }
}

/// Plans `desired` against the queue and applies it; returns the new generation.
fn load_hosts(q: &dyn JobQueue, desired: &[JobSpec], hosts: &[HostPolicy]) -> u64 {
    let p = plan(desired, &q.actual().unwrap());
    q.apply(&p, hosts, &source()).unwrap().generation
}

pub(super) fn load(q: &dyn JobQueue, desired: &[JobSpec]) -> u64 {
    load_hosts(q, desired, &[])
}

pub(super) fn claim(q: &dyn JobQueue, w: &str, cap: &Capability) -> Option<ClaimResponse> {
    q.claim(&worker(w), cap).unwrap()
}

fn hb(w: &str, lease: &Lease) -> HeartbeatRequest {
    HeartbeatRequest {
        worker: worker(w),
        lease: lease.clone(),
        log_tail: None,
        log: None,
        progress: None,
    }
}

/// A completion of `id` with an artifact, which it first records as uploaded under `lease`
/// (as the upload route does; refused, and so not recorded, when the lease is not current).
fn done(q: &dyn JobQueue, id: &JobId, w: &str, lease: &Lease) -> CompleteRequest {
    let artifact = ArtifactId::parse(&"cd".repeat(32)).unwrap();
    let _ = q.record_upload(id, &worker(w), lease, &artifact, 10);
    CompleteRequest {
        worker: worker(w),
        lease: lease.clone(),
        artifact_id: Some(artifact),
        upload: None,
        report: Default::default(),
    }
}

fn failure(w: &str, lease: &Lease, retryable: bool) -> FailRequest {
    FailRequest {
        worker: worker(w),
        lease: lease.clone(),
        reason: if retryable {
            "agent-shutdown".to_string()
        } else {
            "trainer exited non-zero".to_string()
        },
        exit_code: if retryable { None } else { Some(3) },
        log_tail: Some("Traceback: boom".to_string()),
        retryable,
        cause: Default::default(),
        report: Default::default(),
    }
}

fn host(name: &str, deny: &[&str], max_concurrent: Option<u32>) -> HostPolicy {
    HostPolicy {
        name: name.to_string(),
        deny_jobs: deny.iter().map(|s| s.to_string()).collect(),
        max_concurrent,
        ..HostPolicy::default()
    }
}

pub(super) fn status(q: &dyn JobQueue, spec: &JobSpec) -> JobStatus {
    q.job(&spec.id).unwrap().status
}

pub(super) fn kinds(q: &dyn JobQueue, spec: &JobSpec) -> Vec<String> {
    q.job(&spec.id)
        .unwrap()
        .events
        .into_iter()
        .map(|e| e.kind)
        .collect()
}

fn past_lease(q: &dyn JobQueue) -> chrono::DateTime<chrono::Utc> {
    q.now() + Duration::seconds(91)
}

#[test]
fn a_file_database_is_migrated_once_and_reopens_with_its_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/queue.db");
    let job = spec("a");
    {
        let q = Queue::open(&path, QueueConfig::default()).unwrap();
        load(&q, std::slice::from_ref(&job));
    }
    let q = Queue::open(&path, QueueConfig::default()).unwrap();
    assert_eq!(status(&q, &job), JobStatus::Pending);
    let version: i64 = q
        .read(|tx| {
            Ok(tx
                .db
                .query_row("SELECT version FROM schema_version", [], |r| r.get(0))?)
        })
        .unwrap();
    assert_eq!(version as usize, super::schema::latest_version());
    let mode: String = q
        .read(|tx| Ok(tx.db.query_row("PRAGMA journal_mode", [], |r| r.get(0))?))
        .unwrap();
    assert_eq!(mode, "wal");
}

fn applying_the_same_manifest_twice_changes_nothing(b: Backend) {
    let q = b.queue();
    let q = &*q;
    let jobs = specs("j", 5);
    assert_eq!(load(q, &jobs), 1);
    let events = q.events_since(0, 1000).unwrap().events.len();
    let p = plan(&jobs, &q.actual().unwrap());
    assert!(p.is_empty());
    assert_eq!(p.keep.len(), 5);
    let summary = q.apply(&p, &[], &source()).unwrap();
    assert!(summary.applied);
    assert_eq!(summary.generation, 1, "a no-op apply keeps the generation");
    assert_eq!(q.events_since(0, 1000).unwrap().events.len(), events);
    assert_eq!(q.manifest_status().unwrap().generation, 1);
    assert_eq!(kinds(q, &jobs[0]), vec!["Created"]);
}

fn changed_host_policies_count_as_a_change(b: Backend) {
    let q = b.queue();
    let q = &*q;
    let jobs = specs("j", 2);
    assert_eq!(load(q, &jobs), 1);
    assert_eq!(load_hosts(q, &jobs, &[host("box", &["gbt"], None)]), 2);
    assert_eq!(load_hosts(q, &jobs, &[host("box", &["gbt"], None)]), 2);
}

fn update_changes_a_pending_job_but_not_a_leased_one(b: Backend) {
    let q = b.queue();
    let q = &*q;
    let mut jobs = specs("j", 2);
    load(q, &jobs);
    let leased = claim(q, "w1", &cpu(8)).unwrap();
    assert_eq!(leased.job.id, jobs[0].id);
    jobs[0].priority = 5;
    jobs[1].priority = 5;
    jobs[1].constraints.min_ram_gib = 2.0;
    let p = plan(&jobs, &q.actual().unwrap());
    assert_eq!(p.update.len(), 1, "the claimed job is kept: {p:?}");
    assert_eq!(p.update[0].1, vec!["constraints", "priority"]);
    assert_eq!(load(q, &jobs), 2);
    assert_eq!(q.job(&jobs[0].id).unwrap().priority, 0);
    assert_eq!(q.job(&jobs[1].id).unwrap().priority, 5);
    let updated = q.job(&jobs[1].id).unwrap().events;
    assert_eq!(updated[1].kind, "Updated");
    assert!(updated[1].message.contains("constraints, priority"));
}

fn tombstone_and_revive_keep_the_history(b: Backend) {
    let q = b.queue();
    let q = &*q;
    let jobs = specs("j", 2);
    load(q, &jobs);
    assert_eq!(load(q, &jobs[1..]), 2);
    let gone = q.job(&jobs[0].id).unwrap();
    assert!(gone.tombstoned);
    assert_eq!(q.jobs(&JobFilter::default()).unwrap().len(), 1);
    let all = JobFilter {
        all: true,
        ..JobFilter::default()
    };
    assert_eq!(q.jobs(&all).unwrap().len(), 2);
    // A tombstoned pending job is not claimable.
    let first = claim(q, "w1", &cpu(8)).unwrap();
    assert_eq!(first.job.id, jobs[1].id);
    assert!(claim(q, "w2", &cpu(8)).is_none());
    // Back in the manifest: revived with its events, claimable again.
    assert_eq!(load(q, &jobs), 3);
    assert_eq!(kinds(q, &jobs[0]), vec!["Created", "Tombstoned", "Revived"]);
    assert_eq!(claim(q, "w2", &cpu(8)).unwrap().job.id, jobs[0].id);
}

fn a_tombstoned_running_job_finishes_as_orphaned(b: Backend) {
    let q = b.queue();
    let q = &*q;
    let jobs = specs("j", 1);
    load(q, &jobs);
    let c = claim(q, "w1", &cpu(8)).unwrap();
    q.heartbeat(&c.job.id, &hb("w1", &c.lease)).unwrap();
    load(q, &[]);
    assert!(q.job(&c.job.id).unwrap().tombstoned);
    let r = q
        .complete(&c.job.id, &done(q, &c.job.id, "w1", &c.lease))
        .unwrap();
    assert_eq!(r.status, JobStatus::Completed);
    let k = kinds(q, &jobs[0]);
    assert_eq!(k[k.len() - 2..], ["Completed", "Orphaned"]);
}

fn claims_follow_priority_then_manifest_order(b: Backend) {
    let q = b.queue();
    let q = &*q;
    let mut jobs = specs("j", 4);
    jobs[3].priority = 10;
    jobs[2].priority = 10;
    load(q, &jobs);
    let order: Vec<_> = (0..4)
        .map(|i| claim(q, &format!("w{i}"), &cpu(8)).unwrap().job.id)
        .collect();
    assert_eq!(
        order,
        vec![
            jobs[2].id.clone(),
            jobs[3].id.clone(),
            jobs[0].id.clone(),
            jobs[1].id.clone()
        ]
    );
    assert!(claim(q, "w9", &cpu(8)).is_none());
}

#[test]
fn the_claim_walks_an_index_without_sorting() {
    let q = queue();
    let walks = [
        (super::matching::CLAIM_CUDA, "jobs_claim_cuda"),
        (super::matching::CLAIM_CPU, "jobs_claim_cpu"),
        (
            super::matching::CLAIM_PINNED_CUDA,
            "jobs_pinned_cuda (allowed_hosts=?)",
        ),
        (
            super::matching::CLAIM_PINNED_CPU,
            "jobs_pinned_cpu (allowed_hosts=?)",
        ),
    ];
    for (sql, index) in walks {
        let details: Vec<String> = q
            .read(|tx| {
                let mut stmt = tx.db.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
                let all = rusqlite::params![1.0, 1.0, "[]", "[]", true, "[\"w\"]"];
                let n = stmt.parameter_count();
                let rows = stmt.query_map(&all[..n], |r| r.get(3))?;
                Ok(rows.collect::<Result<Vec<String>, _>>()?)
            })
            .unwrap();
        let text = details.join("; ");
        // Covering: a job the walk steps over costs an index step, not a table lookup.
        assert!(
            text.contains(&format!("USING COVERING INDEX {index}")),
            "{text}"
        );
        assert!(!text.contains("TEMP B-TREE"), "{text}");
    }
}

fn require_cuda_needs_a_cuda_gpu(b: Backend) {
    let q = b.queue();
    let q = &*q;
    let mut job = spec("cuda");
    job.constraints.require_cuda = true;
    load(q, std::slice::from_ref(&job));
    assert!(claim(q, "cpu1", &cpu(64)).is_none());
    let mut no_gpu_listed = gpu(24);
    no_gpu_listed.gpus.clear();
    assert!(claim(q, "cuda0", &no_gpu_listed).is_none());
    assert_eq!(claim(q, "gpu1", &gpu(24)).unwrap().job.id, job.id);
}

/// Issue 13, point 7: an agent sharing GPUs by VRAM gives a CUDA job without
/// `min_vram_gib` a GPU to itself, so a claim whose only GPU is partly held (it lists the
/// VRAM jobs declared on it) gets the jobs that fit next to them, never that one; a claim
/// with a GPU no job holds gets it.
fn a_cuda_job_without_min_vram_is_not_handed_to_a_claim_whose_gpus_are_all_shared(b: Backend) {
    let q = b.queue();
    let q = &*q;
    let mut whole = spec("whole");
    whole.constraints.require_cuda = true;
    let mut declared = JobSpec {
        manifest_order: 1,
        ..spec("declared")
    };
    declared.constraints.require_cuda = true;
    declared.constraints.min_vram_gib = 8.0;
    load(q, &[whole.clone(), declared.clone()]);
    let mut shared = gpu(24);
    shared.gpus[0].vram_allocatable_mib = 14 * 1024;
    shared.gpus[0].vram_allocated_mib = 10 * 1024;
    // Pinned walks too: the same rule for a job that names its hosts.
    assert_eq!(claim(q, "shared", &shared).unwrap().job.id, declared.id);
    assert!(claim(q, "shared", &shared).is_none());
    let reasons = super::matching::hard_reasons("gbt", &whole.constraints, "shared", &shared, None);
    assert!(reasons[0].contains("no whole GPU free"), "{reasons:?}");
    // A second GPU that no job holds: the whole-GPU job fits.
    let mut two = shared.clone();
    two.gpus.push(gpu(12).gpus[0].clone());
    two.gpus[1].index = 1;
    assert_eq!(claim(q, "shared", &two).unwrap().job.id, whole.id);
}

fn the_whole_gpu_rule_holds_for_pinned_jobs_too(b: Backend) {
    let q = b.queue();
    let q = &*q;
    let mut whole = spec("pinned-whole");
    whole.constraints.require_cuda = true;
    whole.constraints.allowed_hosts = vec!["shared".to_string()];
    load(q, std::slice::from_ref(&whole));
    let mut shared = gpu(24);
    shared.gpus[0].vram_allocated_mib = 1024;
    assert!(claim(q, "shared", &shared).is_none());
    shared.gpus[0].vram_allocated_mib = 0;
    assert_eq!(claim(q, "shared", &shared).unwrap().job.id, whole.id);
}

fn min_vram_is_matched_per_gpu(b: Backend) {
    let q = b.queue();
    let q = &*q;
    let mut job = spec("big");
    job.constraints.min_vram_gib = 48.0;
    load(q, std::slice::from_ref(&job));
    let mut two_small = gpu(24);
    two_small.gpus.push(two_small.gpus[0].clone());
    assert!(claim(q, "small", &two_small).is_none());
    assert!(claim(q, "cpu", &cpu(512)).is_none());
    assert_eq!(claim(q, "big", &gpu(80)).unwrap().job.id, job.id);
}

fn min_ram_is_matched_against_allocatable_ram(b: Backend) {
    let q = b.queue();
    let q = &*q;
    let mut job = spec("ram");
    job.constraints.min_ram_gib = 32.0;
    load(q, std::slice::from_ref(&job));
    assert!(claim(q, "small", &cpu(16)).is_none());
    assert_eq!(claim(q, "large", &cpu(32)).unwrap().job.id, job.id);
}

fn allowed_hosts_pins_a_job(b: Backend) {
    let q = b.queue();
    let q = &*q;
    let mut job = spec("pinned");
    job.constraints.allowed_hosts = vec!["lab-a".to_string()];
    load(q, std::slice::from_ref(&job));
    assert!(claim(q, "lab-b", &cpu(8)).is_none());
    assert_eq!(claim(q, "lab-a", &cpu(8)).unwrap().job.id, job.id);
}

fn host_policy_denies_models_and_unlisted_hosts_allow_all(b: Backend) {
    let q = b.queue();
    let q = &*q;
    let gbt = spec("gbt");
    let mlp = JobSpec {
        model: "mlp".to_string(),
        manifest_order: 1,
        ..spec("mlp")
    };
    load_hosts(
        q,
        &[gbt.clone(), mlp.clone()],
        &[host("pi", &["gbt"], None)],
    );
    assert_eq!(claim(q, "pi", &cpu(8)).unwrap().job.id, mlp.id);
    assert!(claim(q, "pi", &cpu(8)).is_none());
    assert_eq!(claim(q, "other", &cpu(8)).unwrap().job.id, gbt.id);
}

fn host_allow_lists_and_deny_all(b: Backend) {
    let q = b.queue();
    let q = &*q;
    let gbt = spec("gbt");
    let mlp = JobSpec {
        model: "mlp".to_string(),
        manifest_order: 1,
        ..spec("mlp")
    };
    let only_mlp = HostPolicy {
        name: "picky".to_string(),
        allow_jobs: vec!["mlp".to_string()],
        ..HostPolicy::default()
    };
    let wildcard = HostPolicy {
        name: "any".to_string(),
        allow_jobs: vec!["*".to_string()],
        ..HostPolicy::default()
    };
    load_hosts(
        q,
        &[gbt.clone(), mlp.clone()],
        &[only_mlp, wildcard, host("none", &["*"], None)],
    );
    assert!(claim(q, "none", &cpu(8)).is_none());
    assert_eq!(claim(q, "picky", &cpu(8)).unwrap().job.id, mlp.id);
    assert!(claim(q, "picky", &cpu(8)).is_none());
    assert_eq!(claim(q, "any", &cpu(8)).unwrap().job.id, gbt.id);
}

fn host_max_concurrent_limits_leased_jobs(b: Backend) {
    let q = b.queue();
    let q = &*q;
    load_hosts(q, &specs("j", 4), &[host("box", &[], Some(2))]);
    assert!(claim(q, "box", &cpu(8)).is_some());
    let second = claim(q, "box", &cpu(8)).unwrap();
    assert!(claim(q, "box", &cpu(8)).is_none(), "at max_concurrent 2");
    q.complete(
        &second.job.id,
        &done(q, &second.job.id, "box", &second.lease),
    )
    .unwrap();
    assert!(claim(q, "box", &cpu(8)).is_some());
}

fn cordoned_and_draining_workers_get_nothing(b: Backend) {
    let q = b.queue();
    let q = &*q;
    load(q, &specs("j", 3));
    q.report_node(&worker("a"), &cpu(8)).unwrap();
    q.report_node(&worker("b"), &cpu(8)).unwrap();
    let held = claim(q, "b", &cpu(8)).unwrap();
    assert_eq!(q.cordon(&worker("a")).unwrap().state, NodeState::Cordoned);
    assert!(claim(q, "a", &cpu(8)).is_none());
    let b = q.drain(&worker("b")).unwrap();
    assert_eq!(b.state, NodeState::Draining);
    assert!(b.cordoned && b.draining);
    assert!(claim(q, "b", &cpu(8)).is_none());
    q.complete(&held.job.id, &done(q, &held.job.id, "b", &held.lease))
        .unwrap();
    let drained = q.worker(&worker("b")).unwrap();
    assert_eq!(drained.state, NodeState::Cordoned);
    assert!(
        drained.cordoned && !drained.draining,
        "the drain is over once its jobs are done: Cordoned, not Draining"
    );
    assert!(claim(q, "b", &cpu(8)).is_none(), "and it stays cordoned");
    assert_eq!(q.uncordon(&worker("a")).unwrap().state, NodeState::Ready);
    assert!(claim(q, "a", &cpu(8)).is_some());
    assert!(matches!(
        q.cordon(&worker("nobody")),
        Err(QueueError::NotFound { .. })
    ));
}

fn nodes_turn_not_ready_when_stale(b: Backend) {
    let clock = manual_clock();
    let q = b.queue_on(&clock, QueueConfig::default());
    let q = &*q;
    let view = q.report_node(&worker("a"), &cpu(8)).unwrap();
    assert_eq!(view.state, NodeState::Ready);
    assert!(view.ready);
    clock.advance(Duration::seconds(91));
    let view = q.worker(&worker("a")).unwrap();
    assert_eq!(view.state, NodeState::NotReady);
    assert!(!view.ready);
    q.report_node(&worker("a"), &cpu(8)).unwrap();
    assert_eq!(q.workers().unwrap()[0].state, NodeState::Ready);
    let registered = q
        .events_since(0, 100)
        .unwrap()
        .events
        .iter()
        .filter(|e| e.kind == "NodeRegistered")
        .count();
    assert_eq!(registered, 1, "only the first report registers the node");
}

fn prefer_cuda_setup(b: Backend) -> (TestQueue, JobSpec, JobSpec) {
    prefer_cuda_setup_on(b, &manual_clock())
}

fn prefer_cuda_setup_on(b: Backend, clock: &Arc<ManualClock>) -> (TestQueue, JobSpec, JobSpec) {
    let q = b.queue_on(clock, QueueConfig::default());
    let plain = spec("plain");
    let mut preferring = spec("prefers");
    preferring.constraints.prefer_cuda = true;
    preferring.manifest_order = 1;
    load(&*q, &[plain.clone(), preferring.clone()]);
    (q, plain, preferring)
}

fn prefer_cuda_gives_cuda_workers_the_job_first(b: Backend) {
    let (q, _plain, preferring) = prefer_cuda_setup(b);
    let q = &*q;
    assert_eq!(claim(q, "gpu", &gpu(24)).unwrap().job.id, preferring.id);
}

fn prefer_cuda_jobs_wait_for_a_ready_cuda_worker(b: Backend) {
    let clock = manual_clock();
    let (q, plain, preferring) = prefer_cuda_setup_on(b, &clock);
    let q = &*q;
    q.report_node(&worker("gpu"), &gpu(24)).unwrap();
    assert_eq!(claim(q, "cpu1", &cpu(8)).unwrap().job.id, plain.id);
    assert!(
        claim(q, "cpu2", &cpu(8)).is_none(),
        "left to the CUDA worker"
    );
    let why = q.explain(&preferring.id).unwrap();
    let cpu2 = why.workers.iter().find(|w| w.worker.as_str() == "cpu2");
    assert!(
        cpu2.unwrap().reasons[0].starts_with("prefer_cuda"),
        "{why:?}"
    );
    // After prefer_cuda_wait_s (the CUDA worker keeps reporting) a CPU worker may take it.
    clock.advance(Duration::seconds(301));
    q.report_node(&worker("gpu"), &gpu(24)).unwrap();
    assert_eq!(claim(q, "cpu2", &cpu(8)).unwrap().job.id, preferring.id);
}

fn prefer_cuda_jobs_go_to_cpu_workers_when_no_cuda_worker_could_run_them(b: Backend) {
    let (q, _plain, preferring) = prefer_cuda_setup(b);
    let q = &*q;
    // No CUDA worker at all.
    claim(q, "cpu1", &cpu(8)).unwrap();
    assert_eq!(claim(q, "cpu2", &cpu(8)).unwrap().job.id, preferring.id);

    // A CUDA worker that went stale does not hold jobs back either.
    let clock = manual_clock();
    let (q, _plain, preferring) = prefer_cuda_setup_on(b, &clock);
    let q = &*q;
    q.report_node(&worker("gpu"), &gpu(24)).unwrap();
    clock.advance(Duration::seconds(120));
    claim(q, "cpu1", &cpu(8)).unwrap();
    assert_eq!(claim(q, "cpu2", &cpu(8)).unwrap().job.id, preferring.id);

    // Nor does a CUDA worker whose host policy denies the model.
    let q = b.queue();
    let q = &*q;
    let mut p2 = spec("prefers");
    p2.constraints.prefer_cuda = true;
    load_hosts(q, std::slice::from_ref(&p2), &[host("gpu", &["gbt"], None)]);
    q.report_node(&worker("gpu"), &gpu(24)).unwrap();
    assert_eq!(claim(q, "cpu1", &cpu(8)).unwrap().job.id, p2.id);
}

fn the_first_heartbeat_starts_the_job_and_extends_the_lease(b: Backend) {
    let clock = manual_clock();
    let q = b.queue_on(&clock, QueueConfig::default());
    let q = &*q;
    let jobs = specs("j", 1);
    load(q, &jobs);
    let c = claim(q, "w1", &cpu(8)).unwrap();
    assert_eq!(c.lease.attempt, 1);
    assert_eq!(c.lease.token.len(), 32);
    assert_eq!(status(q, &jobs[0]), JobStatus::Claimed);
    let before = q.job(&c.job.id).unwrap().lease_expires_at.unwrap();
    clock.advance(Duration::seconds(60));
    let mut req = hb("w1", &c.lease);
    req.log_tail = Some("epoch 1".to_string());
    assert!(!q.heartbeat(&c.job.id, &req).unwrap().cancel);
    let view = q.job(&c.job.id).unwrap();
    assert_eq!(view.status, JobStatus::Running);
    assert!(view.started_at.is_some());
    assert_eq!(view.log_tail.as_deref(), Some("epoch 1"));
    assert!(view.lease_expires_at.unwrap() > before);
    q.heartbeat(&c.job.id, &hb("w1", &c.lease)).unwrap();
    assert_eq!(kinds(q, &jobs[0]), vec!["Created", "Claimed", "Started"]);
}

fn a_wrong_lease_worker_or_job_state_is_lease_lost(b: Backend) {
    let q = b.queue();
    let q = &*q;
    load(q, &specs("j", 1));
    let c = claim(q, "w1", &cpu(8)).unwrap();
    let id = &c.job.id;
    let bad_token = Lease {
        attempt: 1,
        token: "0".repeat(32),
    };
    let bad_attempt = Lease {
        attempt: 2,
        token: c.lease.token.clone(),
    };
    for (w, lease) in [("w1", &bad_token), ("w1", &bad_attempt), ("w2", &c.lease)] {
        let err = q.heartbeat(id, &hb(w, lease)).unwrap_err();
        assert_eq!(err.code(), "lease_lost", "{err}");
        assert!(q.check_lease(id, &worker(w), lease).is_err());
        assert!(matches!(
            q.complete(id, &done(q, id, w, lease)),
            Err(QueueError::LeaseLost { .. })
        ));
    }
    // The fence reads the lease columns alone, and answers where the bundle is filed.
    let leased = q.check_lease(id, &worker("w1"), &c.lease).unwrap();
    assert_eq!(
        (&leased.id, &leased.model, &leased.mode),
        (id, &c.job.model, &c.job.mode)
    );
    let finished = q
        .complete_with_model(id, &done(q, id, "w1", &c.lease))
        .unwrap();
    assert_eq!(finished.model, c.job.model);
    assert_eq!(finished.answer.status, JobStatus::Completed);
    let err = q.complete(id, &done(q, id, "w1", &c.lease)).unwrap_err();
    assert!(err.to_string().contains("completed"), "{err}");
    let err = q.check_lease(id, &worker("w1"), &c.lease).unwrap_err();
    assert_eq!(err.code(), "lease_lost", "{err}");
    assert!(err.to_string().contains("completed, not leased"), "{err}");
    assert!(matches!(
        q.check_lease(&id_of("unknown"), &worker("w1"), &c.lease),
        Err(QueueError::NotFound { .. })
    ));
    assert!(matches!(
        q.heartbeat(&id_of("unknown"), &hb("w1", &c.lease)),
        Err(QueueError::NotFound { .. })
    ));
}

fn sweep_returns_an_expired_job_to_pending_and_fences_the_old_lease(b: Backend) {
    let q = b.queue();
    let q = &*q;
    let jobs = specs("j", 1);
    load(q, &jobs);
    let old = claim(q, "w1", &cpu(8)).unwrap();
    q.heartbeat(&old.job.id, &hb("w1", &old.lease)).unwrap();
    assert_eq!(
        q.sweep(q.now()).unwrap().requeued.len(),
        0,
        "not expired yet"
    );
    let swept = q.sweep(past_lease(q)).unwrap();
    assert_eq!(swept.requeued, vec![jobs[0].id.clone()]);
    let view = q.job(&jobs[0].id).unwrap();
    assert_eq!(view.status, JobStatus::Pending);
    assert_eq!(view.attempts, 1, "an expired lease counts as an attempt");
    assert!(q.heartbeat(&jobs[0].id, &hb("w1", &old.lease)).is_err());
    let new = claim(q, "w2", &cpu(8)).unwrap();
    assert_eq!(new.lease.attempt, 2);
    assert_eq!(q.job(&jobs[0].id).unwrap().attempts, 2);
    for err in [
        q.heartbeat(&jobs[0].id, &hb("w1", &old.lease)).unwrap_err(),
        q.complete(&jobs[0].id, &done(q, &jobs[0].id, "w1", &old.lease))
            .unwrap_err(),
        q.fail(&jobs[0].id, &failure("w1", &old.lease, false))
            .unwrap_err(),
    ] {
        assert!(matches!(err, QueueError::LeaseLost { .. }), "{err}");
    }
    q.complete(&jobs[0].id, &done(q, &jobs[0].id, "w2", &new.lease))
        .unwrap();
    assert!(kinds(q, &jobs[0]).contains(&"LeaseExpired".to_string()));
}

fn lease_expiries_past_max_attempts_fail_the_job(b: Backend) {
    let q = b.queue();
    let q = &*q;
    let job = JobSpec {
        max_attempts: 2,
        ..spec("crashy")
    };
    load(q, std::slice::from_ref(&job));
    for round in 1..=2 {
        let c = claim(q, "w1", &cpu(8)).unwrap();
        assert_eq!(c.lease.attempt, round);
        let swept = q.sweep(past_lease(q)).unwrap();
        if round == 1 {
            assert_eq!(swept.requeued, vec![job.id.clone()]);
        } else {
            assert_eq!(swept.failed, vec![job.id.clone()]);
        }
    }
    let view = q.job(&job.id).unwrap();
    assert_eq!(view.status, JobStatus::Failed);
    assert_eq!(view.attempts, 2);
    assert_eq!(
        view.error.unwrap().reason,
        "lease expired 2 times (agent vanished)"
    );
    assert!(claim(q, "w1", &cpu(8)).is_none());
}

fn an_agent_shutdown_release_does_not_use_an_attempt(b: Backend) {
    let q = b.queue();
    let q = &*q;
    let job = JobSpec {
        max_attempts: 1,
        ..spec("j")
    };
    load(q, std::slice::from_ref(&job));
    for _ in 0..5 {
        let c = claim(q, "w1", &cpu(8)).unwrap();
        assert_eq!(c.lease.attempt, 1);
        let r = q.fail(&job.id, &failure("w1", &c.lease, true)).unwrap();
        assert_eq!(r.status, JobStatus::Pending);
        assert_eq!(q.job(&job.id).unwrap().attempts, 0);
        assert!(q.heartbeat(&job.id, &hb("w1", &c.lease)).is_err());
    }
    assert!(kinds(q, &job).contains(&"Released".to_string()));
}

/// Issue 13, point 9: a lease handed back (or requeued) and claimed again has the same
/// attempt number with a new token. The old lease's refusal says that, not "attempt 1 is
/// not the current lease (attempt 1)".
fn a_replaced_lease_of_the_same_attempt_number_is_refused_with_what_happened(b: Backend) {
    let q = b.queue();
    let q = &*q;
    let job = spec("j");
    load(q, std::slice::from_ref(&job));
    let old = claim(q, "w1", &cpu(8)).unwrap();
    q.fail(&job.id, &failure("w1", &old.lease, true)).unwrap();
    let new = claim(q, "w2", &cpu(8)).unwrap();
    assert_eq!(new.lease.attempt, old.lease.attempt);
    let err = q.heartbeat(&job.id, &hb("w1", &old.lease)).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, QueueError::LeaseLost { .. }), "{text}");
    assert!(
        !text.contains("is not the current lease (attempt 1)"),
        "{text}"
    );
    assert!(
        text.contains("the job was leased again, to w2, under the same attempt number 1"),
        "{text}"
    );
    // A lease of another attempt number still says which one is current.
    let other = Lease {
        attempt: 7,
        token: new.lease.token.clone(),
    };
    let text = q
        .heartbeat(&job.id, &hb("w2", &other))
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("attempt 7 is not the current lease (attempt 1)"),
        "{text}"
    );
}

fn a_trainer_failure_fails_the_job_without_a_retry_policy(b: Backend) {
    let q = b.queue();
    let q = &*q;
    let job = spec("j");
    load(q, std::slice::from_ref(&job));
    let c = claim(q, "w1", &cpu(8)).unwrap();
    let r = q.fail(&job.id, &failure("w1", &c.lease, false)).unwrap();
    assert_eq!(r.status, JobStatus::Failed);
    let view = q.job(&job.id).unwrap();
    let error = view.error.unwrap();
    assert_eq!(error.exit_code, Some(3));
    assert_eq!(error.log_tail.as_deref(), Some("Traceback: boom"));
    assert_eq!(view.attempts, 1);
    let failed = view.events.last().unwrap();
    assert_eq!(failed.kind, "Failed");
    assert!(failed.message.contains("exit code 3"), "{}", failed.message);
    assert!(
        failed
            .message
            .ends_with("--- log tail ---\nTraceback: boom"),
        "{}",
        failed.message
    );
}

fn a_retry_policy_retries_trainer_failures_until_retries_or_attempts_run_out(b: Backend) {
    let q = b.queue();
    let q = &*q;
    let job = JobSpec {
        retry: RetryPolicy {
            retries_on_failure: 1,
        },
        ..spec("j")
    };
    let short = JobSpec {
        retry: RetryPolicy {
            retries_on_failure: 5,
        },
        max_attempts: 2,
        manifest_order: 1,
        ..spec("short")
    };
    load(q, &[job.clone(), short.clone()]);
    let c = claim(q, "w1", &cpu(8)).unwrap();
    assert_eq!(c.job.id, job.id);
    let r = q.fail(&job.id, &failure("w1", &c.lease, false)).unwrap();
    assert_eq!(r.status, JobStatus::Pending);
    // (A retry prefers a worker it has not failed on: each try here is on a new worker.)
    let c = claim(q, "w2", &cpu(8)).unwrap();
    assert_eq!((c.job.id.clone(), c.lease.attempt), (job.id.clone(), 2));
    let r = q.fail(&job.id, &failure("w2", &c.lease, false)).unwrap();
    assert_eq!(r.status, JobStatus::Failed, "one retry only");

    // Retries are also bounded by max_attempts.
    for attempt in 1..=2 {
        let w = format!("w{}", attempt + 2);
        let c = claim(q, &w, &cpu(8)).unwrap();
        assert_eq!(c.lease.attempt, attempt);
        let r = q.fail(&short.id, &failure(&w, &c.lease, false)).unwrap();
        let want = if attempt == 1 {
            JobStatus::Pending
        } else {
            JobStatus::Failed
        };
        assert_eq!(r.status, want);
    }
    assert!(kinds(q, &short).contains(&"Retrying".to_string()));
}

/// Puts a fresh job into `state` and returns it with the lease it holds, if any.
pub(super) fn job_in_state(
    q: &dyn JobQueue,
    name: &str,
    state: JobStatus,
) -> (JobSpec, Option<Lease>) {
    let job = spec(name);
    let mut desired: Vec<JobSpec> = q.actual().unwrap().into_iter().map(|a| a.spec).collect();
    desired.push(job.clone());
    load(q, &desired);
    if state == JobStatus::Pending {
        return (job, None);
    }
    if state == JobStatus::Held {
        q.hold(&job.id).unwrap();
        return (job, None);
    }
    let c = q.claim(&worker(&format!("w-{name}")), &cpu(8)).unwrap();
    let c = match c {
        Some(c) if c.job.id == job.id => c,
        other => panic!("expected to claim {name}, got {other:?}"),
    };
    let w = format!("w-{name}");
    match state {
        JobStatus::Claimed => {}
        JobStatus::Running => {
            q.heartbeat(&job.id, &hb(&w, &c.lease)).unwrap();
        }
        JobStatus::Completed => {
            q.complete(&job.id, &done(q, &job.id, &w, &c.lease))
                .unwrap();
        }
        JobStatus::Failed => {
            q.fail(&job.id, &failure(&w, &c.lease, false)).unwrap();
        }
        JobStatus::Cancelled => {
            q.cancel(&job.id).unwrap();
        }
        JobStatus::Pending | JobStatus::Held => unreachable!(),
    }
    assert_eq!(status(q, &job), state);
    (job, Some(c.lease))
}

fn cancel_from_every_state(b: Backend) {
    for state in JobStatus::ALL {
        let q = b.queue();
        let q = &*q;
        let (job, _) = job_in_state(q, "x", state);
        let result = q.cancel(&job.id);
        match state {
            JobStatus::Pending | JobStatus::Held | JobStatus::Claimed | JobStatus::Running => {
                assert_eq!(result.unwrap().status, JobStatus::Cancelled, "from {state}");
                assert_eq!(status(q, &job), JobStatus::Cancelled);
                assert_eq!(kinds(q, &job).last().unwrap(), "Cancelled");
            }
            _ => {
                let err = result.unwrap_err();
                assert_eq!(err.code(), "invalid_state");
                assert_eq!(
                    err.to_string(),
                    format!(
                        "cannot cancel job {} in state {state} (only pending, held, claimed \
                         or running jobs can be cancelled)",
                        job.id.short()
                    )
                );
                assert_eq!(status(q, &job), state, "a refused cancel changes nothing");
            }
        }
    }
}

fn a_cancelled_job_tells_its_worker_through_the_old_lease_and_refuses_completion(b: Backend) {
    let q = b.queue();
    let q = &*q;
    let (job, lease) = job_in_state(q, "x", JobStatus::Running);
    let lease = lease.unwrap();
    q.cancel(&job.id).unwrap();
    assert!(q.heartbeat(&job.id, &hb("w-x", &lease)).unwrap().cancel);
    assert!(q.heartbeat(&job.id, &hb("w-other", &lease)).is_err());
    assert!(q.check_lease(&job.id, &worker("w-x"), &lease).is_err());
    for err in [
        q.complete(&job.id, &done(q, &job.id, "w-x", &lease))
            .unwrap_err(),
        q.fail(&job.id, &failure("w-x", &lease, false)).unwrap_err(),
    ] {
        assert_eq!(err.code(), "lease_lost");
    }
    assert_eq!(status(q, &job), JobStatus::Cancelled);
    // Requeued: the old lease is dead for heartbeats too.
    q.requeue(&job.id).unwrap();
    assert!(q.heartbeat(&job.id, &hb("w-x", &lease)).is_err());
}

fn requeue_from_every_state(b: Backend) {
    for state in JobStatus::ALL {
        let q = b.queue();
        let q = &*q;
        let (job, _) = job_in_state(q, "x", state);
        let result = q.requeue(&job.id);
        if state.is_terminal() {
            assert_eq!(result.unwrap().status, JobStatus::Pending, "from {state}");
            let view = q.job(&job.id).unwrap();
            assert_eq!(view.status, JobStatus::Pending);
            assert_eq!(view.attempts, 0);
            assert!(view.error.is_none());
            assert!(view.artifact_id.is_none());
            assert_eq!(view.events.last().unwrap().kind, "Requeued");
            assert_eq!(claim(q, "again", &cpu(8)).unwrap().lease.attempt, 1);
        } else if state == JobStatus::Held {
            // hold_tests.rs: refused, naming release.
            assert_eq!(result.unwrap_err().code(), "invalid_state");
            assert_eq!(status(q, &job), state);
        } else {
            let err = result.unwrap_err();
            assert_eq!(err.code(), "invalid_state");
            assert_eq!(
                err.to_string(),
                format!(
                    "cannot requeue job {} in state {state} (only failed, cancelled or \
                     completed jobs can be requeued)",
                    job.id.short()
                )
            );
            assert_eq!(status(q, &job), state);
        }
    }
}

fn unknown_jobs_are_not_found(b: Backend) {
    let q = b.queue();
    let q = &*q;
    let id = id_of("nope");
    for err in [
        q.cancel(&id).unwrap_err(),
        q.requeue(&id).unwrap_err(),
        q.job(&id).unwrap_err(),
        q.explain(&id).unwrap_err(),
    ] {
        assert_eq!(err.code(), "not_found");
    }
}

fn resolve_accepts_unique_prefixes(b: Backend) {
    let q = b.queue();
    let q = &*q;
    let jobs = specs("j", 40);
    load(q, &jobs);
    let id = &jobs[7].id;
    assert_eq!(
        q.resolve(&IdPrefix::parse(id.as_str()).unwrap()).unwrap(),
        *id
    );
    assert_eq!(
        q.resolve(&IdPrefix::parse(&id.as_str()[..12]).unwrap())
            .unwrap(),
        *id
    );
    // 40 IDs share some first hex digit.
    let mut firsts: Vec<char> = jobs
        .iter()
        .map(|j| j.id.as_str().chars().next().unwrap())
        .collect();
    firsts.sort();
    let shared = firsts.windows(2).find(|w| w[0] == w[1]).unwrap()[0];
    let err = q
        .resolve(&IdPrefix::parse(&shared.to_string()).unwrap())
        .unwrap_err();
    assert_eq!(err.code(), "ambiguous_id");
    let QueueError::Ambiguous { candidates, .. } = err else {
        unreachable!()
    };
    assert!(candidates.len() >= 2);
    let missing = q.resolve(&IdPrefix::parse(&"f".repeat(64)).unwrap());
    assert_eq!(missing.unwrap_err().code(), "not_found");
}

fn explain_names_each_workers_reasons_and_the_queue_position(b: Backend) {
    let clock = manual_clock();
    let q = b.queue_on(&clock, QueueConfig::default());
    let q = &*q;
    let mut job = spec("big");
    job.model = "gbt".to_string();
    job.constraints.require_cuda = true;
    job.constraints.min_vram_gib = 48.0;
    job.manifest_order = 2;
    let mut pinned = spec("pinned");
    pinned.constraints.allowed_hosts = vec!["lab-z".to_string()];
    pinned.manifest_order = 1;
    load_hosts(
        q,
        &[spec("first"), pinned, job.clone()],
        &[host("denier", &["gbt"], None)],
    );
    q.report_node(&worker("cpu"), &cpu(8)).unwrap();
    q.report_node(&worker("small"), &gpu(24)).unwrap();
    q.report_node(&worker("denier"), &gpu(80)).unwrap();
    q.report_node(&worker("gone"), &gpu(80)).unwrap();
    q.report_node(&worker("shut"), &gpu(80)).unwrap();
    q.cordon(&worker("shut")).unwrap();
    clock.advance(Duration::seconds(300));
    for w in ["cpu", "small", "denier", "shut"] {
        let cap = if w == "cpu" {
            cpu(8)
        } else if w == "small" {
            gpu(24)
        } else {
            gpu(80)
        };
        q.report_node(&worker(w), &cap).unwrap();
    }
    let why = q.explain(&job.id).unwrap();
    // "first" is ahead of it and "gone" or "shut" could run both; "pinned" is for lab-z
    // only, so it does not hold this job back.
    assert_eq!(why.queue_position, Some(2));
    assert_eq!(why.never_runnable_ahead, 1);
    assert_eq!(why.pending_total, 3);
    let reasons = |w: &str| {
        why.workers
            .iter()
            .find(|f| f.worker.as_str() == w)
            .unwrap()
            .reasons
            .clone()
    };
    assert_eq!(
        reasons("cpu"),
        vec!["no CUDA", "0 GiB VRAM < 48 GiB required"]
    );
    assert_eq!(reasons("small"), vec!["24 GiB VRAM < 48 GiB required"]);
    assert_eq!(reasons("denier"), vec!["host policy denies gbt"]);
    assert_eq!(reasons("gone"), vec!["not Ready (last seen 5m ago)"]);
    assert_eq!(reasons("shut"), vec!["cordoned"]);
    assert!(
        why.summary.starts_with(
            "can run later on gone (not Ready (last seen 5m ago)), shut (cordoned); 3 of 5 \
             workers never can: "
        ),
        "{}",
        why.summary
    );

    let pinned_why = q.explain(&id_of("pinned")).unwrap();
    assert!(pinned_why
        .workers
        .iter()
        .all(|w| w.reasons.contains(&"not in allowed_hosts".to_string())));

    let first = q.explain(&id_of("first")).unwrap();
    assert_eq!(first.queue_position, Some(1));
    assert!(
        first.summary.starts_with("can run now on cpu"),
        "{}",
        first.summary
    );

    let c = claim(q, "cpu", &cpu(8)).unwrap();
    let running = q.explain(&c.job.id).unwrap();
    assert_eq!(running.queue_position, None);
    assert!(running.workers.is_empty());
    assert_eq!(
        running.summary,
        "claimed by cpu (attempt 1 of 3), not started yet"
    );
}

/// One case of [`explain_does_not_mislead`].
struct ExplainCase {
    name: &'static str,
    /// The queue, its workers, and the job to explain.
    setup: fn() -> (Queue, JobId),
    /// Per worker: its lasting reasons, then its passing ones.
    workers: &'static [(
        &'static str,
        &'static [&'static str],
        &'static [&'static str],
    )],
    position: u64,
    never_ahead: u64,
    summary_has: &'static [&'static str],
    summary_lacks: &'static [&'static str],
}

/// Issue 13, point 8: what explain said before, and must not say.
const EXPLAIN_CASES: &[ExplainCase] = &[
    // Was "can run on w ... " and `describe` said "could run it now": its only slot is busy.
    ExplainCase {
        name: "a worker whose slots are all busy",
        setup: || {
            let q = queue();
            load(&q, &specs("j", 2));
            claim(&q, "w", &cpu(8)).unwrap();
            (q, specs("j", 2)[1].id.clone())
        },
        workers: &[("w", &[], &["busy: all 1 slots hold jobs"])],
        position: 1,
        never_ahead: 0,
        summary_has: &["can run later on w (busy: all 1 slots hold jobs)"],
        summary_lacks: &["can run now"],
    },
    // Was "position 4 of 4": the CUDA jobs ahead can never run on the only (CPU) worker.
    ExplainCase {
        name: "behind jobs that can never run where it can",
        setup: || {
            let q = queue();
            let mut jobs = specs("j", 4);
            for j in [0, 2] {
                jobs[j].constraints.require_cuda = true;
            }
            jobs[1].constraints.min_vram_gib = 8.0;
            let plain_ahead = spec("plain-ahead");
            load(&q, &[jobs.clone(), vec![plain_ahead]].concat());
            q.report_node(&worker("c"), &cpu(8)).unwrap();
            (q, jobs[3].id.clone())
        },
        workers: &[("c", &[], &[])],
        position: 2,
        never_ahead: 3,
        summary_has: &[
            "can run now on c",
            "position 2 of 5 pending (3 ahead of it can never run on the workers",
        ],
        summary_lacks: &["position 4", "position 5"],
    },
    // Was "none of 4 workers can take it: at max_concurrent 1 (1), cordoned (1), draining
    // (1)": the host policy that keeps p from it for good was cut off.
    ExplainCase {
        name: "a host policy next to passing reasons",
        setup: || {
            let q = queue();
            let hold = JobSpec {
                model: "mlp".to_string(),
                ..spec("hold")
            };
            let target = JobSpec {
                manifest_order: 1,
                ..spec("target")
            };
            load_hosts(
                &q,
                &[hold, target.clone()],
                &[host("p", &["gbt"], None), host("m", &[], Some(1))],
            );
            for w in ["c", "d", "p"] {
                q.report_node(&worker(w), &cpu(8)).unwrap();
            }
            claim(&q, "m", &cpu(8)).unwrap();
            q.cordon(&worker("c")).unwrap();
            q.cordon(&worker("p")).unwrap();
            q.drain(&worker("d")).unwrap();
            (q, target.id)
        },
        workers: &[
            ("c", &[], &["cordoned"]),
            ("d", &[], &["draining"]),
            ("m", &[], &["at max_concurrent 1"]),
            ("p", &["host policy denies gbt"], &["cordoned"]),
        ],
        position: 1,
        never_ahead: 0,
        summary_has: &[
            "can run later on c (cordoned), d (draining), m (at max_concurrent 1)",
            "1 of 4 workers never can: host policy denies gbt (1)",
        ],
        summary_lacks: &[],
    },
    // Nobody can ever run it: the lasting reasons are the summary.
    ExplainCase {
        name: "no worker can ever run it",
        setup: || {
            let q = queue();
            let mut job = spec("cuda");
            job.constraints.require_cuda = true;
            load(&q, std::slice::from_ref(&job));
            q.report_node(&worker("c"), &cpu(8)).unwrap();
            (q, job.id)
        },
        workers: &[("c", &["no CUDA"], &[])],
        position: 1,
        never_ahead: 0,
        summary_has: &["no known worker can ever run it as things are: no CUDA (1)"],
        summary_lacks: &["later"],
    },
    // Was "no CUDA": a CUDA worker whose last claim listed no free GPU is busy, not unable.
    ExplainCase {
        name: "a CUDA worker with every GPU in use",
        setup: || {
            let q = queue();
            let mut job = spec("cuda");
            job.constraints.require_cuda = true;
            load(&q, std::slice::from_ref(&job));
            let mut busy = gpu(24);
            busy.gpus.clear();
            q.report_node(&worker("g"), &busy).unwrap();
            (q, job.id)
        },
        workers: &[("g", &[], &["no free GPU (all in use)"])],
        position: 1,
        never_ahead: 0,
        summary_has: &["can run later on g (no free GPU (all in use))"],
        summary_lacks: &["no CUDA"],
    },
];

#[test]
fn explain_does_not_mislead() {
    for case in EXPLAIN_CASES {
        let (q, id) = (case.setup)();
        let why = q.explain(&id).unwrap();
        let name = case.name;
        let got: Vec<(String, Vec<String>, Vec<String>)> = why
            .workers
            .iter()
            .map(|w| {
                (
                    w.worker.to_string(),
                    w.lasting().to_vec(),
                    w.passing().to_vec(),
                )
            })
            .collect();
        let want: Vec<(String, Vec<String>, Vec<String>)> = case
            .workers
            .iter()
            .map(|(w, lasting, passing)| {
                let texts = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
                (w.to_string(), texts(lasting), texts(passing))
            })
            .collect();
        assert_eq!(got, want, "{name}");
        assert_eq!(why.queue_position, Some(case.position), "{name}: {why:?}");
        assert_eq!(why.never_runnable_ahead, case.never_ahead, "{name}");
        for text in case.summary_has {
            assert!(why.summary.contains(text), "{name}: {}", why.summary);
        }
        for text in case.summary_lacks {
            assert!(!why.summary.contains(text), "{name}: {}", why.summary);
        }
    }
}

fn explain_reports_max_concurrent(b: Backend) {
    let q = b.queue();
    let q = &*q;
    load_hosts(q, &specs("j", 3), &[host("box", &[], Some(1))]);
    claim(q, "box", &cpu(8)).unwrap();
    let why = q.explain(&specs("j", 3)[1].id).unwrap();
    assert_eq!(why.workers[0].reasons, vec!["at max_concurrent 1"]);
    assert_eq!(why.queue_position, Some(1));
}

fn events_page_by_seq_and_subscribers_hear_commits(b: Backend) {
    let q = b.queue();
    let q = &*q;
    let rx = q.subscribe();
    assert_eq!(*rx.borrow(), 0);
    load(q, &specs("j", 3));
    assert_eq!(*rx.borrow(), 3);
    let page = q.events_since(0, 2).unwrap();
    assert_eq!(page.events.len(), 2);
    assert_eq!(page.next, 2);
    let rest = q.events_since(page.next, 100).unwrap();
    assert_eq!(rest.events.len(), 1);
    assert_eq!(rest.next, 3);
    let none = q.events_since(rest.next, 100).unwrap();
    assert!(none.events.is_empty());
    assert_eq!(none.next, 3);
    claim(q, "w1", &cpu(8)).unwrap();
    // NodeRegistered + Claimed.
    assert_eq!(*rx.borrow(), 5);
    assert!(rx.has_changed().unwrap());
}

#[test]
fn events_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.db");
    let job = spec("a");
    {
        let q = Queue::open(&path, QueueConfig::default()).unwrap();
        load(&q, std::slice::from_ref(&job));
        let c = claim(&q, "w1", &cpu(8)).unwrap();
        q.fail(&job.id, &failure("w1", &c.lease, false)).unwrap();
    }
    let q = Queue::open(&path, QueueConfig::default()).unwrap();
    assert_eq!(kinds(&q, &job), vec!["Created", "Claimed", "Failed"]);
    assert_eq!(*q.subscribe().borrow(), 4);
    assert_eq!(
        q.job(&job.id).unwrap().error.unwrap().log_tail.as_deref(),
        Some("Traceback: boom")
    );
}

fn counts_and_filters(b: Backend) {
    let q = b.queue();
    let q = &*q;
    let mut jobs = specs("j", 3);
    jobs[2].model = "mlp".to_string();
    jobs[1].labels.insert("team".to_string(), "a".to_string());
    load(q, &jobs);
    claim(q, "w1", &cpu(8)).unwrap();
    let counts = q.counts().unwrap();
    assert_eq!(counts["pending"], 2);
    assert_eq!(counts["claimed"], 1);
    assert_eq!(counts["failed"], 0);
    assert_eq!(counts.len(), JobStatus::ALL.len());
    let by = |f: JobFilter| q.jobs(&f).unwrap().len();
    assert_eq!(
        by(JobFilter {
            status: Some(JobStatus::Pending),
            ..JobFilter::default()
        }),
        2
    );
    assert_eq!(
        by(JobFilter {
            model: Some("mlp".to_string()),
            ..JobFilter::default()
        }),
        1
    );
    assert_eq!(
        by(JobFilter {
            worker: Some("w1".to_string()),
            ..JobFilter::default()
        }),
        1
    );
    assert_eq!(
        by(JobFilter {
            label: Some("team=a".to_string()),
            ..JobFilter::default()
        }),
        1
    );
    // `team` alone selects jobs that have the label (selector_tests.rs); an empty value
    // is no selector term.
    let bad = q
        .jobs(&JobFilter {
            label: Some("team=".to_string()),
            ..JobFilter::default()
        })
        .unwrap_err();
    assert_eq!(bad.code(), "bad_request");
}

fn manifest_errors_are_recorded_and_cleared_by_the_next_apply(b: Backend) {
    let q = b.queue();
    let q = &*q;
    let err = ManifestError {
        path: "m.toml".to_string(),
        line: Some(3),
        column: Some(1),
        message: "unknown key `prioirty`".to_string(),
    };
    q.record_manifest_errors("m.toml", std::slice::from_ref(&err))
        .unwrap();
    let st = q.manifest_status().unwrap();
    assert_eq!(st.last_errors, vec![err]);
    assert!(st.last_error_at.is_some());
    assert_eq!(st.generation, 0);
    load(q, &specs("j", 1));
    let st = q.manifest_status().unwrap();
    assert!(st.last_errors.is_empty());
    assert_eq!(st.sha256, Some("ab".repeat(32)));
    assert_eq!(st.generation, 1);
    assert!(st.last_applied_at.is_some());
}

fn apply_rechecks_jobs_claimed_since_planning(b: Backend) {
    let q = b.queue();
    let q = &*q;
    let mut jobs = specs("j", 1);
    load(q, &jobs);
    jobs[0].priority = 9;
    let stale_plan = plan(&jobs, &q.actual().unwrap());
    assert_eq!(stale_plan.update.len(), 1);
    claim(q, "w1", &cpu(8)).unwrap();
    let summary = q.apply(&stale_plan, &[], &source()).unwrap();
    assert_eq!(
        summary.generation, 1,
        "nothing changed: the job is leased now"
    );
    assert_eq!(q.job(&jobs[0].id).unwrap().priority, 0);
}

fn a_cpu_worker_skips_deferred_prefer_cuda_jobs_to_reach_others(b: Backend) {
    let q = b.queue();
    let q = &*q;
    let mut desired: Vec<JobSpec> = specs("pref", 50)
        .into_iter()
        .map(|mut s| {
            s.priority = 1;
            s.constraints.prefer_cuda = true;
            s
        })
        .collect();
    let plain = JobSpec {
        manifest_order: 99,
        ..spec("plain")
    };
    desired.push(plain.clone());
    load(q, &desired);
    q.report_node(&worker("gpu"), &gpu(24)).unwrap();
    assert_eq!(claim(q, "cpu", &cpu(8)).unwrap().job.id, plain.id);
    assert!(claim(q, "cpu", &cpu(8)).is_none());
    assert_eq!(claim(q, "gpu", &gpu(24)).unwrap().job.id, desired[0].id);
}

#[test]
fn a_database_from_a_newer_build_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.db");
    let q = Queue::open(&path, QueueConfig::default()).unwrap();
    q.write(|tx| {
        Ok(tx
            .db
            .execute("UPDATE schema_version SET version = 99", [])?)
    })
    .unwrap();
    drop(q);
    let err = Queue::open(&path, QueueConfig::default()).unwrap_err();
    assert_eq!(err.code(), "internal");
    assert!(err.to_string().contains("newer than this program"), "{err}");
}

#[test]
fn ages_read_like_kubectl() {
    use super::explain::ago;
    assert_eq!(ago(42_000), "42s");
    assert_eq!(ago(300_000), "5m");
    assert_eq!(ago(3 * 3_600_000), "3h");
    assert_eq!(ago(3 * 86_400_000), "3d");
    assert_eq!(ago(-5), "0s");
}

#[test]
fn sweeps_counts_and_leased_jobs_walk_indexes() {
    let q = queue();
    let plans: Vec<String> = [
        "SELECT id FROM jobs INDEXED BY jobs_lease WHERE lease_token IS NOT NULL \
         AND lease_expires_at < 5 AND status IN ('claimed', 'running') ORDER BY id",
        "SELECT id FROM jobs INDEXED BY jobs_worker \
         WHERE worker = 'w' AND status IN ('claimed', 'running') ORDER BY id",
        "SELECT status, COUNT(*) FROM jobs GROUP BY status",
    ]
    .iter()
    .map(|sql| {
        q.read(|tx| {
            let mut stmt = tx.db.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(3))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?.join("; "))
        })
        .unwrap()
    })
    .collect();
    assert!(plans[0].contains("INDEX jobs_lease"), "{}", plans[0]);
    assert!(plans[1].contains("INDEX jobs_worker"), "{}", plans[1]);
    assert!(plans[2].contains("COVERING INDEX"), "{}", plans[2]);
}

#[test]
fn the_claim_statements_are_compiled_once() {
    let q = queue();
    let reprepares = |sql: &str| {
        q.read(|tx| {
            Ok(tx
                .db
                .prepare_cached(sql)?
                .get_status(rusqlite::StatementStatus::RePrepare))
        })
        .unwrap()
    };
    let all = [
        super::matching::CLAIM_CUDA,
        super::matching::CLAIM_CPU,
        super::matching::CLAIM_PINNED_CUDA,
        super::matching::CLAIM_PINNED_CPU,
        super::matching::NEXT_PIN_LIST_CUDA,
        super::matching::NEXT_PIN_LIST_CPU,
    ];
    let mut pinned = specs("p", 4);
    for (k, s) in pinned.iter_mut().enumerate() {
        s.constraints.allowed_hosts = vec![format!("w{k}"), format!("w{}", k + 1)];
    }
    load(&q, &[specs("j", 4), pinned].concat());
    let before = all.map(&reprepares);
    for k in 0..6 {
        let cap = if k % 2 == 0 { gpu(24) } else { cpu(8) };
        claim(&q, &format!("w{k}"), &cap);
    }
    let after = all.map(&reprepares);
    assert_eq!(before, after);
}

fn a_stale_create_of_a_job_that_exists_updates_it_instead(b: Backend) {
    let q = b.queue();
    let q = &*q;
    let mut jobs = specs("j", 2);
    let stale_plan_v1 = plan(&jobs, &[]);
    jobs[1].priority = 3;
    let stale_plan_v2 = plan(&jobs, &[]);
    q.apply(&stale_plan_v1, &[], &source()).unwrap();
    let summary = q.apply(&stale_plan_v1, &[], &source()).unwrap();
    assert_eq!(
        summary.generation, 1,
        "the same jobs again: nothing changed"
    );
    let summary = q.apply(&stale_plan_v2, &[], &source()).unwrap();
    assert_eq!(summary.generation, 2);
    assert_eq!(q.job(&jobs[1].id).unwrap().priority, 3);
    assert_eq!(kinds(q, &jobs[0]), vec!["Created"]);
    assert_eq!(kinds(q, &jobs[1]), vec!["Created", "Updated"]);
}

/// A small deterministic generator, so the mixed-queue test covers many shapes.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// The job a claim must return, computed from first principles: the first pending job in
/// the worker's queue order that it may run and does not leave to a CUDA worker.
fn reference_pick<'a>(
    pending: &'a [JobSpec],
    worker: &str,
    cap: &Capability,
    cuda_workers: &[(&str, Capability)],
) -> Option<&'a JobSpec> {
    let cuda = super::matching::has_cuda(cap);
    pending
        .iter()
        .filter(|j| {
            super::matching::hard_reasons(&j.model, &j.constraints, worker, cap, None).is_empty()
        })
        .filter(|j| {
            cuda || !j.constraints.prefer_cuda
                || !cuda_workers.iter().any(|(name, c)| {
                    super::matching::hard_reasons(&j.model, &j.constraints, name, c, None)
                        .is_empty()
                })
        })
        .min_by_key(|j| {
            let prefer_last = if cuda {
                !j.constraints.prefer_cuda
            } else {
                j.constraints.prefer_cuda
            };
            (
                std::cmp::Reverse(j.priority),
                prefer_last,
                j.manifest_order,
                j.id.clone(),
            )
        })
}

#[test]
fn pinned_and_unpinned_jobs_are_claimed_in_one_queue_order() {
    let lists: [&[&str]; 5] = [&[], &["a"], &["a", "g"], &["b", "g"], &["nobody"]];
    let mut rng = Lcg(7);
    let desired: Vec<JobSpec> = specs("mix", 120)
        .into_iter()
        .map(|mut s| {
            s.priority = [0, 0, 5][rng.below(3) as usize];
            s.constraints.prefer_cuda = rng.below(4) == 0;
            s.constraints.require_cuda = rng.below(5) == 0;
            s.constraints.min_ram_gib = [0.0, 0.0, 16.0][rng.below(3) as usize];
            s.constraints.allowed_hosts = lists[rng.below(5) as usize]
                .iter()
                .map(|h| h.to_string())
                .collect();
            s
        })
        .collect();
    let q = queue();
    load(&q, &desired);
    let workers: Vec<(&str, Capability)> = vec![
        ("a", cpu(8)),
        ("b", cpu(32)),
        ("g", gpu(24)),
        ("c", cpu(64)),
    ];
    let cuda_workers: Vec<(&str, Capability)> = workers
        .iter()
        .filter(|(_, c)| super::matching::has_cuda(c))
        .cloned()
        .collect();
    // The CUDA worker reports first, so the CPU workers see it Ready.
    q.report_node(&worker("g"), &gpu(24)).unwrap();
    let mut pending = desired.clone();
    let mut claims = 0;
    let mut done = vec![false; workers.len()];
    while done.iter().any(|d| !d) {
        for (k, (name, cap)) in workers.iter().enumerate() {
            if done[k] {
                continue;
            }
            let expected = reference_pick(&pending, name, cap, &cuda_workers).map(|j| j.id.clone());
            let got = claim(&q, name, cap).map(|c| c.job.id);
            assert_eq!(got, expected, "claim {claims} by {name}");
            match got {
                Some(id) => {
                    pending.retain(|j| j.id != id);
                    claims += 1;
                }
                None => done[k] = true,
            }
        }
    }
    assert!(claims > 80, "only {claims} claims");
    // Left: exactly the jobs pinned to a host that never claims, or that no worker fits.
    assert!(pending.iter().all(
        |j| workers.iter().all(|(n, c)| !super::matching::hard_reasons(
            &j.model,
            &j.constraints,
            n,
            c,
            None
        )
        .is_empty())
    ));
}

fn a_pinned_job_leaves_and_rejoins_its_hosts_walk_with_its_state(b: Backend) {
    let q = b.queue();
    let q = &*q;
    let mut job = spec("pinned");
    job.constraints.allowed_hosts = vec!["a".to_string(), "b".to_string()];
    let plain = JobSpec {
        manifest_order: 1,
        ..spec("plain")
    };
    load(q, &[job.clone(), plain.clone()]);
    // Claimed: gone from both hosts' walks.
    let lease = claim(q, "a", &cpu(8)).unwrap();
    assert_eq!(lease.job.id, job.id);
    assert_eq!(claim(q, "b", &cpu(8)).unwrap().job.id, plain.id);
    assert!(claim(q, "b", &cpu(8)).is_none());
    // Released: back, for either host.
    q.fail(&job.id, &failure("a", &lease.lease, true)).unwrap();
    assert_eq!(claim(q, "b", &cpu(8)).unwrap().job.id, job.id);
    // Leases expired (both jobs): back again; then the pinned job tombstoned: gone.
    q.sweep(past_lease(q)).unwrap();
    let p = plan(std::slice::from_ref(&plain), &q.actual().unwrap());
    q.apply(&p, &[], &source()).unwrap();
    assert_eq!(claim(q, "a", &cpu(8)).unwrap().job.id, plain.id);
    assert!(claim(q, "a", &cpu(8)).is_none());
    // Revived and re-pinned elsewhere by a manifest edit: only the new host sees it.
    let mut moved = job.clone();
    moved.constraints.allowed_hosts = vec!["c".to_string()];
    let p = plan(&[moved, plain], &q.actual().unwrap());
    q.apply(&p, &[], &source()).unwrap();
    assert!(claim(q, "a", &cpu(8)).is_none());
    let lease = claim(q, "c", &cpu(8)).unwrap();
    assert_eq!(lease.job.id, job.id);
    // Cancelled and requeued: claimable by its host once more.
    q.cancel(&job.id).unwrap();
    q.requeue(&job.id).unwrap();
    assert!(claim(q, "a", &cpu(8)).is_none());
    assert_eq!(claim(q, "c", &cpu(8)).unwrap().job.id, job.id);
}

#[test]
fn a_version_2_database_migrates_with_its_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v2.db");
    let mut pinned = spec("pinned");
    pinned.constraints.allowed_hosts = vec!["a".to_string()];
    let mut cuda_only = JobSpec {
        manifest_order: 1,
        ..spec("cuda-only")
    };
    cuda_only.constraints.require_cuda = true;
    let leased = JobSpec {
        manifest_order: 2,
        ..spec("leased")
    };
    {
        let mut conn = rusqlite::Connection::open(&path).unwrap();
        super::schema::migrate_to(&mut conn, 2).unwrap();
        for (job, status, lease) in [
            (&pinned, "pending", None),
            (&cuda_only, "pending", None),
            (&leased, "running", Some(("old", 1_i64))),
        ] {
            let c = &job.constraints;
            conn.execute(
                "INSERT INTO jobs (id, spec, status, priority, manifest_order, model, mode, \
                 require_cuda, prefer_cuda, min_vram_gib, min_ram_gib, allowed_hosts, worker, \
                 attempts, lease_attempt, lease_token, lease_expires_at, created_at, updated_at, \
                 pending_since) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, \
                 ?14, ?15, ?16, ?17, 0, 0, 0)",
                rusqlite::params![
                    job.id.as_str(),
                    serde_json::to_string(job).unwrap(),
                    status,
                    job.priority,
                    job.manifest_order as i64,
                    job.model,
                    job.mode,
                    c.require_cuda,
                    c.prefer_cuda,
                    c.min_vram_gib,
                    c.min_ram_gib,
                    serde_json::to_string(&c.allowed_hosts).unwrap(),
                    lease.map(|(w, _)| w),
                    lease.map_or(0, |(_, a)| a),
                    lease.map(|(_, a)| a),
                    lease.map(|_| "token"),
                    lease.map(|(_, a)| a),
                ],
            )
            .unwrap();
        }
    }
    let q = Queue::open(&path, QueueConfig::default()).unwrap();
    let version: i64 = q
        .read(|tx| {
            Ok(tx
                .db
                .query_row("SELECT version FROM schema_version", [], |r| r.get(0))?)
        })
        .unwrap();
    assert_eq!(version as usize, super::schema::latest_version());
    // The running job is still held by its worker and its lease still expires.
    let held = q
        .read(|tx| super::nodes::i_leased_jobs_of(tx, "old"))
        .unwrap();
    assert_eq!(held, vec![leased.id.clone()]);
    assert_eq!(q.sweep(q.now()).unwrap().requeued, vec![leased.id.clone()]);
    // The pinned job only for its host, the CUDA job only for a CUDA worker.
    assert_eq!(claim(&q, "b", &cpu(8)).unwrap().job.id, leased.id);
    assert!(claim(&q, "b", &cpu(8)).is_none());
    assert_eq!(claim(&q, "a", &cpu(8)).unwrap().job.id, pinned.id);
    assert!(claim(&q, "a", &cpu(8)).is_none());
    assert_eq!(claim(&q, "g", &gpu(8)).unwrap().job.id, cuda_only.id);
}

on_both_backends!(
    applying_the_same_manifest_twice_changes_nothing,
    changed_host_policies_count_as_a_change,
    update_changes_a_pending_job_but_not_a_leased_one,
    tombstone_and_revive_keep_the_history,
    a_tombstoned_running_job_finishes_as_orphaned,
    claims_follow_priority_then_manifest_order,
    require_cuda_needs_a_cuda_gpu,
    a_cuda_job_without_min_vram_is_not_handed_to_a_claim_whose_gpus_are_all_shared,
    the_whole_gpu_rule_holds_for_pinned_jobs_too,
    min_vram_is_matched_per_gpu,
    min_ram_is_matched_against_allocatable_ram,
    allowed_hosts_pins_a_job,
    host_policy_denies_models_and_unlisted_hosts_allow_all,
    host_allow_lists_and_deny_all,
    host_max_concurrent_limits_leased_jobs,
    prefer_cuda_gives_cuda_workers_the_job_first,
    the_first_heartbeat_starts_the_job_and_extends_the_lease,
    a_wrong_lease_worker_or_job_state_is_lease_lost,
    sweep_returns_an_expired_job_to_pending_and_fences_the_old_lease,
    lease_expiries_past_max_attempts_fail_the_job,
    an_agent_shutdown_release_does_not_use_an_attempt,
    a_replaced_lease_of_the_same_attempt_number_is_refused_with_what_happened,
    a_trainer_failure_fails_the_job_without_a_retry_policy,
    a_retry_policy_retries_trainer_failures_until_retries_or_attempts_run_out,
    cancel_from_every_state,
    a_cancelled_job_tells_its_worker_through_the_old_lease_and_refuses_completion,
    requeue_from_every_state,
    resolve_accepts_unique_prefixes,
    events_page_by_seq_and_subscribers_hear_commits,
    counts_and_filters,
    manifest_errors_are_recorded_and_cleared_by_the_next_apply,
    apply_rechecks_jobs_claimed_since_planning,
    a_stale_create_of_a_job_that_exists_updates_it_instead,
    a_pinned_job_leaves_and_rejoins_its_hosts_walk_with_its_state,
);

on_both_backends!(
    cordoned_and_draining_workers_get_nothing,
    nodes_turn_not_ready_when_stale,
    prefer_cuda_jobs_go_to_cpu_workers_when_no_cuda_worker_could_run_them,
    a_cpu_worker_skips_deferred_prefer_cuda_jobs_to_reach_others,
);

on_both_backends!(
    prefer_cuda_jobs_wait_for_a_ready_cuda_worker,
    unknown_jobs_are_not_found,
    explain_names_each_workers_reasons_and_the_queue_position,
    explain_reports_max_concurrent,
);
