//! How a test persists: a bounded main document plus immutable timeline chunks.
//!
//! A running test's per-second timeline grows with its age; the rest of its state does
//! not (drivers, totals, sequence-number runs). So a [`Snapshot`] splits the timeline:
//!
//! - **Chunks.** Seconds are grouped by [`CHUNK_SECONDS`]. A chunk is *sealed* once the
//!   test's latest second is [`SEAL_LAG_SECONDS`] past its end (late buckets have mostly
//!   arrived). A sealed chunk is written once as an object of its own, under a name no
//!   other write uses (`{chunk}-{nonce}`), and never changed: a late bucket for it makes
//!   a new object with a new name.
//! - **The main document** holds everything else: the state without the timeline, the
//!   seconds of the unsealed chunks inline (the *tail*), and the manifest naming the
//!   current object of every sealed chunk. Its size depends on the drivers and on the
//!   chunk size, not on how long the test has run.
//!
//! A write puts the new chunk objects first, then the main document; only the main
//! document's write (conditional where writers can meet) makes the new chunks visible.
//! A writer that loses the race never referenced its chunks, so it may delete them; the
//! winner may delete the objects its manifest replaced. A finished test is *compacted*:
//! its last document holds the whole timeline inline and no manifest, so a finished test
//! reads back with one request.
//!
//! Architecture invariant: a chunk object, once written, is never rewritten under the same
//! name, and a manifest only names objects written before it. Readers that meet a chunk
//! deleted under them read the main document again.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::aggregate::Aggregate;
use crate::controller::TestListItem;
use crate::state::{TestState, TestStatus};

/// Seconds of the timeline per chunk object.
///
/// The tail written with every snapshot is up to `CHUNK_SECONDS + SEAL_LAG_SECONDS`
/// seconds (half that on average), and a full read of a running test fetches one object
/// per chunk: 20 s keeps both moderate (an hour-long test has 180 chunks). For 10 drivers
/// an hour in, a snapshot is about 280 kB, most of it the drivers' own histograms
/// (`make bench-controller` measures it).
pub const CHUNK_SECONDS: u32 = 20;
/// A chunk is sealed once the latest second is this far past its end: drivers report a
/// second about 100 ms after it ends, and a worker busy with a slow request flushes its
/// bucket with the next report. A bucket later than that costs a rewrite of its chunk.
pub const SEAL_LAG_SECONDS: u32 = 2;

/// Where a sealed chunk is stored, and the change of the timeline it is current with.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ChunkRef {
    name: String,
    /// The edit ([`ChunkBook::touch`]) the object includes; 0 for what was loaded.
    rev: u64,
}

/// The persisted-timeline bookkeeping of a test: which object holds each sealed chunk,
/// which chunks changed since, and (for a partly loaded state) which are not in memory.
#[derive(Debug, Clone)]
pub(crate) struct ChunkBook {
    /// Seconds per chunk for this test (the manifest carries it, so it may change between
    /// versions without misreading old tests).
    size: u32,
    /// Sealed chunks as stored.
    stored: BTreeMap<u32, ChunkRef>,
    /// Chunks changed in memory, with the edit of their latest change. A chunk leaves
    /// once a write includes that edit.
    edits: BTreeMap<u32, u64>,
    /// The latest edit number.
    rev: u64,
    /// Stored chunks whose seconds are not in memory (a state loaded without them).
    unloaded: BTreeSet<u32>,
}

impl Default for ChunkBook {
    fn default() -> Self {
        ChunkBook {
            size: CHUNK_SECONDS,
            stored: BTreeMap::new(),
            edits: BTreeMap::new(),
            rev: 0,
            unloaded: BTreeSet::new(),
        }
    }
}

/// The manifest as the main document carries it.
#[derive(Serialize, Deserialize)]
struct Manifest<T> {
    /// Seconds per chunk.
    seconds: u32,
    /// Chunk index → object name.
    chunks: BTreeMap<u32, T>,
}

