//! Latency histograms: HDR, microsecond resolution, three significant digits.
//!
//! On the wire a histogram travels in HdrHistogram's compressed V2 format (the one every
//! HdrHistogram implementation reads), base64-encoded so it fits a JSON string. Merging
//! two histograms adds their counts, so cluster percentiles come from every sample rather
//! than from averaging the drivers' percentiles.

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
        let mut buf = Vec::with_capacity(1024);
        V2Serializer::new()
            .serialize(&self.inner, &mut buf)
            .map_err(|e| HistogramError::Encode(format!("{e:?}")))?;
        Ok(base64::engine::general_purpose::STANDARD.encode(buf))
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
