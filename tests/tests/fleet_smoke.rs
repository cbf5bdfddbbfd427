//! The seed's smoke scenario on the real binaries: the 14-job example manifest, one CPU
//! agent, the example trainer; and `cis490-reconciler dev` brought up, run to the end and
//! stopped with Ctrl-C.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use cis490_api::{ArtifactView, Client, JobFilter, JobStatus, JobView};
use cis490_tests::fleet::{processes_under, Fleet, WAIT};
use cis490_tests::{
    bin, sha256_file, stored_bundle, wait_until, workspace_root, ChildGuard, LISTENING_PREFIX,
};

fn example_manifest() -> String {
    std::fs::read_to_string(workspace_root().join("etc/training_manifest.toml.example")).unwrap()
}

fn is_demo_failure(job: &JobView) -> bool {
    job.labels.get("experiment").map(String::as_str) == Some("demo-failure")
}

/// What a host named `cpu-box` without CUDA may run: no CUDA or VRAM requirement, not
/// pinned elsewhere. (prefer_cuda jobs count: no Ready CUDA host exists in this test.)
fn cpu_eligible(job: &JobView) -> bool {
    let c = &job.constraints;
    !c.require_cuda
        && c.min_vram_gib <= 0.0
        && (c.allowed_hosts.is_empty() || c.allowed_hosts.iter().any(|h| h == "cpu-box"))
}

/// Every completed job's bundle is in the store under `blobs/<sha256>/`, its bytes
/// hash to the artifact ID, and the server's artifact listing has its row.
fn assert_artifacts_stored(store: &Path, rows: &[ArtifactView], completed: &[&JobView]) {
    for job in completed {
        let artifact = job
            .artifact_id
            .as_ref()
            .expect("completed job has an artifact");
        let bundle = stored_bundle(store, artifact.as_str());
        assert!(bundle.is_file(), "missing {}", bundle.display());
        assert_eq!(sha256_file(&bundle).unwrap(), artifact.as_str());
        assert!(
            rows.iter()
                .any(|r| &r.artifact_id == artifact && r.job_id == job.id),
            "no listing row for job {} artifact {}",
            job.id.short(),
            artifact.short()
        );
    }
}

#[test]
fn cpu_agent_runs_exactly_the_cpu_eligible_example_jobs() {
    let mut fleet = Fleet::start(&example_manifest()).unwrap();
    fleet.copy_example_trainer().unwrap();
    let all = fleet.wait_jobs(14).unwrap();
    let expected: BTreeSet<String> = all
        .iter()
        .filter(|j| cpu_eligible(j))
        .map(|j| j.id.to_string())
        .collect();
    // 3 + 1 + 4 gbt, two CPU-friendly mlp, and the demo failure.
    assert_eq!(expected.len(), 11, "the example manifest changed");
    let bad = all.iter().find(|j| is_demo_failure(j)).unwrap().id.clone();
    assert!(expected.contains(bad.as_str()));

    fleet
        .start_agent("cpu-box", &["--advertise", "cuda=false,ram_gib=8"])
        .unwrap();
    let jobs = fleet
        .wait_jobs_until(WAIT * 2, "the cpu-eligible jobs to finish", |jobs| {
            jobs.iter()
                .filter(|j| expected.contains(j.id.as_str()))
                .all(|j| j.status.is_terminal())
        })
        .unwrap();
    // The agent asks again after its last job; only then is "it claims nothing else" shown.
    wait_until(WAIT, "cpu-box to be idle", || {
        let workers = fleet.rt.block_on(fleet.client.workers()).ok()?;
        workers
            .iter()
            .any(|w| w.name.as_str() == "cpu-box" && w.running_jobs.is_empty())
            .then_some(())
    })
    .unwrap();
    let jobs_now = fleet.jobs();
    for job in &jobs_now {
        if expected.contains(job.id.as_str()) {
            assert_eq!(job.worker.as_ref().unwrap().as_str(), "cpu-box");
            let want = if job.id == bad {
                JobStatus::Failed
            } else {
                JobStatus::Completed
            };
            assert_eq!(job.status, want, "job {} {}", job.id.short(), job.mode);
        } else {
            assert_eq!(
                job.status,
                JobStatus::Pending,
                "{} was claimed",
                job.id.short()
            );
            assert_eq!(job.attempts, 0);
        }
    }
    let completed: Vec<&JobView> = jobs
        .iter()
        .filter(|j| j.status == JobStatus::Completed)
        .collect();
    assert_eq!(completed.len(), 10);
    let store = fleet.store_root();
    assert_artifacts_stored(&store, &fleet.artifacts().unwrap(), &completed);
    assert!(
        !store.join("index.jsonl").exists(),
        "the index is the database's: no index file in the store"
    );

    // The trainer's own message reaches the operator.
    let message = "learning_rate must be in (0, 10]";
    let failed = fleet.job(&bad).unwrap();
    let error = failed.error.expect("failed job carries its error");
    let api_text = format!("{} {}", error.reason, error.log_tail.unwrap_or_default());
    assert!(api_text.contains(message), "{api_text}");
    let out = fleet.ctl(&["describe", "job", bad.short()]).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(2) && stderr.contains("not yet implemented") {
        eprintln!("cis490ctl is not built in this branch: checked the error through the API only");
    } else {
        assert!(out.status.success(), "cis490ctl describe failed: {stderr}");
        assert!(stdout.contains(message), "{stdout}");
        assert!(stdout.contains(bad.short()), "{stdout}");
    }
}

