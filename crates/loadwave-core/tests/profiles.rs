//! The fold of profile-driven tests, message by message: request mixes merged per
//! request, abort thresholds judged on the cluster's merged data, the timeline's plan.

use loadwave_core::{Applied, DriverPhase, TestOptions, TestState, TestStatus};
use loadwave_proto::{
    BucketStats, DriverHealth, DriverTotals, Message, MetricsReport, TestSpec, TriggerAction,
};
use loadwave_testkit::messages::{bucket, register};

const T0: u64 = 1_700_000_000_000;

fn spec(json: serde_json::Value) -> TestSpec {
    TestSpec::from_json(json.to_string().as_bytes()).unwrap()
}

fn report(driver: &str, seq: u64, is_final: bool, buckets: Vec<BucketStats>) -> Message {
    let requests = buckets.iter().map(|b| b.requests).sum();
    Message::Metrics(MetricsReport {
        test_id: "t".into(),
        driver_id: driver.into(),
        seq,
        is_final,
        buckets,
        totals: DriverTotals {
            requests,
            errors: 0,
        },
        elapsed_ms: 1000 * (seq + 1),
        stopped: false,
        start_delay_us: None,
        send_lag: None,
        health: DriverHealth::default(),
    })
}

/// A test of `spec` running since T0 with drivers d0, d1, ….
fn running(spec: TestSpec) -> TestState {
    let ids: Vec<String> = (0..spec.drivers).map(|i| format!("d{i}")).collect();
    let mut s = TestState::new("t", spec, ids.clone(), T0, TestOptions::default());
    s.poll(T0);
    for d in &ids {
        assert_eq!(s.apply(&register(d, Some("t"))), Applied::Changed);
    }
    s.poll(T0);
    assert_eq!(s.status(), TestStatus::Running);
    s
}

/// Polls at T0's start instant plus `ms` (the bus clock with it).
fn poll_at(s: &mut TestState, ms: u64) -> Vec<Message> {
    let at = T0 + TestOptions::default().start_lead_ms + ms;
    s.observe_clock(at);
    s.poll(at)
}

fn mix_spec(thresholds: &[&str]) -> TestSpec {
    spec(serde_json::json!({
        "test_type": "avalanche",
        "drivers": 2,
        "requests_per_driver": 40,
        "requests": [
            {"name": "browse", "url": "http://127.0.0.1:9/a", "weight": 3},
            {"name": "checkout", "url": "http://127.0.0.1:9/b", "method": "POST"},
        ],
        "thresholds": thresholds,
    }))
}

#[test]
fn a_mix_is_merged_per_request_beside_the_totals() {
    let mut s = mix_spec(&["p99{checkout} < 5ms", "p99{browse} < 5ms", "p99 < 5ms"]).pipe(running);
    for d in ["d0", "d1"] {
        let buckets = vec![
            bucket(0, Some(0), 200, &[1_000; 30]),
            bucket(
                0,
                Some(1),
                200,
                &(0..10).map(|i| 8_000 + i).collect::<Vec<_>>(),
            ),
        ];
        assert_eq!(s.apply(&report(d, 0, true, buckets)), Applied::Changed);
    }
    poll_at(&mut s, 2_000);
    let v = s.view();
    assert_eq!(v.status, TestStatus::Completed);
    assert_eq!(v.summary.requests, 80);
    let by: Vec<(&str, u64)> = v
        .summary
        .by_request
        .iter()
        .map(|r| (r.name.as_str(), r.requests))
        .collect();
    assert_eq!(by, vec![("browse", 60), ("checkout", 20)]);
    let checkout = &v.summary.by_request[1];
    assert_eq!(checkout.method, "POST");
    assert!(checkout.latency_ms.p50 >= 8.0, "{checkout:?}");
    assert!(v.summary.by_request[0].latency_ms.p99 <= 1.001);
    // The timeline splits the same way, second by second.
    let point = &v.timeline[0];
    assert_eq!(point.by_request.len(), 2);
    assert_eq!(point.by_request[1].requests, 20);
    // Thresholds on one request are judged on that request's histogram alone.
    let passed: Vec<bool> = v.verdict.unwrap().checks.iter().map(|c| c.passed).collect();
    assert_eq!(passed, vec![false, true, false]);
}

