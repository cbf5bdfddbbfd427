//! Retries by cause on the real binaries: a host whose trainer program does not exist
//! fails to start the job, which then completes on another host with one attempt used, and
//! `cis490ctl get workers` flags the bad host.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;

use cis490_api::JobStatus;
use cis490_tests::fleet::{Fleet, WAIT};
use cis490_tests::wait_until;

const TRAINER: &str = "#!/bin/sh\necho trained > \"$CIS490_OUTPUT_DIR/o.txt\"\n";

fn manifest(with_job: bool) -> String {
    let job = if with_job {
        "[[jobs]]\nmodel = \"m\"\nmode = \"where\"\nseed = 1\n"
    } else {
        ""
    };
    format!(
        "version = 1\n\n[defaults]\ncommand = [\"./train.sh\"]\nmax_attempts = 3\n\n[models.m]\n\n{job}"
    )
}

fn ctl_ok(fleet: &Fleet, args: &[&str]) -> String {
    let out = fleet.ctl(args).unwrap();
    assert!(
        out.status.success(),
        "cis490ctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_trainer_missing_on_one_host_completes_on_another_with_one_attempt() {
    let mut fleet = Fleet::start(&manifest(false)).unwrap();
    fleet.write_work_file("train.sh", TRAINER).unwrap();
    let script = fleet.path("work/train.sh");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The bad host's working dir has no train.sh: its trainer cannot start.
    let bad_work = fleet.path("work-bad");
    std::fs::create_dir_all(&bad_work).unwrap();

    // Both agents are known before the job exists; the good one is held back by a cordon
    // so that the bad one is the first to take the job.
    fleet.start_agent("good", &[]).unwrap();
    let cmd = fleet
        .agent_command_in(&[], "bad", &fleet.url().unwrap(), &bad_work, &[])
        .unwrap();
    fleet.spawn_agent("bad", cmd).unwrap();
    wait_until(WAIT, "both agents registered", || {
        let workers = fleet.rt.block_on(fleet.client.workers()).ok()?;
        (workers.len() == 2).then_some(())
    })
    .unwrap();
    ctl_ok(&fleet, &["cordon", "good"]);
    fleet.write_manifest(&manifest(true)).unwrap();
    let id = fleet.wait_jobs(1).unwrap()[0].id.clone();
    let flagged = wait_until(WAIT, "the bad host's failure", || {
        let job = fleet.job(&id).ok()?;
        job.events
            .iter()
            .any(|e| e.kind == "HostProblem")
            .then_some(job)
    })
    .unwrap();
    assert_eq!(flagged.attempts, 0, "a host failure uses no attempt");
    assert_ne!(flagged.status, JobStatus::Failed);

    ctl_ok(&fleet, &["uncordon", "good"]);
    let done = fleet.wait_status(&id, JobStatus::Completed).unwrap();
    assert_eq!(done.worker.as_ref().unwrap().as_str(), "good");
    assert_eq!(done.attempts, 1, "{:?}", done.events);

    let table = ctl_ok(&fleet, &["get", "workers"]);
    let row = |name: &str| {
        table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no row for {name}: {table}"))
            .to_string()
    };
    assert!(row("bad").contains("HostProblem"), "{table}");
    assert!(!row("good").contains("HostProblem"), "{table}");
    let described = ctl_ok(&fleet, &["describe", "worker", "bad"]);
    assert!(
        described.contains("HostProblem:") && described.contains("train.sh"),
        "{described}"
    );
}
