//! The real server on PostgreSQL (`--database postgres://...`): one job through claim,
//! heartbeat and completion over HTTP; two servers on one database, of which one leads. Needs a server named by `CIS490_TEST_POSTGRES`
//! (`eval "$(.ci/postgres.sh start)"`); without one it says so and passes, unless
//! `CIS490_REQUIRE_POSTGRES=1` (CI).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod http_common;

use cis490_api::{CompleteRequest, HeartbeatRequest, IdPrefix, JobStatus};
use http_common::*;

/// A fresh database on the test server, dropped on drop.
struct Database {
    admin: String,
    name: String,
    url: String,
}

impl Database {
    /// None (the test skips) when no server is configured.
    /// `tag` tells the databases of this binary's tests apart.
    fn create(tag: &str) -> Option<Database> {
        let Ok(admin) = std::env::var("CIS490_TEST_POSTGRES") else {
            assert!(
                std::env::var("CIS490_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "CIS490_REQUIRE_POSTGRES=1 but CIS490_TEST_POSTGRES is not set"
            );
            eprintln!("skipped: no PostgreSQL server (CIS490_TEST_POSTGRES is not set)");
            return None;
        };
        let name = format!("cis490_test_http_{tag}_{}", std::process::id());
        let mut client = postgres::Client::connect(&admin, postgres::NoTls).unwrap();
        client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .unwrap();
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        let url = format!("{base}/{name}");
        Some(Database { admin, name, url })
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Ok(mut client) = postgres::Client::connect(&self.admin, postgres::NoTls) {
            let _ = client.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_job_runs_through_claim_heartbeat_and_complete_on_postgres() {
    // The sync client runs its own runtime: never on an async thread.
    let Some(db) = tokio::task::spawn_blocking(|| Database::create("one_job"))
        .await
        .unwrap()
    else {
        return;
    };
    let app = spawn_app(AppOptions {
        manifest: jobs_manifest([1]),
        watch: false,
        database: Some(db.url.clone()),
        ..AppOptions::default()
    })
    .await;
    let claimed = wait_for(std::time::Duration::from_secs(20), "a claim", || {
        let client = app.client.clone();
        async move { client.claim(&cpu_claim("pg1"), None).await.unwrap() }
    })
    .await;
    let beat = app
        .client
        .heartbeat(
            &claimed.job.id,
            &HeartbeatRequest {
                worker: worker("pg1"),
                lease: claimed.lease.clone(),
                log_tail: Some("epoch 1".into()),
                log: None,
                progress: None,
            },
        )
        .await
        .unwrap();
    assert!(!beat.cancel);
    app.client
        .complete(
            &claimed.job.id,
            &CompleteRequest {
                worker: worker("pg1"),
                lease: claimed.lease.clone(),
                artifact_id: None,
                upload: None,
                report: Default::default(),
            },
        )
        .await
        .unwrap();
    let view = app
        .anon
        .job(&IdPrefix::parse(claimed.job.id.as_str()).unwrap())
        .await
        .unwrap();
    assert_eq!(view.status, JobStatus::Completed);
    let kinds: Vec<&str> = view.events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["Created", "Claimed", "Started", "Completed"]);
    assert_eq!(app.count(JobStatus::Completed).await, 1);
    app.shutdown().await.unwrap();
    tokio::task::spawn_blocking(move || drop(db)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_follower_takes_over_reconciling_when_the_leader_stops() {
    let Some(db) = tokio::task::spawn_blocking(|| Database::create("leader"))
        .await
        .unwrap()
    else {
        return;
    };
    let options = || AppOptions {
        manifest: jobs_manifest([1]),
        database: Some(db.url.clone()),
        ..AppOptions::default()
    };
    let leader = spawn_app(options()).await;
    let follower = spawn_app(options()).await;
    assert!(leader.anon.health().await.unwrap().leader);
    assert!(!follower.anon.health().await.unwrap().leader);
    assert_eq!(follower.count(JobStatus::Pending).await, 1);

    // The follower sees its manifest change but leaves reconciling to the leader; the
    // leader's own resync would otherwise undo it (two manifests, one queue).
    follower.write_manifest_by_rename(&jobs_manifest([1, 2]));
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    assert_eq!(follower.count(JobStatus::Pending).await, 1);
    // An operator's reload is served by whichever server it reaches.
    let reload = follower.client.reload().await.unwrap();
    assert!(reload.applied);
    assert_eq!(follower.count(JobStatus::Pending).await, 2);

    // Edited while it still follows: applied once it takes over, not before.
    follower.write_manifest_by_rename(&jobs_manifest([1, 2, 3]));
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    assert_eq!(follower.count(JobStatus::Pending).await, 2);

    leader.shutdown().await.unwrap();
    wait_for(
        std::time::Duration::from_secs(15),
        "the follower to lead",
        || {
            let anon = follower.anon.clone();
            async move { anon.health().await.unwrap().leader.then_some(()) }
        },
    )
    .await;
    wait_for(
        std::time::Duration::from_secs(15),
        "the take-over reconcile",
        || {
            let app = &follower;
            async move { (app.count(JobStatus::Pending).await == 3).then_some(()) }
        },
    )
    .await;
    // The new leader watches its manifest as the old one did.
    follower.write_manifest_by_rename(&jobs_manifest([1, 2, 3, 4]));
    wait_for(
        std::time::Duration::from_secs(15),
        "the file watch's reconcile",
        || {
            let app = &follower;
            async move { (app.count(JobStatus::Pending).await == 4).then_some(()) }
        },
    )
    .await;
    follower.shutdown().await.unwrap();
    tokio::task::spawn_blocking(move || drop(db)).await.unwrap();
}
