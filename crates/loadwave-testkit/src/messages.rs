//! Driver messages for tests that feed a controller by hand: registrations, heartbeats and
//! metrics reports with real serialized histograms.

use std::collections::BTreeMap;

use loadwave_proto::{
    Activity, BucketStats, DriverHealth, DriverTotals, Heartbeat, LatencyHistogram, Message,
    MetricsReport, Register,
};

/// A driver announcing itself (`test` empty) or confirming a test's configuration.
pub fn register(driver: &str, test: Option<&str>) -> Message {
    Message::Register(Register {
        driver_id: driver.into(),
        host: "test-host".into(),
        pid: 7,
        version: "0".into(),
        test_id: test.map(str::to_string),
    })
}

/// A heartbeat sent at `at` (ms since the epoch).
pub fn heartbeat(driver: &str, test: Option<&str>, at: u64, activity: Activity) -> Message {
    Message::Heartbeat(Heartbeat {
        driver_id: driver.into(),
        seq: at / 1000,
        sent_at_ms: at,
        activity,
        test_id: test.map(str::to_string),
    })
}

/// Second `second`'s bucket (of request `request` of a mix, or `None`): one request per
/// latency (µs), each answered `status` (an error from 400 up, as drivers count them),
/// recorded in a real histogram; closed model, so each was in flight for its latency.
pub fn bucket(second: u32, request: Option<u32>, status: u16, latencies: &[u64]) -> BucketStats {
    let mut h = LatencyHistogram::new();
    latencies.iter().for_each(|v| h.record_us(*v));
    let n = latencies.len() as u64;
    BucketStats {
        second,
        request,
        requests: n,
        errors: if status >= 400 { n } else { 0 },
        status_codes: BTreeMap::from([(status, n)]),
        error_kinds: BTreeMap::new(),
        late: 0,
        latency_sum_us: latencies.iter().sum(),
        latency_min_us: latencies.iter().copied().min().unwrap_or(0),
        latency_max_us: latencies.iter().copied().max().unwrap_or(0),
        busy_us: latencies.iter().sum(),
        histogram: h.to_base64().expect("histogram serializes"),
    }
}

/// Report number `seq` of `driver`: second `seq` of the test, `requests` responses (all
/// 200) with latencies 1,000 µs, 1,001 µs, … recorded in a real histogram.
pub fn report(test: &str, driver: &str, seq: u64, is_final: bool, requests: u64) -> Message {
    let latencies: Vec<u64> = (0..requests).map(|i| 1_000 + i).collect();
    Message::Metrics(MetricsReport {
        test_id: test.into(),
        driver_id: driver.into(),
        seq,
        is_final,
        buckets: vec![bucket(seq as u32, None, 200, &latencies)],
        totals: DriverTotals {
            requests: requests * (seq + 1),
            errors: 0,
        },
        elapsed_ms: 1000 * (seq + 1),
        stopped: false,
        start_delay_us: Some(50),
        send_lag: None,
        health: DriverHealth::default(),
    })
}
