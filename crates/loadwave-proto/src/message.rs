//! Messages between the orchestrator and the drivers, and their versioned JSON envelope.
//!
//! The five topics are the original system's. Drivers publish on `register`, `heartbeat`
//! and `metrics`; the orchestrator publishes on `test_config` and `trigger`. Every message
//! is keyed by its test id (or, for an idle driver, its driver id) so one test's events
//! keep their order on a partitioned bus. Every driver report carries a sequence number so
//! the orchestrator can drop re-deliveries.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::spec::{MAX_DRIVERS, MAX_MIX, TestSpec};

/// The envelope version this build writes and reads.
pub const PROTOCOL_VERSION: u32 = 1;

/// The largest envelope [`Message::decode`] reads, in bytes: 1 MiB. A Kafka producer
/// refuses messages over its default `message.max.bytes` (1,000,000 bytes) anyway, so
/// nothing deliverable is lost, and parsing is bounded before serde allocates anything:
/// what a parsed message holds is a small multiple of its text.
pub const MAX_ENVELOPE_BYTES: usize = 1 << 20;
/// The longest id (driver, test or orchestrator), in bytes. Ids loadwave makes are 12–32
/// characters (tests) and at most 80 (a driver's `{host}-{pid}-{6 hex}`, with Linux's
/// 64-byte host names); ECS drivers' `task-{32 hex}` is 37.
pub const MAX_ID_LEN: usize = 128;
/// The longest host name a driver may register: 255 bytes, the longest DNS name (253)
/// with room; Linux host names stop at 64.
pub const MAX_HOST_LEN: usize = 255;
/// The longest version string a driver may register (ours are `0.1.0`-like, or a git
/// describe of about 30 characters).
pub const MAX_VERSION_LEN: usize = 64;
/// The most buckets one report may carry. A report holds one bucket per second since the
/// previous report per request of the mix, so normally one or two seconds × at most
/// [`MAX_MIX`] (100) requests, 200 buckets; the bound leaves 60 seconds of backlog (a
/// broker outage) for the largest mix. A driver's bucket, histogram included, takes about
/// 240 bytes or more, so Kafka's 1 MB message limit stops a report near 4,200 buckets
/// first; only hand-made buckets with no maps and no histogram (about 110 bytes) reach
/// this bound within [`MAX_ENVELOPE_BYTES`].
pub const MAX_BUCKETS_PER_REPORT: usize = 6_000;
/// The most distinct status codes one bucket may carry: 900, every three-digit code
/// (100–999) an HTTP response can have, so no real bucket comes near it.
pub const MAX_STATUS_CODES: usize = 900;
/// The longest histogram text of one bucket, in bytes: 384 KiB. The largest encoding a
/// driver can produce (a histogram of this crate's shape with every one of its 23,552
/// counts nine bytes wide) is 212 kB of V2, 282,680 bytes of base64 even where deflate
/// saves nothing; real ones are a few hundred bytes to a few kilobytes.
pub const MAX_BUCKET_HISTOGRAM_LEN: usize = 384 * 1024;

/// The five topics of the original system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Topic {
    /// Drivers announce themselves, and confirm a test configuration.
    Register,
    /// The orchestrator assigns a test to a driver.
    TestConfig,
    /// The orchestrator starts (at a common instant) or stops a test.
    Trigger,
    /// Drivers stream interval reports and a final one.
    Metrics,
    /// Drivers say they are alive, every second.
    Heartbeat,
}

impl Topic {
    /// Every topic, in a fixed order.
    pub const ALL: [Topic; 5] = [
        Topic::Register,
        Topic::TestConfig,
        Topic::Trigger,
        Topic::Metrics,
        Topic::Heartbeat,
    ];

    /// The topic's name (before any prefix).
    pub fn name(self) -> &'static str {
        match self {
            Topic::Register => "register",
            Topic::TestConfig => "test_config",
            Topic::Trigger => "trigger",
            Topic::Metrics => "metrics",
            Topic::Heartbeat => "heartbeat",
        }
    }
}

