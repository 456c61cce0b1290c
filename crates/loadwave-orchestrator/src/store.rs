//! Where tests persist, through the `object_store` crate: a local directory, memory
//! (tests) or S3, chosen by one URL ([`TestStore::from_url`]: `file:///path`,
//! `s3://bucket/prefix`, `memory:`).
//!
//! Layout under the store's prefix:
//!
//! - `tests/{id}.json`: the test's main document ([`loadwave_core::snapshot`]): its state
//!   without the sealed part of the timeline, the last seconds inline, and the manifest
//!   naming the chunk object of every sealed chunk. Its size does not grow with the test's
//!   age. A finished test's document holds the whole timeline and no manifest.
//! - `tests/{id}/timeline/{chunk}-{nonce}.json`: a sealed chunk of the timeline
//!   ([`loadwave_core::CHUNK_SECONDS`] seconds of merged histograms), written once under a
//!   name no other write uses, never changed;
//! - `active/{id}`: an empty marker while the test is unfinished, so a controller finds
//!   running tests with one listing;
//! - `index.json`: the [`TestListItem`] of every finished test, so `GET /tests` reads one
//!   object plus the active tests instead of every snapshot.
//!
//! A write puts the changed chunks first, then the main document; only the document makes
//! them visible. Where two writers can meet (several Lambda invocations; S3 and memory),
//! the document's write is conditional: [`TestStore::write`] takes the [`Version`] the
//! state was read at and answers [`StoreError::Conflict`] if someone wrote in between, so
//! the caller reloads, folds again (the fold is idempotent) and retries. The loser's chunk
//! objects were never named by a document and are deleted; the winner deletes the chunk
//! objects its manifest replaced (best effort: a leftover costs storage, not
//! correctness, and a finished test's write removes every chunk object of the test). A
//! local directory has one writer, the orchestrator process, and is written
//! unconditionally.
//!
//! Readers meet deleted chunks only when a newer document replaced them; they read the
//! document again ([`TestStore::load`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{StreamExt, TryStreamExt};
use loadwave_core::{ListQuery, Snapshot, SnapshotError, TestListItem, TestState};
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
    /// A state that cannot be written as it is.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
}

/// The version a state was read or written at, for a conditional write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version(UpdateVersion);

/// What a store has written since it was made (every clone counts into the same figures).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Objects put.
    pub puts: u64,
    /// Bytes of those objects.
    pub bytes: u64,
}

#[derive(Debug, Default)]
struct Counters {
    puts: AtomicU64,
    bytes: AtomicU64,
}

/// Test snapshots in an object store.
#[derive(Clone)]
pub struct TestStore {
    inner: Arc<dyn ObjectStore>,
    conditional: bool,
    name: String,
    written: Arc<Counters>,
    /// A local directory's root: its files are made 0600 and its directories 0700.
    local_root: Option<std::path::PathBuf>,
}

/// Attempts of a read-modify-write of the index before giving up.
const INDEX_ATTEMPTS: usize = 20;
/// Attempts to read a test whose chunks keep being replaced under the reader.
const READ_ATTEMPTS: usize = 10;
/// Objects read at once when loading many.
const READ_CONCURRENCY: usize = 16;

impl TestStore {
    /// Over any object store; `conditional` when it supports `If-Match` writes.
    pub fn new(inner: Arc<dyn ObjectStore>, conditional: bool, name: impl Into<String>) -> Self {
        TestStore {
            inner,
            conditional,
            name: name.into(),
            written: Arc::default(),
            local_root: None,
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
        // Specs hold secrets (headers, bodies): only the orchestrator's user may read them.
        private_dir(dir).map_err(|e| fail(format!("cannot make it private (0700): {e}")))?;
        let fs = LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| fail(e.to_string()))?
            // A test's chunk folder goes with its last chunk.
            .with_automatic_cleanup(true);
        let mut store = TestStore::new(Arc::new(fs), false, format!("file://{}", dir.display()));
        store.local_root = Some(dir.to_path_buf());
        Ok(store)
    }

