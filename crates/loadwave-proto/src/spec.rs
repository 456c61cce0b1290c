//! The test specification: what users submit and drivers execute.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::threshold::Threshold;

/// The largest number of drivers one test may ask for.
pub const MAX_DRIVERS: u32 = 1_000;
/// The largest in-flight request count per driver; beyond this one process runs out of
/// ephemeral ports and file descriptors long before it runs out of CPU.
pub const MAX_CONCURRENCY: u32 = 20_000;
/// The largest number of requests per driver (a billion: days of load at 10k rps).
pub const MAX_REQUESTS_PER_DRIVER: u64 = 1_000_000_000;
/// The longest request timeout: one hour.
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;
/// The largest request body a spec may carry (512 KiB): with the rest of the spec it
/// must fit one bus message ([`MAX_SPEC_BYTES`]).
pub const MAX_BODY_BYTES: usize = 512 << 10;
/// The largest message the bus carries, bytes: librdkafka's default producer
/// `message.max.bytes`, which `MemoryBus` enforces too so `loadwave run` fails the same
/// way. A publish over it can never succeed, whatever the retries.
pub const MAX_MESSAGE_BYTES: usize = 1_000_000;
/// The largest encoded spec a test may have, bytes: it travels inside every driver's
/// `test_config` message, which must stay under [`MAX_MESSAGE_BYTES`] with room for the
/// envelope (ids, JSON framing).
pub const MAX_SPEC_BYTES: usize = 900_000;

/// How requests are paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum TestType {
    /// Closed model: `concurrency` requests in flight per driver, each sent as soon as the
    /// previous one on its connection answered.
    #[serde(alias = "AVALANCHE", alias = "Avalanche")]
    Avalanche,
    /// Open model: request *k* of a driver is due at `start + k·delay_ms`, whatever the
    /// target is doing; latency counts from the due time (coordinated omission corrected).
    #[serde(alias = "TSUNAMI", alias = "Tsunami")]
    Tsunami,
}

impl TestType {
    /// The lowercase name used in JSON and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            TestType::Avalanche => "avalanche",
            TestType::Tsunami => "tsunami",
        }
    }
}

impl std::fmt::Display for TestType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for TestType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "avalanche" => Ok(TestType::Avalanche),
            "tsunami" => Ok(TestType::Tsunami),
            other => Err(format!(
                "unknown test type `{other}`, expected `avalanche` or `tsunami`"
            )),
        }
    }
}

/// The largest request mix a spec may carry.
pub const MAX_MIX: usize = 100;
/// The most stages a spec may carry.
pub const MAX_STAGES: usize = 100;
/// The longest `duration_s`, and the longest stage, seconds: a week. Longer runs are
/// better split into tests; a deployment caps durations lower (`LOADWAVE_MAX_DURATION_S`).
pub const MAX_DURATION_S: f64 = 604_800.0;
/// The highest arrival rate a spec may plan, requests per second over the whole test.
pub const MAX_RATE: f64 = 10_000_000.0;
/// The longest grace before abort thresholds are evaluated, seconds.
pub const MAX_ABORT_GRACE_S: f64 = 3_600.0;
/// The longest Tsunami delay between two requests of a driver, ms: an hour.
pub const MAX_DELAY_MS: f64 = 3_600_000.0;
/// The longest test name, characters: a label, not a document.
pub const MAX_NAME_CHARS: usize = 200;
/// The longest name of a mix's request, characters (it labels tables and charts).
pub const MAX_REQUEST_NAME_CHARS: usize = 64;
/// The smallest positive stage duration (s) and stage or start target: a millisecond, a
/// thousandth of a request per second or of a connection. Anything below is a typo or a
/// rounding artefact, and with it every positive stage plans at least one request.
pub const MIN_PROFILE_VALUE: f64 = 0.001;

/// A load test as submitted to `POST /tests` or `loadwave run`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TestSpec {
    /// A free-form label shown in reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The URL every request goes to (`http` or `https`); or give `requests`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_url: Option<String>,
    /// A weighted mix of requests instead of one `target_url`; the result shows each
    /// request's own numbers beside the totals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<Vec<RequestSpec>>,
    /// `avalanche` (closed model) or `tsunami` (open model).
    pub test_type: TestType,
    /// How many driver nodes take part.
    #[serde(default = "default_drivers", deserialize_with = "whole::u32")]
    pub drivers: u32,
    /// How many requests each driver sends at most. A test is bound by this, by its
    /// duration (`duration_s` or `stages`), or by both (whichever comes first).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "whole::opt_u64"
    )]
    pub requests_per_driver: Option<u64>,
    /// How long the test sends, seconds from the common start. Requests in flight at the
    /// end complete and are counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<f64>,
    /// Connections per driver (requests in flight at most); 10 when not given. Avalanche
    /// with `stages` takes its concurrency from the stages instead.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "whole::opt_u32"
    )]
    pub concurrency: Option<u32>,
    /// Tsunami: the delay between two consecutive requests of one driver, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<f64>,
    /// Tsunami: requests per second for the whole test, split over its drivers (instead
    /// of `delay_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// Linear ramps, each from the previous target (the first from `start_target`):
    /// for Tsunami the whole test's rate, for Avalanche the concurrency per driver. Their
    /// total is the test's duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stages: Option<Vec<Stage>>,
    /// Where the first stage ramps from (0 when not given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_target: Option<f64>,
    /// How long one request (connect, send, whole response) may take before it counts as
    /// a `timeout` error.
    #[serde(default = "default_timeout_ms", deserialize_with = "whole::u64")]
    pub timeout_ms: u64,
    /// The HTTP method of `target_url`.
    #[serde(default = "default_method")]
    pub method: String,
    /// Extra request headers (with `requests`, every request of the mix carries them
    /// unless it sets the same header itself).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The request body of `target_url`, sent as is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Pass/fail criteria evaluated on the merged result; `METRIC[{request}] OP VALUE`,
    /// ending in `abort` to stop the whole test as soon as one breaks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>, example = json!(["p99 < 200ms", "error_rate < 1% abort", "rps > 100"])))]
    pub thresholds: Vec<Threshold>,
    /// Seconds after the start before abort thresholds are evaluated (5 when not given):
    /// the first second's numbers are too few to judge by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort_grace_s: Option<f64>,
    /// More header names whose values are secrets (case-insensitive), on top of
    /// `Authorization`, `Cookie`, `Proxy-Authorization` and `X-Api-Key`: drivers send
    /// them, but every view of the test (API, report, CLI, logs) shows `<redacted>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_headers: Vec<String>,
    /// Show request bodies in the test's views; by default they are redacted, as they
    /// often carry credentials. Drivers send them either way.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub show_body: bool,
}

/// What a view shows instead of a secret header value or a hidden body.
pub const REDACTED: &str = "<redacted>";

/// Headers whose values are always secrets (lowercase).
pub const SECRET_HEADERS: [&str; 4] = [
    "authorization",
    "cookie",
    "proxy-authorization",
    "x-api-key",
];

/// The most header names `secret_headers` may list.
pub const MAX_SECRET_HEADERS: usize = 64;

