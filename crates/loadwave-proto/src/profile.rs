//! Load profiles: what a spec plans, request by request and second by second.
//!
//! The driver and the orchestrator read the same plan from a spec: the driver to know
//! when request *k* is due (open model) or how many connections to hold (closed model),
//! the orchestrator to know how many requests each driver will send and what each second
//! of the timeline should have seen. Both call into this module, so the two never
//! disagree about a schedule.
//!
//! - A [`Curve`] is a piecewise-linear function of time since the common start: the
//!   whole test's arrival rate (Tsunami with `rate` or `stages`) or one driver's
//!   concurrency (Avalanche with `stages`). It integrates and inverts in closed form.
//! - Open model with a curve: the whole test's request *j* is due when the curve's
//!   integral reaches *j*; driver *i* of *n* sends the requests with `j ≡ i (mod n)`, so
//!   the drivers interleave and each one paces its share from the common start instant.
//! - Closed model with a curve: worker *w* of a driver holds a connection while the
//!   curve is above `w + ½`, so the number of busy connections is the curve rounded.
//!
//! [`Profile`] puts a spec's bounds (request count, duration) and pacing together.

use crate::spec::{Stage, TestSpec, TestType};

/// Floating-point slack when counting integer crossings of a computed value.
const EPS: f64 = 1e-9;

#[derive(Debug, Clone, PartialEq)]
struct Piece {
    /// Seconds since the start.
    start: f64,
    /// Seconds; `INFINITY` only for a flat last piece.
    len: f64,
    from: f64,
    to: f64,
    /// The curve's integral up to `start`.
    before: f64,
}

impl Piece {
    fn slope(&self) -> f64 {
        if self.len.is_finite() && self.len > 0.0 {
            (self.to - self.from) / self.len
        } else {
            0.0
        }
    }

    fn area(&self) -> f64 {
        if self.len.is_finite() {
            (self.from + self.to) / 2.0 * self.len
        } else if self.from > 0.0 {
            f64::INFINITY
        } else {
            0.0
        }
    }

    /// The value `tau` seconds into the piece.
    fn value(&self, tau: f64) -> f64 {
        self.from + self.slope() * tau
    }

    /// The integral over the first `tau` seconds of the piece.
    fn integral(&self, tau: f64) -> f64 {
        self.from * tau + self.slope() * tau * tau / 2.0
    }
}

/// A piecewise-linear function of seconds since the start, zero after its end.
#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    pieces: Vec<Piece>,
}

impl Curve {
    /// Linear ramps from `start_target` through each stage's target.
    pub fn from_stages(start_target: f64, stages: &[Stage]) -> Curve {
        let mut pieces = Vec::with_capacity(stages.len());
        let (mut at, mut from, mut before) = (0.0, start_target, 0.0);
        for stage in stages {
            let piece = Piece {
                start: at,
                len: stage.duration_s,
                from,
                to: stage.target,
                before,
            };
            before += piece.area();
            at += stage.duration_s;
            from = stage.target;
            pieces.push(piece);
        }
        Curve { pieces }
    }

    /// `value` from the start for `len_s` seconds, or for ever.
    pub fn flat(value: f64, len_s: Option<f64>) -> Curve {
        Curve {
            pieces: vec![Piece {
                start: 0.0,
                len: len_s.unwrap_or(f64::INFINITY),
                from: value,
                to: value,
                before: 0.0,
            }],
        }
    }

    /// Where the curve ends, seconds (`INFINITY` for a flat curve without an end).
    pub fn end(&self) -> f64 {
        self.pieces.last().map_or(0.0, |p| p.start + p.len)
    }

    /// The largest value the curve takes.
    pub fn max(&self) -> f64 {
        self.pieces
            .iter()
            .map(|p| p.from.max(p.to))
            .fold(0.0, f64::max)
    }

