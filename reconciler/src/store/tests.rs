use std::path::Path;

use bytes::Bytes;
use cis490_api::{ArtifactId, JobId, UploadStatus};
use futures_util::stream;
use sha2::{Digest, Sha256};

use super::fs::{
    create_partial, read_meta, write_meta, BLOBS_DIR, BUNDLE_FILE, LEGACY_INDEX_FILE, META_FILE,
    WRITE_BATCH,
};
use super::index::MemoryIndex;
use super::*;

const JOB: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

fn sha(bytes: &[u8]) -> ArtifactId {
    ArtifactId::parse(&hex::encode(Sha256::digest(bytes))).unwrap()
}

fn upload_for(bytes: &[u8]) -> Upload {
    Upload {
        job_id: JobId::parse(JOB).unwrap(),
        model: "gbt".into(),
        mode: "realistic".into(),
        worker: "w1".into(),
        attempt: Some(1),
        expected_sha256: sha(bytes),
        content_length: None,
    }
}

/// A store on `dir` with its bytes' handle (for their files) and an index in memory.
fn open(dir: &Path, max_upload_bytes: u64) -> (ArtifactStore, FsBlobs, Arc<MemoryIndex>) {
    let blobs = FsBlobs::open(dir, max_upload_bytes).unwrap();
    let index = Arc::new(MemoryIndex::default());
    let store = ArtifactStore::new(Arc::new(blobs.clone()), index.clone());
    (store, blobs, index)
}

fn chunks(bytes: &[u8]) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let parts: Vec<Result<Bytes, std::io::Error>> = bytes
        .chunks(7)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    stream::iter(parts)
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            out.extend(files_under(&entry.path()));
        } else {
            out.push(entry.path().display().to_string());
        }
    }
    out.sort();
    out
}

fn partials(blobs: &FsBlobs) -> Vec<String> {
    files_under(&blobs.incoming_dir())
}

#[tokio::test]
async fn stores_streams_and_dedupes_identical_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (store, blobs, index) = open(dir.path(), 1 << 20);
    let body = b"a model bundle".repeat(100);
    let up = upload_for(&body);

    let first = store.ingest(&up, chunks(&body)).await.unwrap();
    assert_eq!(first.status, UploadStatus::Stored);
    assert_eq!(first.size_bytes, body.len() as u64);
    assert_eq!(first.artifact_id, up.expected_sha256);
    let bundle = dir
        .path()
        .join(BLOBS_DIR)
        .join(up.expected_sha256.as_str())
        .join(BUNDLE_FILE);
    assert_eq!(std::fs::read(&bundle).unwrap(), body);
    let meta = read_meta(bundle.parent().unwrap()).unwrap();
    assert_eq!(meta.job_id.as_str(), JOB);
    assert_eq!(meta.worker, "w1");
    assert_eq!(
        index.all(),
        vec![meta],
        "the index row is the blob's own record, received_at included"
    );

    let second = store.ingest(&up, chunks(&body)).await.unwrap();
    assert_eq!(second.status, UploadStatus::AlreadyPresent);
    assert_eq!(index.all().len(), 1, "a dedupe appends no row");
    assert!(partials(&blobs).is_empty());

    let listed = blobs.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].artifact_id, up.expected_sha256);
    let (path, size) = blobs.locate(&up.expected_sha256).unwrap();
    assert_eq!(path, bundle);
    assert_eq!(size, body.len() as u64);
}

#[tokio::test]
async fn a_small_upload_indexes_the_record_its_blob_holds() {
    let dir = tempfile::tempdir().unwrap();
    let (store, blobs, index) = open(dir.path(), 1 << 20);
    let body = b"small".to_vec();
    let mut up = upload_for(&body);
    up.content_length = Some(body.len() as u64);
    store.ingest(&up, chunks(&body)).await.unwrap();
    let (bundle, _) = blobs.locate(&up.expected_sha256).unwrap();
    let meta = read_meta(bundle.parent().unwrap()).unwrap();
    assert_eq!(index.all(), vec![meta]);
}