/// A driver announcing itself (`test_id` empty) or confirming that it holds the
/// configuration of a test and is ready for its trigger (`test_id` set).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Register {
    /// The driver's unique id.
    pub driver_id: String,
    /// Host name or address, for people reading `GET /drivers`.
    pub host: String,
    /// Process id on that host.
    pub pid: u32,
    /// loadwave version of the driver.
    pub version: String,
    /// Set when the driver confirms a test configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_id: Option<String>,
}

/// What a driver is doing when it sends a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activity {
    /// Waiting for a test.
    Idle,
    /// Holding a configuration, waiting for the trigger.
    Configured,
    /// Sending load.
    Running,
}

/// A driver's sign of life, sent every second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The driver's id.
    pub driver_id: String,
    /// Increases by one per heartbeat of this driver process.
    pub seq: u64,
    /// Wall clock at sending, ms since the epoch.
    pub sent_at_ms: u64,
    /// What the driver is doing.
    pub activity: Activity,
    /// The test it is configured for or running, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_id: Option<String>,
}

/// The orchestrator's own mark on the `heartbeat` topic, once a second.
///
/// Reading ticks back keeps the orchestrator's bus clock moving when drivers are silent,
/// so a driver that died alone is found lost. While the broker is away nothing is read,
/// ticks included, so the clock stops and nobody's silence counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tick {
    /// The orchestrator instance.
    pub orchestrator_id: String,
    /// Wall clock at sending, ms since the epoch.
    pub sent_at_ms: u64,
}

/// The orchestrator assigning a test to one driver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestConfig {
    /// The test.
    pub test_id: String,
    /// The driver that should run it.
    pub driver_id: String,
    /// The driver's position among the test's drivers (0-based).
    pub driver_index: u32,
    /// What to run.
    pub spec: TestSpec,
}

/// Start or stop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum TriggerAction {
    /// Every driver starts at this wall-clock instant, ms since the epoch.
    Start {
        /// The common start instant.
        start_at_ms: u64,
    },
    /// Stop sending and send a final report.
    Stop,
}

/// The orchestrator starting or stopping a test on all its drivers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trigger {
    /// The test.
    pub test_id: String,
    /// What to do.
    #[serde(flatten)]
    pub action: TriggerAction,
}

/// Why a request produced no HTTP response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The TCP connection could not be made (refused, unreachable, DNS).
    Connect,
    /// No complete response within `timeout_ms`.
    Timeout,
    /// The connection was reset or closed mid-request.
    Reset,
    /// The TLS handshake failed.
    Tls,
    /// Anything else (a malformed response, for instance).
    Other,
}

impl ErrorKind {
    /// Every kind, in a fixed order.
    pub const ALL: [ErrorKind; 5] = [
        ErrorKind::Connect,
        ErrorKind::Timeout,
        ErrorKind::Reset,
        ErrorKind::Tls,
        ErrorKind::Other,
    ];

    /// The kind's snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Reset => "reset",
            ErrorKind::Tls => "tls",
            ErrorKind::Other => "other",
        }
    }

    /// Position in [`ErrorKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// What one driver saw of the requests that completed within one second of the test.
///
/// Second `n` covers `[start + n s, start + (n+1) s)`, where `start` is the common start
/// instant, so buckets of different drivers with the same `second` describe the same
/// wall-clock second and merge into the timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BucketStats {
    /// Seconds since the common start instant.
    pub second: u32,
    /// The request of the spec's mix these figures are about (its position in
    /// `requests`); absent for a spec without a mix. A second's figures come in one
    /// bucket per request of the mix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<u32>,
    /// Requests completed (with a response or an error).
    pub requests: u64,
    /// Requests that failed: transport errors plus responses with status ≥ 400.
    pub errors: u64,
    /// Responses by status code.
    #[serde(default, deserialize_with = "status_codes")]
    pub status_codes: BTreeMap<u16, u64>,
    /// Transport errors by kind.
    #[serde(default)]
    pub error_kinds: BTreeMap<ErrorKind, u64>,
    /// Tsunami: requests that no connection was free for at their due time.
    #[serde(default)]
    pub late: u64,
    /// Sum of the exact latencies of the responses, µs (for an exact mean).
    pub latency_sum_us: u64,
    /// Exact smallest latency, µs (0 when no response).
    pub latency_min_us: u64,
    /// Exact largest latency, µs.
    pub latency_max_us: u64,
    /// Time the completed requests were in flight, µs, from send to completion (errors
    /// included): divided by the second's length it is the concurrency achieved.
    #[serde(default)]
    pub busy_us: u64,
    /// Every response latency, V2 deflate histogram in base64.
    pub histogram: String,
}

