//! Latency histograms: HDR, microsecond resolution, three significant digits.
//!
//! On the wire a histogram travels in HdrHistogram's compressed V2 format (the one every
//! HdrHistogram implementation reads), base64-encoded so it fits a JSON string. Merging
//! two histograms adds their counts, so cluster percentiles come from every sample rather
//! than from averaging the drivers' percentiles.

use std::cell::RefCell;
use std::io::Read as _;

use base64::Engine as _;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer, V2Serializer};

/// Three significant digits: a recorded value is off by at most 0.1%.
const SIGNIFICANT_DIGITS: u8 = 3;
/// The largest latency a histogram tracks exactly: one hour, in microseconds. Larger
/// values (which only a misconfigured timeout allows) are clamped to it.
pub const MAX_TRACKED_US: u64 = 3_600_000_000;

/// A histogram that failed to encode or decode.
#[derive(Debug, thiserror::Error)]
pub enum HistogramError {
    /// The base64 text is malformed.
    #[error("histogram is not valid base64: {0}")]
    Base64(#[from] base64::DecodeError),
    /// The bytes are not a V2 histogram.
    #[error("histogram does not decode: {0}")]
    Decode(String),
    /// Serialization failed (should not happen for an in-memory buffer).
    #[error("histogram does not encode: {0}")]
    Encode(String),
    /// Adding two histograms failed.
    #[error("histograms cannot be merged: {0}")]
    Merge(String),
}

/// Latencies in microseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyHistogram {
    inner: Histogram<u64>,
}

/// A histogram's recorded values, ascending, each with its count (the highest value of
/// its bucket): what merging it into other histograms needs. Taking it costs one scan of
/// the source's buckets; adding it costs one step per distinct value, where
/// [`LatencyHistogram::add`] scans every bucket of the source again for each target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordedCounts {
    values: Vec<(u64, u64)>,
}

impl RecordedCounts {
    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Reads what [`LatencyHistogram::to_base64`] (or `to_base64_uncompressed`) wrote,
    /// straight into counts: the same as `from_base64(text)?.recorded()`, but walking the
    /// encoded (non-zero) counts instead of building and scanning a histogram's whole
    /// bucket array. This is what the controller does with every bucket of every report.
    /// Histograms of other shapes (another precision, from another implementation) take
    /// the general path.
    pub fn from_base64(text: &str) -> Result<RecordedCounts, HistogramError> {
        let bytes = base64::engine::general_purpose::STANDARD.decode(text)?;
        let decoded = match read_u32(&bytes, 0) {
            Some(V2_COMPRESSED_COOKIE) => INFLATED.with_borrow_mut(|buf| {
                buf.clear();
                let len = read_u32(&bytes, 4).ok_or_else(|| corrupt("truncated header"))?;
                let body = bytes
                    .get(8..8 + len as usize)
                    .ok_or_else(|| corrupt("truncated body"))?;
                flate2::read::ZlibDecoder::new(body)
                    .read_to_end(buf)
                    .map_err(|e| corrupt(&e.to_string()))?;
                sparse_v2(buf)
            })?,
            _ => sparse_v2(&bytes)?,
        };
        match decoded {
            Some(counts) => Ok(counts),
            None => Ok(LatencyHistogram::from_base64(text)?.recorded()),
        }
    }
}

/// The cookies of HdrHistogram's V2 encodings (plain and deflated), for 64-bit counts.
const V2_COOKIE: u32 = 0x1c84_9303 | 0x10;
const V2_COMPRESSED_COOKIE: u32 = 0x1c84_9304 | 0x10;
/// Bytes of a V2 header: cookie, payload length, normalizing offset, significant digits,
/// lowest discernible value, highest trackable value, integer-to-double ratio.
const V2_HEADER: usize = 40;
/// Buckets of one power of two at three significant digits: 2,048 sub-buckets, of which
/// every bucket but the first uses the upper half (1,024 = 2^10).
const HALF_COUNT_MAGNITUDE: u32 = 10;

