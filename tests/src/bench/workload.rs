//! The synthetic fleet: manifests with mixed constraints and simulated agents with mixed
//! capabilities, shaped so that every job has at least one agent that may run it.

use std::fmt::Write as _;

use cis490_api::{Capability, Gpu, WorkerName};

/// Simulated agents are named `sim-000`, `sim-001`, ...
pub fn agent_name(k: usize) -> String {
    format!("sim-{k:03}")
}

/// The agents that `allowed_hosts` jobs are pinned to (always among the simulated agents).
pub const PINNED_AGENTS: usize = 8;

/// The capability of simulated agent `k`: a quarter each of 24 GiB CUDA hosts, 8 GiB CUDA
/// hosts, 32 GiB CPU hosts and 8 GiB CPU hosts.
pub fn capability(k: usize) -> Capability {
    let (cuda_vram_gib, ram_gib) = match k % 4 {
        0 => (Some(24), 64),
        1 => (Some(8), 32),
        2 => (None, 32),
        _ => (None, 8),
    };
    let gpus = cuda_vram_gib
        .map(|v: u64| {
            vec![Gpu {
                index: 0,
                name: "Simulated GPU".to_string(),
                uuid: None,
                vram_total_mib: v * 1024,
                vram_free_mib: v * 1024,
                vram_allocatable_mib: v * 1024,
                vram_allocated_mib: 0,
            }]
        })
        .unwrap_or_default();
    Capability {
        hostname: agent_name(k),
        os: "linux".to_string(),
        arch: "x86_64".to_string(),
        cores: 8,
        ram_total_mib: ram_gib * 1024,
        ram_available_mib: ram_gib * 1024,
        ram_allocatable_mib: ram_gib * 1024,
        cuda: !gpus.is_empty(),
        gpus,
        max_concurrent: 1,
        ..Capability::default()
    }
}

/// A worker name for agent `k`.
pub fn worker(k: usize) -> anyhow::Result<WorkerName> {
    WorkerName::parse(&agent_name(k)).map_err(|e| anyhow::anyhow!("worker name: {e}"))
}

/// A manifest of `jobs` jobs with mixed constraints. Each `[[jobs]]` entry expands a
/// `matrix` of `seeds_per_entry` seeds (1: one entry per job, the most text to parse).
/// Of every ten entries: five plain, one prefer_cuda, one require_cuda with 8 GiB VRAM,
/// one needing 16 GiB RAM, one at a higher priority, one pinned by allowed_hosts to the
/// first [`PINNED_AGENTS`] agents. `command` is every job's trainer argv. `priority_bump`
/// raises the priority of the last job (a one-job edit); the last entry is always a
/// single job.
pub fn manifest_text(
    jobs: usize,
    seeds_per_entry: usize,
    command: &[&str],
    priority_bump: i32,
) -> String {
    let seeds_per_entry = seeds_per_entry.max(1);
    let mut text = String::with_capacity(jobs * 90 + 1024);
    let argv: Vec<String> = command.iter().map(|a| format!("{a:?}")).collect();
    let _ = write!(
        text,
        "version = 1\n\n[defaults]\nmax_attempts = 3\nstale_after_s = 900\ncommand = [{}]\n\n\
         [models.gbt]\nhyper = {{ depth = \"int\" }}\n\n[models.mlp]\nhyper = {{ hidden = \"int\" }}\n\n",
        argv.join(", ")
    );
    let pinned: Vec<String> = (0..PINNED_AGENTS)
        .map(|k| format!("{:?}", agent_name(k)))
        .collect();
    let pinned = pinned.join(", ");
    let mut made = 0usize;
    let mut entry = 0usize;
    while made < jobs {
        let left = jobs - made;
        // The last job stands alone so that a one-job edit touches exactly one job.
        let n = if left <= 1 {
            1
        } else {
            seeds_per_entry.min(left - 1)
        };
        let kind = entry % 10;
        let model = if kind == 2 { "mlp" } else { "gbt" };
        let _ = write!(
            text,
            "[[jobs]]\nmodel = \"{model}\"\nmode = \"m{}\"\n",
            entry % 7
        );
        if model == "mlp" {
            text.push_str("hyper = { hidden = 16 }\n");
        } else {
            let _ = writeln!(text, "hyper = {{ depth = {} }}", entry % 5 + 2);
        }
        match kind {
            1 => text.push_str("prefer_cuda = true\n"),
            2 => text.push_str("require_cuda = true\nmin_vram_gib = 8\n"),
            3 => text.push_str("min_ram_gib = 16\n"),
            4 => text.push_str("priority = 5\n"),
            5 => {
                let _ = writeln!(text, "allowed_hosts = [{pinned}]");
            }
            _ => {}
        }
        if left == 1 && priority_bump != 0 {
            let _ = writeln!(text, "priority = {}", 7 + priority_bump);
        }
        // Seeds are unique across the file, so every job has its own identity.
        if n == 1 {
            let _ = writeln!(text, "seed = {made}");
        } else {
            let seeds: Vec<String> = (made..made + n).map(|s| s.to_string()).collect();
            let _ = writeln!(text, "matrix = {{ seed = [{}] }}", seeds.join(", "));
        }
        text.push('\n');
        made += n;
        entry += 1;
    }
    text
}

