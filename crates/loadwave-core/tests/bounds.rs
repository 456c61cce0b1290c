//! The fold is bounded: a report whose values no plan allows is rejected whole (and
//! counted), counts never wrap, a mix costs memory only for the requests that have data,
//! and the view never walks an unbounded range of seconds.

use loadwave_core::{Applied, TestOptions, TestState, TestStatus};
use loadwave_proto::{BucketStats, DriverHealth, DriverTotals, Message, MetricsReport, TestSpec};
use loadwave_testkit::messages::{bucket, register};

const T0: u64 = 1_700_000_000_000;

fn spec(json: serde_json::Value) -> TestSpec {
    TestSpec::from_json(json.to_string().as_bytes()).unwrap()
}

/// Ten seconds, one driver: the plan's end is known.
fn timed() -> TestSpec {
    spec(serde_json::json!({
        "target_url": "http://127.0.0.1:9/ping",
        "test_type": "avalanche",
        "duration_s": 10,
    }))
}

/// Bound by a count alone: the end is not known in advance.
fn counted() -> TestSpec {
    spec(serde_json::json!({
        "target_url": "http://127.0.0.1:9/ping",
        "test_type": "avalanche",
        "requests_per_driver": 1_000_000,
    }))
}

/// A mix of `n` requests, ten minutes long.
fn mix(n: usize) -> TestSpec {
    let requests: Vec<serde_json::Value> = (0..n)
        .map(|i| serde_json::json!({"name": format!("r{i}"), "url": "http://127.0.0.1:9/a"}))
        .collect();
    spec(serde_json::json!({
        "test_type": "avalanche",
        "duration_s": 600,
        "requests": requests,
    }))
}

fn report(driver: &str, seq: u64, buckets: Vec<BucketStats>) -> Message {
    let requests = buckets.iter().map(|b| b.requests).sum();
    Message::Metrics(MetricsReport {
        test_id: "t".into(),
        driver_id: driver.into(),
        seq,
        is_final: false,
        buckets,
        totals: DriverTotals {
            requests,
            errors: 0,
        },
        elapsed_ms: seq.saturating_add(1).saturating_mul(1000),
        stopped: false,
        start_delay_us: None,
        send_lag: None,
        health: DriverHealth::default(),
    })
}

/// A test of `spec` running since T0 + the start lead, one driver `d0`.
fn running(spec: TestSpec) -> TestState {
    let mut s = TestState::new("t", spec, vec!["d0".into()], T0, TestOptions::default());
    s.poll(T0);
    assert_eq!(s.apply(&register("d0", Some("t"))), Applied::Changed);
    s.poll(T0);
    assert_eq!(s.status(), TestStatus::Running);
    s
}

fn rejected(applied: Applied, field: &str) {
    match applied {
        Applied::Rejected(reason) => assert!(reason.contains(field), "{reason}"),
        other => panic!("expected a rejection naming {field}, got {other:?}"),
    }
}

/// The probe: `"second": 4294967295` was accepted, and the view then built every second
/// from 0 to it (515 GB).
#[test]
fn a_far_future_second_is_rejected_whole_and_counted() {
    for spec in [timed(), counted()] {
        let mut s = running(spec);
        let far = report(
            "d0",
            0,
            vec![
                bucket(0, None, 200, &[1_000]),
                bucket(u32::MAX, None, 200, &[1_000]),
            ],
        );
        rejected(s.apply(&far), "second");
        // Nothing of it was folded; the sequence number is still free.
        assert_eq!(s.total().requests, 0);
        let v = s.view();
        assert!(v.timeline.is_empty());
        assert_eq!(v.rejected_messages, 1);
        assert_eq!(
            s.apply(&report("d0", 0, vec![bucket(0, None, 200, &[1_000])])),
            Applied::Changed
        );
    }
}

#[test]
fn a_second_beyond_the_plan_is_rejected_and_one_within_it_accepted() {
    let mut s = running(timed());
    // 10 s planned, a 30 s request timeout and some slack.
    assert_eq!(
        s.apply(&report("d0", 0, vec![bucket(45, None, 200, &[1_000])])),
        Applied::Changed
    );
    rejected(
        s.apply(&report("d0", 1, vec![bucket(10_000, None, 200, &[1_000])])),
        "second",
    );
}

#[test]
fn without_a_planned_end_the_bus_clock_bounds_the_second() {
    let mut s = running(counted());
    rejected(
        s.apply(&report("d0", 0, vec![bucket(3_600, None, 200, &[1_000])])),
        "second",
    );
    // An hour later on the bus, that second is plausible.
    let start = T0 + TestOptions::default().start_lead_ms;
    s.observe_clock(start + 3_600_000);
    assert_eq!(
        s.apply(&report("d0", 0, vec![bucket(3_600, None, 200, &[1_000])])),
        Applied::Changed
    );
}

#[test]
fn the_maximum_duration_bounds_the_second_when_nothing_else_does() {
    let options = TestOptions {
        max_duration_ms: Some(60_000),
        ..TestOptions::default()
    };
    let mut s = TestState::new("t", counted(), vec!["d0".into()], T0, options);
    s.poll(T0);
    s.apply(&register("d0", Some("t")));
    s.poll(T0);
    // The bus says a day went by, but the test may run a minute.
    s.observe_clock(T0 + 86_400_000);
    rejected(
        s.apply(&report("d0", 0, vec![bucket(50_000, None, 200, &[1_000])])),
        "second",
    );
}

