//! Caps against runaway cost: the largest test an orchestrator accepts, and the longest it
//! lets one run.
//!
//! A deployment sets them with `LOADWAVE_MAX_DRIVERS`, `LOADWAVE_MAX_REQUESTS_PER_DRIVER`,
//! `LOADWAVE_MAX_RPS` and `LOADWAVE_MAX_DURATION_S`: a positive finite number, or `0` /
//! `none` to lift the cap; anything else (`nan`, `inf`, `-1`, `abc`) stops start-up with an
//! error naming the variable, so a typo cannot turn a cap off. The Lambda functions start
//! from [`Limits::cloud_defaults`] (safe for a first deploy: a mistyped spec cannot start a
//! thousand Fargate tasks); the local orchestrator from [`Limits::local_defaults`] (a
//! thousand driver processes would take the machine down), `loadwave run` from
//! [`Limits::none`].
//!
//! The request cap holds for every plan: a count-bound test by its `requests_per_driver`,
//! an open-model test bound by time by its planned count (all drivers' planned requests
//! against the cap times the drivers), and a closed-model test bound by time, whose count
//! cannot be planned, gets the cap as its `requests_per_driver` ([`Limits::bound`]).

use loadwave_proto::spec::MAX_REQUESTS_PER_DRIVER;
use loadwave_proto::{Pacing, Profile, TestSpec};

/// The local orchestrator's default cap on drivers per test when its launcher starts
/// drivers (a process or a task each).
pub const LOCAL_MAX_DRIVERS: u32 = 64;
/// The local orchestrator's default cap on a test's running time, seconds (10 minutes).
pub const LOCAL_MAX_DURATION_S: u64 = 600;

/// The caps; `None` is no cap.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Limits {
    /// Drivers per test (`LOADWAVE_MAX_DRIVERS`).
    pub max_drivers: Option<u32>,
    /// Requests per driver (`LOADWAVE_MAX_REQUESTS_PER_DRIVER`), whatever bounds the test.
    pub max_requests_per_driver: Option<u64>,
    /// A Tsunami test's planned rate over all drivers, requests per second
    /// (`LOADWAVE_MAX_RPS`).
    pub max_rps: Option<f64>,
    /// How long a test may run, seconds (`LOADWAVE_MAX_DURATION_S`): a Tsunami schedule
    /// longer than this is refused, and any running test is stopped when it is reached.
    pub max_duration_s: Option<u64>,
}

/// A value a cap can take.
trait CapValue: std::str::FromStr + Copy {
    /// Whether it is a usable cap: positive and finite.
    fn usable(self) -> bool;
}

impl CapValue for u32 {
    fn usable(self) -> bool {
        self > 0
    }
}

impl CapValue for u64 {
    fn usable(self) -> bool {
        self > 0
    }
}

impl CapValue for f64 {
    fn usable(self) -> bool {
        self.is_finite() && self > 0.0
    }
}

/// Reads one cap from `value` (the text of `name`, a variable or a flag): empty keeps
/// `default`, `0` or `none` lifts the cap, a positive finite number sets it, anything
/// else is an error naming `name`.
fn read_cap<T: CapValue>(
    name: &str,
    value: Option<&str>,
    default: Option<T>,
) -> Result<Option<T>, String> {
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(default);
    };
    if v == "0" || v.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    match v.parse::<T>() {
        Ok(cap) if cap.usable() => Ok(Some(cap)),
        _ => Err(format!(
            "{name} `{v}` is not a positive finite number (use 0 or none for no cap)"
        )),
    }
}

/// A spec over a cap: the field and the sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverLimit {
    /// The spec field at fault.
    pub field: &'static str,
    /// What is wrong, naming the cap's variable.
    pub message: String,
}

impl Limits {
    /// No caps (`loadwave run`).
    pub fn none() -> Limits {
        Limits::default()
    }

    /// The caps of a first cloud deploy: 10 drivers (each a Fargate task), a million
    /// requests each, 5,000 requests per second, 15 minutes.
    pub fn cloud_defaults() -> Limits {
        Limits {
            max_drivers: Some(10),
            max_requests_per_driver: Some(1_000_000),
            max_rps: Some(5_000.0),
            max_duration_s: Some(900),
        }
    }

