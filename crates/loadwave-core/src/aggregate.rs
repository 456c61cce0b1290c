//! Merged statistics: counts add, histograms merge, nothing is averaged.
//!
//! An aggregate of a test with a request mix also keeps one aggregate per request of the
//! mix ([`Aggregate::add_split`]), so each request's percentiles come from its own merged
//! histogram.

use std::collections::BTreeMap;

use loadwave_proto::{BucketStats, ErrorKind, HistogramError, LatencyHistogram, RecordedCounts};
use serde::{Deserialize, Serialize};

/// The sum of any number of driver buckets.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Aggregate {
    /// Requests completed.
    pub requests: u64,
    /// Transport errors plus responses with status ≥ 400.
    pub errors: u64,
    /// Responses by status code.
    pub status_codes: BTreeMap<u16, u64>,
    /// Transport errors by kind.
    pub error_kinds: BTreeMap<ErrorKind, u64>,
    /// Tsunami requests sent late.
    pub late: u64,
    #[serde(with = "u128_text")]
    sum_us: u128,
    min_us: Option<u64>,
    max_us: u64,
    /// Time requests were in flight, µs (the second's achieved concurrency × 10⁶).
    #[serde(default)]
    pub busy_us: u64,
    histogram: LatencyHistogram,
    /// Per request of the mix, by its position; empty without a mix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub by_request: Vec<Aggregate>,
}

impl Aggregate {
    /// Adds one bucket, its histogram already decoded ([`LatencyHistogram::recorded`]).
    pub fn add(
        &mut self,
        bucket: &BucketStats,
        histogram: &RecordedCounts,
    ) -> Result<(), HistogramError> {
        self.histogram.add_recorded(histogram)?;
        self.requests += bucket.requests;
        self.errors += bucket.errors;
        self.late += bucket.late;
        self.busy_us += bucket.busy_us;
        for (code, n) in &bucket.status_codes {
            *self.status_codes.entry(*code).or_default() += n;
        }
        for (kind, n) in &bucket.error_kinds {
            *self.error_kinds.entry(*kind).or_default() += n;
        }
        if !histogram.is_empty() {
            self.sum_us += u128::from(bucket.latency_sum_us);
            self.min_us = Some(
                self.min_us
                    .map_or(bucket.latency_min_us, |m| m.min(bucket.latency_min_us)),
            );
            self.max_us = self.max_us.max(bucket.latency_max_us);
        }
        Ok(())
    }

    /// Adds one bucket to the totals and, when it is about one request of a mix, to that
    /// request's own aggregate.
    pub fn add_split(
        &mut self,
        bucket: &BucketStats,
        histogram: &RecordedCounts,
    ) -> Result<(), HistogramError> {
        self.add(bucket, histogram)?;
        if let Some(r) = bucket.request {
            let r = r as usize;
            if self.by_request.len() <= r {
                self.by_request.resize_with(r + 1, Aggregate::default);
            }
            self.by_request[r].add(bucket, histogram)?;
        }
        Ok(())
    }

    /// The aggregate of request `r` of the mix (empty when none came).
    pub fn request(&self, r: usize) -> Option<&Aggregate> {
        self.by_request.get(r)
    }

    /// Responses received (requests that got an HTTP answer).
    pub fn responses(&self) -> u64 {
        self.histogram.len()
    }

    /// `errors / requests`, rounded to six places; `None` before any request.
    pub fn error_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| round6(self.errors as f64 / self.requests as f64))
    }

    /// Latency figures in milliseconds. Min, max and mean are exact; percentiles come from
    /// the merged histogram (within 0.1%).
    pub fn latency(&self) -> Latency {
        let n = self.histogram.len();
        let ms = |us: u64| us as f64 / 1000.0;
        if n == 0 {
            return Latency::default();
        }
        Latency {
            min: ms(self.min_us.unwrap_or(0)),
            mean: round3(self.sum_us as f64 / n as f64 / 1000.0),
            p50: ms(self.histogram.quantile_us(0.50)),
            p90: ms(self.histogram.quantile_us(0.90)),
            p95: ms(self.histogram.quantile_us(0.95)),
            p99: ms(self.histogram.quantile_us(0.99)),
            p999: ms(self.histogram.quantile_us(0.999)),
            max: ms(self.max_us),
        }
    }

    /// The merged histogram.
    pub fn histogram(&self) -> &LatencyHistogram {
        &self.histogram
    }

    /// Bytes of memory it takes beyond its own struct, roughly (for accounting).
    pub fn heap_bytes(&self) -> usize {
        // A B-tree entry of a small map: key, value and node overhead.
        const ENTRY: usize = 32;
        self.histogram.heap_bytes()
            + ENTRY * (self.status_codes.len() + self.error_kinds.len())
            + self
                .by_request
                .iter()
                .map(|a| a.heap_bytes() + std::mem::size_of::<Aggregate>())
                .sum::<usize>()
    }
}

/// Response-time figures, milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Latency {
    /// Fastest.
    pub min: f64,
    /// Arithmetic mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Slowest.
    pub max: f64,
}

pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub(crate) fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// JSON numbers stop being exact at 2^53; a u128 sum persists as a decimal string.
mod u128_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}
