//! Builders shared by the queue's integration tests.

use cis490_reconciler::queue::JobQueue;
use std::collections::BTreeMap;

use cis490_api::{Capability, Constraints, JobId, JobSpec, RetryPolicy, WorkerName};
use cis490_reconciler::plan::plan;
use cis490_reconciler::queue::{ManifestSource, Queue};
use sha2::{Digest, Sha256};

/// `n` plain jobs with unique IDs (sha256 of `{prefix}{i}`) in manifest order.
pub fn jobs(prefix: &str, n: usize) -> Vec<JobSpec> {
    (0..n)
        .map(|i| {
            let id = hex::encode(Sha256::digest(format!("{prefix}{i}").as_bytes()));
            JobSpec {
                id: JobId::parse(&id).unwrap(),
                model: "gbt".to_string(),
                mode: "realistic".to_string(),
                hyper: BTreeMap::new(),
                split_recipe: None,
                train_hosts: Vec::new(),
                seed: i as i64,
                constraints: Constraints::default(),
                priority: 0,
                max_attempts: 3,
                stale_after_s: 90,
                retry: RetryPolicy::default(),
                command: vec!["train".to_string()],
                labels: BTreeMap::new(),
                timeout_s: None,
                env: BTreeMap::new(),
                manifest_order: i as u64,
            }
        })
        .collect()
}

/// Plans `desired` against the queue and applies it.
pub fn load(q: &Queue, desired: &[JobSpec]) {
    let p = plan(desired, &q.actual().unwrap());
    let source = ManifestSource {
        path: "test.toml".to_string(),
        sha256: "0".repeat(64),
        warnings: Vec::new(),
    };
    q.apply(&p, &[], &source).unwrap();
}

pub fn worker(name: &str) -> WorkerName {
    WorkerName::parse(name).unwrap()
}

pub fn cpu() -> Capability {
    Capability {
        hostname: "cpu".to_string(),
        cores: 4,
        ram_total_mib: 16 * 1024,
        ram_allocatable_mib: 16 * 1024,
        max_concurrent: 1,
        ..Capability::default()
    }
}
