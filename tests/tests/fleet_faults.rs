//! Faults on the real binaries: an agent killed with SIGKILL mid-job (the job moves on, the
//! dead agent's lease is fenced off, repeated deaths fail the job), and the reconciler
//! killed with SIGKILL in the middle of a run of claims and completions.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use cis490_api::{CompleteRequest, HeartbeatRequest, JobStatus, WorkerName};
use cis490_tests::fleet::{Fleet, WAIT};
use cis490_tests::{sha256_file, stored_bundle};
use reqwest::StatusCode;

/// Holds while `work/hold` exists (bounded, so a stray trainer always ends), then records
/// that it ran to completion and writes an output unique to the job.
const HOLDING_TRAINER: &str = "#!/bin/sh\ni=0\nwhile [ -e hold ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done\necho \"$CIS490_JOB_ID\" > \"$CIS490_OUTPUT_DIR/o.txt\"\necho \"$CIS490_JOB_ID\" >> runs.log\n";

fn manifest(defaults: &str, jobs: &str) -> String {
    format!(
        "version = 1\n\n[defaults]\ncommand = [\"sh\", \"train.sh\"]\n{defaults}\n\n[models.m]\n\n{jobs}"
    )
}

#[test]
fn agent_killed_mid_job_its_job_moves_on_and_its_lease_is_refused() {
    let mut fleet = Fleet::start(&manifest(
        "max_attempts = 3\nstale_after_s = 3",
        "[[jobs]]\nmodel = \"m\"\nmode = \"slow\"\nseed = 1\n",
    ))
    .unwrap();
    fleet.write_work_file("train.sh", HOLDING_TRAINER).unwrap();
    fleet.write_work_file("hold", "").unwrap();
    let id = fleet.wait_jobs(1).unwrap()[0].id.clone();
    fleet.start_agent("doomed", &[]).unwrap();
    let running = fleet.wait_status(&id, JobStatus::Running).unwrap();
    assert_eq!(running.worker.unwrap().as_str(), "doomed");
    let dead_lease = fleet.current_lease(&id).unwrap();
    fleet.kill_agent("doomed").unwrap();

    // No heartbeats: once the 3 s lease runs out the sweeper puts the job back.
    let pending = fleet.wait_status(&id, JobStatus::Pending).unwrap();
    assert_eq!(pending.attempts, 1);
    assert!(
        pending.events.iter().any(|e| e.kind == "LeaseExpired"),
        "{:?}",
        pending.events
    );
    std::fs::remove_file(fleet.path("work/hold")).unwrap();
    fleet.start_agent("rescuer", &[]).unwrap();
    let done = fleet.wait_status(&id, JobStatus::Completed).unwrap();
    assert_eq!(done.worker.as_ref().unwrap().as_str(), "rescuer");
    assert_eq!(done.attempts, 2);

    // The dead agent comes back with its old lease: fenced off.
    let doomed = WorkerName::parse("doomed").unwrap();
    let heartbeat = fleet.rt.block_on(fleet.client.heartbeat(
        &id,
        &HeartbeatRequest {
            worker: doomed.clone(),
            lease: dead_lease.clone(),
            log_tail: None,
            log: None,
            progress: None,
        },
    ));
    let err = heartbeat.expect_err("a dead agent's heartbeat must be refused");
    assert_eq!(err.status(), Some(StatusCode::CONFLICT), "{err}");
    assert!(err.is_lease_lost(), "{err}");
    let complete = fleet.rt.block_on(fleet.client.complete(
        &id,
        &CompleteRequest {
            worker: doomed,
            lease: dead_lease,
            artifact_id: done.artifact_id.clone(),
            upload: None,
            report: Default::default(),
        },
    ));
    let err = complete.expect_err("a dead agent's completion must be refused");
    assert_eq!(err.status(), Some(StatusCode::CONFLICT), "{err}");
    assert!(err.is_lease_lost(), "{err}");
    let after = fleet.job(&id).unwrap();
    assert_eq!(after.status, JobStatus::Completed);
    assert_eq!(after.worker.unwrap().as_str(), "rescuer");
    assert_eq!(after.artifact_id, done.artifact_id);
}

