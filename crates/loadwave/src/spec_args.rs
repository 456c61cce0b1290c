//! The test-spec flags shared by `loadwave run` and `loadwave start`, and turning them
//! into a validated [`TestSpec`].

use std::path::PathBuf;

use clap::Args;
use loadwave_proto::{TestSpec, parse_duration_s};
use serde_json::{Map, Value, json};

/// A test spec given as flags, a JSON file, or both (flags win).
#[derive(Debug, Args)]
pub struct SpecArgs {
    /// A JSON test spec (the body of `POST /tests`); flags given as well override it.
    #[arg(long, value_name = "FILE")]
    pub spec: Option<PathBuf>,
    /// A label shown in reports.
    #[arg(long)]
    pub name: Option<String>,
    /// The URL to load (http or https).
    #[arg(long, value_name = "URL")]
    pub target_url: Option<String>,
    /// `avalanche` (closed model, as fast as the target answers) or `tsunami` (open model,
    /// one request every --delay-ms per driver).
    #[arg(long, value_name = "TYPE")]
    pub test_type: Option<String>,
    /// Driver nodes (in `run`, concurrent drivers in this process).
    #[arg(long, value_name = "N")]
    pub drivers: Option<u32>,
    /// Requests each driver sends (at most, with --duration or --stage).
    #[arg(long, short = 'n', value_name = "N")]
    pub requests_per_driver: Option<u64>,
    /// How long the test sends, e.g. `30s`, `500ms`, `10m`, `1h`, `1m30s`; requests in
    /// flight at the end complete and are counted. With -n too, whichever comes first.
    #[arg(long, short = 'd', value_name = "DURATION")]
    pub duration: Option<String>,
    /// Requests in flight per driver (one keep-alive connection each).
    #[arg(long, short = 'c', value_name = "N")]
    pub concurrency: Option<u32>,
    /// Tsunami: delay between two requests of a driver, ms (fractions allowed).
    #[arg(long, value_name = "MS")]
    pub delay_ms: Option<f64>,
    /// Tsunami: requests per second for the whole test, split over its drivers (instead
    /// of --delay-ms).
    #[arg(long, value_name = "RPS")]
    pub rate: Option<f64>,
    /// A stage `DURATION:TARGET` (e.g. `30s:200`), a linear ramp from the previous
    /// target; repeat for more. Tsunami: TARGET is the whole test's requests per second;
    /// Avalanche: connections per driver. The stages' total is the test's duration.
    #[arg(long = "stage", value_name = "DURATION:TARGET")]
    pub stages: Vec<String>,
    /// Where the first stage ramps from (default 0).
    #[arg(long, value_name = "N")]
    pub start_target: Option<f64>,
    /// How long after the start abort thresholds begin to count, e.g. `5s` (the default).
    #[arg(long, value_name = "DURATION")]
    pub abort_grace: Option<String>,
    /// Per-request timeout, ms.
    #[arg(long, value_name = "MS")]
    pub timeout_ms: Option<u64>,
    /// HTTP method.
    #[arg(long, short = 'm')]
    pub method: Option<String>,
    /// A request header, `Name: value`; repeat for more.
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// The request body.
    #[arg(long, conflicts_with = "body_file")]
    pub body: Option<String>,
    /// Read the request body from a file.
    #[arg(long, value_name = "FILE")]
    pub body_file: Option<PathBuf>,
    /// A pass/fail criterion such as `p99 < 200ms`, `error_rate < 1%`, `rps > 1000`,
    /// `p95{checkout} < 300ms` (one request of a mix); end it with ` abort` to stop the
    /// whole test as soon as it breaks. Repeat for more. Any failing threshold makes the
    /// exit code 1.
    #[arg(long = "threshold", value_name = "EXPR")]
    pub thresholds: Vec<String>,
}

/// A spec that could not be built, worded for the command line.
#[derive(Debug)]
pub struct SpecArgsError(pub String);

impl std::fmt::Display for SpecArgsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SpecArgsError {}

