//! Property tests on everything loadwave reads from outside: the message envelope,
//! histogram decoding, spec parsing and threshold parsing. Inputs are generated, and the
//! seed corpus (`tests/corpus/`, real and hostile examples) is mutated: bit flips,
//! truncations, inserted, removed and duplicated bytes, replaced histogram header fields.
//!
//! Failures are persisted to `proptest-regressions/props.txt` (kept in the repository)
//! and replayed first on every run. Run: `cargo test -p loadwave-proto --test props`.

mod common;

use std::io::{Read as _, Write as _};
use std::time::{Duration, Instant};

use base64::Engine as _;
use loadwave_proto::histogram::MAX_TRACKED_US;
use loadwave_proto::message::{MAX_HOST_LEN, MAX_ID_LEN, MAX_VERSION_LEN};
use loadwave_proto::{
    Activity, BucketStats, DecodeError, DriverHealth, DriverTotals, ErrorKind, Heartbeat,
    LatencyHistogram, Message, MetricsReport, RecordedCounts, Register, SendLag, TestConfig,
    TestSpec, Threshold, Tick, Trigger, TriggerAction,
};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::FileFailurePersistence;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Generous for a debug build on a busy machine; a decode that allocates or inflates what
/// a hostile header claims takes far longer (or aborts).
const SLOW: Duration = Duration::from_secs(2);

/// `cases` per property (modest, so the suite runs in seconds in a debug build), or
/// `PROPTEST_CASES` for a longer hunt.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(cases),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/props.txt",
        ))),
        ..ProptestConfig::default()
    }
}

/// Runs `f`, failing the case if it takes longer than [`SLOW`].
fn timed<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, TestCaseError> {
    let started = Instant::now();
    let out = f();
    let took = started.elapsed();
    prop_assert!(took < SLOW, "{what} took {took:?}");
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Mutations
// ---------------------------------------------------------------------------------------

/// One edit of a byte string; positions are fractions of its length so they fit any seed.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(Index, u8),
    Truncate(Index),
    Set(Index, u8),
    Insert(Index, Vec<u8>),
    Remove(Index, usize),
    Duplicate(Index, Index, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 0..8u8).prop_map(|(at, bit)| Mutation::Flip(at, bit)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(at, b)| Mutation::Set(at, b)),
        1 => (any::<Index>(), vec(any::<u8>(), 1..16)).prop_map(|(at, b)| Mutation::Insert(at, b)),
        1 => (any::<Index>(), 1..64usize).prop_map(|(at, n)| Mutation::Remove(at, n)),
        1 => (any::<Index>(), any::<Index>(), 1..64usize)
            .prop_map(|(from, to, n)| Mutation::Duplicate(from, to, n)),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let len = bytes.len();
    let at = |i: &Index| if len == 0 { 0 } else { i.index(len) };
    match m {
        Mutation::Flip(i, bit) if len > 0 => bytes[at(i)] ^= 1 << bit,
        Mutation::Truncate(i) => bytes.truncate(at(i)),
        Mutation::Set(i, b) if len > 0 => bytes[at(i)] = *b,
        Mutation::Insert(i, b) => {
            let p = at(i);
            bytes.splice(p..p, b.iter().copied());
        }
        Mutation::Remove(i, n) => {
            let p = at(i);
            bytes.drain(p..(p + n).min(len));
        }
        Mutation::Duplicate(from, to, n) if len > 0 => {
            let f = at(from);
            let piece = bytes[f..(f + n).min(len)].to_vec();
            let t = at(to);
            bytes.splice(t..t, piece);
        }
        _ => {}
    }
}

fn mutated(seed: &[u8], edits: &[Mutation]) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    edits.iter().for_each(|m| apply(&mut bytes, m));
    bytes
}

// ---------------------------------------------------------------------------------------
// Histograms
// ---------------------------------------------------------------------------------------

const V2_COOKIE: u32 = 0x1c84_9313;
const V2_COMPRESSED_COOKIE: u32 = 0x1c84_9314;