#[tokio::test]
async fn sha_mismatch_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (store, blobs, index) = open(dir.path(), 1 << 20);
    let mut up = upload_for(b"expected");
    up.expected_sha256 = sha(b"something else");
    let err = store.ingest(&up, chunks(b"expected")).await.unwrap_err();
    assert!(matches!(err, StoreError::ShaMismatch { .. }), "{err}");
    assert!(partials(&blobs).is_empty());
    assert!(blobs.list().unwrap().is_empty());
    assert_eq!(index.all().len(), 0);
}

#[tokio::test]
async fn over_the_cap_is_refused_announced_or_streamed() {
    let dir = tempfile::tempdir().unwrap();
    let (store, blobs, index) = open(dir.path(), 100);
    let body = vec![7u8; 101];
    let mut up = upload_for(&body);
    let err = store.ingest(&up, chunks(&body)).await.unwrap_err();
    assert!(matches!(err, StoreError::TooLarge { limit: 100 }), "{err}");
    assert!(partials(&blobs).is_empty());

    up.content_length = Some(1_000);
    let err = store
        .ingest(&up, chunks(b"small but announced large"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::TooLarge { .. }), "{err}");
    assert!(partials(&blobs).is_empty());

    let exact = vec![1u8; 100];
    let ok = store
        .ingest(&upload_for(&exact), chunks(&exact))
        .await
        .unwrap();
    assert_eq!(ok.status, UploadStatus::Stored);
    assert_eq!(index.all().len(), 1, "refused uploads are not indexed");
}

#[tokio::test]
async fn a_body_error_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (store, blobs, index) = open(dir.path(), 1 << 20);
    let up = upload_for(b"whatever");
    let body = stream::iter(vec![
        Ok(Bytes::from_static(b"some bytes")),
        Err(std::io::Error::other("connection reset")),
    ]);
    let err = store.ingest(&up, body).await.unwrap_err();
    assert!(matches!(err, StoreError::BodyRead(_)), "{err}");
    assert!(partials(&blobs).is_empty());
    assert!(index.all().is_empty());
}

#[tokio::test]
async fn a_dropped_upload_future_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (store, blobs, index) = open(dir.path(), 1 << 20);
    let up = upload_for(b"never finishes");
    // One chunk, then a body that never ends: the future is dropped mid-upload, like a
    // request whose client disconnected.
    let body = stream::iter(vec![Ok::<_, std::io::Error>(Bytes::from_static(b"first"))])
        .chain(stream::pending());
    let fut = store.ingest(&up, body);
    let timed_out = tokio::time::timeout(std::time::Duration::from_millis(200), fut).await;
    assert!(timed_out.is_err());
    assert!(partials(&blobs).is_empty());
    assert!(index.all().is_empty());
}

#[tokio::test]
async fn concurrent_uploads_of_one_job_do_not_share_a_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let (store, blobs, index) = open(dir.path(), 1 << 20);
    let a = b"first attempt's bundle".to_vec();
    let b = b"second attempt's bundle".to_vec();
    let (up_a, up_b) = (upload_for(&a), upload_for(&b));
    let (ra, rb) = tokio::join!(
        store.ingest(&up_a, chunks(&a)),
        store.ingest(&up_b, chunks(&b))
    );
    assert_eq!(ra.unwrap().status, UploadStatus::Stored);
    assert_eq!(rb.unwrap().status, UploadStatus::Stored);
    assert_eq!(blobs.list().unwrap().len(), 2);
    assert_eq!(index.all().len(), 2);
}