/// JSON object keys are strings; inside an internally tagged enum serde hands them over
/// as strings even where a number is expected, so status codes are parsed here.
fn status_codes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<u16, u64>, D::Error> {
    let raw = BTreeMap::<String, u64>::deserialize(d)?;
    raw.into_iter()
        .map(|(k, v)| {
            k.parse::<u16>()
                .map(|code| (code, v))
                .map_err(|_| serde::de::Error::custom(format!("`{k}` is not a status code")))
        })
        .collect()
}

/// A driver's view of its own health during the last second.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DriverHealth {
    /// Process CPU use, percent of one core.
    pub cpu_percent: f64,
    /// Cores the process may use.
    pub cores: u32,
    /// Mean scheduling lag of a 10 ms ticker, ms.
    pub lag_ms_mean: f64,
    /// Largest scheduling lag seen, ms.
    pub lag_ms_max: f64,
    /// True when the driver could not keep up (CPU near its limit or the scheduler
    /// lagging); its numbers then understate what the target could take.
    pub saturated: bool,
}

/// How precisely a driver sent its paced (open-model) requests: the time from each
/// request's due time to its send, for requests that had a free connection at their due
/// time (the others are queued, and counted `late`). Cumulative since the start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SendLag {
    /// Requests measured.
    pub count: u64,
    /// Median lag, µs.
    pub p50_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
    /// Largest lag, µs.
    pub max_us: u64,
}

/// Cumulative counts of one driver, carried by every report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DriverTotals {
    /// Requests completed so far.
    pub requests: u64,
    /// Errors so far.
    pub errors: u64,
}

/// A driver's periodic (every second) or final report for a test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsReport {
    /// The test.
    pub test_id: String,
    /// The reporting driver.
    pub driver_id: String,
    /// 0, 1, 2, … per driver and test; a report with a seen sequence number is a duplicate.
    pub seq: u64,
    /// The last report of this driver for this test.
    #[serde(rename = "final")]
    pub is_final: bool,
    /// Requests completed since the previous report, by the second they completed in.
    pub buckets: Vec<BucketStats>,
    /// Counts so far, including this report.
    pub totals: DriverTotals,
    /// Time from the start instant to the last completed request so far, ms.
    pub elapsed_ms: u64,
    /// Set on a final report when the driver was stopped before sending everything.
    #[serde(default)]
    pub stopped: bool,
    /// How long after the common start instant the driver's first request went out, µs
    /// (by the driver's clock); the spread across drivers is the test's start skew.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_delay_us: Option<u64>,
    /// Open model only: the driver's send lag so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_lag: Option<SendLag>,
    /// Health over the last second.
    pub health: DriverHealth,
}

/// Everything that travels on the bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// On `register`.
    Register(Register),
    /// On `heartbeat`.
    Heartbeat(Heartbeat),
    /// On `test_config`.
    TestConfig(TestConfig),
    /// On `trigger`.
    Trigger(Trigger),
    /// On `metrics`.
    Metrics(MetricsReport),
    /// On `heartbeat`, from the orchestrator.
    Tick(Tick),
}

