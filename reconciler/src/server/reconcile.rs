//! The one reconcile function: read the manifest, plan against the queue, apply in one
//! transaction. Start-up, the file watch, the periodic resync and `POST
//! /v1/manifest/reload` all call [`Reconciler::reconcile`]; reconciles are serialized.
//! Of several servers on one database only the leader (`leader.rs`) reconciles on its
//! own (start-up, file changes, resync); a request to reload or apply is served anywhere.
//!
//! Like kube-runtime's `reconcile`, it works from current state only; the one use of the
//! trigger is that a periodic resync of a file whose sha256 is the last applied one stops
//! there: re-parsing and re-planning a 100k-job manifest every minute to find nothing
//! costs most of the server's idle CPU and a parse-sized peak of memory each time.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cis490_api::PlanSummary;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sha2::{Digest, Sha256};

use super::leader::Leadership;
use super::telemetry::Label1;
use crate::manifest::{
    parse_manifest_with_limit, read_manifest_text, LoadedManifest, ManifestErrors,
};
use crate::plan::{plan_owned, Plan};
use crate::policy::host_changes;
use crate::policy::HostPolicy;
use crate::queue::{JobQueue, ManifestSource, QueueError, SharedQueue};

/// What started a reconcile (for the log only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Startup,
    FileChange,
    Resync,
    ReloadRoute,
    /// `PUT /v1/manifest` wrote a new manifest.
    ApplyRoute,
    /// This server became the leader of its database (another one had led).
    TookOver,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Startup => "start-up",
            Trigger::FileChange => "file change",
            Trigger::Resync => "periodic resync",
            Trigger::ReloadRoute => "reload request",
            Trigger::ApplyRoute => "apply request",
            Trigger::TookOver => "leadership taken over",
        }
    }

    /// Background work, which only the leader of several servers does; an operator's
    /// request is served by whichever server it reaches.
    fn is_background(self) -> bool {
        matches!(
            self,
            Trigger::Startup | Trigger::FileChange | Trigger::Resync
        )
    }
}

/// Why a reconcile changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The manifest is invalid (or unreadable); the last good state stays.
    #[error("invalid manifest:\n{0}")]
    Invalid(ManifestErrors),
    /// The queue failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The blocking task running the reconcile failed.
    #[error("reconcile task failed: {0}")]
    Join(String),
}

/// Reconciles one manifest file into one queue.
#[derive(Debug)]
pub struct Reconciler {
    queue: SharedQueue,
    manifest: PathBuf,
    /// Most jobs the manifest may make.
    max_jobs: usize,
    /// Serializes reconciles, and holds the sha256 of the manifest text last applied with
    /// success (None before the first and after an invalid one): two planners must never
    /// apply plans made from one `actual`.
    serial: Mutex<Option<String>>,
    /// Reconciles that parsed, planned and applied (every one but a skipped resync).
    full_reconciles: AtomicU64,
    /// Reconciles by result, for `/metrics`.
    reconciles: Family<Label1, Counter>,
    /// Whether this server leads the servers of its database.
    leadership: Leadership,
}

impl Reconciler {
    pub fn new(
        queue: SharedQueue,
        manifest: PathBuf,
        max_jobs: usize,
        leadership: Leadership,
    ) -> Arc<Self> {
        Arc::new(Self {
            queue,
            manifest,
            max_jobs,
            serial: Mutex::new(None),
            full_reconciles: AtomicU64::new(0),
            reconciles: Family::default(),
            leadership,
        })
    }

    /// Whether this server leads the servers of its database (always, on SQLite).
    pub fn leadership(&self) -> &Leadership {
        &self.leadership
    }

    /// Reconciles by result (applied, unchanged, skipped, invalid, error), for `/metrics`.
    pub fn reconciles(&self) -> Family<Label1, Counter> {
        self.reconciles.clone()
    }

    /// The manifest file this reconciler reads.
    pub fn manifest_path(&self) -> &Path {
        &self.manifest
    }

    /// The manifest as errors in API answers name it: its file name, never the server's
    /// path to it (the server's log has that).
    fn manifest_name(&self) -> PathBuf {
        self.manifest
            .file_name()
            .map_or_else(|| PathBuf::from("manifest"), PathBuf::from)
    }

