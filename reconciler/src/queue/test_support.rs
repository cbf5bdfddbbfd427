//! Builders shared by the planner's and the queue's tests.

use std::collections::BTreeMap;
use std::sync::Arc;

use cis490_api::{Capability, Constraints, Gpu, JobId, JobSpec, RetryPolicy, WorkerName};
use sha2::{Digest, Sha256};

use super::{ManualClock, Queue, QueueConfig};

/// A clock the test moves by hand.
pub(crate) fn manual_clock() -> Arc<ManualClock> {
    Arc::default()
}

/// A queue in memory on `clock`.
pub(crate) fn queue_on(clock: &Arc<ManualClock>, config: QueueConfig) -> Queue {
    Queue::open_in_memory_with_clock(config, clock.clone()).expect("an in-memory queue opens")
}

/// A job ID made by hashing `seed` (tests only need IDs to be unique and valid).
pub(crate) fn id_of(seed: &str) -> JobId {
    let digest = Sha256::digest(seed.as_bytes());
    JobId::parse(&hex::encode(digest)).expect("sha256 hex is a valid job ID")
}

/// A plain job: model gbt, no constraints, 3 attempts, 90 s lease.
pub(crate) fn spec(name: &str) -> JobSpec {
    JobSpec {
        id: id_of(name),
        model: "gbt".to_string(),
        mode: "realistic".to_string(),
        hyper: BTreeMap::new(),
        split_recipe: None,
        train_hosts: Vec::new(),
        seed: 0,
        constraints: Constraints::default(),
        priority: 0,
        max_attempts: 3,
        stale_after_s: 90,
        retry: RetryPolicy::default(),
        command: vec!["train".to_string()],
        labels: BTreeMap::new(),
        timeout_s: None,
        env: BTreeMap::new(),
        manifest_order: 0,
    }
}

/// `n` plain jobs named `{prefix}{i}` with manifest_order i.
pub(crate) fn specs(prefix: &str, n: usize) -> Vec<JobSpec> {
    (0..n)
        .map(|i| JobSpec {
            manifest_order: i as u64,
            ..spec(&format!("{prefix}{i}"))
        })
        .collect()
}

pub(crate) fn worker(name: &str) -> WorkerName {
    WorkerName::parse(name).expect("valid worker name")
}

/// A CPU-only host with `ram_gib` GiB allocatable.
pub(crate) fn cpu(ram_gib: u64) -> Capability {
    Capability {
        hostname: "cpu".to_string(),
        cores: 8,
        ram_total_mib: ram_gib * 1024,
        ram_available_mib: ram_gib * 1024,
        ram_allocatable_mib: ram_gib * 1024,
        max_concurrent: 1,
        ..Capability::default()
    }
}

/// A CUDA host with one GPU of `vram_gib` GiB and 64 GiB RAM.
pub(crate) fn gpu(vram_gib: u64) -> Capability {
    Capability {
        hostname: "gpu".to_string(),
        cuda: true,
        gpus: vec![Gpu {
            index: 0,
            name: "RTX".to_string(),
            uuid: None,
            vram_total_mib: vram_gib * 1024,
            vram_free_mib: vram_gib * 1024,
            vram_allocatable_mib: vram_gib * 1024,
            vram_allocated_mib: 0,
        }],
        ..cpu(64)
    }
}
