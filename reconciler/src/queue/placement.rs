//! What a job asks of a worker beyond CUDA, VRAM, RAM and host lists: worker labels
//! (`node_selector`), and cores and whole GPUs held while it runs. Stored beside the other
//! claim columns as one JSON object (`jobs.placement`, schema migration 11) so a claim
//! decodes it only for the jobs that ask for any of it.

use std::collections::BTreeMap;

use cis490_api::{Capability, Constraints};
use serde::{Deserialize, Serialize};

use super::matching::Reason;
use super::QueueError;
use crate::policy::HostPolicy;

/// The `placement` column: the placement fields of a job's constraints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Placement {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cores: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gpus: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// What a job without placement needs stores as.
pub(crate) const NO_PLACEMENT: &str = "{}";

impl Placement {
    pub(crate) fn of(c: &Constraints) -> Placement {
        Placement {
            node_selector: c.node_selector.clone(),
            cores: c.cores,
            gpus: c.gpus,
        }
    }

    pub(crate) fn to_column(&self) -> Result<String, QueueError> {
        serde_json::to_string(self).map_err(|e| QueueError::corrupt(e.to_string()))
    }

    /// Decodes the column of job `id` (`{}` without parsing).
    pub(crate) fn from_column(text: &str, id: &str) -> Result<Placement, QueueError> {
        if text == NO_PLACEMENT {
            return Ok(Placement::default());
        }
        serde_json::from_str(text)
            .map_err(|e| QueueError::corrupt(format!("placement of {id}: {e}")))
    }

    /// Puts these fields into constraints read from the other columns.
    pub(crate) fn apply(self, c: &mut Constraints) {
        c.node_selector = self.node_selector;
        c.cores = self.cores;
        c.gpus = self.gpus;
    }
}

