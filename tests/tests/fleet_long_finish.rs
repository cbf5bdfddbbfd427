//! A finished job whose upload takes longer than its lease still completes on its first
//! attempt: the agent keeps heartbeating its lease from the trainer's exit until the job
//! is completed (`agent/src/lease_keeper.rs`).
//!
//! The upload is made to outlast the lease without relying on the machine's speed: the
//! server takes one upload at a time (`max_concurrent_uploads = 1`) and the test holds
//! that place with an upload of its own that stalls, so the agent's upload is refused with
//! 503 `busy` and waits its `Retry-After` (5-10 s, longer than the 3 s lease) before it
//! tries again. The test lets go of the place once the agent has been refused.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use cis490_api::{Capability, ClaimRequest, ClaimResponse, Client, JobStatus, WorkerName};
use cis490_tests::fleet::{Fleet, WAIT, WORKER_TOKEN};
use cis490_tests::wait_until;

/// The lease: the sweeper (every second) takes a job back once this long passes without
/// a heartbeat.
const LEASE_S: u64 = 3;

const TRAINER: &str =
    "#!/bin/sh\necho weights > \"$CIS490_OUTPUT_DIR/weights.bin\"\necho exited >> exits.log\n";

fn manifest() -> String {
    let job = |mode: &str, host: &str| {
        format!(
            "[[jobs]]\nmodel = \"m\"\nmode = \"{mode}\"\nseed = 1\nallowed_hosts = [\"{host}\"]\n"
        )
    };
    format!(
        "version = 1\n\n[defaults]\ncommand = [\"sh\", \"train.sh\"]\nstale_after_s = {LEASE_S}\nmax_attempts = 3\n\n[models.m]\n\n{}\n{}",
        job("finish", "a1"),
        job("holder", "holder")
    )
}

/// Claims the job pinned to `holder` as that worker (the test acts as its agent).
fn claim_as_holder(fleet: &Fleet) -> ClaimResponse {
    let req = ClaimRequest {
        worker: WorkerName::parse("holder").unwrap(),
        capability: Capability {
            hostname: "holder".into(),
            cores: 1,
            ram_total_mib: 1024,
            ram_available_mib: 1024,
            ram_allocatable_mib: 1024,
            max_concurrent: 1,
            ..Capability::default()
        },
    };
    fleet
        .rt
        .block_on(fleet.client.claim(&req, None))
        .unwrap()
        .expect("the holder's job")
}

/// Starts an upload under `claim`'s lease whose body sends one byte and then nothing until
/// `release` fires: it holds the server's only upload place meanwhile.
fn hold_upload_place(
    url: String,
    claim: ClaimResponse,
) -> (
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<()>,
) {
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // A client of its own: the fleet's shares its connections with the fleet's
        // runtime, which only runs while the test thread is inside it.
        let client = Client::new(&url)
            .unwrap()
            .with_worker_token(Some(WORKER_TOKEN.to_string()));
        use futures_util::StreamExt;
        let first = futures_util::stream::once(async { Ok::<_, std::io::Error>(vec![b'x']) });
        let rest = futures_util::stream::once(async move {
            let _ = released.await;
            Ok::<_, std::io::Error>(vec![b'y'])
        });
        let body = reqwest::Body::wrap_stream(first.chain(rest));
        let worker = WorkerName::parse("holder").unwrap();
        // Its answer does not matter (the bytes do not hash to the claimed sha256).
        let _ =
            rt.block_on(client.upload(&claim.job.id, &worker, &claim.lease, &"0".repeat(64), body));
    });
    (release, thread)
}

/// The server's `cis490_uploads_in_flight` gauge (`GET /metrics`).
fn uploads_in_flight(fleet: &Fleet) -> Option<u64> {
    let url = format!("{}/metrics", fleet.url().ok()?);
    let text = fleet
        .rt
        .block_on(async { reqwest::get(&url).await?.text().await })
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("cis490_uploads_in_flight "))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn a_job_whose_upload_outlasts_its_lease_completes_on_attempt_one() {
    let mut fleet = Fleet::prepare(&manifest()).unwrap();
    let config = fleet.path("server.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("max_concurrent_uploads = 1\n");
    std::fs::write(&config, text).unwrap();
    fleet.start_server("127.0.0.1:0").unwrap();
    fleet.write_work_file("train.sh", TRAINER).unwrap();
    let jobs = fleet.wait_jobs(2).unwrap();
    let id = jobs.iter().find(|j| j.mode == "finish").unwrap().id.clone();

    let holder = claim_as_holder(&fleet);
    let (release, uploader) = hold_upload_place(fleet.url().unwrap(), holder.clone());
    wait_until(WAIT, "the held upload to take the only place", || {
        (uploads_in_flight(&fleet)? == 1).then_some(())
    })
    .unwrap();

    fleet.start_agent("a1", &[]).unwrap();
    // The agent packed the output and was refused: it now waits Retry-After (5-10 s),
    // longer than the lease, with only its lease keeper's heartbeats keeping the lease.
    wait_until(WAIT, "the agent's upload to be refused", || {
        fleet.log("a1").contains("upload failed").then_some(())
    })
    .unwrap();
    release.send(()).unwrap();
    uploader.join().unwrap();

    // Ends when the job does, or as soon as a second attempt shows the first was lost.
    fleet
        .wait_jobs_until(WAIT, "the job to end", |jobs| {
            jobs.iter()
                .any(|j| j.id == id && (j.status.is_terminal() || j.attempts > 1))
        })
        .unwrap();
    let job = fleet.job(&id).unwrap();
    assert_eq!(job.status, JobStatus::Completed, "{:#?}", job.events);
    assert_eq!(job.attempts, 1, "{:#?}", job.events);
    assert!(
        !job.events.iter().any(|e| e.kind == "LeaseExpired"),
        "{:#?}",
        job.events
    );
    let runs = std::fs::read_to_string(fleet.path("work/exits.log")).unwrap();
    assert_eq!(runs.lines().count(), 1, "the trainer ran again");
}
