//! What is free on this host: which GPUs (and how much of their VRAM) and how much RAM the
//! running jobs hold. A claim advertises only what is free, so the server never hands the
//! agent more than it can hold.
//!
//! A job holds its slot (and its GPU and RAM) while its trainer runs. Once the trainer has
//! exited the job is *finishing* (packing, uploading, reporting): it holds nothing, so the
//! slot can start the next trainer while the previous output is still on its way. At most
//! `max_concurrent` trainers run, and at most `2 * max_concurrent` jobs are on hand in all.

use std::collections::{BTreeMap, BTreeSet};

use cis490_api::node::MIB_PER_GIB;
use cis490_api::{Capability, JobId, JobSpec};

use crate::config::GpuSharing;

/// What one running job holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// NVML indexes of the GPUs given to the job (its CUDA_VISIBLE_DEVICES): one for a
    /// CUDA job, `gpus` whole ones for a job that asks for a number.
    pub gpus: Vec<u32>,
    /// VRAM the job declared on that GPU; 0 with a GPU means the GPU is the job's alone.
    pub vram_mib: u64,
    pub ram_mib: u64,
    /// Cores the job asked for (`cores`), held while its trainer runs.
    pub cores: u32,
}

/// Why a claimed job does not fit in what is free (the server raced us or matched wrongly).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlotError {
    /// All job slots (`--max-concurrent`) are in use.
    #[error("all {0} job slots are in use")]
    Full(u32),
    /// The job needs a GPU (or VRAM) that no free GPU offers.
    #[error("no free GPU with {0} MiB of VRAM")]
    NoGpu(u64),
    /// The job needs more RAM than is unreserved.
    #[error("needs {need} MiB RAM, {free} MiB unreserved")]
    NoRam { need: u64, free: u64 },
    /// The job asks for more cores than running jobs leave.
    #[error("needs {need} cores, {free} free")]
    NoCores { need: u32, free: u32 },
    /// The job asks for more whole GPUs than are free.
    #[error("needs {need} whole GPUs, {free} free")]
    NoGpus { need: u32, free: u32 },
}

/// The host's advertised capability and what running jobs hold of it.
#[derive(Debug, Clone)]
pub struct Slots {
    base: Capability,
    sharing: GpuSharing,
    running: BTreeMap<JobId, Allocation>,
    /// Jobs whose trainer has exited and whose output is being packed, uploaded or reported.
    finishing: BTreeSet<JobId>,
}

fn gib_to_mib(gib: f64) -> u64 {
    (gib * MIB_PER_GIB).ceil().max(0.0) as u64
}

impl Slots {
    /// `base` is the advertised capability (after `--advertise`).
    pub fn new(base: Capability, sharing: GpuSharing) -> Self {
        Self {
            base,
            sharing,
            running: BTreeMap::new(),
            finishing: BTreeSet::new(),
        }
    }

    pub fn base(&self) -> &Capability {
        &self.base
    }

    /// Jobs whose trainer runs.
    pub fn running(&self) -> impl Iterator<Item = &JobId> {
        self.running.keys()
    }

    /// How many trainers run.
    pub fn running_count(&self) -> usize {
        self.running.len()
    }

    /// How many jobs are past their trainer and still packing, uploading or reporting.
    pub fn finishing_count(&self) -> usize {
        self.finishing.len()
    }

    /// True while another job may start: a trainer slot is free, and the jobs still
    /// finishing leave room (all jobs on hand stay under twice the slots, so uploads that
    /// fall behind hold the agent back instead of piling up).
    pub fn has_room(&self) -> bool {
        let slots = self.base.max_concurrent.max(1) as usize;
        self.running.len() < slots && self.running.len() + self.finishing.len() < 2 * slots
    }

    fn ram_reserved(&self) -> u64 {
        self.running.values().map(|a| a.ram_mib).sum()
    }

    /// Cores not held by running jobs.
    fn cores_free(&self) -> u32 {
        let held: u32 = self.running.values().map(|a| a.cores).sum();
        self.base
            .cores_allocatable
            .unwrap_or(self.base.cores)
            .saturating_sub(held)
    }

    fn ram_free(&self) -> u64 {
        self.base
            .ram_allocatable_mib
            .saturating_sub(self.ram_reserved())
    }

