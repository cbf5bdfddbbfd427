//! A finished job whose packing and upload take longer than its lease still completes on
//! its first attempt: the agent keeps heartbeating its lease from the trainer's exit until
//! the job is completed (`agent/src/lease_keeper.rs`).
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use cis490_api::JobStatus;
use cis490_tests::fleet::Fleet;

/// Megabytes of incompressible output: packing (zstd, sha256) and uploading it (the
/// server hashes and fsyncs it too) takes the debug binaries several leases.
const OUTPUT_MIB: u32 = 128;
/// The lease: the sweeper takes a job back once this long passes without a heartbeat.
const LEASE_S: u64 = 3;

#[test]
fn a_job_whose_pack_and_upload_outlast_its_lease_completes_on_attempt_one() {
    let manifest = format!(
        "version = 1\n\n[defaults]\ncommand = [\"sh\", \"train.sh\"]\nstale_after_s = {LEASE_S}\nmax_attempts = 3\n\n[models.m]\n\n[[jobs]]\nmodel = \"m\"\nmode = \"big\"\nseed = 1\n"
    );
    let mut fleet = Fleet::start(&manifest).unwrap();
    fleet
        .write_work_file(
            "train.sh",
            &format!(
                "#!/bin/sh\nhead -c {}M /dev/urandom > \"$CIS490_OUTPUT_DIR/weights.bin\"\necho exited >> exits.log\n",
                OUTPUT_MIB
            ),
        )
        .unwrap();
    let id = fleet.wait_jobs(1).unwrap()[0].id.clone();
    fleet.start_agent("a1", &[]).unwrap();
    // Time from the trainer's exit to the completion: pack, upload, complete.
    let exits = fleet.path("work/exits.log");
    cis490_tests::wait_until(cis490_tests::fleet::WAIT, "the trainer to exit", || {
        exits.exists().then_some(())
    })
    .unwrap();
    let exited = Instant::now();
    // Ends when the job does, or as soon as a second attempt shows the first was lost.
    fleet
        .wait_jobs_until(cis490_tests::fleet::WAIT, "the job to end", |jobs| {
            jobs.iter()
                .any(|j| j.id == id && (j.status.is_terminal() || j.attempts > 1))
        })
        .unwrap();
    let finishing = exited.elapsed();
    eprintln!("from the trainer's exit to the job's end: {finishing:?}");
    let job = fleet.job(&id).unwrap();
    assert_eq!(job.status, JobStatus::Completed, "{:#?}", job.events);
    assert_eq!(job.attempts, 1, "{:#?}", job.events);
    assert!(
        !job.events.iter().any(|e| e.kind == "LeaseExpired"),
        "{:#?}",
        job.events
    );
    // The sweeper runs every second (the fleet's server.toml): past this a lost lease
    // would have been taken back.
    assert!(
        finishing.as_secs_f64() > (LEASE_S + 1) as f64,
        "pack and upload took {finishing:?}, not longer than the {LEASE_S} s lease and a \
         sweep: the test proves nothing; raise OUTPUT_MIB"
    );
    let runs = std::fs::read_to_string(&exits).unwrap();
    assert_eq!(runs.lines().count(), 1, "the trainer ran again");
}
