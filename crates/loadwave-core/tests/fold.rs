//! The fold, message by message: merging, idempotency, lifecycle, thresholds.

use loadwave_core::{Applied, DriverPhase, TestOptions, TestState, TestStatus};
use loadwave_proto::{
    Activity, DriverHealth, DriverTotals, ErrorKind, Heartbeat, LatencyHistogram, Message,
    MetricsReport, Register, TestSpec, TriggerAction,
};
use loadwave_testkit::messages::bucket;

const T0: u64 = 1_700_000_000_000;

fn spec(drivers: u32, requests: u64, thresholds: &[&str]) -> TestSpec {
    let json = serde_json::json!({
        "target_url": "http://127.0.0.1:9/ping",
        "test_type": "avalanche",
        "drivers": drivers,
        "requests_per_driver": requests,
        "thresholds": thresholds,
    });
    TestSpec::from_json(json.to_string().as_bytes()).unwrap()
}

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("d{i}")).collect()
}

/// A deterministic stream of latencies with a long tail.
fn samples(seed: u64, n: usize) -> Vec<u64> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (x >> 33) as f64 / (1u64 << 31) as f64;
            // 200 µs to ~2 s, heavy tail.
            (200.0 / (1.0 - u * 0.9999)) as u64
        })
        .collect()
}

/// A report whose buckets hold `latencies` (all 200 responses) by second.
fn report(
    driver: &str,
    seq: u64,
    is_final: bool,
    by_second: &[(u32, Vec<u64>)],
    totals: u64,
) -> Message {
    let buckets = by_second
        .iter()
        .map(|(second, lat)| bucket(*second, None, 200, lat))
        .collect();
    Message::Metrics(MetricsReport {
        test_id: "t".into(),
        driver_id: driver.into(),
        seq,
        is_final,
        buckets,
        totals: DriverTotals {
            requests: totals,
            errors: 0,
        },
        elapsed_ms: 1000 * (by_second.iter().map(|b| b.0).max().unwrap_or(0) as u64 + 1),
        stopped: false,
        start_delay_us: Some(100 * seq),
        send_lag: None,
        health: DriverHealth::default(),
    })
}

fn ready(driver: &str) -> Message {
    Message::Register(Register {
        driver_id: driver.into(),
        host: "h".into(),
        pid: 1,
        version: "0".into(),
        test_id: Some("t".into()),
    })
}

fn heartbeat(driver: &str, sent_at_ms: u64) -> Message {
    Message::Heartbeat(Heartbeat {
        driver_id: driver.into(),
        seq: sent_at_ms / 1000,
        sent_at_ms,
        activity: Activity::Running,
        test_id: Some("t".into()),
    })
}

/// Reads `m` off the bus at time `at` (the bus clock advances to it).
fn feed(s: &mut TestState, m: &Message, at: u64) -> Applied {
    s.observe_clock(at);
    s.apply(m)
}

/// Polls at time `at`, the bus clock having reached it.
fn tick(s: &mut TestState, at: u64) -> Vec<Message> {
    s.observe_clock(at);
    s.poll(at)
}

/// A running test with every driver ready and triggered at T0.
fn running(drivers: usize, requests: u64, thresholds: &[&str]) -> TestState {
    let mut s = TestState::new(
        "t",
        spec(drivers as u32, requests, thresholds),
        ids(drivers),
        T0,
        TestOptions::default(),
    );
    tick(&mut s, T0);
    for d in ids(drivers) {
        assert_eq!(feed(&mut s, &ready(&d), T0), Applied::Changed);
    }
    tick(&mut s, T0);
    assert_eq!(s.status(), TestStatus::Running);
    s
}

/// Every driver's reports: (driver, messages). Each driver gets three seconds of samples
/// spread over two interval reports and a final one.
fn workload(drivers: usize) -> (Vec<Message>, Vec<u64>) {
    let mut all = Vec::new();
    let mut messages = Vec::new();
    for d in 0..drivers {
        let lat = samples(d as u64 + 1, 3000);
        all.extend_from_slice(&lat);
        let id = format!("d{d}");
        let (a, rest) = lat.split_at(1000);
        let (b, c) = rest.split_at(1200);
        messages.push(report(&id, 0, false, &[(0, a.to_vec())], 1000));
        messages.push(report(
            &id,
            1,
            false,
            &[(1, b[..700].to_vec()), (0, b[700..].to_vec())],
            2200,
        ));
        messages.push(report(&id, 2, true, &[(2, c.to_vec())], 3000));
    }
    (messages, all)
}