    /// VRAM still allocatable on GPU `index`: None when a job holds it whole.
    fn gpu_free(&self, index: u32, total: u64) -> Option<u64> {
        let mut used = 0u64;
        for a in self.running.values().filter(|a| a.gpus.contains(&index)) {
            if a.vram_mib == 0 || self.sharing == GpuSharing::Exclusive {
                return None;
            }
            used += a.vram_mib;
        }
        Some(total.saturating_sub(used))
    }

    /// The full capability with the jobs on hand (running or finishing) listed: what node
    /// status reports.
    pub fn node_status(&self) -> Capability {
        let mut cap = self.base.clone();
        let mut jobs: Vec<JobId> = self.running.keys().cloned().collect();
        jobs.extend(self.finishing.iter().cloned());
        jobs.sort();
        cap.running_jobs = jobs;
        cap
    }

    /// What a claim advertises now: RAM not reserved, and only GPUs with room, each with
    /// its unallocated VRAM and what running jobs declared on it (so the server gives a job
    /// that needs a GPU to itself only a GPU no job holds part of, as [`Slots::allocate`]
    /// requires).
    pub fn free_capability(&self) -> Capability {
        let mut cap = self.node_status();
        cap.ram_allocatable_mib = self.ram_free();
        cap.cores_allocatable = Some(self.cores_free());
        cap.gpus = self
            .base
            .gpus
            .iter()
            .filter_map(|g| {
                self.gpu_free(g.index, g.vram_allocatable_mib).map(|free| {
                    let mut g = g.clone();
                    g.vram_allocated_mib = g.vram_allocatable_mib.saturating_sub(free);
                    g.vram_allocatable_mib = free;
                    g
                })
            })
            .collect();
        cap
    }

    /// Reserves what `spec` needs: RAM, and a GPU when it requires CUDA or VRAM (or prefers
    /// CUDA and one is free). A GPU goes to the job whole unless sharing by VRAM and the
    /// job declared its VRAM; then the tightest GPU that still fits it.
    pub fn allocate(&mut self, spec: &JobSpec) -> Result<Allocation, SlotError> {
        if !self.has_room() {
            return Err(SlotError::Full(self.base.max_concurrent));
        }
        let c = &spec.constraints;
        let ram_mib = gib_to_mib(c.min_ram_gib);
        let free = self.ram_free();
        if ram_mib > free {
            return Err(SlotError::NoRam {
                need: ram_mib,
                free,
            });
        }
        let free_cores = self.cores_free();
        if c.cores > free_cores {
            return Err(SlotError::NoCores {
                need: c.cores,
                free: free_cores,
            });
        }
        if c.gpus > 0 {
            return self.allocate_whole_gpus(spec, ram_mib);
        }
        let vram_mib = gib_to_mib(c.min_vram_gib);
        let needs_gpu = c.require_cuda || vram_mib > 0;
        let wants_gpu = needs_gpu || (c.prefer_cuda && self.base.cuda);
        let shares = self.sharing == GpuSharing::Vram && vram_mib > 0;
        let mut gpu = None;
        if wants_gpu && self.base.cuda {
            let candidates = self.base.gpus.iter().filter_map(|g| {
                let free = self.gpu_free(g.index, g.vram_allocatable_mib)?;
                let untouched = free == g.vram_allocatable_mib;
                let fits = free >= vram_mib && (shares || untouched);
                fits.then_some((free, g.index))
            });
            gpu = if shares {
                candidates.min().map(|(_, i)| i)
            } else {
                candidates.map(|(_, i)| i).min()
            };
        }
        if needs_gpu && gpu.is_none() {
            return Err(SlotError::NoGpu(vram_mib));
        }
        let allocation = Allocation {
            gpus: gpu.into_iter().collect(),
            vram_mib: if shares && gpu.is_some() { vram_mib } else { 0 },
            ram_mib,
            cores: c.cores,
        };
        self.running.insert(spec.id.clone(), allocation.clone());
        Ok(allocation)
    }