    /// Runs [`Reconciler::reconcile_blocking`] on the blocking pool.
    pub async fn reconcile(
        self: &Arc<Self>,
        trigger: Trigger,
    ) -> Result<PlanSummary, ReconcileError> {
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || this.reconcile_blocking(trigger))
            .await
            .map_err(|e| ReconcileError::Join(e.to_string()))?
    }

    /// How many reconciles parsed, planned and applied the manifest since start (a resync
    /// of an unchanged file does not count).
    pub fn full_reconciles(&self) -> u64 {
        self.full_reconciles.load(Ordering::Relaxed)
    }

    /// Loads the manifest, plans against the queue and applies. An invalid manifest is
    /// recorded (shown by `GET /v1/manifest`) and changes nothing. A periodic resync of the
    /// text last applied answers an empty, unapplied summary without parsing; every other
    /// trigger always reconciles.
    pub fn reconcile_blocking(&self, trigger: Trigger) -> Result<PlanSummary, ReconcileError> {
        let result = self.reconcile_once(trigger);
        let outcome = match &result {
            Ok(summary) if !summary.applied => "skipped",
            Ok(summary)
                if summary.create.is_empty()
                    && summary.update.is_empty()
                    && summary.tombstone.is_empty()
                    && summary.revive.is_empty() =>
            {
                "unchanged"
            }
            Ok(_) => "applied",
            Err(ReconcileError::Invalid(_)) => "invalid",
            Err(_) => "error",
        };
        self.reconciles
            .get_or_create(&[("result", outcome.to_string())])
            .inc();
        result
    }

    fn reconcile_once(&self, trigger: Trigger) -> Result<PlanSummary, ReconcileError> {
        if trigger.is_background() && !self.leadership.is_leader() {
            tracing::debug!(
                trigger = trigger.as_str(),
                "following: the leader reconciles"
            );
            return Ok(PlanSummary {
                applied: false,
                generation: self.queue.manifest_status()?.generation,
                ..PlanSummary::default()
            });
        }
        let mut last_applied = self
            .serial
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let path = self.manifest.display().to_string();
        let text = match read_manifest_text(&self.manifest) {
            Ok(text) => text,
            Err(errors) => return Err(self.invalid(trigger, &path, errors, &mut last_applied)?),
        };
        if trigger == Trigger::Resync {
            let sha256 = hex::encode(Sha256::digest(text.as_bytes()));
            if last_applied.as_deref() == Some(sha256.as_str()) {
                tracing::debug!(
                    trigger = trigger.as_str(),
                    "manifest unchanged since the last apply"
                );
                return Ok(PlanSummary {
                    applied: false,
                    generation: self.queue.manifest_status()?.generation,
                    ..PlanSummary::default()
                });
            }
        }
        self.full_reconciles.fetch_add(1, Ordering::Relaxed);
        let loaded = match parse_manifest_with_limit(&text, &self.manifest_name(), self.max_jobs) {
            Ok(loaded) => loaded,
            Err(errors) => return Err(self.invalid(trigger, &path, errors, &mut last_applied)?),
        };
        drop(text);
        for warning in &loaded.warnings {
            tracing::warn!("{warning}");
        }
        let Planned {
            plan,
            hosts,
            source,
        } = plan_against(self.queue.as_ref(), loaded, path)?;
        let host_changes = host_changes(&self.queue.host_policies()?, &hosts);
        let mut summary = self.queue.apply(&plan, &hosts, &source)?;
        summary.hosts = host_changes;
        *last_applied = Some(source.sha256);
        let unchanged = plan.is_empty();
        drop(plan);
        if unchanged {
            tracing::debug!(
                trigger = trigger.as_str(),
                generation = summary.generation,
                "manifest unchanged"
            );
        } else {
            tracing::info!(
                trigger = trigger.as_str(),
                generation = summary.generation,
                created = summary.create.len(),
                updated = summary.update.len(),
                tombstoned = summary.tombstone.len(),
                revived = summary.revive.len(),
                kept = summary.keep,
                "applied manifest {}",
                self.manifest.display()
            );
        }
        Ok(summary)
    }

    /// Logs and records an invalid (or unreadable) manifest; the next resync reconciles
    /// again whatever the file holds, so a fix back to the last good text clears the error.
    fn invalid(
        &self,
        trigger: Trigger,
        path: &str,
        mut errors: ManifestErrors,
        last_applied: &mut Option<String>,
    ) -> Result<ReconcileError, ReconcileError> {
        tracing::error!(
            trigger = trigger.as_str(),
            "manifest {path} is invalid; keeping the last good state:\n{errors}"
        );
        let name = self.manifest_name().display().to_string();
        for error in &mut errors.0 {
            error.path.clone_from(&name);
        }
        *last_applied = None;
        self.queue.record_manifest_errors(path, &errors.0)?;
        Ok(ReconcileError::Invalid(errors))
    }

    /// The plan `text` would make against the queue now; applies nothing. `name` names the
    /// text in errors and warnings (the client's own file).
    pub fn diff_blocking(&self, text: &str, name: &str) -> Result<PlanSummary, ReconcileError> {
        let LoadedManifest {
            manifest, warnings, ..
        } = parse_manifest_with_limit(text, Path::new(name), self.max_jobs)
            .map_err(ReconcileError::Invalid)?;
        let actual = self.queue.actual()?;
        // As in a reconcile: the plan takes the specs rather than a copy of them.
        let mut summary = plan_owned(manifest.jobs, &actual).summary();
        summary.applied = false;
        summary.generation = self.queue.manifest_status()?.generation;
        summary.warnings = warnings;
        summary.hosts = host_changes(&self.queue.host_policies()?, &manifest.hosts);
        Ok(summary)
    }
}