/// Counts as hdrhistogram decodes them, with no bounds: the reference for valid input
/// (what `RecordedCounts::from_base64` returned before issue 16).
fn reference_counts(text: &str) -> Vec<(u64, u64)> {
    let bytes = B64.decode(text).unwrap();
    let h: hdrhistogram::Histogram<u64> = hdrhistogram::serialization::Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .unwrap();
    h.iter_recorded()
        .map(|v| {
            (
                h.lowest_equivalent(v.value_iterated_to()),
                v.count_at_value(),
            )
        })
        .collect()
}

fn deflate(plain: &[u8]) -> Vec<u8> {
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(plain).unwrap();
    let body = z.finish().unwrap();
    let mut out = V2_COMPRESSED_COOKIE.to_be_bytes().to_vec();
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// The plain V2 bytes of a valid seed (inflated if deflated).
fn plain_of(bytes: &[u8]) -> Vec<u8> {
    if bytes[..4] == V2_COMPRESSED_COOKIE.to_be_bytes() {
        let mut out = Vec::new();
        flate2::read::ZlibDecoder::new(&bytes[8..])
            .read_to_end(&mut out)
            .unwrap();
        out
    } else {
        bytes.to_vec()
    }
}

/// A header field to overwrite: (offset, width in bytes).
fn header_field() -> impl Strategy<Value = (usize, usize)> {
    select(vec![(4, 4), (8, 4), (12, 4), (16, 8), (24, 8), (32, 8)])
}

/// Values that sit on or just past the header checks' edges, and arbitrary ones.
fn header_value() -> impl Strategy<Value = u64> {
    prop_oneof![
        select(vec![
            0,
            1,
            2,
            3,
            5,
            6,
            255,
            1_000_000,
            1_000_001,
            MAX_TRACKED_US,
            1 << 42,
            (1 << 42) + 1,
            u64::from(u32::MAX),
            u64::MAX,
            u64::MAX / 2,
            1f64.to_bits(),
            f64::NAN.to_bits(),
            1 << 18,
            (1 << 18) * 9 + 1,
        ]),
        any::<u64>(),
    ]
}

fn set_field(plain: &mut [u8], (at, width): (usize, usize), value: u64) {
    if plain.len() >= at + width {
        let be = value.to_be_bytes();
        plain[at..at + width].copy_from_slice(&be[8 - width..]);
    }
}

fn check_histogram_text(text: &str) -> Result<(), TestCaseError> {
    let direct = timed("RecordedCounts::from_base64", || {
        RecordedCounts::from_base64(text)
    })?;
    let full = timed("LatencyHistogram::from_base64", || {
        LatencyHistogram::from_base64(text)
    })?;
    if let (Ok(direct), Ok(full)) = (&direct, &full) {
        prop_assert_eq!(direct, &full.recorded());
    }
    Ok(())
}

/// A histogram of `values` (µs), as drivers record them.
fn histogram_of(values: &[u64]) -> LatencyHistogram {
    let mut h = LatencyHistogram::new();
    values.iter().for_each(|v| h.record_us(*v));
    h
}

fn latencies() -> impl Strategy<Value = Vec<u64>> {
    vec(
        prop_oneof![
            1..2_000u64,
            1..100_000u64,
            0..=MAX_TRACKED_US,
            (0..40u32).prop_map(|k| 1u64 << k),
            any::<u64>(),
        ],
        0..300,
    )
}

proptest! {
    #![proptest_config(config(256))]

    /// Histograms of every shape read back to the same counts as hdrhistogram's own
    /// decoder gave before the bounds, by both paths and from both encodings.
    #[test]
    fn valid_histograms_decode_to_todays_counts(values in latencies()) {
        let h = histogram_of(&values);
        for text in [h.to_base64().unwrap(), h.to_base64_uncompressed().unwrap()] {
            let direct = RecordedCounts::from_base64(&text).unwrap();
            prop_assert_eq!(direct.values(), &reference_counts(&text)[..]);
            prop_assert_eq!(&direct, &h.recorded());
            prop_assert_eq!(&LatencyHistogram::from_base64(&text).unwrap(), &h);
        }
    }

    /// Mutated seeds (valid and hostile alike) never panic, finish quickly, and when both
    /// paths accept one they agree.
    #[test]
    fn mutated_histograms_never_panic(
        seed in select(common::corpus("histogram")),
        edits in vec(mutation(), 1..4),
        on_text in any::<bool>(),
    ) {
        let text = if on_text {
            String::from_utf8_lossy(&mutated(seed.trimmed().as_bytes(), &edits)).into_owned()
        } else {
            let bytes = B64.decode(seed.trimmed()).unwrap();
            B64.encode(mutated(&bytes, &edits))
        };
        check_histogram_text(&text)?;
    }

    /// Replacing a header field of a valid histogram (inside the deflate stream for a
    /// deflated one) is refused or read consistently, never allocated blindly.
    #[test]
    fn header_fields_replaced(
        seed in select(common::seeds("histogram", "valid-")),
        field in header_field(),
        value in header_value(),
        edits in vec(mutation(), 0..2),
    ) {
        let bytes = B64.decode(seed.trimmed()).unwrap();
        let compressed = bytes[..4] == V2_COMPRESSED_COOKIE.to_be_bytes();
        let mut plain = plain_of(&bytes);
        set_field(&mut plain, field, value);
        let mut plain = mutated(&plain, &edits);
        if plain.len() >= 4 {
            plain[..4].copy_from_slice(&V2_COOKIE.to_be_bytes());
        }
        let encoded = if compressed { deflate(&plain) } else { plain };
        check_histogram_text(&B64.encode(encoded))?;
    }

    /// Arbitrary bytes behind either cookie (or none) never panic.
    #[test]
    fn arbitrary_histogram_bytes(
        cookie in select(vec![Some(V2_COOKIE), Some(V2_COMPRESSED_COOKIE), None]),
        rest in vec(any::<u8>(), 0..600),
    ) {
        let mut bytes = cookie.map(|c| c.to_be_bytes().to_vec()).unwrap_or_default();
        bytes.extend_from_slice(&rest);
        check_histogram_text(&B64.encode(&bytes))?;
        // And as text that is not base64 at all.
        check_histogram_text(&String::from_utf8_lossy(&rest))?;
    }
}

// ---------------------------------------------------------------------------------------
// The envelope
// ---------------------------------------------------------------------------------------

/// Ids: short printable text mostly, sometimes past the bound.
fn id() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "\\PC{0,40}",
        1 => "[a-z0-9-]{120,140}",
    ]
}

