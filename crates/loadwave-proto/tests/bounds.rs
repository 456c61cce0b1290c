//! Issue 16's probes at the wire: every hostile input is refused (or stops at its cap)
//! before it costs memory, measured with a counting allocator; today's legitimate messages
//! still pass, with margin.
//!
//! Run: `cargo test -p loadwave-proto --test bounds`.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, Instant};

use loadwave_proto::message::{
    MAX_BUCKET_HISTOGRAM_LEN, MAX_BUCKETS_PER_REPORT, MAX_ENVELOPE_BYTES,
};
use loadwave_proto::{DecodeError, HistogramError, LatencyHistogram, Message, RecordedCounts};

/// Counts the bytes each thread has allocated and not freed, and their peak, so a test
/// sees what one call costs on its own thread whatever other tests run alongside.
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn account(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is forwarded to the system allocator unchanged; the bookkeeping
// touches only const-initialized thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            account(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            account(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        account(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            account(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// What `f` cost on this thread: the peak of its allocations above what was live before,
/// what it left allocated (the thread-local buffers it kept), and how long it took.
#[derive(Debug)]
struct Cost {
    peak: usize,
    kept: isize,
    took: Duration,
}

fn cost<T>(f: impl FnOnce() -> T) -> (T, Cost) {
    let before = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(before));
    let started = Instant::now();
    let out = f();
    let took = started.elapsed();
    let peak = (PEAK.with(Cell::get) - before) as usize;
    // `out` is still alive: what it holds counts as kept, so results are dropped first
    // by callers that measure only buffers.
    let kept = LIVE.with(Cell::get) - before;
    (out, Cost { peak, kept, took })
}

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

fn header_field(result: Result<impl std::fmt::Debug, HistogramError>) -> &'static str {
    match result {
        Err(HistogramError::Header { field, .. }) => field,
        other => panic!("expected a header error, got {other:?}"),
    }
}

/// The issue's 528-byte report histogram declaring a 4 GiB payload: three of them took
/// the orchestrator from 15 MB to 4 GB through hdrhistogram's Deserializer.
#[test]
fn a_4_gib_payload_header_is_refused_before_allocating() {
    for seed in common::seeds("histogram", "hostile-4gib-payload") {
        let text = seed.trimmed();
        let (field, c) = cost(|| header_field(RecordedCounts::from_base64(text)));
        assert_eq!(field, "payload length", "{}", seed.name);
        assert!(c.peak < 16 * KIB, "{}: {c:?}", seed.name);
        let (field, c) = cost(|| header_field(LatencyHistogram::from_base64(text)));
        assert_eq!(field, "payload length", "{}", seed.name);
        assert!(c.peak < 16 * KIB, "{}: {c:?}", seed.name);
    }
}

/// Headers whose range or precision would make hdrhistogram allocate megabytes (or fail
/// deep inside it) are refused on their own, naming the field.
#[test]
fn absurd_header_fields_are_refused_naming_them() {
    for (name, expected) in [
        ("hostile-huge-highest.b64", "highest trackable value"),
        ("hostile-absurd-digits.b64", "significant digits"),
        ("hostile-zero-lowest.b64", "lowest discernible value"),
        ("hostile-huge-lowest.b64", "lowest discernible value"),
        ("hostile-compressed-length.b64", "compressed length"),
    ] {
        let seed = common::seeds("histogram", name).remove(0);
        let text = seed.trimmed();
        for decode in [
            |t: &str| RecordedCounts::from_base64(t).map(drop),
            |t: &str| LatencyHistogram::from_base64(t).map(drop),
        ] {
            let (field, c) = cost(|| header_field(decode(text)));
            assert_eq!(field, expected, "{name}");
            assert!(c.peak < 16 * KIB, "{name}: {c:?}");
        }
    }
}

