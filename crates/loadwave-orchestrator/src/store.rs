//! Where tests persist, through the `object_store` crate: a local directory, memory
//! (tests) or S3, chosen by one URL ([`TestStore::from_url`]: `file:///path`,
//! `s3://bucket/prefix`, `memory:`).
//!
//! Layout under the store's prefix:
//!
//! - `tests/{id}.json`: the whole [`TestState`] (histograms as base64);
//! - `active/{id}`: an empty marker while the test is unfinished, so a controller finds
//!   running tests with one listing;
//! - `index.json`: the [`TestListItem`] of every finished test, so `GET /tests` reads one
//!   object plus the active tests instead of every snapshot.
//!
//! Where two writers can meet (several Lambda invocations; S3 and memory), writes are
//! conditional: [`TestStore::save`] takes the [`Version`] the state was read at and
//! answers [`StoreError::Conflict`] if someone wrote in between, so the caller reloads,
//! folds again (the fold is idempotent) and retries. A local directory has one writer,
//! the orchestrator process, and is written unconditionally.

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use loadwave_core::{TestListItem, TestState};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};

/// A store that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backing store failed.
    #[error("state store: {0}")]
    Backend(#[from] object_store::Error),
    /// Someone else wrote the object since it was read.
    #[error("test {0} was changed by another writer")]
    Conflict(String),
    /// A stored test does not parse.
    #[error("stored test {key} is unreadable: {reason}")]
    Corrupt {
        /// The object.
        key: String,
        /// Why.
        reason: String,
    },
    /// The store cannot be used as configured.
    #[error("state store {location}: {reason}")]
    Config {
        /// The directory or URL.
        location: String,
        /// Why.
        reason: String,
    },
}

/// The version a state was read or written at, for a conditional write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version(UpdateVersion);

/// Test snapshots in an object store.
#[derive(Clone)]
pub struct TestStore {
    inner: Arc<dyn ObjectStore>,
    conditional: bool,
    name: String,
}

/// Attempts of a read-modify-write of the index before giving up.
const INDEX_ATTEMPTS: usize = 20;
/// Snapshots read at once when loading many.
const READ_CONCURRENCY: usize = 16;

impl TestStore {
    /// Over any object store; `conditional` when it supports `If-Match` writes.
    pub fn new(inner: Arc<dyn ObjectStore>, conditional: bool, name: impl Into<String>) -> Self {
        TestStore {
            inner,
            conditional,
            name: name.into(),
        }
    }

    /// In memory: for tests, or a throwaway orchestrator. Conditional, like S3.
    pub fn memory() -> Self {
        TestStore::new(Arc::new(InMemory::new()), true, "memory:")
    }

