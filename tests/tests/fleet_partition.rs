//! A network partition on the real binaries (Linux, as root, with `ip netns`): an agent in
//! its own network namespace, joined to the server by a veth pair, loses its link for
//! longer than its lease. The job is reassigned to a second agent; once the link is back
//! the partitioned agent's late completion is refused with 409.
//!
//! The addresses (10.249.N.0/30) exist only on this test's veth pair: the server listens on
//! the root side, the islanded agent sits on the other. Without root or `ip netns` the test
//! says why it is skipped and passes.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};

use cis490_api::{CompleteRequest, JobStatus, WorkerName};
use cis490_tests::fleet::{Fleet, WAIT};
use cis490_tests::wait_until;
use reqwest::StatusCode;

/// Attempt 1 (the islanded agent's) holds while `work/hold` exists; every attempt records
/// that it ran to completion.
const TRAINER: &str = "#!/bin/sh\ni=0\nif [ \"$CIS490_ATTEMPT\" = 1 ]; then\n  while [ -e hold ] && [ $i -lt 900 ]; do sleep 0.1; i=$((i+1)); done\nfi\necho \"$CIS490_JOB_ID $CIS490_ATTEMPT\" > \"$CIS490_OUTPUT_DIR/o.txt\"\necho \"attempt $CIS490_ATTEMPT\" >> runs.log\n";

/// Runs `ip ARGS`; Err with its stderr when it fails.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `ip`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// A network namespace with a veth pair to the root namespace; removed on drop.
struct Island {
    ns: String,
    host_if: String,
    ns_if: String,
    host_ip: String,
}

impl Island {
    /// Err(why) when this machine cannot do it (the test is then skipped).
    fn create() -> Result<Island, String> {
        if effective_uid() != Some(0) {
            return Err("not running as root (network namespaces need it)".into());
        }
        let id = std::process::id();
        let net = id % 200 + 20;
        let island = Island {
            ns: format!("cis490t{id}"),
            host_if: format!("c4h{id}"),
            ns_if: format!("c4n{id}"),
            host_ip: format!("10.249.{net}.1"),
        };
        ip(&["netns", "add", &island.ns]).map_err(|e| format!("ip netns unavailable: {e}"))?;
        // From here on, Drop cleans up whatever was made.
        let ns_ip = format!("10.249.{net}.2/30");
        let host_cidr = format!("{}/30", island.host_ip);
        let steps: [&[&str]; 7] = [
            &[
                "link",
                "add",
                &island.host_if,
                "type",
                "veth",
                "peer",
                "name",
                &island.ns_if,
            ],
            &["link", "set", &island.ns_if, "netns", &island.ns],
            &["addr", "add", &host_cidr, "dev", &island.host_if],
            &["link", "set", &island.host_if, "up"],
            &[
                "netns",
                "exec",
                &island.ns,
                "ip",
                "addr",
                "add",
                &ns_ip,
                "dev",
                &island.ns_if,
            ],
            &["netns", "exec", &island.ns, "ip", "link", "set", "lo", "up"],
            &[
                "netns",
                "exec",
                &island.ns,
                "ip",
                "link",
                "set",
                &island.ns_if,
                "up",
            ],
        ];
        for step in steps {
            ip(step).map_err(|e| format!("cannot build the test network: {e}"))?;
        }
        Ok(island)
    }

    /// Takes the island's side of the link down (`up = false`) or up again.
    fn set_link(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&[
            "netns",
            "exec",
            &self.ns,
            "ip",
            "link",
            "set",
            &self.ns_if,
            state,
        ])
        .unwrap();
    }
}

impl Drop for Island {
    fn drop(&mut self) {
        // Deleting one end of a veth pair deletes both; then the namespace.
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.ns]);
    }
}

#[test]
fn partitioned_agents_job_is_reassigned_and_its_late_completion_refused() {
    let island = match Island::create() {
        Ok(island) => island,
        Err(why) => {
            eprintln!("SKIPPED fleet_partition: {why}");
            return;
        }
    };
    let manifest = "version = 1\n\n[defaults]\ncommand = [\"sh\", \"train.sh\"]\nmax_attempts = 3\nstale_after_s = 3\n\n[models.m]\n\n[[jobs]]\nmodel = \"m\"\nmode = \"partitioned\"\nseed = 1\n";
    let mut fleet = Fleet::prepare(manifest).unwrap();
    fleet.write_work_file("train.sh", TRAINER).unwrap();
    fleet.write_work_file("hold", "").unwrap();
    // Plain HTTP on a non-loopback address needs --insecure; the address exists only on
    // this test's veth pair, and the test is about partitions, not transport security.
    fleet
        .start_server_with(&format!("{}:0", island.host_ip), &["--insecure"])
        .unwrap();
    let url = fleet.url().unwrap();
    let id = fleet.wait_jobs(1).unwrap()[0].id.clone();

    let wrapper = ["ip", "netns", "exec", island.ns.as_str()];
    let cmd = fleet
        .agent_command_via(&wrapper, "island", &url, &[])
        .unwrap();
    fleet.spawn_agent("island", cmd).unwrap();
    let running = fleet.wait_status(&id, JobStatus::Running).unwrap();
    assert_eq!(running.worker.unwrap().as_str(), "island");
    let island_lease = fleet.current_lease(&id).unwrap();

    // Cut the link for longer than the 3 s lease: the job goes to the mainland agent.
    island.set_link(false);
    fleet.start_agent("mainland", &[]).unwrap();
    let done = fleet.wait_status(&id, JobStatus::Completed).unwrap();
    assert_eq!(done.worker.as_ref().unwrap().as_str(), "mainland");
    assert_eq!(done.attempts, 2);

    // The islanded trainer finishes while cut off; its agent tries to hand the result in.
    std::fs::remove_file(fleet.path("work/hold")).unwrap();
    wait_until(WAIT, "the islanded trainer to finish", || {
        let runs = std::fs::read_to_string(fleet.path("work/runs.log")).ok()?;
        runs.contains("attempt 1").then_some(())
    })
    .unwrap();
    island.set_link(true);
    wait_until(
        WAIT,
        "the islanded agent to learn its lease is gone",
        || {
            // The agent learns it from a heartbeat or from the upload, whichever comes first
            // after the link is back; both log it, in different words.
            let log = fleet.log("island").to_lowercase();
            (log.contains("leaselost") || log.contains("lease lost")).then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\nisland log:\n{}", fleet.log("island")));

    // The same late completion, replayed: 409 lease_lost.
    let late = fleet.rt.block_on(fleet.client.complete(
        &id,
        &CompleteRequest {
            worker: WorkerName::parse("island").unwrap(),
            lease: island_lease,
            artifact_id: done.artifact_id.clone(),
            upload: None,
            report: Default::default(),
        },
    ));
    let err = late.expect_err("the partitioned agent's completion must be refused");
    assert_eq!(err.status(), Some(StatusCode::CONFLICT), "{err}");
    assert!(err.is_lease_lost(), "{err}");
    let after = fleet.job(&id).unwrap();
    assert_eq!(after.status, JobStatus::Completed);
    assert_eq!(after.worker.unwrap().as_str(), "mainland");
    assert_eq!(after.artifact_id, done.artifact_id);
    // The agents stop before the namespace goes (fields drop in order: fleet first).
    drop(fleet);
    drop(island);
}
