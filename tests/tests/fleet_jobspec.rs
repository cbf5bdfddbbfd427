//! The job spec's run-time fields on the real binaries: `timeout_s` stops the trainer's
//! whole process group and fails the job with its reason; `env` reaches the trainer (the
//! job's value wins over the model's); `node_selector` sends a job only to a worker with
//! the labels (the agent's `--label` or its `[[hosts]]` entry's), which `get workers -o
//! wide` and `describe worker` show; a `cores` job waits while running jobs hold the cores.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;

use cis490_api::{IdPrefix, JobStatus, JobView};
use cis490_tests::fleet::{processes_under, Fleet, WAIT};
use cis490_tests::wait_until;

fn ctl_ok(fleet: &Fleet, args: &[&str]) -> String {
    let out = fleet.ctl(args).unwrap();
    assert!(
        out.status.success(),
        "cis490ctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn trainer(fleet: &Fleet, script: &str) {
    fleet.write_work_file("train.sh", script).unwrap();
    let path = fleet.path("work/train.sh");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn by_mode<'a>(jobs: &'a [JobView], mode: &str) -> &'a JobView {
    jobs.iter()
        .find(|j| j.mode == mode)
        .unwrap_or_else(|| panic!("no job of mode {mode}"))
}

fn explain_text(fleet: &Fleet, job: &JobView) -> String {
    let prefix = IdPrefix::parse(job.id.as_str()).unwrap();
    let explain = fleet.rt.block_on(fleet.client.explain(&prefix)).unwrap();
    let mut text = explain.summary.clone();
    for w in &explain.workers {
        text.push_str(&format!("\n{}: {}", w.worker, w.reasons.join("; ")));
    }
    text
}

#[test]
fn a_job_past_its_timeout_fails_with_the_reason_and_its_trainer_is_gone() {
    let manifest = "version = 1\n\n[defaults]\ncommand = [\"./train.sh\"]\n\n[models.m]\n\n\
                    [[jobs]]\nmodel = \"m\"\nmode = \"slow\"\ntimeout_s = 2\n";
    let mut fleet = Fleet::start(manifest).unwrap();
    // The sleep is a child of the shell: the whole group has to go, not only the leader.
    trainer(&fleet, "#!/bin/sh\necho started\nsleep 60\necho never\n");
    fleet.start_agent("a", &[]).unwrap();
    let id = fleet.wait_jobs(1).unwrap()[0].id.clone();
    let failed = fleet.wait_status(&id, JobStatus::Failed).unwrap();
    let reason = failed.error.as_ref().unwrap().reason.clone();
    assert_eq!(
        reason, "timed out after 2 s (timeout_s)",
        "{:?}",
        failed.events
    );
    assert_eq!(failed.attempts, 1, "not retried without retries_on_failure");
    let work = fleet.path("work");
    let left = wait_until(WAIT, "the trainer's sleep to be gone", || {
        let sleeping: Vec<_> = processes_under(&work)
            .into_iter()
            .filter(|(_, cmd)| cmd.starts_with("sleep"))
            .collect();
        sleeping.is_empty().then_some(())
    });
    assert!(left.is_ok(), "{:?}", processes_under(&work));
    let described = ctl_ok(&fleet, &["describe", "job", id.short()]);
    assert!(
        described.contains("Timeout:") && described.contains("2s"),
        "{described}"
    );
}

#[test]
fn env_reaches_the_trainer_and_the_jobs_value_wins_over_the_models() {
    let manifest = "version = 1\n\n[defaults]\ncommand = [\"./train.sh\"]\n\n\
                    [models.m]\nenv = { FROM_MODEL = \"model\", BOTH = \"model\" }\n\n\
                    [[jobs]]\nmodel = \"m\"\nmode = \"env\"\nenv = { BOTH = \"job\" }\n";
    let mut fleet = Fleet::start(manifest).unwrap();
    trainer(
        &fleet,
        "#!/bin/sh\necho \"$FROM_MODEL:$BOTH\" > \"env-$CIS490_JOB_ID.txt\"\n\
         echo ok > \"$CIS490_OUTPUT_DIR/o.txt\"\n",
    );
    fleet.start_agent("a", &[]).unwrap();
    let id = fleet.wait_jobs(1).unwrap()[0].id.clone();
    let done = fleet.wait_status(&id, JobStatus::Completed).unwrap();
    // The trainer runs in the agent's work dir.
    let seen = std::fs::read_to_string(fleet.path(&format!("work/env-{id}.txt")))
        .unwrap_or_else(|e| panic!("the trainer wrote no env file ({e}): {:?}", done.events));
    assert_eq!(seen.trim(), "model:job");
}

