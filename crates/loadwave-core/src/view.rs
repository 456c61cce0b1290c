//! The JSON a test is shown as: `GET /tests/{id}` and `loadwave run --json`.
//!
//! Everything here is derived on read from the folded state, so it can never disagree
//! with it.

use std::collections::BTreeMap;

use loadwave_proto::threshold::{Metric, Threshold};
use loadwave_proto::{DriverHealth, Profile, SendLag, TestSpec};
use serde::{Deserialize, Serialize};

use crate::aggregate::{Aggregate, Latency, round3};
use crate::state::{DriverPhase, TestState, TestStatus};

/// A test as users see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TestView {
    /// The test id.
    pub id: String,
    /// `pending`, `running`, `completed`, `failed` or `stopped`.
    pub status: TestStatus,
    /// Why the test failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What was asked.
    pub spec: TestSpec,
    /// When the test was created, ms since the epoch.
    pub created_at_ms: u64,
    /// The common start instant, once triggered.
    pub start_at_ms: Option<u64>,
    /// When the test ended.
    pub finished_at_ms: Option<u64>,
    /// Every driver of the test.
    pub drivers: Vec<DriverView>,
    /// The merged result.
    pub summary: Summary,
    /// Per-second figures, from the merged per-second histograms.
    pub timeline: Vec<TimelinePoint>,
    /// Pass or fail, once the test has ended.
    pub verdict: Option<Verdict>,
    /// Things that make the numbers less trustworthy (a saturated driver, say).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The abort threshold that stopped the test, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aborted: Option<AbortView>,
    /// Reports about this test that were rejected whole: a value no plan allows (a second
    /// beyond the end, a sequence number out of range) or a histogram that does not
    /// decode. Their requests are not in the figures.
    #[serde(default)]
    pub rejected_messages: u64,
}

/// An abort threshold that broke and stopped the test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AbortView {
    /// The threshold as written.
    pub threshold: String,
    /// What was measured when it broke, in the metric's base unit (ms, fraction, count,
    /// rps).
    pub actual: f64,
    /// When, seconds after the common start instant.
    pub at_s: f64,
}

/// One driver's part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DriverView {
    /// Driver id.
    pub id: String,
    /// `waiting`, `ready`, `running`, `completed`, `stopped` or `lost`.
    pub state: DriverPhase,
    /// Requests reported.
    pub requests: u64,
    /// Errors reported.
    pub errors: u64,
    /// Requests the spec plans for it; `null` when only time bounds a closed-model test.
    pub expected_requests: Option<u64>,
    /// Requests it did not report: work lost with a lost driver, or left by a stop.
    pub missing_requests: u64,
    /// Time-bound tests without a known request count: the seconds of the plan it did
    /// not run (lost or stopped early).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_s: Option<f64>,
    /// Reports folded.
    pub reports: u64,
    /// Reports numbered before its final one that never arrived.
    pub missing_reports: u64,
    /// From the start instant to its last completed request, ms.
    pub elapsed_ms: u64,
    /// How long after the common start instant its first request went out, ms.
    pub start_delay_ms: Option<f64>,
    /// Open model: how late it sent requests that had a free connection, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_lag_ms: Option<SendLagMs>,
    /// Its own latency figures (the summary merges every driver's histogram).
    pub latency_ms: Latency,
    /// Its latest health report.
    pub health: DriverHealth,
    /// Whether it reported being saturated at any point.
    pub saturated: bool,
    /// When it was last heard from, ms since the epoch.
    pub last_seen_ms: u64,
    /// Why it ended early, as its launcher tells it (an ECS task's stop reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The merged result of every driver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Summary {
    /// Requests completed, each counted once.
    pub requests: u64,
    /// What the spec plans (`drivers × requests_per_driver`, or the open model's
    /// schedule); `null` when only time bounds a closed-model test.
    pub expected_requests: Option<u64>,
    /// Requests that got an HTTP response (of any status).
    pub responses: u64,
    /// Transport errors plus responses with status ≥ 400.
    pub errors: u64,
    /// `errors / requests`.
    pub error_rate: f64,
    /// Responses by status code.
    pub status_codes: BTreeMap<String, u64>,
    /// Transport errors by kind (`connect`, `timeout`, `reset`, `tls`, `other`).
    pub error_kinds: BTreeMap<String, u64>,
    /// Tsunami: requests that waited more than 1 ms past their due time for a free
    /// connection (every connection was busy).
    pub late: u64,
    /// From the start instant to the last completed request, seconds.
    pub duration_s: f64,
    /// `requests / duration_s`.
    pub rps: f64,
    /// Spread of the drivers' first requests around the common start instant, ms.
    pub start_skew_ms: Option<f64>,
    /// Open model: the least precise driver's send lag (each figure the largest across
    /// drivers), ms. The tester's own timing error, already inside every latency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_lag_ms: Option<SendLagMs>,
    /// Response times of every response, ms.
    pub latency_ms: Latency,
    /// With a request mix: each request's own figures, in the mix's order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub by_request: Vec<RequestSummary>,
}

