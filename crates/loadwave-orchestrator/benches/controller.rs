//! `make bench-controller`: what the controller costs at scale, in three parts (each a
//! mode of this binary: `cargo bench -p loadwave-orchestrator --bench controller -- MODE
//! [--flag value …]`).
//!
//! - `in-process`: 1,000 synthetic drivers report every second for 60 s. Each report
//!   carries a few hundred to a thousand latencies (log-normal around each driver's own
//!   1–50 ms, a slow tail, a few 503s and timeouts), recorded and encoded exactly as the
//!   driver encodes them, and travels as the JSON payload of the wire, with each driver's
//!   heartbeat beside it. The payloads go through [`ControllerCore::ingest_payload`] and,
//!   after each one, the orchestrator loop's own step: driver requests, `poll`, due
//!   snapshots written by [`SnapshotWriter`] to a directory, the acknowledgement
//!   watermark. Time is simulated, so the run takes seconds. Prints the CPU time per
//!   report (getrusage, payload generation excluded), the wall time, the RSS, and the
//!   heap beyond the timeline's own histograms at half time and at the end.
//! - `snapshots`: a 1-hour, 10-driver test in simulated time, snapshotted every second
//!   into a store that counts what it writes: bytes written per second, against a whole
//!   rewrite of the same state every second (the way snapshots were written before).
//! - `memory`: RSS after many finished tests with request mixes (100 tests of a
//!   20-request mix, 10 minutes each, by default), then after the probes of issue 16; see
//!   [`memory`].
//! - `kafka`: the real thing on this machine: a Kafka broker (started by the script),
//!   the release `loadwave-orchestrator`, `loadwave-target` on 127.0.0.1 and several
//!   `loadwave-driver --agents N` processes; a low-rate, bounded Tsunami test. Prints the
//!   orchestrator's CPU time per report (from `/proc/PID/stat` over the test) and its
//!   RSS at the end.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use loadwave_core::{Acquired, ControllerCore, ControllerOptions, DriverSlot, TestStatus};
use loadwave_orchestrator::TestStore;
use loadwave_orchestrator::controller::SnapshotWriter;
use loadwave_proto::{
    Activity, BucketStats, DriverHealth, DriverTotals, ErrorKind, Heartbeat, LatencyHistogram,
    Message, MetricsReport, Register, TestSpec, Tick, Topic,
};
use loadwave_testkit::{Proc, TargetServer};
use serde_json::{Value, json};

/// Counts the bytes allocated and not yet freed, to tell the controller's heap apart.
struct CountingAlloc;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only a counter is
// kept beside it.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const T0: u64 = 1_700_000_000_000;

/// A small deterministic generator (SplitMix64), so every run sees the same load.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }

    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f64 {
        let u = self.unit().max(1e-12);
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * self.unit()).cos()
    }
}

/// One synthetic driver's latency profile and running totals.
struct SynthDriver {
    id: String,
    median_us: f64,
    sigma: f64,
    requests: u64,
    errors: u64,
    seq: u64,
}

/// Drivers of a test and the payloads they would publish.
struct Fleet {
    test_id: String,
    drivers: Vec<SynthDriver>,
    rng: Rng,
}

impl Fleet {
    fn new(test_id: &str, count: usize, seed: u64) -> Fleet {
        let mut rng = Rng(seed);
        let drivers = (0..count)
            .map(|i| SynthDriver {
                id: format!("bench-{i}"),
                // Log-uniform between 1 and 50 ms.
                median_us: 1_000.0 * 50f64.powf(rng.unit()),
                sigma: 0.3 + 0.5 * rng.unit(),
                requests: 0,
                errors: 0,
                seq: 0,
            })
            .collect();
        Fleet {
            test_id: test_id.to_string(),
            drivers,
            rng,
        }
    }

    /// `requests` completions of driver `d` in `second`, as its engine records them.
    fn bucket(&mut self, d: usize, second: u32, requests: u64) -> BucketStats {
        let (median, sigma) = (self.drivers[d].median_us, self.drivers[d].sigma);
        let mut histogram = LatencyHistogram::new();
        let mut status_codes = BTreeMap::new();
        let mut error_kinds = BTreeMap::new();
        let (mut errors, mut sum, mut min, mut max) = (0, 0u64, u64::MAX, 0u64);
        for _ in 0..requests {
            let r = self.rng.unit();
            if r < 0.002 {
                *error_kinds.entry(ErrorKind::Timeout).or_insert(0) += 1;
                errors += 1;
                continue;
            }
            let mut us = median * (sigma * self.rng.normal()).exp();
            if r > 0.99 {
                // The slow tail: a GC pause, a cold cache.
                us *= 3.0 + 7.0 * self.rng.unit();
            }
            let us = (us as u64).max(50);
            histogram.record_us(us);
            sum += us;
            min = min.min(us);
            max = max.max(us);
            let status = if r > 0.995 { 503 } else { 200 };
            errors += u64::from(status >= 400);
            *status_codes.entry(status).or_insert(0) += 1;
        }
        BucketStats {
            second,
            requests,
            errors,
            status_codes,
            error_kinds,
            late: 0,
            latency_sum_us: sum,
            latency_min_us: if histogram.is_empty() { 0 } else { min },
            latency_max_us: max,
            busy_us: sum,
            request: None,
            histogram: histogram.to_base64().expect("histograms encode"),
        }
    }

