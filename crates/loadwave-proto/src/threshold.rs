//! Pass/fail criteria: `p99 < 200ms`, `error_rate < 1%`, `rps > 1000`.
//!
//! A threshold is written as `METRIC OP VALUE[UNIT]`. Latency metrics (`min`, `mean`,
//! `p50`, `p90`, `p95`, `p99`, `p999`, `max`) take `us`, `ms` (the default) or `s`;
//! `error_rate` takes a percentage (`1%`) or a fraction (`0.01`); `rps`, `requests` and
//! `errors` take plain numbers. Operators: `<`, `<=`, `>`, `>=`.
//!
//! A metric may name one request of a mix in braces, `p99{checkout} < 200ms`, to be
//! checked on that request's numbers alone. A trailing `abort` (`error_rate < 5% abort`)
//! makes the threshold stop the whole test the moment it breaks, judged every second on
//! the merged data of every driver.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The quantity a threshold checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Fastest response, ms.
    Min,
    /// Mean response time, ms.
    Mean,
    /// Median, ms.
    P50,
    /// 90th percentile, ms.
    P90,
    /// 95th percentile, ms.
    P95,
    /// 99th percentile, ms.
    P99,
    /// 99.9th percentile, ms.
    P999,
    /// Slowest response, ms.
    Max,
    /// Errors divided by requests, as a fraction.
    ErrorRate,
    /// Requests per second over the test.
    Rps,
    /// Requests sent.
    Requests,
    /// Requests that failed (transport errors and 4xx/5xx answers).
    Errors,
}

impl Metric {
    fn parse(name: &str) -> Option<Metric> {
        Some(match name {
            "min" => Metric::Min,
            "mean" | "avg" => Metric::Mean,
            "p50" | "median" => Metric::P50,
            "p90" => Metric::P90,
            "p95" => Metric::P95,
            "p99" => Metric::P99,
            "p999" | "p99.9" => Metric::P999,
            "max" => Metric::Max,
            "error_rate" => Metric::ErrorRate,
            "rps" => Metric::Rps,
            "requests" => Metric::Requests,
            "errors" => Metric::Errors,
            _ => return None,
        })
    }

    /// Whether the metric is a latency in milliseconds.
    pub fn is_latency(self) -> bool {
        matches!(
            self,
            Metric::Min
                | Metric::Mean
                | Metric::P50
                | Metric::P90
                | Metric::P95
                | Metric::P99
                | Metric::P999
                | Metric::Max
        )
    }
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl Op {
    /// Applies the operator: `actual OP limit`.
    pub fn holds(self, actual: f64, limit: f64) -> bool {
        match self {
            Op::Lt => actual < limit,
            Op::Le => actual <= limit,
            Op::Gt => actual > limit,
            Op::Ge => actual >= limit,
        }
    }
}

/// One criterion, kept with the text it was written as.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    /// What is measured.
    pub metric: Metric,
    /// How it is compared.
    pub op: Op,
    /// The limit in the metric's base unit: milliseconds, a fraction, or a count.
    pub limit: f64,
    /// The request of the mix it is about (`p99{checkout}`); the whole test when `None`.
    pub request: Option<String>,
    /// Whether breaking it stops the test at once.
    pub abort: bool,
    source: String,
}

/// A threshold that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid threshold `{text}`: {reason}")]
pub struct ThresholdError {
    /// The text given.
    pub text: String,
    /// Why it was rejected.
    pub reason: String,
}