#[test]
fn a_bucket_for_a_request_outside_the_mix_is_rejected_whole() {
    let mut s = mix_spec(&[]).pipe(running);
    let bad = report(
        "d0",
        0,
        false,
        vec![
            bucket(0, Some(0), 200, &[1_000; 5]),
            bucket(0, Some(2), 200, &[1_000]),
        ],
    );
    assert!(matches!(s.apply(&bad), Applied::Rejected(r) if r.contains("request 2")));
    assert_eq!(s.view().summary.requests, 0);
    // Its sequence number stays free for the good copy.
    let good = report("d0", 0, false, vec![bucket(0, Some(0), 200, &[1_000; 5])]);
    assert_eq!(s.apply(&good), Applied::Changed);
}

#[test]
fn an_abort_threshold_stops_every_driver_after_its_grace() {
    let mut s = spec(serde_json::json!({
        "target_url": "http://127.0.0.1:9/",
        "test_type": "tsunami",
        "drivers": 2,
        "rate": 100,
        "duration_s": 60,
        "abort_grace_s": 3,
        "thresholds": ["error_rate < 5% abort", "p99 < 1s"],
    }))
    .pipe(running);
    // One driver answers fine, the other sees 500s: 50% errors over the cluster, though
    // each driver alone would judge differently.
    for second in 0..4u32 {
        let seq = u64::from(second);
        s.apply(&report(
            "d0",
            seq,
            false,
            vec![bucket(second, None, 200, &[900; 50])],
        ));
        s.apply(&report(
            "d1",
            seq,
            false,
            vec![bucket(second, None, 500, &[900; 50])],
        ));
        let out = poll_at(&mut s, u64::from(second) * 1_000 + 1_100);
        let stops = out
            .iter()
            .filter(|m| matches!(m, Message::Trigger(t) if t.action == TriggerAction::Stop))
            .count();
        // Within the grace nothing is judged; after it, the first evaluation stops it (and
        // the stop is sent again while drivers still run).
        assert_eq!(stops, usize::from(second >= 2), "second {second}");
        if second == 2 {
            assert!(s.view().aborted.is_some());
        }
    }
    let v = s.view();
    let aborted = v.aborted.as_ref().expect("aborted");
    assert_eq!(aborted.threshold, "error_rate < 5% abort");
    assert_eq!(aborted.actual, 0.5);
    assert!((3.0..4.0).contains(&aborted.at_s), "{aborted:?}");
    // Drivers finish their in-flight requests and report; then the test is stopped.
    for d in ["d0", "d1"] {
        let mut last = report(d, 4, true, vec![bucket(4, None, 200, &[900; 3])]);
        if let Message::Metrics(m) = &mut last {
            m.stopped = true;
        }
        s.apply(&last);
    }
    poll_at(&mut s, 5_000);
    let v = s.view();
    assert_eq!(v.status, TestStatus::Stopped);
    assert_eq!(v.summary.requests, 406);
    assert!(v.drivers.iter().all(|d| d.state == DriverPhase::Stopped));
    let verdict = v.verdict.unwrap();
    assert!(!verdict.passed);
    assert!(
        verdict.reasons[0].starts_with("aborted 3.1 s in: `error_rate < 5% abort` broke"),
        "{:?}",
        verdict.reasons
    );
    // The open model knows what each driver had left.
    assert_eq!(v.drivers[0].expected_requests, Some(3_000));
    assert_eq!(v.drivers[0].missing_requests, 3_000 - 203);
}

#[test]
fn abort_thresholds_that_hold_let_the_test_run() {
    let mut s = spec(serde_json::json!({
        "target_url": "http://127.0.0.1:9/",
        "test_type": "avalanche",
        "duration_s": 10,
        "abort_grace_s": 0,
        "thresholds": ["p99 < 10ms abort", "requests < 1000 abort"],
    }))
    .pipe(running);
    for second in 0..4u32 {
        s.apply(&report(
            "d0",
            u64::from(second),
            false,
            vec![bucket(second, None, 200, &[2_000; 200])],
        ));
        assert!(poll_at(&mut s, u64::from(second) * 1_000 + 1_100).is_empty());
    }
    assert!(s.view().aborted.is_none());
    // The fifth second reaches a thousand requests.
    s.apply(&report(
        "d0",
        4,
        false,
        vec![bucket(4, None, 200, &[2_000; 200])],
    ));
    let out = poll_at(&mut s, 5_100);
    assert!(
        matches!(&out[..], [Message::Trigger(t)] if t.action == TriggerAction::Stop),
        "{out:?}"
    );
    assert_eq!(s.view().aborted.unwrap().threshold, "requests < 1000 abort");
}