    /// Driver `d`'s report after `second`: the second's bucket, sometimes a straggler
    /// for the second before (a worker that finished a slow request late).
    fn report(&mut self, d: usize, second: u32) -> Message {
        let mut buckets = Vec::with_capacity(2);
        if second > 0 && self.rng.unit() < 0.2 {
            let n = self.rng.range(1, 6);
            buckets.push(self.bucket(d, second - 1, n));
        }
        let n = self.rng.range(300, 1_001);
        buckets.push(self.bucket(d, second, n));
        let driver = &mut self.drivers[d];
        for b in &buckets {
            driver.requests += b.requests;
            driver.errors += b.errors;
        }
        let seq = driver.seq;
        driver.seq += 1;
        Message::Metrics(MetricsReport {
            test_id: self.test_id.clone(),
            driver_id: driver.id.clone(),
            seq,
            is_final: false,
            buckets,
            totals: DriverTotals {
                requests: driver.requests,
                errors: driver.errors,
            },
            elapsed_ms: 1_000 * (u64::from(second) + 1),
            stopped: false,
            start_delay_us: (seq == 0).then_some(150),
            send_lag: None,
            health: DriverHealth {
                cpu_percent: 20.0,
                cores: 2,
                lag_ms_mean: 0.1,
                lag_ms_max: 1.2,
                saturated: false,
            },
        })
    }

    fn heartbeat(&self, d: usize, at_ms: u64) -> Message {
        Message::Heartbeat(Heartbeat {
            driver_id: self.drivers[d].id.clone(),
            seq: at_ms / 1_000,
            sent_at_ms: at_ms,
            activity: Activity::Running,
            test_id: Some(self.test_id.clone()),
        })
    }

    /// One second of deliveries, as the controller would read them: each driver's
    /// report and heartbeat, spread over the second, and the orchestrator's tick.
    fn second(&mut self, second: u32, start_ms: u64) -> Vec<(u64, Topic, Vec<u8>)> {
        let n = self.drivers.len();
        let base = start_ms + 1_000 * u64::from(second + 1);
        let mut out = Vec::with_capacity(2 * n + 1);
        out.push((
            base,
            Topic::Heartbeat,
            Message::Tick(Tick {
                orchestrator_id: "bench".into(),
                sent_at_ms: base,
            })
            .encode(),
        ));
        for d in 0..n {
            let at = base + (1_000 * d as u64) / n as u64;
            out.push((at, Topic::Metrics, self.report(d, second).encode()));
            out.push((at, Topic::Heartbeat, self.heartbeat(d, at).encode()));
        }
        out
    }
}

/// A controller holding one running test of `fleet`'s drivers, stored by `writer`.
async fn started(fleet: &Fleet, writer: &SnapshotWriter) -> (Mutex<ControllerCore>, u64) {
    let mut core = ControllerCore::new(ControllerOptions::default());
    let spec = TestSpec::from_json(
        json!({
            "target_url": "http://127.0.0.1:9/ping", "test_type": "avalanche",
            "drivers": fleet.drivers.len(), "requests_per_driver": 100_000_000u64,
            "concurrency": 16,
        })
        .to_string()
        .as_bytes(),
    )
    .expect("spec");
    let id = fleet.test_id.as_str();
    let state = core.new_test(id, spec, T0);
    let version = writer.store().create(&state).await.expect("created");
    writer.written_at(id, version);
    core.insert(state, T0);
    core.driver_requests();
    let slots = fleet
        .drivers
        .iter()
        .map(|d| DriverSlot::id(d.id.clone()))
        .collect();
    core.drivers_acquired(id, Acquired::Drivers(slots), T0);
    core.poll(T0);
    for d in &fleet.drivers {
        core.ingest(
            &Message::Register(Register {
                driver_id: d.id.clone(),
                host: "bench".into(),
                pid: 1,
                version: "0".into(),
                test_id: Some(id.to_string()),
            }),
            T0,
        );
    }
    core.poll(T0);
    let start = core
        .view(id)
        .and_then(|v| v.start_at_ms)
        .expect("the test started");
    assert_eq!(core.test(id).map(|t| t.status()), Some(TestStatus::Running));
    let core = Mutex::new(core);
    let _ = writer.write_due(&core, T0, true).await;
    (core, start)
}