/// 64 MiB of zero counts deflated into 65 kB: inflation stops at the cap the header
/// gives, whatever the header claims, and the per-thread buffer is not left at its peak
/// (one 1 MB message left 860 MB resident).
#[test]
fn deflate_bombs_stop_at_the_cap_and_leave_nothing_behind() {
    for seed in common::seeds("histogram", "hostile-deflate-bomb") {
        let text = seed.trimmed();
        for decode in [
            |t: &str| RecordedCounts::from_base64(t).map(drop),
            |t: &str| LatencyHistogram::from_base64(t).map(drop),
        ] {
            let (field, c) = cost(|| header_field(decode(text)));
            assert_eq!(field, "payload length", "{}", seed.name);
            // The decoded text (65 kB) and zlib's state; never the 64 MiB.
            assert!(c.peak < MIB, "{}: {c:?}", seed.name);
            assert!(c.kept < 64 * KIB as isize, "{}: {c:?}", seed.name);
            assert!(c.took < Duration::from_secs(2), "{}: {c:?}", seed.name);
        }
    }
}

/// A legitimate histogram that is unusually large for the per-thread inflate buffer (a
/// five-digit one from another implementation) decodes, and the buffer it grew is
/// dropped afterwards rather than kept for the thread's life.
#[test]
fn an_outlier_does_not_pin_the_inflate_buffer() {
    use base64::Engine as _;
    let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 100_000, 5).unwrap();
    for v in 1..100_000u64 {
        h.record_n(v, v * 7_919 % 1_000_003).unwrap();
    }
    let mut buf = Vec::new();
    hdrhistogram::serialization::Serializer::serialize(
        &mut hdrhistogram::serialization::V2DeflateSerializer::new(),
        &h,
        &mut buf,
    )
    .unwrap();
    let text = base64::engine::general_purpose::STANDARD.encode(&buf);
    let (counts, c) = cost(|| RecordedCounts::from_base64(&text).map(|c| c.values().len()));
    assert_eq!(counts.unwrap(), h.iter_recorded().count());
    assert!(c.peak > 256 * KIB, "the case is an outlier: {c:?}");
    assert!(c.kept < 64 * KIB as isize, "{c:?}");
}

/// Too long a text is refused before base64 decoding it.
#[test]
fn histogram_text_length_is_bounded() {
    let text = "A".repeat(loadwave_proto::histogram::MAX_BASE64_LEN + 4);
    let (result, c) = cost(|| RecordedCounts::from_base64(&text).map(drop));
    assert!(
        matches!(result, Err(HistogramError::TooLong { .. })),
        "{result:?}"
    );
    assert!(c.peak < KIB, "{c:?}");
}

fn bound_field(result: Result<Message, DecodeError>) -> &'static str {
    match result {
        Err(DecodeError::Bound { field, .. }) => field,
        other => panic!("expected a bound error, got {other:?}"),
    }
}

/// Oversized strings, counts and positions in every kind of message are refused by
/// `Message::decode`, naming the field (the file name after `hostile-`).
#[test]
fn oversized_fields_are_refused_naming_the_field() {
    for seed in common::seeds("envelope", "hostile-") {
        let expected = seed
            .name
            .strip_prefix("hostile-")
            .and_then(|n| n.strip_suffix(".json"))
            .unwrap();
        assert_eq!(bound_field(Message::decode(&seed.bytes)), expected);
    }
}

