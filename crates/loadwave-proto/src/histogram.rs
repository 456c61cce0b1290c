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
    /// The base64 text is longer than any histogram this crate accepts could be.
    #[error("histogram text is {len} bytes long; at most {limit} are accepted")]
    TooLong {
        /// Bytes of text given.
        len: usize,
        /// [`MAX_BASE64_LEN`].
        limit: usize,
    },
    /// A field of the V2 header is outside what a histogram may declare; nothing was
    /// allocated or inflated for it.
    #[error("histogram header: {field} {problem}")]
    Header {
        /// The header field, as the V2 format names it.
        field: &'static str,
        /// What is wrong with its value.
        problem: String,
    },
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

    /// The recorded values (the lowest of each bucket, µs) with their counts, ascending.
    pub fn values(&self) -> &[(u64, u64)] {
        &self.values
    }

    /// Counts from (value µs, count) pairs in ascending value order, as
    /// [`RecordedCounts::values`] gives them (a sparse histogram kept elsewhere).
    pub fn from_values(values: Vec<(u64, u64)>) -> RecordedCounts {
        RecordedCounts { values }
    }

    /// Reads what [`LatencyHistogram::to_base64`] (or `to_base64_uncompressed`) wrote,
    /// straight into counts: the same as `from_base64(text)?.recorded()`, but walking the
    /// encoded (non-zero) counts instead of building and scanning a histogram's whole
    /// bucket array. This is what the controller does with every bucket of every report.
    /// Histograms of other shapes (another precision, from another implementation) take
    /// the general path, after the same header checks.
    ///
    /// Every header field is checked before anything is allocated or inflated (see
    /// [`MAX_COUNTS`] and its neighbours), so a hostile text costs at most a few
    /// megabytes, briefly, whatever it claims.
    pub fn from_base64(text: &str) -> Result<RecordedCounts, HistogramError> {
        let bytes = decode_base64(text)?;
        with_plain_v2(&bytes, |plain, header| {
            if header.digits == SIGNIFICANT_DIGITS && header.lowest == 1 {
                sparse_v2(plain, &header)
            } else {
                Ok(LatencyHistogram {
                    inner: full_v2(plain)?,
                }
                .recorded())
            }
        })
    }
}

/// The cookies of HdrHistogram's V2 encodings (plain and deflated), for 64-bit counts.
const V2_COOKIE: u32 = 0x1c84_9303 | 0x10;
const V2_COMPRESSED_COOKIE: u32 = 0x1c84_9304 | 0x10;
/// Bytes of a V2 header: cookie, payload length, normalizing offset, significant digits,
/// lowest discernible value, highest trackable value, integer-to-double ratio.
const V2_HEADER: usize = 40;
/// Bytes before the zlib stream of a V2 deflate encoding: cookie, compressed length.
const V2_COMPRESSED_HEADER: usize = 8;
/// Buckets of one power of two at three significant digits: 2,048 sub-buckets, of which
/// every bucket but the first uses the upper half (1,024 = 2^10).
const HALF_COUNT_MAGNITUDE: u32 = 10;
/// The most bytes one count takes in a V2 payload (a ZigZag LEB128 varint of a u64).
const MAX_VARINT_BYTES: usize = 9;

/// The largest lowest discernible value a decoded header may declare: one second in µs
/// (a millisecond in ns). A histogram coarser than that measures nothing loadwave reports,
/// and the bound keeps hdrhistogram's shifts far from overflow.
pub const MAX_LOWEST_DISCERNIBLE: u64 = 1_000_000;
/// The largest highest trackable value a decoded header may declare: 2^42 (about 51 days
/// in µs, over 1,000 times [`MAX_TRACKED_US`]). It admits other implementations' common
/// "one hour in nanoseconds" (3.6 × 10^12) setting; anything above is corrupt or hostile.
pub const MAX_HIGHEST_TRACKABLE: u64 = 1 << 42;
/// The most counts (bucket-array slots) a decoded header may imply: 2^18, so a decoded
/// histogram holds at most 2 MiB of counts. Ours need at most 23,552 (three digits up to
/// [`MAX_TRACKED_US`]); the smallest five-digit histogram needs exactly 2^18, so every
/// precision the format allows stays readable for a small range.
pub const MAX_COUNTS: usize = 1 << 18;
/// The most bytes a valid plain V2 encoding can take (header plus nine bytes per count of
/// [`MAX_COUNTS`]); a deflated one is never inflated past the bound its own header gives.
pub const MAX_V2_BYTES: usize = V2_HEADER + MAX_COUNTS * MAX_VARINT_BYTES;
/// The longest base64 text decoded: [`MAX_V2_BYTES`] plus deflate's worst-case growth on
/// incompressible data (5 bytes per 64 KiB stored block, zlib's 6, the 8 of the outer
/// header; 1/1024 and 64 bytes cover them), in base64. About 3.1 MB; longer text is
/// refused before it is decoded.
pub const MAX_BASE64_LEN: usize = (MAX_V2_BYTES + MAX_V2_BYTES / 1024 + 64).div_ceil(3) * 4;
/// Capacity of the per-thread inflate buffer kept between calls. Our largest valid
/// encoding is 40 + 23,552 × 9 bytes (about 212 kB), so normal reports never exceed it;
/// after an outlier (another implementation's five-digit histogram, or an attack) the
/// buffer is dropped rather than kept at its peak for the thread's life.
const INFLATED_KEEP: usize = 256 * 1024;