#[test]
fn merged_percentiles_equal_one_histogram_of_all_samples() {
    let (messages, all) = workload(4);
    let mut s = running(4, 3000, &[]);
    for m in &messages {
        assert_eq!(feed(&mut s, m, T0 + 3000), Applied::Changed);
    }
    tick(&mut s, T0 + 3000);
    let view = s.view();
    assert_eq!(view.status, TestStatus::Completed);

    let mut single = LatencyHistogram::new();
    all.iter().for_each(|v| single.record_us(*v));
    let l = view.summary.latency_ms;
    let ms = |us: u64| us as f64 / 1000.0;
    assert_eq!(view.summary.requests, 12_000);
    assert_eq!(view.summary.status_codes["200"], 12_000);
    assert_eq!(l.p50, ms(single.quantile_us(0.50)));
    assert_eq!(l.p90, ms(single.quantile_us(0.90)));
    assert_eq!(l.p99, ms(single.quantile_us(0.99)));
    assert_eq!(l.p999, ms(single.quantile_us(0.999)));
    assert_eq!(l.min, ms(*all.iter().min().unwrap()));
    assert_eq!(l.max, ms(*all.iter().max().unwrap()));
    let mean = all.iter().sum::<u64>() as f64 / all.len() as f64 / 1000.0;
    assert!((l.mean - mean).abs() < 0.001, "{} vs {mean}", l.mean);

    // Averaging the drivers' p99s would not give the merged p99 of this skewed data.
    let avg_p99: f64 = view.drivers.iter().map(|d| d.latency_ms.p99).sum::<f64>() / 4.0;
    assert_ne!(avg_p99, l.p99);

    // The timeline's seconds add up to the total, and second 0 got its late bucket.
    let per_second: u64 = view.timeline.iter().map(|p| p.requests).sum();
    assert_eq!(per_second, 12_000);
    assert_eq!(view.timeline[0].requests, 4 * 1500);
    assert_eq!(view.summary.duration_s, 3.0);
    assert_eq!(view.summary.rps, 4000.0);
}

#[test]
fn redelivery_and_reordering_change_nothing() {
    let (messages, _) = workload(3);
    let mut once = running(3, 3000, &[]);
    for m in &messages {
        feed(&mut once, m, T0 + 3000);
    }
    tick(&mut once, T0 + 3000);

    let mut twice = running(3, 3000, &[]);
    // Reverse order, each message delivered twice, with a heartbeat in between.
    for m in messages.iter().rev() {
        feed(&mut twice, m, T0 + 3000);
        feed(&mut twice, &heartbeat("d0", T0 + 3000), T0 + 3000);
        assert_eq!(feed(&mut twice, m, T0 + 3000), Applied::Duplicate);
    }
    tick(&mut twice, T0 + 3000);
    let (a, b) = (once.view(), twice.view());
    assert_eq!(a.summary, b.summary);
    assert_eq!(a.timeline, b.timeline);
    assert_eq!(a.status, b.status);
    assert_eq!(twice.duplicates(), 9);
    assert!(b.warnings.iter().any(|w| w.contains("9 re-delivered")));
}

#[test]
fn lifecycle_configures_triggers_and_completes() {
    let mut s = TestState::new("t", spec(2, 10, &[]), ids(2), T0, TestOptions::default());
    let out = tick(&mut s, T0);
    let configs: Vec<_> = out
        .iter()
        .filter_map(|m| match m {
            Message::TestConfig(c) => Some((c.driver_id.clone(), c.driver_index)),
            _ => None,
        })
        .collect();
    assert_eq!(configs, vec![("d0".into(), 0), ("d1".into(), 1)]);
    // Nothing again before the resend interval...
    assert!(tick(&mut s, T0 + 500).is_empty());
    // ...but at once for a driver that (re)registers.
    feed(
        &mut s,
        &Message::Register(Register {
            driver_id: "d1".into(),
            host: "h".into(),
            pid: 1,
            version: "0".into(),
            test_id: None,
        }),
        T0 + 600,
    );
    assert_eq!(tick(&mut s, T0 + 600).len(), 1);
    feed(&mut s, &ready("d0"), T0 + 700);
    assert!(
        tick(&mut s, T0 + 700).is_empty(),
        "no trigger before every driver is ready"
    );
    feed(&mut s, &ready("d1"), T0 + 800);
    let out = tick(&mut s, T0 + 800);
    assert!(matches!(
        &out[..],
        [Message::Trigger(t)] if t.action == TriggerAction::Start { start_at_ms: T0 + 800 + 1000 }
    ));
    assert_eq!(s.status(), TestStatus::Running);
    feed(
        &mut s,
        &report("d0", 0, true, &[(0, vec![100; 10])], 10),
        T0 + 2000,
    );
    tick(&mut s, T0 + 2000);
    assert_eq!(s.status(), TestStatus::Running);
    feed(
        &mut s,
        &report("d1", 0, true, &[(0, vec![100; 10])], 10),
        T0 + 2100,
    );
    tick(&mut s, T0 + 2100);
    let view = s.view();
    assert_eq!(view.status, TestStatus::Completed);
    assert!(view.verdict.unwrap().passed);
    assert!(
        view.drivers
            .iter()
            .all(|d| d.state == DriverPhase::Completed)
    );
}

