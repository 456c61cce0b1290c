//! Merged statistics: counts add, histograms merge, nothing is averaged.
//!
//! An aggregate of a test with a request mix also keeps one aggregate per request of the
//! mix ([`Aggregate::add_split`]), so each request's percentiles come from its own merged
//! histogram. Those are sparse: a request gets its aggregate (and its histogram, 16 KiB
//! at least) with its first data, so a second in which one request of a hundred completed
//! costs two histograms, not a hundred and one.
//!
//! Every count comes from a driver's report, which is untrusted input: counts saturate,
//! they never wrap (nor panic in a debug build).

use std::collections::BTreeMap;

use loadwave_proto::{BucketStats, ErrorKind, HistogramError, LatencyHistogram, RecordedCounts};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Distinct values a histogram holds as a sorted list before it turns into HdrHistogram's
/// bucket array: 16 bytes a value against the array's 16 KiB at least (64 KiB for
/// latencies up to 100 ms), so a second's histogram, with a few dozen distinct values,
/// costs a few hundred bytes.
pub const SPARSE_MAX_VALUES: usize = 512;

/// A merged latency histogram (µs, three significant digits): sparse while it has few
/// distinct values, HdrHistogram's bucket array beyond. Both answer the same quantiles;
/// both persist in the same V2 encoding.
#[derive(Debug, Clone)]
enum Hist {
    /// (lowest value of its bucket, count), ascending by value.
    Sparse(Vec<(u64, u64)>),
    Dense(LatencyHistogram),
}

impl Default for Hist {
    fn default() -> Self {
        Hist::Sparse(Vec::new())
    }
}

/// The lowest and highest value of the bucket holding `v`, as HdrHistogram buckets it at
/// three significant digits from 1 µs: exact below 2,048, then 1,024 buckets per power of
/// two.
fn bucket_bounds(v: u64) -> (u64, u64) {
    let shift = (63 - (v | 2047).leading_zeros()).saturating_sub(10);
    let low = (v >> shift) << shift;
    (low, low + ((1u64 << shift) - 1))
}

impl Hist {
    fn len(&self) -> u64 {
        match self {
            Hist::Sparse(values) => values.iter().fold(0u64, |n, (_, c)| n.saturating_add(*c)),
            Hist::Dense(h) => h.len(),
        }
    }

    fn add_recorded(&mut self, counts: &RecordedCounts) -> Result<(), HistogramError> {
        let values = match self {
            Hist::Dense(h) => return h.add_recorded(counts),
            Hist::Sparse(values) => values,
        };
        // A merge of two ascending lists; values of another precision are put in the
        // bucket this precision gives them, as the bucket array would.
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(values.len() + counts.values().len());
        let mut mine = values.iter().copied().peekable();
        for (v, n) in counts
            .values()
            .iter()
            .map(|&(v, n)| (bucket_bounds(v).0, n))
        {
            while let Some(&(m, c)) = mine.peek() {
                if m >= v {
                    break;
                }
                push_sum(&mut merged, m, c);
                mine.next();
            }
            push_sum(&mut merged, v, n);
        }
        for (m, c) in mine {
            push_sum(&mut merged, m, c);
        }
        if merged.len() > SPARSE_MAX_VALUES {
            let mut dense = LatencyHistogram::new();
            dense.add_recorded(&RecordedCounts::from_values(merged))?;
            *self = Hist::Dense(dense);
        } else {
            merged.shrink_to_fit();
            *values = merged;
        }
        Ok(())
    }

