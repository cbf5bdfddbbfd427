//! A 200 MiB upload streams through the server with flat memory, and the same bytes again
//! dedupe. Alone in its test binary so no other test's allocations disturb the RSS reading.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod http_common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cis490_api::UploadStatus;
use futures_util::StreamExt;
use http_common::*;
use sha2::{Digest, Sha256};

const CHUNK: usize = 256 * 1024;
const TOTAL: u64 = 200 * 1024 * 1024;
const CHUNKS: u64 = TOTAL / CHUNK as u64;

/// Chunk `i` of the generated body: never held whole in memory.
fn chunk(i: u64) -> Bytes {
    let mut buf = vec![(i % 251) as u8; CHUNK];
    buf[..8].copy_from_slice(&i.to_le_bytes());
    Bytes::from(buf)
}

fn body_stream() -> reqwest::Body {
    let stream = futures_util::stream::iter(0..CHUNKS).map(|i| Ok::<_, std::io::Error>(chunk(i)));
    reqwest::Body::wrap_stream(stream)
}

fn body_sha256() -> String {
    let mut h = Sha256::new();
    for i in 0..CHUNKS {
        h.update(chunk(i));
    }
    hex::encode(h.finalize())
}

/// This process's resident set size in KiB (the server runs in this process).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_200_mib_upload_streams_with_flat_memory_and_dedupes() {
    let app = spawn_app(AppOptions {
        max_upload_bytes: TOTAL + 1,
        manifest: jobs_manifest([1]),
        watch: false,
        ..AppOptions::default()
    })
    .await;
    let claimed = app
        .client
        .claim(&cpu_claim("w1"), None)
        .await
        .unwrap()
        .unwrap();
    let sha = body_sha256();

    let baseline = rss_kib();
    let peak = Arc::new(AtomicU64::new(baseline));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (Arc::clone(&peak), Arc::clone(&done));
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let first = app
        .client
        .upload(
            &claimed.job.id,
            &worker("w1"),
            &claimed.lease,
            &sha,
            body_stream(),
        )
        .await
        .unwrap();
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();

    assert_eq!(first.status, UploadStatus::Stored);
    assert_eq!(first.size_bytes, TOTAL);
    assert_eq!(first.artifact_id.as_str(), sha);
    let growth_mib = (peak.load(Ordering::Relaxed).saturating_sub(baseline)) / 1024;
    eprintln!("RSS growth during the upload: {growth_mib} MiB");
    assert!(
        growth_mib < 64,
        "RSS grew by {growth_mib} MiB during a {} MiB upload",
        TOTAL >> 20
    );
    let (path, size) = app_store_locate(&app, &first.artifact_id);
    assert_eq!(size, TOTAL);
    assert!(path.ends_with("bundle.tar.zst"));

    let second = app
        .client
        .upload(
            &claimed.job.id,
            &worker("w1"),
            &claimed.lease,
            &sha,
            body_stream(),
        )
        .await
        .unwrap();
    assert_eq!(second.status, UploadStatus::AlreadyPresent);
    assert_eq!(second.artifact_id, first.artifact_id);
    assert_eq!(app.anon.artifacts().await.unwrap().len(), 1);
    assert!(app.partial_files().is_empty());
}

fn app_store_locate(app: &TestApp, id: &cis490_api::ArtifactId) -> (std::path::PathBuf, u64) {
    let path = app
        .store_root
        .join(cis490_reconciler::store::fs::BLOBS_DIR)
        .join(id.as_str())
        .join(cis490_reconciler::store::fs::BUNDLE_FILE);
    let size = std::fs::metadata(&path).unwrap().len();
    (path, size)
}