    /// In a local directory, created if missing; survives restarts.
    pub fn local_dir(dir: &std::path::Path) -> Result<Self, StoreError> {
        let fail = |reason: String| StoreError::Config {
            location: dir.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
        let fs = LocalFileSystem::new_with_prefix(dir).map_err(|e| fail(e.to_string()))?;
        Ok(TestStore::new(
            Arc::new(fs),
            false,
            format!("file://{}", dir.display()),
        ))
    }

    /// From `LOADWAVE_STORE`: `file:///path` (or a bare path), `s3://bucket[/prefix]` or
    /// `memory:`. S3 takes the AWS SDK's usual environment (`AWS_REGION`, credentials,
    /// `AWS_ENDPOINT_URL` for a stand-in such as moto).
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        let fail = |reason: String| StoreError::Config {
            location: url.to_string(),
            reason,
        };
        if url == "memory:" || url == "memory://" {
            return Ok(TestStore::memory());
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(fail("names no bucket (s3://BUCKET/PREFIX)".into()));
            }
            let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
            if let Ok(endpoint) =
                std::env::var("AWS_ENDPOINT_URL_S3").or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
            {
                builder = builder
                    .with_allow_http(endpoint.starts_with("http://"))
                    .with_endpoint(endpoint);
            }
            if std::env::var("AWS_REGION").is_ok_and(|r| !r.is_empty()) {
                builder = builder.with_region(std::env::var("AWS_REGION").unwrap_or_default());
            }
            let s3 = builder.build().map_err(|e| fail(e.to_string()))?;
            let inner: Arc<dyn ObjectStore> = if prefix.trim_matches('/').is_empty() {
                Arc::new(s3)
            } else {
                Arc::new(PrefixStore::new(s3, prefix.trim_matches('/')))
            };
            return Ok(TestStore::new(inner, true, url));
        }
        let path = url.strip_prefix("file://").unwrap_or(url);
        if path.is_empty() || path.contains("://") {
            return Err(fail(
                "use file:///PATH, s3://BUCKET/PREFIX or memory:".into(),
            ));
        }
        TestStore::local_dir(std::path::Path::new(path))
    }

    /// The URL or directory, for logs.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn key(id: &str) -> Path {
        Path::from(format!("tests/{id}.json"))
    }

    fn marker(id: &str) -> Path {
        Path::from(format!("active/{id}"))
    }

    fn index() -> Path {
        Path::from("index.json")
    }

    fn mode(&self, version: Option<&Version>) -> PutMode {
        match (self.conditional, version) {
            (false, _) => PutMode::Overwrite,
            (true, None) => PutMode::Create,
            (true, Some(Version(v))) => PutMode::Update(v.clone()),
        }
    }

    async fn put(
        &self,
        key: &Path,
        bytes: Vec<u8>,
        mode: PutMode,
        id: &str,
    ) -> Result<Version, StoreError> {
        let opts = PutOptions {
            mode,
            ..PutOptions::default()
        };
        match self
            .inner
            .put_opts(key, PutPayload::from(bytes), opts)
            .await
        {
            Ok(r) => Ok(Version(UpdateVersion {
                e_tag: r.e_tag,
                version: r.version,
            })),
            Err(object_store::Error::Precondition { .. })
            | Err(object_store::Error::AlreadyExists { .. }) => {
                Err(StoreError::Conflict(id.to_string()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Stores a new test: its active marker, then the state (only if no test of that id
    /// exists).
    pub async fn create(&self, state: &TestState) -> Result<Version, StoreError> {
        if !state.is_finished() {
            self.inner
                .put(&Self::marker(state.id()), PutPayload::default())
                .await?;
        }
        let bytes = serde_json::to_vec(state).expect("test state serializes");
        let version = self
            .put(&Self::key(state.id()), bytes, self.mode(None), state.id())
            .await?;
        if state.is_finished() {
            self.finish(state).await?;
        }
        Ok(version)
    }

    /// Writes a snapshot of `state`, conditional on `version` where the store supports
    /// it (readers see the old or the new one). A finished test also lands in the index
    /// and loses its active marker.
    pub async fn save(
        &self,
        state: &TestState,
        version: Option<&Version>,
    ) -> Result<Version, StoreError> {
        let bytes = serde_json::to_vec(state).expect("test state serializes");
        // Without a version (the single-writer local orchestrator) the write is plain.
        let mode = match version {
            Some(v) => self.mode(Some(v)),
            None => PutMode::Overwrite,
        };
        let version = self
            .put(&Self::key(state.id()), bytes, mode, state.id())
            .await?;
        if state.is_finished() {
            self.finish(state).await?;
        }
        Ok(version)
    }

    /// Puts a finished test into the index, then drops its marker. Idempotent, so a
    /// crash between the two is repaired by the next save or load.
    async fn finish(&self, state: &TestState) -> Result<(), StoreError> {
        let item = TestListItem::of(state);
        for _ in 0..INDEX_ATTEMPTS {
            let (mut items, version) = self.read_index().await?;
            if items.contains(&item) {
                break;
            }
            items.retain(|i| i.id != item.id);
            items.push(item.clone());
            let bytes = serde_json::to_vec(&items).expect("index serializes");
            match self
                .put(&Self::index(), bytes, self.mode(version.as_ref()), "index")
                .await
            {
                Ok(_) => break,
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        match self.inner.delete(&Self::marker(state.id())).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn read_index(&self) -> Result<(Vec<TestListItem>, Option<Version>), StoreError> {
        Ok(match self.get_json(&Self::index()).await? {
            Some((items, version)) => (items, Some(version)),
            None => (Vec::new(), None),
        })
    }

    /// An object parsed as JSON, with the version it was read at; `None` if it is absent.
    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        key: &Path,
    ) -> Result<Option<(T, Version)>, StoreError> {
        let got = match self.inner.get(key).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let version = Version(UpdateVersion {
            e_tag: got.meta.e_tag.clone(),
            version: got.meta.version.clone(),
        });
        let bytes = got.bytes().await?;
        let value = serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            key: key.to_string(),
            reason: e.to_string(),
        })?;
        Ok(Some((value, version)))
    }

    /// One test and the version it was read at; `None` if there is no such test.
    pub async fn load(&self, id: &str) -> Result<Option<(TestState, Version)>, StoreError> {
        self.get_json(&Self::key(id)).await
    }

    /// The ids of unfinished tests (one listing).
    pub async fn active_ids(&self) -> Result<Vec<String>, StoreError> {
        let prefix = Path::from("active");
        let metas: Vec<_> = self.inner.list(Some(&prefix)).try_collect().await?;
        Ok(metas
            .into_iter()
            .filter_map(|m| m.location.filename().map(str::to_string))
            .collect())
    }

    /// Loads several tests at once; missing ones are left out, unreadable ones reported
    /// and skipped.
    pub async fn load_many(&self, ids: &[String]) -> Result<Vec<(TestState, Version)>, StoreError> {
        let loaded: Vec<Result<Option<(TestState, Version)>, StoreError>> =
            futures::stream::iter(ids.iter().cloned().map(|id| {
                // Owned, so the futures are `Send` for any lifetime (axum handlers).
                let store = self.clone();
                async move { store.load(&id).await }
            }))
            .buffer_unordered(READ_CONCURRENCY)
            .collect()
            .await;
        let mut out = Vec::with_capacity(loaded.len());
        for r in loaded {
            match r {
                Ok(Some(t)) => out.push(t),
                Ok(None) => {}
                Err(err @ StoreError::Corrupt { .. }) => {
                    tracing::error!(%err, "skipping stored test")
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Every unfinished test with its version. A finished one still marked active (a
    /// crash between its last write and the index) is repaired and left out.
    pub async fn load_active(&self) -> Result<Vec<(TestState, Version)>, StoreError> {
        let ids = self.active_ids().await?;
        let mut out = Vec::new();
        for (state, version) in self.load_many(&ids).await? {
            if state.is_finished() {
                self.finish(&state).await?;
            } else {
                out.push((state, version));
            }
        }
        Ok(out)
    }

    /// Every test's list line, newest first: the index plus the active tests.
    pub async fn list(&self) -> Result<Vec<TestListItem>, StoreError> {
        let (mut items, _) = self.read_index().await?;
        let active = self.load_active().await?;
        items.retain(|i| !active.iter().any(|(t, _)| t.id() == i.id));
        items.extend(active.iter().map(|(t, _)| TestListItem::of(t)));
        // Ids are UUIDv7: time-ordered.
        items.sort_by(|a, b| b.id.cmp(&a.id));
        Ok(items)
    }

    /// Every stored test. A snapshot that does not parse is reported and skipped, so one
    /// bad file cannot keep the orchestrator down.
    pub async fn load_all(&self) -> Result<Vec<TestState>, StoreError> {
        let prefix = Path::from("tests");
        let metas: Vec<_> = self.inner.list(Some(&prefix)).try_collect().await?;
        let ids: Vec<String> = metas
            .iter()
            .filter_map(|m| m.location.filename())
            .filter_map(|f| f.strip_suffix(".json"))
            .map(str::to_string)
            .collect();
        Ok(self
            .load_many(&ids)
            .await?
            .into_iter()
            .map(|(t, _)| t)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loadwave_core::TestOptions;
    use loadwave_proto::TestSpec;

    fn spec() -> TestSpec {
        TestSpec::from_json(br#"{"target_url":"http://127.0.0.1:1/","test_type":"avalanche","requests_per_driver":5}"#).unwrap()
    }

    #[tokio::test]
    async fn conditional_writes_refuse_a_stale_version() {
        let store = TestStore::memory();
        let state = TestState::new("t1", spec(), vec!["d".into()], 1, TestOptions::default());
        let v1 = store.create(&state).await.unwrap();
        assert!(matches!(
            store.create(&state).await,
            Err(StoreError::Conflict(_))
        ));
        let (loaded, v_read) = store.load("t1").await.unwrap().unwrap();
        assert_eq!(v_read, v1);
        let v2 = store.save(&loaded, Some(&v_read)).await.unwrap();
        // A writer still holding v1 loses.
        assert!(matches!(
            store.save(&loaded, Some(&v1)).await,
            Err(StoreError::Conflict(_))
        ));
        store.save(&loaded, Some(&v2)).await.unwrap();
        assert_eq!(store.active_ids().await.unwrap(), vec!["t1".to_string()]);
    }

    #[tokio::test]
    async fn finished_tests_move_from_the_active_markers_to_the_index() {
        let store = TestStore::memory();
        for id in ["a", "b"] {
            let state = TestState::new(id, spec(), vec!["d".into()], 1, TestOptions::default());
            store.create(&state).await.unwrap();
        }
        let (mut a, v) = store.load("a").await.unwrap().unwrap();
        a.fail("no drivers", 5);
        store.save(&a, Some(&v)).await.unwrap();
        assert_eq!(store.active_ids().await.unwrap(), vec!["b".to_string()]);
        let (index, _) = store.read_index().await.unwrap();
        assert_eq!(index.len(), 1);
        assert_eq!(index[0].id, "a");
        let list = store.list().await.unwrap();
        let ids: Vec<&str> = list.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["b", "a"]);
        assert_eq!(store.load_all().await.unwrap().len(), 2);
        assert_eq!(store.load_active().await.unwrap().len(), 1);
    }

    #[test]
    fn store_urls_name_what_is_wrong() {
        assert!(TestStore::from_url("memory:").is_ok());
        let err = TestStore::from_url("s3://").err().unwrap().to_string();
        assert!(err.contains("bucket"), "{err}");
        let err = TestStore::from_url("gs://x/y").err().unwrap().to_string();
        assert!(err.contains("s3://BUCKET"), "{err}");
        let dir = std::env::temp_dir().join(format!("lw-store-{}", std::process::id()));
        let store = TestStore::from_url(&format!("file://{}", dir.display())).unwrap();
        assert!(store.name().starts_with("file://"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
