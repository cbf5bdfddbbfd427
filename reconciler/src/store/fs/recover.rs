//! The start-up scan: moves a store of the old `<model>_<mode>/<artifact_id>/` layout into
//! `blobs/`, removes what interrupted uploads left behind, and reads every blob's
//! meta.json (so the database index can be completed; a lost one is rewritten from the
//! older versions' index.jsonl where it has the row). Runs before the server accepts
//! uploads; in a store shared with other servers, a partial whose upload is alive there is
//! locked and kept.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;

use cis490_api::{ArtifactId, ArtifactView};

use super::{
    read_meta, sync_dir, write_meta, FsBlobs, Scan, StoreError, BUNDLE_FILE, LEGACY_INDEX_FILE,
    META_FILE,
};
use crate::store::RecoveryReport;

/// What moving the old layout into `blobs/` did to one old artifact folder.
enum LegacyMove {
    /// Moved into `blobs/` whole.
    Moved,
    /// `blobs/` holds these bytes already: the old copy was removed.
    Duplicate,
    /// No bundle (a crash before its rename): removed.
    Incomplete,
}

impl FsBlobs {
    /// The start-up scan. Call it once before serving uploads.
    pub fn recover(&self) -> Result<Scan, StoreError> {
        let mut report = RecoveryReport::default();
        self.migrate_legacy_layout(&mut report)?;
        self.remove_partials(&mut report)?;
        let legacy_index = self.read_legacy_index()?;
        let mut held = Vec::new();
        for dir in self.artifact_dirs()? {
            held.extend(self.repair_dir(&dir, &legacy_index, &mut report)?);
        }
        let migrated = report.migrated_legacy + report.removed_duplicates;
        let repaired = RecoveryReport {
            migrated_legacy: 0,
            removed_duplicates: 0,
            ..report.clone()
        };
        if migrated > 0 {
            tracing::info!(
                moved = report.migrated_legacy,
                duplicates_removed = report.removed_duplicates,
                root = %self.root().display(),
                "artifact store moved to the content-addressed layout (blobs/)"
            );
        }
        if !repaired.is_clean() {
            tracing::warn!(?report, root = %self.root().display(), "artifact store repaired after an unclean stop");
        }
        Ok(Scan { report, held })
    }

    /// Moves every `<model>_<mode>/<artifact_id>/` folder of the old layout to
    /// `blobs/<artifact_id>/` (one rename each, so a crash midway leaves each folder in one
    /// place or the other, and the next start carries on). A copy of bytes `blobs/` holds
    /// already is removed: its meta.json named only the first job of its (model, mode) to
    /// upload them, and the queue's uploads keep every job's row.
    fn migrate_legacy_layout(&self, report: &mut RecoveryReport) -> Result<(), StoreError> {
        let blobs = self.blobs_dir();
        for group in self.legacy_group_dirs()? {
            let mut changed = false;
            for dir in Self::artifact_dirs_in(&group)? {
                match self.move_legacy_dir(&dir)? {
                    LegacyMove::Moved => report.migrated_legacy += 1,
                    LegacyMove::Duplicate => report.removed_duplicates += 1,
                    LegacyMove::Incomplete => report.removed_incomplete += 1,
                }
                changed = true;
            }
            if !changed {
                continue;
            }
            sync_dir(&group)?;
            sync_dir(&blobs)?;
            // Emptied: the group folder goes too. Anything else in it is not the store's.
            match std::fs::remove_dir(&group) {
                Ok(()) => sync_dir(self.root())?,
                Err(e) => tracing::warn!(
                    dir = %group.display(),
                    error = %e,
                    "old artifact folder not empty after moving its artifacts to blobs/; left in place"
                ),
            }
        }
        Ok(())
    }

    fn move_legacy_dir(&self, dir: &Path) -> Result<LegacyMove, StoreError> {
        if !dir.join(BUNDLE_FILE).is_file() {
            std::fs::remove_dir_all(dir)
                .map_err(StoreError::io(format!("removing {}", dir.display())))?;
            return Ok(LegacyMove::Incomplete);
        }
        let Some(name) = dir.file_name() else {
            return Ok(LegacyMove::Incomplete);
        };
        let target = self.blobs_dir().join(name);
        if target.join(BUNDLE_FILE).is_file() {
            std::fs::remove_dir_all(dir)
                .map_err(StoreError::io(format!("removing {}", dir.display())))?;
            return Ok(LegacyMove::Duplicate);
        }
        if target.exists() {
            // A folder without its bundle: never acknowledged, so nothing to keep.
            std::fs::remove_dir_all(&target)
                .map_err(StoreError::io(format!("removing {}", target.display())))?;
        }
        std::fs::rename(dir, &target).map_err(StoreError::io(format!(
            "moving {} to {}",
            dir.display(),
            target.display()
        )))?;
        Ok(LegacyMove::Moved)
    }

