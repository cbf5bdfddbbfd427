//! The watch loop: editing the manifest file on disk (editor-style rename, or in place)
//! makes new jobs claimable with no API call; an invalid edit changes nothing and shows in
//! `GET /v1/manifest` with its line.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod http_common;

use std::collections::BTreeSet;
use std::time::Duration;

use cis490_api::{JobFilter, JobId, JobStatus};
use http_common::*;

const WAIT: Duration = Duration::from_secs(20);

async fn claim_all(app: &TestApp, name: &str) -> BTreeSet<JobId> {
    let mut got = BTreeSet::new();
    while let Some(c) = app.client.claim(&cpu_claim(name), None).await.unwrap() {
        got.insert(c.job.id);
    }
    got
}

async fn wait_pending(app: &TestApp, n: u64) {
    wait_for(WAIT, &format!("{n} pending jobs"), || async {
        (app.count(JobStatus::Pending).await == n).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rename_over_the_manifest_is_picked_up() {
    let app = spawn_app(AppOptions {
        manifest: jobs_manifest(1..=2),
        ..AppOptions::default()
    })
    .await;
    assert_eq!(claim_all(&app, "w1").await.len(), 2);

    app.write_manifest_by_rename(&jobs_manifest(1..=4));
    wait_pending(&app, 2).await;
    assert_eq!(claim_all(&app, "w1").await.len(), 2);
    assert!(app.anon.manifest().await.unwrap().last_errors.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_in_place_rewrite_is_picked_up() {
    let app = spawn_app(AppOptions {
        manifest: jobs_manifest(1..=2),
        ..AppOptions::default()
    })
    .await;
    app.write_manifest_in_place(&jobs_manifest(1..=5));
    wait_pending(&app, 5).await;
    let claimed = claim_all(&app, "w1").await;
    assert_eq!(claimed.len(), 5);
    // A truncated intermediate state, if the watch saw one, left no error behind.
    wait_for(WAIT, "no manifest error", || async {
        app.anon
            .manifest()
            .await
            .unwrap()
            .last_errors
            .is_empty()
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_invalid_edit_changes_nothing_and_reports_its_line() {
    let app = spawn_app(AppOptions {
        manifest: jobs_manifest(1..=3),
        ..AppOptions::default()
    })
    .await;
    let claimed = app
        .client
        .claim(&cpu_claim("w1"), None)
        .await
        .unwrap()
        .unwrap();
    let all = JobFilter {
        all: true,
        ..JobFilter::default()
    };
    let before = app.anon.jobs(&all).await.unwrap();
    let status_before = app.anon.manifest().await.unwrap();

    // Line 9 names a hyper table with a wrong type; the rest would drop two jobs.
    let broken = "version = 1\n\n[defaults]\ncommand = [\"true\"]\n\n[models.gbt]\n\n[[jobs]]\nmodel = 42\nmode = \"realistic\"\nseed = 1\n";
    app.write_manifest_by_rename(broken);
    let status = wait_for(WAIT, "the manifest error to be recorded", || async {
        let s = app.anon.manifest().await.unwrap();
        (!s.last_errors.is_empty()).then_some(s)
    })
    .await;
    assert!(
        status.last_errors.iter().any(|e| e.line == Some(9)),
        "{:?}",
        status.last_errors
    );
    assert_eq!(status.generation, status_before.generation);
    assert_eq!(status.sha256, status_before.sha256);
    assert_eq!(
        app.anon.jobs(&all).await.unwrap(),
        before,
        "queue unchanged"
    );
    let view = app
        .anon
        .job(&cis490_api::IdPrefix::parse(claimed.job.id.as_str()).unwrap())
        .await
        .unwrap();
    assert_eq!(view.status, JobStatus::Claimed);

    // Fixing the file clears the error and applies.
    app.write_manifest_by_rename(&jobs_manifest(1..=4));
    wait_for(WAIT, "the fixed manifest to apply", || async {
        let s = app.anon.manifest().await.unwrap();
        (s.last_errors.is_empty() && s.generation > status_before.generation).then_some(())
    })
    .await;
    assert_eq!(app.count(JobStatus::Pending).await, 3);
}

/// An editor that writes the file in two steps (the first half, a pause longer than the
/// debounce, the rest) while holding it open: the valid first half is never applied; the
/// whole file is, once, when the writer closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_written_in_two_steps_is_applied_once_it_is_closed() {
    use std::io::Write;
    let app = spawn_app(AppOptions {
        manifest: jobs_manifest(1..=3),
        ..AppOptions::default()
    })
    .await;
    let before = app.anon.manifest().await.unwrap().generation;
    let full = jobs_manifest(1..=4);
    // The first half is a valid manifest of seed 1 only: applying it would tombstone two.
    let cut = full.find("[1, 2, 3, 4]").unwrap() + "[1".len();
    let (first, rest) = full.split_at(cut);
    let first_alone = format!("{first}] }}\n");
    assert!(cis490_reconciler::manifest::parse_manifest(
        &first_alone,
        std::path::Path::new("m.toml")
    )
    .is_ok());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&app.manifest)
        .unwrap();
    f.write_all(first_alone.as_bytes()).unwrap();
    f.flush().unwrap();
    // Ten debounces with the file open and half written.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        app.anon.manifest().await.unwrap().generation,
        before,
        "the half-written file was applied"
    );
    // The rest: rewrite from the start so the file is the whole manifest, then close.
    use std::io::{Seek, SeekFrom};
    f.seek(SeekFrom::Start(0)).unwrap();
    f.write_all(first.as_bytes()).unwrap();
    f.write_all(rest.as_bytes()).unwrap();
    f.set_len(full.len() as u64).unwrap();
    drop(f);
    wait_pending(&app, 4).await;
    let status = app.anon.manifest().await.unwrap();
    assert_eq!(status.generation, before + 1, "applied once");
    let all = app
        .anon
        .jobs(&JobFilter {
            all: true,
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert!(
        all.iter().all(|j| !j.tombstoned),
        "nothing was tombstoned on the way"
    );
}