/// Abort thresholds are judged on the reports' own time base and only once data came: a
/// report arrives a second after its second, which the wall clock since the start would
/// count as a lower rate, and no data is not a count of zero.
#[test]
fn abort_thresholds_wait_for_data_and_measure_rates_on_the_reports_clock() {
    let mut s = spec(serde_json::json!({
        "target_url": "http://127.0.0.1:9/",
        "test_type": "avalanche",
        "duration_s": 10,
        "abort_grace_s": 0,
        "thresholds": ["requests > 0 abort", "rps > 80 abort"],
    }))
    .pipe(running);
    let stops = |out: Vec<Message>| {
        out.iter()
            .filter(|m| matches!(m, Message::Trigger(t) if t.action == TriggerAction::Stop))
            .count()
    };
    assert_eq!(stops(poll_at(&mut s, 1_500)), 0, "nothing came yet");
    assert!(s.view().aborted.is_none());
    // 100 requests in the first second, folded 2.5 s in: 100 per second, not 40.
    s.apply(&report(
        "d0",
        0,
        false,
        vec![bucket(0, None, 200, &[2_000; 100])],
    ));
    assert_eq!(stops(poll_at(&mut s, 2_500)), 0);
    assert!(s.view().aborted.is_none(), "{:?}", s.view().aborted);
}

#[test]
fn the_timeline_shows_the_plan_beside_what_came() {
    let mut s = spec(serde_json::json!({
        "target_url": "http://127.0.0.1:9/",
        "test_type": "tsunami",
        "drivers": 2,
        "stages": [{"duration_s": 2, "target": 400}, {"duration_s": 2, "target": 200}],
    }))
    .pipe(running);
    // Second 1 got nothing at all (a stalled target): it still shows, with its plan.
    s.apply(&report(
        "d0",
        0,
        false,
        vec![bucket(0, None, 200, &[500; 50])],
    ));
    s.apply(&report(
        "d0",
        1,
        false,
        vec![bucket(2, None, 200, &[500; 175])],
    ));
    let v = s.view();
    let rows: Vec<(u32, u64, Option<u64>)> = v
        .timeline
        .iter()
        .map(|p| (p.second, p.requests, p.planned_requests))
        .collect();
    assert_eq!(
        rows,
        vec![(0, 50, Some(100)), (1, 0, Some(300)), (2, 175, Some(350))]
    );
    assert_eq!(v.summary.expected_requests, Some(1_000));
    // Achieved concurrency: time in flight over the second (175 × 0.5 ms), to 3 places.
    assert_eq!(v.timeline[2].concurrency, 0.088);

    let mut s = spec(serde_json::json!({
        "target_url": "http://127.0.0.1:9/",
        "test_type": "avalanche",
        "drivers": 2,
        "stages": [{"duration_s": 2, "target": 8}],
    }))
    .pipe(running);
    s.apply(&report(
        "d0",
        0,
        false,
        vec![bucket(1, None, 200, &[20_000; 300])],
    ));
    let v = s.view();
    assert_eq!(v.timeline[0].planned_concurrency, Some(4.0));
    assert_eq!(v.timeline[1].planned_concurrency, Some(12.0));
    assert_eq!(v.timeline[1].concurrency, 6.0);
    assert_eq!(v.timeline[1].planned_requests, None);
    assert_eq!(v.summary.expected_requests, None);
}

/// `x.pipe(f)` is `f(x)`: keeps the set-up lines short.
trait Pipe: Sized {
    fn pipe<T>(self, f: impl FnOnce(Self) -> T) -> T {
        f(self)
    }
}

impl<T> Pipe for T {}
