//! The one reconcile function: read the manifest, plan against the queue, apply in one
//! transaction. Start-up, the file watch, the periodic resync and `POST
//! /v1/manifest/reload` all call [`Reconciler::reconcile`]; reconciles are serialized.
//!
//! Like kube-runtime's `reconcile`, it works from current state only: the trigger is
//! logged, never consulted.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cis490_api::PlanSummary;

use crate::manifest::{load_manifest, parse_manifest, LoadedManifest, ManifestErrors};
use crate::plan::plan;
use crate::queue::{ManifestSource, Queue, QueueError};

/// What started a reconcile (for the log only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Startup,
    FileChange,
    Resync,
    ReloadRoute,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Startup => "start-up",
            Trigger::FileChange => "file change",
            Trigger::Resync => "periodic resync",
            Trigger::ReloadRoute => "reload request",
        }
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
    queue: Queue,
    manifest: PathBuf,
    /// Serializes reconciles: two planners must never apply plans made from one `actual`.
    serial: Mutex<()>,
}

impl Reconciler {
    pub fn new(queue: Queue, manifest: PathBuf) -> Arc<Self> {
        Arc::new(Self {
            queue,
            manifest,
            serial: Mutex::new(()),
        })
    }

    /// The manifest file this reconciler reads.
    pub fn manifest_path(&self) -> &Path {
        &self.manifest
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

    /// Loads the manifest, plans against the queue and applies. An invalid manifest is
    /// recorded (shown by `GET /v1/manifest`) and changes nothing.
    pub fn reconcile_blocking(&self, trigger: Trigger) -> Result<PlanSummary, ReconcileError> {
        let _serial = self
            .serial
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let path = self.manifest.display().to_string();
        let loaded = match load_manifest(&self.manifest) {
            Ok(loaded) => loaded,
            Err(errors) => {
                tracing::error!(
                    trigger = trigger.as_str(),
                    "manifest {path} is invalid; keeping the last good state:\n{errors}"
                );
                self.queue.record_manifest_errors(&path, &errors.0)?;
                return Err(ReconcileError::Invalid(errors));
            }
        };
        for warning in &loaded.warnings {
            tracing::warn!("{warning}");
        }
        let actual = self.queue.actual()?;
        let plan = plan(&loaded.manifest.jobs, &actual);
        let source = ManifestSource {
            path,
            sha256: loaded.sha256.clone(),
            warnings: loaded.warnings.clone(),
        };
        let summary = self.queue.apply(&plan, &loaded.manifest.hosts, &source)?;
        if plan.is_empty() {
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

    /// The plan `text` would make against the queue now; applies nothing.
    pub fn diff_blocking(&self, text: &str) -> Result<PlanSummary, ReconcileError> {
        let loaded: LoadedManifest =
            parse_manifest(text, &self.manifest).map_err(ReconcileError::Invalid)?;
        let actual = self.queue.actual()?;
        let mut summary = plan(&loaded.manifest.jobs, &actual).summary();
        summary.applied = false;
        summary.generation = self.queue.manifest_status()?.generation;
        summary.warnings = loaded.warnings;
        Ok(summary)
    }
}