impl Message {
    /// The topic this message travels on.
    pub fn topic(&self) -> Topic {
        match self {
            Message::Register(_) => Topic::Register,
            Message::Heartbeat(_) => Topic::Heartbeat,
            Message::TestConfig(_) => Topic::TestConfig,
            Message::Trigger(_) => Topic::Trigger,
            Message::Metrics(_) => Topic::Metrics,
            Message::Tick(_) => Topic::Heartbeat,
        }
    }

    /// The partitioning key: the test id, or the driver id for messages outside a test.
    pub fn key(&self) -> &str {
        match self {
            Message::Register(r) => r.test_id.as_deref().unwrap_or(&r.driver_id),
            Message::Heartbeat(h) => h.test_id.as_deref().unwrap_or(&h.driver_id),
            Message::TestConfig(c) => &c.test_id,
            Message::Trigger(t) => &t.test_id,
            Message::Metrics(m) => &m.test_id,
            Message::Tick(t) => &t.orchestrator_id,
        }
    }

    /// Encodes the message in the current envelope.
    pub fn encode(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Out<'a> {
            v: u32,
            body: &'a Message,
        }
        serde_json::to_vec(&Out {
            v: PROTOCOL_VERSION,
            body: self,
        })
        .expect("messages always serialize")
    }

    /// Decodes an envelope, rejecting other versions, malformed bodies, and messages that
    /// break a size bound ([`Message::check_bounds`]). An envelope over
    /// [`MAX_ENVELOPE_BYTES`] is refused before it is parsed, so every consumer (the
    /// orchestrator, the Lambda controller, the drivers) spends at most a small multiple
    /// of that on any one message.
    pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
        #[derive(Deserialize)]
        struct In {
            v: u32,
            body: Message,
        }
        if bytes.len() > MAX_ENVELOPE_BYTES {
            return Err(DecodeError::Bound {
                field: "envelope",
                limit: MAX_ENVELOPE_BYTES,
                actual: bytes.len(),
            });
        }
        // One pass for what this build reads (every message a controller folds goes
        // through here); anything else is read again to say what is wrong with it.
        if let Ok(envelope) = serde_json::from_slice::<In>(bytes)
            && envelope.v == PROTOCOL_VERSION
        {
            envelope.body.check_bounds()?;
            return Ok(envelope.body);
        }
        // The version is read first, so a newer envelope is reported as such rather than
        // as a body that does not parse.
        #[derive(Deserialize)]
        struct Version {
            v: u32,
        }
        let version: Version =
            serde_json::from_slice(bytes).map_err(|e| DecodeError::Envelope(e.to_string()))?;
        if version.v != PROTOCOL_VERSION {
            return Err(DecodeError::Version(version.v));
        }
        let body = serde_json::from_slice::<In>(bytes)
            .map(|i| i.body)
            .map_err(|e| DecodeError::Body(e.to_string()))?;
        body.check_bounds()?;
        Ok(body)
    }

    /// Checks every length and count the message carries against the protocol's bounds
    /// (the `MAX_*` constants of this module, plus [`MAX_DRIVERS`] and [`MAX_MIX`] for
    /// positions): the first one broken is named. [`Message::decode`] calls it; values
    /// that depend on a test's plan (seconds, sequence numbers) are the controller's to
    /// check.
    pub fn check_bounds(&self) -> Result<(), DecodeError> {
        match self {
            Message::Register(r) => {
                bound("register.driver_id", r.driver_id.len(), MAX_ID_LEN)?;
                bound("register.host", r.host.len(), MAX_HOST_LEN)?;
                bound("register.version", r.version.len(), MAX_VERSION_LEN)?;
                bound_opt("register.test_id", r.test_id.as_deref(), MAX_ID_LEN)
            }
            Message::Heartbeat(h) => {
                bound("heartbeat.driver_id", h.driver_id.len(), MAX_ID_LEN)?;
                bound_opt("heartbeat.test_id", h.test_id.as_deref(), MAX_ID_LEN)
            }
            Message::TestConfig(c) => {
                bound("test_config.test_id", c.test_id.len(), MAX_ID_LEN)?;
                bound("test_config.driver_id", c.driver_id.len(), MAX_ID_LEN)?;
                bound(
                    "test_config.driver_index",
                    c.driver_index as usize,
                    MAX_DRIVERS as usize - 1,
                )
            }
            Message::Trigger(t) => bound("trigger.test_id", t.test_id.len(), MAX_ID_LEN),
            Message::Tick(t) => bound("tick.orchestrator_id", t.orchestrator_id.len(), MAX_ID_LEN),
            Message::Metrics(m) => {
                bound("metrics.test_id", m.test_id.len(), MAX_ID_LEN)?;
                bound("metrics.driver_id", m.driver_id.len(), MAX_ID_LEN)?;
                bound("metrics.buckets", m.buckets.len(), MAX_BUCKETS_PER_REPORT)?;
                for b in &m.buckets {
                    if let Some(request) = b.request {
                        bound("metrics.buckets.request", request as usize, MAX_MIX - 1)?;
                    }
                    bound(
                        "metrics.buckets.status_codes",
                        b.status_codes.len(),
                        MAX_STATUS_CODES,
                    )?;
                    bound(
                        "metrics.buckets.histogram",
                        b.histogram.len(),
                        MAX_BUCKET_HISTOGRAM_LEN,
                    )?;
                }
                Ok(())
            }
        }
    }
}

