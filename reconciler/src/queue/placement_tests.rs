//! Claims and explain with node_selector, cores and gpus (`placement.rs`).

use crate::queue::JobQueue;
use std::collections::BTreeMap;

use cis490_api::{Capability, ClaimResponse, Gpu, JobSpec};

use super::test_support::Backend;
use super::test_support::{cpu, gpu, spec, worker};
use super::ManifestSource;
use crate::plan::plan;
use crate::policy::HostPolicy;

fn load_hosts(q: &dyn JobQueue, desired: &[JobSpec], hosts: &[HostPolicy]) {
    let source = ManifestSource {
        path: "m.toml".to_string(),
        sha256: "ab".repeat(32),
        warnings: Vec::new(),
    };
    let p = plan(desired, &q.actual().unwrap());
    q.apply(&p, hosts, &source).unwrap();
}

fn claim(q: &dyn JobQueue, w: &str, cap: &Capability) -> Option<ClaimResponse> {
    q.claim(&worker(w), cap).unwrap()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn selecting(name: &str, pairs: &[(&str, &str)]) -> JobSpec {
    let mut job = spec(name);
    job.constraints.node_selector = labels(pairs);
    job
}

fn labelled(pairs: &[(&str, &str)]) -> Capability {
    Capability {
        labels: labels(pairs),
        ..cpu(16)
    }
}

/// Every reason explain gives for `job`, one worker a line.
fn explained(q: &dyn JobQueue, job: &JobSpec) -> String {
    let why = q.explain(&job.id).unwrap();
    why.workers
        .iter()
        .map(|w| format!("{}: {}", w.worker, w.reasons.join("; ")))
        .collect::<Vec<_>>()
        .join("\n")
}

fn a_node_selector_job_goes_only_to_a_worker_with_every_label(b: Backend) {
    let q = b.queue();
    let q = &*q;
    let job = selecting("sel", &[("gpu", "rtx-4090"), ("room", "a")]);
    load_hosts(q, std::slice::from_ref(&job), &[]);
    assert!(claim(q, "plain", &cpu(16)).is_none());
    assert!(claim(q, "half", &labelled(&[("gpu", "rtx-4090")])).is_none());
    assert!(claim(q, "wrong", &labelled(&[("gpu", "a100"), ("room", "a")])).is_none());
    let why = explained(q, &job);
    assert!(
        why.contains("plain: no label gpu (node_selector wants gpu=rtx-4090)"),
        "{why}"
    );
    assert!(
        why.contains("half: no label room (node_selector wants room=a)"),
        "{why}"
    );
    assert!(
        why.contains("wrong: label gpu=a100, node_selector wants gpu=rtx-4090"),
        "{why}"
    );
    let both = labelled(&[("gpu", "rtx-4090"), ("room", "a"), ("extra", "x")]);
    assert_eq!(claim(q, "both", &both).unwrap().job.id, job.id);
}

fn a_node_selector_is_matched_for_pinned_jobs_too(b: Backend) {
    let q = b.queue();
    let q = &*q;
    let mut job = selecting("pinned", &[("gpu", "x")]);
    job.constraints.allowed_hosts = vec!["w".to_string()];
    load_hosts(q, std::slice::from_ref(&job), &[]);
    assert!(claim(q, "w", &cpu(16)).is_none());
    assert_eq!(
        claim(q, "w", &labelled(&[("gpu", "x")])).unwrap().job.id,
        job.id
    );
}

fn hosts_labels_count_and_win_over_the_agents(b: Backend) {
    let q = b.queue();
    let q = &*q;
    let job = selecting("room", &[("room", "b")]);
    let host = HostPolicy {
        name: "h".to_string(),
        labels: labels(&[("room", "b")]),
        ..HostPolicy::default()
    };
    load_hosts(q, std::slice::from_ref(&job), &[host]);
    // The agent says room=a; the manifest's [[hosts]] entry says room=b, and it wins.
    assert!(claim(q, "other", &labelled(&[("room", "b2")])).is_none());
    let claimed = claim(q, "h", &labelled(&[("room", "a")])).unwrap();
    assert_eq!(claimed.job.id, job.id);
    let view = q
        .workers()
        .unwrap()
        .into_iter()
        .find(|w| w.name.as_str() == "h")
        .unwrap();
    assert_eq!(view.labels, labels(&[("room", "b")]));
    assert_eq!(view.capability.labels, labels(&[("room", "a")]));
}

fn a_cores_job_waits_until_enough_cores_are_free(b: Backend) {
    let q = b.queue();
    let q = &*q;
    let mut job = spec("cores");
    job.constraints.cores = 4;
    load_hosts(q, std::slice::from_ref(&job), &[]);
    let busy = Capability {
        cores_allocatable: Some(2),
        ..cpu(16)
    };
    assert!(claim(q, "w", &busy).is_none());
    let small = Capability {
        cores: 2,
        ..cpu(16)
    };
    assert!(claim(q, "small", &small).is_none());
    let why = explained(q, &job);
    assert!(why.contains("w: needs 4 cores, 2 free"), "{why}");
    assert!(
        why.contains("small: needs 4 cores, 2 free (it has 2 in all)"),
        "{why}"
    );
    let summary = q.explain(&job.id).unwrap().summary;
    assert!(summary.contains("can run later on w"), "{summary}");
    let free = Capability {
        cores_allocatable: Some(4),
        ..cpu(16)
    };
    assert_eq!(claim(q, "w", &free).unwrap().job.id, job.id);
}

fn a_gpus_job_needs_that_many_whole_free_gpus(b: Backend) {
    let q = b.queue();
    let q = &*q;
    let mut job = spec("gpus");
    job.constraints.gpus = 2;
    load_hosts(q, std::slice::from_ref(&job), &[]);
    assert!(claim(q, "one", &gpu(24)).is_none());
    assert!(claim(q, "cpu", &cpu(16)).is_none());
    let mut two = gpu(24);
    let second = Gpu {
        index: 1,
        ..two.gpus[0].clone()
    };
    two.gpus.push(second);
    let mut shared = two.clone();
    shared.gpus[1].vram_allocated_mib = 1024;
    assert!(claim(q, "shared", &shared).is_none());
    let why = explained(q, &job);
    assert!(why.contains("shared: needs 2 GPUs, 1 free"), "{why}");
    assert!(why.contains("cpu: needs 2 GPUs, 0 free (no CUDA)"), "{why}");
    assert_eq!(claim(q, "two", &two).unwrap().job.id, job.id);
}

fn a_changed_node_selector_updates_a_pending_job(b: Backend) {
    let q = b.queue();
    let q = &*q;
    let job = spec("moves");
    load_hosts(q, std::slice::from_ref(&job), &[]);
    let pinned = selecting("moves", &[("gpu", "x")]);
    assert_eq!(pinned.id, job.id, "not identity");
    load_hosts(q, std::slice::from_ref(&pinned), &[]);
    assert!(claim(q, "plain", &cpu(16)).is_none());
    assert_eq!(
        claim(q, "x", &labelled(&[("gpu", "x")])).unwrap().job.id,
        job.id
    );
}

/// The claim walks the queue in rounds (PostgreSQL: a LIMIT per round): the one job a
/// worker may run sits past the first round, behind jobs only other workers may run.
fn a_claim_finds_the_one_fitting_job_far_down_the_queue(b: Backend) {
    let q = b.queue();
    let q = &*q;
    let mut desired: Vec<JobSpec> = (0..150)
        .map(|i| JobSpec {
            manifest_order: i,
            ..selecting(&format!("gpu-only-{i}"), &[("gpu", "a100")])
        })
        .collect();
    let plain = JobSpec {
        manifest_order: 150,
        ..spec("plain")
    };
    desired.push(plain.clone());
    load_hosts(q, &desired, &[]);
    let got = claim(q, "w1", &labelled(&[])).expect("the plain job");
    assert_eq!(got.job.id, plain.id);
    assert!(claim(q, "w2", &labelled(&[])).is_none());
    assert!(claim(q, "a100", &labelled(&[("gpu", "a100")])).is_some());
}

/// A label filter skips most jobs: each page still holds `limit` matching jobs, in queue
/// order, and the pages together hold each match once.
fn a_filtered_listing_pages_through_every_match_once(b: Backend) {
    let q = b.queue();
    let q = &*q;
    let desired: Vec<JobSpec> = (0..300)
        .map(|i| {
            let mut job = spec(&format!("job-{i}"));
            job.manifest_order = i;
            if i % 50 == 49 {
                job.labels = labels(&[("team", "vision")]);
            }
            job
        })
        .collect();
    load_hosts(q, &desired, &[]);
    let filter = cis490_api::JobFilter {
        label: Some("team=vision".into()),
        ..cis490_api::JobFilter::default()
    };
    let vision: Vec<_> = desired
        .iter()
        .filter(|j| !j.labels.is_empty())
        .map(|j| j.id.clone())
        .collect();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = q.jobs_page(&filter, after.as_ref(), 2).unwrap();
        assert!(page.items.len() <= 2);
        seen.extend(page.items.iter().map(|j| j.id.clone()));
        match page.next {
            Some(next) => after = Some(crate::queue::listing::JobCursor::decode(&next).unwrap()),
            None => break,
        }
    }
    assert_eq!(seen, vision);
}

super::test_support::on_both_backends!(
    a_claim_finds_the_one_fitting_job_far_down_the_queue,
    a_filtered_listing_pages_through_every_match_once,
);

super::test_support::on_both_backends!(
    a_node_selector_is_matched_for_pinned_jobs_too,
    hosts_labels_count_and_win_over_the_agents,
    a_changed_node_selector_updates_a_pending_job,
);

super::test_support::on_both_backends!(
    a_node_selector_job_goes_only_to_a_worker_with_every_label,
    a_cores_job_waits_until_enough_cores_are_free,
    a_gpus_job_needs_that_many_whole_free_gpus,
);