/// What one reconcile applies: the plan of a parsed manifest against the queue's jobs, the
/// manifest's host policies and where it came from.
pub struct Planned {
    pub plan: Plan,
    pub hosts: Vec<HostPolicy>,
    pub source: ManifestSource,
}

/// Plans `loaded` (read from `path`) against the queue. The plan takes the manifest's specs
/// rather than copying them, and the queue's snapshot is gone before this returns: either
/// would double the reconcile's peak of memory. Figure 4 of the benchmarks measures this
/// same function.
pub fn plan_against(
    queue: &dyn JobQueue,
    loaded: LoadedManifest,
    path: String,
) -> Result<Planned, QueueError> {
    let actual = queue.actual()?;
    let LoadedManifest {
        manifest,
        warnings,
        sha256,
        ..
    } = loaded;
    let plan = plan_owned(manifest.jobs, &actual);
    drop(actual);
    Ok(Planned {
        plan,
        hosts: manifest.hosts,
        source: ManifestSource {
            path,
            sha256,
            warnings,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{Queue, QueueConfig};

    const ONE_JOB: &str = "version = 1\n\n[defaults]\ncommand = [\"true\"]\n\n[models.gbt]\n\n[[jobs]]\nmodel = \"gbt\"\nmode = \"realistic\"\nseed = 1\n";
    const TWO_JOBS: &str = "version = 1\n\n[defaults]\ncommand = [\"true\"]\n\n[models.gbt]\n\n[[jobs]]\nmodel = \"gbt\"\nmode = \"realistic\"\nmatrix = { seed = [1, 2] }\n";

    fn reconciler(text: &str) -> (tempfile::TempDir, Arc<Reconciler>) {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("training_manifest.toml");
        std::fs::write(&manifest, text).unwrap();
        let queue = Arc::new(Queue::open_in_memory(QueueConfig::default()).unwrap());
        (
            dir,
            Reconciler::new(
                queue,
                manifest,
                crate::manifest::DEFAULT_MAX_MANIFEST_JOBS,
                Leadership::sole(),
            ),
        )
    }

    #[test]
    fn a_resync_of_the_applied_text_skips_the_parse_and_the_apply() {
        let (_dir, r) = reconciler(ONE_JOB);
        let first = r.reconcile_blocking(Trigger::Startup).unwrap();
        assert_eq!(first.create.len(), 1);
        assert_eq!(r.full_reconciles(), 1);
        let applied_at = r.queue.manifest_status().unwrap().last_applied_at;

        let resync = r.reconcile_blocking(Trigger::Resync).unwrap();
        assert_eq!(
            r.full_reconciles(),
            1,
            "an unchanged file is not parsed again"
        );
        assert!(!resync.applied);
        assert!(resync.create.is_empty() && resync.update.is_empty());
        assert_eq!(resync.generation, first.generation);
        assert_eq!(
            r.queue.manifest_status().unwrap().last_applied_at,
            applied_at,
            "nothing was applied"
        );
    }

    #[test]
    fn a_reload_of_an_unchanged_file_still_reconciles_and_answers_an_empty_plan() {
        let (_dir, r) = reconciler(ONE_JOB);
        let first = r.reconcile_blocking(Trigger::Startup).unwrap();
        for trigger in [Trigger::ReloadRoute, Trigger::FileChange] {
            let again = r.reconcile_blocking(trigger).unwrap();
            assert!(again.applied, "{trigger:?}");
            assert!(
                again.create.is_empty() && again.update.is_empty() && again.tombstone.is_empty()
            );
            assert_eq!(again.keep, 1);
            assert_eq!(again.generation, first.generation);
        }
        assert_eq!(r.full_reconciles(), 3);
    }

    /// A job entry added above the others moves every job in the file's order: the plan
    /// says so as one count, not as an update per job; `[[hosts]]` changes are listed.
    #[test]
    fn diff_counts_jobs_that_only_moved_and_lists_host_changes() {
        let hosts = |pi_allows: &str, more: &str| {
            format!("[[hosts]]\nname = \"pi\"\nallow_jobs = [\"{pi_allows}\"]\n{more}")
        };
        let before = format!("{TWO_JOBS}{}", hosts("gbt", ""));
        let (_dir, r) = reconciler(&before);
        r.reconcile_blocking(Trigger::Startup).unwrap();
        let first = "[[jobs]]\nmodel = \"gbt\"\nmode = \"oracle\"\nseed = 9\n";
        let after = TWO_JOBS.replace("[[jobs]]", &format!("{first}\n[[jobs]]"))
            + &hosts("mlp", "[[hosts]]\nname = \"gpu-2\"\n");
        let diff = r.diff_blocking(&after, "after.toml").unwrap();
        assert_eq!(diff.create.len(), 1);
        assert!(diff.update.is_empty(), "{:?}", diff.update);
        assert_eq!((diff.keep, diff.reordered), (2, 2));
        let hosts: Vec<(&str, &str, Vec<String>)> = diff
            .hosts
            .iter()
            .map(|h| (h.name.as_str(), h.change.as_str(), h.fields.clone()))
            .collect();
        assert_eq!(
            hosts,
            [
                ("gpu-2", "add", vec![]),
                ("pi", "update", vec!["allow_jobs".to_string()])
            ]
        );
    }

    #[test]
    fn a_resync_of_a_changed_file_applies_it() {
        let (dir, r) = reconciler(ONE_JOB);
        r.reconcile_blocking(Trigger::Startup).unwrap();
        std::fs::write(dir.path().join("training_manifest.toml"), TWO_JOBS).unwrap();
        let resync = r.reconcile_blocking(Trigger::Resync).unwrap();
        assert_eq!(resync.create.len(), 1);
        assert_eq!(r.full_reconciles(), 2);
        r.reconcile_blocking(Trigger::Resync).unwrap();
        assert_eq!(r.full_reconciles(), 2);
    }

    #[test]
    fn after_an_invalid_edit_a_resync_of_the_restored_text_clears_the_error() {
        let (dir, r) = reconciler(ONE_JOB);
        r.reconcile_blocking(Trigger::Startup).unwrap();
        let path = dir.path().join("training_manifest.toml");
        std::fs::write(&path, "version = 1\n[[jobs]]\nmodel = 42\n").unwrap();
        assert!(matches!(
            r.reconcile_blocking(Trigger::FileChange),
            Err(ReconcileError::Invalid(_))
        ));
        assert!(!r.queue.manifest_status().unwrap().last_errors.is_empty());
        std::fs::write(&path, ONE_JOB).unwrap();
        r.reconcile_blocking(Trigger::Resync).unwrap();
        assert_eq!(r.full_reconciles(), 3);
        assert!(r.queue.manifest_status().unwrap().last_errors.is_empty());
    }
}