/// `Ok` when `actual` is at most `limit`, else the [`DecodeError::Bound`] naming `field`.
fn bound(field: &'static str, actual: usize, limit: usize) -> Result<(), DecodeError> {
    if actual > limit {
        return Err(DecodeError::Bound {
            field,
            limit,
            actual,
        });
    }
    Ok(())
}

/// [`bound`] on the length of an optional string.
fn bound_opt(field: &'static str, text: Option<&str>, limit: usize) -> Result<(), DecodeError> {
    text.map_or(Ok(()), |t| bound(field, t.len(), limit))
}

/// A message that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not a JSON envelope `{"v": .., "body": ..}`.
    #[error("not a loadwave envelope: {0}")]
    Envelope(String),
    /// An envelope version this build does not know.
    #[error("unsupported envelope version {0} (this build speaks {PROTOCOL_VERSION})")]
    Version(u32),
    /// The body is not a known message.
    #[error("malformed message body: {0}")]
    Body(String),
    /// A length or count is beyond the protocol's bound: `field` is the envelope itself
    /// (in bytes) or a dotted path into the body (`metrics.driver_id`, bytes;
    /// `metrics.buckets`, entries; `test_config.driver_index`, a position).
    #[error("`{field}` is {actual}; at most {limit} is allowed")]
    Bound {
        /// What is too large.
        field: &'static str,
        /// The largest value allowed.
        limit: usize,
        /// The value found.
        actual: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trigger() -> Message {
        Message::Trigger(Trigger {
            test_id: "t1".into(),
            action: TriggerAction::Start { start_at_ms: 42 },
        })
    }

    #[test]
    fn envelope_round_trip() {
        let m = trigger();
        let bytes = m.encode();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains(r#""v":1"#), "{text}");
        assert!(text.contains(r#""action":"start""#), "{text}");
        assert_eq!(Message::decode(&bytes).unwrap(), m);
        assert_eq!(m.topic().name(), "trigger");
        assert_eq!(m.key(), "t1");
    }

    #[test]
    fn rejects_other_versions_and_garbage() {
        let text = String::from_utf8(trigger().encode())
            .unwrap()
            .replace(r#""v":1"#, r#""v":9"#);
        assert_eq!(
            Message::decode(text.as_bytes()),
            Err(DecodeError::Version(9))
        );
        assert!(matches!(
            Message::decode(b"\x00\xffgarbage"),
            Err(DecodeError::Envelope(_))
        ));
        assert!(matches!(
            Message::decode(br#"{"v":1,"body":{"type":"nope"}}"#),
            Err(DecodeError::Body(_))
        ));
    }
}