thread_local! {
    /// Inflated report histograms, one buffer per thread.
    static INFLATED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

fn corrupt(why: &str) -> HistogramError {
    HistogramError::Decode(why.to_string())
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// The non-zero counts of a plain V2 histogram as written by this crate (three
/// significant digits, lowest value 1 µs, no offset): `None` for any other shape. Counts
/// are ZigZag LEB128 varints; a negative one is a run of that many empty buckets.
fn sparse_v2(bytes: &[u8]) -> Result<Option<RecordedCounts>, HistogramError> {
    let header = |at| read_u32(bytes, at).ok_or_else(|| corrupt("truncated header"));
    if header(0)? != V2_COOKIE {
        return Err(corrupt("not a V2 histogram"));
    }
    let len = header(4)? as usize;
    let ours = header(8)? == 0
        && header(12)? == u32::from(SIGNIFICANT_DIGITS)
        && read_u64(bytes, 16) == Some(1)
        && read_u64(bytes, 32) == Some(1f64.to_bits());
    if !ours {
        return Ok(None);
    }
    let payload = bytes
        .get(V2_HEADER..V2_HEADER + len)
        .ok_or_else(|| corrupt("truncated payload"))?;
    let half = 1u64 << HALF_COUNT_MAGNITUDE;
    let mut values = Vec::with_capacity(payload.len() / 2);
    let (mut index, mut at) = (0u64, 0usize);
    while at < payload.len() {
        let (mut raw, mut shift) = (0u64, 0u32);
        loop {
            let b = *payload.get(at).ok_or_else(|| corrupt("truncated count"))?;
            at += 1;
            if shift == 56 {
                // The ninth byte is taken whole.
                raw |= u64::from(b) << 56;
                break;
            }
            raw |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        let n = ((raw >> 1) as i64) ^ -((raw & 1) as i64);
        if n < 0 {
            index = index.saturating_add(n.unsigned_abs());
            continue;
        }
        if n > 0 {
            // The lowest value of bucket `index` (hdrhistogram's index-to-value mapping
            // for a lowest value of 1).
            let bucket = (index >> HALF_COUNT_MAGNITUDE).saturating_sub(1);
            let sub = if index < half {
                index
            } else {
                (index & (half - 1)) + half
            };
            if bucket + u64::from(HALF_COUNT_MAGNITUDE) + 1 >= 64 {
                return Err(corrupt("count beyond the histogram's range"));
            }
            values.push((sub << bucket, n as u64));
        }
        index += 1;
    }
    Ok(Some(RecordedCounts { values }))
}

thread_local! {
    /// A V2 serializer reserves the worst case (about 9 bytes per bucket, ~100 kB for a
    /// typical latency range) before it writes; one per thread keeps that buffer warm
    /// instead of allocating and faulting it in for every histogram of a snapshot.
    static V2_PLAIN: RefCell<(V2Serializer, Vec<u8>)> =
        RefCell::new((V2Serializer::new(), Vec::new()));
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHistogram {
    /// An empty histogram that grows its range as larger values arrive, so an idle or fast
    /// worker's histogram stays a few kilobytes.
    pub fn new() -> Self {
        let mut inner =
            Histogram::new(SIGNIFICANT_DIGITS).expect("3 significant digits is a valid setting");
        inner.auto(true);
        LatencyHistogram { inner }
    }

    /// Records one latency, clamped to [1 µs, one hour].
    #[inline]
    pub fn record_us(&mut self, us: u64) {
        let v = us.clamp(1, MAX_TRACKED_US);
        // Auto-resizing histograms accept every value up to u64::MAX / 2.
        let _ = self.inner.record(v);
    }

    /// Adds every count of `other`.
    pub fn add(&mut self, other: &LatencyHistogram) -> Result<(), HistogramError> {
        self.inner
            .add(&other.inner)
            .map_err(|e| HistogramError::Merge(format!("{e:?}")))
    }

    /// Its recorded values (the lowest of each bucket) and counts, for
    /// [`LatencyHistogram::add_recorded`].
    pub fn recorded(&self) -> RecordedCounts {
        RecordedCounts {
            values: self
                .inner
                .iter_recorded()
                .map(|v| {
                    (
                        self.inner.lowest_equivalent(v.value_iterated_to()),
                        v.count_at_value(),
                    )
                })
                .collect(),
        }
    }

    /// Adds counts taken from another histogram ([`LatencyHistogram::recorded`]): the
    /// same result as [`LatencyHistogram::add`] of that histogram.
    pub fn add_recorded(&mut self, counts: &RecordedCounts) -> Result<(), HistogramError> {
        let Some((&(max, n), rest)) = counts.values.split_last() else {
            return Ok(());
        };
        if max > self.inner.high() {
            // Widened once, to exactly what is needed: growing in place would leave the
            // counts vector's amortized slack (up to as much again) in every histogram,
            // and a test holds one per second.
            let mut wider = Histogram::new_with_bounds(1, max.max(2), SIGNIFICANT_DIGITS)
                .map_err(|e| HistogramError::Merge(format!("{e:?}")))?;
            wider.auto(true);
            wider
                .add(&self.inner)
                .map_err(|e| HistogramError::Merge(format!("{e:?}")))?;
            self.inner = wider;
        }
        let mut record = |v: u64, n: u64| {
            self.inner
                .record_n(v, n)
                .map_err(|e| HistogramError::Merge(format!("{e:?}")))
        };
        record(max, n)?;
        for &(v, n) in rest {
            record(v, n)?;
        }
        Ok(())
    }

    /// Empties the histogram, keeping its allocation.
    pub fn reset(&mut self) {
        self.inner.reset();
    }

    /// Number of recorded values.
    pub fn len(&self) -> u64 {
        self.inner.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// The value at quantile `q` (0.0–1.0), in microseconds; 0 when empty.
    pub fn quantile_us(&self, q: f64) -> u64 {
        if self.inner.is_empty() {
            0
        } else {
            self.inner.value_at_quantile(q)
        }
    }

    /// The largest recorded value (to histogram precision), µs.
    pub fn max_us(&self) -> u64 {
        self.inner.max()
    }

    /// The smallest recorded value (to histogram precision), µs.
    pub fn min_us(&self) -> u64 {
        if self.inner.is_empty() {
            0
        } else {
            self.inner.min()
        }
    }

    /// Encodes as base64 of the V2 deflate format.
    pub fn to_base64(&self) -> Result<String, HistogramError> {
        let mut buf = Vec::with_capacity(256);
        V2DeflateSerializer::new()
            .serialize(&self.inner, &mut buf)
            .map_err(|e| HistogramError::Encode(format!("{e:?}")))?;
        Ok(base64::engine::general_purpose::STANDARD.encode(buf))
    }

    /// Encodes as base64 of the plain V2 format, without deflate: about twice the bytes
    /// of [`LatencyHistogram::to_base64`], but a tenth of the CPU (deflate's set-up
    /// dominates for histograms of a few kilobytes). Snapshots use it: the controller
    /// writes every driver's histogram every second, where CPU counts more than bytes.
    /// [`LatencyHistogram::from_base64`] reads both.
    pub fn to_base64_uncompressed(&self) -> Result<String, HistogramError> {
        V2_PLAIN.with_borrow_mut(|(serializer, buf)| {
            buf.clear();
            serializer
                .serialize(&self.inner, buf)
                .map_err(|e| HistogramError::Encode(format!("{e:?}")))?;
            Ok(base64::engine::general_purpose::STANDARD.encode(&buf[..]))
        })
    }

    /// Bytes of memory the counts take (the histogram's own footprint, for accounting).
    pub fn heap_bytes(&self) -> usize {
        self.inner.distinct_values() * std::mem::size_of::<u64>()
    }

    /// Decodes what [`LatencyHistogram::to_base64`] produced (or any V2 / V2 deflate
    /// histogram from another HdrHistogram implementation).
    pub fn from_base64(text: &str) -> Result<LatencyHistogram, HistogramError> {
        let bytes = base64::engine::general_purpose::STANDARD.decode(text)?;
        let mut inner: Histogram<u64> = Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .map_err(|e| HistogramError::Decode(format!("{e:?}")))?;
        inner.auto(true);
        Ok(LatencyHistogram { inner })
    }
}

/// Histograms persist as base64 V2 text ([`LatencyHistogram::to_base64_uncompressed`]), so
/// snapshots that hold them stay JSON; either V2 form reads back.
impl serde::Serialize for LatencyHistogram {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text = self
            .to_base64_uncompressed()
            .map_err(serde::ser::Error::custom)?;
        s.serialize_str(&text)
    }
}

impl<'de> serde::Deserialize<'de> for LatencyHistogram {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        LatencyHistogram::from_base64(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_base64() {
        let mut h = LatencyHistogram::new();
        for v in [1, 50, 999, 12_345, 2_000_000] {
            h.record_us(v);
        }
        let back = LatencyHistogram::from_base64(&h.to_base64().unwrap()).unwrap();
        assert_eq!(back.len(), 5);
        assert_eq!(back.quantile_us(0.5), h.quantile_us(0.5));
        assert_eq!(back.max_us(), h.max_us());
    }

    #[test]
    fn both_encodings_read_back() {
        let mut h = LatencyHistogram::new();
        for v in 1..5_000 {
            h.record_us(v * 7);
        }
        let plain = h.to_base64_uncompressed().unwrap();
        let deflated = h.to_base64().unwrap();
        assert_ne!(plain, deflated);
        for text in [plain, deflated] {
            assert_eq!(LatencyHistogram::from_base64(&text).unwrap(), h);
        }
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<LatencyHistogram>(&json).unwrap(), h);
    }

    #[test]
    fn recorded_counts_merge_like_add() {
        let mut a = LatencyHistogram::new();
        let mut b = LatencyHistogram::new();
        for v in 1..3_000 {
            a.record_us(v * 3);
            b.record_us(v * v);
        }
        let (mut by_add, mut by_counts) = (a.clone(), a.clone());
        by_add.add(&b).unwrap();
        by_counts.add_recorded(&b.recorded()).unwrap();
        assert_eq!(by_counts.len(), by_add.len());
        for q in [0.0, 0.1, 0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(by_counts.quantile_us(q), by_add.quantile_us(q), "{q}");
        }
        assert_eq!(
            (by_counts.min_us(), by_counts.max_us()),
            (by_add.min_us(), by_add.max_us())
        );
        // The same counts in the same buckets (the range each grew to may differ).
        assert_eq!(by_counts.recorded(), by_add.recorded());
        assert!(LatencyHistogram::new().recorded().is_empty());
    }

    /// Histograms of many shapes, both encodings: the direct reading gives exactly the
    /// counts of a full decode.
    #[test]
    fn counts_read_straight_from_the_encoding() {
        let mut x: u64 = 99;
        let mut next = move || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            x >> 11
        };
        for case in 0..60u64 {
            let mut h = LatencyHistogram::new();
            let n = [0, 1, 5, 500, 5_000][case as usize % 5];
            for _ in 0..n {
                let v = match case % 4 {
                    0 => 1 + next() % 2_000,
                    1 => 1_000 + next() % 50_000,
                    2 => next() % MAX_TRACKED_US,
                    _ => 1u64 << (next() % 40),
                };
                h.record_us(v);
            }
            for text in [h.to_base64().unwrap(), h.to_base64_uncompressed().unwrap()] {
                let direct = RecordedCounts::from_base64(&text).unwrap();
                let full = LatencyHistogram::from_base64(&text).unwrap().recorded();
                assert_eq!(direct, full, "case {case}");
            }
        }
    }

    #[test]
    fn broken_encodings_are_errors_not_panics() {
        let mut h = LatencyHistogram::new();
        for v in 1..2_000 {
            h.record_us(v * 13);
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        for text in [h.to_base64().unwrap(), h.to_base64_uncompressed().unwrap()] {
            let bytes = b64.decode(&text).unwrap();
            for cut in [0, 3, 8, 20, 39, 40, 41, bytes.len() / 2, bytes.len() - 1] {
                let _ = RecordedCounts::from_base64(&b64.encode(&bytes[..cut]));
            }
            let mut flipped = bytes.clone();
            for i in (0..flipped.len()).step_by(7) {
                flipped[i] ^= 0xa5;
                let _ = RecordedCounts::from_base64(&b64.encode(&flipped));
            }
        }
        assert!(RecordedCounts::from_base64("not base64!").is_err());
        assert!(RecordedCounts::from_base64("aGVsbG8gd29ybGQ=").is_err());
    }

    #[test]
    fn clamps_out_of_range_values() {
        let mut h = LatencyHistogram::new();
        h.record_us(0);
        h.record_us(u64::MAX);
        assert_eq!(h.len(), 2);
        assert_eq!(h.min_us(), 1);
        assert!(h.max_us() >= MAX_TRACKED_US);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(LatencyHistogram::from_base64("not base64!").is_err());
        assert!(LatencyHistogram::from_base64("aGVsbG8gd29ybGQ=").is_err());
    }
}