/// A manifest of `jobs` plain jobs (no constraints) running `command`, plus one parked
/// job no agent may run (`allowed_hosts = ["nobody"]`), so that the manifest is never
/// empty and a real agent facing it stays idle.
pub fn plain_manifest_text(jobs: usize, command: &[&str]) -> String {
    let argv: Vec<String> = command.iter().map(|a| format!("{a:?}")).collect();
    let mut text = format!(
        "version = 1\n\n[defaults]\ncommand = [{}]\n\n\
         [[jobs]]\nmodel = \"parked\"\nmode = \"idle\"\nseed = 0\nallowed_hosts = [\"nobody\"]\n\n",
        argv.join(", ")
    );
    if jobs > 0 {
        let seeds: Vec<String> = (0..jobs).map(|s| s.to_string()).collect();
        let _ = write!(
            text,
            "[[jobs]]\nmodel = \"trivial\"\nmode = \"bench\"\nmatrix = {{ seed = [{}] }}\n",
            seeds.join(", ")
        );
    }
    text
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::HashSet;
    use std::path::Path;

    use super::*;

    #[test]
    fn manifest_has_the_asked_number_of_distinct_jobs() {
        for (jobs, per) in [(1, 1), (37, 1), (1000, 10), (999, 7)] {
            let text = manifest_text(jobs, per, &["true"], 0);
            let loaded =
                cis490_reconciler::manifest::parse_manifest(&text, Path::new("bench.toml"))
                    .unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(loaded.manifest.jobs.len(), jobs);
            let ids: HashSet<_> = loaded.manifest.jobs.iter().map(|j| j.id.clone()).collect();
            assert_eq!(ids.len(), jobs);
        }
    }

    #[test]
    fn plain_manifest_has_the_parked_job_and_the_asked_jobs() {
        for jobs in [0, 1, 1000] {
            let text = plain_manifest_text(jobs, &["sh", "-c", "true"]);
            let loaded =
                cis490_reconciler::manifest::parse_manifest(&text, Path::new("plain.toml"))
                    .unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(loaded.manifest.jobs.len(), jobs + 1);
        }
    }

    #[test]
    fn a_priority_bump_changes_exactly_one_job() {
        let a = cis490_reconciler::manifest::parse_manifest(
            &manifest_text(500, 10, &["true"], 0),
            Path::new("a.toml"),
        )
        .unwrap();
        let b = cis490_reconciler::manifest::parse_manifest(
            &manifest_text(500, 10, &["true"], 1),
            Path::new("a.toml"),
        )
        .unwrap();
        let changed = a
            .manifest
            .jobs
            .iter()
            .zip(&b.manifest.jobs)
            .filter(|(x, y)| x != y)
            .count();
        assert_eq!(changed, 1);
    }

    #[test]
    fn every_kind_of_job_has_a_capable_agent() {
        let caps: Vec<Capability> = (0..4).map(capability).collect();
        assert!(caps
            .iter()
            .any(|c| c.cuda && c.max_gpu_allocatable_gib() >= 8.0));
        assert!(caps.iter().any(|c| c.ram_allocatable_gib() >= 16.0));
        assert!(caps.iter().any(|c| !c.cuda));
    }
}
