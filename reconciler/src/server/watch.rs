//! The watch-and-reconcile loop: notify on the manifest's directory (editors save by
//! writing a temp file and renaming it over the old one, which a watch on the file itself
//! would miss), debounced, plus a periodic resync that catches anything the watch missed.

use std::convert::Infallible;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;

use super::reconcile::{Reconciler, Trigger};

/// A registered watch on the manifest's directory. Created before the server starts
/// answering, so no edit made after start-up is missed.
pub struct ManifestWatch {
    /// Kept alive: dropping it ends the watch.
    _watcher: RecommendedWatcher,
    events: mpsc::UnboundedReceiver<()>,
    dir: PathBuf,
}

/// True for events that can change the file's content or which file the name points to.
fn is_relevant(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

impl ManifestWatch {
    /// Starts watching the directory that holds `manifest`.
    pub fn start(manifest: &Path) -> notify::Result<ManifestWatch> {
        let dir = match manifest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name: Option<OsString> = manifest.file_name().map(|n| n.to_os_string());
        let (tx, events) = mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
                Ok(event) => {
                    let ours = event
                        .paths
                        .iter()
                        .any(|p| p.file_name().map(|n| n.to_os_string()) == name);
                    if ours && is_relevant(&event.kind) {
                        let _ = tx.send(());
                    }
                }
                Err(e) => tracing::warn!(error = %e, "manifest watch error"),
            })?;
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        Ok(ManifestWatch {
            _watcher: watcher,
            events,
            dir,
        })
    }

    /// Waits for a change, lets the burst settle for `debounce`, reconciles; forever.
    pub async fn run(mut self, reconciler: Arc<Reconciler>, debounce: Duration) -> Infallible {
        tracing::info!(dir = %self.dir.display(), "watching the manifest's directory");
        loop {
            if self.events.recv().await.is_none() {
                // The watcher thread ended; the periodic resync still covers changes.
                tracing::error!("manifest watch stopped; relying on the periodic resync");
                return std::future::pending().await;
            }
            // An in-place truncate + write is two events; wait until the writer is done.
            while let Ok(Some(())) = tokio::time::timeout(debounce, self.events.recv()).await {}
            // Errors are logged and recorded by the reconciler; the loop goes on.
            let _ = reconciler.reconcile(Trigger::FileChange).await;
        }
    }
}

/// Reconciles every `every`, forever.
pub async fn resync(reconciler: Arc<Reconciler>, every: Duration) -> Infallible {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let _ = reconciler.reconcile(Trigger::Resync).await;
    }
}