/// Finite floats with short exact decimals: serde_json (without its `float_roundtrip`
/// feature) may read a 17-digit float back one ulp off, which is no concern for driver
/// health figures but would make round-trip equality flaky.
fn finite() -> impl Strategy<Value = f64> {
    (-64_000_000i32..64_000_000).prop_map(|n| f64::from(n) / 64.0)
}

fn bucket() -> impl Strategy<Value = BucketStats> {
    (
        (any::<u32>(), proptest::option::of(0..120u32), latencies()),
        btree_map(100..1000u16, any::<u64>(), 0..5),
        btree_map(select(ErrorKind::ALL.to_vec()), any::<u64>(), 0..3),
        (any::<u64>(), any::<u64>(), any::<u64>()),
    )
        .prop_map(
            |((second, request, values), status_codes, error_kinds, (late, sum, busy))| {
                let h = histogram_of(&values);
                BucketStats {
                    second,
                    request,
                    requests: h.len(),
                    errors: h.len() / 3,
                    status_codes,
                    error_kinds,
                    late,
                    latency_sum_us: sum,
                    latency_min_us: h.min_us(),
                    latency_max_us: h.max_us(),
                    busy_us: busy,
                    histogram: h.to_base64().unwrap(),
                }
            },
        )
}

fn spec() -> impl Strategy<Value = TestSpec> {
    let specs: Vec<TestSpec> = common::seeds("spec", "valid-")
        .iter()
        .map(|s| TestSpec::from_json(&s.bytes).unwrap())
        .collect();
    select(specs)
}