/// One request of a mix, on its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RequestSummary {
    /// Its name.
    pub name: String,
    /// Its method.
    pub method: String,
    /// Its URL.
    pub url: String,
    /// Its weight in the mix.
    pub weight: f64,
    /// Requests completed.
    pub requests: u64,
    /// Responses received (of any status).
    pub responses: u64,
    /// Transport errors plus responses with status ≥ 400.
    pub errors: u64,
    /// `errors / requests`.
    pub error_rate: f64,
    /// Responses by status code.
    pub status_codes: BTreeMap<String, u64>,
    /// Transport errors by kind.
    pub error_kinds: BTreeMap<String, u64>,
    /// `requests / duration_s` of the test.
    pub rps: f64,
    /// Its response times, ms, from its own merged histogram.
    pub latency_ms: Latency,
}

/// How long after their due times a driver sent paced requests, ms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SendLagMs {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl SendLagMs {
    fn of(lag: &SendLag) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        SendLagMs {
            p50: ms(lag.p50_us),
            p99: ms(lag.p99_us),
            max: ms(lag.max_us),
        }
    }
}

/// Gap seconds (no completion) a timeline view makes up at most.
pub const MAX_GAP_SECONDS: u32 = 86_400;

/// A driver whose p99 send lag exceeds this gets a warning: its pacing was off by more
/// than the precision users expect.
const SEND_LAG_WARN_MS: f64 = 1.0;

/// One second of the test, all drivers merged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TimelinePoint {
    /// Seconds since the start instant.
    pub second: u32,
    /// Requests completed in that second (equal to its rps).
    pub requests: u64,
    /// Errors in that second.
    pub errors: u64,
    /// Median, ms.
    pub p50_ms: f64,
    /// 90th percentile, ms.
    pub p90_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Slowest, ms.
    pub max_ms: f64,
    /// Requests in flight on average during the second (time in flight of the requests
    /// completed in it, over one second), all drivers together: the achieved concurrency.
    #[serde(default)]
    pub concurrency: f64,
    /// Open model: the requests the plan had due in that second, all drivers together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planned_requests: Option<u64>,
    /// Closed model: the concurrency the plan asked for in that second (its mean), all
    /// drivers together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planned_concurrency: Option<f64>,
    /// With a request mix: each request's figures in that second.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub by_request: Vec<TimelineRequest>,
}

/// One request of a mix in one second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TimelineRequest {
    /// Its name.
    pub name: String,
    /// Requests completed in that second.
    pub requests: u64,
    /// Errors in that second.
    pub errors: u64,
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
}

/// The outcome of the thresholds and of the test's completeness.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Verdict {
    /// True when the test completed, no work was lost and every threshold held.
    pub passed: bool,
    /// Each threshold with the measured value.
    pub checks: Vec<Check>,
    /// Why it did not pass, besides failed checks.
    pub reasons: Vec<String>,
}

/// One threshold, evaluated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Check {
    /// As written.
    pub threshold: String,
    /// The measured value, in the metric's base unit (ms, fraction, count, rps).
    pub actual: f64,
    /// Whether it held.
    pub passed: bool,
}

/// A metric of `agg` in its base unit, or `None` when nothing was measured for it
/// (a latency without responses, an error rate without requests).
pub(crate) fn measure(metric: Metric, agg: &Aggregate, duration_s: f64) -> Option<f64> {
    if metric.is_latency() && agg.responses() == 0 {
        return None;
    }
    let latency = || agg.latency();
    Some(match metric {
        Metric::Min => latency().min,
        Metric::Mean => latency().mean,
        Metric::P50 => latency().p50,
        Metric::P90 => latency().p90,
        Metric::P95 => latency().p95,
        Metric::P99 => latency().p99,
        Metric::P999 => latency().p999,
        Metric::Max => latency().max,
        Metric::ErrorRate => return agg.error_rate(),
        Metric::Rps if duration_s <= 0.0 => return None,
        Metric::Rps => round3(agg.requests as f64 / duration_s),
        Metric::Requests => agg.requests as f64,
        Metric::Errors => agg.errors as f64,
    })
}