#[test]
fn a_job_whose_agents_keep_dying_fails_after_max_attempts_with_the_reason() {
    let mut fleet = Fleet::start(&manifest(
        "max_attempts = 2\nstale_after_s = 2",
        "[[jobs]]\nmodel = \"m\"\nmode = \"cursed\"\nseed = 1\n",
    ))
    .unwrap();
    fleet.write_work_file("train.sh", HOLDING_TRAINER).unwrap();
    fleet.write_work_file("hold", "").unwrap();
    let id = fleet.wait_jobs(1).unwrap()[0].id.clone();
    for (attempt, name) in [(1, "victim-1"), (2, "victim-2")] {
        fleet.start_agent(name, &[]).unwrap();
        let running = fleet.wait_status(&id, JobStatus::Running).unwrap();
        assert_eq!(running.worker.unwrap().as_str(), name);
        assert_eq!(running.attempts, attempt);
        fleet.kill_agent(name).unwrap();
        if attempt == 1 {
            fleet.wait_status(&id, JobStatus::Pending).unwrap();
        }
    }
    let failed = fleet.wait_status(&id, JobStatus::Failed).unwrap();
    let reason = failed.error.expect("failed job carries its reason").reason;
    assert!(reason.contains("lease expired 2 times"), "{reason}");
    assert_eq!(failed.attempts, 2);
}

/// Every `*.partial` file under `dir`, wherever it is.
fn partial_files(dir: &Path, found: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            partial_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "partial") {
            found.push(path);
        }
    }
}

#[test]
fn reconciler_killed_mid_run_loses_nothing_and_runs_nothing_twice() {
    let seeds: Vec<String> = (1..=30).map(|s| s.to_string()).collect();
    let mut fleet = Fleet::start(&manifest(
        // Long enough that the short outage expires no lease: every run is the only one.
        "max_attempts = 3\nstale_after_s = 10",
        &format!(
            "[[jobs]]\nmodel = \"m\"\nmode = \"quick\"\nmatrix = {{ seed = [{}] }}\n",
            seeds.join(", ")
        ),
    ))
    .unwrap();
    fleet
        .write_work_file(
            "train.sh",
            "#!/bin/sh\nsleep 0.2\necho \"$CIS490_JOB_ID\" > \"$CIS490_OUTPUT_DIR/o.txt\"\necho \"$CIS490_JOB_ID\" >> runs.log\n",
        )
        .unwrap();
    let all = fleet.wait_jobs(30).unwrap();
    fleet.start_agent("a1", &["--max-concurrent", "2"]).unwrap();
    fleet.start_agent("a2", &["--max-concurrent", "2"]).unwrap();
    let done_at_kill = fleet.wait_completed(6).unwrap();
    let addr = fleet.server.as_ref().unwrap().addr().to_string();
    fleet.server.take().unwrap().process.kill_now();
    assert!(done_at_kill < 30, "the run was over before the kill");
    fleet.start_server(&addr).unwrap();

    let jobs = fleet
        .wait_jobs_until(WAIT * 2, "all 30 jobs completed", |jobs| {
            jobs.len() == 30 && jobs.iter().all(|j| j.status == JobStatus::Completed)
        })
        .unwrap();
    // The agents carried on by themselves; no job lost, none run twice to completion.
    fleet.assert_each_job_ran_once(&all);

    // No partial artifact visible: partial files only ever in the incoming folder.
    let store = fleet.store_root();
    let mut partials = Vec::new();
    partial_files(&fleet.path("state"), &mut partials);
    let incoming = store.join(".incoming");
    let stray: Vec<_> = partials
        .iter()
        .filter(|p| !p.starts_with(&incoming))
        .collect();
    assert!(
        stray.is_empty(),
        "partial files outside .incoming: {stray:?}"
    );
    // Every listed artifact is a whole bundle, and every job's artifact is listed.
    let rows = fleet.artifacts().unwrap();
    for row in &rows {
        let bundle = stored_bundle(&store, row.artifact_id.as_str());
        assert_eq!(
            sha256_file(&bundle).unwrap(),
            row.artifact_id.as_str(),
            "{}",
            bundle.display()
        );
    }
    for job in &jobs {
        let artifact = job.artifact_id.as_ref().unwrap();
        assert!(
            rows.iter().any(|r| &r.artifact_id == artifact),
            "job {} artifact {} not indexed",
            job.id.short(),
            artifact.short()
        );
    }
}

