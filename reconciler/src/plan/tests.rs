//! Planner tests: a table of cases, and properties (idempotence, order independence,
//! disjoint categories), both simulated and through the real queue.

use crate::queue::JobQueue;
use std::collections::{BTreeMap, BTreeSet};

use cis490_api::{JobId, JobSpec, JobStatus};
use proptest::prelude::*;

use super::{plan, ActualJob, Plan};
use crate::queue::test_support::{cpu, spec, worker};
use crate::queue::{ManifestSource, Queue, QueueConfig};

fn actual(spec: &JobSpec, status: JobStatus, tombstoned: bool) -> ActualJob {
    ActualJob {
        spec: spec.clone(),
        status,
        tombstoned,
    }
}

#[test]
fn each_job_lands_in_its_category() {
    let new = spec("new");
    let same = spec("same");
    let changed_old = spec("changed");
    let changed_new = JobSpec {
        priority: 3,
        command: vec!["python".to_string(), "train.py".to_string()],
        ..changed_old.clone()
    };
    let running_old = spec("running");
    let running_new = JobSpec {
        priority: 3,
        ..running_old.clone()
    };
    let gone = spec("gone");
    let buried = spec("buried");
    let back = spec("back");
    let p = plan(
        &[
            new.clone(),
            same.clone(),
            changed_new.clone(),
            running_new,
            back.clone(),
        ],
        &[
            actual(&same, JobStatus::Completed, false),
            actual(&changed_old, JobStatus::Failed, false),
            actual(&running_old, JobStatus::Running, false),
            actual(&gone, JobStatus::Pending, false),
            actual(&buried, JobStatus::Pending, true),
            actual(&back, JobStatus::Completed, true),
        ],
    );
    assert_eq!(p.create, vec![new]);
    assert_eq!(
        p.update,
        vec![(
            changed_new,
            vec!["priority".to_string(), "command".to_string()]
        )]
    );
    assert_eq!(p.tombstone, vec![gone.id.clone()]);
    assert_eq!(p.revive, vec![back]);
    let mut keep = vec![same.id, running_old.id];
    keep.sort();
    assert_eq!(p.keep, keep);
    assert!(!p.is_empty());

    let summary = p.summary();
    assert_eq!(summary.create.len(), 1);
    assert_eq!(summary.update[0].changes, vec!["priority", "command"]);
    assert_eq!(summary.tombstone[0].model, "gbt");
    assert_eq!(summary.tombstone[0].mode, "realistic");
    assert_eq!(summary.keep, 2);
    assert!(!summary.applied);
}

#[test]
fn an_empty_manifest_tombstones_everything_once() {
    let a = spec("a");
    let p = plan(&[], &[actual(&a, JobStatus::Running, false)]);
    assert_eq!(p.tombstone, vec![a.id.clone()]);
    let again = plan(&[], &[actual(&a, JobStatus::Running, true)]);
    assert!(again.is_empty());
    assert!(again.keep.is_empty());
}

#[test]
fn a_repeated_id_resolves_to_the_lowest_manifest_order_in_any_order() {
    let a = JobSpec {
        manifest_order: 4,
        ..spec("dup")
    };
    let b = JobSpec {
        manifest_order: 1,
        priority: 7,
        ..spec("dup")
    };
    let one = plan(&[a.clone(), b.clone()], &[]);
    let two = plan(&[b.clone(), a], &[]);
    assert_eq!(one, two);
    assert_eq!(one.create, vec![b]);
}

/// A universe of 12 job names; generated jobs vary in the non-identity fields.
fn arb_spec() -> impl Strategy<Value = JobSpec> {
    (0u8..12, 0i32..3, 0u64..4, any::<bool>(), 1u32..4).prop_map(
        |(name, priority, order, prefer_cuda, max_attempts)| {
            let mut s = spec(&format!("job{name}"));
            s.priority = priority;
            s.manifest_order = order;
            s.constraints.prefer_cuda = prefer_cuda;
            s.max_attempts = max_attempts;
            s
        },
    )
}

/// Desired jobs with unique IDs (the manifest model guarantees that).
fn arb_desired() -> impl Strategy<Value = Vec<JobSpec>> {
    prop::collection::vec(arb_spec(), 0..12).prop_map(|v| {
        let mut seen = BTreeSet::new();
        v.into_iter()
            .filter(|s| seen.insert(s.id.clone()))
            .collect()
    })
}

fn arb_status() -> impl Strategy<Value = JobStatus> {
    prop::sample::select(JobStatus::ALL.to_vec())
}

fn arb_actual() -> impl Strategy<Value = Vec<ActualJob>> {
    prop::collection::vec((arb_spec(), arb_status(), any::<bool>()), 0..12).prop_map(|v| {
        let mut seen = BTreeSet::new();
        v.into_iter()
            .filter(|(s, _, _)| seen.insert(s.id.clone()))
            .map(|(spec, status, tombstoned)| ActualJob {
                spec,
                status,
                tombstoned,
            })
            .collect()
    })
}

/// What `Queue::apply` does to the planner's view of the queue, without a database.
fn simulate(actual: &[ActualJob], p: &Plan) -> Vec<ActualJob> {
    let mut by_id: BTreeMap<JobId, ActualJob> = actual
        .iter()
        .map(|a| (a.spec.id.clone(), a.clone()))
        .collect();
    for s in &p.create {
        by_id.insert(s.id.clone(), actual_pending(s));
    }
    for (s, _) in &p.update {
        if let Some(a) = by_id.get_mut(&s.id) {
            if !a.status.is_leased() {
                a.spec = s.clone();
            }
        }
    }
    for s in &p.revive {
        if let Some(a) = by_id.get_mut(&s.id) {
            a.tombstoned = false;
            if !a.status.is_leased() {
                a.spec = s.clone();
            }
        }
    }
    for id in &p.tombstone {
        if let Some(a) = by_id.get_mut(id) {
            a.tombstoned = true;
        }
    }
    by_id.into_values().collect()
}