/// Model `a_b` with mode `c` and model `a` with mode `b_c` both made the folder `a_b_c/`
/// in the old layout. Bytes are addressed by their sha256 now: each upload keeps its own
/// model and mode, and identical bytes from both are stored once.
#[tokio::test]
async fn model_and_mode_names_never_share_a_folder_and_equal_bytes_are_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let (store, blobs, index) = open(dir.path(), 1 << 20);
    let upload = |model: &str, mode: &str, body: &[u8], job: char| {
        let mut up = upload_for(body);
        up.model = model.into();
        up.mode = mode.into();
        up.job_id = JobId::parse(&job.to_string().repeat(64)).unwrap();
        up
    };
    let first = upload("a_b", "c", b"first", 'a');
    let second = upload("a", "b_c", b"second", 'b');
    for (up, body) in [(&first, &b"first"[..]), (&second, &b"second"[..])] {
        let stored = store.ingest(up, chunks(body)).await.unwrap();
        assert_eq!(stored.status, UploadStatus::Stored);
        let listed = blobs.list().unwrap();
        let row = listed
            .iter()
            .find(|a| a.artifact_id == up.expected_sha256)
            .unwrap();
        assert_eq!((&row.model, &row.mode), (&up.model, &up.mode));
        let (path, _) = blobs.locate(&up.expected_sha256).unwrap();
        assert_eq!(std::fs::read(path).unwrap(), body);
    }
    assert_eq!(blobs.list().unwrap().len(), 2);
    // A third pair uploads the first's bytes: no second copy, and no folder per pair.
    let third = upload("other", "mode", b"first", 'c');
    let again = store.ingest(&third, chunks(b"first")).await.unwrap();
    assert_eq!(again.status, UploadStatus::AlreadyPresent);
    let bundles: Vec<String> = files_under(dir.path())
        .into_iter()
        .filter(|f| f.ends_with(BUNDLE_FILE))
        .collect();
    assert_eq!(bundles.len(), 2, "{bundles:?}");
    let top: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(
        top,
        [BLOBS_DIR],
        "no index file in the store: the index is the database's"
    );
    assert_eq!(index.all().len(), 2);
}

/// Bytes stored but not indexed (a crash between the two) get their row back from the
/// next upload of the same bytes, which answers "already present" without writing them.
#[tokio::test]
async fn an_upload_of_stored_bytes_whose_index_row_was_lost_puts_the_row_back() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _blobs, index) = open(dir.path(), 1 << 20);
    let body = b"stored, then the server died".to_vec();
    let up = upload_for(&body);
    store.ingest(&up, chunks(&body)).await.unwrap();
    index.forget(&up.expected_sha256);
    let again = store.ingest(&up, chunks(&body)).await.unwrap();
    assert_eq!(again.status, UploadStatus::AlreadyPresent);
    let rows = index.all();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].artifact_id, up.expected_sha256);
    assert_eq!(rows[0].size_bytes, body.len() as u64);
}

/// Bytes the index answered for once are remembered: later uploads of them ask the index
/// no more (index rows are never removed).
#[tokio::test]
async fn bytes_found_indexed_once_are_not_looked_up_again() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _blobs, index) = open(dir.path(), 1 << 20);
    let body = b"the same bytes from many jobs".to_vec();
    let up = upload_for(&body);
    store.ingest(&up, chunks(&body)).await.unwrap();
    assert_eq!(index.lookups(), 0, "new bytes are added, not looked up");
    for _ in 0..3 {
        let again = store.ingest(&up, chunks(&body)).await.unwrap();
        assert_eq!(again.status, UploadStatus::AlreadyPresent);
    }
    assert_eq!(index.lookups(), 1);
    assert_eq!(index.all().len(), 1);
}