    /// The local orchestrator's caps: 10 minutes per test, and [`LOCAL_MAX_DRIVERS`]
    /// drivers per test when its launcher starts them (`starts_drivers`: processes or
    /// tasks; a pool is bounded by the drivers already running).
    pub fn local_defaults(starts_drivers: bool) -> Limits {
        Limits {
            max_drivers: starts_drivers.then_some(LOCAL_MAX_DRIVERS),
            max_requests_per_driver: None,
            max_rps: None,
            max_duration_s: Some(LOCAL_MAX_DURATION_S),
        }
    }

    /// `defaults`, overridden by the `LOADWAVE_MAX_*` variables that are set (`0` or
    /// `none` lifts a cap). A value that is not a positive finite number is an error
    /// naming the variable.
    pub fn from_env(defaults: Limits) -> Result<Limits, String> {
        Self::from_vars(defaults, |name| std::env::var(name).ok())
    }

    /// [`Limits::from_env`] over any source of variables (`get` answers a variable's
    /// value, if set).
    pub fn from_vars(
        defaults: Limits,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Limits, String> {
        let var = |name: &str| get(name);
        Ok(Limits {
            max_drivers: read_cap(
                "LOADWAVE_MAX_DRIVERS",
                var("LOADWAVE_MAX_DRIVERS").as_deref(),
                defaults.max_drivers,
            )?,
            max_requests_per_driver: read_cap(
                "LOADWAVE_MAX_REQUESTS_PER_DRIVER",
                var("LOADWAVE_MAX_REQUESTS_PER_DRIVER").as_deref(),
                defaults.max_requests_per_driver,
            )?,
            max_rps: read_cap(
                "LOADWAVE_MAX_RPS",
                var("LOADWAVE_MAX_RPS").as_deref(),
                defaults.max_rps,
            )?,
            max_duration_s: read_cap(
                "LOADWAVE_MAX_DURATION_S",
                var("LOADWAVE_MAX_DURATION_S").as_deref(),
                defaults.max_duration_s,
            )?,
        })
    }

    /// Overrides the drivers cap with the text of flag `flag` (`0` or `none` lifts it).
    pub fn set_max_drivers(&mut self, flag: &str, text: &str) -> Result<(), String> {
        self.max_drivers = read_cap(flag, Some(text), self.max_drivers)?;
        Ok(())
    }

    /// Overrides the running-time cap with the text of flag `flag`: a duration such as
    /// `10m`, `90s` or `2h` (a bare number is seconds; `0` or `none` lifts it).
    pub fn set_max_duration(&mut self, flag: &str, text: &str) -> Result<(), String> {
        let t = text.trim();
        if t.is_empty() || t == "0" || t.eq_ignore_ascii_case("none") || t.parse::<u64>().is_ok() {
            self.max_duration_s = read_cap(flag, Some(t), self.max_duration_s)?;
            return Ok(());
        }
        let seconds = loadwave_proto::parse_duration_s(t).map_err(|e| format!("{flag}: {e}"))?;
        if !(seconds.is_finite() && seconds >= 1.0) {
            return Err(format!(
                "{flag} `{t}` is not a positive duration of a second or more (use 0 or none for no cap)"
            ));
        }
        self.max_duration_s = Some(seconds.ceil() as u64);
        Ok(())
    }

    /// Makes the request cap hold for a test whose count cannot be planned: a closed-model
    /// test bound by time alone gets the cap as its `requests_per_driver` (each driver
    /// stops at whichever comes first). Returns whether `spec` changed. Run after
    /// [`Limits::check`] accepted it.
    pub fn bound(&self, spec: &mut TestSpec) -> bool {
        let Some(max) = self.max_requests_per_driver else {
            return false;
        };
        if spec.requests_per_driver.is_some() || Profile::of(spec).planned_total().is_some() {
            return false;
        }
        spec.requests_per_driver = Some(max.min(MAX_REQUESTS_PER_DRIVER));
        true
    }

    /// Checks a validated spec against the caps.
    pub fn check(&self, spec: &TestSpec) -> Result<(), OverLimit> {
        if let Some(max) = self.max_drivers
            && spec.drivers > max
        {
            return Err(OverLimit {
                field: "drivers",
                message: format!(
                    "{} drivers asked, this deployment allows at most {max} (LOADWAVE_MAX_DRIVERS)",
                    spec.drivers
                ),
            });
        }
        if let Some(max) = self.max_requests_per_driver
            && let Some(n) = spec.requests_per_driver.filter(|n| *n > max)
        {
            return Err(OverLimit {
                field: "requests_per_driver",
                message: format!(
                    "{n} requests per driver asked, this deployment allows at most {max} (LOADWAVE_MAX_REQUESTS_PER_DRIVER)"
                ),
            });
        }
        let profile = Profile::of(spec);
        // A test bound by time: what its plan sends, against the cap on every driver.
        if let Some(max) = self.max_requests_per_driver
            && let Some(total) = profile.planned_total()
            && total > max.saturating_mul(u64::from(profile.drivers))
        {
            let field = bound_field(spec);
            return Err(OverLimit {
                field,
                message: format!(
                    "the plan sends {total} requests over {} drivers, this deployment allows at most {max} per driver (LOADWAVE_MAX_REQUESTS_PER_DRIVER)",
                    profile.drivers
                ),
            });
        }
        // The highest rate the plan asks for, over the whole test.
        let peak_rps = match &profile.pacing {
            Pacing::Delay { delay_s } => Some((
                f64::from(spec.drivers) / delay_s,
                "delay_ms",
                format!("{} drivers every {} ms", spec.drivers, delay_s * 1_000.0),
            )),
            Pacing::Arrival(curve) => Some((
                curve.max(),
                if spec.stages.is_some() {
                    "stages"
                } else {
                    "rate"
                },
                if spec.stages.is_some() {
                    "the stages' highest target".to_string()
                } else {
                    "the rate".to_string()
                },
            )),
            _ => None,
        };
        if let (Some(max), Some((rps, field, what))) = (self.max_rps, &peak_rps)
            && *rps > max
        {
            return Err(OverLimit {
                field,
                message: format!(
                    "{what} is {rps:.0} requests per second, this deployment allows at most {max} (LOADWAVE_MAX_RPS)"
                ),
            });
        }
        // How long the plan runs, when the spec says (a closed-model test bound by a count
        // alone is capped while it runs instead).
        let planned_s = match (&profile.pacing, profile.duration_s) {
            (_, Some(d)) => Some(d),
            (Pacing::Delay { delay_s }, None) => {
                spec.requests_per_driver.map(|n| n as f64 * delay_s)
            }
            (Pacing::Arrival(curve), None) => spec
                .requests_per_driver
                .map(|n| n as f64 * f64::from(spec.drivers) / curve.max().max(f64::MIN_POSITIVE)),
            _ => None,
        };
        if let (Some(max), Some(planned)) = (self.max_duration_s, planned_s)
            && planned > max as f64
        {
            let field = bound_field(spec);
            return Err(OverLimit {
                field,
                message: format!(
                    "the test would run for {planned:.0} s, this deployment allows at most {max} s (LOADWAVE_MAX_DURATION_S)"
                ),
            });
        }
        Ok(())
    }

    /// The running-time cap, ms, for [`crate::TestOptions::max_duration_ms`].
    pub fn max_duration_ms(&self) -> Option<u64> {
        self.max_duration_s.map(|s| s * 1_000)
    }
}

/// The field that bounds `spec`'s length, for an error about it: its stages, its
/// duration, or its count.
fn bound_field(spec: &TestSpec) -> &'static str {
    if spec.stages.is_some() {
        "stages"
    } else if spec.duration_s.is_some() {
        "duration_s"
    } else {
        "requests_per_driver"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> TestSpec {
        TestSpec::from_json(json.as_bytes()).unwrap()
    }

    #[test]
    fn each_cap_names_its_field_and_variable() {
        let limits = Limits::cloud_defaults();
        let ok = spec(
            r#"{"target_url":"http://127.0.0.1/","test_type":"avalanche","drivers":10,"requests_per_driver":1000}"#,
        );
        assert_eq!(limits.check(&ok), Ok(()));
        let cases = [
            (
                r#"{"target_url":"http://127.0.0.1/","test_type":"avalanche","drivers":11,"requests_per_driver":1}"#,
                "drivers",
                "LOADWAVE_MAX_DRIVERS",
            ),
            (
                r#"{"target_url":"http://127.0.0.1/","test_type":"avalanche","requests_per_driver":1000001}"#,
                "requests_per_driver",
                "LOADWAVE_MAX_REQUESTS_PER_DRIVER",
            ),
            (
                r#"{"target_url":"http://127.0.0.1/","test_type":"tsunami","drivers":10,"requests_per_driver":100,"delay_ms":1}"#,
                "delay_ms",
                "LOADWAVE_MAX_RPS",
            ),
            (
                r#"{"target_url":"http://127.0.0.1/","test_type":"tsunami","requests_per_driver":100000,"delay_ms":10}"#,
                "requests_per_driver",
                "LOADWAVE_MAX_DURATION_S",
            ),
        ];
        assert_eq!(Limits::none().check(&spec(cases[0].0)), Ok(()));
        let profiles = [
            (
                r#"{"target_url":"http://127.0.0.1/","test_type":"tsunami","rate":5001,"duration_s":10}"#,
                "rate",
                "LOADWAVE_MAX_RPS",
            ),
            (
                r#"{"target_url":"http://127.0.0.1/","test_type":"tsunami","stages":[{"duration_s":10,"target":6000}]}"#,
                "stages",
                "LOADWAVE_MAX_RPS",
            ),
            (
                r#"{"target_url":"http://127.0.0.1/","test_type":"avalanche","duration_s":901}"#,
                "duration_s",
                "LOADWAVE_MAX_DURATION_S",
            ),
            (
                r#"{"target_url":"http://127.0.0.1/","test_type":"avalanche","stages":[{"duration_s":600,"target":5},{"duration_s":600,"target":0}]}"#,
                "stages",
                "LOADWAVE_MAX_DURATION_S",
            ),
            (
                r#"{"target_url":"http://127.0.0.1/","test_type":"tsunami","rate":100,"requests_per_driver":100000}"#,
                "requests_per_driver",
                "LOADWAVE_MAX_DURATION_S",
            ),
        ];
        for (json, field, var) in cases.into_iter().chain(profiles) {
            let err = limits.check(&spec(json)).unwrap_err();
            assert_eq!(err.field, field, "{json}");
            assert!(err.message.contains(var), "{}", err.message);
        }
        assert_eq!(
            limits.check(&spec(
                r#"{"target_url":"http://127.0.0.1/","test_type":"tsunami","rate":100,"duration_s":600}"#
            )),
            Ok(())
        );
        assert_eq!(limits.max_duration_ms(), Some(900_000));
    }

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    /// The issue's probe: `LOADWAVE_MAX_RPS=nan` turned the cap off.
    #[test]
    fn a_cap_that_is_not_a_positive_finite_number_is_an_error_naming_it() {
        for (name, value) in [
            ("LOADWAVE_MAX_RPS", "nan"),
            ("LOADWAVE_MAX_RPS", "NaN"),
            ("LOADWAVE_MAX_RPS", "inf"),
            ("LOADWAVE_MAX_RPS", "-1"),
            ("LOADWAVE_MAX_RPS", "-0.5"),
            ("LOADWAVE_MAX_RPS", "abc"),
            ("LOADWAVE_MAX_DRIVERS", "-1"),
            ("LOADWAVE_MAX_DRIVERS", "1.5"),
            ("LOADWAVE_MAX_DRIVERS", "abc"),
            ("LOADWAVE_MAX_REQUESTS_PER_DRIVER", "nan"),
            ("LOADWAVE_MAX_DURATION_S", "inf"),
        ] {
            let err =
                Limits::from_vars(Limits::cloud_defaults(), vars(&[(name, value)])).unwrap_err();
            assert!(
                err.contains(name) && err.contains(value),
                "{name}={value}: {err}"
            );
        }
    }

    #[test]
    fn zero_or_none_lifts_a_cap_and_numbers_set_it() {
        let limits = Limits::from_vars(
            Limits::cloud_defaults(),
            vars(&[
                ("LOADWAVE_MAX_DRIVERS", "0"),
                ("LOADWAVE_MAX_RPS", "none"),
                ("LOADWAVE_MAX_REQUESTS_PER_DRIVER", " 42 "),
                ("LOADWAVE_MAX_DURATION_S", ""),
            ]),
        )
        .unwrap();
        assert_eq!(
            limits,
            Limits {
                max_drivers: None,
                max_requests_per_driver: Some(42),
                max_rps: None,
                max_duration_s: Some(900),
            }
        );
        assert_eq!(
            Limits::from_vars(Limits::none(), vars(&[("LOADWAVE_MAX_RPS", "2.5e3")]))
                .unwrap()
                .max_rps,
            Some(2_500.0)
        );
    }

    /// The issue's probe: `drivers: 1000` with `--launcher process` started 1,000
    /// processes.
    #[test]
    fn the_local_orchestrator_has_default_caps() {
        let thousand = spec(
            r#"{"target_url":"http://127.0.0.1/","test_type":"avalanche","drivers":1000,"requests_per_driver":1}"#,
        );
        let err = Limits::local_defaults(true).check(&thousand).unwrap_err();
        assert_eq!(err.field, "drivers");
        assert!(err.message.contains("at most 64"), "{}", err.message);
        assert_eq!(Limits::local_defaults(false).check(&thousand), Ok(()));
        let long =
            spec(r#"{"target_url":"http://127.0.0.1/","test_type":"avalanche","duration_s":601}"#);
        let err = Limits::local_defaults(false).check(&long).unwrap_err();
        assert_eq!(err.field, "duration_s");
        assert_eq!(
            Limits::local_defaults(false).max_duration_ms(),
            Some(600_000)
        );

        let mut limits = Limits::local_defaults(true);
        limits.set_max_drivers("--max-drivers", "1000").unwrap();
        limits.set_max_duration("--max-duration", "1h").unwrap();
        assert_eq!(limits.check(&thousand), Ok(()));
        assert_eq!(limits.check(&long), Ok(()));
        assert_eq!(limits.max_duration_s, Some(3_600));
        limits.set_max_duration("--max-duration", "90").unwrap();
        assert_eq!(limits.max_duration_s, Some(90));
        limits.set_max_duration("--max-duration", "none").unwrap();
        limits.set_max_drivers("--max-drivers", "0").unwrap();
        assert_eq!(limits, Limits::none());
        for bad in ["nan", "-1", "10x", "0.5s"] {
            let err = limits.set_max_duration("--max-duration", bad).unwrap_err();
            assert!(err.contains("--max-duration"), "{bad}: {err}");
        }
        let err = limits.set_max_drivers("--max-drivers", "-3").unwrap_err();
        assert!(err.contains("--max-drivers"), "{err}");
    }

    /// The issue's probe: the per-driver request cap was skipped for tests bound by time.
    #[test]
    fn the_request_cap_covers_tests_bound_by_time() {
        let limits = Limits {
            max_requests_per_driver: Some(1_000),
            ..Limits::none()
        };
        // Open model: the planned count (100 rps for 60 s over 2 drivers is 3,000 each).
        for (json, field) in [
            (
                r#"{"target_url":"http://127.0.0.1/","test_type":"tsunami","drivers":2,"rate":100,"duration_s":60}"#,
                "duration_s",
            ),
            (
                r#"{"target_url":"http://127.0.0.1/","test_type":"tsunami","delay_ms":10,"duration_s":60}"#,
                "duration_s",
            ),
            (
                r#"{"target_url":"http://127.0.0.1/","test_type":"tsunami","stages":[{"duration_s":60,"target":100}]}"#,
                "stages",
            ),
        ] {
            let err = limits.check(&spec(json)).unwrap_err();
            assert_eq!(err.field, field, "{json}");
            assert!(
                err.message.contains("LOADWAVE_MAX_REQUESTS_PER_DRIVER"),
                "{}",
                err.message
            );
        }
        // Within the cap: 2,000 planned over 2 drivers.
        let ok = spec(
            r#"{"target_url":"http://127.0.0.1/","test_type":"tsunami","drivers":2,"rate":100,"duration_s":20}"#,
        );
        assert_eq!(limits.check(&ok), Ok(()));
        // Closed model bound by time: no plan to check, so the cap becomes its count.
        let mut closed =
            spec(r#"{"target_url":"http://127.0.0.1/","test_type":"avalanche","duration_s":60}"#);
        assert_eq!(limits.check(&closed), Ok(()));
        assert!(limits.bound(&mut closed));
        assert_eq!(closed.requests_per_driver, Some(1_000));
        assert_eq!(closed.validate(), Ok(()));
        // A count of its own (within the cap) and no cap at all are left alone.
        let mut counted = spec(
            r#"{"target_url":"http://127.0.0.1/","test_type":"avalanche","duration_s":60,"requests_per_driver":5}"#,
        );
        assert!(!limits.bound(&mut counted));
        assert_eq!(counted.requests_per_driver, Some(5));
        let mut free =
            spec(r#"{"target_url":"http://127.0.0.1/","test_type":"avalanche","duration_s":60}"#);
        assert!(!Limits::none().bound(&mut free));
        assert_eq!(free.requests_per_driver, None);
    }
}