fn actual_pending(s: &JobSpec) -> ActualJob {
    actual(s, JobStatus::Pending, false)
}

fn ids_of(p: &Plan) -> [BTreeSet<JobId>; 5] {
    [
        p.create.iter().map(|s| s.id.clone()).collect(),
        p.update.iter().map(|(s, _)| s.id.clone()).collect(),
        p.tombstone.iter().cloned().collect(),
        p.revive.iter().map(|s| s.id.clone()).collect(),
        p.keep.iter().cloned().collect(),
    ]
}

proptest! {
    #[test]
    fn applying_a_plan_then_planning_again_is_empty(
        desired in arb_desired(),
        actual in arb_actual(),
    ) {
        let first = plan(&desired, &actual);
        let after = simulate(&actual, &first);
        let second = plan(&desired, &after);
        prop_assert!(second.is_empty(), "second plan not empty: {:?}", second);
    }

    #[test]
    fn reordering_the_manifest_never_changes_the_plan(
        (desired, shuffled) in arb_desired()
            .prop_flat_map(|d| (Just(d.clone()), Just(d).prop_shuffle())),
        actual in arb_actual(),
    ) {
        let mut reversed_actual = actual.clone();
        reversed_actual.reverse();
        prop_assert_eq!(plan(&desired, &actual), plan(&shuffled, &reversed_actual));
    }

    #[test]
    fn every_job_is_in_at_most_one_category(
        desired in arb_desired(),
        actual in arb_actual(),
    ) {
        let p = plan(&desired, &actual);
        let sets = ids_of(&p);
        let total: usize = sets.iter().map(BTreeSet::len).sum();
        let union: BTreeSet<&JobId> = sets.iter().flatten().collect();
        prop_assert_eq!(total, union.len(), "a job is in two categories: {:?}", p);
        prop_assert!(sets[0].is_disjoint(&sets[2]), "created and tombstoned");
        // Every desired job is accounted for.
        for s in &desired {
            prop_assert!(union.contains(&s.id));
        }
        // Lists are sorted by ID.
        let created: Vec<&JobId> = p.create.iter().map(|s| &s.id).collect();
        let mut sorted = created.clone();
        sorted.sort();
        prop_assert_eq!(created, sorted);
    }
}

/// The planner as it was written first, with maps: the merge join must plan exactly as it
/// did, repeated IDs included (in `desired` the lowest `manifest_order` wins, in `actual` the
/// last entry).
fn plan_with_maps(desired: &[JobSpec], actual: &[ActualJob]) -> Plan {
    let mut wanted: BTreeMap<JobId, JobSpec> = BTreeMap::new();
    for spec in desired {
        match wanted.get(&spec.id) {
            Some(seen) if !super::first_wins(spec, seen) => {}
            _ => {
                wanted.insert(spec.id.clone(), spec.clone());
            }
        }
    }
    let have: BTreeMap<&JobId, &ActualJob> = actual.iter().map(|a| (&a.spec.id, a)).collect();
    let mut out = Plan::default();
    for (id, spec) in wanted {
        match have.get(&id) {
            None => out.create.push(spec),
            Some(a) if a.tombstoned => out.revive.push(spec),
            Some(a) if a.status.is_leased() => out.keep.push(id),
            Some(a) => {
                let changes = super::changed_fields(&a.spec, &spec);
                if changes.is_empty() {
                    out.keep.push(id);
                } else {
                    out.update.push((spec, changes));
                }
            }
        }
    }
    for (id, a) in &have {
        if !a.tombstoned && !desired.iter().any(|s| &s.id == *id) {
            out.tombstone_names
                .insert((*id).clone(), (a.spec.model.clone(), a.spec.mode.clone()));
            out.tombstone.push((*id).clone());
        }
    }
    out
}

proptest! {
    #[test]
    fn the_merge_join_plans_as_the_maps_did_even_with_repeated_ids(
        desired in prop::collection::vec(arb_spec(), 0..16),
        actual in prop::collection::vec((arb_spec(), arb_status(), any::<bool>()), 0..16),
    ) {
        let actual: Vec<ActualJob> = actual
            .into_iter()
            .map(|(spec, status, tombstoned)| ActualJob { spec, status, tombstoned })
            .collect();
        prop_assert_eq!(plan(&desired, &actual), plan_with_maps(&desired, &actual));
    }
}

fn source() -> ManifestSource {
    ManifestSource {
        path: "m.toml".to_string(),
        sha256: "0".repeat(64),
        warnings: Vec::new(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The same property through the real queue: load a manifest, let workers claim some
    /// jobs, load a second manifest; planning the second again gives an empty plan and
    /// applying it does not move the generation.
    #[test]
    fn through_the_queue_a_second_apply_is_a_no_op(
        first in arb_desired(),
        second in arb_desired(),
        claims in 0usize..5,
    ) {
        let q = Queue::open_in_memory(QueueConfig::default()).unwrap();
        let p1 = plan(&first, &q.actual().unwrap());
        q.apply(&p1, &[], &source()).unwrap();
        for i in 0..claims {
            q.claim(&worker(&format!("w{i}")), &cpu(8)).unwrap();
        }
        let p2 = plan(&second, &q.actual().unwrap());
        let generation = q.apply(&p2, &[], &source()).unwrap().generation;
        let p3 = plan(&second, &q.actual().unwrap());
        prop_assert!(p3.is_empty(), "not converged: {:?}", p3);
        prop_assert_eq!(q.apply(&p3, &[], &source()).unwrap().generation, generation);
    }
}
