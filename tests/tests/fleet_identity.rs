//! Worker identity through the real binaries: two agents under one name (the second is
//! refused and exits, the first keeps its job), and per-worker tokens issued, used,
//! checked by `cis490-agent check-server` and revoked with `cis490-reconciler tokens`
//! while the server runs; `cis490ctl status` says which worker credentials are in force.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use cis490_api::{Client, JobStatus};
use cis490_tests::fleet::{Fleet, WAIT};
use cis490_tests::{bin, ChildGuard};
use reqwest::StatusCode;

/// Holds while `work/hold` exists (bounded, so a stray trainer always ends).
const HOLDING_TRAINER: &str = "#!/bin/sh\ni=0\nwhile [ -e hold ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done\necho \"$CIS490_JOB_ID\" > \"$CIS490_OUTPUT_DIR/o.txt\"\n";

fn manifest(jobs: usize) -> String {
    let seeds: Vec<String> = (1..=jobs).map(|s| s.to_string()).collect();
    format!(
        "version = 1\n\n[defaults]\ncommand = [\"sh\", \"train.sh\"]\n\n[models.m]\n\n\
         [[jobs]]\nmodel = \"m\"\nmode = \"id\"\nmatrix = {{ seed = [{}] }}\n",
        seeds.join(", ")
    )
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    )
}

