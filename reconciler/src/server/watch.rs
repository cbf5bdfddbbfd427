//! The watch-and-reconcile loop: notify on the manifest's directory (editors save by
//! writing a temp file and renaming it over the old one, which a watch on the file itself
//! would miss), debounced, plus a periodic resync that catches anything the watch missed.

use std::convert::Infallible;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;

use super::reconcile::{Reconciler, Trigger};

/// A registered watch on the manifest's directory. Created before the server starts
/// answering, so no edit made after start-up is missed.
pub struct ManifestWatch {
    /// Kept alive: dropping it ends the watch.
    _watcher: RecommendedWatcher,
    events: mpsc::UnboundedReceiver<Change>,
    dir: PathBuf,
}

/// What an event on the manifest's name says about its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// Bytes were written into the file, which may still be open for more.
    Written,
    /// The file is complete as far as the event tells: its writer closed it, or another
    /// file was renamed over it, or it was created or removed.
    Settled,
}

/// What an event means for the manifest, or None when it cannot change its content.
fn change_of(kind: &EventKind) -> Option<Change> {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Some(Change::Settled),
        EventKind::Access(_) => None,
        EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any) => Some(Change::Written),
        _ => Some(Change::Settled),
    }
}

/// Longest wait for a writer to close a file it wrote into: a writer that keeps the file
/// open past it is taken as done.
const MAX_OPEN_WRITE_WAIT: Duration = Duration::from_secs(5);

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
                    if let Some(change) = change_of(&event.kind).filter(|_| ours) {
                        let _ = tx.send(change);
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

    /// Waits for a change and for the file to settle, reconciles; forever.
    ///
    /// Settled means `debounce` without an event after the last one, and, when the last
    /// event was bytes written into the file, its writer's close (or
    /// [`MAX_OPEN_WRITE_WAIT`] without an event): an editor that writes the file in two
    /// steps, pausing between them, never has its valid first half applied.
    pub async fn run(mut self, reconciler: Arc<Reconciler>, debounce: Duration) -> Infallible {
        tracing::info!(dir = %self.dir.display(), "watching the manifest's directory");
        loop {
            let Some(mut last) = self.events.recv().await else {
                // The watcher thread ended; the periodic resync still covers changes.
                tracing::error!("manifest watch stopped; relying on the periodic resync");
                return std::future::pending().await;
            };
            loop {
                let quiet = match last {
                    Change::Written => MAX_OPEN_WRITE_WAIT.max(debounce),
                    Change::Settled => debounce,
                };
                match tokio::time::timeout(quiet, self.events.recv()).await {
                    Ok(Some(change)) => last = change,
                    Ok(None) | Err(_) => break,
                }
            }
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
