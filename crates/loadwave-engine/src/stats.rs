//! Recording what requests did, without a lock per request.
//!
//! Each engine thread's [`Recorder`] (its workers share it) records into a [`Bucket`] for
//! the second of the test it is in. When a completion falls into a later second (or a
//! worker is about to idle), the recorder merges its buckets into the driver's [`Pending`]
//! set, one short lock per thread per second, and reuses their allocations. The reporter
//! drains [`Pending`] every second.
//!
//! A test with a request mix records into one bucket per request of the mix, so each
//! request's figures (and histogram) travel on their own and merge into per-request
//! results; the totals are their sum.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use loadwave_proto::{BucketStats, ErrorKind, LatencyHistogram, SendLag};

use crate::client::Outcome;

/// Counts and latencies of the requests that completed in one second of the test.
#[derive(Debug, Clone, Default)]
pub struct Bucket {
    /// Seconds since the start instant.
    pub second: u32,
    /// The request of the mix (`None` without a mix).
    pub request: Option<u32>,
    /// Requests completed.
    pub requests: u64,
    /// Transport errors plus responses with status ≥ 400.
    pub errors: u64,
    /// Small, linear: a test sees a handful of distinct codes.
    status_codes: Vec<(u16, u64)>,
    error_kinds: [u64; 5],
    /// Requests that waited more than a millisecond past their due time for a connection.
    pub late: u64,
    sum_us: u64,
    min_us: u64,
    max_us: u64,
    /// Time requests were in flight, send to completion, µs.
    busy_us: u64,
    /// Completion of the last request, µs after the start instant.
    pub last_end_us: u64,
    histogram: LatencyHistogram,
}

impl Bucket {
    /// An empty bucket for `second`.
    pub fn new(second: u32) -> Self {
        Bucket {
            second,
            ..Bucket::default()
        }
    }

    /// An empty bucket for `second` and request `request` of a mix.
    pub fn for_request(second: u32, request: Option<u32>) -> Self {
        Bucket {
            second,
            request,
            ..Bucket::default()
        }
    }

    /// Adds time a request spent in flight.
    #[inline]
    pub fn add_busy(&mut self, us: u64) {
        self.busy_us += us;
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.requests == 0
    }

    /// Records one completed request.
    #[inline]
    pub fn record(&mut self, outcome: Outcome, latency_us: u64, end_us: u64, late: bool) {
        self.requests += 1;
        self.late += u64::from(late);
        self.last_end_us = self.last_end_us.max(end_us);
        match outcome {
            Outcome::Response(status) => {
                if status >= 400 {
                    self.errors += 1;
                }
                match self.status_codes.iter_mut().find(|(s, _)| *s == status) {
                    Some((_, n)) => *n += 1,
                    None => self.status_codes.push((status, 1)),
                }
                self.histogram.record_us(latency_us);
                self.sum_us += latency_us;
                self.min_us = if self.histogram.len() == 1 {
                    latency_us
                } else {
                    self.min_us.min(latency_us)
                };
                self.max_us = self.max_us.max(latency_us);
            }
            Outcome::Error(kind) => {
                self.errors += 1;
                self.error_kinds[kind.index()] += 1;
            }
        }
    }

    /// Adds `other` (of the same second) into this bucket.
    pub fn merge(&mut self, other: &Bucket) {
        let had_responses = !self.histogram.is_empty();
        self.requests += other.requests;
        self.errors += other.errors;
        self.late += other.late;
        self.busy_us += other.busy_us;
        self.last_end_us = self.last_end_us.max(other.last_end_us);
        for &(status, n) in &other.status_codes {
            match self.status_codes.iter_mut().find(|(s, _)| *s == status) {
                Some((_, m)) => *m += n,
                None => self.status_codes.push((status, n)),
            }
        }
        for (a, b) in self.error_kinds.iter_mut().zip(other.error_kinds) {
            *a += b;
        }
        if !other.histogram.is_empty() {
            self.min_us = if had_responses {
                self.min_us.min(other.min_us)
            } else {
                other.min_us
            };
            self.max_us = self.max_us.max(other.max_us);
            self.sum_us += other.sum_us;
            self.histogram
                .add(&other.histogram)
                .expect("auto-resizing histograms always merge");
        }
    }

    /// Empties the bucket for reuse in `second`, keeping its allocations.
    pub fn reset(&mut self, second: u32) {
        self.second = second;
        self.requests = 0;
        self.errors = 0;
        self.status_codes.clear();
        self.error_kinds = [0; 5];
        self.late = 0;
        self.busy_us = 0;
        self.sum_us = 0;
        self.min_us = 0;
        self.max_us = 0;
        self.last_end_us = 0;
        self.histogram.reset();
    }