#[test]
fn a_second_agent_under_a_live_name_exits_with_the_reason_and_the_first_keeps_its_job() {
    let mut fleet = Fleet::start(&manifest(1)).unwrap();
    fleet.write_work_file("train.sh", HOLDING_TRAINER).unwrap();
    fleet.write_work_file("hold", "").unwrap();
    let id = fleet.wait_jobs(1).unwrap()[0].id.clone();
    fleet.start_agent("gpu-1", &[]).unwrap();
    let running = fleet.wait_status(&id, JobStatus::Running).unwrap();
    assert_eq!(running.worker.unwrap().as_str(), "gpu-1");

    // The same name from another process (its own state dir and log).
    let mut cmd = Command::new(bin("cis490-agent").unwrap());
    cmd.arg("run")
        .args(["--server", &fleet.url().unwrap(), "--name", "gpu-1"])
        .arg("--work-dir")
        .arg(fleet.path("work"))
        .arg("--state-dir")
        .arg(fleet.path("agent-gpu-1-second"))
        .args(["--heartbeat-s", "1", "--claim-wait-s", "2"])
        .env("CIS490_WORKER_TOKEN", cis490_tests::fleet::WORKER_TOKEN)
        .env_remove("CIS490_SERVER")
        .env_remove("CIS490_AGENT_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(fleet.path("gpu-1-second.log")).unwrap());
    let mut second = ChildGuard::spawn("second gpu-1", cmd).unwrap();
    let status = second.wait_exit(WAIT).unwrap();
    let log = std::fs::read_to_string(fleet.path("gpu-1-second.log")).unwrap();
    assert!(!status.success(), "the second agent must fail: {log}");
    assert!(
        log.contains("holds worker name gpu-1") && log.contains("another --name"),
        "{log}"
    );

    // The first is undisturbed: still running the job, which it then completes.
    assert_eq!(fleet.job(&id).unwrap().status, JobStatus::Running);
    std::fs::remove_file(fleet.path("work/hold")).unwrap();
    let done = fleet.wait_status(&id, JobStatus::Completed).unwrap();
    assert_eq!(done.worker.unwrap().as_str(), "gpu-1");
    assert!(done.artifact_id.is_some());
    let events = fleet
        .rt
        .block_on(fleet.client.events(0, Duration::ZERO))
        .unwrap();
    assert!(
        events.events.iter().any(|e| e.kind == "NameInUse"),
        "{:?}",
        events.events
    );
    let first_log = fleet.log("gpu-1");
    assert!(!first_log.contains("name_in_use"), "{first_log}");
}

#[test]
fn per_worker_tokens_issue_use_check_and_revoke_through_the_binaries() {
    let mut fleet = Fleet::prepare(&manifest(1)).unwrap();
    fleet.shared_worker_token = false;
    fleet.start_server("127.0.0.1:0").unwrap();
    fleet.write_work_file("train.sh", HOLDING_TRAINER).unwrap();
    let state = fleet.path("state");
    let state = state.to_str().unwrap();

    // No worker credential at all: status says the worker routes are open.
    let status = fleet.ctl(&["status"]).unwrap();
    assert!(
        text(&status.stdout).contains("worker routes are open: no worker token configured"),
        "{}",
        describe(&status)
    );

    let issued = fleet
        .reconciler_cli(&["tokens", "issue", "lab-1", "--state-dir", state])
        .unwrap();
    assert!(issued.status.success(), "{}", describe(&issued));
    let token = text(&issued.stdout).trim().to_string();
    assert!(token.starts_with("cis490w_"), "{}", describe(&issued));
    let token_file = fleet.path("lab-1.token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let token_file = token_file.to_str().unwrap();

    let status = fleet.ctl(&["status"]).unwrap();
    assert!(
        !text(&status.stdout).contains("worker routes are open"),
        "{}",
        describe(&status)
    );
    let listed = fleet
        .reconciler_cli(&["tokens", "list", "-o", "json", "--state-dir", state])
        .unwrap();
    assert!(listed.status.success(), "{}", describe(&listed));
    let list: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(list[0]["name"], "lab-1");
    assert!(!text(&listed.stdout).contains(&token));

    // check-server: the token for its own name passes; for another name, or none, fails.
    let ok = fleet
        .agent_cli(&[
            "check-server",
            "--name",
            "lab-1",
            "--worker-token-file",
            token_file,
        ])
        .unwrap();
    assert!(ok.status.success(), "{}", describe(&ok));
    assert!(
        text(&ok.stdout).contains("worker token of worker lab-1"),
        "{}",
        describe(&ok)
    );
    let wrong_name = fleet
        .agent_cli(&[
            "check-server",
            "--name",
            "lab-2",
            "--worker-token-file",
            token_file,
        ])
        .unwrap();
    assert!(!wrong_name.status.success(), "{}", describe(&wrong_name));
    assert!(
        text(&wrong_name.stderr).contains("belongs to worker lab-1"),
        "{}",
        describe(&wrong_name)
    );
    let none = fleet
        .agent_cli(&["check-server", "--name", "lab-1"])
        .unwrap();
    assert!(!none.status.success(), "{}", describe(&none));
    assert!(
        text(&none.stderr).contains("worker_token_file"),
        "{}",
        describe(&none)
    );

    // An agent with only its token file trains the job to completion.
    let id = fleet.wait_jobs(1).unwrap()[0].id.clone();
    fleet
        .start_agent("lab-1", &["--worker-token-file", token_file])
        .unwrap();
    let done = fleet.wait_status(&id, JobStatus::Completed).unwrap();
    assert_eq!(done.worker.unwrap().as_str(), "lab-1");

    // Revoked while the server runs: refused from the next request on.
    let revoked = fleet
        .reconciler_cli(&["tokens", "revoke", "lab-1", "--state-dir", state])
        .unwrap();
    assert!(revoked.status.success(), "{}", describe(&revoked));
    let lab1 = Client::new(&fleet.url().unwrap())
        .unwrap()
        .with_worker_token(Some(token.clone()));
    let err = fleet.rt.block_on(lab1.whoami()).unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::FORBIDDEN), "{err}");
    let refused = fleet
        .agent_cli(&[
            "check-server",
            "--name",
            "lab-1",
            "--worker-token-file",
            token_file,
        ])
        .unwrap();
    assert!(!refused.status.success(), "{}", describe(&refused));
    assert!(
        text(&refused.stderr).contains("refused this agent's worker token"),
        "{}",
        describe(&refused)
    );
    let again = fleet
        .reconciler_cli(&["tokens", "revoke", "lab-1", "--state-dir", state])
        .unwrap();
    assert_eq!(again.status.code(), Some(1), "{}", describe(&again));
}

#[test]
fn status_warns_while_the_shared_worker_token_is_configured() {
    let fleet = Fleet::start(&manifest(1)).unwrap();
    let status = fleet.ctl(&["status"]).unwrap();
    assert!(
        text(&status.stdout)
            .contains("the shared worker token is configured: any holder can act as any worker"),
        "{}",
        describe(&status)
    );
}