/// One request of a weighted mix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    /// Its name in the result and in thresholds (`p99{NAME} < 200ms`).
    pub name: String,
    /// The HTTP method.
    #[serde(default = "default_method")]
    pub method: String,
    /// The URL (`http` or `https`); requests may go to one host or several.
    pub url: String,
    /// Its headers, on top of the spec's own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Its body, sent as is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Its share of the mix relative to the others' (1 when not given).
    #[serde(default = "default_weight")]
    pub weight: f64,
}

/// One stage of a ramping profile.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// How long the ramp to `target` takes, seconds.
    pub duration_s: f64,
    /// Tsunami: the whole test's requests per second; Avalanche: connections per driver.
    pub target: f64,
}

/// Whole numbers as JSON Schema sees them: `3` and `3.0` alike (its `integer` type takes
/// both, and so does the API), but neither `3.5` nor a number out of range.
mod whole {
    use serde::{Deserialize, Deserializer, de::Error};

    fn read<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        match serde_json::Number::deserialize(d)? {
            n if n.is_u64() => Ok(n.as_u64().unwrap_or_default()),
            n => match n.as_f64() {
                Some(f) if f >= 0.0 && f.fract() == 0.0 && f <= u64::MAX as f64 => Ok(f as u64),
                _ => Err(D::Error::custom(format!(
                    "expected a whole number of at least 0, got {n}"
                ))),
            },
        }
    }

    pub fn u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        read(d)
    }

    pub fn u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let n = read(d)?;
        u32::try_from(n).map_err(|_| D::Error::custom(format!("{n} is out of range")))
    }

    pub fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        Option::<serde_json::Number>::deserialize(d)?
            .map(|n| read(n).map_err(D::Error::custom))
            .transpose()
    }

    pub fn opt_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        Option::<serde_json::Number>::deserialize(d)?
            .map(|n| u32(n).map_err(D::Error::custom))
            .transpose()
    }
}

/// One driver unless asked otherwise: the zero-setup default.
fn default_drivers() -> u32 {
    1
}

/// Ten connections per driver: the default of wrk's `-c` and a gentle start for a target.
pub const DEFAULT_CONCURRENCY: u32 = 10;

/// Five seconds: long enough for percentiles and error rates to mean something, short
/// enough that a broken target is not loaded for long.
pub const DEFAULT_ABORT_GRACE_S: f64 = 5.0;

/// Thirty seconds, the request timeout most HTTP clients (and Python's requests users)
/// reach for; long enough not to turn a slow target into errors.
fn default_timeout_ms() -> u64 {
    30_000
}

fn default_method() -> String {
    "GET".to_string()
}

/// Every request of a mix counts the same unless weighted.
fn default_weight() -> f64 {
    1.0
}

/// A spec that failed to parse or validate, naming the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// The field's JSON name (`target_url`, `headers.X-Foo`, `stages[1].duration_s`,
    /// ...), or `body` for a document that is not JSON at all.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl SpecError {
    /// Builds an error for `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        SpecError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A request of a test, resolved: a mix's entry, or the spec's `target_url` with its
/// method, headers and body.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedRequest {
    /// Its name (`request` for a spec without a mix).
    pub name: String,
    /// The HTTP method.
    pub method: String,
    /// The URL.
    pub url: String,
    /// Its headers, the spec's merged under its own.
    pub headers: BTreeMap<String, String>,
    /// Its body.
    pub body: Option<String>,
    /// Its weight.
    pub weight: f64,
    /// The spec field it came from, for errors (`target_url`, `requests[2]`).
    pub field: String,
}