thread_local! {
    /// Inflated report histograms, one buffer per thread.
    static INFLATED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

fn corrupt(why: &str) -> HistogramError {
    HistogramError::Decode(why.to_string())
}

fn bad_header(field: &'static str, problem: String) -> HistogramError {
    HistogramError::Header { field, problem }
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(
        bytes.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(
        bytes.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// Base64 text to bytes, refusing text longer than any acceptable histogram first.
fn decode_base64(text: &str) -> Result<Vec<u8>, HistogramError> {
    if text.len() > MAX_BASE64_LEN {
        return Err(HistogramError::TooLong {
            len: text.len(),
            limit: MAX_BASE64_LEN,
        });
    }
    Ok(base64::engine::general_purpose::STANDARD.decode(text)?)
}

/// A plain V2 header whose every field was checked against the bounds above.
#[derive(Debug, Clone, Copy)]
struct V2Header {
    /// Payload bytes declared (at most `counts` × 9).
    payload_len: usize,
    /// Significant digits, 1–5.
    digits: u8,
    /// Lowest discernible value, 1 to [`MAX_LOWEST_DISCERNIBLE`].
    lowest: u64,
    /// Slots of the bucket array the header implies, at most [`MAX_COUNTS`].
    counts: usize,
}

impl V2Header {
    /// Checks the 40-byte plain V2 header at the start of `bytes`. Whether the payload it
    /// declares is present is the caller's to check (it may still be compressed).
    fn parse(bytes: &[u8]) -> Result<V2Header, HistogramError> {
        let word = |at| read_u32(bytes, at).ok_or_else(|| corrupt("truncated header"));
        let long = |at| read_u64(bytes, at).ok_or_else(|| corrupt("truncated header"));
        let cookie = word(0)?;
        if cookie != V2_COOKIE {
            return Err(bad_header(
                "cookie",
                format!("is {cookie:#010x}; a plain V2 histogram has {V2_COOKIE:#010x}"),
            ));
        }
        let payload_len = word(4)? as usize;
        let offset = word(8)?;
        if offset != 0 {
            return Err(bad_header(
                "normalizing offset",
                format!("is {offset}; only 0 is supported"),
            ));
        }
        let digits = word(12)?;
        if !(1..=5).contains(&digits) {
            return Err(bad_header(
                "significant digits",
                format!("is {digits}; must be 1 to 5"),
            ));
        }
        let lowest = long(16)?;
        if !(1..=MAX_LOWEST_DISCERNIBLE).contains(&lowest) {
            return Err(bad_header(
                "lowest discernible value",
                format!("is {lowest}; must be 1 to {MAX_LOWEST_DISCERNIBLE}"),
            ));
        }
        let highest = long(24)?;
        if highest < 2 * lowest || highest > MAX_HIGHEST_TRACKABLE {
            return Err(bad_header(
                "highest trackable value",
                format!(
                    "is {highest}; must be from twice the lowest ({}) to {MAX_HIGHEST_TRACKABLE}",
                    2 * lowest
                ),
            ));
        }
        let ratio = f64::from_bits(long(32)?);
        if ratio != 1.0 {
            return Err(bad_header(
                "integer to double ratio",
                format!("is {ratio}; only 1 is supported"),
            ));
        }
        let digits = digits as u8;
        let counts = counts_len(lowest, highest, digits);
        if counts > MAX_COUNTS {
            return Err(bad_header(
                "highest trackable value",
                format!(
                    "is {highest}: with {digits} digits from {lowest} that takes {counts} counts; at most {MAX_COUNTS} are accepted"
                ),
            ));
        }
        if payload_len > counts * MAX_VARINT_BYTES {
            return Err(bad_header(
                "payload length",
                format!(
                    "is {payload_len} bytes; {counts} counts take at most {}",
                    counts * MAX_VARINT_BYTES
                ),
            ));
        }
        Ok(V2Header {
            payload_len,
            digits,
            lowest,
            counts,
        })
    }
}

/// The length of the counts array hdrhistogram allocates for these bounds, computed the
/// way it does (`Histogram::new_with_bounds`), without allocating. The arguments are
/// already checked: digits 1–5, `lowest` ≤ [`MAX_LOWEST_DISCERNIBLE`], `highest` ≥ twice it.
fn counts_len(lowest: u64, highest: u64, digits: u8) -> usize {
    // Sub-buckets: the power of two at or above 2 × 10^digits.
    let largest = 2 * 10u64.pow(u32::from(digits));
    let sub_magnitude = 64 - (largest - 1).leading_zeros();
    let unit_magnitude = 63 - lowest.leading_zeros();
    let mut smallest_untrackable = (1u64 << sub_magnitude) << unit_magnitude;
    let mut buckets = 1usize;
    while smallest_untrackable <= highest {
        if smallest_untrackable > u64::MAX / 2 {
            buckets += 1;
            break;
        }
        smallest_untrackable <<= 1;
        buckets += 1;
    }
    (buckets + 1) << (sub_magnitude - 1)
}

/// Runs `read` on the plain V2 encoding of `bytes`, with its checked header: `bytes`
/// itself when it is plain (and holds the payload it declares), or its inflation when it
/// is deflated. Inflation reads the 40 header bytes first and checks them, then at most
/// the payload they declare (itself bounded by the counts the header implies): a deflate
/// bomb stops there. The inflate buffer is per thread and dropped after an outlier.
fn with_plain_v2<T>(
    bytes: &[u8],
    read: impl FnOnce(&[u8], V2Header) -> Result<T, HistogramError>,
) -> Result<T, HistogramError> {
    match read_u32(bytes, 0) {
        Some(V2_COOKIE) => {
            let header = V2Header::parse(bytes)?;
            let present = bytes.len().saturating_sub(V2_HEADER);
            if header.payload_len > present {
                return Err(bad_header(
                    "payload length",
                    format!(
                        "is {} bytes; only {present} are present",
                        header.payload_len
                    ),
                ));
            }
            read(bytes, header)
        }
        Some(V2_COMPRESSED_COOKIE) => INFLATED.with_borrow_mut(|buf| {
            let result = inflate_v2(bytes, buf).and_then(|header| read(buf, header));
            buf.clear();
            if buf.capacity() > INFLATED_KEEP {
                *buf = Vec::new();
            }
            result
        }),
        Some(cookie) => Err(bad_header(
            "cookie",
            format!("is {cookie:#010x}; not a V2 histogram"),
        )),
        None => Err(corrupt("truncated header")),
    }
}

/// Inflates a V2 deflate encoding into `out`, checking the inner header before the
/// payload is inflated, and inflating no more payload than the header declares.
fn inflate_v2(bytes: &[u8], out: &mut Vec<u8>) -> Result<V2Header, HistogramError> {
    out.clear();
    let len = read_u32(bytes, 4).ok_or_else(|| corrupt("truncated header"))? as usize;
    let present = bytes.len().saturating_sub(V2_COMPRESSED_HEADER);
    if len > present {
        return Err(bad_header(
            "compressed length",
            format!("is {len} bytes; only {present} are present"),
        ));
    }
    let body = &bytes[V2_COMPRESSED_HEADER..V2_COMPRESSED_HEADER + len];
    let mut zlib = flate2::read::ZlibDecoder::new(body);
    let mut head = [0u8; V2_HEADER];
    zlib.read_exact(&mut head)
        .map_err(|e| corrupt(&format!("compressed header: {e}")))?;
    let header = V2Header::parse(&head)?;
    out.extend_from_slice(&head);
    let inflated = (&mut zlib)
        .take(header.payload_len as u64)
        .read_to_end(out)
        .map_err(|e| corrupt(&format!("compressed payload: {e}")))?;
    if inflated < header.payload_len {
        return Err(corrupt("truncated compressed payload"));
    }
    // The encoders write nothing after the payload: more is a bomb behind an honest
    // header, refused after one more byte rather than inflated.
    if zlib.read(&mut [0u8; 1]).is_ok_and(|n| n > 0) {
        return Err(bad_header(
            "payload length",
            format!(
                "is {} bytes; the compressed stream holds more",
                header.payload_len
            ),
        ));
    }
    Ok(header)
}

/// A full decode by hdrhistogram of a plain V2 encoding whose header was checked (and
/// whose declared payload is present), so the allocations it makes from the header are
/// bounded.
fn full_v2(plain: &[u8]) -> Result<Histogram<u64>, HistogramError> {
    Deserializer::new()
        .deserialize(&mut &plain[..])
        .map_err(|e| HistogramError::Decode(format!("{e:?}")))
}

/// The non-zero counts of a plain V2 histogram of this crate's shape (three significant
/// digits, lowest value 1 µs; its header checked, its payload present). Counts are ZigZag
/// LEB128 varints; a negative one is a run of that many empty buckets. A count beyond the
/// bucket array the header implies is an error, as it is for hdrhistogram.
fn sparse_v2(bytes: &[u8], header: &V2Header) -> Result<RecordedCounts, HistogramError> {
    let payload = bytes
        .get(V2_HEADER..V2_HEADER + header.payload_len)
        .ok_or_else(|| corrupt("truncated payload"))?;
    let half = 1u64 << HALF_COUNT_MAGNITUDE;
    // Typical payloads are a few hundred bytes; the reservation never follows a hostile
    // length far.
    let mut values = Vec::with_capacity((payload.len() / 2).min(4096));
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
            if index >= header.counts as u64 {
                return Err(corrupt("count beyond the histogram's range"));
            }
            // The lowest value of bucket `index` (hdrhistogram's index-to-value mapping
            // for a lowest value of 1).
            let bucket = (index >> HALF_COUNT_MAGNITUDE).saturating_sub(1);
            let sub = if index < half {
                index
            } else {
                (index & (half - 1)) + half
            };
            values.push((sub << bucket, n as u64));
        }
        index += 1;
    }
    Ok(RecordedCounts { values })
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
    /// histogram from another HdrHistogram implementation), after the header checks of
    /// [`RecordedCounts::from_base64`]: the text, the header and the inflation are bounded
    /// before hdrhistogram allocates anything.
    pub fn from_base64(text: &str) -> Result<LatencyHistogram, HistogramError> {
        let bytes = decode_base64(text)?;
        let mut inner = with_plain_v2(&bytes, |plain, _| full_v2(plain))?;
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

    /// The counts-array length computed from a header is hdrhistogram's own.
    #[test]
    fn counts_len_matches_hdrhistogram() {
        for digits in 1..=5u8 {
            for lowest in [1u64, 2, 3, 1000, 1024, 999_999, MAX_LOWEST_DISCERNIBLE] {
                for highest in [2 * lowest, 2 * lowest + 1, 1 << 20, MAX_TRACKED_US, 1 << 42] {
                    if highest < 2 * lowest {
                        continue;
                    }
                    let h = Histogram::<u64>::new_with_bounds(lowest, highest, digits).unwrap();
                    assert_eq!(
                        counts_len(lowest, highest, digits),
                        h.distinct_values(),
                        "{digits} digits, {lowest}..{highest}"
                    );
                }
            }
        }
    }

    /// The widest histogram a driver can send (every slot up to one hour, each with a
    /// count that takes nine bytes) passes the header checks and fits the wire bound on a
    /// bucket's histogram text.
    #[test]
    fn the_widest_histogram_of_our_shape_fits_every_bound() {
        let mut h = LatencyHistogram::new();
        h.record_us(MAX_TRACKED_US);
        // Counts from 2^55 up take nine bytes; pseudo-random ones defeat deflate.
        let mut x: u64 = 7;
        let mut v = 1;
        while v <= MAX_TRACKED_US {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            h.inner.record_n(v, (1 << 55) | (x >> 10)).unwrap();
            v = h.inner.next_non_equivalent(v);
        }
        assert!(
            h.inner.distinct_values() <= 23_552,
            "{}",
            h.inner.distinct_values()
        );
        let text = h.to_base64().unwrap();
        let plain = h.to_base64_uncompressed().unwrap();
        // Nine bytes per slot up to one hour: 209 kB of V2, 279 kB of base64 when plain.
        assert!(plain.len() > 270_000, "{} bytes", plain.len());
        for text in [text, plain] {
            assert!(
                text.len() <= crate::message::MAX_BUCKET_HISTOGRAM_LEN,
                "{} bytes",
                text.len()
            );
            let direct = RecordedCounts::from_base64(&text).unwrap();
            assert_eq!(
                direct,
                LatencyHistogram::from_base64(&text).unwrap().recorded()
            );
            assert_eq!(direct, h.recorded());
        }
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