/// A worker's labels: its agent's (`--label`, config `[labels]`), with its `[[hosts]]`
/// entry's on top: the manifest is the operator's one place to say what a host is, so
/// where both name a key the manifest's value holds.
pub(crate) fn worker_labels(
    cap: &Capability,
    policy: Option<&HostPolicy>,
) -> BTreeMap<String, String> {
    let mut labels = cap.labels.clone();
    if let Some(p) = policy {
        labels.extend(p.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    labels
}

/// Cores the worker can still hand out: what its agent reported free, or all its cores
/// from an agent that does not report it.
pub(crate) fn free_cores(cap: &Capability) -> u32 {
    cap.cores_allocatable.unwrap_or(cap.cores)
}

/// GPUs the worker can hand out whole (no job holds any part of them).
pub(crate) fn free_gpus(cap: &Capability) -> u32 {
    let free = cap
        .gpus
        .iter()
        .filter(|g| g.vram_allocated_mib == 0)
        .count();
    u32::try_from(free).unwrap_or(u32::MAX)
}

/// Why a worker with `cap` and `policy` does not meet `c`'s placement: a label it lacks or
/// has with another value (lasting), too few cores or GPUs (lasting when it has too few in
/// all, passing when the rest are held by running jobs).
pub(crate) fn placement_reasons(
    c: &Constraints,
    cap: &Capability,
    policy: Option<&HostPolicy>,
) -> Vec<Reason> {
    let mut reasons = Vec::new();
    if !c.node_selector.is_empty() {
        let labels = worker_labels(cap, policy);
        for (key, want) in &c.node_selector {
            match labels.get(key) {
                None => reasons.push(Reason::lasting(format!(
                    "no label {key} (node_selector wants {key}={want})"
                ))),
                Some(have) if have != want => reasons.push(Reason::lasting(format!(
                    "label {key}={have}, node_selector wants {key}={want}"
                ))),
                Some(_) => {}
            }
        }
    }
    if c.cores > 0 {
        let free = free_cores(cap);
        if free < c.cores {
            let text = format!("needs {} cores, {free} free", c.cores);
            reasons.push(if cap.cores < c.cores {
                Reason::lasting(format!("{text} (it has {} in all)", cap.cores))
            } else {
                Reason::passing(text)
            });
        }
    }
    if c.gpus > 0 {
        let free = free_gpus(cap);
        if free < c.gpus {
            let text = format!("needs {} GPUs, {free} free", c.gpus);
            reasons.push(if cap.cuda {
                Reason::passing(text)
            } else {
                Reason::lasting(format!("{text} (no CUDA)"))
            });
        }
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;
    use cis490_api::node::Gpu;

    fn cap(labels: &[(&str, &str)]) -> Capability {
        Capability {
            hostname: "h".into(),
            cores: 8,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Capability::default()
        }
    }

    fn selector(pairs: &[(&str, &str)]) -> Constraints {
        Constraints {
            node_selector: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Constraints::default()
        }
    }

    fn texts(reasons: Vec<Reason>) -> Vec<String> {
        reasons.into_iter().map(|r| r.text).collect()
    }

    #[test]
    fn node_selector_needs_every_pair() {
        let c = selector(&[("gpu", "rtx-4090"), ("room", "a")]);
        assert!(
            placement_reasons(&c, &cap(&[("gpu", "rtx-4090"), ("room", "a")]), None).is_empty()
        );
        assert_eq!(
            texts(placement_reasons(&c, &cap(&[("gpu", "rtx-4090")]), None)),
            ["no label room (node_selector wants room=a)"]
        );
        let wrong = placement_reasons(&c, &cap(&[("gpu", "a100"), ("room", "a")]), None);
        assert!(wrong[0].lasting);
        assert_eq!(
            wrong[0].text,
            "label gpu=a100, node_selector wants gpu=rtx-4090"
        );
    }

    #[test]
    fn the_manifests_host_labels_win_over_the_agents() {
        let policy = HostPolicy {
            name: "h".into(),
            labels: [("gpu".to_string(), "rtx-4090".to_string())].into(),
            ..HostPolicy::default()
        };
        let c = selector(&[("gpu", "rtx-4090"), ("room", "a")]);
        let agent = cap(&[("gpu", "gtx-1080"), ("room", "a")]);
        assert!(placement_reasons(&c, &agent, Some(&policy)).is_empty());
        let merged = worker_labels(&agent, Some(&policy));
        assert_eq!(merged["gpu"], "rtx-4090");
        assert_eq!(merged["room"], "a");
    }

    #[test]
    fn cores_count_against_what_is_free() {
        let c = Constraints {
            cores: 4,
            ..Constraints::default()
        };
        let mut busy = cap(&[]);
        busy.cores_allocatable = Some(2);
        let reasons = placement_reasons(&c, &busy, None);
        assert_eq!(texts(reasons.clone()), ["needs 4 cores, 2 free"]);
        assert!(!reasons[0].lasting);
        busy.cores_allocatable = Some(4);
        assert!(placement_reasons(&c, &busy, None).is_empty());
        let small = Capability {
            cores: 2,
            ..cap(&[])
        };
        let reasons = placement_reasons(&c, &small, None);
        assert!(reasons[0].lasting);
        // An agent that does not report free cores offers all of them.
        assert!(placement_reasons(&c, &cap(&[]), None).is_empty());
    }

    #[test]
    fn gpus_count_whole_free_gpus() {
        let c = Constraints {
            gpus: 2,
            ..Constraints::default()
        };
        let gpu = |index, held| Gpu {
            index,
            vram_total_mib: 24_576,
            vram_allocatable_mib: 24_576 - held,
            vram_allocated_mib: held,
            ..Gpu::default()
        };
        let mut host = Capability {
            cuda: true,
            gpus: vec![gpu(0, 0), gpu(1, 4096)],
            ..cap(&[])
        };
        assert_eq!(
            texts(placement_reasons(&c, &host, None)),
            ["needs 2 GPUs, 1 free"]
        );
        host.gpus[1] = gpu(1, 0);
        assert!(placement_reasons(&c, &host, None).is_empty());
        let cpu = cap(&[]);
        assert!(placement_reasons(&c, &cpu, None)[0].lasting);
    }

    #[test]
    fn the_column_holds_only_what_is_asked() {
        assert_eq!(
            Placement::of(&Constraints::default()).to_column().unwrap(),
            NO_PLACEMENT
        );
        let c = Constraints {
            cores: 3,
            ..selector(&[("gpu", "x")])
        };
        let text = Placement::of(&c).to_column().unwrap();
        let mut back = Constraints::default();
        Placement::from_column(&text, "j").unwrap().apply(&mut back);
        assert_eq!(back, c);
        assert!(Placement::from_column("{", "j").is_err());
    }
}