    /// The wire form.
    pub fn to_wire(&self) -> BucketStats {
        BucketStats {
            second: self.second,
            request: self.request,
            requests: self.requests,
            errors: self.errors,
            status_codes: self.status_codes.iter().copied().collect(),
            error_kinds: ErrorKind::ALL
                .iter()
                .filter(|k| self.error_kinds[k.index()] > 0)
                .map(|k| (*k, self.error_kinds[k.index()]))
                .collect(),
            late: self.late,
            latency_sum_us: self.sum_us,
            latency_min_us: self.min_us,
            latency_max_us: self.max_us,
            busy_us: self.busy_us,
            histogram: self
                .histogram
                .to_base64()
                .expect("encoding into memory cannot fail"),
        }
    }
}

/// Buckets flushed by workers and not yet reported, by second, plus the driver's send
/// lag since the start.
#[derive(Debug, Default)]
pub struct Pending {
    /// By second, then request of the mix.
    buckets: Mutex<BTreeMap<(u32, Option<u32>), Bucket>>,
    send_lag: Mutex<LatencyHistogram>,
}

impl Pending {
    /// The send lag (due time to send, µs) of every paced request so far; `None` when
    /// nothing was paced.
    pub fn send_lag(&self) -> Option<SendLag> {
        let lag = self.send_lag.lock().expect("stats lock poisoned");
        (!lag.is_empty()).then(|| SendLag {
            count: lag.len(),
            p50_us: lag.quantile_us(0.50),
            p99_us: lag.quantile_us(0.99),
            max_us: lag.max_us(),
        })
    }

    /// Merges a worker's bucket in.
    pub fn absorb(&self, bucket: &Bucket) {
        let mut buckets = self.buckets.lock().expect("stats lock poisoned");
        buckets
            .entry((bucket.second, bucket.request))
            .or_insert_with(|| Bucket::for_request(bucket.second, bucket.request))
            .merge(bucket);
    }

    /// Takes everything flushed so far, oldest second first.
    pub fn drain(&self) -> Vec<Bucket> {
        let mut buckets = self.buckets.lock().expect("stats lock poisoned");
        std::mem::take(&mut *buckets).into_values().collect()
    }
}

/// An engine thread's recorder: a local bucket per request of the mix, flushed to
/// [`Pending`] when the second changes.
pub struct Recorder {
    start: Instant,
    second: u32,
    /// One per request of the mix (one without a mix).
    local: Vec<Bucket>,
    send_lag: LatencyHistogram,
    pending: Arc<Pending>,
}

impl Recorder {
    /// A recorder for a run without a request mix that started (or starts) at `start`.
    pub fn new(start: Instant, pending: Arc<Pending>) -> Self {
        Recorder::with_requests(start, pending, 1, false)
    }

    /// A recorder for `requests` requests; `mixed` when they are reported one by one.
    pub fn with_requests(
        start: Instant,
        pending: Arc<Pending>,
        requests: usize,
        mixed: bool,
    ) -> Self {
        Recorder {
            start,
            second: 0,
            local: (0..requests.max(1))
                .map(|i| Bucket::for_request(0, mixed.then_some(i as u32)))
                .collect(),
            send_lag: LatencyHistogram::new(),
            pending,
        }
    }

    fn second_of(&self, at: Instant) -> u32 {
        (at.saturating_duration_since(self.start).as_secs()).min(u64::from(u32::MAX)) as u32
    }

    /// Records a request that was due (or sent) at `from` and completed at `end`.
    #[inline]
    pub fn record(&mut self, outcome: Outcome, from: Instant, end: Instant, late: bool) {
        self.record_request(0, outcome, from, from, end, late);
    }

    /// Records request `request` of the mix: due (or sent) at `from`, on the wire from
    /// `sent` and completed at `end`.
    #[inline]
    pub fn record_request(
        &mut self,
        request: usize,
        outcome: Outcome,
        from: Instant,
        sent: Instant,
        end: Instant,
        late: bool,
    ) {
        let second = self.second_of(end);
        if second != self.second {
            self.flush();
            self.second = second;
            for b in &mut self.local {
                b.second = second;
            }
        }
        let latency = duration_us(end.saturating_duration_since(from));
        // Closed model: sent at `from`, so the time in flight is the latency itself.
        let busy = if sent == from {
            latency
        } else {
            duration_us(end.saturating_duration_since(sent))
        };
        let end_us = duration_us(end.saturating_duration_since(self.start));
        let bucket = &mut self.local[request];
        bucket.record(outcome, latency, end_us, late);
        bucket.add_busy(busy);
    }