impl SpecArgs {
    /// Merges the spec file and the flags, then validates. Errors name the flag (or the
    /// spec file's field) at fault.
    pub fn to_spec(&self) -> Result<TestSpec, SpecArgsError> {
        let mut doc = match &self.spec {
            Some(path) => {
                let text = std::fs::read(path).map_err(|e| {
                    SpecArgsError(format!("--spec: cannot read {}: {e}", path.display()))
                })?;
                match serde_json::from_slice::<Value>(&text) {
                    Ok(Value::Object(map)) => map,
                    Ok(_) => {
                        return Err(SpecArgsError(format!(
                            "--spec: {} must hold a JSON object",
                            path.display()
                        )));
                    }
                    Err(e) => {
                        return Err(SpecArgsError(format!(
                            "--spec: {} is not valid JSON: {e}",
                            path.display()
                        )));
                    }
                }
            }
            None => Map::new(),
        };
        let mut from_flags: Vec<&'static str> = Vec::new();
        let mut set = |doc: &mut Map<String, Value>, field: &'static str, value: Value| {
            doc.insert(field.to_string(), value);
            from_flags.push(field);
        };
        if let Some(v) = &self.name {
            set(&mut doc, "name", json!(v));
        }
        if let Some(v) = &self.target_url {
            set(&mut doc, "target_url", json!(v));
        }
        if let Some(v) = &self.test_type {
            set(&mut doc, "test_type", json!(v.to_ascii_lowercase()));
        }
        if let Some(v) = self.drivers {
            set(&mut doc, "drivers", json!(v));
        }
        if let Some(v) = self.requests_per_driver {
            set(&mut doc, "requests_per_driver", json!(v));
        }
        if let Some(v) = &self.duration {
            let secs =
                parse_duration_s(v).map_err(|e| SpecArgsError(format!("--duration: {e}")))?;
            set(&mut doc, "duration_s", json!(secs));
        }
        if let Some(v) = self.concurrency {
            set(&mut doc, "concurrency", json!(v));
        }
        if let Some(v) = self.delay_ms {
            set(&mut doc, "delay_ms", json!(v));
        }
        if let Some(v) = self.rate {
            set(&mut doc, "rate", json!(v));
        }
        if !self.stages.is_empty() {
            let mut stages = Vec::with_capacity(self.stages.len());
            for text in &self.stages {
                let bad = |why: String| SpecArgsError(format!("--stage `{text}`: {why}"));
                let (duration, target) = text
                    .rsplit_once(':')
                    .ok_or_else(|| bad("write it as DURATION:TARGET, e.g. 30s:200".to_string()))?;
                let duration_s = parse_duration_s(duration).map_err(bad)?;
                let target: f64 = target
                    .trim()
                    .parse()
                    .map_err(|_| bad(format!("the target `{}` is not a number", target.trim())))?;
                stages.push(json!({ "duration_s": duration_s, "target": target }));
            }
            set(&mut doc, "stages", Value::Array(stages));
        }
        if let Some(v) = self.start_target {
            set(&mut doc, "start_target", json!(v));
        }
        if let Some(v) = &self.abort_grace {
            let secs =
                parse_duration_s(v).map_err(|e| SpecArgsError(format!("--abort-grace: {e}")))?;
            set(&mut doc, "abort_grace_s", json!(secs));
        }
        if let Some(v) = self.timeout_ms {
            set(&mut doc, "timeout_ms", json!(v));
        }
        if let Some(v) = &self.method {
            set(&mut doc, "method", json!(v.to_ascii_uppercase()));
        }
        if !self.headers.is_empty() {
            let mut headers = doc
                .get("headers")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            for h in &self.headers {
                let (name, value) = h.split_once(':').ok_or_else(|| {
                    SpecArgsError(format!("--header: `{h}` is not of the form `Name: value`"))
                })?;
                headers.insert(name.trim().to_string(), json!(value.trim()));
            }
            set(&mut doc, "headers", Value::Object(headers));
        }
        if let Some(v) = &self.body {
            set(&mut doc, "body", json!(v));
        }
        if let Some(path) = &self.body_file {
            let body = std::fs::read_to_string(path).map_err(|e| {
                SpecArgsError(format!("--body-file: cannot read {}: {e}", path.display()))
            })?;
            set(&mut doc, "body", json!(body));
        }
        if !self.thresholds.is_empty() {
            set(&mut doc, "thresholds", json!(self.thresholds));
        }
        let bytes = serde_json::to_vec(&Value::Object(doc)).expect("JSON values serialize");
        TestSpec::from_json(&bytes).map_err(|err| {
            let top = err.field.split(['.', '[']).next().unwrap_or(&err.field);
            let known = from_flags.iter().find(|f| **f == top);
            let source = match (known, &self.spec) {
                (Some(field), _) => format!("--{}", flag_name(field)),
                (None, Some(path)) => format!("{} field `{}`", path.display(), err.field),
                (None, None) => format!("--{}", flag_name(&err.field)),
            };
            let said = if self.spec.is_some() {
                err.message.clone()
            } else {
                in_flag_words(&err.message)
            };
            let message = if err.message.starts_with("missing field") {
                format!("--{} is required", flag_name(&err.field))
            } else if said.starts_with("is required") && known.is_none() {
                format!("--{} {said}", flag_name(&err.field))
            } else {
                format!("{source}: {said}")
            };
            SpecArgsError(message)
        })
    }
}