    fn remove_partials(&self, report: &mut RecoveryReport) -> Result<(), StoreError> {
        let incoming = self.incoming_dir();
        let entries = std::fs::read_dir(&incoming)
            .map_err(StoreError::io(format!("listing {}", incoming.display())))?;
        for entry in entries {
            let entry = entry.map_err(StoreError::io(format!("listing {}", incoming.display())))?;
            if entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
                let path = entry.path();
                if held_by_a_live_upload(&path)? {
                    tracing::debug!(partial = %path.display(), "upload in flight on another server; kept");
                    continue;
                }
                std::fs::remove_file(&path)
                    .map_err(StoreError::io(format!("removing {}", path.display())))?;
                report.removed_partials += 1;
            }
        }
        Ok(())
    }

    /// The rows of an older version's index.jsonl by artifact (the first row of each
    /// artifact wins; none when the file is absent). A line a crash cut off is skipped.
    fn read_legacy_index(&self) -> Result<BTreeMap<ArtifactId, ArtifactView>, StoreError> {
        let path = self.root().join(LEGACY_INDEX_FILE);
        let f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(StoreError::io(format!("opening {}", path.display()))(e)),
        };
        let mut out = BTreeMap::new();
        for (n, line) in BufReader::new(f).lines().enumerate() {
            let line = line.map_err(StoreError::io(format!("reading {}", path.display())))?;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<ArtifactView>(&line) {
                Ok(row) => {
                    out.entry(row.artifact_id.clone()).or_insert(row);
                }
                Err(e) => {
                    tracing::warn!(line = n + 1, error = %e, "unreadable row in {LEGACY_INDEX_FILE}")
                }
            }
        }
        Ok(out)
    }

    /// Repairs one blob folder; the metadata of the blob it holds, if any.
    fn repair_dir(
        &self,
        dir: &Path,
        index: &BTreeMap<ArtifactId, ArtifactView>,
        report: &mut RecoveryReport,
    ) -> Result<Option<ArtifactView>, StoreError> {
        if !dir.join(BUNDLE_FILE).is_file() {
            // Another server sharing the store may be between its meta.json and its
            // bundle's rename: decide under the commit lock it holds for that span.
            let _across_servers = self.lock_commit_across_servers()?;
            if dir.join(BUNDLE_FILE).is_file() {
                return self.repair_dir(dir, index, report);
            }
            // Never acknowledged: the upload answered only after the bundle was in place.
            std::fs::remove_dir_all(dir)
                .map_err(StoreError::io(format!("removing {}", dir.display())))?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
            report.removed_incomplete += 1;
            return Ok(None);
        }
        // Left by a crash mid-way through writing meta.json (nobody writes meta.json once
        // the bundle is in place).
        let _ = std::fs::remove_file(dir.join(format!("{META_FILE}.tmp")));
        let Some(id) = dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| ArtifactId::parse(n).ok())
        else {
            return Ok(None);
        };
        let meta = match read_meta(dir) {
            Ok(meta) => meta,
            Err(_) => match index.get(&id) {
                Some(row) => {
                    write_meta(dir, row)?;
                    sync_dir(dir)?;
                    report.repaired_meta += 1;
                    row.clone()
                }
                None => {
                    tracing::warn!(dir = %dir.display(), "bundle has no meta.json (and no row in an old index.jsonl); left in place, not listed");
                    report.unrepairable.push(dir.display().to_string());
                    return Ok(None);
                }
            },
        };
        Ok(Some(meta))
    }
}

/// Whether an upload still streams into this partial: its writer holds the file's lock
/// (taken at creation). A partial whose writer died is unlocked, as is one whose writer
/// has not locked it yet in the instant after creating it; removing that one fails its
/// upload, which the agent retries.
fn held_by_a_live_upload(path: &Path) -> Result<bool, StoreError> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        // Committed or removed by its writer meanwhile.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(StoreError::io(format!("opening {}", path.display()))(e)),
    };
    match file.try_lock() {
        Ok(()) => Ok(false),
        Err(std::fs::TryLockError::WouldBlock) => Ok(true),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(StoreError::io(format!("locking {}", path.display()))(e))
        }
    }
}