/// What the orchestrator's loop does with one delivery: fold it, step (driver
/// requests, poll), write the snapshots due, read the acknowledgement watermark.
async fn deliver(
    core: &Mutex<ControllerCore>,
    writer: &SnapshotWriter,
    (at, topic, payload): &(u64, Topic, Vec<u8>),
) -> Vec<loadwave_core::Snapshot> {
    let needed = {
        let mut c = core.lock().expect("lock");
        c.ingest_payload(*topic, payload, *at);
        c.take_chunk_requests()
    };
    // A report for a sealed chunk that left memory: read it back, fold again.
    if !needed.is_empty() {
        for (id, chunk) in needed {
            writer.restore_chunks(core, &id, Some(chunk)).await;
        }
        core.lock()
            .expect("lock")
            .ingest_payload(*topic, payload, *at);
    }
    let incomplete = {
        let mut c = core.lock().expect("lock");
        c.driver_requests();
        c.poll(*at);
        c.take_finished();
        c.incomplete_finished()
    };
    // A finished test is written whole.
    for id in incomplete {
        writer.restore_chunks(core, &id, None).await;
    }
    let written = writer.write_due(core, *at, false).await;
    let _ = core.lock().expect("lock").ack_watermark();
    written
}

/// User + system CPU time of this process.
fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// A `/proc/PID/status` field in kB (`VmRSS`, `VmHWM`).
fn status_kb(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

fn mb(bytes: f64) -> String {
    format!("{:.1} MB", bytes / 1e6)
}

/// Flags given as `--name value`.
struct Flags(HashMap<String, String>);

impl Flags {
    fn parse(args: &[String]) -> Flags {
        let mut map = HashMap::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if let Some(name) = a.strip_prefix("--") {
                let value = it
                    .next()
                    .unwrap_or_else(|| panic!("--{name} needs a value"));
                map.insert(name.to_string(), value.clone());
            }
        }
        Flags(map)
    }

    fn get<T: std::str::FromStr>(&self, name: &str, default: T) -> T {
        self.0.get(name).map_or(default, |v| {
            v.parse()
                .unwrap_or_else(|_| panic!("--{name} {v} is not valid"))
        })
    }

    fn text(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

/// Part 3, in process: see the module docs.
async fn in_process(flags: &Flags) {
    let drivers: usize = flags.get("drivers", 1_000);
    let seconds: u32 = flags.get("seconds", 60);
    let dir = flags
        .text("dir")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("loadwave-bench-controller"));
    let _ = std::fs::remove_dir_all(&dir);
    let writer = SnapshotWriter::new(TestStore::local_dir(&dir).expect("store"));
    let mut fleet = Fleet::new("bench-in-process", drivers, 42);
    let (core, start) = started(&fleet, &writer).await;
    println!(
        "\ncontroller, in process: {drivers} drivers × {seconds} s, a report and a heartbeat \
         per driver per second, snapshots to {}",
        dir.display()
    );
    let (mut cpu, mut wall, mut reports) = (Duration::ZERO, Duration::ZERO, 0u64);
    let mut payload_bytes = 0usize;
    let mut marks = Vec::new();
    let began = Instant::now();
    for second in 0..seconds {
        let deliveries = fleet.second(second, start);
        payload_bytes += deliveries
            .iter()
            .filter(|d| d.1 == Topic::Metrics)
            .map(|d| d.2.len())
            .sum::<usize>();
        let (c0, w0) = (cpu_time(), Instant::now());
        for delivery in &deliveries {
            deliver(&core, &writer, delivery).await;
        }
        cpu += cpu_time() - c0;
        wall += w0.elapsed();
        reports += drivers as u64;
        drop(deliveries);
        if second + 1 == seconds / 2 || second + 1 == seconds {
            let (timeline, histograms) = core
                .lock()
                .expect("lock")
                .test(&fleet.test_id)
                .map_or((0, 0), |t| (t.timeline_heap_bytes(), t.driver_heap_bytes()));
            marks.push((
                second + 1,
                LIVE.load(Ordering::Relaxed),
                timeline,
                histograms,
            ));
        }
    }
    let _ = writer
        .write_due(&core, start + 1_000 * u64::from(seconds + 2), true)
        .await;
    // What one `GET /tests/{id}` of this test costs the orchestrator (not a report's
    // cost: views are derived on read, every driver's percentiles included).
    // The sealed seconds that left memory are read apart for the view, as the
    // orchestrator's `GET /tests/{id}` does.
    let (wanted, reader) = {
        let c = core.lock().expect("lock");
        let t = c.test(&fleet.test_id).expect("held");
        (t.unloaded_chunks(), t.chunk_reader())
    };
    let mut sealed = BTreeMap::new();
    for (k, name) in wanted {
        let body = writer
            .store()
            .chunk_body(&fleet.test_id, &name)
            .await
            .expect("store")
            .expect("stored");
        sealed.extend(reader.read(k, &body).expect("chunk"));
    }
    let (c0, views) = (cpu_time(), 5);
    for _ in 0..views {
        let c = core.lock().expect("lock");
        let view = c
            .test(&fleet.test_id)
            .map(|t| t.view_with_sealed(Some(&sealed)));
        assert!(view.is_some_and(|v| v.timeline.len() as u32 >= seconds));
    }
    let view_ms = (cpu_time() - c0).as_secs_f64() * 1e3 / f64::from(views);
    let per_report = cpu.as_secs_f64() * 1e6 / reports as f64;
    let written = writer.store().written();
    println!(
        "  {reports} reports ({:.0} B each on the wire) and as many heartbeats folded",
        payload_bytes as f64 / reports as f64
    );
    println!(
        "  CPU per report: {per_report:.1} µs (heartbeat, poll and snapshot writes included)   goal < 100 µs"
    );
    println!(
        "  feed: {:.2} s CPU, {:.2} s wall ({:.0} reports/s); {:.1} s in all with payload generation",
        cpu.as_secs_f64(),
        wall.as_secs_f64(),
        reports as f64 / wall.as_secs_f64(),
        began.elapsed().as_secs_f64()
    );
    println!(
        "  snapshots: {} objects, {} written ({}/s of test)",
        written.puts,
        mb(written.bytes as f64),
        mb(written.bytes as f64 / f64::from(seconds))
    );
    println!(
        "  RSS at the end: {} MB (peak {} MB); a view of the test (GET /tests/{{id}}) takes {view_ms:.0} ms of CPU",
        status_kb("self", "VmRSS") / 1024,
        status_kb("self", "VmHWM") / 1024
    );
    if let [(s1, live1, tl1, h1), (s2, live2, tl2, h2)] = marks[..] {
        let per_s = |a: usize, b: usize| (b as f64 - a as f64) / 1e3 / f64::from(s2 - s1);
        println!(
            "  heap at {s1} s → {s2} s: {} → {} ({:+.0} kB/s); of it the timeline {} → {} ({:+.0} kB/s), \
             the drivers' histograms {} → {} ({:+.0} kB/s, widening to the latencies seen)",
            mb(live1 as f64),
            mb(live2 as f64),
            per_s(live1, live2),
            mb(tl1 as f64),
            mb(tl2 as f64),
            per_s(tl1, tl2),
            mb(h1 as f64),
            mb(h2 as f64),
            per_s(h1, h2)
        );
        let (rest1, rest2) = (live1 - tl1 - h1, live2 - tl2 - h2);
        println!(
            "  heap beyond those histograms: {} → {}, {:+.1} kB per simulated second",
            mb(rest1 as f64),
            mb(rest2 as f64),
            per_s(rest1, rest2)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A started test `id` of `spec` on drivers `{id}-d{i}`, stored by `writer`; its start
/// instant.
async fn start_test(
    core: &Mutex<ControllerCore>,
    writer: &SnapshotWriter,
    id: &str,
    spec: Value,
    now: u64,
) -> u64 {
    let spec = TestSpec::from_json(spec.to_string().as_bytes()).expect("spec");
    let drivers = spec.drivers as usize;
    let state = core.lock().expect("lock").new_test(id, spec, now);
    let version = writer.store().create(&state).await.expect("created");
    writer.written_at(id, version);
    let mut c = core.lock().expect("lock");
    c.insert(state, now);
    c.driver_requests();
    let slots = (0..drivers)
        .map(|i| DriverSlot::id(format!("{id}-d{i}")))
        .collect();
    c.drivers_acquired(id, Acquired::Drivers(slots), now);
    c.poll(now);
    for i in 0..drivers {
        c.ingest(
            &Message::Register(Register {
                driver_id: format!("{id}-d{i}"),
                host: "bench".into(),
                pid: 1,
                version: "0".into(),
                test_id: Some(id.to_string()),
            }),
            now,
        );
    }
    c.poll(now);
    c.test(id)
        .and_then(|t| t.view().start_at_ms)
        .expect("the test started")
}

/// A report of driver `{id}-d{d}` numbered `seq` carrying `buckets`.
fn mem_report(id: &str, d: usize, seq: u64, buckets: Vec<BucketStats>, is_final: bool) -> Message {
    let requests = buckets.iter().map(|b| b.requests).sum();
    Message::Metrics(MetricsReport {
        test_id: id.to_string(),
        driver_id: format!("{id}-d{d}"),
        seq,
        is_final,
        buckets,
        totals: DriverTotals {
            requests,
            errors: 0,
        },
        elapsed_ms: 1_000 * (seq + 1),
        stopped: false,
        start_delay_us: (seq == 0).then_some(150),
        send_lag: None,
        health: DriverHealth::default(),
    })
}

fn rss_mb() -> f64 {
    status_kb("self", "VmRSS") as f64 / 1024.0
}

/// Part 5, memory: `--tests 100 --mix 20 --seconds 600 --drivers 2 --per-request 10`.
/// Runs that many tests one after the other, each a request mix of `--mix` requests for
/// `--seconds` s on `--drivers` drivers (every driver reports every request every
/// second, `--per-request` latencies each), through the controller core and the
/// snapshot writer as the orchestrator's loop drives them; then the probes of issue 16
/// (a far-future second, a 1,500-second report of a 100-request mix, counts near
/// `u64::MAX`). Prints the RSS and the live heap after the finished tests and after the
/// probes (goal: under 200 MB), and the sizes of `GET /tests` and of one finished
/// test's view.
async fn memory(flags: &Flags) {
    let tests: usize = flags.get("tests", 100);
    let mix: usize = flags.get("mix", 20);
    let seconds: u32 = flags.get("seconds", 600);
    let drivers: usize = flags.get("drivers", 2);
    let per_request: usize = flags.get("per-request", 10);
    let dir = flags
        .text("dir")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("loadwave-bench-memory"));
    let _ = std::fs::remove_dir_all(&dir);
    let writer = SnapshotWriter::new(TestStore::local_dir(&dir).expect("store"));
    let core = Mutex::new(ControllerCore::new(ControllerOptions::default()));
    println!(
        "\ncontroller memory: {tests} tests × {seconds} s, a {mix}-request mix on {drivers} drivers, \
         snapshots to {}; RSS at the start {:.1} MB",
        dir.display(),
        rss_mb()
    );
    // Encoded buckets to draw from: encoding is the drivers' cost, not the controller's.
    let mut rng = Rng(7);
    let pool: Vec<Vec<BucketStats>> = (0..mix)
        .map(|r| {
            (0..8)
                .map(|_| {
                    let median = 1_000.0 * 50f64.powf(rng.unit());
                    let mut h = LatencyHistogram::new();
                    let mut sum = 0;
                    for _ in 0..per_request {
                        let us = ((median * (0.5 * rng.normal()).exp()) as u64).max(50);
                        h.record_us(us);
                        sum += us;
                    }
                    BucketStats {
                        second: 0,
                        request: Some(r as u32),
                        requests: per_request as u64,
                        errors: 0,
                        status_codes: BTreeMap::from([(200, per_request as u64)]),
                        error_kinds: BTreeMap::new(),
                        late: 0,
                        latency_sum_us: sum,
                        latency_min_us: h.min_us(),
                        latency_max_us: h.max_us(),
                        busy_us: sum,
                        histogram: h.to_base64().expect("histograms encode"),
                    }
                })
                .collect()
        })
        .collect();
    let requests: Vec<Value> = (0..mix)
        .map(|i| json!({"name": format!("r{i}"), "url": format!("http://127.0.0.1:9/r{i}")}))
        .collect();
    let began = Instant::now();
    let mut now = T0;
    let mut last_id = String::new();
    for t in 0..tests {
        let id = format!("{t:06}-mem");
        let spec = json!({
            "test_type": "avalanche", "drivers": drivers, "duration_s": seconds,
            "requests": requests,
        });
        let start = start_test(&core, &writer, &id, spec, now).await;
        for second in 0..seconds {
            let at = start + 1_000 * u64::from(second + 1);
            let mut deliveries = vec![(
                at,
                Topic::Heartbeat,
                Message::Tick(Tick {
                    orchestrator_id: "bench".into(),
                    sent_at_ms: at,
                })
                .encode(),
            )];
            for d in 0..drivers {
                let buckets = (0..mix)
                    .map(|r| {
                        let mut b = pool[r][rng.range(0, 8) as usize].clone();
                        b.second = second;
                        b
                    })
                    .collect();
                let report = mem_report(&id, d, u64::from(second), buckets, false);
                deliveries.push((at, Topic::Metrics, report.encode()));
                let heartbeat = Message::Heartbeat(Heartbeat {
                    driver_id: format!("{id}-d{d}"),
                    seq: at / 1_000,
                    sent_at_ms: at,
                    activity: Activity::Running,
                    test_id: Some(id.clone()),
                });
                deliveries.push((at, Topic::Heartbeat, heartbeat.encode()));
            }
            for delivery in &deliveries {
                deliver(&core, &writer, delivery).await;
            }
        }
        now = start + 1_000 * u64::from(seconds + 2);
        for d in 0..drivers {
            let last = mem_report(&id, d, u64::from(seconds), Vec::new(), true);
            deliver(&core, &writer, &(now, Topic::Metrics, last.encode())).await;
        }
        let _ = writer.write_due(&core, now, true).await;
        let held = core.lock().expect("lock").test(&id).is_some();
        assert!(!held, "test {id} finished and left memory");
        last_id = id;
        if (t + 1) % 10 == 0 {
            println!(
                "  {} tests: RSS {:.1} MB, live heap {}, {:.0} s",
                t + 1,
                rss_mb(),
                mb(LIVE.load(Ordering::Relaxed) as f64),
                began.elapsed().as_secs_f64()
            );
        }
    }
    println!(
        "  after {tests} finished tests: RSS {:.1} MB (peak {:.1} MB), live heap {}   goal < 200 MB",
        rss_mb(),
        status_kb("self", "VmHWM") as f64 / 1024.0,
        mb(LIVE.load(Ordering::Relaxed) as f64)
    );
    let list = core.lock().expect("lock").list(&Default::default());
    println!(
        "  GET /tests (first page, {} lines): {} bytes",
        list.len(),
        serde_json::to_vec(&list).expect("json").len()
    );
    if !last_id.is_empty() {
        let view = writer
            .store()
            .load(&last_id)
            .await
            .expect("store")
            .expect("stored")
            .0
            .view();
        println!(
            "  GET /tests/{{id}} of a finished test (read from the store): {} bytes, {} seconds",
            serde_json::to_vec(&view).expect("json").len(),
            view.timeline.len()
        );
    }

    // The probes.
    let spec = json!({
        "target_url": "http://127.0.0.1:9/", "test_type": "avalanche", "duration_s": 10,
    });
    let start = start_test(&core, &writer, "probe-far", spec, now).await;
    let mut far = pool[0][0].clone();
    far.request = None;
    far.second = u32::MAX;
    let at = start + 1_000;
    let report = mem_report("probe-far", 0, 0, vec![far.clone()], false);
    deliver(&core, &writer, &(at, Topic::Metrics, report.encode())).await;
    let mut huge = far;
    huge.second = 1;
    huge.requests = u64::MAX;
    let report = mem_report("probe-far", 0, 1, vec![huge], false);
    deliver(&core, &writer, &(at, Topic::Metrics, report.encode())).await;
    let requests: Vec<Value> = (0..100)
        .map(|i| json!({"name": format!("r{i}"), "url": "http://127.0.0.1:9/"}))
        .collect();
    let spec = json!({"test_type": "avalanche", "duration_s": 1_800, "requests": requests});
    let start = start_test(&core, &writer, "probe-mix", spec, now).await;
    let buckets: Vec<BucketStats> = (0..1_500)
        .map(|second| {
            let mut b = pool[0][0].clone();
            b.second = second;
            b.request = Some(99);
            b
        })
        .collect();
    let report = mem_report("probe-mix", 0, 0, buckets, false);
    let payload = report.encode();
    let at = start + 1_600_000;
    deliver(&core, &writer, &(at, Topic::Metrics, payload.clone())).await;
    let (view_bytes, timeline) = {
        let c = core.lock().expect("lock");
        let v = c.view("probe-mix").expect("held");
        (
            serde_json::to_vec(&v).expect("json").len(),
            v.timeline.len(),
        )
    };
    println!(
        "  probes: a far-future second, counts near u64::MAX, a {} kB report of 1,500 seconds of a 100-request mix: {} rejected; the mix test's view {} bytes ({} seconds)",
        payload.len() / 1_000,
        core.lock().expect("lock").stats().rejected,
        view_bytes,
        timeline
    );
    println!(
        "  after the probes: RSS {:.1} MB (peak {:.1} MB), live heap {}   goal < 200 MB",
        rss_mb(),
        status_kb("self", "VmHWM") as f64 / 1024.0,
        mb(LIVE.load(Ordering::Relaxed) as f64)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Part 4: bytes written per second for a long test, in simulated time.
async fn snapshots(flags: &Flags) {
    let drivers: usize = flags.get("drivers", 10);
    let seconds: u32 = flags.get("seconds", 3_600);
    let writer = SnapshotWriter::new(TestStore::memory());
    let mut fleet = Fleet::new("bench-snapshots", drivers, 7);
    let (core, start) = started(&fleet, &writer).await;
    let before = writer.store().written();
    // What a whole rewrite would put every second: the document plus every chunk.
    let mut chunk_sizes: BTreeMap<u32, usize> = BTreeMap::new();
    let (mut whole_bytes, mut writes) = (0usize, 0u64);
    let (mut doc_first, mut doc_last) = (0usize, 0usize);
    let mut last_doc = Vec::new();
    let window = (seconds / 6).max(1);
    let began = Instant::now();
    for second in 0..seconds {
        for delivery in fleet.second(second, start) {
            for snap in deliver(&core, &writer, &delivery).await {
                for c in &snap.chunks {
                    chunk_sizes.insert(c.index, c.body.len());
                }
                whole_bytes += snap.doc.len() + chunk_sizes.values().sum::<usize>();
                writes += 1;
                if second < window {
                    doc_first = doc_first.max(snap.doc.len());
                }
                if second >= seconds - window {
                    doc_last = doc_last.max(snap.doc.len());
                }
                last_doc = snap.doc;
            }
        }
    }
    let after = writer.store().written();
    let (bytes, puts) = (after.bytes - before.bytes, after.puts - before.puts);
    let per_s = |b: f64| b / f64::from(seconds);
    println!(
        "\nsnapshots of a {seconds} s, {drivers}-driver test (simulated in {:.0} s): {writes} writes",
        began.elapsed().as_secs_f64()
    );
    println!(
        "  chunked (this version): {} written, {:.1} kB/s, {:.2} objects/s; largest document {} kB in the first {} s, {} kB in the last",
        mb(bytes as f64),
        per_s(bytes as f64) / 1e3,
        per_s(puts as f64),
        doc_first / 1000,
        window,
        doc_last / 1000
    );
    // What the last document is made of.
    let doc: Value = serde_json::from_slice(&last_doc).unwrap_or(Value::Null);
    let part = |key: &str| serde_json::to_vec(&doc[key]).map_or(0, |v| v.len()) / 1000;
    println!(
        "  the last document: {} kB, of it the drivers {} kB, the total {} kB, the tail \
         ({} s) {} kB, the manifest ({} chunks) {} kB",
        last_doc.len() / 1000,
        part("drivers"),
        part("total"),
        doc["timeline"].as_object().map_or(0, |t| t.len()),
        part("timeline"),
        doc["timeline_chunks"]["chunks"]
            .as_object()
            .map_or(0, |c| c.len()),
        part("timeline_chunks")
    );
    println!(
        "  whole rewrite every second (as before, same encoding): {} written, {:.1} kB/s ({:.0}× more); the last write {} kB",
        mb(whole_bytes as f64),
        per_s(whole_bytes as f64) / 1e3,
        whole_bytes as f64 / bytes as f64,
        (doc_last + chunk_sizes.values().sum::<usize>()) / 1000
    );
}

/// The `utime + stime` of a process, from `/proc/PID/stat`.
fn proc_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the whole line, 11 and 12 after `)`.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_micros((ticks(11) + ticks(12)) * 1_000_000 / hz)
}

/// A GET, or a POST of `body`; the answer as JSON (`null` when it is not).
fn http(agent: &ureq::Agent, url: &str, body: Option<&Value>) -> Value {
    let response = match body {
        Some(b) => agent
            .post(url)
            .header("content-type", "application/json")
            .send(b.to_string().as_bytes()),
        None => agent.get(url).call(),
    };
    match response {
        Ok(mut r) => serde_json::from_str(&r.body_mut().read_to_string().unwrap_or_default())
            .unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

/// Calls `f` every `every` until it answers; panics after `limit`.
fn wait_for<T>(
    what: &str,
    every: Duration,
    limit: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(every);
    }
}

fn release_bin(name: &str) -> PathBuf {
    // This bench runs from target/release/deps; the binaries are in target/release.
    let exe = std::env::current_exe().expect("own path");
    let dir = exe.parent().and_then(Path::parent).expect("target/release");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: `cargo build --release --bins` first (the script does)",
        path.display()
    );
    path
}

/// How often the bench looks while it waits for something quick.
const QUICK: Duration = Duration::from_millis(250);

/// Part 3, over Kafka: see the module docs.
fn kafka(flags: &Flags) {
    let brokers = flags.text("brokers").expect("--brokers HOST:PORT");
    let processes: usize = flags.get("processes", 5);
    let agents: usize = flags.get("agents", 200);
    let seconds: u64 = flags.get("seconds", 30);
    let rate: u64 = flags.get("rate", 2);
    let dir = flags
        .text("dir")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("loadwave-bench-kafka"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench dir");
    let drivers = processes * agents;
    let prefix = format!("bench{}.", std::process::id());
    let target = TargetServer::start(&release_bin("loadwave-target"), &[]);
    let port = loadwave_testkit::free_port();
    let api = format!("http://127.0.0.1:{port}");
    let mut orchestrator = Command::new(release_bin("loadwave-orchestrator"));
    orchestrator
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--brokers", &brokers, "--topic-prefix", &prefix])
        .args(["--driver-wait-ms", "120000", "--start-lead-ms", "3000"])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("RUST_LOG", "warn");
    let orchestrator = Proc::spawn_logged(&mut orchestrator, &dir.join("orchestrator.log"));
    let pid = orchestrator.id();
    let _drivers: Vec<Proc> = (0..processes)
        .map(|p| {
            let mut cmd = Command::new(release_bin("loadwave-driver"));
            cmd.args(["--brokers", &brokers, "--topic-prefix", &prefix])
                .args(["--driver-id", &format!("bench-{p}")])
                .args(["--agents", &agents.to_string()])
                .env("RUST_LOG", "warn");
            Proc::spawn_logged(&mut cmd, &dir.join(format!("driver-{p}.log")))
        })
        .collect();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into();
    println!(
        "\ncontroller over Kafka ({brokers}): {processes} driver processes × {agents} agents = \
         {drivers} drivers, Tsunami {rate} req/s per driver for {seconds} s against \
         loadwave-target; logs in {}",
        dir.display()
    );
    let t_up = Instant::now();
    wait_for(
        "the drivers to register",
        QUICK,
        Duration::from_secs(180),
        || {
            let list = http(&agent, &format!("{api}/drivers"), None);
            let idle = list
                .as_array()
                .map_or(0, |a| a.iter().filter(|d| d["state"] == "idle").count());
            (idle >= drivers).then_some(())
        },
    );
    println!(
        "  {drivers} drivers registered in {:.1} s",
        t_up.elapsed().as_secs_f64()
    );
    let spec = json!({
        "target_url": target.url("/ping"), "test_type": "tsunami", "drivers": drivers,
        "requests_per_driver": seconds * rate, "delay_ms": 1000.0 / rate as f64,
        "concurrency": 2, "timeout_ms": 5000,
    });
    let created = http(&agent, &format!("{api}/tests"), Some(&spec));
    let id = created["id"]
        .as_str()
        .unwrap_or_else(|| panic!("test not created: {created}"))
        .to_string();
    let view = |agent: &ureq::Agent| http(agent, &format!("{api}/tests/{id}"), None);
    let reports = |v: &Value| -> u64 {
        v["drivers"]
            .as_array()
            .map_or(0, |a| a.iter().filter_map(|d| d["reports"].as_u64()).sum())
    };
    let waiting = Instant::now();
    let mut said = 0;
    let running = wait_for("the test to start", QUICK, Duration::from_secs(180), || {
        let v = view(&agent);
        let waited = waiting.elapsed().as_secs();
        if waited >= said + 10 {
            said = waited;
            let mut states: BTreeMap<String, usize> = BTreeMap::new();
            for d in v["drivers"].as_array().into_iter().flatten() {
                *states
                    .entry(d["state"].as_str().unwrap_or("?").to_string())
                    .or_default() += 1;
            }
            println!("  … {waited} s: drivers {states:?}");
        }
        (v["status"] != "pending").then_some(v)
    });
    let (cpu0, reports0, t0) = (proc_cpu(pid), reports(&running), Instant::now());
    // Seldom while it runs: a view of a thousand drivers is itself work for the
    // orchestrator (every driver's percentiles), and it would count as the reports'.
    let done = wait_for(
        "the test to finish",
        Duration::from_secs(2),
        Duration::from_secs(seconds + 120),
        || {
            let v = view(&agent);
            (v["status"] != "pending" && v["status"] != "running").then_some(v)
        },
    );
    let (cpu1, reports1, elapsed) = (proc_cpu(pid), reports(&done), t0.elapsed());
    let folded = reports1.saturating_sub(reports0);
    let rss = status_kb(&pid.to_string(), "VmRSS");
    let requests = done["summary"]["requests"].as_u64().unwrap_or(0);
    println!(
        "  test {}: {} requests counted, the target saw {}; {} reports folded in {:.1} s",
        done["status"].as_str().unwrap_or("?"),
        requests,
        target.requests(),
        folded,
        elapsed.as_secs_f64()
    );
    println!(
        "  orchestrator CPU per report: {:.1} µs ({:.2} s over the test, heartbeats included; /proc/{pid}/stat)",
        (cpu1 - cpu0).as_secs_f64() * 1e6 / folded.max(1) as f64,
        (cpu1 - cpu0).as_secs_f64()
    );
    println!(
        "  orchestrator RSS at the end: {} MB (peak {} MB)",
        rss / 1024,
        status_kb(&pid.to_string(), "VmHWM") / 1024
    );
    drop(orchestrator);
}

fn main() {
    // `cargo bench` adds `--bench`; it is not one of ours.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let (mode, rest) = args
        .split_first()
        .map_or(("all", &[][..]), |(m, r)| (m.as_str(), r));
    let flags = Flags::parse(rest);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match mode {
        "in-process" => runtime.block_on(in_process(&flags)),
        "snapshots" => runtime.block_on(snapshots(&flags)),
        "kafka" => kafka(&flags),
        "memory" => runtime.block_on(memory(&flags)),
        "all" => {
            runtime.block_on(in_process(&flags));
            runtime.block_on(snapshots(&flags));
        }
        other => {
            eprintln!("unknown mode {other}: in-process, snapshots, memory, kafka or all");
            std::process::exit(2);
        }
    }
}