/// The leader records its pid, starts a child (in its process group) that records its
/// pid, and waits (both bounded, so nothing outlives a failed test for long).
const FORKING_TRAINER: &str =
    "#!/bin/sh\necho $$ > leader.pid\nsh -c 'echo $$ > child.pid; exec sleep 120' &\nwait\n";

#[cfg(target_os = "linux")]
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| !r.trim_start().starts_with('Z'))
    })
}

#[cfg(target_os = "linux")]
fn pid_in(fleet: &Fleet, file: &str) -> i32 {
    let path = fleet.path("work").join(file);
    cis490_tests::wait_until(WAIT, file, || {
        std::fs::read_to_string(&path)
            .ok()?
            .trim()
            .parse::<i32>()
            .ok()
    })
    .unwrap()
}

#[cfg(target_os = "linux")]
fn forking_fleet() -> (Fleet, cis490_api::JobId, i32, i32) {
    let mut fleet = Fleet::start(&manifest(
        "stale_after_s = 60",
        "[[jobs]]\nmodel = \"m\"\nmode = \"forks\"\nseed = 1\n",
    ))
    .unwrap();
    fleet.write_work_file("train.sh", FORKING_TRAINER).unwrap();
    let id = fleet.wait_jobs(1).unwrap()[0].id.clone();
    fleet.start_agent("mortal", &[]).unwrap();
    fleet.wait_status(&id, JobStatus::Running).unwrap();
    let leader = pid_in(&fleet, "leader.pid");
    let child = pid_in(&fleet, "child.pid");
    assert!(running(leader) && running(child));
    (fleet, id, leader, child)
}

/// The pid of the trainer guard agent `name` started (its child whose argv[1] is the
/// guard's argument).
#[cfg(target_os = "linux")]
fn guard_of(fleet: &mut Fleet, name: &str) -> i32 {
    let agent = fleet.agent(name).unwrap().process.pid().to_string();
    let found = std::fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
        let pid = e.file_name().to_str()?.parse::<i32>().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let ppid = stat
            .rsplit(')')
            .next()?
            .split_whitespace()
            .nth(1)?
            .to_string();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let argv1 = cmdline.split(|b| *b == 0).nth(1)?.to_vec();
        (ppid == agent && argv1 == b"__trainer-guard").then_some(pid)
    });
    found.expect("the agent's trainer guard")
}

#[cfg(target_os = "linux")]
#[test]
fn a_killed_agents_trainer_and_what_it_started_die_with_it() {
    let (mut fleet, _id, leader, child) = forking_fleet();
    fleet.kill_agent("mortal").unwrap();
    cis490_tests::wait_until(WAIT, "the trainer's group to die with its agent", || {
        (!running(leader) && !running(child)).then_some(())
    })
    .unwrap();
}

#[cfg(target_os = "linux")]
#[test]
fn a_restarted_agent_ends_what_its_killed_lifes_trainer_left() {
    let (mut fleet, _id, leader, child) = forking_fleet();
    // The guard dies first (as when the whole host's processes are killed but the
    // trainers), so nothing ends the trainer when the agent dies.
    let guard = guard_of(&mut fleet, "mortal");
    let status = std::process::Command::new("kill")
        .args(["-KILL", &guard.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    fleet.kill_agent("mortal").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(running(leader) && running(child), "nothing ended them yet");

    // The same agent again (same name, same state dir): before claiming anything it ends
    // what its previous life's trainer started.
    fleet.agents.retain(|a| a.name != "mortal");
    fleet.start_agent("mortal", &[]).unwrap();
    cis490_tests::wait_until(
        WAIT,
        "the restarted agent to end the leftover trainer",
        || (!running(leader) && !running(child)).then_some(()),
    )
    .unwrap();
    assert!(
        fleet.log("mortal").contains("left behind"),
        "{}",
        fleet.log("mortal")
    );
    // Its previous life is over (it held the state dir's lock), so the restarted agent
    // gets its name back at once, although the dead one still holds a 60 s lease.
    cis490_tests::wait_until(WAIT, "the restarted agent to register", || {
        fleet.log("mortal").contains("registered").then_some(())
    })
    .unwrap();
    assert!(
        !fleet.log("mortal").contains("holds worker name"),
        "{}",
        fleet.log("mortal")
    );
}