impl TestSpec {
    /// Parses a JSON document into a spec and validates it.
    ///
    /// Type errors name the field they occur in; a missing or unknown field is named too.
    pub fn from_json(bytes: &[u8]) -> Result<TestSpec, SpecError> {
        let starts_as_object = bytes
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'{');
        if !starts_as_object && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok() {
            return Err(SpecError::new("spec", "must be a JSON object"));
        }
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        let spec: TestSpec = serde_path_to_error::deserialize(de).map_err(|err| {
            let path = err.path().to_string();
            let inner = err.into_inner();
            let message = strip_position(&inner.to_string());
            let field = if inner.is_syntax() || inner.is_eof() {
                // Not JSON at all: no field to name, the document itself is at fault.
                "body".to_string()
            } else if let Some(named) = field_named_in(&message) {
                // serde names the field; the path says where its object is.
                if path == "." || path == named || path.ends_with(&format!(".{named}")) {
                    if path == "." { named } else { path }
                } else {
                    format!("{path}.{named}")
                }
            } else if path == "." {
                "spec".to_string()
            } else {
                path
            };
            SpecError { field, message }
        })?;
        spec.validate()?;
        Ok(spec)
    }

    /// Checks every field's range and form, and that the fields fit together.
    pub fn validate(&self) -> Result<(), SpecError> {
        if let Some(name) = &self.name
            && name.chars().count() > MAX_NAME_CHARS
        {
            return Err(SpecError::new(
                "name",
                format!("must be at most {MAX_NAME_CHARS} characters"),
            ));
        }
        self.validate_requests()?;
        if self.drivers == 0 || self.drivers > MAX_DRIVERS {
            return Err(SpecError::new(
                "drivers",
                format!("must be between 1 and {MAX_DRIVERS}, got {}", self.drivers),
            ));
        }
        self.validate_bounds()?;
        self.validate_pacing()?;
        if self.timeout_ms == 0 || self.timeout_ms > MAX_TIMEOUT_MS {
            return Err(SpecError::new(
                "timeout_ms",
                format!(
                    "must be between 1 and {MAX_TIMEOUT_MS}, got {}",
                    self.timeout_ms
                ),
            ));
        }
        let names = self.mix_names();
        for (i, t) in self.thresholds.iter().enumerate() {
            if let Some(name) = &t.request {
                if self.requests.is_none() {
                    return Err(SpecError::new(
                        format!("thresholds[{i}]"),
                        format!("`{t}` names request `{name}`, but the test has no requests mix"),
                    ));
                }
                if !names.contains(&name.as_str()) {
                    return Err(SpecError::new(
                        format!("thresholds[{i}]"),
                        format!(
                            "`{t}` names request `{name}`; the mix has {}",
                            names.join(", ")
                        ),
                    ));
                }
            }
        }
        self.validate_secret_headers()?;
        if let Some(g) = self.abort_grace_s
            && !(g.is_finite() && (0.0..=MAX_ABORT_GRACE_S).contains(&g))
        {
            return Err(SpecError::new(
                "abort_grace_s",
                format!("must be between 0 and {MAX_ABORT_GRACE_S} seconds, got {g}"),
            ));
        }
        Ok(())
    }

    fn validate_secret_headers(&self) -> Result<(), SpecError> {
        if self.secret_headers.len() > MAX_SECRET_HEADERS {
            return Err(SpecError::new(
                "secret_headers",
                format!(
                    "lists {} names; at most {MAX_SECRET_HEADERS} are allowed",
                    self.secret_headers.len()
                ),
            ));
        }
        for (i, name) in self.secret_headers.iter().enumerate() {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(SpecError::new(
                    format!("secret_headers[{i}]"),
                    format!("`{name}` is not a valid header name"),
                ));
            }
        }
        Ok(())
    }

    /// Whether the value of header `name` is a secret: one of [`SECRET_HEADERS`] or
    /// listed in `secret_headers`, compared without regard to case.
    pub fn is_secret_header(&self, name: &str) -> bool {
        SECRET_HEADERS.iter().any(|s| s.eq_ignore_ascii_case(name))
            || self
                .secret_headers
                .iter()
                .any(|s| s.eq_ignore_ascii_case(name))
    }

    /// The spec as views show it: secret header values (see
    /// [`TestSpec::is_secret_header`]) and, unless `show_body`, request bodies replaced by
    /// [`REDACTED`], the mix's requests included. Drivers get the spec itself.
    pub fn redacted(&self) -> TestSpec {
        let mut out = self.clone();
        let hide = |headers: &mut BTreeMap<String, String>| {
            for (name, value) in headers.iter_mut() {
                if self.is_secret_header(name) {
                    *value = REDACTED.to_string();
                }
            }
        };
        let hide_body = |body: &mut Option<String>| {
            if !self.show_body && body.is_some() {
                *body = Some(REDACTED.to_string());
            }
        };
        hide(&mut out.headers);
        hide_body(&mut out.body);
        for r in out.requests.iter_mut().flatten() {
            hide(&mut r.headers);
            hide_body(&mut r.body);
        }
        out
    }

    fn validate_requests(&self) -> Result<(), SpecError> {
        match (&self.target_url, &self.requests) {
            (Some(_), Some(_)) => {
                return Err(SpecError::new(
                    "requests",
                    "give either target_url or requests, not both",
                ));
            }
            (None, None) => {
                return Err(SpecError::new(
                    "target_url",
                    "is required (or give a requests mix)",
                ));
            }
            (Some(url), None) => {
                parse_target_url(url)?;
                check_request(&self.method, &self.headers, self.body.as_deref(), "")?;
            }
            (None, Some(mix)) => {
                if mix.is_empty() {
                    return Err(SpecError::new("requests", "must hold at least one request"));
                }
                if mix.len() > MAX_MIX {
                    return Err(SpecError::new(
                        "requests",
                        format!(
                            "holds {} requests; at most {MAX_MIX} are allowed",
                            mix.len()
                        ),
                    ));
                }
                if self.method != "GET" {
                    return Err(SpecError::new(
                        "method",
                        "applies to target_url; with requests, give each request its own method",
                    ));
                }
                if self.body.is_some() {
                    return Err(SpecError::new(
                        "body",
                        "applies to target_url; with requests, give each request its own body",
                    ));
                }
                check_headers(&self.headers, "headers")?;
                for (i, r) in mix.iter().enumerate() {
                    let at = format!("requests[{i}]");
                    let name = r.name.trim();
                    if name.is_empty() || name.chars().count() > MAX_REQUEST_NAME_CHARS {
                        return Err(SpecError::new(
                            format!("{at}.name"),
                            format!("must be 1 to {MAX_REQUEST_NAME_CHARS} characters"),
                        ));
                    }
                    if name.contains(['{', '}', '<', '>'])
                        || name.contains(char::is_control)
                        || name != r.name
                    {
                        return Err(SpecError::new(
                            format!("{at}.name"),
                            format!(
                                "`{}` may not hold braces, angle brackets or control characters, nor start or end with spaces",
                                r.name
                            ),
                        ));
                    }
                    if mix[..i].iter().any(|o| o.name == r.name) {
                        return Err(SpecError::new(
                            format!("{at}.name"),
                            format!("`{}` names two requests; names must be unique", r.name),
                        ));
                    }
                    parse_target_url(&r.url)
                        .map_err(|e| SpecError::new(format!("{at}.url"), e.message))?;
                    check_request(&r.method, &r.headers, r.body.as_deref(), &format!("{at}."))?;
                    if !(r.weight.is_finite() && r.weight >= 0.0) {
                        return Err(SpecError::new(
                            format!("{at}.weight"),
                            format!("must be a number of at least 0, got {}", r.weight),
                        ));
                    }
                }
                if !mix.iter().any(|r| r.weight > 0.0) {
                    return Err(SpecError::new(
                        "requests",
                        "no request has a positive weight, so none would be sent",
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_bounds(&self) -> Result<(), SpecError> {
        if let Some(n) = self.requests_per_driver
            && (n == 0 || n > MAX_REQUESTS_PER_DRIVER)
        {
            return Err(SpecError::new(
                "requests_per_driver",
                format!("must be between 1 and {MAX_REQUESTS_PER_DRIVER}, got {n}"),
            ));
        }
        if let Some(d) = self.duration_s {
            if !(d.is_finite() && d > 0.0 && d <= MAX_DURATION_S) {
                return Err(SpecError::new(
                    "duration_s",
                    format!("must be above 0 and at most {MAX_DURATION_S} seconds, got {d}"),
                ));
            }
            if self.stages.is_some() {
                return Err(SpecError::new(
                    "duration_s",
                    "with stages, the test lasts as long as they do; give stages or duration_s, not both",
                ));
            }
        }
        if self.requests_per_driver.is_none() && self.duration_s.is_none() && self.stages.is_none()
        {
            return Err(SpecError::new(
                "requests_per_driver",
                "is required unless duration_s or stages bound the test",
            ));
        }
        if let Some(c) = self.concurrency
            && (c == 0 || c > MAX_CONCURRENCY)
        {
            return Err(SpecError::new(
                "concurrency",
                format!("must be between 1 and {MAX_CONCURRENCY}, got {c}"),
            ));
        }
        Ok(())
    }

    fn validate_pacing(&self) -> Result<(), SpecError> {
        match self.test_type {
            TestType::Avalanche => {
                if self.delay_ms.is_some_and(|d| d != 0.0) {
                    return Err(SpecError::new(
                        "delay_ms",
                        "applies to tsunami tests only; an avalanche sends as fast as the target answers",
                    ));
                }
                if self.rate.is_some() {
                    return Err(SpecError::new(
                        "rate",
                        "applies to tsunami tests only; an avalanche sends as fast as the target answers (ramp its concurrency with stages)",
                    ));
                }
                if self.stages.is_some() && self.concurrency.is_some() {
                    return Err(SpecError::new(
                        "concurrency",
                        "with stages, each stage's target is the avalanche's concurrency per driver; leave concurrency out",
                    ));
                }
            }
            TestType::Tsunami => {
                match (self.delay_ms, self.rate, &self.stages) {
                    (Some(_), Some(_), _) => {
                        return Err(SpecError::new(
                            "rate",
                            "give delay_ms (per driver) or rate (for the whole test), not both",
                        ));
                    }
                    (Some(_), None, Some(_)) => {
                        return Err(SpecError::new(
                            "delay_ms",
                            "with stages, the rate comes from each stage's target; leave delay_ms out",
                        ));
                    }
                    (None, Some(_), Some(_)) => {
                        return Err(SpecError::new(
                            "rate",
                            "with stages, the rate comes from each stage's target; leave rate out",
                        ));
                    }
                    (None, None, None) => {
                        return Err(SpecError::new(
                            "delay_ms",
                            "is required for a tsunami test (the delay between two requests of a driver), unless rate or stages give its pace",
                        ));
                    }
                    _ => {}
                }
                if let Some(d) = self.delay_ms
                    && !(d.is_finite() && d > 0.0 && d <= MAX_DELAY_MS)
                {
                    return Err(SpecError::new(
                        "delay_ms",
                        format!("must be a number above 0 and at most {MAX_DELAY_MS}, got {d}"),
                    ));
                }
                if let Some(r) = self.rate
                    && !(r.is_finite() && r > 0.0 && r <= MAX_RATE)
                {
                    return Err(SpecError::new(
                        "rate",
                        format!(
                            "must be a number of requests per second above 0 and at most {MAX_RATE}, got {r}"
                        ),
                    ));
                }
            }
        }
        let (cap, unit) = match self.test_type {
            TestType::Avalanche => (f64::from(MAX_CONCURRENCY), "connections per driver"),
            TestType::Tsunami => (MAX_RATE, "requests per second"),
        };
        let in_range =
            |v: f64| v == 0.0 || (v.is_finite() && (MIN_PROFILE_VALUE..=cap).contains(&v));
        match &self.stages {
            None => {
                if self.start_target.is_some() {
                    return Err(SpecError::new(
                        "start_target",
                        "applies to stages only: it is where the first stage ramps from",
                    ));
                }
            }
            Some(stages) => {
                if stages.is_empty() {
                    return Err(SpecError::new("stages", "must hold at least one stage"));
                }
                if stages.len() > MAX_STAGES {
                    return Err(SpecError::new(
                        "stages",
                        format!(
                            "holds {} stages; at most {MAX_STAGES} are allowed",
                            stages.len()
                        ),
                    ));
                }
                if let Some(s) = self.start_target
                    && !in_range(s)
                {
                    return Err(SpecError::new(
                        "start_target",
                        format!(
                            "must be 0 or between {MIN_PROFILE_VALUE} and {cap} {unit}, got {s}"
                        ),
                    ));
                }
                for (i, s) in stages.iter().enumerate() {
                    if !(s.duration_s.is_finite()
                        && (MIN_PROFILE_VALUE..=MAX_DURATION_S).contains(&s.duration_s))
                    {
                        return Err(SpecError::new(
                            format!("stages[{i}].duration_s"),
                            format!(
                                "must be between {MIN_PROFILE_VALUE} and {MAX_DURATION_S} seconds, got {}",
                                s.duration_s
                            ),
                        ));
                    }
                    if !in_range(s.target) {
                        return Err(SpecError::new(
                            format!("stages[{i}].target"),
                            format!(
                                "must be 0 or between {MIN_PROFILE_VALUE} and {cap} {unit}, got {}",
                                s.target
                            ),
                        ));
                    }
                }
                let peak = stages
                    .iter()
                    .map(|s| s.target)
                    .fold(self.start_target.unwrap_or(0.0), f64::max);
                match self.test_type {
                    TestType::Avalanche if peak < 1.0 => {
                        return Err(SpecError::new(
                            "stages",
                            "every target is below one connection, so nothing would be sent",
                        ));
                    }
                    TestType::Tsunami
                        if crate::profile::Profile::of(self).planned_total() == Some(0) =>
                    {
                        return Err(SpecError::new(
                            "stages",
                            "plan no request at all (their targets are 0 or too small for their durations)",
                        ));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// How long the test sends, seconds: `duration_s`, or the stages' total.
    pub fn duration(&self) -> Option<f64> {
        match &self.stages {
            Some(stages) => Some(stages.iter().map(|s| s.duration_s).sum()),
            None => self.duration_s,
        }
    }

    /// Connections per driver as asked (10 when not given).
    pub fn concurrency(&self) -> u32 {
        self.concurrency.unwrap_or(DEFAULT_CONCURRENCY)
    }

    /// Where the first stage ramps from.
    pub fn start_target_or_zero(&self) -> f64 {
        self.start_target.unwrap_or(0.0)
    }

    /// Seconds after the start before abort thresholds count.
    pub fn abort_grace_s(&self) -> f64 {
        self.abort_grace_s.unwrap_or(DEFAULT_ABORT_GRACE_S)
    }

    /// Whether the spec has a `requests` mix (whose requests the result shows one by one).
    pub fn is_mix(&self) -> bool {
        self.requests.is_some()
    }

    /// The names of the mix's requests, in order (none without a mix).
    pub fn mix_names(&self) -> Vec<&str> {
        self.requests
            .iter()
            .flatten()
            .map(|r| r.name.as_str())
            .collect()
    }

    /// The requests the test sends, in order: the mix, or the one `target_url`.
    pub fn request_list(&self) -> Vec<ResolvedRequest> {
        match &self.requests {
            Some(mix) => mix
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let mut headers = self.headers.clone();
                    for (k, v) in &r.headers {
                        headers.retain(|name, _| !name.eq_ignore_ascii_case(k));
                        headers.insert(k.clone(), v.clone());
                    }
                    ResolvedRequest {
                        name: r.name.clone(),
                        method: r.method.clone(),
                        url: r.url.clone(),
                        headers,
                        body: r.body.clone(),
                        weight: r.weight,
                        field: format!("requests[{i}]"),
                    }
                })
                .collect(),
            None => vec![ResolvedRequest {
                name: "request".into(),
                method: self.method.clone(),
                url: self.target_url.clone().unwrap_or_default(),
                headers: self.headers.clone(),
                body: self.body.clone(),
                weight: 1.0,
                field: "target_url".into(),
            }],
        }
    }

    /// The target for people: the URL, or the mix's request names.
    pub fn target_label(&self) -> String {
        match (&self.target_url, &self.requests) {
            (Some(url), _) => url.clone(),
            (None, Some(mix)) => format!("{} requests: {}", mix.len(), self.mix_names().join(", ")),
            (None, None) => String::new(),
        }
    }

    /// The total number of requests the test will send if every driver finishes, when
    /// that is known in advance (not for a closed-model test bound by time).
    pub fn total_requests(&self) -> Option<u64> {
        crate::profile::Profile::of(self).planned_total()
    }
}

fn check_headers(headers: &BTreeMap<String, String>, at: &str) -> Result<(), SpecError> {
    for (name, value) in headers {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(SpecError::new(
                format!("{at}.{name}"),
                "is not a valid header name",
            ));
        }
        if http::HeaderValue::from_str(value).is_err() {
            return Err(SpecError::new(
                format!("{at}.{name}"),
                "has a value that is not a valid header value",
            ));
        }
    }
    Ok(())
}

/// Checks a request's method, headers and body; `prefix` is where its fields are
/// (`requests[2].`, or nothing for the spec's own).
fn check_request(
    method: &str,
    headers: &BTreeMap<String, String>,
    body: Option<&str>,
    prefix: &str,
) -> Result<(), SpecError> {
    if method.is_empty() || http::Method::from_bytes(method.as_bytes()).is_err() {
        return Err(SpecError::new(
            format!("{prefix}method"),
            format!("`{method}` is not a valid HTTP method"),
        ));
    }
    check_headers(headers, &format!("{prefix}headers"))?;
    if let Some(body) = body
        && body.len() > MAX_BODY_BYTES
    {
        return Err(SpecError::new(
            format!("{prefix}body"),
            format!(
                "is {} bytes; at most {MAX_BODY_BYTES} are allowed",
                body.len()
            ),
        ));
    }
    Ok(())
}

/// The parts of a target URL the load engine needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetUrl {
    /// `true` for `https`.
    pub tls: bool,
    /// Host name or address, without brackets for IPv6.
    pub host: String,
    /// Port, defaulted from the scheme.
    pub port: u16,
    /// The value of the `Host` header.
    pub authority: String,
    /// Path and query, at least `/`.
    pub path_and_query: String,
}

/// The longest target URL, characters.
pub const MAX_URL_CHARS: usize = 8_192;

/// Whether `raw` has the form of a target URL, as `/openapi.json` states it
/// (`loadwave_proto::openapi::URL_PATTERN`): `http://` or `https://`, a host name (labels
/// of letters, digits, `-` and `_`, separated by dots) or a bracketed IPv6 address, an
/// optional port (0–65535, no leading zeros), then a path of RFC 3986 path characters and
/// an optional query. No user info, no fragment, nothing percent-decoded. Checked by hand
/// (the crate has no regex engine) with the same rules as the pattern.
fn plain_url_form(raw: &str) -> Result<(), &'static str> {
    if raw.chars().count() > MAX_URL_CHARS {
        return Err("it is longer than 8192 characters");
    }
    let rest = raw
        .strip_prefix("http://")
        .or_else(|| raw.strip_prefix("https://"))
        .ok_or("it must start with http:// or https://")?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let port = if let Some(v6) = authority.strip_prefix('[') {
        let (addr, after) = v6
            .split_once(']')
            .ok_or("an IPv6 host needs its closing `]`")?;
        addr.parse::<Ipv6Addr>()
            .map_err(|_| "the host in brackets is not an IPv6 address")?;
        match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or("only a port may follow the host")?,
            ),
        }
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !host.split('.').all(label_ok) {
            return Err(
                "the host must be a name of letters, digits, `-` and `_` between dots, or [IPv6]",
            );
        }
        port
    };
    if let Some(p) = port {
        let digits_ok = !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit());
        if !digits_ok
            || (p.len() > 1 && p.starts_with('0'))
            || p.parse::<u32>().map_or(true, |n| n > 65_535)
        {
            return Err("the port must be a number from 0 to 65535");
        }
    }
    let pchar = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@%".contains(&b);
    let (path, query) = match tail.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (tail, None),
    };
    if !path.bytes().all(|b| pchar(b) || b == b'/') {
        return Err("the path holds a character that must be percent-encoded");
    }
    if let Some(q) = query
        && !q.bytes().all(|b| pchar(b) || b == b'/' || b == b'?')
    {
        return Err("the query holds a character that must be percent-encoded");
    }
    Ok(())
}

/// Parses and checks a target URL: `http` or `https`, with a host.
pub fn parse_target_url(raw: &str) -> Result<TargetUrl, SpecError> {
    let err = |m: String| SpecError::new("target_url", m);
    if let Err(why) = plain_url_form(raw) {
        return Err(err(format!("`{raw}` is not a valid URL: {why}")));
    }
    let uri: http::Uri = raw
        .parse()
        .map_err(|e| err(format!("`{raw}` is not a valid URL: {e}")))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        Some(other) => {
            return Err(err(format!(
                "scheme `{other}` is not supported; use http or https"
            )));
        }
        None => {
            return Err(err(format!(
                "`{raw}` has no scheme; use http:// or https://"
            )));
        }
    };
    let authority = uri
        .authority()
        .ok_or_else(|| err(format!("`{raw}` has no host")))?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.is_empty() {
        return Err(err(format!("`{raw}` has no host")));
    }
    if authority.as_str().contains('@') {
        return Err(err(
            "credentials in the URL are not supported; use a header".into(),
        ));
    }
    if let Ok(ip) = host.parse::<IpAddr>()
        && let Some(why) = forbidden_address(ip)
    {
        return Err(err(format!(
            "{ip} is {why}; loadwave does not send load there"
        )));
    }
    let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
    Ok(TargetUrl {
        tls,
        host: host.to_string(),
        port,
        authority: authority.as_str().to_string(),
        path_and_query: uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".to_string()),
    })
}