/// `requests_per_driver` → `requests-per-driver`; `headers` → `header`;
/// `stages[1].duration_s` → `stage`.
fn flag_name(field: &str) -> String {
    let top = field.split(['.', '[']).next().unwrap_or(field);
    match top {
        "headers" => "header".to_string(),
        "thresholds" => "threshold".to_string(),
        "stages" => "stage".to_string(),
        "duration_s" => "duration".to_string(),
        "abort_grace_s" => "abort-grace".to_string(),
        other => other.replace('_', "-"),
    }
}

/// A validation message about spec fields, reworded in the flags' names for a command
/// line without a spec file (`duration_s` → `--duration`).
fn in_flag_words(message: &str) -> String {
    const FIELDS: [&str; 7] = [
        "requests_per_driver",
        "abort_grace_s",
        "start_target",
        "target_url",
        "duration_s",
        "delay_ms",
        "stages",
    ];
    let mut out = message.to_string();
    for field in FIELDS {
        out = out.replace(field, &format!("--{}", flag_name(field)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        spec: SpecArgs,
    }

    fn spec(args: &[&str]) -> Result<TestSpec, SpecArgsError> {
        let mut argv = vec!["x"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).unwrap().spec.to_spec()
    }

    #[test]
    fn flags_build_a_spec() {
        let s = spec(&[
            "--target-url",
            "http://127.0.0.1:1/ping",
            "--test-type",
            "TSUNAMI",
            "--drivers",
            "2",
            "-n",
            "5",
            "--delay-ms",
            "2.5",
            "-H",
            "x-a: b",
            "--threshold",
            "p99 < 5ms",
        ])
        .unwrap();
        assert_eq!(s.drivers, 2);
        assert_eq!(s.delay_ms, Some(2.5));
        assert_eq!(s.headers["x-a"], "b");
        assert_eq!(s.thresholds.len(), 1);
    }

    #[test]
    fn errors_name_the_flag() {
        let base = [
            "--target-url",
            "http://h/",
            "--test-type",
            "avalanche",
            "-n",
            "1",
        ];
        let with = |extra: &[&str]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            spec(&v).unwrap_err().0
        };
        assert!(with(&["--drivers", "0"]).starts_with("--drivers:"));
        assert!(with(&["--concurrency", "0"]).starts_with("--concurrency:"));
        assert!(with(&["--threshold", "p99 <"]).starts_with("--threshold:"));
        assert!(with(&["-H", "novalue"]).starts_with("--header:"));
        let missing = spec(&["--target-url", "http://h/", "--test-type", "avalanche"]).unwrap_err();
        assert_eq!(
            missing.0,
            "--requests-per-driver is required unless --duration or --stage bound the test"
        );
        let no_url = spec(&["--test-type", "avalanche", "-n", "1"]).unwrap_err();
        assert!(
            no_url.0.starts_with("--target-url is required"),
            "{}",
            no_url.0
        );
        let bad_url = spec(&[
            "--target-url",
            "ftp://h/",
            "--test-type",
            "avalanche",
            "-n",
            "1",
        ]);
        assert!(bad_url.unwrap_err().0.starts_with("--target-url:"));
    }

    #[test]
    fn profile_flags_build_a_spec() {
        let s = spec(&[
            "--target-url",
            "http://127.0.0.1:1/",
            "--test-type",
            "tsunami",
            "--stage",
            "30s:200",
            "--stage",
            "1m:200",
            "--stage",
            "500ms:0",
            "--start-target",
            "20",
            "--abort-grace",
            "10s",
            "--threshold",
            "error_rate < 5% abort",
        ])
        .unwrap();
        let stages = s.stages.as_ref().unwrap();
        assert_eq!(stages.len(), 3);
        assert_eq!((stages[1].duration_s, stages[1].target), (60.0, 200.0));
        assert_eq!(stages[2].duration_s, 0.5);
        assert_eq!(s.start_target, Some(20.0));
        assert_eq!(s.abort_grace_s, Some(10.0));
        assert!(s.thresholds[0].abort);
        let s = spec(&[
            "--target-url",
            "http://127.0.0.1:1/",
            "--test-type",
            "tsunami",
            "--rate",
            "500",
            "--duration",
            "1m30s",
        ])
        .unwrap();
        assert_eq!((s.rate, s.duration_s), (Some(500.0), Some(90.0)));
    }

    #[test]
    fn profile_errors_name_the_flag() {
        let with = |extra: &[&str]| {
            let mut v = vec!["--target-url", "http://h/"];
            v.extend_from_slice(extra);
            spec(&v).unwrap_err().0
        };
        let cases: &[(&[&str], &str)] = &[
            (
                &["--test-type", "avalanche", "--duration", "3x"],
                "--duration: `3x`: unknown unit `x`",
            ),
            (
                &["--test-type", "avalanche", "--duration", "30"],
                "--duration: `30` has no unit",
            ),
            (
                &["--test-type", "avalanche", "--duration", "0s"],
                "--duration:",
            ),
            (
                &["--test-type", "avalanche", "--stage", "10"],
                "--stage `10`:",
            ),
            (
                &["--test-type", "avalanche", "--stage", "10s:many"],
                "--stage `10s:many`: the target",
            ),
            (
                &["--test-type", "tsunami", "--stage", "0s:10"],
                "--stage: must be ",
            ),
            (
                &[
                    "--test-type",
                    "tsunami",
                    "--stage",
                    "2s:10",
                    "--stage",
                    "1q:5",
                ],
                "--stage `1q:5`: `1q`: unknown unit",
            ),
            (
                &["--test-type", "avalanche", "--rate", "100", "-n", "5"],
                "--rate: applies to tsunami",
            ),
            (
                &[
                    "--test-type",
                    "tsunami",
                    "--rate",
                    "100",
                    "--delay-ms",
                    "5",
                    "-n",
                    "5",
                ],
                "--rate: give --delay-ms",
            ),
            (
                &[
                    "--test-type",
                    "tsunami",
                    "--stage",
                    "2s:10",
                    "--duration",
                    "5s",
                ],
                "--duration: with --stage, the test lasts",
            ),
            (
                &["--test-type", "avalanche", "-n", "5", "--start-target", "2"],
                "--start-target: applies to --stage only",
            ),
            (
                &[
                    "--test-type",
                    "avalanche",
                    "-n",
                    "5",
                    "--abort-grace",
                    "soon",
                ],
                "--abort-grace: `soon`",
            ),
            (
                &["--test-type", "avalanche", "-c", "3", "--stage", "2s:4"],
                "--concurrency: with --stage",
            ),
        ];
        for (args, wanted) in cases {
            let err = with(args);
            assert!(err.starts_with(wanted), "{args:?}: {err}");
        }
    }
}
