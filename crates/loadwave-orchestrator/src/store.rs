//! Where tests persist: one JSON object per test (`tests/{id}.json`), written only by the
//! controller, through the `object_store` crate so the same code runs on a local
//! directory (`--data-dir`), in memory (tests) and, later, on S3.

use std::sync::Arc;

use futures::TryStreamExt;
use loadwave_core::TestState;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

/// A store that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backing store failed.
    #[error("state store: {0}")]
    Backend(#[from] object_store::Error),
    /// A stored test does not parse.
    #[error("stored test {key} is unreadable: {reason}")]
    Corrupt {
        /// The object.
        key: String,
        /// Why.
        reason: String,
    },
    /// The data directory cannot be used.
    #[error("data directory {path}: {reason}")]
    Dir {
        /// The directory.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Test snapshots in an object store.
#[derive(Clone)]
pub struct TestStore {
    inner: Arc<dyn ObjectStore>,
}

impl TestStore {
    /// Over any object store.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        TestStore { inner }
    }

    /// In memory: for tests, or a throwaway orchestrator.
    pub fn memory() -> Self {
        TestStore::new(Arc::new(InMemory::new()))
    }

    /// In a local directory, created if missing; survives restarts.
    pub fn local_dir(dir: &std::path::Path) -> Result<Self, StoreError> {
        let fail = |reason: String| StoreError::Dir {
            path: dir.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
        let fs = LocalFileSystem::new_with_prefix(dir).map_err(|e| fail(e.to_string()))?;
        Ok(TestStore::new(Arc::new(fs)))
    }

    fn key(id: &str) -> Path {
        Path::from(format!("tests/{id}.json"))
    }

    /// Writes a snapshot of `state` (atomically: readers see the old or the new one).
    pub async fn save(&self, state: &TestState) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(state).expect("test state serializes");
        self.inner
            .put(&Self::key(state.id()), PutPayload::from(bytes))
            .await?;
        Ok(())
    }

    /// Every stored test. A snapshot that does not parse is reported and skipped, so one
    /// bad file cannot keep the orchestrator down.
    pub async fn load_all(&self) -> Result<Vec<TestState>, StoreError> {
        let prefix = Path::from("tests");
        let metas: Vec<_> = self.inner.list(Some(&prefix)).try_collect().await?;
        let mut tests = Vec::with_capacity(metas.len());
        for meta in metas {
            if !meta.location.as_ref().ends_with(".json") {
                continue;
            }
            let bytes = self.inner.get(&meta.location).await?.bytes().await?;
            match serde_json::from_slice::<TestState>(&bytes) {
                Ok(state) => tests.push(state),
                Err(e) => {
                    let err = StoreError::Corrupt {
                        key: meta.location.to_string(),
                        reason: e.to_string(),
                    };
                    tracing::error!(%err, "skipping stored test");
                }
            }
        }
        Ok(tests)
    }
}