/// A manifest read from a document: every chunk it names is stored and not yet loaded.
impl<'de> Deserialize<'de> for ChunkBook {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let m = Manifest::<String>::deserialize(d)?;
        if m.seconds == 0 {
            return Err(serde::de::Error::custom("timeline chunks of 0 seconds"));
        }
        Ok(ChunkBook {
            size: m.seconds,
            unloaded: m.chunks.keys().copied().collect(),
            stored: m
                .chunks
                .into_iter()
                .map(|(k, name)| (k, ChunkRef { name, rev: 0 }))
                .collect(),
            edits: BTreeMap::new(),
            rev: 0,
        })
    }
}

impl ChunkBook {
    pub(crate) fn chunk_of(&self, second: u32) -> u32 {
        second / self.size
    }

    /// The seconds of chunk `k`.
    fn range(&self, k: u32) -> std::ops::Range<u32> {
        let first = k.saturating_mul(self.size);
        first..first.saturating_add(self.size)
    }

    /// How many chunks from the start are sealed when `latest` is the latest second.
    fn sealed_count(&self, latest: Option<u32>) -> u32 {
        latest.map_or(0, |l| l.saturating_sub(SEAL_LAG_SECONDS) / self.size)
    }

    /// Records a change to the chunk holding `second`.
    pub(crate) fn touch(&mut self, second: u32) {
        self.rev += 1;
        let k = self.chunk_of(second);
        self.edits.insert(k, self.rev);
    }

    /// Whether the chunk holding `second` is stored but not in memory.
    pub(crate) fn is_unloaded(&self, second: u32) -> bool {
        !self.unloaded.is_empty() && self.unloaded.contains(&self.chunk_of(second))
    }
}

/// Reads a test's chunk objects into seconds, checking that each holds what its name
/// says: from [`TestState::chunk_reader`], for a view that must not hold the controller's
/// lock while it parses.
#[derive(Debug, Clone)]
pub struct ChunkReader {
    test_id: String,
    size: u32,
}

impl ChunkReader {
    /// The seconds of chunk `index`, from its object's body.
    pub fn read(&self, index: u32, body: &[u8]) -> Result<BTreeMap<u32, Aggregate>, SnapshotError> {
        let id = &self.test_id;
        let chunk: ChunkDoc<Aggregate> = serde_json::from_slice(body)
            .map_err(|e| SnapshotError::Corrupt(format!("test {id} chunk {index}: {e}")))?;
        let first = index.saturating_mul(self.size);
        let range = first..first.saturating_add(self.size);
        if chunk.test_id != *id
            || chunk.chunk != index
            || chunk.seconds.keys().any(|s| !range.contains(s))
        {
            return Err(SnapshotError::Corrupt(format!(
                "test {id} chunk {index}: the object holds test {} chunk {}",
                chunk.test_id, chunk.chunk
            )));
        }
        Ok(chunk.seconds)
    }
}

/// A chunk object to write.
#[derive(Debug, Clone)]
pub struct ChunkWrite {
    /// The chunk's index (its seconds are `index × size ..`).
    pub index: u32,
    /// The object's name, unique to this write.
    pub name: String,
    /// Its body (JSON).
    pub body: Vec<u8>,
    /// The edit it includes.
    rev: u64,
}

/// A test ready to be written: the objects to put, in order, and what the write replaces.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The test.
    pub id: String,
    /// Its status as written.
    pub status: TestStatus,
    /// The controller's change this snapshot is current with (0 outside a controller).
    pub change: u64,
    /// New chunk objects, to be put before the main document.
    pub chunks: Vec<ChunkWrite>,
    /// The main document (JSON).
    pub doc: Vec<u8>,
    /// Chunk objects no longer named once the main document is written.
    pub replaced: Vec<String>,
    /// Whether the document holds the whole timeline (a finished test): every chunk object
    /// of the test may go once it is written.
    pub compacted: bool,
    /// The list line of a finished test, for the index.
    pub list_item: Option<TestListItem>,
}

impl Snapshot {
    /// Bytes of every object it writes.
    pub fn bytes(&self) -> usize {
        self.doc.len() + self.chunks.iter().map(|c| c.body.len()).sum::<usize>()
    }
}

/// Why a test cannot be snapshotted or restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A finished test is written whole, but some of its chunks are not in memory.
    #[error("test {id}: timeline chunks {chunks:?} must be loaded first")]
    Incomplete {
        /// The test.
        id: String,
        /// The chunks missing.
        chunks: Vec<u32>,
    },
    /// A document or chunk that does not parse, or does not belong where it was found.
    #[error("{0}")]
    Corrupt(String),
}

