//! The JSON a test is shown as: `GET /tests/{id}` and `loadwave run --json`.
//!
//! Everything here is derived on read from the folded state, so it can never disagree
//! with it.

use std::collections::BTreeMap;

use loadwave_proto::threshold::Metric;
use loadwave_proto::{DriverHealth, SendLag, TestSpec};
use serde::{Deserialize, Serialize};

use crate::aggregate::{Latency, round3};
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
    /// Requests the spec asked of it.
    pub expected_requests: u64,
    /// Requests it did not report: work lost with a lost driver, or left by a stop.
    pub missing_requests: u64,
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
    /// `drivers × requests_per_driver`.
    pub expected_requests: u64,
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

impl TestState {
    /// The state as users see it.
    pub fn view(&self) -> TestView {
        let summary = self.summary();
        let drivers: Vec<DriverView> = self
            .drivers
            .iter()
            .map(|d| DriverView {
                id: d.id.clone(),
                state: d.phase,
                requests: d.agg.requests,
                errors: d.agg.errors,
                expected_requests: self.spec.requests_per_driver,
                missing_requests: if d.phase == DriverPhase::Completed {
                    0
                } else if self.status.is_finished() {
                    self.spec.requests_per_driver.saturating_sub(d.agg.requests)
                } else {
                    0
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
            })
            .collect();
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
            spec: self.spec.clone(),
            created_at_ms: self.created_at_ms,
            start_at_ms: self.start_at_ms,
            finished_at_ms: self.finished_at_ms,
            drivers,
            timeline: self
                .timeline
                .iter()
                .map(|(second, agg)| {
                    let l = agg.latency();
                    TimelinePoint {
                        second: *second,
                        requests: agg.requests,
                        errors: agg.errors,
                        p50_ms: l.p50,
                        p90_ms: l.p90,
                        p99_ms: l.p99,
                        max_ms: l.max,
                    }
                })
                .collect(),
            summary,
            verdict,
            warnings,
        }
    }

    fn summary(&self) -> Summary {
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
        let elapsed_ms = self.drivers.iter().map(|d| d.elapsed_ms).max().unwrap_or(0);
        let duration_s = if t.requests > 0 {
            (elapsed_ms.max(1)) as f64 / 1000.0
        } else {
            0.0
        };
        Summary {
            requests: t.requests,
            expected_requests: self.spec.total_requests(),
            responses: t.responses(),
            errors: t.errors,
            error_rate: if t.requests == 0 {
                0.0
            } else {
                round6(t.errors as f64 / t.requests as f64)
            },
            status_codes: t
                .status_codes
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            error_kinds: t
                .error_kinds
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), *v))
                .collect(),
            late: t.late,
            duration_s,
            rps: if duration_s > 0.0 {
                round3(t.requests as f64 / duration_s)
            } else {
                0.0
            },
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
        }
    }

    fn verdict(&self, summary: &Summary, drivers: &[DriverView]) -> Verdict {
        let checks: Vec<Check> = self
            .spec
            .thresholds
            .iter()
            .map(|t| {
                let l = &summary.latency_ms;
                let actual = match t.metric {
                    Metric::Min => l.min,
                    Metric::Mean => l.mean,
                    Metric::P50 => l.p50,
                    Metric::P90 => l.p90,
                    Metric::P95 => l.p95,
                    Metric::P99 => l.p99,
                    Metric::P999 => l.p999,
                    Metric::Max => l.max,
                    Metric::ErrorRate => summary.error_rate,
                    Metric::Rps => summary.rps,
                    Metric::Requests => summary.requests as f64,
                    Metric::Errors => summary.errors as f64,
                };
                // A latency threshold over zero responses cannot be said to hold.
                let measurable = !t.metric.is_latency() || summary.responses > 0;
                Check {
                    threshold: t.to_string(),
                    actual,
                    passed: measurable && t.op.holds(actual, t.limit),
                }
            })
            .collect();
        let mut reasons = Vec::new();
        match self.status {
            TestStatus::Failed => reasons.push(format!(
                "the test failed: {}",
                self.error.as_deref().unwrap_or("unknown error")
            )),
            TestStatus::Stopped => reasons.push("the test was stopped before it finished".into()),
            _ => {}
        }
        for d in drivers.iter().filter(|d| d.state == DriverPhase::Lost) {
            let why = d
                .note
                .as_deref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default();
            reasons.push(format!(
                "driver {} was lost{why}: {} of its {} requests are missing",
                d.id, d.missing_requests, d.expected_requests
            ));
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

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}