fn message() -> impl Strategy<Value = Message> {
    let activity = select(vec![
        Activity::Idle,
        Activity::Configured,
        Activity::Running,
    ]);
    prop_oneof![
        (
            id(),
            "\\PC{0,70}",
            any::<u32>(),
            "\\PC{0,20}",
            proptest::option::of(id())
        )
            .prop_map(
                |(driver_id, host, pid, version, test_id)| Message::Register(Register {
                    driver_id,
                    host,
                    pid,
                    version,
                    test_id,
                })
            ),
        (
            id(),
            any::<u64>(),
            any::<u64>(),
            activity,
            proptest::option::of(id())
        )
            .prop_map(
                |(driver_id, seq, sent_at_ms, activity, test_id)| Message::Heartbeat(Heartbeat {
                    driver_id,
                    seq,
                    sent_at_ms,
                    activity,
                    test_id,
                })
            ),
        (id(), any::<u64>()).prop_map(|(orchestrator_id, sent_at_ms)| Message::Tick(Tick {
            orchestrator_id,
            sent_at_ms,
        })),
        (id(), proptest::option::of(any::<u64>())).prop_map(|(test_id, start)| {
            Message::Trigger(Trigger {
                test_id,
                action: start.map_or(TriggerAction::Stop, |start_at_ms| TriggerAction::Start {
                    start_at_ms,
                }),
            })
        }),
        (id(), id(), 0..1_200u32, spec()).prop_map(|(test_id, driver_id, driver_index, spec)| {
            Message::TestConfig(TestConfig {
                test_id,
                driver_id,
                driver_index,
                spec,
            })
        }),
        (
            (id(), id(), any::<u64>(), any::<bool>(), any::<bool>()),
            vec(bucket(), 0..4),
            (any::<u64>(), any::<u64>(), any::<u64>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of((any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>())),
            (finite(), any::<u32>(), finite(), finite(), any::<bool>()),
        )
            .prop_map(
                |(
                    (test_id, driver_id, seq, is_final, stopped),
                    buckets,
                    totals,
                    delay,
                    lag,
                    health,
                )| {
                    Message::Metrics(MetricsReport {
                        test_id,
                        driver_id,
                        seq,
                        is_final,
                        buckets,
                        totals: DriverTotals {
                            requests: totals.0,
                            errors: totals.1,
                        },
                        elapsed_ms: totals.2,
                        stopped,
                        start_delay_us: delay,
                        send_lag: lag.map(|(count, p50_us, p99_us, max_us)| SendLag {
                            count,
                            p50_us,
                            p99_us,
                            max_us,
                        }),
                        health: DriverHealth {
                            cpu_percent: health.0,
                            cores: health.1,
                            lag_ms_mean: health.2,
                            lag_ms_max: health.3,
                            saturated: health.4,
                        },
                    })
                },
            ),
    ]
}

/// Whether every length and position of `m` is within the documented bounds, computed
/// here independently of `check_bounds`.
fn within_bounds(m: &Message) -> bool {
    let id = |s: &str| s.len() <= MAX_ID_LEN;
    let opt = |s: &Option<String>| s.as_deref().is_none_or(id);
    match m {
        Message::Register(r) => {
            id(&r.driver_id)
                && r.host.len() <= MAX_HOST_LEN
                && r.version.len() <= MAX_VERSION_LEN
                && opt(&r.test_id)
        }
        Message::Heartbeat(h) => id(&h.driver_id) && opt(&h.test_id),
        Message::Tick(t) => id(&t.orchestrator_id),
        Message::Trigger(t) => id(&t.test_id),
        Message::TestConfig(c) => id(&c.test_id) && id(&c.driver_id) && c.driver_index < 1_000,
        Message::Metrics(r) => {
            id(&r.test_id)
                && id(&r.driver_id)
                && r.buckets.iter().all(|b| b.request.is_none_or(|i| i < 100))
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// Every message within the bounds round-trips; every other is refused with a bound
    /// that names a field.
    #[test]
    fn messages_round_trip(m in message()) {
        let decoded = Message::decode(&m.encode());
        if within_bounds(&m) {
            prop_assert_eq!(decoded, Ok(m));
        } else {
            prop_assert!(matches!(decoded, Err(DecodeError::Bound { .. })), "{:?}", decoded);
        }
    }

    /// Mutated envelopes (valid, semantic and hostile seeds) never panic and decode
    /// quickly; whatever decodes is within bounds and decodes again to itself.
    #[test]
    fn mutated_envelopes_never_panic(
        seed in select(common::corpus("envelope")),
        edits in vec(mutation(), 1..5),
    ) {
        let bytes = mutated(&seed.bytes, &edits);
        if let Ok(m) = timed("Message::decode", || Message::decode(&bytes))? {
            prop_assert_eq!(m.check_bounds(), Ok(()));
            prop_assert_eq!(Message::decode(&m.encode()), Ok(m));
        }
    }

    /// Arbitrary bytes, and JSON-like text inside a valid envelope prefix, never panic.
    #[test]
    fn arbitrary_envelopes_never_panic(
        raw in vec(any::<u8>(), 0..1024),
        body in "[\\[\\]{}\":,0-9a-z_ .\\-]{0,300}",
    ) {
        let _ = timed("Message::decode", || Message::decode(&raw))?;
        let text = format!(r#"{{"v":1,"body":{body}}}"#);
        let _ = timed("Message::decode", || Message::decode(text.as_bytes()))?;
        let typed = format!(r#"{{"v":1,"body":{{"type":"metrics",{body}}}}}"#);
        let _ = timed("Message::decode", || Message::decode(typed.as_bytes()))?;
    }
}

// ---------------------------------------------------------------------------------------
// Specs and thresholds
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(256))]

    /// Mutated specs never panic; whatever parses serializes and parses back equal.
    #[test]
    fn mutated_specs_never_panic(
        seed in select(common::corpus("spec")),
        edits in vec(mutation(), 1..5),
    ) {
        let bytes = mutated(&seed.bytes, &edits);
        if let Ok(spec) = timed("TestSpec::from_json", || TestSpec::from_json(&bytes))? {
            let again = TestSpec::from_json(&serde_json::to_vec(&spec).unwrap());
            prop_assert_eq!(again, Ok(spec));
        }
    }

    /// Arbitrary bytes and JSON objects of spec-like fields never panic.
    #[test]
    fn arbitrary_specs_never_panic(
        raw in vec(any::<u8>(), 0..512),
        fields in btree_map(
            select(vec![
                "target_url", "test_type", "drivers", "requests_per_driver", "duration_s",
                "concurrency", "delay_ms", "rate", "stages", "start_target", "timeout_ms",
                "method", "headers", "body", "thresholds", "abort_grace_s", "requests",
                "secret_headers", "show_body", "name",
            ]),
            prop_oneof![
                Just(serde_json::json!(null)),
                any::<i64>().prop_map(|n| serde_json::json!(n)),
                any::<u64>().prop_map(|n| serde_json::json!(n)),
                any::<f64>().prop_map(|n| serde_json::json!(n)),
                "\\PC{0,30}".prop_map(|s| serde_json::json!(s)),
                select(vec!["tsunami", "avalanche", "http://127.0.0.1:8080/", "p99 < 1ms"])
                    .prop_map(|s| serde_json::json!(s)),
                vec("\\PC{0,10}", 0..3).prop_map(|v| serde_json::json!(v)),
                vec((0.0..100.0f64, 0.0..1e4f64), 0..3).prop_map(|v| serde_json::json!(
                    v.iter().map(|(d, t)| serde_json::json!({"duration_s": d, "target": t})).collect::<Vec<_>>()
                )),
            ],
            0..8,
        ),
    ) {
        let _ = timed("TestSpec::from_json", || TestSpec::from_json(&raw))?;
        let object: serde_json::Map<String, serde_json::Value> =
            fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        let json = serde_json::to_vec(&object).unwrap();
        if let Ok(spec) = timed("TestSpec::from_json", || TestSpec::from_json(&json))? {
            let again = TestSpec::from_json(&serde_json::to_vec(&spec).unwrap());
            prop_assert_eq!(again, Ok(spec));
        }
    }
}

/// Thresholds assembled from parts, valid and not.
fn threshold_text() -> impl Strategy<Value = String> {
    (
        select(vec![
            "p99",
            "P99",
            "p999",
            "p99.9",
            "mean",
            "avg",
            "median",
            "max",
            "min",
            "error_rate",
            "rps",
            "requests",
            "errors",
            "p98",
            "",
            "{",
        ]),
        proptest::option::of("\\PC{0,8}"),
        select(vec!["<", "<=", ">", ">=", "=", "=<", " < ", "<<"]),
        prop_oneof!["[0-9]{0,25}(\\.[0-9]{0,5})?", "\\PC{0,6}"],
        select(vec!["", "ms", "us", "µs", "s", "%", "min", "MS", " ms"]),
        select(vec!["", " abort", " ABORT", "abort", " abort abort", "  "]),
    )
        .prop_map(|(metric, tag, op, number, unit, abort)| {
            let tag = tag.map(|t| format!("{{{t}}}")).unwrap_or_default();
            format!("{metric}{tag} {op} {number}{unit}{abort}")
        })
}

fn check_threshold(text: &str) -> Result<(), TestCaseError> {
    if let Ok(t) = Threshold::parse(text) {
        // Display gives the text back (trimmed), which parses to the same threshold.
        let shown = t.to_string();
        prop_assert_eq!(&shown, text.trim());
        prop_assert_eq!(Threshold::parse(&shown), Ok(t.clone()));
        let json = serde_json::to_string(&t).unwrap();
        prop_assert_eq!(serde_json::from_str::<Threshold>(&json).unwrap(), t);
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    /// Thresholds from parts, arbitrary text and mutated seeds never panic, and those that
    /// parse round-trip through Display and JSON.
    #[test]
    fn thresholds_never_panic_and_round_trip(
        built in threshold_text(),
        arbitrary in "\\PC{0,40}",
        seed in select(
            common::lines("threshold", "valid.txt")
                .into_iter()
                .chain(common::lines("threshold", "invalid.txt"))
                .collect::<Vec<_>>()
        ),
        edits in vec(mutation(), 0..4),
    ) {
        check_threshold(&built)?;
        check_threshold(&arbitrary)?;
        let mutated = String::from_utf8_lossy(&mutated(seed.as_bytes(), &edits)).into_owned();
        check_threshold(&mutated)?;
    }
}

/// The seeds say what they are: valid ones parse, invalid ones are errors.
#[test]
fn seed_specs_and_thresholds_are_what_their_names_say() {
    for seed in common::corpus("spec") {
        let parsed = TestSpec::from_json(&seed.bytes);
        assert_eq!(
            parsed.is_ok(),
            seed.name.starts_with("valid-"),
            "{}: {parsed:?}",
            seed.name
        );
    }
    for line in common::lines("threshold", "valid.txt") {
        let t = Threshold::parse(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert_eq!(t.to_string(), line.trim());
    }
    for line in common::lines("threshold", "invalid.txt") {
        assert!(Threshold::parse(&line).is_err(), "{line}");
    }
    // The histogram seeds: valid ones decode to hdrhistogram's counts.
    for seed in common::seeds("histogram", "valid-") {
        let counts = RecordedCounts::from_base64(seed.trimmed()).unwrap();
        assert_eq!(
            counts.values(),
            &reference_counts(seed.trimmed())[..],
            "{}",
            seed.name
        );
    }
}