    /// Records how long after its due time a paced request went out.
    #[inline]
    pub fn record_send_lag(&mut self, lag: Duration) {
        self.send_lag.record_us(duration_us(lag));
    }

    /// Flushes if the local buckets belong to a second that has passed, so an idle worker
    /// does not hold data back from the live view.
    pub fn flush_if_stale(&mut self, now: Instant) {
        if self.second_of(now) != self.second && self.local.iter().any(|b| !b.is_empty()) {
            self.flush();
        }
    }

    /// Hands the local buckets to the reporter.
    pub fn flush(&mut self) {
        if !self.send_lag.is_empty() {
            self.pending
                .send_lag
                .lock()
                .expect("stats lock poisoned")
                .add(&self.send_lag)
                .expect("auto-resizing histograms always merge");
            self.send_lag.reset();
        }
        for bucket in &mut self.local {
            if !bucket.is_empty() {
                self.pending.absorb(bucket);
                let second = bucket.second;
                bucket.reset(second);
            }
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.flush();
    }
}

fn duration_us(d: Duration) -> u64 {
    d.as_micros().min(u128::from(u64::MAX)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_merge_exactly() {
        let mut a = Bucket::new(3);
        a.record(Outcome::Response(200), 100, 10, false);
        a.record(Outcome::Response(503), 300, 20, true);
        let mut b = Bucket::new(3);
        b.record(Outcome::Response(200), 50, 30, false);
        b.record(Outcome::Error(ErrorKind::Connect), 0, 40, false);
        a.merge(&b);
        let w = a.to_wire();
        assert_eq!((w.requests, w.errors, w.late), (4, 2, 1));
        assert_eq!(w.status_codes[&200], 2);
        assert_eq!(w.status_codes[&503], 1);
        assert_eq!(w.error_kinds[&ErrorKind::Connect], 1);
        assert_eq!((w.latency_min_us, w.latency_max_us), (50, 300));
        assert_eq!(w.latency_sum_us, 450);
        assert_eq!(a.last_end_us, 40);
    }

    #[test]
    fn recorder_splits_by_second_and_flushes_on_drop() {
        let pending = Arc::new(Pending::default());
        let start = Instant::now();
        {
            let mut r = Recorder::new(start, pending.clone());
            let ok = Outcome::Response(200);
            r.record(ok, start, start + Duration::from_millis(10), false);
            r.record(ok, start, start + Duration::from_millis(900), false);
            r.record(ok, start, start + Duration::from_millis(1500), false);
            r.flush_if_stale(start + Duration::from_millis(2100));
            r.record(ok, start, start + Duration::from_millis(2500), false);
        }
        let drained = pending.drain();
        let by_second: Vec<(u32, u64)> = drained.iter().map(|b| (b.second, b.requests)).collect();
        assert_eq!(by_second, vec![(0, 2), (1, 1), (2, 1)]);
        assert!(pending.drain().is_empty());
    }

    #[test]
    fn a_mix_records_each_request_apart() {
        let pending = Arc::new(Pending::default());
        let start = Instant::now();
        {
            let mut r = Recorder::with_requests(start, pending.clone(), 2, true);
            let ok = Outcome::Response(200);
            let at = |ms| start + Duration::from_millis(ms);
            r.record_request(0, ok, at(0), at(0), at(10), false);
            r.record_request(1, ok, at(0), at(5), at(20), false);
            r.record_request(0, ok, at(0), at(15), at(30), false);
            r.record_request(
                1,
                Outcome::Error(ErrorKind::Reset),
                at(1000),
                at(1000),
                at(1100),
                false,
            );
        }
        let drained: Vec<BucketStats> = pending.drain().iter().map(Bucket::to_wire).collect();
        let keys: Vec<(u32, Option<u32>, u64)> = drained
            .iter()
            .map(|b| (b.second, b.request, b.requests))
            .collect();
        assert_eq!(
            keys,
            vec![(0, Some(0), 2), (0, Some(1), 1), (1, Some(1), 1)]
        );
        // Busy time counts from the send: 10 + 15 ms for request 0.
        assert_eq!(drained[0].busy_us, 25_000);
        assert_eq!(drained[1].busy_us, 15_000);
        assert_eq!(drained[2].errors, 1);
        // Without a mix, buckets carry no request.
        let mut r = Recorder::new(start, pending.clone());
        r.record(
            Outcome::Response(200),
            start,
            start + Duration::from_millis(1),
            false,
        );
        r.flush();
        assert_eq!(pending.drain()[0].request, None);
    }
}