/// Why `ip` must never be a target, if it must not: link-local addresses, which in a
/// cloud hold the instance and task metadata services (169.254.169.254, 169.254.170.2,
/// fd00:ec2::254) and their credentials, and AWS's internal range `fd00:ec2::/32` (its
/// metadata, DNS and time services). Checked on the URL's literal address when a spec
/// is validated, and on every resolved address by the API and by the driver.
///
/// An IPv6 address that carries an IPv4 one is judged by that IPv4 address as well,
/// whatever the form (a translator or relay on the path would deliver it there):
/// IPv4-mapped `::ffff:a.b.c.d`, IPv4-translated `::ffff:0:a.b.c.d`, IPv4-compatible
/// `::a.b.c.d`, NAT64 `64:ff9b::/96` and the local-use `64:ff9b:1::/48` (every RFC 6052
/// position), 6to4 `2002::/16` and Teredo `2001:0::/32` (server and client). Loopback
/// and private addresses stay allowed: tests aim at them.
pub fn forbidden_address(ip: IpAddr) -> Option<&'static str> {
    const LINK_LOCAL: &str = "a link-local address (cloud metadata services)";
    const EMBEDDED: &str =
        "an IPv6 address carrying a link-local IPv4 address (cloud metadata services)";
    let v6 = match ip {
        IpAddr::V4(v4) => return v4.is_link_local().then_some(LINK_LOCAL),
        IpAddr::V6(v6) => v6,
    };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return v4.is_link_local().then_some(LINK_LOCAL);
    }
    let s = v6.segments();
    if s[0] & 0xffc0 == 0xfe80 {
        return Some(LINK_LOCAL);
    }
    if s[0] == 0xfd00 && s[1] == 0x0ec2 {
        return Some(
            "an AWS-internal address (fd00:ec2::/32: instance metadata, DNS and time services)",
        );
    }
    embedded_ipv4(v6)
        .iter()
        .any(Ipv4Addr::is_link_local)
        .then_some(EMBEDDED)
}

