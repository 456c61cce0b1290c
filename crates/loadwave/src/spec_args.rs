//! The test-spec flags shared by `loadwave run` (and, later, `loadwave start`), and
//! turning them into a validated [`TestSpec`].

use std::path::PathBuf;

use clap::Args;
use loadwave_proto::TestSpec;
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
    /// Requests each driver sends.
    #[arg(long, short = 'n', value_name = "N")]
    pub requests_per_driver: Option<u64>,
    /// Requests in flight per driver (one keep-alive connection each).
    #[arg(long, short = 'c', value_name = "N")]
    pub concurrency: Option<u32>,
    /// Tsunami: delay between two requests of a driver, ms (fractions allowed).
    #[arg(long, value_name = "MS")]
    pub delay_ms: Option<f64>,
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
    /// A pass/fail criterion such as `p99 < 200ms`, `error_rate < 1%`, `rps > 1000`;
    /// repeat for more. Any failing threshold makes the exit code 1.
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
        if let Some(v) = self.concurrency {
            set(&mut doc, "concurrency", json!(v));
        }
        if let Some(v) = self.delay_ms {
            set(&mut doc, "delay_ms", json!(v));
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
            let mut message = format!("{source}: {}", err.message);
            if err.message.starts_with("missing field") {
                message = format!("--{} is required", flag_name(&err.field));
            }
            SpecArgsError(message)
        })
    }
}

/// `requests_per_driver` → `requests-per-driver`; `headers` → `header`.
fn flag_name(field: &str) -> String {
    match field {
        "headers" => "header".to_string(),
        "thresholds" => "threshold".to_string(),
        other => other
            .split(['.', '['])
            .next()
            .unwrap_or(other)
            .replace('_', "-"),
    }
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
        assert_eq!(missing.0, "--requests-per-driver is required");
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
}