/// A store written in the old `<model>_<mode>/<artifact_id>/` layout (the same bytes under
/// two pairs, one folder whose bundle never arrived) is moved into `blobs/` at start-up:
/// every artifact is found and listed again, stored once.
#[tokio::test]
async fn recovery_moves_the_old_layout_into_blobs_and_drops_duplicate_copies() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let same = b"trained twice".to_vec();
    let other = b"trained once".to_vec();
    let legacy = |group: &str, body: &[u8], job: char| {
        let folder = dir.path().join(group).join(sha(body).as_str());
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join(BUNDLE_FILE), body).unwrap();
        let (model, mode) = group.split_once('_').unwrap();
        let meta = cis490_api::ArtifactView {
            artifact_id: sha(body),
            job_id: JobId::parse(&job.to_string().repeat(64)).unwrap(),
            attempt: None,
            model: model.into(),
            mode: mode.into(),
            worker: "w1".into(),
            size_bytes: body.len() as u64,
            received_at: chrono::Utc::now(),
        };
        let json = serde_json::to_string(&meta).unwrap();
        assert!(
            !json.contains("attempt"),
            "written as the old code wrote it"
        );
        std::fs::write(folder.join(META_FILE), &json).unwrap();
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join(LEGACY_INDEX_FILE))
            .unwrap()
            .write_all(format!("{json}\n").as_bytes())
            .unwrap();
    };
    legacy("gbt_realistic", &same, 'a');
    legacy("mlp_oracle", &same, 'b');
    legacy("mlp_oracle", &other, 'c');
    let never = dir
        .path()
        .join("gbt_oracle")
        .join(sha(b"never renamed").as_str());
    std::fs::create_dir_all(never).unwrap();

    let (store, blobs, _index) = open(dir.path(), 1 << 20);
    let report = store.recover().unwrap();
    assert_eq!(report.migrated_legacy, 2);
    assert_eq!(report.removed_duplicates, 1);
    assert_eq!(report.removed_incomplete, 1);
    assert_eq!(report.indexed, 2, "both blobs get their index rows");
    for group in ["gbt_realistic", "mlp_oracle", "gbt_oracle"] {
        assert!(!dir.path().join(group).exists(), "{group} left behind");
    }
    assert_eq!(blobs.list().unwrap().len(), 2);
    for body in [&same, &other] {
        let (path, size) = blobs.locate(&sha(body)).unwrap();
        assert_eq!(std::fs::read(path).unwrap(), *body);
        assert_eq!(size, body.len() as u64);
    }
    // New uploads of the migrated bytes are deduplicated against blobs/.
    let again = store
        .ingest(&upload_for(&same), chunks(&same))
        .await
        .unwrap();
    assert_eq!(again.status, UploadStatus::AlreadyPresent);
    assert!(store.recover().unwrap().is_clean());
}

#[tokio::test]
async fn recovery_cleans_partials_indexes_what_a_crash_left_out_and_repairs_meta() {
    let dir = tempfile::tempdir().unwrap();
    let (store, blobs, index) = open(dir.path(), 1 << 20);
    let one = b"bundle one".to_vec();
    let two = b"bundle two".to_vec();
    let three = b"bundle three".to_vec();
    for body in [&one, &two, &three] {
        store.ingest(&upload_for(body), chunks(body)).await.unwrap();
    }
    let blob_dir = |body: &[u8]| blobs.blobs_dir().join(sha(body).as_str());

    // Crash A: bundle one was stored, its index row never written.
    index.forget(&sha(&one));
    // Crash B (an older version's store): bundle two's meta.json is gone; that version's
    // index.jsonl has its row, and a last line a crash cut off.
    let two_meta = read_meta(&blob_dir(&two)).unwrap();
    std::fs::remove_file(blob_dir(&two).join(META_FILE)).unwrap();
    let row = serde_json::to_string(&two_meta).unwrap();
    std::fs::write(
        dir.path().join(LEGACY_INDEX_FILE),
        format!(
            "{row}
{}",
            &row[..row.len() / 2]
        ),
    )
    .unwrap();
    // Crash C: a partial upload and a directory whose bundle never arrived.
    std::fs::write(blobs.incoming_dir().join("abc-1.partial"), b"junk").unwrap();
    let orphan = blobs.blobs_dir().join(sha(b"never renamed").as_str());
    std::fs::create_dir_all(&orphan).unwrap();
    std::fs::write(orphan.join(META_FILE), b"{}").unwrap();

    // The server starts again: new blob handle, the same database.
    let reopened_blobs = FsBlobs::open(dir.path(), 1 << 20).unwrap();
    let reopened = ArtifactStore::new(Arc::new(reopened_blobs.clone()), index.clone());
    let report = reopened.recover().unwrap();
    assert_eq!(report.removed_partials, 1);
    assert_eq!(report.removed_incomplete, 1);
    assert_eq!(report.repaired_meta, 1);
    assert_eq!(report.indexed, 1, "one gets its row back: {report:?}");
    assert!(report.unrepairable.is_empty());

    assert!(partials(&reopened_blobs).is_empty());
    assert!(!orphan.exists());
    assert_eq!(read_meta(&blob_dir(&two)).unwrap(), two_meta);
    let indexed: Vec<ArtifactId> = index.all().into_iter().map(|r| r.artifact_id).collect();
    assert_eq!(indexed.len(), 3);
    for body in [&one, &two, &three] {
        assert!(indexed.contains(&sha(body)));
    }
    // A second scan finds nothing to do.
    assert!(reopened.recover().unwrap().is_clean());
}