/// The main document as written: the state's own fields, the tail, the manifest.
#[derive(Serialize)]
struct DocOut<'a> {
    #[serde(flatten)]
    state: &'a TestState,
    timeline: BTreeMap<u32, &'a Aggregate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeline_chunks: Option<Manifest<&'a str>>,
}

/// A chunk object.
#[derive(Serialize, Deserialize)]
struct ChunkDoc<T> {
    test_id: String,
    chunk: u32,
    seconds: BTreeMap<u32, T>,
}

impl TestState {
    /// The test as the store writes it (see the module docs). `nonce` makes the names
    /// of the chunk objects unique to this write: no two writes may share one.
    ///
    /// Only sealed chunks that changed since the last written snapshot
    /// ([`TestState::snapshot_written`]) are in it; a finished test is compacted.
    pub fn snapshot(&self, nonce: &str) -> Result<Snapshot, SnapshotError> {
        let book = &self.chunks;
        let compacted = self.status.is_finished();
        if compacted && !book.unloaded.is_empty() {
            return Err(SnapshotError::Incomplete {
                id: self.id.clone(),
                chunks: book.unloaded.iter().copied().collect(),
            });
        }
        let latest = self.timeline.keys().next_back().copied();
        let sealed = if compacted {
            0
        } else {
            book.sealed_count(latest)
        };
        let mut chunks = Vec::new();
        let mut replaced = Vec::new();
        for (&k, &rev) in book.edits.iter().filter(|(k, _)| **k < sealed) {
            let current = book.stored.get(&k);
            if current.is_some_and(|r| r.rev >= rev) {
                continue;
            }
            if book.unloaded.contains(&k) {
                // A change to a chunk not in memory cannot happen (the fold defers it);
                // writing its partial seconds would lose the stored ones.
                return Err(SnapshotError::Incomplete {
                    id: self.id.clone(),
                    chunks: vec![k],
                });
            }
            let body = ChunkDoc {
                test_id: self.id.clone(),
                chunk: k,
                seconds: self
                    .timeline
                    .range(book.range(k))
                    .map(|(s, a)| (*s, a))
                    .collect(),
            };
            chunks.push(ChunkWrite {
                index: k,
                name: format!("{k}-{nonce}"),
                body: serde_json::to_vec(&body).expect("chunks serialize"),
                rev,
            });
            replaced.extend(current.map(|r| r.name.clone()));
        }
        let manifest = (!compacted && (!book.stored.is_empty() || !chunks.is_empty())).then(|| {
            let mut names: BTreeMap<u32, &str> = book
                .stored
                .iter()
                .map(|(k, r)| (*k, r.name.as_str()))
                .collect();
            for c in &chunks {
                names.insert(c.index, &c.name);
            }
            Manifest {
                seconds: book.size,
                chunks: names,
            }
        });
        if compacted {
            replaced.extend(book.stored.values().map(|r| r.name.clone()));
        }
        let tail_from = sealed.saturating_mul(book.size);
        let doc = DocOut {
            state: self,
            timeline: self
                .timeline
                .range(tail_from..)
                .map(|(s, a)| (*s, a))
                .collect(),
            timeline_chunks: manifest,
        };
        Ok(Snapshot {
            id: self.id.clone(),
            status: self.status,
            change: 0,
            doc: serde_json::to_vec(&doc).expect("test state serializes"),
            chunks,
            replaced,
            compacted,
            list_item: compacted.then(|| TestListItem::of(self)),
        })
    }

    /// `snapshot` (taken from this state, perhaps before later changes) was written: its
    /// chunk objects are now the stored ones.
    pub fn snapshot_written(&mut self, snapshot: &Snapshot) {
        let book = &mut self.chunks;
        if snapshot.compacted {
            book.stored.clear();
            return;
        }
        for c in &snapshot.chunks {
            book.stored.insert(
                c.index,
                ChunkRef {
                    name: c.name.clone(),
                    rev: c.rev,
                },
            );
            if book.edits.get(&c.index) == Some(&c.rev) {
                book.edits.remove(&c.index);
            }
        }
    }

