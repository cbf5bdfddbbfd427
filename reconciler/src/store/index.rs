//! The artifact index the store keeps beside its bytes: in the database, so that servers
//! sharing a store and a database share one index and nobody writes an index file in the
//! store.

use cis490_api::{ArtifactId, ArtifactView};

use crate::queue::{QueueError, SharedQueue};

/// Which byte sequences are stored, each with the upload that first stored it.
pub trait ArtifactIndex: std::fmt::Debug + Send + Sync + 'static {
    /// Adds each row whose artifact is not indexed yet; how many were added.
    fn add(&self, rows: &[ArtifactView]) -> Result<usize, QueueError>;

    /// Whether the artifact is indexed.
    fn contains(&self, id: &ArtifactId) -> Result<bool, QueueError>;
}

/// The index in the queue's database (its `artifacts` table).
#[derive(Debug, Clone)]
pub struct QueueIndex(pub SharedQueue);

impl ArtifactIndex for QueueIndex {
    fn add(&self, rows: &[ArtifactView]) -> Result<usize, QueueError> {
        self.0.index_artifacts(rows)
    }

    fn contains(&self, id: &ArtifactId) -> Result<bool, QueueError> {
        self.0.artifact_indexed(id)
    }
}

/// An index in memory, for tests of the store on its own.
#[cfg(test)]
#[derive(Debug, Default)]
pub struct MemoryIndex {
    rows: std::sync::Mutex<std::collections::BTreeMap<ArtifactId, ArtifactView>>,
    lookups: std::sync::atomic::AtomicUsize,
}

#[cfg(test)]
impl MemoryIndex {
    fn rows(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<ArtifactId, ArtifactView>> {
        self.rows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every row, by artifact ID.
    pub fn all(&self) -> Vec<ArtifactView> {
        self.rows().values().cloned().collect()
    }

    /// How many times `contains` was asked.
    pub fn lookups(&self) -> usize {
        self.lookups.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Forgets a row (as a crash between a put and its index row would).
    pub fn forget(&self, id: &ArtifactId) {
        self.rows().remove(id);
    }
}

#[cfg(test)]
impl ArtifactIndex for MemoryIndex {
    fn add(&self, rows: &[ArtifactView]) -> Result<usize, QueueError> {
        let mut held = self.rows();
        let before = held.len();
        for row in rows {
            held.entry(row.artifact_id.clone())
                .or_insert_with(|| row.clone());
        }
        Ok(held.len() - before)
    }

    fn contains(&self, id: &ArtifactId) -> Result<bool, QueueError> {
        self.lookups
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(self.rows().contains_key(id))
    }
}