/// A measured value for a sentence, in the unit its metric speaks.
fn describe(metric: Metric, value: f64) -> String {
    match metric {
        Metric::ErrorRate => format!("{:.2}%", value * 100.0),
        Metric::Rps => format!("{value:.1} rps"),
        Metric::Requests | Metric::Errors => format!("{value:.0}"),
        _ => format!("{value:.2} ms"),
    }
}

fn code_counts(agg: &Aggregate) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
    (
        agg.status_codes
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
        agg.error_kinds
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), *v))
            .collect(),
    )
}

impl TestState {
    /// The state as users see it.
    pub fn view(&self) -> TestView {
        self.view_with_sealed(None)
    }

    /// The state as users see it, with `sealed` (the seconds of every stored chunk that is
    /// not in memory, read by [`crate::ChunkReader`]) in its timeline: a running test's
    /// whole view without putting its sealed seconds back into memory.
    pub fn view_with_sealed(&self, sealed: Option<&BTreeMap<u32, Aggregate>>) -> TestView {
        let profile = Profile::of(&self.spec);
        let summary = self.summary(&profile);
        let drivers = self.driver_views(&profile);
        let mut warnings = Vec::new();
        for d in self.drivers.iter().filter(|d| d.peak_health.saturated) {
            warnings.push(format!(
                "driver {} was saturated (peak CPU {:.0}% of {} cores, scheduling lag up to {:.1} ms): it may have sent less load than asked",
                d.id, d.peak_health.cpu_percent, d.peak_health.cores, d.peak_health.lag_ms_max
            ));
        }
        for d in &drivers {
            if let Some(lag) = d.send_lag_ms.filter(|l| l.p99 > SEND_LAG_WARN_MS) {
                warnings.push(format!(
                    "driver {} sent 1% of its paced requests more than {:.2} ms after their due times (max {:.2} ms): it was too busy to pace precisely, and that delay is inside the latencies",
                    d.id, lag.p99, lag.max
                ));
            }
        }
        if profile.is_open() && summary.requests > 0 && summary.late * 100 >= summary.requests {
            warnings.push(format!(
                "{} of {} requests ({:.1}%) found all {} connections of their driver busy at their due time and went out late: the target answered too slowly for the plan (the delay is in the latencies); a higher concurrency keeps the schedule",
                summary.late,
                summary.requests,
                100.0 * summary.late as f64 / summary.requests as f64,
                self.spec.concurrency()
            ));
        }
        if self.rejected > 0 {
            warnings.push(format!(
                "{} reports were rejected (values the test's plan does not allow, or histograms that do not decode): their requests are not counted",
                self.rejected
            ));
        }
        if self.duplicates > 0 {
            warnings.push(format!(
                "{} re-delivered reports were ignored",
                self.duplicates
            ));
        }
        let verdict = self
            .status
            .is_finished()
            .then(|| self.verdict(&summary, &drivers));
        TestView {
            id: self.id.clone(),
            status: self.status,
            error: self.error.clone(),
            // Views leave the process (API, report, CLI): secrets stay with the drivers.
            spec: self.spec.redacted(),
            created_at_ms: self.created_at_ms,
            start_at_ms: self.start_at_ms,
            finished_at_ms: self.finished_at_ms,
            drivers,
            timeline: self.timeline_points(&profile, sealed),
            summary,
            verdict,
            warnings,
            aborted: self.aborted.as_ref().map(|a| AbortView {
                threshold: a.threshold.clone(),
                actual: a.actual,
                at_s: a.at_ms as f64 / 1_000.0,
            }),
            rejected_messages: self.rejected,
        }
    }

    /// The summary and (once finished) the verdict, without the timeline: a list line.
    pub fn headline(&self) -> (Summary, Option<Verdict>) {
        let profile = Profile::of(&self.spec);
        let summary = self.summary(&profile);
        let verdict = self
            .status
            .is_finished()
            .then(|| self.verdict(&summary, &self.driver_views(&profile)));
        (summary, verdict)
    }