    /// HdrHistogram's `value_at_quantile`: the highest value of the bucket where the
    /// running count reaches `ceil(q × total)` (the lowest for `q == 0`); 0 when empty.
    fn quantile_us(&self, q: f64) -> u64 {
        let values = match self {
            Hist::Dense(h) => return h.quantile_us(q),
            Hist::Sparse(values) => values,
        };
        let q = q.min(1.0);
        let total = self.len();
        let wanted = ((q * total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for &(v, n) in values {
            seen = seen.saturating_add(n);
            if seen >= wanted {
                let (low, high) = bucket_bounds(v);
                return if q == 0.0 { low } else { high };
            }
        }
        0
    }

    fn heap_bytes(&self) -> usize {
        match self {
            Hist::Sparse(values) => values.capacity() * std::mem::size_of::<(u64, u64)>(),
            Hist::Dense(h) => h.heap_bytes(),
        }
    }

    /// The bucket array, for encoding.
    fn to_dense(&self) -> Result<LatencyHistogram, HistogramError> {
        match self {
            Hist::Dense(h) => Ok(h.clone()),
            Hist::Sparse(values) => {
                let mut dense = LatencyHistogram::new();
                dense.add_recorded(&RecordedCounts::from_values(values.clone()))?;
                Ok(dense)
            }
        }
    }
}

/// Appends (v, n) to an ascending list, adding to the last entry when it is v.
fn push_sum(list: &mut Vec<(u64, u64)>, v: u64, n: u64) {
    match list.last_mut() {
        Some((last, c)) if *last == v => *c = c.saturating_add(n),
        _ => list.push((v, n)),
    }
}

/// Persisted as [`LatencyHistogram`] persists (base64 of the V2 encoding), so snapshots
/// read the same whichever form wrote them.
impl Serialize for Hist {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Hist::Dense(h) => h.serialize(s),
            Hist::Sparse(_) => self
                .to_dense()
                .map_err(serde::ser::Error::custom)?
                .serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Hist {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let counts = RecordedCounts::from_base64(&text).map_err(serde::de::Error::custom)?;
        let mut h = Hist::default();
        h.add_recorded(&counts).map_err(serde::de::Error::custom)?;
        Ok(h)
    }
}

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
    histogram: Hist,
    /// Per request of the mix, by its position, for the requests that have data; empty
    /// without a mix. Snapshots written before it was sparse hold a list by position,
    /// which reads back too.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "sparse::deserialize"
    )]
    pub by_request: BTreeMap<u32, Aggregate>,
}

impl Aggregate {
    /// Adds one bucket, its histogram already decoded ([`LatencyHistogram::recorded`]).
    pub fn add(
        &mut self,
        bucket: &BucketStats,
        histogram: &RecordedCounts,
    ) -> Result<(), HistogramError> {
        self.histogram.add_recorded(histogram)?;
        self.requests = self.requests.saturating_add(bucket.requests);
        self.errors = self.errors.saturating_add(bucket.errors);
        self.late = self.late.saturating_add(bucket.late);
        self.busy_us = self.busy_us.saturating_add(bucket.busy_us);
        for (code, n) in &bucket.status_codes {
            let c = self.status_codes.entry(*code).or_default();
            *c = c.saturating_add(*n);
        }
        for (kind, n) in &bucket.error_kinds {
            let c = self.error_kinds.entry(*kind).or_default();
            *c = c.saturating_add(*n);
        }
        if !histogram.is_empty() {
            self.sum_us = self
                .sum_us
                .saturating_add(u128::from(bucket.latency_sum_us));
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
            self.by_request
                .entry(r)
                .or_default()
                .add(bucket, histogram)?;
        }
        Ok(())
    }

    /// The aggregate of request `r` of the mix (`None` while it has no data).
    pub fn request(&self, r: usize) -> Option<&Aggregate> {
        u32::try_from(r).ok().and_then(|r| self.by_request.get(&r))
    }

    /// Responses received (requests that got an HTTP answer).
    pub fn responses(&self) -> u64 {
        self.histogram.len()
    }