impl Threshold {
    /// Parses `METRIC[{request}] OP VALUE[UNIT] [abort]`; spaces are optional.
    pub fn parse(text: &str) -> Result<Threshold, ThresholdError> {
        let fail = |reason: &str| ThresholdError {
            text: text.to_string(),
            reason: reason.to_string(),
        };
        let mut body = text.trim();
        let mut abort = false;
        if let Some(cut) = body.len().checked_sub("abort".len())
            && body.is_char_boundary(cut)
            && body[cut..].eq_ignore_ascii_case("abort")
            && body[..cut].ends_with(char::is_whitespace)
        {
            abort = true;
            body = body[..cut].trim_end();
        }
        let op_at = body
            .find(['<', '>'])
            .ok_or_else(|| fail("expected an operator: <, <=, > or >="))?;
        let (left, rest) = body.split_at(op_at);
        let left = left.trim();
        let (name, request) = match left.find('{') {
            None => (left, None),
            Some(open) => {
                let tag = left[open + 1..]
                    .strip_suffix('}')
                    .ok_or_else(|| {
                        fail("a request name goes in braces right after the metric: p99{checkout}")
                    })?
                    .trim();
                if tag.is_empty() || tag.contains(['{', '}']) {
                    return Err(fail(
                        "a request name goes in braces right after the metric: p99{checkout}",
                    ));
                }
                (left[..open].trim(), Some(tag.to_string()))
            }
        };
        let rest: String = rest.chars().filter(|c| !c.is_whitespace()).collect();
        let (op, value) = if let Some(v) = rest.strip_prefix("<=") {
            (Op::Le, v)
        } else if let Some(v) = rest.strip_prefix(">=") {
            (Op::Ge, v)
        } else if let Some(v) = rest.strip_prefix('<') {
            (Op::Lt, v)
        } else {
            (Op::Gt, &rest[1..])
        };
        if value.ends_with(|c: char| c.is_ascii_alphabetic())
            && value.to_ascii_lowercase().ends_with("abort")
        {
            return Err(fail("put a space before `abort`"));
        }
        let metric = Metric::parse(&name.to_ascii_lowercase()).ok_or_else(|| {
            fail("unknown metric; use min, mean, p50, p90, p95, p99, p999, max, error_rate, rps, requests or errors")
        })?;
        let split = value
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(value.len());
        let (number, unit) = value.split_at(split);
        let number: f64 = number
            .parse()
            .map_err(|_| fail("expected a number after the operator"))?;
        let limit = if metric.is_latency() {
            match unit {
                "" | "ms" => number,
                "us" | "µs" => number / 1000.0,
                "s" => number * 1000.0,
                _ => return Err(fail("latency units are us, ms or s")),
            }
        } else if metric == Metric::ErrorRate {
            match unit {
                "%" => number / 100.0,
                "" if number <= 1.0 => number,
                "" => return Err(fail("error_rate is a fraction (0.01) or a percentage (1%)")),
                _ => return Err(fail("error_rate takes % or no unit")),
            }
        } else if unit.is_empty() {
            number
        } else {
            return Err(fail("this metric takes a plain number"));
        };
        Ok(Threshold {
            metric,
            op,
            limit,
            request,
            abort,
            source: text.trim().to_string(),
        })
    }

    /// The text the threshold was written as.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl std::fmt::Display for Threshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.source)
    }
}

impl Serialize for Threshold {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for Threshold {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Threshold::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_into_base_units() {
        let t = Threshold::parse("p99 < 200ms").unwrap();
        assert_eq!((t.metric, t.op, t.limit), (Metric::P99, Op::Lt, 200.0));
        assert_eq!(Threshold::parse("max<=1.5s").unwrap().limit, 1500.0);
        assert_eq!(Threshold::parse("p50 < 500us").unwrap().limit, 0.5);
        assert_eq!(Threshold::parse("error_rate < 1%").unwrap().limit, 0.01);
        assert_eq!(Threshold::parse("error_rate < 0.05").unwrap().limit, 0.05);
        let t = Threshold::parse("rps >= 1000").unwrap();
        assert_eq!((t.metric, t.op, t.limit), (Metric::Rps, Op::Ge, 1000.0));
        assert_eq!(t.to_string(), "rps >= 1000");
    }

    #[test]
    fn rejects_malformed_text() {
        for bad in [
            "p99",
            "p98 < 1ms",
            "p99 < fast",
            "p99 < 5min",
            "error_rate < 5",
            "rps > 10ms",
            "< 5",
        ] {
            assert!(Threshold::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn abort_and_request_tags() {
        let t = Threshold::parse("error_rate < 5% abort").unwrap();
        assert!(t.abort);
        assert_eq!(
            (t.metric, t.limit, t.request.as_deref()),
            (Metric::ErrorRate, 0.05, None)
        );
        assert_eq!(t.to_string(), "error_rate < 5% abort");
        let t = Threshold::parse("p99{checkout} < 200ms").unwrap();
        assert!(!t.abort);
        assert_eq!((t.metric, t.limit), (Metric::P99, 200.0));
        assert_eq!(t.request.as_deref(), Some("checkout"));
        let t = Threshold::parse("  p95{ add to cart } <= 1s ABORT ").unwrap();
        assert!(t.abort);
        assert_eq!(t.request.as_deref(), Some("add to cart"));
        assert_eq!(t.limit, 1000.0);
        for bad in [
            "p99{} < 1ms",
            "p99{a < 1ms",
            "p99 < 1msabort",
            "p99 < 1ms abort abort",
        ] {
            assert!(Threshold::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn operators_compare_actual_to_limit() {
        assert!(Op::Lt.holds(1.0, 2.0));
        assert!(!Op::Lt.holds(2.0, 2.0));
        assert!(Op::Le.holds(2.0, 2.0));
        assert!(Op::Gt.holds(3.0, 2.0));
        assert!(!Op::Ge.holds(1.0, 2.0));
    }
}