    fn piece_at(&self, t: f64) -> Option<&Piece> {
        if !(t >= 0.0 && t < self.end()) {
            return None;
        }
        let i = self.pieces.partition_point(|p| p.start + p.len <= t);
        self.pieces.get(i)
    }

    /// The value at `t` seconds (0 before the start and from the end on).
    pub fn at(&self, t: f64) -> f64 {
        self.piece_at(t).map_or(0.0, |p| p.value(t - p.start))
    }

    /// The integral from the start to `t` seconds.
    pub fn integral(&self, t: f64) -> f64 {
        if t <= 0.0 {
            return 0.0;
        }
        if t >= self.end() {
            return self.pieces.last().map_or(0.0, |p| p.before + p.area());
        }
        match self.piece_at(t) {
            Some(p) => p.before + p.integral(t - p.start),
            None => 0.0,
        }
    }

    /// The mean value over `[t0, t1)`.
    pub fn mean(&self, t0: f64, t1: f64) -> f64 {
        if t1 <= t0 {
            return 0.0;
        }
        (self.integral(t1) - self.integral(t0)) / (t1 - t0)
    }

    /// The first instant at which the integral reaches `m`: when the whole test's
    /// request number `m` is due. `None` when the curve never gets there.
    pub fn time_of(&self, m: f64) -> Option<f64> {
        let i = self.pieces.partition_point(|p| p.before + p.area() <= m);
        let p = self.pieces.get(i)?;
        let rest = (m - p.before).max(0.0);
        let slope = p.slope();
        // Solves from·τ + slope·τ²/2 = rest in the form that stays exact as the slope
        // goes to zero and when the piece starts from zero.
        let tau = if slope.abs() < 1e-12 {
            if p.from > 0.0 { rest / p.from } else { 0.0 }
        } else {
            let disc = (p.from * p.from + 2.0 * slope * rest).max(0.0);
            let denom = p.from + disc.sqrt();
            if denom > 0.0 { 2.0 * rest / denom } else { 0.0 }
        };
        Some(p.start + tau.clamp(0.0, p.len))
    }

    /// The first instant at or after `t` at which the curve is above `level`, if any.
    pub fn next_above(&self, t: f64, level: f64) -> Option<f64> {
        let first = self
            .pieces
            .partition_point(|p| p.start + p.len <= t.max(0.0));
        for p in &self.pieces[first..] {
            let from_t = t.max(p.start);
            let tau = from_t - p.start;
            if p.value(tau) > level {
                return Some(from_t);
            }
            let slope = p.slope();
            if slope > 0.0 && p.to > level {
                // Just past the crossing, so that the value there is above the level.
                let cross = p.start + (level - p.from) / slope + EPS;
                if cross < p.start + p.len {
                    return Some(cross.max(from_t));
                }
            }
        }
        None
    }
}

/// How a test's requests are paced, as one driver sees it or as the cluster plans it.
#[derive(Debug, Clone, PartialEq)]
pub enum Pacing {
    /// Avalanche: a fixed number of connections per driver, as fast as the target answers.
    Closed {
        /// Connections per driver.
        concurrency: u32,
    },
    /// Avalanche with stages: each driver's concurrency follows the curve.
    RampingClosed(Curve),
    /// Tsunami with `delay_ms`: every driver's request *k* is due `k·delay` in.
    Delay {
        /// Seconds between two requests of a driver.
        delay_s: f64,
    },
    /// Tsunami with `rate` or `stages`: the whole test's arrival rate follows the curve.
    Arrival(Curve),
}

/// A spec's plan: pacing plus bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// How requests are paced.
    pub pacing: Pacing,
    /// Drivers in the test.
    pub drivers: u32,
    /// At most this many requests per driver.
    pub requests_per_driver: Option<u64>,
    /// The test ends this many seconds after the start (a duration or the stages' total).
    pub duration_s: Option<f64>,
}