/// The IPv4 addresses an IPv6 address carries in the forms a translator, tunnel or relay
/// would deliver to (the mapped form is handled by the caller).
fn embedded_ipv4(v6: Ipv6Addr) -> Vec<Ipv4Addr> {
    let s = v6.segments();
    let o = v6.octets();
    let v4 = |b: [u8; 4]| Ipv4Addr::from(b);
    let last = v4([o[12], o[13], o[14], o[15]]);
    let mut found = Vec::new();
    // IPv4-compatible ::a.b.c.d (deprecated, still routed by some stacks) and
    // IPv4-translated ::ffff:0:a.b.c.d (SIIT).
    if s[..6] == [0; 6] || s[..6] == [0, 0, 0, 0, 0xffff, 0] {
        found.push(last);
    }
    // NAT64 well-known prefix 64:ff9b::/96.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        found.push(last);
    }
    // NAT64 local-use 64:ff9b:1::/48: the operator picks the prefix length, so every
    // RFC 6052 position a prefix inside it may use (bits 64-71 are always skipped).
    if s[..3] == [0x64, 0xff9b, 0x0001] {
        found.push(v4([o[6], o[7], o[9], o[10]])); // /48
        found.push(v4([o[7], o[9], o[10], o[11]])); // /56
        found.push(v4([o[9], o[10], o[11], o[12]])); // /64
        found.push(last); // /96
    }
    // 6to4 2002:AABB:CCDD::/48.
    if s[0] == 0x2002 {
        found.push(v4([o[2], o[3], o[4], o[5]]));
    }
    // Teredo 2001:0:SERVER:flags:port:CLIENT, the client's address inverted.
    if s[0] == 0x2001 && s[1] == 0 {
        found.push(v4([o[4], o[5], o[6], o[7]]));
        found.push(v4([!o[12], !o[13], !o[14], !o[15]]));
    }
    found
}

