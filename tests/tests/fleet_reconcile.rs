//! Auto-reconcile on the real binaries: the manifest file is the only control. Editing it
//! on disk (saved the way editors save: temp file + rename) adds, tombstones and revives
//! jobs, with no reload command.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use cis490_api::{JobStatus, JobView};
use cis490_tests::fleet::{Fleet, WAIT};
use cis490_tests::wait_until;

const HEAD: &str = "version = 1\n\n[defaults]\nmax_attempts = 3\nstale_after_s = 30\ncommand = [\"sh\", \"train.sh\"]\n\n[models.m]\nhyper = { lr = \"float\" }\n";
const FIRST: &str = "[[jobs]]\nmodel = \"m\"\nmode = \"first\"\nseed = 1\n";
/// Needs CUDA: stays pending next to the test's CPU agent.
const GPU_ONLY: &str =
    "[[jobs]]\nmodel = \"m\"\nmode = \"gpu-only\"\nseed = 1\nrequire_cuda = true\n";
const ADDED: &str = "[[jobs]]\nmodel = \"m\"\nmode = \"added\"\nseed = 2\nhyper = { lr = 0.5 }\n";

fn manifest(jobs: &[&str]) -> String {
    format!("{HEAD}\n{}", jobs.join("\n"))
}

fn by_mode<'a>(jobs: &'a [JobView], mode: &str) -> Option<&'a JobView> {
    jobs.iter().find(|j| j.mode == mode)
}

fn event_kinds(job: &JobView) -> Vec<String> {
    job.events.iter().map(|e| e.kind.clone()).collect()
}

#[test]
fn editing_the_manifest_file_adds_tombstones_and_revives_jobs() {
    let mut fleet = Fleet::start(&manifest(&[FIRST, GPU_ONLY])).unwrap();
    fleet
        .write_work_file(
            "train.sh",
            "#!/bin/sh\necho \"$CIS490_MODE $*\" > \"$CIS490_OUTPUT_DIR/o.txt\"\n",
        )
        .unwrap();
    let jobs = fleet.wait_jobs(2).unwrap();
    let first = by_mode(&jobs, "first").unwrap().id.clone();
    let gpu_only = by_mode(&jobs, "gpu-only").unwrap().id.clone();
    fleet
        .start_agent("idle", &["--advertise", "cuda=false"])
        .unwrap();
    fleet.wait_status(&first, JobStatus::Completed).unwrap();
    wait_until(WAIT, "the agent to be idle", || {
        let workers = fleet.rt.block_on(fleet.client.workers()).ok()?;
        workers
            .iter()
            .any(|w| w.name.as_str() == "idle" && w.running_jobs.is_empty())
            .then_some(())
    })
    .unwrap();

    // Add a job: the idle agent starts it with no command from anyone.
    fleet
        .write_manifest(&manifest(&[FIRST, GPU_ONLY, ADDED]))
        .unwrap();
    let jobs = fleet.wait_jobs(3).unwrap();
    let added = by_mode(&jobs, "added").unwrap().id.clone();
    let done = fleet.wait_status(&added, JobStatus::Completed).unwrap();
    assert_eq!(done.worker.unwrap().as_str(), "idle");
    assert!(done.artifact_id.is_some());

    // Remove the pending job: tombstoned, never claimable, history kept.
    fleet.write_manifest(&manifest(&[FIRST, ADDED])).unwrap();
    let tombstoned = wait_until(WAIT, "the removed job to be tombstoned", || {
        fleet.job(&gpu_only).ok().filter(|j| j.tombstoned)
    })
    .unwrap();
    assert_eq!(tombstoned.status, JobStatus::Pending);
    assert_eq!(tombstoned.attempts, 0);
    let kinds = event_kinds(&tombstoned);
    assert!(kinds.contains(&"Created".to_string()), "{kinds:?}");
    assert!(kinds.contains(&"Tombstoned".to_string()), "{kinds:?}");

    // Put it back: the same job (same ID) is revived with its history.
    fleet
        .write_manifest(&manifest(&[FIRST, GPU_ONLY, ADDED]))
        .unwrap();
    let revived = wait_until(WAIT, "the job to be revived", || {
        fleet.job(&gpu_only).ok().filter(|j| !j.tombstoned)
    })
    .unwrap();
    assert_eq!(revived.status, JobStatus::Pending);
    let kinds = event_kinds(&revived);
    let position = |k: &str| kinds.iter().position(|x| x == k);
    assert!(
        position("Created") < position("Tombstoned")
            && position("Tombstoned") < position("Revived")
            && position("Revived").is_some(),
        "{kinds:?}"
    );
    // Nothing else moved: both finished jobs keep their results, and nothing was added.
    let jobs = fleet.jobs();
    assert_eq!(jobs.len(), 3);
    for id in [&first, &added] {
        let job = jobs.iter().find(|j| &j.id == id).unwrap();
        assert_eq!(job.status, JobStatus::Completed);
        assert_eq!(job.attempts, 1);
    }
}
