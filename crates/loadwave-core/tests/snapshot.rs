//! Persisting a test in bounded pieces: the main document stays the same size however
//! long the test runs, only changed chunks are written, and everything reads back exactly
//! (from chunks, from a state loaded without them, from a compacted finished test, from a
//! document written before chunks).

use std::collections::BTreeMap;

use loadwave_core::{
    Applied, CHUNK_SECONDS, SEAL_LAG_SECONDS, Snapshot, SnapshotError, TestOptions, TestState,
    TestStatus,
};
use loadwave_proto::{Message, TestSpec};
use loadwave_testkit::messages::{register, report};

const T0: u64 = 1_700_000_000_000;

fn running(drivers: usize) -> TestState {
    let spec = TestSpec::from_json(
        serde_json::json!({
            "target_url": "http://127.0.0.1:9/ping", "test_type": "avalanche",
            "drivers": drivers, "requests_per_driver": 1_000_000,
        })
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    let ids: Vec<String> = (0..drivers).map(|i| format!("d{i}")).collect();
    let mut s = TestState::new("t", spec, ids.clone(), T0, TestOptions::default());
    s.poll(T0);
    for d in &ids {
        s.apply(&register(d, Some("t")));
    }
    s.poll(T0);
    assert_eq!(s.status(), TestStatus::Running);
    // A day of bus time: the end is not planned, so the bus clock bounds the seconds a
    // report may be about.
    s.observe_clock(T0 + 86_400_000);
    s
}

/// Report `seq` of `driver` with its one bucket in `second`; `requests` vary by driver
/// and second so that every second differs.
fn report_at(driver: usize, seq: u64, second: u32, is_final: bool) -> Message {
    let requests = 20 + (driver as u64 * 7 + u64::from(second) * 13) % 50;
    let mut m = report("t", &format!("d{driver}"), seq, is_final, requests);
    if let Message::Metrics(r) = &mut m {
        r.buckets[0].second = second;
    }
    m
}

/// An object store in a map, written the way the real store writes a snapshot.
#[derive(Default)]
struct Objects {
    doc: Vec<u8>,
    chunks: BTreeMap<String, Vec<u8>>,
    puts: usize,
    bytes: usize,
}

impl Objects {
    fn write(&mut self, state: &mut TestState, nonce: &str) -> Snapshot {
        let snap = state.snapshot(nonce).unwrap();
        for c in &snap.chunks {
            assert!(
                self.chunks.insert(c.name.clone(), c.body.clone()).is_none(),
                "a chunk name is never reused"
            );
        }
        self.doc = snap.doc.clone();
        self.puts += 1 + snap.chunks.len();
        self.bytes += snap.bytes();
        for name in &snap.replaced {
            self.chunks.remove(name).expect("replaced chunks exist");
        }
        state.snapshot_written(&snap);
        snap
    }

    fn load_head(&self) -> TestState {
        TestState::from_doc(&self.doc).unwrap()
    }

    fn load(&self) -> TestState {
        let mut s = self.load_head();
        self.load_chunks(&mut s);
        assert!(s.is_complete());
        s
    }

    fn load_chunks(&self, s: &mut TestState) {
        for (k, name) in s.unloaded_chunks() {
            s.restore_chunk(k, &self.chunks[&name]).unwrap();
        }
    }
}

#[test]
fn a_long_test_writes_bounded_documents_and_restores_exactly() {
    let drivers = 3;
    let mut s = running(drivers);
    let mut store = Objects::default();
    let mut doc_sizes = Vec::new();
    let mut chunk_writes: BTreeMap<u32, usize> = BTreeMap::new();
    let seconds = 12 * CHUNK_SECONDS;
    for second in 0..seconds {
        for d in 0..drivers {
            assert_eq!(
                s.apply(&report_at(d, u64::from(second), second, false)),
                Applied::Changed
            );
        }
        let snap = store.write(&mut s, &format!("n{second}"));
        for c in &snap.chunks {
            *chunk_writes.entry(c.index).or_default() += 1;
        }
        doc_sizes.push(snap.doc.len());
    }
    // Every sealed chunk was written exactly once, and only once sealed.
    let sealed = (seconds - 1 - SEAL_LAG_SECONDS) / CHUNK_SECONDS;
    assert_eq!(chunk_writes.len() as u32, sealed);
    assert!(chunk_writes.values().all(|n| *n == 1), "{chunk_writes:?}");
    assert_eq!(store.chunks.len() as u32, sealed);
    // The document's size does not grow with the test's age: the tail cycles through the
    // same sizes, the manifest adds a short name per chunk. (Whole, the state would have
    // grown four times over between the two windows.)
    let early = doc_sizes[2 * CHUNK_SECONDS as usize..4 * CHUNK_SECONDS as usize]
        .iter()
        .max()
        .unwrap();
    let late = doc_sizes[10 * CHUNK_SECONDS as usize..]
        .iter()
        .max()
        .unwrap();
    assert!(
        late * 10 < early * 11,
        "document grew from {early} to {late} bytes"
    );
    // Read back: the same test, down to every second and every duplicate.
    let mut back = store.load();
    assert_eq!(back.view(), s.view());
    assert_eq!(back.apply(&report_at(1, 5, 5, false)), Applied::Duplicate);
    // Without its chunks, only the tail is in memory, but the rest of the state is whole.
    let head = store.load_head();
    assert!(!head.is_complete());
    assert_eq!(head.view().summary, s.view().summary);
    assert!(head.view().timeline.len() <= (CHUNK_SECONDS + SEAL_LAG_SECONDS) as usize);
}

#[test]
fn a_late_bucket_rewrites_only_its_chunk() {
    let mut s = running(2);
    let mut store = Objects::default();
    let seconds = 4 * CHUNK_SECONDS;
    for second in 0..seconds {
        for d in 0..2 {
            s.apply(&report_at(d, u64::from(second), second, false));
        }
    }
    let first = store.write(&mut s, "a");
    assert_eq!(first.chunks.len(), 3);
    assert!(first.replaced.is_empty());
    // Nothing changed: nothing but the document is written.
    assert!(store.write(&mut s, "b").chunks.is_empty());
    // A bucket for second 5 arrives late (a worker stuck on a slow request).
    assert_eq!(
        s.apply(&report_at(0, u64::from(seconds), 5, false)),
        Applied::Changed
    );
    let late = store.write(&mut s, "c");
    assert_eq!(late.chunks.len(), 1);
    assert_eq!(late.chunks[0].index, 0);
    assert_eq!(late.chunks[0].name, "0-c");
    assert_eq!(late.replaced, vec!["0-a".to_string()]);
    assert_eq!(store.load().view(), s.view());
}

#[test]
fn a_state_loaded_without_its_chunks_defers_what_needs_them() {
    let mut s = running(2);
    let mut store = Objects::default();
    for second in 0..3 * CHUNK_SECONDS {
        for d in 0..2 {
            s.apply(&report_at(d, u64::from(second), second, false));
        }
    }
    store.write(&mut s, "a");
    let mut head = store.load_head();
    let before = serde_json::to_vec(&head).unwrap();
    let late = report_at(1, 1_000, CHUNK_SECONDS + 2, false);
    // The chunk is not in memory: nothing changes, and the fold says which chunk it needs.
    assert_eq!(head.apply(&late), Applied::NeedsChunk(1));
    assert_eq!(serde_json::to_vec(&head).unwrap(), before);
    // Reports for the tail fold without the chunks.
    let now = 3 * CHUNK_SECONDS;
    assert_eq!(
        head.apply(&report_at(0, u64::from(now), now, false)),
        Applied::Changed
    );
    // With the chunk loaded, the late report folds, and the chunk is rewritten whole.
    let (k, name) = head
        .unloaded_chunks()
        .into_iter()
        .find(|(k, _)| *k == 1)
        .unwrap();
    head.restore_chunk(k, &store.chunks[&name]).unwrap();
    assert_eq!(head.apply(&late), Applied::Changed);
    let snap = store.write(&mut head, "b");
    assert_eq!(
        snap.chunks.iter().map(|c| c.index).collect::<Vec<_>>(),
        vec![1]
    );
    // The same messages folded into the whole state give the same test.
    s.apply(&report_at(0, u64::from(now), now, false));
    s.apply(&late);
    assert_eq!(store.load().view(), s.view());
}

#[test]
fn a_finished_test_is_compacted_into_one_document() {
    let mut s = running(2);
    let mut store = Objects::default();
    let seconds = 3 * CHUNK_SECONDS;
    for second in 0..seconds {
        for d in 0..2 {
            let last = second + 1 == seconds;
            s.apply(&report_at(d, u64::from(second), second, last));
        }
        if second % 7 == 0 {
            store.write(&mut s, &format!("n{second}"));
        }
    }
    store.write(&mut s, "last");
    assert!(!store.chunks.is_empty());
    s.poll(T0 + 200_000);
    assert_eq!(s.status(), TestStatus::Completed);
    // Loaded without its chunks, a finished test cannot be written whole.
    let mut head = store.load_head();
    head.poll(T0 + 200_000);
    assert_eq!(head.status(), TestStatus::Completed);
    assert!(matches!(
        head.snapshot("x"),
        Err(SnapshotError::Incomplete { .. })
    ));
    let snap = store.write(&mut s, "end");
    assert!(snap.compacted);
    assert!(snap.chunks.is_empty());
    assert!(store.chunks.is_empty(), "every chunk object is replaced");
    assert_eq!(snap.list_item.as_ref().unwrap().id, "t");
    let back = store.load_head();
    assert!(back.is_complete());
    assert_eq!(back.view(), s.view());
    assert_eq!(back.view().timeline.len(), seconds as usize);
}

#[test]
fn a_document_written_before_chunks_reads_and_moves_to_chunks() {
    let mut s = running(2);
    let seconds = 3 * CHUNK_SECONDS;
    for second in 0..seconds {
        for d in 0..2 {
            s.apply(&report_at(d, u64::from(second), second, false));
        }
    }
    // The old form: the whole state, the whole timeline inline, sequence numbers listed.
    let mut store = Objects::default();
    store.write(&mut s, "a");
    let mut old: serde_json::Value = serde_json::from_slice(&store.doc).unwrap();
    let whole = store.load();
    let mut inline = serde_json::Map::new();
    for (_, name) in store.load_head().unloaded_chunks() {
        let chunk: serde_json::Value = serde_json::from_slice(&store.chunks[&name]).unwrap();
        for (second, agg) in chunk["seconds"].as_object().unwrap() {
            inline.insert(second.clone(), agg.clone());
        }
    }
    for (second, agg) in old["timeline"].as_object().unwrap() {
        inline.insert(second.clone(), agg.clone());
    }
    old["timeline"] = inline.into();
    old.as_object_mut().unwrap().remove("timeline_chunks");
    for d in old["drivers"].as_array_mut().unwrap() {
        d["seqs"] = (0..seconds).collect::<Vec<u32>>().into();
    }
    let mut migrated = TestState::from_doc(&serde_json::to_vec(&old).unwrap()).unwrap();
    assert!(migrated.is_complete());
    assert_eq!(migrated.view(), whole.view());
    // Its next snapshot moves the sealed seconds into chunks.
    let mut fresh = Objects::default();
    let snap = fresh.write(&mut migrated, "m");
    assert_eq!(snap.chunks.len(), 2);
    assert_eq!(fresh.load().view(), whole.view());
}