/// Whether a connection to `target` reaches the listener bound to `listener`: the same
/// port, and the same address once IPv4-mapped forms are unwrapped. A listener on the
/// unspecified address (`0.0.0.0`, `::`) is reached through loopback, and a target on
/// the unspecified address reaches the local host. Used to keep the orchestrator from
/// aiming drivers at itself or at its brokers.
pub fn reaches(target: std::net::SocketAddr, listener: std::net::SocketAddr) -> bool {
    if target.port() != listener.port() {
        return false;
    }
    let (t, l) = (target.ip().to_canonical(), listener.ip().to_canonical());
    let local = |ip: IpAddr| ip.is_loopback() || ip.is_unspecified();
    t == l || (l.is_unspecified() && local(t)) || (t.is_unspecified() && local(l))
}

/// serde_json appends " at line 1 column 12"; the API reports fields, not positions.
fn strip_position(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// Pulls `x` out of serde's "missing field `x`" and "unknown field `x`, expected ...".
fn field_named_in(message: &str) -> Option<String> {
    for prefix in ["missing field `", "unknown field `"] {
        if let Some(rest) = message.strip_prefix(prefix) {
            return rest.split('`').next().map(str::to_string);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<TestSpec, SpecError> {
        TestSpec::from_json(json.as_bytes())
    }

    const OK: &str = r#"{"target_url":"http://127.0.0.1:8080/ping","test_type":"avalanche","requests_per_driver":10}"#;

    #[test]
    fn minimal_spec_takes_defaults() {
        let spec = parse(OK).unwrap();
        assert_eq!(spec.drivers, 1);
        assert_eq!(spec.concurrency(), 10);
        assert_eq!(spec.timeout_ms, 30_000);
        assert_eq!(spec.method, "GET");
        assert_eq!(spec.total_requests(), Some(10));
        assert_eq!(spec.abort_grace_s(), 5.0);
        assert!(!spec.is_mix());
    }

    #[test]
    fn original_uppercase_test_type_is_accepted() {
        let spec = parse(&OK.replace("\"avalanche\"", "\"AVALANCHE\"")).unwrap();
        assert_eq!(spec.test_type, TestType::Avalanche);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                r#"{"test_type":"avalanche","requests_per_driver":1}"#,
                "target_url",
            ),
            (&OK.replace("}", r#","bogus":1}"#), "bogus"),
            (&OK.replace("10}", r#""ten"}"#), "requests_per_driver"),
            (&OK.replace("10}", "0}"), "requests_per_driver"),
            (&OK.replace("http://", "ftp://"), "target_url"),
            (&OK.replace("\"avalanche\"", "\"storm\""), "test_type"),
            (&OK.replace("}", r#","concurrency":0}"#), "concurrency"),
            (&OK.replace("}", r#","drivers":-1}"#), "drivers"),
            (&OK.replace("}", r#","delay_ms":5}"#), "delay_ms"),
            (&OK.replace("}", r#","method":"G E T"}"#), "method"),
            (
                &OK.replace("}", r#","headers":{"bad name":"x"}}"#),
                "headers.bad name",
            ),
            (
                &OK.replace("}", r#","thresholds":["p99 <"]}"#),
                "thresholds[0]",
            ),
            (&OK.replace("\"avalanche\"", "\"tsunami\""), "delay_ms"),
            ("{not json", "body"),
        ];
        for (json, field) in cases {
            let err = parse(json).expect_err(json);
            assert_eq!(err.field, field, "{json} -> {err}");
            assert!(!err.message.contains("line 1"), "{err}");
        }
    }

    const T: &str = r#"{"target_url":"http://127.0.0.1:8080/","test_type":"tsunami""#;
    const A: &str = r#"{"target_url":"http://127.0.0.1:8080/","test_type":"avalanche""#;
    const MIX: &str = r#"{"test_type":"avalanche","requests_per_driver":10,"requests":["#;

    #[test]
    fn profile_errors_name_the_field() {
        let cases: &[(String, &str)] = &[
            // bounds
            (format!("{A}}}"), "requests_per_driver"),
            (format!(r#"{A},"duration_s":0}}"#), "duration_s"),
            (format!(r#"{A},"duration_s":-3}}"#), "duration_s"),
            (format!(r#"{A},"duration_s":"30s"}}"#), "duration_s"),
            (
                format!(r#"{A},"duration_s":3,"stages":[{{"duration_s":1,"target":2}}]}}"#),
                "duration_s",
            ),
            // rate
            (format!(r#"{A},"duration_s":3,"rate":100}}"#), "rate"),
            (format!(r#"{T},"duration_s":3,"rate":100,"delay_ms":5}}"#), "rate"),
            (format!(r#"{T},"duration_s":3,"rate":0}}"#), "rate"),
            (format!(r#"{T},"duration_s":3}}"#), "delay_ms"),
            // stages
            (format!(r#"{T},"stages":[]}}"#), "stages"),
            (
                format!(r#"{T},"stages":[{{"duration_s":2,"target":5}},{{"duration_s":0,"target":5}}]}}"#),
                "stages[1].duration_s",
            ),
            (
                format!(r#"{T},"stages":[{{"duration_s":2,"target":-1}}]}}"#),
                "stages[0].target",
            ),
            (format!(r#"{T},"stages":[{{"duration_s":2}}]}}"#), "stages[0].target"),
            (
                format!(r#"{T},"stages":[{{"duration_s":2,"target":5,"ramp":"x"}}]}}"#),
                "stages[0].ramp",
            ),
            (format!(r#"{T},"stages":[{{"duration_s":2,"target":0}}]}}"#), "stages"),
            (
                format!(r#"{T},"rate":5,"stages":[{{"duration_s":2,"target":5}}]}}"#),
                "rate",
            ),
            (
                format!(r#"{T},"delay_ms":5,"stages":[{{"duration_s":2,"target":5}}]}}"#),
                "delay_ms",
            ),
            (
                format!(r#"{A},"concurrency":4,"stages":[{{"duration_s":2,"target":5}}]}}"#),
                "concurrency",
            ),
            (
                format!(r#"{A},"stages":[{{"duration_s":2,"target":0.4}}]}}"#),
                "stages",
            ),
            (
                format!(r#"{A},"stages":[{{"duration_s":2,"target":20001}}]}}"#),
                "stages[0].target",
            ),
            (format!(r#"{A},"duration_s":2,"start_target":3}}"#), "start_target"),
            // mixes
            (format!(r#"{MIX}]}}"#), "requests"),
            (
                format!(r#"{MIX}{{"name":"a","url":"http://h/","weight":0}}]}}"#),
                "requests",
            ),
            (
                format!(r#"{MIX}{{"name":"a","url":"http://h/","weight":-1}}]}}"#),
                "requests[0].weight",
            ),
            (format!(r#"{MIX}{{"name":"a"}}]}}"#), "requests[0].url"),
            (format!(r#"{MIX}{{"url":"http://h/"}}]}}"#), "requests[0].name"),
            (
                format!(r#"{MIX}{{"name":"a","url":"http://h/"}},{{"name":"a","url":"http://h/"}}]}}"#),
                "requests[1].name",
            ),
            (
                format!(r#"{MIX}{{"name":"a","url":"ftp://h/"}}]}}"#),
                "requests[0].url",
            ),
            (
                format!(r#"{MIX}{{"name":"a","url":"http://h/","method":"G T"}}]}}"#),
                "requests[0].method",
            ),
            (
                format!(r#"{MIX}{{"name":"a","url":"http://h/","headers":{{"b c":"1"}}}}]}}"#),
                "requests[0].headers.b c",
            ),
            (
                format!(r#"{MIX}{{"name":"a{{b}}","url":"http://h/"}}]}}"#),
                "requests[0].name",
            ),
            (
                r#"{"target_url":"http://h/","test_type":"avalanche","requests_per_driver":1,"requests":[{"name":"a","url":"http://h/"}]}"#.to_string(),
                "requests",
            ),
            (
                format!(r#"{MIX}{{"name":"a","url":"http://h/"}}],"method":"POST"}}"#),
                "method",
            ),
            (
                format!(r#"{MIX}{{"name":"a","url":"http://h/"}}],"thresholds":["p99{{b}} < 1ms"]}}"#),
                "thresholds[0]",
            ),
            (
                format!(r#"{A},"requests_per_driver":1,"thresholds":["p99{{b}} < 1ms"]}}"#),
                "thresholds[0]",
            ),
            (
                format!(r#"{A},"requests_per_driver":1,"abort_grace_s":-1}}"#),
                "abort_grace_s",
            ),
        ];
        for (json, field) in cases {
            let err = parse(json).expect_err(json);
            assert_eq!(err.field, *field, "{json} -> {err}");
        }
    }

    #[test]
    fn profiles_that_are_fine() {
        for json in [
            format!(r#"{A},"duration_s":2.5}}"#),
            format!(r#"{A},"duration_s":2.5,"requests_per_driver":100}}"#),
            format!(r#"{T},"rate":250,"duration_s":10}}"#),
            format!(r#"{T},"rate":250,"requests_per_driver":100}}"#),
            format!(r#"{T},"delay_ms":4,"duration_s":1}}"#),
            format!(
                r#"{T},"start_target":50,"stages":[{{"duration_s":30,"target":200}},{{"duration_s":60,"target":200}},{{"duration_s":10,"target":0}}]}}"#
            ),
            format!(
                r#"{A},"stages":[{{"duration_s":10,"target":50}},{{"duration_s":5,"target":0}}]}}"#
            ),
            format!(
                r#"{MIX}{{"name":"browse","url":"http://h/a","weight":3}},{{"name":"checkout","method":"POST","url":"https://other/b","body":"{{}}","weight":1}}],"thresholds":["p99{{checkout}} < 200ms abort"]}}"#
            ),
        ] {
            let spec = parse(&json).unwrap_or_else(|e| panic!("{json}: {e}"));
            let again = parse(&serde_json::to_string(&spec).unwrap()).unwrap();
            assert_eq!(spec, again);
        }
        let spec = parse(&format!(
            r#"{T},"stages":[{{"duration_s":30,"target":200}},{{"duration_s":10,"target":0}}]}}"#
        ))
        .unwrap();
        assert_eq!(spec.duration(), Some(40.0));
        assert_eq!(spec.total_requests(), Some(3000 + 1000));
    }

    #[test]
    fn a_mix_resolves_with_shared_headers() {
        let spec = parse(&format!(
            r#"{MIX}{{"name":"a","url":"http://h/a","headers":{{"X-Id":"2"}}}},{{"name":"b","url":"http://h/b","weight":2.5}}],"headers":{{"x-id":"1","auth":"t"}}}}"#
        ))
        .unwrap();
        let list = spec.request_list();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].headers.get("X-Id").map(String::as_str), Some("2"));
        assert!(!list[0].headers.contains_key("x-id"));
        assert_eq!(list[1].headers["x-id"], "1");
        assert_eq!(list[1].weight, 2.5);
        assert_eq!(list[0].field, "requests[0]");
        assert_eq!(spec.target_label(), "2 requests: a, b");
    }

    #[test]
    fn tsunami_needs_a_positive_delay() {
        let tsunami = OK.replace("\"avalanche\"", "\"tsunami\"");
        assert!(parse(&tsunami.replace("}", r#","delay_ms":2.5}"#)).is_ok());
        assert_eq!(
            parse(&tsunami.replace("}", r#","delay_ms":0}"#))
                .unwrap_err()
                .field,
            "delay_ms"
        );
    }

    #[test]
    fn target_url_parts() {
        let t = parse_target_url("https://[::1]:8443/a?b=1").unwrap();
        assert!(t.tls);
        assert_eq!(t.host, "::1");
        assert_eq!(t.port, 8443);
        assert_eq!(t.path_and_query, "/a?b=1");
        let t = parse_target_url("http://localhost").unwrap();
        assert_eq!((t.port, t.path_and_query.as_str()), (80, "/"));
        assert!(parse_target_url("localhost:80").is_err());
        assert!(parse_target_url("http://user:pw@host/").is_err());
    }

    #[test]
    fn metadata_services_and_link_local_addresses_are_refused() {
        for url in [
            "http://169.254.169.254/latest/meta-data/",
            "http://169.254.170.2/v2/credentials",
            "http://[fd00:ec2::254]/",
            "http://[fe80::1]:8080/",
            "http://[::ffff:169.254.169.254]/",
        ] {
            let err = parse_target_url(url).unwrap_err();
            assert_eq!(err.field, "target_url", "{url}");
            assert!(
                err.message.contains("does not send load there"),
                "{url}: {}",
                err.message
            );
        }
        for ok in [
            "http://127.0.0.1/",
            "http://10.0.0.1/",
            "http://[::1]/",
            "http://example.com/",
        ] {
            assert!(parse_target_url(ok).is_ok(), "{ok}");
        }
        assert!(forbidden_address("169.254.0.1".parse().unwrap()).is_some());
        assert!(forbidden_address("8.8.8.8".parse().unwrap()).is_none());
    }

    /// The issue's probes: every IPv6 form that carries a link-local IPv4 address.
    #[test]
    fn link_local_ipv4_is_refused_in_every_ipv6_embedding() {
        for addr in [
            "64:ff9b::a9fe:a9fe",                   // NAT64, the issue's probe
            "64:ff9b::169.254.170.2",               // NAT64, the ECS task metadata
            "64:ff9b:1:a9fe:a9:fe00::",             // NAT64 local-use, /48 position
            "64:ff9b:1:a9:fe:a9fe::",               // NAT64 local-use, /56 position
            "64:ff9b:1::a9:fea9:fe00:0",            // NAT64 local-use, /64 position
            "64:ff9b:1::a9fe:a9fe",                 // NAT64 local-use, /96 position
            "2002:a9fe:a9fe::1",                    // 6to4, the issue's probe
            "::169.254.169.254",                    // IPv4-compatible, the issue's probe
            "::ffff:0:169.254.169.254",             // IPv4-translated
            "::ffff:169.254.169.254",               // IPv4-mapped
            "2001:0:a9fe:a9fe::1",                  // Teredo server
            "2001:0:4136:e378:8000:63bf:5601:5601", // Teredo client (inverted)
        ] {
            let ip: IpAddr = addr.parse().unwrap();
            assert!(forbidden_address(ip).is_some(), "{addr} was allowed");
            let err = parse_target_url(&format!("http://[{addr}]:80/")).unwrap_err();
            assert_eq!(err.field, "target_url", "{addr}");
        }
        // The embeddings of ordinary addresses are not refused for being embeddings.
        for addr in [
            "64:ff9b::808:808",
            "2002:c000:204::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "::ffff:10.0.0.1",
            "64:ff9b:1::a00:1",
        ] {
            let ip: IpAddr = addr.parse().unwrap();
            assert_eq!(forbidden_address(ip), None, "{addr}");
        }
    }

    #[test]
    fn a_target_reaches_a_listener_on_its_address_and_port() {
        let at = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
        for (target, listener) in [
            ("127.0.0.1:8000", "127.0.0.1:8000"),
            ("[::ffff:127.0.0.1]:8000", "127.0.0.1:8000"),
            ("0.0.0.0:8000", "127.0.0.1:8000"),
            ("127.0.0.1:8000", "0.0.0.0:8000"),
            ("[::1]:8000", "[::]:8000"),
            ("10.0.0.5:9092", "10.0.0.5:9092"),
        ] {
            assert!(reaches(at(target), at(listener)), "{target} -> {listener}");
        }
        for (target, listener) in [
            ("127.0.0.1:8001", "127.0.0.1:8000"),
            ("[::1]:8000", "127.0.0.1:8000"),
            ("10.0.0.6:9092", "10.0.0.5:9092"),
            ("10.0.0.5:9092", "0.0.0.0:9092"),
        ] {
            assert!(!reaches(at(target), at(listener)), "{target} -> {listener}");
        }
    }

    #[test]
    fn the_aws_internal_range_is_refused_whole() {
        for addr in ["fd00:ec2::23", "fd00:ec2::254", "fd00:ec2:ffff::1"] {
            let err = parse_target_url(&format!("http://[{addr}]/")).unwrap_err();
            assert!(
                err.message.contains("fd00:ec2::/32"),
                "{addr}: {}",
                err.message
            );
        }
        assert_eq!(forbidden_address("fd00:ec3::23".parse().unwrap()), None);
        assert_eq!(forbidden_address("fd00::1".parse().unwrap()), None);
    }

    #[test]
    fn loopback_and_private_targets_stay_allowed() {
        for addr in [
            "127.0.0.1",
            "127.1.2.3",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "0.0.0.0",
            "::1",
            "::",
            "fc00::1",
            "::ffff:127.0.0.1",
            "2001:db8::1",
        ] {
            let ip: IpAddr = addr.parse().unwrap();
            assert_eq!(forbidden_address(ip), None, "{addr}");
        }
    }

    #[test]
    fn spec_round_trips_through_json() {
        let spec = parse(
            r#"{"target_url":"http://h/","test_type":"tsunami","delay_ms":1.5,"requests_per_driver":3,
                "headers":{"x-a":"b"},"body":"hi","method":"POST","thresholds":["p99 < 20ms","error_rate < 1%"]}"#,
        )
        .unwrap();
        let again = parse(&serde_json::to_string(&spec).unwrap()).unwrap();
        assert_eq!(spec, again);
    }

    /// The rules `/openapi.json` states (loadwave_proto::openapi) hold here too, so a
    /// schema-valid spec is accepted and a schema-invalid one refused.
    #[test]
    fn the_documented_rules_hold() {
        let base = r#""test_type":"avalanche","requests_per_driver":5"#;
        let with = |extra: &str| parse(&format!(r#"{{{base},{extra}}}"#));
        // JSON Schema's integers include 3.0; fractions and negatives are not.
        let spec = with(r#""target_url":"http://h/","drivers":3.0,"timeout_ms":1000.0"#).unwrap();
        assert_eq!((spec.drivers, spec.timeout_ms), (3, 1000));
        for bad in [
            r#""drivers":2.5"#,
            r#""drivers":-1"#,
            r#""concurrency":1e30"#,
        ] {
            assert!(
                with(&format!(r#""target_url":"http://h/",{bad}"#)).is_err(),
                "{bad}"
            );
        }
        // URLs: the documented form only.
        for ok in [
            "http://localhost:8080/ping",
            "https://a-b.c_d.example/x/y?q=1&r=%20",
            "http://[::1]:0/",
            "http://127.0.0.1:65535",
        ] {
            parse_target_url(ok).unwrap_or_else(|e| panic!("{ok}: {e:?}"));
        }
        for bad in [
            "HTTP://h/",
            "http://h:65536/",
            "http://h:080/",
            "http://h:/",
            "http://a..b/",
            "http://h/a b",
            "http://h/#frag",
            "http://[1::2::3]/",
            "http://h\n",
        ] {
            assert!(parse_target_url(bad).is_err(), "{bad}");
        }
        // Names count characters; request names hold no control characters.
        assert!(
            with(&format!(
                r#""target_url":"http://h/","name":"{}""#,
                "é".repeat(MAX_NAME_CHARS)
            ))
            .is_ok()
        );
        assert!(
            with(&format!(
                r#""target_url":"http://h/","name":"{}""#,
                "é".repeat(MAX_NAME_CHARS + 1)
            ))
            .is_err()
        );
        let mix = |name: &str| {
            parse(&format!(
                r#"{{{base},"requests":[{{"name":{},"url":"http://h/"}}]}}"#,
                serde_json::to_string(name).unwrap()
            ))
        };
        assert!(mix(&"é".repeat(MAX_REQUEST_NAME_CHARS)).is_ok());
        assert!(mix(&"é".repeat(MAX_REQUEST_NAME_CHARS + 1)).is_err());
        assert!(mix("a\u{1c}b").is_err());
        assert!(mix("a\u{85}").is_err());
        // Profile values: 0, or at least a thousandth; stages up to a week each.
        let tsunami = |stages: &str| {
            parse(&format!(
                r#"{{"target_url":"http://h/","test_type":"tsunami","stages":{stages}}}"#
            ))
        };
        assert!(tsunami(r#"[{"duration_s":0.001,"target":0.001}]"#).is_ok());
        assert!(tsunami(r#"[{"duration_s":0.0009,"target":10}]"#).is_err());
        assert!(tsunami(r#"[{"duration_s":10,"target":0.0009}]"#).is_err());
        assert!(
            tsunami(r#"[{"duration_s":604800,"target":1},{"duration_s":604800,"target":1}]"#)
                .is_ok()
        );
        assert!(tsunami(r#"[{"duration_s":604801,"target":1}]"#).is_err());
    }
}