#[test]
fn a_silent_driver_is_lost_and_its_missing_work_named() {
    let mut s = running(2, 100, &[]);
    feed(
        &mut s,
        &report("d0", 0, false, &[(0, vec![500; 40])], 40),
        T0 + 1000,
    );
    feed(
        &mut s,
        &report("d1", 0, false, &[(0, vec![500; 40])], 40),
        T0 + 1000,
    );
    feed(
        &mut s,
        &report("d1", 1, true, &[(1, vec![500; 60])], 100),
        T0 + 2000,
    );
    feed(&mut s, &heartbeat("d0", T0 + 1500), T0 + 1500);
    // Silence counts in seconds of a moving bus: d0 was last heard at 2 s.
    for at in [3000, 4000, 5000] {
        tick(&mut s, T0 + at);
    }
    assert_eq!(s.status(), TestStatus::Running, "3 s have not passed yet");
    tick(&mut s, T0 + 5001);
    let view = s.view();
    assert_eq!(view.status, TestStatus::Completed);
    let d0 = &view.drivers[0];
    assert_eq!(
        (d0.state, d0.requests, d0.missing_requests),
        (DriverPhase::Lost, 40, 60)
    );
    assert_eq!(view.summary.requests, 140, "the lost driver's data is kept");
    let verdict = view.verdict.unwrap();
    assert!(!verdict.passed);
    assert!(verdict.reasons[0].contains("d0 was lost: 60 of its 100"));
}

#[test]
fn drivers_that_never_get_ready_fail_the_test_with_their_names() {
    let mut s = TestState::new("t", spec(2, 1, &[]), ids(2), T0, TestOptions::default());
    tick(&mut s, T0);
    feed(&mut s, &ready("d0"), T0 + 10);
    tick(&mut s, T0 + 29_999);
    assert_eq!(s.status(), TestStatus::Pending);
    let out = tick(&mut s, T0 + 30_000);
    assert!(matches!(&out[..], [Message::Trigger(t)] if t.action == TriggerAction::Stop));
    let view = s.view();
    assert_eq!(view.status, TestStatus::Failed);
    assert!(view.error.unwrap().contains("d1"));
}

#[test]
fn stop_ends_the_test_as_stopped_with_partial_counts() {
    let mut s = running(1, 1000, &[]);
    feed(
        &mut s,
        &report("d0", 0, false, &[(0, vec![100; 10])], 10),
        T0 + 1000,
    );
    let out = s.request_stop(T0 + 1100);
    assert!(matches!(&out[..], [Message::Trigger(t)] if t.action == TriggerAction::Stop));
    let mut last = report("d0", 1, true, &[(1, vec![100; 5])], 15);
    if let Message::Metrics(m) = &mut last {
        m.stopped = true;
    }
    feed(&mut s, &last, T0 + 1200);
    tick(&mut s, T0 + 1200);
    let view = s.view();
    assert_eq!(view.status, TestStatus::Stopped);
    assert_eq!(view.drivers[0].state, DriverPhase::Stopped);
    assert_eq!(
        (view.summary.requests, view.drivers[0].missing_requests),
        (15, 985)
    );
    assert!(!view.verdict.unwrap().passed);
}

#[test]
fn thresholds_give_the_verdict() {
    let run = |thresholds: &[&str]| {
        let mut s = running(1, 100, thresholds);
        // 99 fast answers and one slow one; 5 transport errors on top.
        let mut m = report(
            "d0",
            0,
            true,
            &[(0, [vec![1_000; 98], vec![50_000; 2]].concat())],
            105,
        );
        if let Message::Metrics(r) = &mut m {
            r.buckets[0].requests += 5;
            r.buckets[0].errors += 5;
            r.buckets[0].error_kinds.insert(ErrorKind::Timeout, 5);
        }
        feed(&mut s, &m, T0 + 1000);
        tick(&mut s, T0 + 1000);
        s.view().verdict.unwrap()
    };
    let v = run(&[
        "p50 < 2ms",
        "p99 < 100ms",
        "error_rate < 10%",
        "requests >= 105",
    ]);
    assert!(v.passed, "{v:?}");
    let v = run(&["p99 < 10ms", "error_rate < 1%", "rps > 1000000"]);
    assert!(!v.passed);
    assert_eq!(v.checks.iter().filter(|c| !c.passed).count(), 3);
    let er = &v.checks[1];
    assert!((er.actual - 5.0 / 105.0).abs() < 1e-6, "{er:?}");
    assert!(v.reasons.iter().any(|r| r == "3 of 3 thresholds failed"));
}