#[test]
fn node_selector_jobs_go_only_to_workers_with_the_labels() {
    let manifest = "version = 1\n\n[defaults]\ncommand = [\"./train.sh\"]\n\n\
                    [[hosts]]\nname = \"plain\"\nlabels = { room = \"b\" }\n\n[models.m]\n\n\
                    [[jobs]]\nmodel = \"m\"\nmode = \"gpu\"\nnode_selector = { gpu = \"rtx-4090\" }\n\n\
                    [[jobs]]\nmodel = \"m\"\nmode = \"room\"\nnode_selector = { room = \"b\" }\n\n\
                    [[jobs]]\nmodel = \"m\"\nmode = \"nowhere\"\nnode_selector = { gpu = \"a100\" }\n";
    let mut fleet = Fleet::start(manifest).unwrap();
    trainer(
        &fleet,
        "#!/bin/sh\necho ok > \"$CIS490_OUTPUT_DIR/o.txt\"\n",
    );
    fleet.start_agent("plain", &[]).unwrap();
    fleet
        .start_agent("labelled", &["--label", "gpu=rtx-4090"])
        .unwrap();
    let jobs = fleet.wait_jobs(3).unwrap();
    let on = |mode: &str| {
        let done = fleet
            .wait_status(&by_mode(&jobs, mode).id, JobStatus::Completed)
            .unwrap();
        done.worker.unwrap().as_str().to_string()
    };
    assert_eq!(on("gpu"), "labelled");
    assert_eq!(on("room"), "plain");
    let nowhere = by_mode(&jobs, "nowhere");
    assert_eq!(fleet.job(&nowhere.id).unwrap().status, JobStatus::Pending);
    let why = explain_text(&fleet, nowhere);
    assert!(
        why.contains("label gpu=rtx-4090, node_selector wants gpu=a100")
            && why.contains("no label gpu (node_selector wants gpu=a100)"),
        "{why}"
    );

    let wide = ctl_ok(&fleet, &["get", "workers", "-o", "wide"]);
    assert!(wide.contains("LABELS"), "{wide}");
    let row = |name: &str| {
        wide.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no row for {name}: {wide}"))
            .to_string()
    };
    assert!(row("labelled").contains("gpu=rtx-4090"), "{wide}");
    assert!(row("plain").contains("room=b"), "{wide}");
    let described = ctl_ok(&fleet, &["describe", "worker", "plain"]);
    assert!(described.contains("room=b"), "{described}");
    let jobs_wide = ctl_ok(&fleet, &["get", "jobs", "-o", "wide"]);
    assert!(jobs_wide.contains("gpu=a100"), "{jobs_wide}");
}

#[test]
fn a_cores_job_waits_while_running_jobs_hold_the_cores() {
    let manifest = "version = 1\n\n[defaults]\ncommand = [\"./train.sh\"]\n\n[models.m]\n\n\
                    [[jobs]]\nmodel = \"m\"\nmode = \"first\"\ncores = 3\n\n\
                    [[jobs]]\nmodel = \"m\"\nmode = \"second\"\ncores = 3\n";
    let mut fleet = Fleet::start(manifest).unwrap();
    // Each trainer runs until the test lets it go.
    let gate = fleet.path("work/go");
    trainer(
        &fleet,
        &format!(
            "#!/bin/sh\nwhile [ ! -e {} ]; do sleep 0.1; done\necho ok > \"$CIS490_OUTPUT_DIR/o.txt\"\n",
            gate.display()
        ),
    );
    fleet
        .start_agent("a", &["--advertise", "cores=4", "--max-concurrent", "2"])
        .unwrap();
    let jobs = fleet.wait_jobs(2).unwrap();
    let first = fleet
        .wait_status(&by_mode(&jobs, "first").id, JobStatus::Running)
        .unwrap();
    let second = by_mode(&jobs, "second");
    let why = wait_until(WAIT, "explain to name the cores", || {
        let why = explain_text(&fleet, second);
        why.contains("needs 3 cores, 1 free").then_some(why)
    })
    .unwrap();
    assert_eq!(
        fleet.job(&second.id).unwrap().status,
        JobStatus::Pending,
        "{why}"
    );
    assert_eq!(fleet.job(&first.id).unwrap().status, JobStatus::Running);
    std::fs::write(&gate, "").unwrap();
    for job in &jobs {
        fleet.wait_status(&job.id, JobStatus::Completed).unwrap();
    }
}