/// `ceil(x)` of a computed count, forgiving floating-point noise just above an integer.
fn ceil_count(x: f64) -> u64 {
    if x <= 0.0 {
        0
    } else if x.is_finite() {
        (x - EPS).ceil().max(0.0) as u64
    } else {
        u64::MAX
    }
}

impl Profile {
    /// The plan of a validated spec.
    pub fn of(spec: &TestSpec) -> Profile {
        let duration_s = spec.duration();
        let pacing = match spec.test_type {
            TestType::Avalanche => match &spec.stages {
                Some(stages) => {
                    Pacing::RampingClosed(Curve::from_stages(spec.start_target_or_zero(), stages))
                }
                None => Pacing::Closed {
                    concurrency: spec.concurrency(),
                },
            },
            TestType::Tsunami => match (&spec.stages, spec.rate, spec.delay_ms) {
                (Some(stages), _, _) => {
                    Pacing::Arrival(Curve::from_stages(spec.start_target_or_zero(), stages))
                }
                (None, Some(rate), _) => Pacing::Arrival(Curve::flat(rate, duration_s)),
                (None, None, delay) => Pacing::Delay {
                    delay_s: delay.unwrap_or(1.0) / 1_000.0,
                },
            },
        };
        Profile {
            pacing,
            drivers: spec.drivers.max(1),
            requests_per_driver: spec.requests_per_driver,
            duration_s,
        }
    }

    /// Whether requests are due at planned instants (the open model).
    pub fn is_open(&self) -> bool {
        matches!(self.pacing, Pacing::Delay { .. } | Pacing::Arrival(_))
    }

    /// Connections (workers) per driver: the concurrency, the largest stage target of a
    /// ramping closed model rounded, or the spec's `concurrency` for the open model.
    pub fn workers(&self, spec_concurrency: u32) -> u32 {
        match &self.pacing {
            Pacing::Closed { concurrency } => *concurrency,
            Pacing::RampingClosed(curve) => curve.max().round().max(1.0) as u32,
            Pacing::Delay { .. } | Pacing::Arrival(_) => spec_concurrency,
        }
    }

    /// The whole test's requests on an arrival curve: those due before its end.
    fn arrival_total(&self, curve: &Curve) -> u64 {
        let cap = self
            .requests_per_driver
            .map_or(u64::MAX, |r| r.saturating_mul(u64::from(self.drivers)));
        if curve.end().is_finite() {
            ceil_count(curve.integral(curve.end())).min(cap)
        } else {
            cap
        }
    }

    /// How many requests driver `index` will send, when that is known in advance: always
    /// for the open model, for the closed model only when bound by a count alone.
    pub fn planned_requests(&self, index: u32) -> Option<u64> {
        let rpd = self.requests_per_driver.unwrap_or(u64::MAX);
        match &self.pacing {
            Pacing::Closed { .. } | Pacing::RampingClosed(_) => {
                self.duration_s.is_none().then_some(rpd)
            }
            Pacing::Delay { delay_s } => {
                let by_time = self
                    .duration_s
                    .map_or(u64::MAX, |d| ceil_count(d / delay_s));
                Some(rpd.min(by_time))
            }
            Pacing::Arrival(curve) => {
                let total = self.arrival_total(curve);
                let (n, i) = (u64::from(self.drivers), u64::from(index));
                // Driver i sends j = k·n + i for every j below the total.
                let count = if total > i {
                    (total - i - 1) / n + 1
                } else {
                    0
                };
                Some(count.min(rpd))
            }
        }
    }

    /// Every driver's planned requests added up, when known.
    pub fn planned_total(&self) -> Option<u64> {
        (0..self.drivers)
            .map(|i| self.planned_requests(i))
            .try_fold(0u64, |sum, n| n.map(|n| sum.saturating_add(n)))
    }