    fn driver_views(&self, profile: &Profile) -> Vec<DriverView> {
        let duration = profile.duration_s;
        self.drivers
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let expected = profile.planned_requests(i as u32);
                let short = d.phase != DriverPhase::Completed && self.status.is_finished();
                DriverView {
                    id: d.id.clone(),
                    state: d.phase,
                    requests: d.agg.requests,
                    errors: d.agg.errors,
                    expected_requests: expected,
                    missing_requests: match expected {
                        Some(e) if short => e.saturating_sub(d.agg.requests),
                        _ => 0,
                    },
                    missing_s: match (expected, duration) {
                        (None, Some(total)) if short => {
                            Some(round3((total - d.elapsed_ms as f64 / 1_000.0).max(0.0)))
                        }
                        _ => None,
                    },
                    reports: d.seqs.len(),
                    missing_reports: d.missing_reports(),
                    elapsed_ms: d.elapsed_ms,
                    start_delay_ms: d.start_delay_us.map(|us| us as f64 / 1000.0),
                    send_lag_ms: d.send_lag.as_ref().map(SendLagMs::of),
                    latency_ms: d.agg.latency(),
                    health: d.health.clone(),
                    saturated: d.peak_health.saturated,
                    last_seen_ms: d.last_seen_ms,
                    note: d.note.clone(),
                }
            })
            .collect()
    }

    /// Every second from the start to the latest one with data (seconds without any
    /// completion show as zeros beside what was planned, so a stalled target is seen).
    ///
    /// Built from the seconds that exist: gap seconds are made up only between them (and
    /// from 0 to the first), within what the fold accepts now ([`TestState::max_second`]),
    /// and at most [`MAX_GAP_SECONDS`] in all, so a stored second far out (from a build
    /// before the bounds) costs one point, not every second up to it.
    fn timeline_points(
        &self,
        profile: &Profile,
        sealed: Option<&BTreeMap<u32, Aggregate>>,
    ) -> Vec<TimelinePoint> {
        // The seconds in memory, and those read from the store for this view (a second in
        // both is the one in memory: newer).
        let mut seconds: Vec<(u32, &Aggregate)> =
            self.timeline.iter().map(|(s, a)| (*s, a)).collect();
        if let Some(sealed) = sealed {
            seconds.extend(
                sealed
                    .iter()
                    .filter(|(s, _)| !self.timeline.contains_key(s))
                    .map(|(s, a)| (*s, a)),
            );
            seconds.sort_unstable_by_key(|(s, _)| *s);
        }
        if seconds.is_empty() {
            return Vec::new();
        }
        let names = self.spec.mix_names();
        let empty = Aggregate::default();
        let point = |second: u32, agg: &Aggregate| {
            let l = agg.latency();
            TimelinePoint {
                second,
                requests: agg.requests,
                errors: agg.errors,
                p50_ms: l.p50,
                p90_ms: l.p90,
                p99_ms: l.p99,
                max_ms: l.max,
                concurrency: round3(agg.busy_us as f64 / 1e6),
                planned_requests: profile.planned_in_second(second),
                planned_concurrency: profile.planned_concurrency(second).map(round3),
                by_request: names
                    .iter()
                    .enumerate()
                    .map(|(i, name)| {
                        let a = agg.request(i).unwrap_or(&empty);
                        let l = a.latency();
                        TimelineRequest {
                            name: name.to_string(),
                            requests: a.requests,
                            errors: a.errors,
                            p50_ms: l.p50,
                            p99_ms: l.p99,
                        }
                    })
                    .collect(),
            }
        };
        let fill_limit = self.max_second();
        let mut gaps_left = MAX_GAP_SECONDS;
        let mut out = Vec::with_capacity(seconds.len());
        // A state read without its sealed chunks holds only the tail: no gaps are made up
        // for the seconds that are not in memory.
        let mut next = if self.is_complete() || sealed.is_some() {
            Some(0)
        } else {
            seconds.first().map(|(s, _)| *s)
        };
        for (second, agg) in seconds {
            if let Some(from) = next {
                let to = second.min(fill_limit.saturating_add(1));
                let n = to.saturating_sub(from).min(gaps_left);
                out.extend((from..from + n).map(|s| point(s, &empty)));
                gaps_left -= n;
            }
            out.push(point(second, agg));
            next = second.checked_add(1);
        }
        out
    }

    fn summary(&self, profile: &Profile) -> Summary {
        let t = &self.total;
        let delays: Vec<u64> = self
            .drivers
            .iter()
            .filter_map(|d| d.start_delay_us)
            .collect();
        let start_skew_ms = match (delays.iter().min(), delays.iter().max()) {
            (Some(lo), Some(hi)) if delays.len() > 1 => Some((hi - lo) as f64 / 1000.0),
            _ => None,
        };
        let duration_s = self.duration_s();
        let rate = |requests: u64| {
            if duration_s > 0.0 {
                round3(requests as f64 / duration_s)
            } else {
                0.0
            }
        };
        let (status_codes, error_kinds) = code_counts(t);
        let empty = Aggregate::default();
        let by_request = self
            .spec
            .requests
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, r)| {
                let a = t.request(i).unwrap_or(&empty);
                let (status_codes, error_kinds) = code_counts(a);
                RequestSummary {
                    name: r.name.clone(),
                    method: r.method.clone(),
                    url: r.url.clone(),
                    weight: r.weight,
                    requests: a.requests,
                    responses: a.responses(),
                    errors: a.errors,
                    error_rate: a.error_rate().unwrap_or(0.0),
                    status_codes,
                    error_kinds,
                    rps: rate(a.requests),
                    latency_ms: a.latency(),
                }
            })
            .collect();
        Summary {
            requests: t.requests,
            expected_requests: profile.planned_total(),
            responses: t.responses(),
            errors: t.errors,
            error_rate: t.error_rate().unwrap_or(0.0),
            status_codes,
            error_kinds,
            late: t.late,
            duration_s,
            rps: rate(t.requests),
            start_skew_ms,
            send_lag_ms: self
                .drivers
                .iter()
                .filter_map(|d| d.send_lag.as_ref().map(SendLagMs::of))
                .reduce(|a, b| SendLagMs {
                    p50: a.p50.max(b.p50),
                    p99: a.p99.max(b.p99),
                    max: a.max.max(b.max),
                }),
            latency_ms: t.latency(),
            by_request,
        }
    }

    /// Seconds from the start instant to the latest completion any driver reported (0
    /// before the first): the time base of `rps`, live and in the summary alike.
    pub(crate) fn duration_s(&self) -> f64 {
        if self.total.requests == 0 {
            return 0.0;
        }
        let elapsed_ms = self.drivers.iter().map(|d| d.elapsed_ms).max().unwrap_or(0);
        elapsed_ms.max(1) as f64 / 1000.0
    }

    /// The merged data a threshold is judged on: the test's, or its request's (`None`
    /// while that request has no data yet).
    pub(crate) fn threshold_data(&self, t: &Threshold) -> Option<&Aggregate> {
        match &t.request {
            None => Some(&self.total),
            Some(name) => self
                .spec
                .requests
                .as_ref()?
                .iter()
                .position(|r| r.name == *name)
                .and_then(|i| self.total.request(i)),
        }
    }

    fn verdict(&self, summary: &Summary, drivers: &[DriverView]) -> Verdict {
        let empty = Aggregate::default();
        let checks: Vec<Check> = self
            .spec
            .thresholds
            .iter()
            .map(|t| {
                let agg = self.threshold_data(t).unwrap_or(&empty);
                // A threshold over nothing measured cannot be said to hold.
                let measured = measure(t.metric, agg, summary.duration_s);
                Check {
                    threshold: t.to_string(),
                    actual: measured.unwrap_or(0.0),
                    passed: measured.is_some_and(|v| t.op.holds(v, t.limit)),
                }
            })
            .collect();
        let mut reasons = Vec::new();
        match (self.status, &self.aborted) {
            (TestStatus::Failed, _) => reasons.push(format!(
                "the test failed: {}",
                self.error.as_deref().unwrap_or("unknown error")
            )),
            (TestStatus::Stopped, Some(a)) => {
                let metric = self
                    .spec
                    .thresholds
                    .iter()
                    .find(|t| t.as_str() == a.threshold)
                    .map_or(Metric::Requests, |t| t.metric);
                reasons.push(format!(
                    "aborted {:.1} s in: `{}` broke (measured {})",
                    a.at_ms as f64 / 1_000.0,
                    a.threshold,
                    describe(metric, a.actual)
                ));
            }
            (TestStatus::Stopped, None) => {
                reasons.push("the test was stopped before it finished".into())
            }
            _ => {}
        }
        for d in drivers.iter().filter(|d| d.state == DriverPhase::Lost) {
            let why = d
                .note
                .as_deref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default();
            match (d.expected_requests, d.missing_s) {
                (Some(expected), _) => reasons.push(format!(
                    "driver {} was lost{why}: {} of its {} requests are missing",
                    d.id, d.missing_requests, expected
                )),
                (None, Some(s)) => reasons.push(format!(
                    "driver {} was lost{why}: the last {s:.1} s of its load are missing",
                    d.id
                )),
                (None, None) => reasons.push(format!("driver {} was lost{why}", d.id)),
            }
        }
        for d in drivers.iter().filter(|d| d.missing_reports > 0) {
            reasons.push(format!(
                "driver {}: {} reports never arrived",
                d.id, d.missing_reports
            ));
        }
        let failed = checks.iter().filter(|c| !c.passed).count();
        if failed > 0 {
            reasons.push(format!("{failed} of {} thresholds failed", checks.len()));
        }
        Verdict {
            passed: reasons.is_empty(),
            checks,
            reasons,
        }
    }
}