#[test]
fn a_second_far_behind_the_newest_is_rejected() {
    let mut s = running(mix(2));
    assert_eq!(
        s.apply(&report("d0", 0, vec![bucket(500, Some(0), 200, &[1_000])])),
        Applied::Changed
    );
    rejected(
        s.apply(&report("d0", 1, vec![bucket(3, Some(0), 200, &[1_000])])),
        "second",
    );
    // One report spanning far more than a request can take is rejected too.
    let mut s = running(mix(2));
    rejected(
        s.apply(&report(
            "d0",
            0,
            vec![
                bucket(0, Some(0), 200, &[1_000]),
                bucket(590, Some(1), 200, &[1_000]),
            ],
        )),
        "second",
    );
    // A late bucket within the request timeout is fine.
    assert_eq!(
        s.apply(&report("d0", 1, vec![bucket(100, Some(0), 200, &[1_000])])),
        Applied::Changed
    );
    assert_eq!(
        s.apply(&report("d0", 2, vec![bucket(80, Some(1), 200, &[1_000])])),
        Applied::Changed
    );
}

#[test]
fn sequence_numbers_are_bounded_by_the_plan() {
    let mut s = running(timed());
    rejected(
        s.apply(&report(
            "d0",
            u64::MAX / 2,
            vec![bucket(0, None, 200, &[1_000])],
        )),
        "seq",
    );
    // Spaced numbers within the range cannot grow the set without bound either.
    let mut accepted = 0;
    for i in 0..10_000u64 {
        if s.apply(&report("d0", i * 2, vec![])) == Applied::Changed {
            accepted += 1;
        }
    }
    assert!(accepted < 1_000, "{accepted}");
    assert!(s.view().rejected_messages > 9_000);
}

/// Counts added with `+=` panicked in a debug build (with the controller's lock held) and
/// wrapped in a release build. A bucket no driver could send is rejected; what is
/// accepted adds up without wrapping (see the aggregate's own test for the saturation).
#[test]
fn implausible_counts_are_rejected() {
    let mut s = running(timed());
    let mut b = bucket(0, None, 503, &[1_000]);
    b.requests = u64::MAX - 1;
    rejected(s.apply(&report("d0", 0, vec![b])), "requests");
    let mut b = bucket(0, None, 503, &[1_000, 2_000]);
    b.errors = 3;
    rejected(s.apply(&report("d0", 0, vec![b])), "requests");
    // A histogram counting more responses than the bucket has requests.
    let mut b = bucket(0, None, 200, &[1_000, 2_000, 3_000]);
    b.requests = 1;
    b.errors = 0;
    rejected(s.apply(&report("d0", 0, vec![b])), "histogram");
    for seq in 0..3 {
        let mut b = bucket(seq as u32, None, 503, &[1_000]);
        b.requests = 1_000_000_000;
        b.errors = 1_000_000_000;
        b.status_codes.insert(503, u64::MAX);
        assert_eq!(s.apply(&report("d0", seq, vec![b])), Applied::Changed);
    }
    let v = s.view();
    assert_eq!(v.summary.requests, 3_000_000_000);
    assert_eq!(v.summary.status_codes["503"], u64::MAX);
    assert_eq!(v.rejected_messages, 3);
}

/// The probe: an empty 16 KiB histogram was made for every request of the mix before the
/// one a bucket is about, in every second.
#[test]
fn a_mix_holds_histograms_only_for_requests_with_data() {
    let mut s = running(mix(100));
    let buckets: Vec<BucketStats> = (0..60)
        .map(|second| bucket(second, Some(99), 200, &[1_000]))
        .collect();
    assert_eq!(s.apply(&report("d0", 0, buckets)), Applied::Changed);
    // Two histograms a second (the second's total and request 99), not 101.
    let per_second = s.timeline_heap_bytes() / 60;
    assert!(per_second < 60_000, "{per_second} bytes a second");
    assert_eq!(s.total().by_request.len(), 1);
    let v = s.view();
    assert_eq!(v.summary.by_request.len(), 100);
    assert_eq!(v.summary.by_request[99].requests, 60);
    assert_eq!(v.summary.by_request[0].requests, 0);
}

/// A state written before these bounds (a data dir holding the far second) is shown
/// without walking every second up to it: the restart that aborted again.
#[test]
fn a_stored_far_second_does_not_blow_up_the_view() {
    let mut s = running(timed());
    s.apply(&report("d0", 0, vec![bucket(2, None, 200, &[1_000])]));
    let snapshot = s.snapshot("n").unwrap();
    let mut doc: serde_json::Value = serde_json::from_slice(&snapshot.doc).unwrap();
    let second = doc["timeline"]["2"].clone();
    doc["timeline"][u32::MAX.to_string()] = second;
    let back = TestState::from_doc(&serde_json::to_vec(&doc).unwrap()).unwrap();
    let v = back.view();
    assert!(v.timeline.len() < 1_000, "{}", v.timeline.len());
    assert_eq!(v.timeline.last().unwrap().second, u32::MAX);
    assert_eq!(v.timeline.iter().map(|p| p.requests).sum::<u64>(), 2);
}