    /// Whether any response was recorded.
    pub fn has_responses(&self) -> bool {
        self.histogram.len() > 0
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

    /// Bytes of memory it takes beyond its own struct, roughly (for accounting).
    pub fn heap_bytes(&self) -> usize {
        // A B-tree entry of a small map: key, value and node overhead.
        const ENTRY: usize = 32;
        self.histogram.heap_bytes()
            + ENTRY * (self.status_codes.len() + self.error_kinds.len())
            + self
                .by_request
                .values()
                .map(|a| a.heap_bytes() + ENTRY + std::mem::size_of::<Aggregate>())
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

/// The per-request aggregates: a map by position, or the dense list by position that
/// snapshots held before (its entries without data are dropped on reading).
mod sparse {
    use std::collections::BTreeMap;
    use std::fmt;

    use serde::Deserializer;
    use serde::de::{MapAccess, SeqAccess, Visitor};

    use super::Aggregate;

    struct Sparse;

    impl<'de> Visitor<'de> for Sparse {
        type Value = BTreeMap<u32, Aggregate>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("aggregates by request position (a map or a list)")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((k, v)) = map.next_entry::<u32, Aggregate>()? {
                out.insert(k, v);
            }
            Ok(out)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            let mut i = 0u32;
            while let Some(a) = seq.next_element::<Aggregate>()? {
                // The old dense form held an empty aggregate for every position before the
                // last one with data.
                if a.requests > 0 || a.histogram.len() > 0 {
                    out.insert(i, a);
                }
                i = i.saturating_add(1);
            }
            Ok(out)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<u32, Aggregate>, D::Error> {
        d.deserialize_any(Sparse)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(requests: u64) -> BucketStats {
        BucketStats {
            second: 0,
            request: None,
            requests,
            errors: requests,
            status_codes: BTreeMap::from([(503, requests)]),
            error_kinds: BTreeMap::from([(ErrorKind::Timeout, requests)]),
            late: requests,
            latency_sum_us: u64::MAX,
            latency_min_us: 1,
            latency_max_us: u64::MAX,
            busy_us: u64::MAX,
            histogram: String::new(),
        }
    }

    fn counts(values: &[u64]) -> RecordedCounts {
        let mut h = LatencyHistogram::new();
        values.iter().for_each(|v| h.record_us(*v));
        h.recorded()
    }

    #[test]
    fn counts_saturate_instead_of_wrapping() {
        let mut a = Aggregate::default();
        for _ in 0..3 {
            a.add_split(&bucket(u64::MAX - 1), &counts(&[1_000]))
                .unwrap();
        }
        assert_eq!(a.requests, u64::MAX);
        assert_eq!(a.errors, u64::MAX);
        assert_eq!(a.late, u64::MAX);
        assert_eq!(a.busy_us, u64::MAX);
        assert_eq!(a.status_codes[&503], u64::MAX);
        assert_eq!(a.error_kinds[&ErrorKind::Timeout], u64::MAX);
        assert_eq!(a.responses(), 3);
    }

    /// The sparse form answers exactly what HdrHistogram's bucket array answers, before and
    /// after it turns dense, and reads back from its encoding the same.
    #[test]
    fn sparse_and_dense_histograms_agree() {
        let mut x: u64 = 11;
        let mut next = || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            1 + (x >> 33) % 3_000_000
        };
        let mut sparse = Aggregate::default();
        let mut dense = LatencyHistogram::new();
        for round in 0..40 {
            let values: Vec<u64> = (0..(5 + round * 3)).map(|_| next()).collect();
            let c = counts(&values);
            sparse.histogram.add_recorded(&c).unwrap();
            dense.add_recorded(&c).unwrap();
            for q in [0.0, 0.1, 0.5, 0.9, 0.99, 0.999, 1.0] {
                assert_eq!(
                    sparse.histogram.quantile_us(q),
                    dense.quantile_us(q),
                    "round {round} q {q}"
                );
            }
            assert_eq!(sparse.histogram.len(), dense.len());
            let json = serde_json::to_string(&sparse).unwrap();
            let back: Aggregate = serde_json::from_str(&json).unwrap();
            assert_eq!(back.latency(), sparse.latency());
        }
        assert!(matches!(sparse.histogram, Hist::Dense(_)), "turned dense");
        let mut small = Aggregate::default();
        small
            .histogram
            .add_recorded(&counts(&[1_000, 1_001, 250_000]))
            .unwrap();
        assert!(matches!(small.histogram, Hist::Sparse(_)));
        assert!(small.heap_bytes() < 1_000, "{}", small.heap_bytes());
    }

    #[test]
    fn the_dense_list_of_old_snapshots_reads_as_sparse() {
        let mut a = Aggregate::default();
        let mut b = bucket(2);
        b.request = Some(2);
        a.add_split(&b, &counts(&[10, 20])).unwrap();
        let mut json = serde_json::to_value(&a).unwrap();
        assert!(json["by_request"].is_object());
        let one = json["by_request"]["2"].clone();
        let empty = serde_json::to_value(Aggregate::default()).unwrap();
        json["by_request"] = serde_json::json!([empty.clone(), empty, one]);
        let back: Aggregate = serde_json::from_value(json).unwrap();
        assert_eq!(back.by_request.keys().copied().collect::<Vec<_>>(), vec![2]);
        assert_eq!(back.request(2).unwrap().requests, 2);
    }
}
