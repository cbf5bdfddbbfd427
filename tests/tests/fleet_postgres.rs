//! Two servers on one PostgreSQL database. Three agents that know both, and `kill -9` of
//! the leading server mid-run: every job completes exactly once, the other server takes over
//! reconciling (a manifest edit after the kill applies), and a `wait` and a `get events -w`
//! that ran across the kill saw every event. A per-worker token issued with `tokens
//! --database` works on both servers until it is revoked. Needs a server named by `CIS490_TEST_POSTGRES`
//! (`eval "$(.ci/postgres.sh start)"`); without one it says so and passes, unless
//! `CIS490_REQUIRE_POSTGRES=1` (CI).
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use cis490_api::{Client, JobStatus};
use cis490_tests::fleet::{Fleet, WAIT};
use cis490_tests::scratch_postgres::ScratchPostgres;
use cis490_tests::{sha256_file, stored_bundle, wait_until, ChildGuard};

/// Records that it ran, and writes an output unique to the job.
const TRAINER: &str = "#!/bin/sh\nsleep 1\necho \"$CIS490_JOB_ID\" > \"$CIS490_OUTPUT_DIR/o.txt\"\necho \"$CIS490_JOB_ID\" >> runs.log\n";

fn manifest(seeds: std::ops::RangeInclusive<u32>) -> String {
    let seeds: Vec<String> = seeds.map(|s| s.to_string()).collect();
    format!(
        "version = 1\n\n[defaults]\ncommand = [\"sh\", \"train.sh\"]\nmax_attempts = 3\nstale_after_s = 10\n\n[models.m]\n\n[[jobs]]\nmodel = \"m\"\nmode = \"quick\"\nmatrix = {{ seed = [{}] }}\n",
        seeds.join(", ")
    )
}

fn leads(rt: &tokio::runtime::Runtime, url: &str) -> Option<bool> {
    let client = Client::new(url).ok()?;
    rt.block_on(client.health()).ok().map(|h| h.leader)
}

/// Every event sequence number in the log, read through `client`.
fn all_event_seqs(fleet: &Fleet) -> BTreeSet<u64> {
    let mut seqs = BTreeSet::new();
    let mut since = 0;
    loop {
        let page = fleet
            .rt
            .block_on(fleet.client.events(since, Duration::ZERO))
            .unwrap();
        seqs.extend(page.events.iter().map(|e| e.seq));
        if page.next <= since {
            return seqs;
        }
        since = page.next;
    }
}

