//! The pure reconcile planner: `plan(desired, actual) -> Plan`, no I/O.
//!
//! The planner classifies every job first and the queue acts on the classification in one
//! transaction (`Queue::apply`), so a reload is all-or-nothing and the trigger of a reload
//! never reaches the decision.
//!
//! Rules, per job ID:
//! - in desired, not in actual: **create**;
//! - in both, tombstoned in actual: **revive** (with the desired spec);
//! - in both, leased (claimed or running): **keep** (a running job keeps the spec it was
//!   claimed with);
//! - in both, some field differs: **update** (with the names of the changed fields);
//! - in both, nothing differs: **keep**;
//! - in actual, not tombstoned, not in desired: **tombstone**;
//! - in actual, tombstoned, not in desired: nothing (already done).
//!
//! Every list of a `Plan` is sorted by job ID, so equal inputs in any order give equal plans.

use std::collections::BTreeMap;

use cis490_api::{JobId, JobSpec, JobStatus, PlanEntry, PlanSummary};

/// One job as the queue holds it: what the planner compares the manifest against.
#[derive(Debug, Clone, PartialEq)]
pub struct ActualJob {
    pub spec: JobSpec,
    pub status: JobStatus,
    pub tombstoned: bool,
}

/// What a reload does. Build it with [`plan`]; every list is sorted by job ID.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// New jobs.
    pub create: Vec<JobSpec>,
    /// New spec of a job that is not leased, and the names of the fields that change.
    pub update: Vec<(JobSpec, Vec<String>)>,
    /// Jobs gone from the manifest.
    pub tombstone: Vec<JobId>,
    /// Tombstoned jobs back in the manifest, with their new spec.
    pub revive: Vec<JobSpec>,
    /// Jobs that stay as they are.
    pub keep: Vec<JobId>,
    /// (model, mode) of each tombstoned job, so a summary can name them.
    pub tombstone_names: BTreeMap<JobId, (String, String)>,
}

impl Plan {
    /// True when applying the plan would change nothing.
    pub fn is_empty(&self) -> bool {
        self.create.is_empty()
            && self.update.is_empty()
            && self.tombstone.is_empty()
            && self.revive.is_empty()
    }

    /// The plan as the API shows it (`applied: false`, `generation: 0`; the queue fills
    /// those in when it applies the plan).
    pub fn summary(&self) -> PlanSummary {
        let entry = |spec: &JobSpec, changes: Vec<String>| PlanEntry {
            id: spec.id.clone(),
            model: spec.model.clone(),
            mode: spec.mode.clone(),
            changes,
        };
        let only_moved = |changes: &[String]| changes.len() == 1 && changes[0] == "manifest_order";
        let reordered = self.update.iter().filter(|(_, c)| only_moved(c)).count() as u64;
        PlanSummary {
            create: self.create.iter().map(|s| entry(s, Vec::new())).collect(),
            update: self
                .update
                .iter()
                .filter(|(_, changes)| !only_moved(changes))
                .map(|(s, changes)| entry(s, changes.clone()))
                .collect(),
            tombstone: self
                .tombstone
                .iter()
                .map(|id| {
                    let (model, mode) = self.tombstone_names.get(id).cloned().unwrap_or_default();
                    PlanEntry {
                        id: id.clone(),
                        model,
                        mode,
                        changes: Vec::new(),
                    }
                })
                .collect(),
            revive: self.revive.iter().map(|s| entry(s, Vec::new())).collect(),
            keep: self.keep.len() as u64 + reordered,
            reordered,
            hosts: Vec::new(),
            warnings: Vec::new(),
            applied: false,
            generation: 0,
        }
    }
}

/// Names of the fields in which `new` differs from `old`, in a fixed order. The identity
/// fields are listed too: two specs with one ID should never differ in them, but if they
/// do the stored spec must still converge on the desired one.
pub fn changed_fields(old: &JobSpec, new: &JobSpec) -> Vec<String> {
    let mut changed = Vec::new();
    let mut check = |name: &str, differs: bool| {
        if differs {
            changed.push(name.to_string());
        }
    };
    check("model", old.model != new.model);
    check("mode", old.mode != new.mode);
    check("hyper", old.hyper != new.hyper);
    check("split_recipe", old.split_recipe != new.split_recipe);
    check("train_hosts", old.train_hosts != new.train_hosts);
    check("seed", old.seed != new.seed);
    check("constraints", old.constraints != new.constraints);
    check("priority", old.priority != new.priority);
    check("max_attempts", old.max_attempts != new.max_attempts);
    check("stale_after_s", old.stale_after_s != new.stale_after_s);
    check("retry", old.retry != new.retry);
    check("command", old.command != new.command);
    check("labels", old.labels != new.labels);
    check("timeout_s", old.timeout_s != new.timeout_s);
    check("env", old.env != new.env);
    check("manifest_order", old.manifest_order != new.manifest_order);
    changed
}