    /// Open model: when driver `index`'s request `k` is due, seconds after the start;
    /// `None` past the end of its schedule (or for the closed model).
    pub fn due_s(&self, index: u32, k: u64) -> Option<f64> {
        match &self.pacing {
            Pacing::Delay { delay_s } => Some(k as f64 * delay_s),
            Pacing::Arrival(curve) => arrival_due_s(curve, index, self.drivers, k),
            _ => None,
        }
    }

    /// Open model: the whole test's requests due before `t` seconds.
    fn due_before(&self, t: f64) -> u64 {
        match &self.pacing {
            Pacing::Delay { delay_s } => {
                let per_driver = self.planned_requests(0).unwrap_or(0);
                ceil_count(t / delay_s).min(per_driver) * u64::from(self.drivers)
            }
            Pacing::Arrival(curve) => ceil_count(curve.integral(t)).min(self.arrival_total(curve)),
            _ => 0,
        }
    }

    /// Open model: how many requests second `s` of the test plans, all drivers together.
    pub fn planned_in_second(&self, s: u32) -> Option<u64> {
        self.is_open().then(|| {
            let s = f64::from(s);
            self.due_before(s + 1.0) - self.due_before(s)
        })
    }

    /// Closed model: the concurrency second `s` plans, all drivers together (the mean
    /// over the second, so a ramp's second shows the average it asked for).
    pub fn planned_concurrency(&self, s: u32) -> Option<f64> {
        let (t0, t1) = (f64::from(s), f64::from(s) + 1.0);
        let n = f64::from(self.drivers);
        match &self.pacing {
            Pacing::Closed { concurrency } => {
                let share = match self.duration_s {
                    Some(d) => (t1.min(d) - t0).clamp(0.0, 1.0),
                    None => 1.0,
                };
                Some(n * f64::from(*concurrency) * share)
            }
            Pacing::RampingClosed(curve) => Some(n * curve.mean(t0, t1)),
            _ => None,
        }
    }
}

/// On an arrival curve shared by `drivers` drivers: when `driver`'s request `k` is due,
/// seconds after the start (it is the test's request `k·drivers + driver`); `None` past
/// the curve's end. The engine paces by it, and the plan counts by the same curve.
pub fn arrival_due_s(curve: &Curve, driver: u32, drivers: u32, k: u64) -> Option<f64> {
    let j = k
        .saturating_mul(u64::from(drivers))
        .saturating_add(u64::from(driver));
    curve.time_of(j as f64)
}

/// A duration for people: `750 ms`, `30 s`, `2 min`, `1 h 30 min`.
pub fn format_duration_s(s: f64) -> String {
    if s < 1.0 {
        format!("{:.0} ms", s * 1_000.0)
    } else if s < 60.0 {
        let t = format!("{s:.2}");
        format!("{} s", t.trim_end_matches('0').trim_end_matches('.'))
    } else if s < 3_600.0 {
        let (m, rest) = ((s / 60.0).floor(), s % 60.0);
        if rest.round() == 0.0 {
            format!("{m:.0} min")
        } else {
            format!("{m:.0} min {rest:.0} s")
        }
    } else {
        let (h, rest) = ((s / 3_600.0).floor(), (s % 3_600.0) / 60.0);
        if rest.round() == 0.0 {
            format!("{h:.0} h")
        } else {
            format!("{h:.0} h {rest:.0} min")
        }
    }
}