#[test]
fn recovery_keeps_a_partial_another_server_is_still_writing() {
    let dir = tempfile::tempdir().unwrap();
    let (store, blobs, _index) = open(dir.path(), 1 << 20);
    let live = blobs.incoming_dir().join("live-1.partial");
    let dead = blobs.incoming_dir().join("dead-1.partial");
    let writer = create_partial(&live).unwrap();
    std::fs::write(&dead, b"left by a crash").unwrap();

    let report = store.recover().unwrap();
    assert_eq!(report.removed_partials, 1);
    assert!(live.exists(), "the locked partial of a live upload stays");
    assert!(!dead.exists());

    drop(writer);
    assert_eq!(store.recover().unwrap().removed_partials, 1);
    assert!(
        !live.exists(),
        "once its writer is gone the partial is a leftover"
    );
}

#[test]
fn recovery_waits_for_a_commit_in_flight_before_judging_a_folder_without_its_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let (store, blobs, _index) = open(dir.path(), 1 << 20);
    let body = b"committed by another server";
    let folder = blobs.blobs_dir().join(sha(body).as_str());
    // The other server holds the commit lock, has written meta.json and is about to
    // rename the bundle into place.
    let lock = blobs.lock_commit_across_servers().unwrap();
    std::fs::create_dir_all(&folder).unwrap();
    write_meta(&folder, &upload_for(body).view(body.len() as u64)).unwrap();
    let scan = {
        let store = store.clone();
        std::thread::spawn(move || store.recover())
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    std::fs::write(folder.join(BUNDLE_FILE), body).unwrap();
    drop(lock);

    let report = scan.join().unwrap().unwrap();
    assert_eq!(report.removed_incomplete, 0, "{report:?}");
    assert!(folder.join(BUNDLE_FILE).is_file());
    assert_eq!(blobs.list().unwrap().len(), 1);
}

#[tokio::test]
async fn a_small_announced_upload_is_stored_and_deduped_like_a_streamed_one() {
    let dir = tempfile::tempdir().unwrap();
    let (store, blobs, index) = open(dir.path(), 1 << 20);
    let body = b"tiny bundle".repeat(10);
    let mut up = upload_for(&body);
    up.content_length = Some(body.len() as u64);
    let first = store.ingest(&up, chunks(&body)).await.unwrap();
    assert_eq!(first.status, UploadStatus::Stored);
    assert_eq!(first.size_bytes, body.len() as u64);
    let (path, size) = blobs.locate(&up.expected_sha256).unwrap();
    assert_eq!(std::fs::read(path).unwrap(), body);
    assert_eq!(size, body.len() as u64);
    assert_eq!(index.all().len(), 1);
    let meta = read_meta(&dir.path().join(BLOBS_DIR).join(up.expected_sha256.as_str())).unwrap();
    assert_eq!(meta.size_bytes, body.len() as u64);

    // The same bytes streamed without a length: deduplicated.
    up.content_length = None;
    let second = store.ingest(&up, chunks(&body)).await.unwrap();
    assert_eq!(second.status, UploadStatus::AlreadyPresent);
    assert_eq!(index.all().len(), 1);
    assert!(partials(&blobs).is_empty());
}