    /// A job that asks for `gpus = N`: the N lowest-numbered GPUs no job holds any part of,
    /// each the job's alone.
    fn allocate_whole_gpus(
        &mut self,
        spec: &JobSpec,
        ram_mib: u64,
    ) -> Result<Allocation, SlotError> {
        let c = &spec.constraints;
        let whole: Vec<u32> = if self.base.cuda {
            self.base
                .gpus
                .iter()
                .filter(|g| {
                    self.gpu_free(g.index, g.vram_allocatable_mib) == Some(g.vram_allocatable_mib)
                })
                .map(|g| g.index)
                .collect()
        } else {
            Vec::new()
        };
        let need = usize::try_from(c.gpus).unwrap_or(usize::MAX);
        if whole.len() < need {
            return Err(SlotError::NoGpus {
                need: c.gpus,
                free: u32::try_from(whole.len()).unwrap_or(u32::MAX),
            });
        }
        let allocation = Allocation {
            gpus: whole.into_iter().take(need).collect(),
            vram_mib: 0,
            ram_mib,
            cores: c.cores,
        };
        self.running.insert(spec.id.clone(), allocation.clone());
        Ok(allocation)
    }

    /// The job's trainer has exited (or never started): its slot, GPU and RAM are free
    /// for the next job while it finishes. True when this freed a slot.
    pub fn trainer_done(&mut self, id: &JobId) -> bool {
        if self.running.remove(id).is_some() {
            self.finishing.insert(id.clone());
            true
        } else {
            false
        }
    }