    /// Makes a local object file 0600 and the directories from the root down to it 0700,
    /// whatever the process's umask. A no-op for other stores.
    fn harden(&self, key: &Path) {
        let Some(root) = &self.local_root else {
            return;
        };
        let mut at = root.clone();
        let parts: Vec<_> = key.parts().collect();
        for (i, part) in parts.iter().enumerate() {
            at.push(part.as_ref());
            let result = if i + 1 == parts.len() {
                private_file(&at)
            } else {
                private_dir(&at)
            };
            if let Err(err) = result {
                tracing::warn!(path = %at.display(), %err, "cannot restrict permissions");
            }
        }
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

    fn chunk_dir(id: &str) -> Path {
        Path::from(format!("tests/{id}/timeline"))
    }

    fn chunk_key(id: &str, name: &str) -> Path {
        Path::from(format!("tests/{id}/timeline/{name}.json"))
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

    /// A name part no other write uses, for chunk objects.
    fn nonce() -> String {
        uuid::Uuid::new_v4().simple().to_string()[..16].to_string()
    }

    /// What this store (and its clones) has written so far.
    pub fn written(&self) -> WriteStats {
        WriteStats {
            puts: self.written.puts.load(Ordering::Relaxed),
            bytes: self.written.bytes.load(Ordering::Relaxed),
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
        let len = bytes.len() as u64;
        let put = self
            .inner
            .put_opts(key, PutPayload::from(bytes), opts)
            .await;
        self.written.puts.fetch_add(1, Ordering::Relaxed);
        self.written.bytes.fetch_add(len, Ordering::Relaxed);
        if put.is_ok() {
            self.harden(key);
        }
        match put {
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

    /// Deletes objects, best effort: one left behind costs storage, not correctness.
    async fn delete_quietly(&self, keys: Vec<Path>) {
        for key in keys {
            if let Err(err) = self.delete_if_present(&key).await {
                tracing::warn!(%key, %err, "stale object not deleted");
            }
        }
    }

    /// Stores a new test: its active marker, then the state (only if no test of that id
    /// exists).
    pub async fn create(&self, state: &TestState) -> Result<Version, StoreError> {
        if !state.is_finished() {
            self.inner
                .put(&Self::marker(state.id()), PutPayload::default())
                .await?;
            self.harden(&Self::marker(state.id()));
        }
        let snapshot = state.snapshot(&Self::nonce())?;
        self.put_snapshot(&snapshot, self.mode(None)).await
    }

    /// Writes a snapshot of `state`, conditional on `version` where the store supports
    /// it (readers see the old or the new one), and records it as written in `state`. A
    /// finished test is written whole (its chunks are loaded first if they are not in
    /// memory), lands in the index and loses its active marker.
    pub async fn save(
        &self,
        state: &mut TestState,
        version: Option<&Version>,
    ) -> Result<Version, StoreError> {
        if state.is_finished() && !state.is_complete() {
            self.load_chunks(state, None).await?;
        }
        let snapshot = state.snapshot(&Self::nonce())?;
        let version = self.write(&snapshot, version).await?;
        state.snapshot_written(&snapshot);
        Ok(version)
    }

    /// Writes `snapshot` (from [`TestState::snapshot`] or
    /// [`loadwave_core::ControllerCore::snapshots_due`]): its chunks, then its document,
    /// conditional on `version` where the store supports it. Without a version (the
    /// single-writer local orchestrator) the document is written plainly.
    pub async fn write(
        &self,
        snapshot: &Snapshot,
        version: Option<&Version>,
    ) -> Result<Version, StoreError> {
        let mode = match version {
            Some(v) => self.mode(Some(v)),
            None => PutMode::Overwrite,
        };
        self.put_snapshot(snapshot, mode).await
    }

    async fn put_snapshot(
        &self,
        snapshot: &Snapshot,
        mode: PutMode,
    ) -> Result<Version, StoreError> {
        let id = snapshot.id.as_str();
        let new_chunks: Vec<Path> = snapshot
            .chunks
            .iter()
            .map(|c| Self::chunk_key(id, &c.name))
            .collect();
        for c in &snapshot.chunks {
            // Unique names: nothing to race for, so a plain put.
            if let Err(e) = self
                .put(
                    &Self::chunk_key(id, &c.name),
                    c.body.clone(),
                    PutMode::Overwrite,
                    id,
                )
                .await
            {
                self.delete_quietly(new_chunks).await;
                return Err(e);
            }
        }
        let version = match self
            .put(&Self::key(id), snapshot.doc.clone(), mode, id)
            .await
        {
            Ok(v) => v,
            Err(e) => {
                // No document names them.
                self.delete_quietly(new_chunks).await;
                return Err(e);
            }
        };
        if snapshot.compacted {
            // The document holds everything: every chunk object of the test may go,
            // including any a crashed writer left.
            let stale: Vec<Path> = self
                .inner
                .list(Some(&Self::chunk_dir(id)))
                .map_ok(|m| m.location)
                .try_collect()
                .await
                .unwrap_or_default();
            self.delete_quietly(stale).await;
        } else {
            let replaced = snapshot.replaced.iter();
            self.delete_quietly(replaced.map(|n| Self::chunk_key(id, n)).collect())
                .await;
        }
        if let Some(item) = &snapshot.list_item {
            self.finish(item).await?;
        }
        Ok(version)
    }

    /// Puts a finished test into the index, then drops its marker. Idempotent, so a
    /// crash between the two is repaired by the next save or load.
    async fn finish(&self, item: &TestListItem) -> Result<(), StoreError> {
        self.update_index(|items| {
            if items.contains(item) {
                return false;
            }
            items.retain(|i| i.id != item.id);
            items.push(item.clone());
            true
        })
        .await?;
        self.delete_if_present(&Self::marker(&item.id)).await
    }

    /// Changes the index with `edit` (which says whether it changed anything) and writes
    /// it back conditionally, reading it again when another writer got there first.
    async fn update_index(
        &self,
        mut edit: impl FnMut(&mut Vec<TestListItem>) -> bool,
    ) -> Result<(), StoreError> {
        for _ in 0..INDEX_ATTEMPTS {
            let (mut items, version) = self.read_index().await?;
            if !edit(&mut items) {
                return Ok(());
            }
            let bytes = serde_json::to_vec(&items).expect("index serializes");
            match self
                .put(&Self::index(), bytes, self.mode(version.as_ref()), "index")
                .await
            {
                Ok(_) => return Ok(()),
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Deletes `key`; an object already gone is fine.
    async fn delete_if_present(&self, key: &Path) -> Result<(), StoreError> {
        match self.inner.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn read_index(&self) -> Result<(Vec<TestListItem>, Option<Version>), StoreError> {
        Ok(match self.get_bytes(&Self::index()).await? {
            Some((bytes, version)) => {
                let items = serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                    key: Self::index().to_string(),
                    reason: e.to_string(),
                })?;
                (items, Some(version))
            }
            None => (Vec::new(), None),
        })
    }

    /// An object's bytes with the version they were read at; `None` if it is absent.
    async fn get_bytes(&self, key: &Path) -> Result<Option<(bytes::Bytes, Version)>, StoreError> {
        let got = match self.inner.get(key).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let version = Version(UpdateVersion {
            e_tag: got.meta.e_tag.clone(),
            version: got.meta.version.clone(),
        });
        Ok(Some((got.bytes().await?, version)))
    }

    /// One test's main document: the state with the timeline's tail in memory and its
    /// sealed chunks not (see [`TestState::is_complete`]), and the version it was read
    /// at; `None` if there is no such test. Enough to fold reports into and to write back.
    pub async fn load_head(&self, id: &str) -> Result<Option<(TestState, Version)>, StoreError> {
        let key = Self::key(id);
        let Some((bytes, version)) = self.get_bytes(&key).await? else {
            return Ok(None);
        };
        let state = TestState::from_doc(&bytes).map_err(|e| StoreError::Corrupt {
            key: key.to_string(),
            reason: e.to_string(),
        })?;
        Ok(Some((state, version)))
    }

    /// One test, its whole timeline included, and the version it was read at; `None` if
    /// there is no such test.
    pub async fn load(&self, id: &str) -> Result<Option<(TestState, Version)>, StoreError> {
        for _ in 0..READ_ATTEMPTS {
            let Some((mut state, version)) = self.load_head(id).await? else {
                return Ok(None);
            };
            match self.load_chunks(&mut state, None).await {
                Ok(()) => return Ok(Some((state, version))),
                // A newer document replaced a chunk while it was read: read that one.
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Conflict(id.to_string()))
    }

    /// Reads the stored chunks of `state` that are not in memory (`only` these chunk
    /// indices, or all). [`StoreError::Conflict`] when one is gone: a newer document
    /// replaced it, so the state is stale and must be loaded again.
    pub async fn load_chunks(
        &self,
        state: &mut TestState,
        only: Option<&[u32]>,
    ) -> Result<(), StoreError> {
        let id = state.id().to_string();
        let wanted: Vec<(u32, String)> = state
            .unloaded_chunks()
            .into_iter()
            .filter(|(k, _)| only.is_none_or(|o| o.contains(k)))
            .collect();
        let bodies: Vec<Result<(u32, Option<bytes::Bytes>), StoreError>> =
            futures::stream::iter(wanted.into_iter().map(|(k, name)| {
                let (store, key) = (self.clone(), Self::chunk_key(&id, &name));
                async move { Ok((k, store.get_bytes(&key).await?.map(|(b, _)| b))) }
            }))
            .buffer_unordered(READ_CONCURRENCY)
            .collect()
            .await;
        for body in bodies {
            match body? {
                (k, Some(bytes)) => state.restore_chunk(k, &bytes)?,
                (_, None) => return Err(StoreError::Conflict(id)),
            }
        }
        Ok(())
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

    /// Loads several tests at once, main documents only ([`TestStore::load_head`]);
    /// missing ones are left out, unreadable ones reported and skipped.
    pub async fn load_many(&self, ids: &[String]) -> Result<Vec<(TestState, Version)>, StoreError> {
        self.load_each(ids, false).await
    }

    async fn load_each(
        &self,
        ids: &[String],
        whole: bool,
    ) -> Result<Vec<(TestState, Version)>, StoreError> {
        let loaded: Vec<Result<Option<(TestState, Version)>, StoreError>> =
            futures::stream::iter(ids.iter().cloned().map(|id| {
                // Owned, so the futures are `Send` for any lifetime (axum handlers).
                let store = self.clone();
                async move {
                    if whole {
                        store.load(&id).await
                    } else {
                        store.load_head(&id).await
                    }
                }
            }))
            .buffer_unordered(READ_CONCURRENCY)
            .collect()
            .await;
        let mut out = Vec::with_capacity(loaded.len());
        for r in loaded {
            match r {
                Ok(Some(t)) => out.push(t),
                Ok(None) => {}
                Err(err @ (StoreError::Corrupt { .. } | StoreError::Snapshot(_))) => {
                    tracing::error!(%err, "skipping stored test")
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Every unfinished test with its version, main documents only. A finished one still
    /// marked active (a crash between its last write and the index) is repaired and left
    /// out.
    pub async fn load_active(&self) -> Result<Vec<(TestState, Version)>, StoreError> {
        let ids = self.active_ids().await?;
        let mut out = Vec::new();
        for (state, version) in self.load_many(&ids).await? {
            if state.is_finished() {
                // A finished test's document is whole (compacted).
                self.finish(&TestListItem::of(&state)).await?;
            } else {
                out.push((state, version));
            }
        }
        Ok(out)
    }

    /// The list lines of the finished tests (the index), as written.
    pub async fn finished_items(&self) -> Result<Vec<TestListItem>, StoreError> {
        Ok(self.read_index().await?.0)
    }

    /// A page of the tests' list lines, newest first (see [`ListQuery`]).
    pub async fn list_page(&self, query: &ListQuery) -> Result<Vec<TestListItem>, StoreError> {
        Ok(query.page(self.list().await?))
    }

    /// The body of chunk object `name` of test `id`; `None` if it is gone (a newer
    /// document replaced it).
    pub async fn chunk_body(
        &self,
        id: &str,
        name: &str,
    ) -> Result<Option<bytes::Bytes>, StoreError> {
        Ok(self
            .get_bytes(&Self::chunk_key(id, name))
            .await?
            .map(|(b, _)| b))
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

    /// Deletes test `id`: its timeline chunks, its document, its marker and its line in
    /// the index. Whether it existed (its document was there).
    pub async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        let chunks: Vec<Path> = self
            .inner
            .list(Some(&Self::chunk_dir(id)))
            .map_ok(|m| m.location)
            .try_collect()
            .await?;
        for key in chunks.iter().chain([&Self::marker(id)]) {
            self.delete_if_present(key).await?;
        }
        // Stores answer a delete of a missing object as done (S3 does): ask first.
        let existed = match self.inner.head(&Self::key(id)).await {
            Ok(_) => true,
            Err(object_store::Error::NotFound { .. }) => false,
            Err(e) => return Err(e.into()),
        };
        self.delete_if_present(&Self::key(id)).await?;
        self.update_index(|items| {
            let before = items.len();
            items.retain(|i| i.id != id);
            items.len() != before
        })
        .await?;
        Ok(existed)
    }

    /// The ids of finished tests (from the index) that ended before `cutoff_ms`, ms since
    /// the epoch: what a retention sweep deletes.
    pub async fn finished_before(&self, cutoff_ms: u64) -> Result<Vec<String>, StoreError> {
        let (items, _) = self.read_index().await?;
        Ok(items
            .into_iter()
            .filter(|i| i.finished_at_ms.unwrap_or(i.created_at_ms) < cutoff_ms)
            .map(|i| i.id)
            .collect())
    }

    /// Every stored test, whole. A test that does not read back is reported and
    /// skipped, so one bad file cannot keep the orchestrator down.
    pub async fn load_all(&self) -> Result<Vec<TestState>, StoreError> {
        // The documents only: the chunks live one level further down.
        let listing = self
            .inner
            .list_with_delimiter(Some(&Path::from("tests")))
            .await?;
        let ids: Vec<String> = listing
            .objects
            .iter()
            .filter_map(|m| m.location.filename())
            .filter_map(|f| f.strip_suffix(".json"))
            .map(str::to_string)
            .collect();
        Ok(self
            .load_each(&ids, true)
            .await?
            .into_iter()
            .map(|(t, _)| t)
            .collect())
    }
}

/// Makes `dir` readable by its owner only (0700).
fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    set_mode(dir, 0o700)
}

/// Makes `file` readable by its owner only (0600).
fn private_file(file: &std::path::Path) -> std::io::Result<()> {
    set_mode(file, 0o600)
}

/// Sets `path`'s permission bits (nothing to do where there are none).
fn set_mode(path: &std::path::Path, mode: u32) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use loadwave_core::{Applied, CHUNK_SECONDS, TestOptions};
    use loadwave_proto::{Message, TestSpec};
    use loadwave_testkit::messages::{register, report};

    fn spec() -> TestSpec {
        TestSpec::from_json(br#"{"target_url":"http://127.0.0.1:1/","test_type":"avalanche","requests_per_driver":5}"#).unwrap()
    }

    /// A running test of `drivers` drivers with `seconds` seconds of reports folded.
    fn running(id: &str, drivers: usize, seconds: u32) -> TestState {
        let ids: Vec<String> = (0..drivers).map(|i| format!("d{i}")).collect();
        let mut s = TestState::new(id, spec(), ids.clone(), 1, TestOptions::default());
        s.poll(1);
        for d in &ids {
            s.apply(&register(d, Some(id)));
        }
        s.poll(1);
        // A day of bus time: the plan has no end, so the bus clock bounds the seconds.
        s.observe_clock(1 + 86_400_000);
        for second in 0..seconds {
            for d in &ids {
                s.apply(&report(id, d, u64::from(second), false, 10));
            }
        }
        s
    }

    /// Report `seq` of `driver` with its bucket in `second`.
    fn late(id: &str, driver: &str, seq: u64, second: u32) -> Message {
        let mut m = report(id, driver, seq, false, 7);
        if let Message::Metrics(r) = &mut m {
            r.buckets[0].second = second;
        }
        m
    }

    async fn chunk_objects(store: &TestStore, id: &str) -> Vec<String> {
        let mut names: Vec<String> = store
            .inner
            .list(Some(&TestStore::chunk_dir(id)))
            .map_ok(|m| m.location.filename().unwrap().to_string())
            .try_collect()
            .await
            .unwrap();
        names.sort();
        names
    }

    #[tokio::test]
    async fn a_running_test_is_written_in_bounded_pieces_and_read_back_whole() {
        let store = TestStore::memory();
        let mut s = running("t", 3, 0);
        store.create(&s).await.unwrap();
        let mut version = store.load_head("t").await.unwrap().unwrap().1;
        let mut per_write = Vec::new();
        for second in 0..10 * CHUNK_SECONDS {
            for d in 0..3 {
                s.apply(&report("t", &format!("d{d}"), u64::from(second), false, 10));
            }
            let before = store.written().bytes;
            version = store.save(&mut s, Some(&version)).await.unwrap();
            per_write.push(store.written().bytes - before);
        }
        // Late writes cost what early ones did (a chunk object now and then aside): the
        // smallest write of a chunk's span, early and late.
        let c = CHUNK_SECONDS as usize;
        let steady = |chunk: usize| per_write[chunk * c..(chunk + 1) * c].iter().min().copied();
        let (early, late) = (steady(2).unwrap(), steady(8).unwrap());
        assert!(late * 10 < early * 11, "{early} vs {late}");
        // Replaced chunk objects are gone; every chunk is read back.
        let (back, _) = store.load("t").await.unwrap().unwrap();
        assert_eq!(back.view(), s.view());
        let (head, _) = store.load_head("t").await.unwrap().unwrap();
        assert_eq!(
            chunk_objects(&store, "t").await.len(),
            head.unloaded_chunks().len()
        );
    }

    /// Two controllers fold late reports for the same sealed chunk from the same
    /// version: one wins, the other loses the conditional write, reloads, folds again,
    /// and both reports are counted; no chunk object is left unnamed.
    #[tokio::test]
    async fn concurrent_writers_to_one_chunk_lose_nothing() {
        let store = TestStore::memory();
        let s = running("t", 2, 4 * CHUNK_SECONDS);
        let expected = s.total().requests + 14;
        store.create(&s).await.unwrap();
        let ((mut a, va), (mut b, vb)) = (
            store.load_head("t").await.unwrap().unwrap(),
            store.load_head("t").await.unwrap().unwrap(),
        );
        let (ra, rb) = (late("t", "d0", 1_000, 3), late("t", "d1", 1_000, 4));
        for (state, m) in [(&mut a, &ra), (&mut b, &rb)] {
            assert_eq!(state.apply(m), Applied::NeedsChunk(0));
            store.load_chunks(state, Some(&[0])).await.unwrap();
            assert_eq!(state.apply(m), Applied::Changed);
        }
        store.save(&mut a, Some(&va)).await.unwrap();
        assert!(matches!(
            store.save(&mut b, Some(&vb)).await,
            Err(StoreError::Conflict(_))
        ));
        // The loser folds again over what won.
        let (mut b, vb) = store.load_head("t").await.unwrap().unwrap();
        assert_eq!(b.apply(&ra), Applied::Duplicate);
        assert_eq!(b.apply(&rb), Applied::NeedsChunk(0));
        store.load_chunks(&mut b, Some(&[0])).await.unwrap();
        assert_eq!(b.apply(&rb), Applied::Changed);
        store.save(&mut b, Some(&vb)).await.unwrap();
        let (back, _) = store.load("t").await.unwrap().unwrap();
        assert_eq!(back.total().requests, expected);
        let timeline: u64 = back.view().timeline.iter().map(|p| p.requests).sum();
        assert_eq!(timeline, expected);
        let (head, _) = store.load_head("t").await.unwrap().unwrap();
        let named: Vec<String> = head
            .unloaded_chunks()
            .into_iter()
            .map(|(_, n)| format!("{n}.json"))
            .collect();
        assert_eq!(chunk_objects(&store, "t").await, {
            let mut n = named;
            n.sort();
            n
        });
    }

    /// A reader holding an old document whose chunk was replaced reads the new one.
    #[tokio::test]
    async fn a_reader_behind_a_replaced_chunk_reads_again() {
        let store = TestStore::memory();
        let s = running("t", 1, 3 * CHUNK_SECONDS);
        store.create(&s).await.unwrap();
        let (mut old, _) = store.load_head("t").await.unwrap().unwrap();
        let (mut w, v) = store.load("t").await.unwrap().unwrap();
        w.apply(&late("t", "d0", 1_000, 1));
        store.save(&mut w, Some(&v)).await.unwrap();
        assert!(matches!(
            store.load_chunks(&mut old, None).await,
            Err(StoreError::Conflict(_))
        ));
        let (back, _) = store.load("t").await.unwrap().unwrap();
        assert_eq!(back.view(), w.view());
    }

    /// In a directory: listing finds the documents (not the chunks), and a finished
    /// test is compacted, its chunk folder gone.
    #[tokio::test]
    async fn a_directory_holds_chunks_until_the_test_ends() {
        let dir = std::env::temp_dir().join(format!("lw-store-chunks-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = TestStore::local_dir(&dir).unwrap();
        let mut s = running("t", 2, 3 * CHUNK_SECONDS);
        store.create(&s).await.unwrap();
        store.save(&mut s, None).await.unwrap();
        assert!(dir.join("tests/t/timeline").is_dir());
        let all = store.load_all().await.unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].view(), s.view());
        s.request_stop(10);
        for d in 0..2 {
            s.apply(&report("t", &format!("d{d}"), 1_000, true, 1));
        }
        s.poll(10);
        assert!(s.is_finished());
        store.save(&mut s, None).await.unwrap();
        assert!(
            !dir.join("tests/t").exists(),
            "chunks removed with the folder"
        );
        let all = store.load_all().await.unwrap();
        assert_eq!(all[0].view(), s.view());
        assert!(store.active_ids().await.unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
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
        let (mut loaded, v_read) = store.load("t1").await.unwrap().unwrap();
        assert_eq!(v_read, v1);
        let v2 = store.save(&mut loaded, Some(&v_read)).await.unwrap();
        // A writer still holding v1 loses.
        assert!(matches!(
            store.save(&mut loaded, Some(&v1)).await,
            Err(StoreError::Conflict(_))
        ));
        store.save(&mut loaded, Some(&v2)).await.unwrap();
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
        store.save(&mut a, Some(&v)).await.unwrap();
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

    /// Every file of a local store is 0600 and every directory 0700, whatever the umask
    /// (the stored specs hold secret headers and bodies).
    #[cfg(unix)]
    #[tokio::test]
    async fn a_directory_store_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("lw-store-private-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let store = TestStore::local_dir(&dir).unwrap();
        let mut s = running("t", 2, 3 * CHUNK_SECONDS);
        store.create(&s).await.unwrap();
        store.save(&mut s, None).await.unwrap();
        let mut f = TestState::new("f", spec(), vec!["d".into()], 1, TestOptions::default());
        store.create(&f).await.unwrap();
        f.fail("no drivers", 5);
        store.save(&mut f, None).await.unwrap();
        let (mut files, mut dirs) = (0, 0);
        let mut todo = vec![dir.clone()];
        while let Some(at) = todo.pop() {
            let mode = std::fs::metadata(&at).unwrap().permissions().mode() & 0o777;
            if at.is_dir() {
                dirs += 1;
                assert_eq!(mode, 0o700, "{}", at.display());
                todo.extend(std::fs::read_dir(&at).unwrap().map(|e| e.unwrap().path()));
            } else {
                files += 1;
                assert_eq!(mode, 0o600, "{}", at.display());
            }
        }
        assert!(files >= 4 && dirs >= 4, "{files} files, {dirs} directories");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_deleted_test_leaves_nothing_behind() {
        let store = TestStore::memory();
        let mut s = running("t", 2, 3 * CHUNK_SECONDS);
        store.create(&s).await.unwrap();
        store.save(&mut s, None).await.unwrap();
        assert!(!chunk_objects(&store, "t").await.is_empty());
        let mut f = TestState::new("f", spec(), vec!["d".into()], 1, TestOptions::default());
        store.create(&f).await.unwrap();
        let (_, v) = store.load_head("f").await.unwrap().unwrap();
        f.fail("no drivers", 5_000);
        store.save(&mut f, Some(&v)).await.unwrap();
        assert_eq!(store.finished_before(5_001).await.unwrap(), ["f"]);
        assert!(store.finished_before(5_000).await.unwrap().is_empty());

        assert!(store.delete("f").await.unwrap());
        assert!(store.load("f").await.unwrap().is_none());
        assert!(store.finished_before(u64::MAX).await.unwrap().is_empty());
        assert!(!store.delete("f").await.unwrap(), "already gone");
        assert!(store.delete("t").await.unwrap());
        assert!(chunk_objects(&store, "t").await.is_empty());
        assert!(store.active_ids().await.unwrap().is_empty());
        let left: Vec<_> = store.inner.list(None).try_collect().await.unwrap();
        let left: Vec<String> = left.iter().map(|m| m.location.to_string()).collect();
        assert!(left.iter().all(|k| k == "index.json"), "{left:?}");
    }
}