#[test]
fn killing_the_leading_server_loses_nothing_and_the_other_takes_over() {
    let Some(db) = ScratchPostgres::create("fleet_failover").unwrap() else {
        return;
    };
    let mut fleet = Fleet::prepare(&manifest(1..=30)).unwrap();
    fleet.write_work_file("train.sh", TRAINER).unwrap();
    let store = fleet.path("shared-store");
    let shared = [
        "--database",
        db.url.as_str(),
        "--store-dir",
        store.to_str().unwrap(),
    ];
    // The first server up takes the leader lock; the second follows.
    let mut first = Some(fleet.start_another_server("state-a", &shared).unwrap());
    let url_a = first.as_ref().unwrap().url.clone();
    wait_until(WAIT, "server A to lead", || {
        leads(&fleet.rt, &url_a).filter(|l| *l)
    })
    .unwrap();
    let second = fleet.start_another_server("state-b", &shared).unwrap();
    let url_b = second.url.clone();
    assert_eq!(
        leads(&fleet.rt, &url_b),
        Some(false),
        "B follows while A leads"
    );
    let both = format!("{url_a},{url_b}");
    fleet.use_servers(&both).unwrap();
    let all = fleet.wait_jobs(30).unwrap();

    // Followers of the event log and of the jobs, both across the kill.
    let events_out = fleet.path("events.out");
    let mut events_cmd = fleet
        .ctl_command(&["get", "events", "-w", "-o", "name"])
        .unwrap();
    events_cmd
        .stdout(std::fs::File::create(&events_out).unwrap())
        .stderr(std::fs::File::create(fleet.path("events.err")).unwrap());
    let mut events_follow = ChildGuard::spawn("get events -w", events_cmd).unwrap();
    let mut wait_args = vec!["wait", "--timeout", "240s"];
    let ids: Vec<String> = all.iter().map(|j| j.id.to_string()).collect();
    wait_args.extend(ids.iter().map(String::as_str));
    let mut wait_cmd = fleet.ctl_command(&wait_args).unwrap();
    wait_cmd
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(fleet.path("wait.err")).unwrap());
    let mut waiter = ChildGuard::spawn("wait", wait_cmd).unwrap();

    // Agents list the servers in either order: some talk to A, some to B, until A dies.
    for (name, servers) in [
        ("a1", both.clone()),
        ("a2", format!("{url_b},{url_a}")),
        ("a3", both.clone()),
    ] {
        let cmd = fleet
            .agent_command(name, &servers, &["--max-concurrent", "2"])
            .unwrap();
        fleet.spawn_agent(name, cmd).unwrap();
    }
    let done_at_kill = fleet.wait_completed(6).unwrap();
    first.take().unwrap().process.kill_now();
    assert!(done_at_kill < 30, "the run was over before the kill");

    wait_until(WAIT, "server B to take over", || {
        leads(&fleet.rt, &url_b).filter(|l| *l)
    })
    .unwrap();
    // Only a leader reconciles a file change: five more jobs prove B took over.
    fleet.write_manifest(&manifest(1..=35)).unwrap();
    let jobs = fleet
        .wait_jobs_until(WAIT * 2, "all 35 jobs completed", |jobs| {
            jobs.len() == 35 && jobs.iter().all(|j| j.status == JobStatus::Completed)
        })
        .unwrap();

    // The agents carried on by themselves, and every job ran to completion exactly once.
    fleet.assert_each_job_ran_once(&jobs);
    // Each job's artifact is in the shared store, whichever server received it, and in
    // the one index (the database's: no server writes an index file in the store).
    let listed = fleet.artifacts().unwrap();
    for job in &jobs {
        let artifact = job.artifact_id.as_ref().unwrap();
        assert_eq!(
            sha256_file(&stored_bundle(&store, artifact.as_str())).unwrap(),
            artifact.as_str()
        );
        assert!(
            listed
                .iter()
                .any(|row| row.job_id == job.id && &row.artifact_id == artifact),
            "job {} is not in the artifact listing",
            job.id.short()
        );
    }
    assert!(!store.join("index.jsonl").exists());
    let pulled = fleet.path("pulled.tar.zst");
    let out = fleet
        .ctl(&["pull", jobs[0].id.as_str(), "-o", pulled.to_str().unwrap()])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The wait that ran across the kill saw all 30 of its jobs complete.
    let status = waiter.wait_exit(WAIT).unwrap();
    let mut said = String::new();
    std::io::Read::read_to_string(waiter.child.stdout.as_mut().unwrap(), &mut said).unwrap();
    assert!(
        status.success(),
        "wait failed: {}",
        std::fs::read_to_string(fleet.path("wait.err")).unwrap_or_default()
    );
    assert_eq!(said.matches("condition met").count(), 30, "{said}");

    // The event follower missed nothing: it printed every event of the log, in order.
    let logged = all_event_seqs(&fleet);
    let seen_all = || {
        let text = std::fs::read_to_string(&events_out).unwrap_or_default();
        let seen: Vec<u64> = text
            .lines()
            .filter_map(|l| l.strip_prefix("event/")?.parse().ok())
            .collect();
        (seen.last() >= logged.last()).then_some(seen)
    };
    let seen = wait_until(WAIT, "the event follower to catch up", seen_all).unwrap();
    events_follow.kill_now();
    let seen_set: BTreeSet<u64> = seen.iter().copied().collect();
    assert_eq!(seen.len(), seen_set.len(), "an event printed twice");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "events out of order");
    let missed: Vec<_> = logged.difference(&seen_set).collect();
    assert!(
        missed.is_empty(),
        "events missed: {missed:?}\n{}",
        std::fs::read_to_string(fleet.path("events.err")).unwrap_or_default()
    );
    drop(second);
}

#[test]
fn a_worker_token_issued_on_postgres_works_on_every_server_until_revoked() {
    let Some(db) = ScratchPostgres::create("fleet_tokens").unwrap() else {
        return;
    };
    let fleet = Fleet::prepare(&manifest(1..=1)).unwrap();
    let on_db = ["--database", db.url.as_str()];
    let servers = [
        fleet.start_another_server("state-a", &on_db).unwrap(),
        fleet.start_another_server("state-b", &on_db).unwrap(),
    ];
    let cli = |args: &[&str]| {
        let mut all = vec!["tokens"];
        all.extend_from_slice(args);
        all.extend_from_slice(&on_db);
        let out = fleet.reconciler_cli(&all).unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            said,
        )
    };
    let (code, token, said) = cli(&["issue", "lab-1"]);
    assert_eq!(code, Some(0), "{said}");
    let token = token.trim().to_string();
    assert!(token.starts_with("cis490w_"), "{said}");
    let as_lab1 = |url: &str| {
        let client = Client::new(url)
            .unwrap()
            .with_worker_token(Some(token.clone()));
        fleet.rt.block_on(client.whoami())
    };
    for server in &servers {
        let me = as_lab1(&server.url).unwrap();
        assert_eq!(me.worker.unwrap().as_str(), "lab-1", "on {}", server.url);
    }
    let (code, listed, said) = cli(&["list", "-o", "json"]);
    assert_eq!(code, Some(0), "{said}");
    let list: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(list[0]["name"], "lab-1", "{said}");

    let (code, _, said) = cli(&["revoke", "lab-1"]);
    assert_eq!(code, Some(0), "{said}");
    for server in &servers {
        let err = as_lab1(&server.url).unwrap_err();
        assert!(
            err.status().is_some_and(|s| s.is_client_error()),
            "on {}: {err}",
            server.url
        );
    }
    let (code, _, said) = cli(&["revoke", "lab-1"]);
    assert_eq!(code, Some(1), "{said}");
}
