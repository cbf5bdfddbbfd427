//! Logs on the real binaries: a trainer's 20,000 numbered lines all reach `cis490ctl logs`
//! in order, `logs -f` started while it runs gets every line with no gap, and after a retry
//! `--attempt 1` and `--previous` show the failed attempt's log, not the retry's.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use cis490_api::JobStatus;
use cis490_tests::fleet::{Fleet, WAIT};
use cis490_tests::ChildGuard;

/// Prints lines 0..10000, waits (bounded) until `work/go` exists, prints 10000..20000.
const TWO_HALVES: &str = "#!/bin/sh\ni=0\nwhile [ $i -lt 10000 ]; do echo \"line $i\"; i=$((i+1)); done\nn=0\nwhile [ ! -e go ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n+1)); done\nwhile [ $i -lt 20000 ]; do echo \"line $i\"; i=$((i+1)); done\necho done > \"$CIS490_OUTPUT_DIR/o.txt\"\n";

/// Attempt 1 fails with its own output; attempt 2 succeeds with another.
const FAILS_ONCE: &str = "#!/bin/sh\necho \"output of attempt $CIS490_ATTEMPT\"\nif [ \"$CIS490_ATTEMPT\" = 1 ]; then echo 'ValueError: first try' >&2; exit 1; fi\necho ok > \"$CIS490_OUTPUT_DIR/o.txt\"\n";

fn manifest(defaults: &str) -> String {
    format!(
        "version = 1\n\n[defaults]\ncommand = [\"sh\", \"train.sh\"]\n{defaults}\n\n[models.m]\n\n[[jobs]]\nmodel = \"m\"\nmode = \"logs\"\nseed = 1\n"
    )
}

fn expected_lines(n: usize) -> String {
    (0..n).map(|i| format!("line {i}\n")).collect()
}

/// The first place two texts differ, for a readable failure.
fn first_difference(got: &str, want: &str) -> String {
    let at = got
        .lines()
        .zip(want.lines())
        .position(|(g, w)| g != w)
        .unwrap_or_else(|| got.lines().count().min(want.lines().count()));
    format!(
        "{} lines, {} expected; first difference at line {at}: {:?} vs {:?}",
        got.lines().count(),
        want.lines().count(),
        got.lines().nth(at),
        want.lines().nth(at)
    )
}

#[test]
fn logs_show_every_line_and_follow_without_gaps() {
    let mut fleet = Fleet::start(&manifest("")).unwrap();
    fleet.write_work_file("train.sh", TWO_HALVES).unwrap();
    let id = fleet.wait_jobs(1).unwrap()[0].id.clone();
    fleet.start_agent("a1", &[]).unwrap();
    fleet.wait_status(&id, JobStatus::Running).unwrap();

    // Follow from the start while the trainer runs (it holds after its first half).
    let follow_out = fleet.path("follow.out");
    let mut cmd = fleet.ctl_command(&["logs", "-f", id.short()]).unwrap();
    cmd.stdout(std::fs::File::create(&follow_out).unwrap())
        .stderr(std::fs::File::create(fleet.path("follow.err")).unwrap());
    let mut follower = ChildGuard::spawn("logs -f", cmd).unwrap();
    cis490_tests::wait_until(WAIT, "logs -f has the first half", || {
        let text = std::fs::read_to_string(&follow_out).unwrap_or_default();
        text.contains("line 9999\n").then_some(())
    })
    .unwrap();
    fleet.write_work_file("go", "").unwrap();
    fleet.wait_status(&id, JobStatus::Completed).unwrap();
    let status = follower.wait_exit(WAIT).unwrap();
    assert!(status.success(), "logs -f exited with {status}");
    let want = expected_lines(20_000);
    let followed = std::fs::read_to_string(&follow_out).unwrap();
    assert!(
        followed == want,
        "logs -f: {}",
        first_difference(&followed, &want)
    );

    // The completed job's whole log, and its end.
    let out = fleet.ctl(&["logs", id.short()]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = String::from_utf8(out.stdout).unwrap();
    assert!(all == want, "logs: {}", first_difference(&all, &want));
    let out = fleet.ctl(&["logs", id.short(), "--tail", "3"]).unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "line 19997\nline 19998\nline 19999\n"
    );
}

#[test]
fn attempt_and_previous_show_the_failed_attempts_log_after_a_retry() {
    let mut fleet = Fleet::start(&manifest("retries_on_failure = 1\nmax_attempts = 2")).unwrap();
    fleet.write_work_file("train.sh", FAILS_ONCE).unwrap();
    let id = fleet.wait_jobs(1).unwrap()[0].id.clone();
    fleet.start_agent("a1", &[]).unwrap();
    let done = fleet.wait_status(&id, JobStatus::Completed).unwrap();
    assert_eq!(done.attempts, 2);
    let logs = |args: &[&str]| {
        let mut all = vec!["logs", id.short()];
        all.extend_from_slice(args);
        let out = fleet.ctl(&all).unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let latest = logs(&[]);
    assert_eq!(latest, "output of attempt 2\n");
    let first = "output of attempt 1\nValueError: first try\n";
    assert_eq!(logs(&["--attempt", "1"]), first);
    assert_eq!(logs(&["--previous"]), first);
    assert_eq!(logs(&["--attempt", "2"]), latest);
    // Nothing before the first attempt.
    let out = fleet
        .ctl(&["logs", id.short(), "--attempt", "1", "--previous"])
        .unwrap();
    assert!(!out.status.success());
}
