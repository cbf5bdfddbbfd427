//! Black-box tests of cis490ctl's operator tools (issue 13) against the real server:
//! hold / release, `get job ID`, `describe -o json|yaml`, `get events`, multi-term label
//! selectors, `delete worker`, `apply -f` and client config contexts.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Output;

use cis490_api::{Capability, ClaimRequest, JobStatus, JobView, WorkerName};
use cis490_tests::fleet::Fleet;

/// Two jobs of model gbt, labelled, a lease of 90 s.
const MANIFEST: &str = r#"version = 1

[defaults]
max_attempts = 2
stale_after_s = 90
command = ["python3", "trainer.py"]

[[jobs]]
model = "gbt"
mode = "realistic"
seed = 1
labels = { team = "a", gpu = "none" }

[[jobs]]
model = "gbt"
mode = "oracle"
seed = 2
labels = { team = "a", gpu = "small" }

[[jobs]]
model = "mlp"
mode = "realistic"
seed = 3
labels = { team = "b", gpu = "small" }
"#;

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "cis490ctl failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn refused(out: Output) -> String {
    assert!(
        !out.status.success(),
        "cis490ctl should have failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

fn capability(name: &str) -> Capability {
    Capability {
        hostname: name.to_string(),
        os: "linux".into(),
        arch: "x86_64".into(),
        cores: 8,
        ram_total_mib: 32 * 1024,
        ram_available_mib: 30 * 1024,
        ram_allocatable_mib: 30 * 1024,
        agent_version: "0.1.0-e2e".into(),
        max_concurrent: 4,
        ..Capability::default()
    }
}

/// One claim by worker `name`: the job's ID, or None when nothing is claimable.
fn claim(fleet: &Fleet, name: &str) -> Option<cis490_api::ClaimResponse> {
    let req = ClaimRequest {
        worker: WorkerName::parse(name).unwrap(),
        capability: capability(name),
    };
    fleet.rt.block_on(fleet.client.claim(&req, None)).unwrap()
}

fn start() -> (Fleet, Vec<JobView>) {
    let fleet = Fleet::start(MANIFEST).unwrap();
    let mut jobs = fleet.wait_jobs(3).unwrap();
    jobs.sort_by_key(|j| j.mode.clone() + &j.model);
    (fleet, jobs)
}

#[test]
fn hold_keeps_a_job_unclaimable_until_release() {
    let (fleet, jobs) = start();
    let held = jobs.iter().find(|j| j.model == "mlp").unwrap();
    let short = held.id.short();

    let out = ok(fleet.ctl(&["hold", short]).unwrap());
    assert_eq!(out.trim(), format!("job/{short} held"));
    let listing = ok(fleet
        .ctl(&["get", "jobs", "--status", "held", "-o", "name"])
        .unwrap());
    assert_eq!(listing.trim(), format!("job/{}", held.id));
    let described = ok(fleet.ctl(&["describe", "job", short]).unwrap());
    assert!(described.contains("held by an operator"), "{described}");
    let status = ok(fleet.ctl(&["status"]).unwrap());
    assert!(status.contains("held"), "{status}");

    // The two other jobs are claimed; the held one never is.
    let mut claimed = Vec::new();
    while let Some(c) = claim(&fleet, "w1") {
        claimed.push(c.job.id);
    }
    assert_eq!(claimed.len(), 2);
    assert!(!claimed.contains(&held.id), "the held job was claimed");

    // requeue refuses a held job, and names release.
    let err = refused(fleet.ctl(&["requeue", short]).unwrap());
    assert!(err.contains("cis490ctl release"), "{err}");
    // release of a job that is not held: a clear 409.
    let err = refused(fleet.ctl(&["release", claimed[0].short()]).unwrap());
    assert!(err.contains("only held jobs can be released"), "{err}");

    let out = ok(fleet.ctl(&["release", short]).unwrap());
    assert_eq!(out.trim(), format!("job/{short} released (pending)"));
    let c = claim(&fleet, "w1").expect("the released job is claimable");
    assert_eq!(c.job.id, held.id);
    assert_eq!(fleet.job(&held.id).unwrap().status, JobStatus::Claimed);
}

#[test]
fn get_one_job_in_every_format_and_describe_as_data() {
    let (fleet, jobs) = start();
    let job = &jobs[0];
    let short = job.id.short();

    let table = ok(fleet.ctl(&["get", "job", short]).unwrap());
    assert_eq!(table.lines().count(), 2, "{table}");
    assert!(table.lines().nth(1).unwrap().starts_with(short), "{table}");
    let wide = ok(fleet.ctl(&["get", "job", short, "-o", "wide"]).unwrap());
    assert!(
        wide.lines().next().unwrap().contains("CONSTRAINTS"),
        "{wide}"
    );
    let name = ok(fleet.ctl(&["get", "job", short, "-o", "name"]).unwrap());
    assert_eq!(name.trim(), format!("job/{}", job.id));
    // JSON and YAML: the job itself (not a list), with its events.
    let json: JobView = serde_json::from_str(&ok(fleet
        .ctl(&["get", "job", short, "-o", "json"])
        .unwrap()))
    .unwrap();
    assert_eq!(json.id, job.id);
    assert_eq!(json.events[0].kind, "Created");
    let yaml: JobView = serde_yaml_ng::from_str(&ok(fleet
        .ctl(&["get", "job", short, "-o", "yaml"])
        .unwrap()))
    .unwrap();
    assert_eq!(yaml.id, job.id);
    let err = refused(fleet.ctl(&["get", "job", "ffffffff"]).unwrap());
    assert!(err.contains("not found") || err.contains("no job"), "{err}");

    let described: serde_json::Value = serde_json::from_str(&ok(fleet
        .ctl(&["describe", "job", short, "-o", "json"])
        .unwrap()))
    .unwrap();
    assert_eq!(described["job"]["id"], job.id.as_str());
    assert!(described["explain"]["summary"].is_string(), "{described}");

    claim(&fleet, "w1").unwrap();
    let described: serde_yaml_ng::Value = serde_yaml_ng::from_str(&ok(fleet
        .ctl(&["describe", "worker", "w1", "-o", "yaml"])
        .unwrap()))
    .unwrap();
    assert_eq!(described["worker"]["name"].as_str(), Some("w1"));
    assert_eq!(described["jobs"].as_sequence().unwrap().len(), 1);
    let kinds: Vec<&str> = described["events"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"Claimed"), "{kinds:?}");
}