    /// Reads a main document (this version's, or a whole state written before chunks).
    /// The chunks it names are not loaded: see [`TestState::unloaded_chunks`].
    pub fn from_doc(bytes: &[u8]) -> Result<TestState, SnapshotError> {
        let mut state: TestState = serde_json::from_slice(bytes)
            .map_err(|e| SnapshotError::Corrupt(format!("test document: {e}")))?;
        // Seconds held inline are not in any chunk object yet (the tail, or a document
        // from before chunks): they are written once sealed.
        let seconds: Vec<u32> = state.timeline.keys().copied().collect();
        let mut last_chunk = None;
        for s in seconds {
            let k = state.chunks.chunk_of(s);
            if last_chunk != Some(k) {
                if state.chunks.stored.contains_key(&k) {
                    return Err(SnapshotError::Corrupt(format!(
                        "test {}: second {s} is inline but its chunk {k} is stored",
                        state.id
                    )));
                }
                state.chunks.touch(s);
                last_chunk = Some(k);
            }
        }
        Ok(state)
    }

    /// Stored chunks not in memory, with the names of their objects.
    pub fn unloaded_chunks(&self) -> Vec<(u32, String)> {
        self.chunks
            .unloaded
            .iter()
            .map(|k| (*k, self.chunks.stored[k].name.clone()))
            .collect()
    }

    /// Whether every second of the timeline is in memory.
    pub fn is_complete(&self) -> bool {
        self.chunks.unloaded.is_empty()
    }

    /// Puts the body of stored chunk `index` back into the timeline.
    pub fn restore_chunk(&mut self, index: u32, body: &[u8]) -> Result<(), SnapshotError> {
        let seconds = self.chunk_reader().read(index, body)?;
        if !self.chunks.unloaded.remove(&index) {
            return Ok(());
        }
        self.timeline.extend(seconds);
        Ok(())
    }

    /// What reads this test's chunk objects without the state at hand (outside a lock).
    pub fn chunk_reader(&self) -> ChunkReader {
        ChunkReader {
            test_id: self.id.clone(),
            size: self.chunks.size,
        }
    }

    /// Drops from memory the seconds of sealed chunks that are stored as they are (no
    /// change since their object was written) and lie behind the late-bucket window of
    /// every driver still sending (see [`crate::state::BEHIND_SLACK_S`]): a running test
    /// holds its tail, not its age. Returns how many chunks went.
    ///
    /// A report that still needs one (a driver that was lost and came back) gets
    /// [`crate::Applied::NeedsChunk`], and the shell loads the chunk and folds it again.
    pub fn drop_sealed(&mut self) -> usize {
        if self.status.is_finished() {
            return 0;
        }
        let window = self.behind_window();
        let Some(horizon) = self
            .drivers
            .iter()
            .filter(|d| !d.phase.is_terminal())
            .map(|d| d.newest_second.map(|s| s.saturating_sub(window)))
            .min()
            .flatten()
        else {
            return 0;
        };
        let book = &self.chunks;
        let gone: Vec<u32> = book
            .stored
            .keys()
            .copied()
            .filter(|k| {
                !book.edits.contains_key(k)
                    && !book.unloaded.contains(k)
                    && book.range(*k).end <= horizon
            })
            .collect();
        for &k in &gone {
            let range = self.chunks.range(k);
            let seconds: Vec<u32> = self.timeline.range(range).map(|(s, _)| *s).collect();
            for s in seconds {
                self.timeline.remove(&s);
            }
            self.chunks.unloaded.insert(k);
        }
        gone.len()
    }

    /// Memory the timeline's histograms take, roughly: what grows with the test's age.
    pub fn timeline_heap_bytes(&self) -> usize {
        self.timeline
            .values()
            .map(|a| a.heap_bytes() + std::mem::size_of::<(u32, Aggregate)>())
            .sum()
    }

    /// Memory the other histograms take (every driver's and the total), roughly: what
    /// grows with the latency range seen (a histogram widens to its largest value, up to
    /// an hour), not with the test's age.
    pub fn driver_heap_bytes(&self) -> usize {
        self.total.heap_bytes()
            + self
                .drivers
                .iter()
                .map(|d| d.agg.heap_bytes())
                .sum::<usize>()
    }
}