#[tokio::test]
async fn a_small_upload_that_grows_past_the_cap_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (store, blobs, _index) = open(dir.path(), 100);
    let body = vec![3u8; 150];
    let mut up = upload_for(&body);
    // Announced within the cap, but more arrives.
    up.content_length = Some(50);
    let err = store.ingest(&up, chunks(&body)).await.unwrap_err();
    assert!(matches!(err, StoreError::TooLarge { limit: 100 }), "{err}");
    assert!(partials(&blobs).is_empty());
    assert!(blobs.list().unwrap().is_empty());
}

#[tokio::test]
async fn a_known_artifact_is_still_verified_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let (store, blobs, index) = open(dir.path(), 1 << 20);
    let body = b"the stored bundle".repeat(20);
    let up = upload_for(&body);
    store.ingest(&up, chunks(&body)).await.unwrap();

    // Other bytes announced under the stored artifact's ID: refused, nothing replaced.
    let forged = b"other bytes".repeat(20);
    let err = store.ingest(&up, chunks(&forged)).await.unwrap_err();
    assert!(matches!(err, StoreError::ShaMismatch { .. }), "{err}");
    // A body that breaks off: refused too.
    let broken = stream::iter(vec![
        Ok(Bytes::copy_from_slice(&body[..10])),
        Err(std::io::Error::other("connection reset")),
    ]);
    let err = store.ingest(&up, broken).await.unwrap_err();
    assert!(matches!(err, StoreError::BodyRead(_)), "{err}");
    // Over the cap while only hashing: refused.
    let (small_cap, _, _) = open(dir.path(), 100);
    let err = small_cap.ingest(&up, chunks(&body)).await.unwrap_err();
    assert!(matches!(err, StoreError::TooLarge { .. }), "{err}");

    let (path, _) = blobs.locate(&up.expected_sha256).unwrap();
    assert_eq!(std::fs::read(path).unwrap(), body);
    assert_eq!(index.all().len(), 1);
    assert!(partials(&blobs).is_empty());
}

#[tokio::test]
async fn a_large_upload_streams_through_the_writer_thread_intact() {
    let dir = tempfile::tempdir().unwrap();
    let (store, blobs, _index) = open(dir.path(), 64 << 20);
    // Several writer buffers' worth, in uneven chunks.
    let body: Vec<u8> = (0..(3 * WRITE_BATCH + 4321))
        .map(|i| (i.wrapping_mul(31) % 251) as u8)
        .collect();
    let mut up = upload_for(&body);
    up.content_length = Some(body.len() as u64);
    let parts: Vec<Result<Bytes, std::io::Error>> = body
        .chunks(65_537)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let stored = store.ingest(&up, stream::iter(parts)).await.unwrap();
    assert_eq!(stored.status, UploadStatus::Stored);
    assert_eq!(stored.size_bytes, body.len() as u64);
    let (path, _) = blobs.locate(&up.expected_sha256).unwrap();
    assert_eq!(std::fs::read(path).unwrap(), body);
    assert!(partials(&blobs).is_empty());
}

/// An artifact the index has but this store lacks (servers on one database without a
/// shared store) is refused with a reason that says so; an unknown one is plain not found.
#[tokio::test]
async fn opening_indexed_bytes_this_store_lacks_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _blobs, index) = open(dir.path(), 1 << 20);
    let body = b"received by the other server".to_vec();
    let elsewhere = upload_for(&body).view(body.len() as u64);
    index.add(std::slice::from_ref(&elsewhere)).unwrap();
    let err = store.open(&elsewhere.artifact_id).await.err().unwrap();
    assert!(matches!(err, StoreError::NotHeld(_)), "{err}");
    assert!(err.to_string().contains("store_dir"), "{err}");
    let err = store.open(&sha(b"never stored")).await.err().unwrap();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");

    store
        .ingest(&upload_for(&body), chunks(&body))
        .await
        .unwrap();
    let blob = store.open(&elsewhere.artifact_id).await.unwrap();
    assert_eq!(blob.size_bytes, body.len() as u64);
    let read: Vec<u8> = blob
        .bytes
        .map(|chunk| chunk.unwrap().to_vec())
        .concat()
        .await;
    assert_eq!(read, body);
}