/// The three oversized inputs too large to keep in the corpus.
#[test]
fn oversized_envelopes_are_refused() {
    // Over MAX_ENVELOPE_BYTES: refused before parsing, so it costs nothing.
    let heartbeat = common::seeds("envelope", "valid-heartbeat").remove(0);
    let mut padded = heartbeat.bytes.clone();
    padded.splice(1..1, std::iter::repeat_n(b' ', MAX_ENVELOPE_BYTES));
    let (field, c) = cost(|| bound_field(Message::decode(&padded)));
    assert_eq!(field, "envelope");
    assert!(c.peak < KIB, "{c:?}");
    // Whitespace alone does not count against the fields: under the bound it decodes.
    let mut shorter = heartbeat.bytes.clone();
    shorter.splice(
        1..1,
        std::iter::repeat_n(b' ', MAX_ENVELOPE_BYTES - shorter.len()),
    );
    assert!(Message::decode(&shorter).is_ok());

    // More buckets than a report may hold, each as small as JSON allows.
    let small = r#"{"second":0,"requests":0,"errors":0,"latency_sum_us":0,"latency_min_us":0,"latency_max_us":0,"histogram":""}"#;
    let report = |n: usize, histogram: &str| {
        let bucket = small.replace(
            r#""histogram":"""#,
            &format!(r#""histogram":"{histogram}""#),
        );
        format!(
            r#"{{"v":1,"body":{{"type":"metrics","test_id":"t1","driver_id":"d1","seq":0,"final":false,"buckets":[{}],"totals":{{"requests":0,"errors":0}},"elapsed_ms":0,"health":{{"cpu_percent":0.0,"cores":1,"lag_ms_mean":0.0,"lag_ms_max":0.0,"saturated":false}}}}}}"#,
            vec![bucket; n].join(",")
        )
    };
    let too_many = report(MAX_BUCKETS_PER_REPORT + 1, "");
    assert!(too_many.len() < MAX_ENVELOPE_BYTES);
    assert_eq!(
        bound_field(Message::decode(too_many.as_bytes())),
        "metrics.buckets"
    );
    assert!(Message::decode(report(MAX_BUCKETS_PER_REPORT, "").as_bytes()).is_ok());

    // A histogram string longer than any a driver can write.
    let long = report(1, &"A".repeat(MAX_BUCKET_HISTOGRAM_LEN + 1));
    assert_eq!(
        bound_field(Message::decode(long.as_bytes())),
        "metrics.buckets.histogram"
    );
}

/// Today's messages (every valid seed, including two seconds of the largest mix) decode
/// and round-trip, with room to spare under every bound.
#[test]
fn todays_messages_fit_with_margin() {
    for seed in common::seeds("envelope", "valid-") {
        let message = Message::decode(&seed.bytes).unwrap_or_else(|e| panic!("{}: {e}", seed.name));
        assert_eq!(Message::decode(&message.encode()).unwrap(), message);
        assert!(seed.bytes.len() * 8 < MAX_ENVELOPE_BYTES, "{}", seed.name);
        if let Message::Metrics(report) = &message {
            assert!(report.buckets.len() * 25 <= MAX_BUCKETS_PER_REPORT);
            for bucket in &report.buckets {
                assert!(bucket.histogram.len() * 100 < MAX_BUCKET_HISTOGRAM_LEN);
                RecordedCounts::from_base64(&bucket.histogram).unwrap();
            }
        }
    }
}

/// A report that only the controller can judge (a second far past the test's end) passes
/// the wire; one carrying a hostile histogram passes the wire too (its text is short) and
/// the histogram decoder refuses it, cheaply.
#[test]
fn semantic_probes_pass_the_wire_and_their_histograms_are_bounded() {
    for seed in common::seeds("envelope", "semantic-") {
        let Message::Metrics(report) = Message::decode(&seed.bytes).unwrap() else {
            panic!("{}: not a report", seed.name);
        };
        let hostile = seed.name.contains("histogram") || seed.name.contains("bomb");
        for bucket in &report.buckets {
            let (result, c) = cost(|| RecordedCounts::from_base64(&bucket.histogram).map(drop));
            assert_eq!(result.is_err(), hostile, "{}: {result:?}", seed.name);
            assert!(
                c.peak < MIB && c.kept < 64 * KIB as isize,
                "{}: {c:?}",
                seed.name
            );
        }
        if seed.name.contains("far-future") {
            assert_eq!(report.buckets[0].second, u32::MAX);
        }
    }
}