fn number(v: f64) -> String {
    let t = format!("{v:.2}");
    t.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The load a spec plans, in one line for people: pacing, drivers, bounds.
///
/// `2 drivers × 16 connections, 10,000 requests each`, `500 req/s over 4 drivers
/// (10 connections each) for 30 s`, `arrival rate 0 → 400 req/s (2 s) → 200 req/s (2 s)
/// over 2 drivers`.
pub fn describe_load(spec: &TestSpec) -> String {
    let drivers = if spec.drivers == 1 {
        "1 driver".to_string()
    } else {
        format!("{} drivers", spec.drivers)
    };
    let ramp = |unit: &str| -> String {
        let stages = spec.stages.as_deref().unwrap_or_default();
        let mut out = number(spec.start_target_or_zero());
        for s in stages {
            out.push_str(&format!(
                " → {}{unit} ({})",
                number(s.target),
                format_duration_s(s.duration_s)
            ));
        }
        out
    };
    let bound = match (spec.requests_per_driver, spec.duration_s) {
        (Some(n), Some(d)) => format!(
            ", {} or {n} requests per driver, whichever comes first",
            format_duration_s(d)
        ),
        (Some(n), None) => format!(", {n} requests per driver"),
        (None, Some(d)) => format!(" for {}", format_duration_s(d)),
        (None, None) => String::new(),
    };
    // Stages bound the test themselves; a count may still end it earlier.
    let stage_bound = spec
        .requests_per_driver
        .map(|n| format!(", at most {n} requests per driver"))
        .unwrap_or_default();
    match (spec.test_type, &spec.stages) {
        (TestType::Avalanche, None) => {
            format!("{drivers} × {} connections{bound}", spec.concurrency())
        }
        (TestType::Avalanche, Some(_)) => format!(
            "{drivers}, connections per driver ramping {}{stage_bound}",
            ramp("")
        ),
        (TestType::Tsunami, Some(_)) => format!(
            "arrival rate ramping {} over {drivers} ({} connections each){stage_bound}",
            ramp(" req/s"),
            spec.concurrency()
        ),
        (TestType::Tsunami, None) => match spec.rate {
            Some(rate) => format!(
                "{} req/s over {drivers} ({} connections each){bound}",
                number(rate),
                spec.concurrency()
            ),
            None => format!(
                "{drivers}, one request every {} ms each ({} connections each){bound}",
                number(spec.delay_ms.unwrap_or(0.0)),
                spec.concurrency()
            ),
        },
    }
}

/// Parses a duration such as `30s`, `500ms`, `2m`, `1h`, `1m30s` into seconds.
///
/// Units: `ms`, `s`, `m`, `h`; every number needs one, so `30` (seconds? minutes?) is
/// refused rather than guessed.
pub fn parse_duration_s(text: &str) -> Result<f64, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty duration; write it like 30s, 500ms, 2m or 1h".into());
    }
    let mut total = 0.0;
    let mut rest = t;
    while !rest.is_empty() {
        let split = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(split);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("`{t}` is not a duration; write it like 30s, 500ms, 2m or 1h"))?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let scale = match unit.trim() {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3_600.0,
            "" => {
                return Err(format!(
                    "`{t}` has no unit; use ms, s, m or h (e.g. {number}s)"
                ));
            }
            other => return Err(format!("`{t}`: unknown unit `{other}`; use ms, s, m or h")),
        };
        total += value * scale;
        rest = next;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stages(list: &[(f64, f64)]) -> Vec<Stage> {
        list.iter()
            .map(|&(duration_s, target)| Stage { duration_s, target })
            .collect()
    }

    #[test]
    fn a_ramp_integrates_and_inverts() {
        // 0 → 400/s over 2 s, then down to 200/s over 2 s: 400 + 600 requests.
        let c = Curve::from_stages(0.0, &stages(&[(2.0, 400.0), (2.0, 200.0)]));
        assert_eq!(c.end(), 4.0);
        assert!((c.integral(1.0) - 100.0).abs() < 1e-9);
        assert!((c.integral(2.0) - 400.0).abs() < 1e-9);
        assert!((c.integral(3.0) - 750.0).abs() < 1e-9);
        assert!((c.integral(4.0) - 1000.0).abs() < 1e-9);
        assert!((c.at(1.0) - 200.0).abs() < 1e-9);
        assert!((c.at(3.0) - 300.0).abs() < 1e-9);
        assert_eq!(c.at(4.0), 0.0);
        for m in [0.0, 1.0, 99.5, 100.0, 400.0, 401.0, 750.0, 999.0] {
            let t = c.time_of(m).unwrap();
            assert!((c.integral(t) - m).abs() < 1e-6, "{m} -> {t}");
        }
        assert_eq!(c.time_of(0.0), Some(0.0));
        assert_eq!(c.time_of(1000.0), None);
        assert!((c.mean(0.0, 1.0) - 100.0).abs() < 1e-9);
    }

    #[test]
    fn flat_and_zero_stages() {
        let c = Curve::flat(50.0, None);
        assert_eq!(c.end(), f64::INFINITY);
        assert!((c.time_of(100.0).unwrap() - 2.0).abs() < 1e-12);
        // A pause in the middle: nothing is due during it.
        let c = Curve::from_stages(
            10.0,
            &stages(&[(1.0, 10.0), (1.0, 0.0), (1.0, 0.0), (1.0, 10.0)]),
        );
        let t = c.time_of(9.99).unwrap();
        assert!(t < 1.0 + 1e-9, "{t}");
        let t = c.time_of(15.5).unwrap();
        assert!(
            t > 3.0,
            "request 15.5 falls in the last ramp, not the pause: {t}"
        );
    }

    #[test]
    fn workers_switch_on_above_half_a_connection() {
        // 0 → 4 connections over 1 s.
        let c = Curve::from_stages(0.0, &stages(&[(1.0, 4.0), (1.0, 4.0)]));
        let on = c.next_above(0.0, 0.5).unwrap();
        assert!((on - 0.125).abs() < 1e-6, "{on}");
        let on = c.next_above(0.0, 3.5).unwrap();
        assert!((on - 0.875).abs() < 1e-6, "{on}");
        assert_eq!(c.next_above(0.3, 0.5), Some(0.3));
        assert_eq!(c.next_above(0.0, 4.5), None);
        assert_eq!(c.next_above(2.5, 0.5), None);
    }

    fn profile(json: &str) -> Profile {
        Profile::of(&TestSpec::from_json(json.as_bytes()).unwrap())
    }

    #[test]
    fn arrival_rate_is_split_over_drivers() {
        let p = profile(
            r#"{"target_url":"http://h/","test_type":"tsunami","drivers":3,"rate":100,"duration_s":2.5}"#,
        );
        // 250 requests due: 84, 83, 83.
        assert_eq!(p.planned_total(), Some(250));
        assert_eq!(p.planned_requests(0), Some(84));
        assert_eq!(p.planned_requests(2), Some(83));
        // Driver 1's requests are the test's 1, 4, 7, …: 10 ms, 40 ms, 70 ms.
        assert!((p.due_s(1, 0).unwrap() - 0.01).abs() < 1e-12);
        assert!((p.due_s(1, 2).unwrap() - 0.07).abs() < 1e-12);
        assert_eq!(p.planned_in_second(0), Some(100));
        assert_eq!(p.planned_in_second(2), Some(50));
        assert_eq!(p.planned_in_second(3), Some(0));
        // A count bound caps it.
        let p = profile(
            r#"{"target_url":"http://h/","test_type":"tsunami","drivers":2,"rate":100,"requests_per_driver":30}"#,
        );
        assert_eq!(p.planned_total(), Some(60));
        assert_eq!(p.planned_in_second(0), Some(60));
    }

    #[test]
    fn ramping_arrival_plans_each_second() {
        let p = profile(
            r#"{"target_url":"http://h/","test_type":"tsunami","drivers":2,"stages":[{"duration_s":2,"target":400},{"duration_s":2,"target":200}]}"#,
        );
        let per_second: Vec<u64> = (0..5).map(|s| p.planned_in_second(s).unwrap()).collect();
        assert_eq!(per_second, vec![100, 300, 350, 250, 0]);
        assert_eq!(p.planned_total(), Some(1000));
        assert_eq!(
            p.planned_requests(0).unwrap() + p.planned_requests(1).unwrap(),
            1000
        );
        // The last request of each driver is due before the end.
        for d in 0..2 {
            let last = p.planned_requests(d).unwrap() - 1;
            assert!(p.due_s(d, last).unwrap() < 4.0);
        }
    }

    #[test]
    fn fixed_delay_with_a_duration() {
        let p = profile(
            r#"{"target_url":"http://h/","test_type":"tsunami","drivers":2,"delay_ms":10,"duration_s":1.5,"requests_per_driver":1000}"#,
        );
        assert_eq!(p.planned_requests(1), Some(150));
        assert_eq!(p.planned_in_second(0), Some(200));
        assert_eq!(p.planned_in_second(1), Some(100));
    }

    #[test]
    fn closed_models_plan_concurrency() {
        let p = profile(
            r#"{"target_url":"http://h/","test_type":"avalanche","drivers":2,"stages":[{"duration_s":2,"target":8},{"duration_s":1,"target":8}]}"#,
        );
        assert_eq!(p.workers(10), 8);
        assert_eq!(p.planned_requests(0), None);
        assert_eq!(p.planned_concurrency(0), Some(2.0 * 2.0));
        assert_eq!(p.planned_concurrency(1), Some(2.0 * 6.0));
        assert_eq!(p.planned_concurrency(2), Some(2.0 * 8.0));
        assert_eq!(p.planned_concurrency(3), Some(0.0));
        let p = profile(
            r#"{"target_url":"http://h/","test_type":"avalanche","concurrency":4,"duration_s":1.5}"#,
        );
        assert_eq!(p.planned_concurrency(1), Some(2.0));
        assert_eq!(p.planned_in_second(0), None);
    }

    #[test]
    fn loads_are_described_for_people() {
        let d = |json: &str| describe_load(&TestSpec::from_json(json.as_bytes()).unwrap());
        assert_eq!(
            d(
                r#"{"target_url":"http://h/","test_type":"avalanche","drivers":2,"concurrency":16,"requests_per_driver":100}"#
            ),
            "2 drivers × 16 connections, 100 requests per driver"
        );
        assert_eq!(
            d(r#"{"target_url":"http://h/","test_type":"tsunami","rate":500,"duration_s":90}"#),
            "500 req/s over 1 driver (10 connections each) for 1 min 30 s"
        );
        assert_eq!(
            d(
                r#"{"target_url":"http://h/","test_type":"tsunami","stages":[{"duration_s":2,"target":400},{"duration_s":0.5,"target":200}]}"#
            ),
            "arrival rate ramping 0 → 400 req/s (2 s) → 200 req/s (500 ms) over 1 driver (10 connections each)"
        );
        assert_eq!(
            d(
                r#"{"target_url":"http://h/","test_type":"avalanche","start_target":2,"stages":[{"duration_s":60,"target":8}]}"#
            ),
            "1 driver, connections per driver ramping 2 → 8 (1 min)"
        );
        assert_eq!(format_duration_s(5400.0), "1 h 30 min");
        assert_eq!(format_duration_s(1.25), "1.25 s");
    }

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration_s("30s"), Ok(30.0));
        assert_eq!(parse_duration_s("500ms"), Ok(0.5));
        assert_eq!(parse_duration_s("2m"), Ok(120.0));
        assert_eq!(parse_duration_s("1h"), Ok(3600.0));
        assert_eq!(parse_duration_s("1m30s"), Ok(90.0));
        assert_eq!(parse_duration_s("1.5s"), Ok(1.5));
        assert!(parse_duration_s("30").unwrap_err().contains("no unit"));
        assert!(
            parse_duration_s("3x")
                .unwrap_err()
                .contains("unknown unit `x`")
        );
        assert!(parse_duration_s("soon").is_err());
        assert!(parse_duration_s("").is_err());
    }
}
