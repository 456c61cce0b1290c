//! Restart recovery from the chunked store, in simulated time: a controller folds several
//! minutes of reports into a local directory the way the orchestrator does (snapshots
//! through [`SnapshotWriter`], deliveries acknowledged by the watermark), crashes, and a
//! new orchestrator resumes from the directory. Re-delivering what was not acknowledged
//! and the rest of the test gives exactly the result of a run without the crash.

use std::sync::{Arc, Mutex};

use loadwave_bus::MemoryBus;
use loadwave_core::{
    Acquired, CHUNK_SECONDS, ControllerCore, ControllerOptions, DriverSlot, TestStatus,
};
use loadwave_orchestrator::controller::SnapshotWriter;
use loadwave_orchestrator::{Backend, Orchestrator, PoolLauncher, TestStore};
use loadwave_proto::{Message, TestSpec, Tick, Topic};
use loadwave_testkit::messages::{register, report};

const T0: u64 = 1_700_000_000_000;
const DRIVERS: usize = 3;

fn drivers() -> Vec<String> {
    (0..DRIVERS).map(|i| format!("d{i}")).collect()
}

/// Every report of the test, in delivery order: a second's reports from each driver,
/// with a late bucket for an old second now and then; the finals last.
fn reports(id: &str, seconds: u32) -> Vec<(u64, Message)> {
    let mut out = Vec::new();
    for second in 0..seconds {
        let at = T0 + 1_000 * u64::from(second + 2);
        for (i, d) in drivers().iter().enumerate() {
            let mut m = report(
                id,
                d,
                u64::from(second),
                second + 1 == seconds,
                10 + i as u64,
            );
            if second % 41 == 40 {
                // This second's report also carries a straggler from 35 s ago, by now
                // in a sealed chunk.
                if let Message::Metrics(r) = &mut m {
                    let mut old = r.buckets[0].clone();
                    old.second = second - 35;
                    r.buckets.insert(0, old);
                }
            }
            out.push((at, m));
        }
    }
    out
}

/// A controller with test `id` running on the three drivers, stored in `writer`'s store.
async fn started(id: &str, writer: &SnapshotWriter) -> Mutex<ControllerCore> {
    let mut core = ControllerCore::new(ControllerOptions::default());
    let spec = TestSpec::from_json(
        serde_json::json!({
            "target_url": "http://127.0.0.1:9/ping", "test_type": "avalanche",
            "drivers": DRIVERS, "requests_per_driver": 1_000_000,
        })
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    let state = core.new_test(id, spec, T0);
    let version = writer.store().create(&state).await.unwrap();
    writer.written_at(id, version);
    core.insert(state, T0);
    core.driver_requests();
    let slots = drivers().into_iter().map(DriverSlot::id).collect();
    core.drivers_acquired(id, Acquired::Drivers(slots), T0);
    core.poll(T0);
    for d in drivers() {
        core.ingest(&register(&d, Some(id)), T0);
    }
    core.poll(T0);
    assert_eq!(core.test(id).unwrap().status(), TestStatus::Running);
    let core = Mutex::new(core);
    writer.write_due(&core, T0, true).await;
    core
}

/// Feeds `messages` as the orchestrator's loop does (fold, poll, write what is due,
/// acknowledge up to the watermark); returns the payloads not acknowledged yet.
async fn feed(
    core: &Mutex<ControllerCore>,
    writer: &SnapshotWriter,
    messages: &[(u64, Message)],
) -> Vec<(u64, Message)> {
    let mut unacked: Vec<(u64, (u64, Message))> = Vec::new();
    for (at, m) in messages {
        let ticket = {
            let mut c = core.lock().unwrap();
            // The orchestrator's tick moves the bus clock, which bounds the seconds a
            // report of a test without a planned end may be about.
            c.ingest(
                &Message::Tick(Tick {
                    orchestrator_id: "o".into(),
                    sent_at_ms: *at,
                }),
                *at,
            );
            let ticket = c.ingest_payload(Topic::Metrics, &m.encode(), *at);
            c.poll(*at);
            ticket
        };
        unacked.push((ticket, (*at, m.clone())));
        writer.write_due(core, *at, false).await;
        let watermark = core.lock().unwrap().ack_watermark();
        unacked.retain(|(t, _)| *t > watermark);
    }
    unacked.into_iter().map(|(_, m)| m).collect()
}

#[tokio::test]
async fn a_restarted_orchestrator_recovers_a_chunked_test_exactly() {
    let dir = std::env::temp_dir().join(format!("lw-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let id = "t";
    let seconds = 6 * CHUNK_SECONDS;
    let all = reports(id, seconds);
    let crash_at = all.len() * 2 / 3;

    // The run without a crash, in memory.
    let reference = SnapshotWriter::new(TestStore::memory());
    let ref_core = started(id, &reference).await;
    feed(&ref_core, &reference, &all).await;
    // Once written, a finished test is held as its list line: it reads from the store.
    assert!(ref_core.lock().unwrap().view(id).is_none());
    let expected = reference.store().load(id).await.unwrap().unwrap().0.view();
    assert_eq!(expected.status, TestStatus::Completed);

    // The run that crashes two thirds in: what was folded but not written is lost.
    let writer = SnapshotWriter::new(TestStore::local_dir(&dir).unwrap());
    let core = started(id, &writer).await;
    let unacked = feed(&core, &writer, &all[..crash_at]).await;
    drop(core);
    assert!(
        dir.join("tests/t/timeline").is_dir(),
        "sealed chunks were written apart"
    );

    // A new orchestrator reads the directory back.
    let store = TestStore::local_dir(&dir).unwrap();
    let orch = Orchestrator::new(
        Arc::new(MemoryBus::new()),
        store.clone(),
        Arc::new(PoolLauncher),
        ControllerOptions::default(),
    )
    .await
    .unwrap();
    let resumed = orch.view(id).await.unwrap().unwrap();
    assert_eq!(resumed.status, TestStatus::Running);
    assert!(resumed.timeline.len() as u32 > 3 * CHUNK_SECONDS);

    // The same, driven by hand: the broker re-delivers what was not acknowledged, then
    // the rest of the test arrives.
    let writer = SnapshotWriter::new(store.clone());
    let mut core = ControllerCore::new(ControllerOptions::default());
    for state in store.load_all().await.unwrap() {
        core.insert(state, T0);
    }
    assert_eq!(core.view(id).unwrap(), resumed);
    let core = Mutex::new(core);
    feed(&core, &writer, &unacked).await;
    feed(&core, &writer, &all[crash_at..]).await;
    writer.write_due(&core, T0 + 1_000_000, true).await;
    let got = store.load(id).await.unwrap().unwrap().0.view();
    assert_eq!(got.status, TestStatus::Completed);
    assert_eq!(got.summary, expected.summary);
    assert_eq!(got.timeline, expected.timeline);
    for (g, e) in got.drivers.iter().zip(&expected.drivers) {
        assert_eq!(
            (g.requests, g.reports, g.missing_reports),
            (e.requests, e.reports, e.missing_reports)
        );
        assert_eq!(g.latency_ms, e.latency_ms);
    }
    // The finished test is one document again.
    assert!(!dir.join("tests/t").exists());
    let (back, _) = store.load(id).await.unwrap().unwrap();
    assert_eq!(back.view().summary, expected.summary);
    assert_eq!(back.view().timeline, expected.timeline);
    let _ = std::fs::remove_dir_all(&dir);
}