/// Reads `dev`'s stdout: returns the URL from its listening line, and keeps draining.
fn listening_url(process: &mut ChildGuard) -> String {
    let stdout = process.child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(url) = line.strip_prefix(LISTENING_PREFIX) {
                let _ = tx.send(url.trim().to_string());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("dev printed no listening line")
}

fn start_dev(cwd: &Path) -> (ChildGuard, String) {
    let mut cmd = Command::new(bin("cis490-reconciler").unwrap());
    cmd.args(["dev", "--listen", "127.0.0.1:0"])
        .current_dir(cwd)
        // Not started by cargo: dev must not try to build anything.
        .env_remove("CARGO")
        .env_remove("CARGO_PKG_NAME")
        .env_remove("CARGO_MANIFEST_DIR")
        .env_remove("CIS490_OPERATOR_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(cwd.join("dev.log")).unwrap());
    let mut process = ChildGuard::spawn("cis490-reconciler dev", cmd).unwrap();
    let url = listening_url(&mut process);
    (process, url)
}

fn stop_dev(mut process: ChildGuard, cwd: &Path) {
    process.signal("INT").unwrap();
    let status = process.wait_exit(Duration::from_secs(60)).unwrap();
    let log = std::fs::read_to_string(cwd.join("dev.log")).unwrap_or_default();
    assert!(status.success(), "dev exited with {status:?}:\n{log}");
    let left = processes_under(cwd);
    assert!(left.is_empty(), "processes left behind: {left:?}");
}

#[test]
fn dev_fleet_runs_every_example_job_and_stops_cleanly_on_ctrl_c() {
    // A fresh "checkout": just the files dev needs.
    let cwd = tempfile::Builder::new()
        .prefix("cis490-dev-")
        .tempdir()
        .unwrap();
    std::fs::create_dir_all(cwd.path().join("etc/examples")).unwrap();
    for file in [
        "etc/training_manifest.toml.example",
        "etc/examples/trainer.py",
    ] {
        std::fs::copy(workspace_root().join(file), cwd.path().join(file)).unwrap();
    }
    let (process, url) = start_dev(cwd.path());
    let client = Client::new(&url).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let jobs_of = |client: &Client| {
        rt.block_on(client.jobs(&JobFilter::default()))
            .unwrap_or_default()
    };
    let finished = wait_until(WAIT * 2, "13 jobs completed and the bad one failed", || {
        let jobs = jobs_of(&client);
        let done = jobs.len() == 14
            && jobs.iter().all(|j| {
                j.status
                    == if is_demo_failure(j) {
                        JobStatus::Failed
                    } else {
                        JobStatus::Completed
                    }
            });
        done.then_some(jobs)
    })
    .unwrap_or_else(|e| {
        let log = std::fs::read_to_string(cwd.path().join("dev.log")).unwrap_or_default();
        panic!("{e}\n{:?}\ndev log:\n{log}", jobs_of(&client))
    });
    let state = cwd.path().join(".cis490-dev");
    assert!(state.join("training_manifest.toml").is_file());
    // Every job ran on the host the example's constraints allow.
    for job in &finished {
        let worker = job.worker.as_ref().unwrap().as_str();
        if job.constraints.require_cuda {
            assert_eq!(worker, "gpu-box", "{}", job.id.short());
        }
    }
    let token = std::fs::read_to_string(state.join("operator.token")).unwrap();
    stop_dev(process, cwd.path());

    // Running it again resumes: same jobs, same results, same token, nothing re-run.
    let (process, url) = start_dev(cwd.path());
    let client = Client::new(&url).unwrap();
    let again = jobs_of(&client);
    assert_eq!(again.len(), 14);
    for job in &finished {
        let now = again.iter().find(|j| j.id == job.id).unwrap();
        assert_eq!(
            (now.status, &now.artifact_id, now.attempts),
            (job.status, &job.artifact_id, job.attempts)
        );
    }
    assert_eq!(
        std::fs::read_to_string(state.join("operator.token")).unwrap(),
        token
    );
    stop_dev(process, cwd.path());
}
