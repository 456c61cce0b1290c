//! The test specification: what users submit and drivers execute.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};

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
/// The largest request body a spec may carry (1 MiB).
pub const MAX_BODY_BYTES: usize = 1 << 20;

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

/// A load test as submitted to `POST /tests` or `loadwave run`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TestSpec {
    /// A free-form label shown in reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The URL every request goes to (`http` or `https`).
    pub target_url: String,
    /// `avalanche` (closed model) or `tsunami` (open model with a fixed delay).
    pub test_type: TestType,
    /// How many driver nodes take part.
    #[serde(default = "default_drivers")]
    pub drivers: u32,
    /// How many requests each driver sends in total.
    pub requests_per_driver: u64,
    /// Requests in flight per driver at most (one keep-alive connection each).
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// Tsunami only: the delay between two consecutive requests of one driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<f64>,
    /// How long one request (connect, send, whole response) may take before it counts as
    /// a `timeout` error.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// The HTTP method.
    #[serde(default = "default_method")]
    pub method: String,
    /// Extra request headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The request body, sent as is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Pass/fail criteria evaluated on the merged result.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>, example = json!(["p99 < 200ms", "error_rate < 1%"])))]
    pub thresholds: Vec<Threshold>,
}

/// One driver unless asked otherwise: the zero-setup default.
fn default_drivers() -> u32 {
    1
}

/// Ten connections per driver: the default of wrk's `-c` and a gentle start for a target.
fn default_concurrency() -> u32 {
    10
}

/// Thirty seconds, the request timeout most HTTP clients (and Python's requests users)
/// reach for; long enough not to turn a slow target into errors.
fn default_timeout_ms() -> u64 {
    30_000
}

fn default_method() -> String {
    "GET".to_string()
}

/// A spec that failed to parse or validate, naming the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// The field's JSON name (`target_url`, `headers.X-Foo`, ...), or `body` for a
    /// document that is not JSON at all.
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
                named
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

    /// Checks every field's range and form.
    pub fn validate(&self) -> Result<(), SpecError> {
        parse_target_url(&self.target_url)?;
        if self.drivers == 0 || self.drivers > MAX_DRIVERS {
            return Err(SpecError::new(
                "drivers",
                format!("must be between 1 and {MAX_DRIVERS}, got {}", self.drivers),
            ));
        }
        if self.requests_per_driver == 0 || self.requests_per_driver > MAX_REQUESTS_PER_DRIVER {
            return Err(SpecError::new(
                "requests_per_driver",
                format!(
                    "must be between 1 and {MAX_REQUESTS_PER_DRIVER}, got {}",
                    self.requests_per_driver
                ),
            ));
        }
        if self.concurrency == 0 || self.concurrency > MAX_CONCURRENCY {
            return Err(SpecError::new(
                "concurrency",
                format!(
                    "must be between 1 and {MAX_CONCURRENCY}, got {}",
                    self.concurrency
                ),
            ));
        }
        match (self.test_type, self.delay_ms) {
            (TestType::Tsunami, None) => {
                return Err(SpecError::new(
                    "delay_ms",
                    "is required for a tsunami test (the delay between two requests of a driver)",
                ));
            }
            (TestType::Tsunami, Some(d)) if !(d.is_finite() && d > 0.0 && d <= 3_600_000.0) => {
                return Err(SpecError::new(
                    "delay_ms",
                    format!("must be a number above 0 and at most 3600000, got {d}"),
                ));
            }
            (TestType::Avalanche, Some(d)) if d != 0.0 => {
                return Err(SpecError::new(
                    "delay_ms",
                    "applies to tsunami tests only; an avalanche sends as fast as the target answers",
                ));
            }
            _ => {}
        }
        if self.timeout_ms == 0 || self.timeout_ms > MAX_TIMEOUT_MS {
            return Err(SpecError::new(
                "timeout_ms",
                format!(
                    "must be between 1 and {MAX_TIMEOUT_MS}, got {}",
                    self.timeout_ms
                ),
            ));
        }
        if http::Method::from_bytes(self.method.as_bytes()).is_err() || self.method.is_empty() {
            return Err(SpecError::new(
                "method",
                format!("`{}` is not a valid HTTP method", self.method),
            ));
        }
        for (name, value) in &self.headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(SpecError::new(
                    format!("headers.{name}"),
                    "is not a valid header name",
                ));
            }
            if http::HeaderValue::from_str(value).is_err() {
                return Err(SpecError::new(
                    format!("headers.{name}"),
                    "has a value that is not a valid header value",
                ));
            }
        }
        if let Some(body) = &self.body
            && body.len() > MAX_BODY_BYTES
        {
            return Err(SpecError::new(
                "body",
                format!(
                    "is {} bytes; at most {MAX_BODY_BYTES} are allowed",
                    body.len()
                ),
            ));
        }
        Ok(())
    }

    /// The total number of requests the test will send if every driver finishes.
    pub fn total_requests(&self) -> u64 {
        self.requests_per_driver * u64::from(self.drivers)
    }
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

/// Parses and checks a target URL: `http` or `https`, with a host.
pub fn parse_target_url(raw: &str) -> Result<TargetUrl, SpecError> {
    let err = |m: String| SpecError::new("target_url", m);
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
/// fd00:ec2::254) and their credentials. Checked on the URL's literal address when a spec
/// is validated, and on every resolved address by the API and by the driver.
pub fn forbidden_address(ip: IpAddr) -> Option<&'static str> {
    let v4 = match ip {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(v6) => v6.to_ipv4_mapped(),
    };
    if let Some(v4) = v4 {
        return v4
            .is_link_local()
            .then_some("a link-local address (cloud metadata services)");
    }
    let IpAddr::V6(v6) = ip else { return None };
    if v6.segments()[0] & 0xffc0 == 0xfe80 {
        return Some("a link-local address (cloud metadata services)");
    }
    if v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        return Some("the instance metadata service");
    }
    None
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
        assert_eq!(spec.concurrency, 10);
        assert_eq!(spec.timeout_ms, 30_000);
        assert_eq!(spec.method, "GET");
        assert_eq!(spec.total_requests(), 10);
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
}
