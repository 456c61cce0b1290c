//! Caps against runaway cost: the largest test an orchestrator accepts, and the longest it
//! lets one run.
//!
//! A deployment sets them with `LOADWAVE_MAX_DRIVERS`, `LOADWAVE_MAX_REQUESTS_PER_DRIVER`,
//! `LOADWAVE_MAX_RPS` and `LOADWAVE_MAX_DURATION_S`. The Lambda functions start from
//! [`Limits::cloud_defaults`] (safe for a first deploy: a mistyped spec cannot start a
//! thousand Fargate tasks); the local orchestrator from [`Limits::none`].

use loadwave_proto::{Pacing, Profile, TestSpec};

/// The caps; `None` is no cap.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Limits {
    /// Drivers per test (`LOADWAVE_MAX_DRIVERS`).
    pub max_drivers: Option<u32>,
    /// Requests per driver (`LOADWAVE_MAX_REQUESTS_PER_DRIVER`).
    pub max_requests_per_driver: Option<u64>,
    /// A Tsunami test's planned rate over all drivers, requests per second
    /// (`LOADWAVE_MAX_RPS`).
    pub max_rps: Option<f64>,
    /// How long a test may run, seconds (`LOADWAVE_MAX_DURATION_S`): a Tsunami schedule
    /// longer than this is refused, and any running test is stopped when it is reached.
    pub max_duration_s: Option<u64>,
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
    /// No caps (the local orchestrator, `loadwave run`).
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

    /// `defaults`, overridden by the `LOADWAVE_MAX_*` variables that are set (`0` or
    /// `none` lifts a cap). A value that does not parse is an error naming the variable.
    pub fn from_env(defaults: Limits) -> Result<Limits, String> {
        fn read<T: std::str::FromStr>(name: &str, default: Option<T>) -> Result<Option<T>, String> {
            match std::env::var(name) {
                Err(_) => Ok(default),
                Ok(v) if v.trim().is_empty() => Ok(default),
                Ok(v) if v.trim() == "0" || v.trim().eq_ignore_ascii_case("none") => Ok(None),
                Ok(v) => v
                    .trim()
                    .parse()
                    .map(Some)
                    .map_err(|_| format!("{name} `{v}` is not a number")),
            }
        }
        Ok(Limits {
            max_drivers: read("LOADWAVE_MAX_DRIVERS", defaults.max_drivers)?,
            max_requests_per_driver: read(
                "LOADWAVE_MAX_REQUESTS_PER_DRIVER",
                defaults.max_requests_per_driver,
            )?,
            max_rps: read("LOADWAVE_MAX_RPS", defaults.max_rps)?,
            max_duration_s: read("LOADWAVE_MAX_DURATION_S", defaults.max_duration_s)?,
        })
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
            let field = if spec.stages.is_some() {
                "stages"
            } else if spec.duration_s.is_some() {
                "duration_s"
            } else {
                "requests_per_driver"
            };
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
}