    /// Forgets a job that has ended, whatever stage it was in. True when it still held a
    /// trainer slot.
    pub fn release(&mut self, id: &JobId) -> bool {
        self.finishing.remove(id);
        self.running.remove(id).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cis490_api::{Constraints, Gpu};

    fn cap(gpus: &[u64], ram_gib: u64, max: u32) -> Capability {
        Capability {
            hostname: "h".into(),
            cores: 8,
            ram_total_mib: ram_gib * 1024,
            ram_allocatable_mib: ram_gib * 1024,
            cuda: !gpus.is_empty(),
            gpus: gpus
                .iter()
                .enumerate()
                .map(|(i, gib)| Gpu {
                    index: i as u32,
                    name: "g".into(),
                    uuid: None,
                    vram_total_mib: gib * 1024,
                    vram_free_mib: gib * 1024,
                    vram_allocatable_mib: gib * 1024,
                    vram_allocated_mib: 0,
                })
                .collect(),
            max_concurrent: max,
            ..Capability::default()
        }
    }

    fn job(n: u8, c: Constraints) -> JobSpec {
        JobSpec {
            id: JobId::parse(&format!("{:064x}", n)).unwrap(),
            model: "m".into(),
            mode: "x".into(),
            hyper: Default::default(),
            split_recipe: None,
            train_hosts: vec![],
            seed: 0,
            constraints: c,
            priority: 0,
            max_attempts: 3,
            stale_after_s: 90,
            retry: Default::default(),
            command: vec!["true".into()],
            labels: Default::default(),
            timeout_s: None,
            env: Default::default(),
            manifest_order: 0,
        }
    }

    fn cuda(vram: f64, ram: f64) -> Constraints {
        Constraints {
            require_cuda: true,
            min_vram_gib: vram,
            min_ram_gib: ram,
            ..Constraints::default()
        }
    }

    #[test]
    fn cores_are_held_while_the_trainer_runs_and_advertised_as_free() {
        let mut s = Slots::new(cap(&[], 64, 3), GpuSharing::Exclusive);
        let cores = |n| Constraints {
            cores: n,
            ..Constraints::default()
        };
        assert_eq!(s.free_capability().cores_allocatable, Some(8));
        s.allocate(&job(1, cores(6))).unwrap();
        assert_eq!(s.free_capability().cores_allocatable, Some(2));
        assert_eq!(
            s.allocate(&job(2, cores(3))),
            Err(SlotError::NoCores { need: 3, free: 2 })
        );
        // A job without `cores` takes none.
        s.allocate(&job(3, Constraints::default())).unwrap();
        s.trainer_done(&job(1, cores(6)).id);
        assert_eq!(s.free_capability().cores_allocatable, Some(8));
        s.allocate(&job(2, cores(3))).unwrap();
    }

    #[test]
    fn a_gpus_job_gets_that_many_whole_gpus() {
        let mut s = Slots::new(cap(&[24, 24, 24], 64, 3), GpuSharing::Vram);
        let gpus = |n| Constraints {
            gpus: n,
            ..Constraints::default()
        };
        let shared = s.allocate(&job(1, cuda(4.0, 0.0))).unwrap();
        assert_eq!(shared.gpus, [0]);
        assert_eq!(
            s.allocate(&job(2, gpus(3))),
            Err(SlotError::NoGpus { need: 3, free: 2 })
        );
        assert_eq!(s.allocate(&job(2, gpus(2))).unwrap().gpus, [1, 2]);
        assert!(s.allocate(&job(3, cuda(0.0, 0.0))).is_err());
        let mut cpu = Slots::new(cap(&[], 64, 1), GpuSharing::Exclusive);
        assert!(matches!(
            cpu.allocate(&job(4, gpus(1))),
            Err(SlotError::NoGpus { need: 1, free: 0 })
        ));
    }

    #[test]
    fn exclusive_gives_each_cuda_job_its_own_gpu() {
        let mut s = Slots::new(cap(&[24, 24], 64, 3), GpuSharing::Exclusive);
        assert_eq!(
            s.allocate(&job(1, cuda(0.0, 0.0)))
                .unwrap()
                .gpus
                .first()
                .copied(),
            Some(0)
        );
        assert_eq!(s.free_capability().gpus.len(), 1);
        assert_eq!(
            s.allocate(&job(2, cuda(8.0, 0.0)))
                .unwrap()
                .gpus
                .first()
                .copied(),
            Some(1)
        );
        let free = s.free_capability();
        assert!(free.gpus.is_empty());
        assert_eq!(
            s.allocate(&job(3, cuda(0.0, 0.0))),
            Err(SlotError::NoGpu(0))
        );
        // A CPU job still fits.
        assert_eq!(
            s.allocate(&job(4, Constraints::default()))
                .unwrap()
                .gpus
                .first()
                .copied(),
            None
        );
        s.release(&job(1, Constraints::default()).id);
        assert_eq!(s.free_capability().gpus[0].index, 0);
    }

    #[test]
    fn vram_sharing_packs_declared_jobs_while_they_fit() {
        let mut s = Slots::new(cap(&[24], 64, 4), GpuSharing::Vram);
        assert_eq!(s.free_capability().gpus[0].vram_allocated_mib, 0);
        assert_eq!(
            s.allocate(&job(1, cuda(10.0, 0.0)))
                .unwrap()
                .gpus
                .first()
                .copied(),
            Some(0)
        );
        assert_eq!(s.free_capability().gpus[0].vram_allocatable_mib, 14 * 1024);
        // Told to the server, so it hands out no job that needs the GPU whole.
        assert_eq!(s.free_capability().gpus[0].vram_allocated_mib, 10 * 1024);
        assert_eq!(
            s.allocate(&job(2, cuda(12.0, 0.0)))
                .unwrap()
                .gpus
                .first()
                .copied(),
            Some(0)
        );
        assert_eq!(s.free_capability().gpus[0].vram_allocatable_mib, 2 * 1024);
        assert_eq!(
            s.allocate(&job(3, cuda(4.0, 0.0))),
            Err(SlotError::NoGpu(4 * 1024))
        );
        // A job without declared VRAM needs the GPU whole.
        assert_eq!(
            s.allocate(&job(5, cuda(0.0, 0.0))),
            Err(SlotError::NoGpu(0))
        );
        s.release(&job(1, Constraints::default()).id);
        assert_eq!(s.free_capability().gpus[0].vram_allocatable_mib, 12 * 1024);
    }

    #[test]
    fn vram_sharing_picks_the_tightest_fitting_gpu_and_whole_gpu_jobs_block_sharing() {
        let mut s = Slots::new(cap(&[24, 12], 64, 4), GpuSharing::Vram);
        assert_eq!(
            s.allocate(&job(1, cuda(6.0, 0.0)))
                .unwrap()
                .gpus
                .first()
                .copied(),
            Some(1)
        );
        assert_eq!(
            s.allocate(&job(2, cuda(0.0, 0.0)))
                .unwrap()
                .gpus
                .first()
                .copied(),
            Some(0)
        );
        assert_eq!(s.free_capability().gpus.len(), 1);
        assert_eq!(
            s.allocate(&job(3, cuda(7.0, 0.0))),
            Err(SlotError::NoGpu(7 * 1024))
        );
    }

    #[test]
    fn ram_is_reserved_by_running_jobs() {
        let mut s = Slots::new(cap(&[], 16, 3), GpuSharing::Exclusive);
        let ram = |g| Constraints {
            min_ram_gib: g,
            ..Constraints::default()
        };
        s.allocate(&job(1, ram(10.0))).unwrap();
        assert_eq!(s.free_capability().ram_allocatable_mib, 6 * 1024);
        assert_eq!(
            s.allocate(&job(2, ram(7.0))),
            Err(SlotError::NoRam {
                need: 7 * 1024,
                free: 6 * 1024
            })
        );
        s.allocate(&job(3, ram(6.0))).unwrap();
        assert_eq!(s.free_capability().ram_allocatable_mib, 0);
        assert_eq!(s.node_status().running_jobs.len(), 2);
        assert_eq!(s.node_status().ram_allocatable_mib, 16 * 1024);
    }

    #[test]
    fn max_concurrent_bounds_the_slots_and_cpu_hosts_refuse_cuda_jobs() {
        let mut s = Slots::new(cap(&[], 16, 1), GpuSharing::Exclusive);
        assert!(s.has_room());
        assert_eq!(
            s.allocate(&job(1, cuda(0.0, 0.0))),
            Err(SlotError::NoGpu(0))
        );
        s.allocate(&job(2, Constraints::default())).unwrap();
        assert!(!s.has_room());
        assert_eq!(
            s.allocate(&job(3, Constraints::default())),
            Err(SlotError::Full(1))
        );
    }

    #[test]
    fn a_finished_trainer_frees_its_slot_and_gpu_while_its_job_finishes() {
        let mut s = Slots::new(cap(&[8], 16, 1), GpuSharing::Exclusive);
        let first = job(1, cuda(0.0, 4.0));
        s.allocate(&first).unwrap();
        assert!(!s.has_room());
        assert!(s.free_capability().gpus.is_empty());
        assert!(s.trainer_done(&first.id));
        assert!(
            !s.trainer_done(&first.id),
            "only a running job frees a slot"
        );
        assert!(s.has_room());
        let free = s.free_capability();
        assert_eq!(free.gpus.len(), 1);
        assert_eq!(free.ram_allocatable_mib, 16 * 1024);
        // Still on hand: listed in node status until it is released.
        assert_eq!(s.node_status().running_jobs, vec![first.id.clone()]);
        assert_eq!(s.finishing_count(), 1);
        let second = job(2, cuda(0.0, 0.0));
        assert_eq!(s.allocate(&second).unwrap().gpus.first().copied(), Some(0));
        assert!(!s.has_room());
        s.release(&first.id);
        assert_eq!(s.node_status().running_jobs, vec![second.id.clone()]);
    }

    #[test]
    fn finishing_jobs_are_bounded_to_twice_the_slots() {
        let mut s = Slots::new(cap(&[], 16, 2), GpuSharing::Exclusive);
        for n in 1..=3 {
            s.allocate(&job(n, Constraints::default())).unwrap();
            s.trainer_done(&job(n, Constraints::default()).id);
        }
        assert_eq!((s.running_count(), s.finishing_count()), (0, 3));
        // One more trainer makes four jobs on hand: no fifth until one of them ends.
        s.allocate(&job(4, Constraints::default())).unwrap();
        assert!(!s.has_room());
        assert_eq!(
            s.allocate(&job(5, Constraints::default())),
            Err(SlotError::Full(2))
        );
        s.release(&job(1, Constraints::default()).id);
        assert!(s.has_room());
    }

    #[test]
    fn prefer_cuda_takes_a_free_gpu_but_runs_without_one() {
        let mut s = Slots::new(cap(&[8], 16, 2), GpuSharing::Exclusive);
        let prefer = Constraints {
            prefer_cuda: true,
            ..Constraints::default()
        };
        assert_eq!(
            s.allocate(&job(1, prefer.clone()))
                .unwrap()
                .gpus
                .first()
                .copied(),
            Some(0)
        );
        assert_eq!(
            s.allocate(&job(2, prefer)).unwrap().gpus.first().copied(),
            None
        );
    }
}