/// Sorts every job into create / update / tombstone / revive / keep. Pure.
///
/// `desired` should hold each ID once (the manifest model rejects duplicates); if an ID
/// repeats, the entry with the lowest `manifest_order` wins (ties broken by the spec's
/// JSON), so the result never depends on the order of `desired`.
pub fn plan(desired: &[JobSpec], actual: &[ActualJob]) -> Plan {
    plan_owned(desired.to_vec(), actual)
}

/// [`plan`] taking the desired jobs by value: the plan keeps the specs it needs instead of
/// copies, so a 100k-job reload holds one set of specs, not two.
///
/// Both sides are walked in ID order (a merge join): the desired specs are sorted where
/// they lie and the actual jobs through a list of references, so planning allocates no map
/// of 100k entries and no copy of a job ID it does not keep.
pub fn plan_owned(mut desired: Vec<JobSpec>, actual: &[ActualJob]) -> Plan {
    desired.sort_unstable_by(|a, b| {
        a.id.cmp(&b.id)
            .then(a.manifest_order.cmp(&b.manifest_order))
    });
    let mut have: Vec<&ActualJob> = actual.iter().collect();
    // Stable, so that of a repeated ID the last one in `actual` is the one planned against.
    have.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));

    let mut out = Plan::default();
    let mut wanted = desired.into_iter().peekable();
    let mut have = have.into_iter().peekable();
    loop {
        let next_wanted = wanted.next().map(|mut spec| {
            while let Some(repeat) = wanted.next_if(|next| next.id == spec.id) {
                if first_wins(&repeat, &spec) {
                    spec = repeat;
                }
            }
            spec
        });
        let mut next_have = |until: Option<&JobId>| {
            let a = have.next_if(|a| until.is_none_or(|id| a.spec.id <= *id))?;
            Some(
                std::iter::from_fn(|| have.next_if(|next| next.spec.id == a.spec.id))
                    .last()
                    .unwrap_or(a),
            )
        };
        let Some(spec) = next_wanted else {
            // Only jobs the manifest no longer names are left.
            while let Some(a) = next_have(None) {
                tombstone(&mut out, a);
            }
            break;
        };
        let mut same = None;
        while let Some(a) = next_have(Some(&spec.id)) {
            if a.spec.id == spec.id {
                same = Some(a);
            } else {
                tombstone(&mut out, a);
            }
        }
        match same {
            None => out.create.push(spec),
            Some(a) if a.tombstoned => out.revive.push(spec),
            Some(a) if a.status.is_leased() => out.keep.push(spec.id),
            Some(a) => {
                let changes = changed_fields(&a.spec, &spec);
                if changes.is_empty() {
                    out.keep.push(spec.id);
                } else {
                    out.update.push((spec, changes));
                }
            }
        }
    }
    out
}

/// A job in the queue that the manifest does not name: tombstoned, unless it already is.
fn tombstone(out: &mut Plan, gone: &ActualJob) {
    if gone.tombstoned {
        return;
    }
    out.tombstone_names.insert(
        gone.spec.id.clone(),
        (gone.spec.model.clone(), gone.spec.mode.clone()),
    );
    out.tombstone.push(gone.spec.id.clone());
}

/// True when `candidate` should replace `seen` for a repeated ID.
fn first_wins(candidate: &JobSpec, seen: &JobSpec) -> bool {
    match candidate.manifest_order.cmp(&seen.manifest_order) {
        std::cmp::Ordering::Less => true,
        std::cmp::Ordering::Greater => false,
        std::cmp::Ordering::Equal => {
            let a = serde_json::to_string(candidate).unwrap_or_default();
            let b = serde_json::to_string(seen).unwrap_or_default();
            a < b
        }
    }
}

#[cfg(test)]
mod tests;