#[test]
fn bad_and_foreign_reports_change_nothing() {
    let mut s = running(1, 10, &[]);
    let mut bad = report("d0", 0, false, &[(0, vec![100; 3])], 3);
    if let Message::Metrics(m) = &mut bad {
        m.buckets[0].histogram = "%%%".into();
    }
    assert!(matches!(feed(&mut s, &bad, T0), Applied::Rejected(_)));
    let mut foreign = report("d0", 0, false, &[(0, vec![100; 3])], 3);
    if let Message::Metrics(m) = &mut foreign {
        m.test_id = "other".into();
    }
    assert_eq!(feed(&mut s, &foreign, T0), Applied::Ignored);
    assert_eq!(
        feed(&mut s, &report("zz", 0, false, &[], 0), T0),
        Applied::Ignored
    );
    assert_eq!(s.view().summary.requests, 0);
    // The rejected sequence number is still free for the good report.
    assert_eq!(
        feed(&mut s, &report("d0", 0, false, &[(0, vec![100; 3])], 3), T0),
        Applied::Changed
    );
    assert_eq!(s.view().summary.requests, 3);
}

#[test]
fn reports_survive_the_wire_encoding() {
    let (messages, _) = workload(1);
    for m in messages {
        assert_eq!(Message::decode(&m.encode()).unwrap(), m);
    }
}

#[test]
fn a_stalled_bus_makes_nobody_lost() {
    let mut s = running(2, 100, &[]);
    feed(&mut s, &heartbeat("d0", T0 + 1000), T0 + 1000);
    feed(&mut s, &heartbeat("d1", T0 + 1000), T0 + 1000);
    // Ten seconds of wall time pass with nothing read off the bus (a broker outage).
    s.poll(T0 + 11_000);
    assert_eq!(s.status(), TestStatus::Running);
    assert!(
        s.view()
            .drivers
            .iter()
            .all(|d| d.state != DriverPhase::Lost)
    );
    // The backlog arrives in send order: both drivers were alive all along.
    for at in (2..=12).map(|k| T0 + k * 1000) {
        feed(&mut s, &heartbeat("d0", at), T0 + 12_000);
        feed(&mut s, &heartbeat("d1", at), T0 + 12_000);
    }
    tick(&mut s, T0 + 12_000);
    assert!(
        s.view()
            .drivers
            .iter()
            .all(|d| d.state != DriverPhase::Lost)
    );
    // Now the bus moves on (the other driver's heartbeats) and d0 stays silent.
    for at in [13_000, 14_000, 15_000] {
        feed(&mut s, &heartbeat("d1", T0 + at), T0 + at);
        s.poll(T0 + at);
    }
    assert_ne!(s.view().drivers[0].state, DriverPhase::Lost);
    feed(&mut s, &heartbeat("d1", T0 + 15_001), T0 + 15_001);
    s.poll(T0 + 15_001);
    assert_eq!(s.view().drivers[0].state, DriverPhase::Lost);
}

#[test]
fn a_snapshot_restores_the_state_exactly() {
    let (messages, _) = workload(2);
    let mut s = running(2, 3000, &["p99 < 1s"]);
    for m in &messages[..4] {
        feed(&mut s, m, T0 + 2000);
    }
    let snapshot = s.snapshot("n").unwrap();
    assert!(snapshot.chunks.is_empty(), "a short test is all tail");
    let mut restored = TestState::from_doc(&snapshot.doc).unwrap();
    assert_eq!(restored.view(), s.view());
    // Re-delivered reports after a restart are recognised as duplicates.
    assert_eq!(
        feed(&mut restored, &messages[0], T0 + 2000),
        Applied::Duplicate
    );
    for m in &messages[4..] {
        feed(&mut restored, m, T0 + 3000);
        feed(&mut s, m, T0 + 3000);
    }
    tick(&mut restored, T0 + 3000);
    tick(&mut s, T0 + 3000);
    assert_eq!(restored.view().summary, s.view().summary);
    assert_eq!(restored.status(), TestStatus::Completed);
    // Start skew: the drivers' final reports said 200 µs after the start instant.
    assert_eq!(s.view().summary.start_skew_ms, Some(0.0));
}
