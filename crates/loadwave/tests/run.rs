//! `loadwave run` end to end: the real binary against a real `loadwave-target` on a free
//! port, its JSON checked against the target's own counts.
//!
//! `make test` builds every binary of the workspace first; the target binary sits next to
//! `loadwave` in the same target directory.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::cargo::CommandCargoExt;
use loadwave_testkit::{TargetServer, bin};
use serde_json::Value;

/// A `loadwave-target` on a free port.
struct Target(TargetServer);

impl Target {
    fn start(extra: &[&str]) -> Target {
        Target(TargetServer::start(
            &bin(env!("CARGO_BIN_EXE_loadwave"), "loadwave-target"),
            extra,
        ))
    }

    fn url(&self, path: &str) -> String {
        self.0.url(path)
    }

    fn metrics(&self) -> Value {
        self.0.metrics()
    }
}

fn loadwave() -> Command {
    let mut cmd = Command::cargo_bin("loadwave").unwrap();
    cmd.env("RUST_LOG", "error");
    cmd
}

/// Runs `loadwave run ARGS --json`; returns exit code, parsed JSON and stderr.
fn run_json(args: &[&str]) -> (i32, Value, String) {
    let out = loadwave()
        .arg("run")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON on stdout ({e}); stderr: {stderr}"));
    (out.status.code().unwrap_or(-1), json, stderr)
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

#[test]
fn avalanche_counts_match_the_targets_own() {
    let target = Target::start(&[]);
    let url = target.url("/ping");
    let (code, json, stderr) = run_json(&[
        "--target-url",
        &url,
        "--test-type",
        "avalanche",
        "--drivers",
        "3",
        "--requests-per-driver",
        "2000",
        "--concurrency",
        "8",
        "--threshold",
        "error_rate < 1%",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let s = &json["summary"];
    let m = target.metrics();
    assert_eq!(u(&s["requests"]), 6000);
    assert_eq!(u(&m["requests"]), 6000, "the target saw every request once");
    assert_eq!(u(&m["responses"]), 6000);
    assert_eq!(u(&s["status_codes"]["200"]), 6000);
    assert_eq!(u(&s["errors"]), 0);
    assert_eq!(json["status"], "completed");
    assert_eq!(json["verdict"]["passed"], true);
    let drivers = json["drivers"].as_array().unwrap();
    assert_eq!(drivers.len(), 3);
    assert!(
        drivers
            .iter()
            .all(|d| u(&d["requests"]) == 2000 && d["state"] == "completed")
    );
    // At most drivers × concurrency connections (plus the one that read /metrics):
    // keep-alive connections were reused.
    assert!(u(&m["connections"]) <= 24 + 1, "{m}");
    let l = &s["latency_ms"];
    for k in ["min", "p50", "p90", "p99", "p999", "max"] {
        assert!(l[k].as_f64().unwrap() > 0.0, "{k} in {l}");
    }
    assert!(l["p50"].as_f64() <= l["p99"].as_f64() && l["p99"].as_f64() <= l["max"].as_f64());
    let timeline_total: u64 = json["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| u(&p["requests"]))
        .sum();
    assert_eq!(timeline_total, 6000);
}

#[test]
fn tsunami_follows_its_schedule() {
    let target = Target::start(&[]);
    let url = target.url("/ping");
    let started = Instant::now();
    // Request k of each driver is due at k × 25 ms: the last (k = 59) at 1475 ms.
    let (code, json, stderr) = run_json(&[
        "--target-url",
        &url,
        "--test-type",
        "tsunami",
        "--drivers",
        "2",
        "--requests-per-driver",
        "60",
        "--concurrency",
        "4",
        "--delay-ms",
        "25",
    ]);
    let wall = started.elapsed();
    assert_eq!(code, 0, "{stderr}");
    let s = &json["summary"];
    assert_eq!(u(&s["requests"]), 120);
    assert_eq!(u(&target.metrics()["requests"]), 120);
    assert_eq!(
        u(&s["late"]),
        0,
        "with a fast target a connection is always free"
    );
    let duration = s["duration_s"].as_f64().unwrap();
    assert!(
        (1.475..1.475 + 0.3).contains(&duration),
        "ran for {duration} s against a 1.475 s schedule"
    );
    assert!(wall >= Duration::from_millis(1475));
    // 40 requests per driver are due in second 0 and 20 in second 1.
    let timeline = json["timeline"].as_array().unwrap();
    assert_eq!(timeline.len(), 2, "{timeline:?}");
    let first = u(&timeline[0]["requests"]);
    assert!((76..=80).contains(&first), "{timeline:?}");
    assert_eq!(first + u(&timeline[1]["requests"]), 120);
}

#[test]
fn tsunami_measures_from_the_due_time() {
    // Requests are due every 10 ms but each takes 40 ms on the one connection: request k
    // waits about 30·k ms for it. A tool that timed from the send would report ~40 ms.
    let target = Target::start(&[]);
    let url = target.url("/ping?delay_ms=40");
    let (code, json, stderr) = run_json(&[
        "--target-url",
        &url,
        "--test-type",
        "tsunami",
        "--requests-per-driver",
        "20",
        "--concurrency",
        "1",
        "--delay-ms",
        "10",
        "--threshold",
        "p99 < 100ms",
    ]);
    assert_eq!(code, 1, "the p99 threshold must fail: {stderr}");
    let s = &json["summary"];
    assert_eq!(u(&s["requests"]), 20);
    assert!(u(&s["late"]) >= 15, "{s}");
    let l = &s["latency_ms"];
    assert!(l["max"].as_f64().unwrap() >= 500.0, "{l}");
    assert!(l["p50"].as_f64().unwrap() >= 200.0, "{l}");
    assert!(l["min"].as_f64().unwrap() >= 40.0, "{l}");
}

#[test]
fn refused_connections_are_counted_as_connect_errors() {
    // Bind then drop a listener: nothing listens on that port now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/ping");
    let (code, json, stderr) = run_json(&[
        "--target-url",
        &url,
        "--test-type",
        "avalanche",
        "--drivers",
        "2",
        "--requests-per-driver",
        "25",
        "--threshold",
        "error_rate < 1%",
    ]);
    assert_eq!(code, 1, "{stderr}");
    let s = &json["summary"];
    assert_eq!(u(&s["requests"]), 50);
    assert_eq!(u(&s["errors"]), 50);
    assert_eq!(u(&s["error_kinds"]["connect"]), 50);
    assert_eq!(u(&s["responses"]), 0);
    assert_eq!(json["status"], "completed");
}

#[test]
fn error_statuses_and_timeouts_are_counted_by_kind() {
    let target = Target::start(&[]);
    let url = target.url("/ping?status=503");
    let (code, json, _) = run_json(&[
        "--target-url",
        &url,
        "--test-type",
        "avalanche",
        "--requests-per-driver",
        "300",
        "--concurrency",
        "4",
    ]);
    assert_eq!(code, 0, "no thresholds: the run itself is fine");
    let s = &json["summary"];
    assert_eq!(u(&s["status_codes"]["503"]), 300);
    assert_eq!(u(&s["errors"]), 300);
    assert_eq!(u(&target.metrics()["requests"]), 300);

    let slow = target.url("/ping?delay_ms=3000");
    let (_, json, _) = run_json(&[
        "--target-url",
        &slow,
        "--test-type",
        "avalanche",
        "--requests-per-driver",
        "3",
        "--concurrency",
        "3",
        "--timeout-ms",
        "200",
    ]);
    assert_eq!(
        u(&json["summary"]["error_kinds"]["timeout"]),
        3,
        "{}",
        json["summary"]
    );
}

#[test]
fn a_spec_file_is_accepted_and_flags_override_it() {
    let target = Target::start(&[]);
    let dir = std::env::temp_dir().join(format!("loadwave-spec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("spec.json");
    std::fs::write(
        &path,
        serde_json::json!({
            "name": "from a file",
            "target_url": target.url("/ping"),
            "test_type": "avalanche",
            "requests_per_driver": 999,
            "method": "POST",
            "body": "hello",
            "headers": {"x-test": "1"},
        })
        .to_string(),
    )
    .unwrap();
    let (code, json, stderr) = run_json(&["--spec", path.to_str().unwrap(), "-n", "40"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(json["spec"]["name"], "from a file");
    assert_eq!(json["spec"]["method"], "POST");
    assert_eq!(u(&json["summary"]["requests"]), 40);
    assert_eq!(u(&target.metrics()["requests"]), 40);

    std::fs::write(&path, r#"{"target_url":"http://h/","test_type":"avalanche","requests_per_driver":1,"colour":"red"}"#).unwrap();
    let out = loadwave()
        .args(["run", "--spec", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("colour"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_flags_exit_2_and_name_the_flag() {
    let base = [
        ("--target-url", "http://127.0.0.1:9/"),
        ("--test-type", "avalanche"),
        ("--requests-per-driver", "1"),
    ];
    let cases: &[(&str, &str, &str)] = &[
        ("--drivers", "0", "--drivers"),
        ("--concurrency", "0", "--concurrency"),
        ("--requests-per-driver", "0", "--requests-per-driver"),
        ("--target-url", "ftp://127.0.0.1/", "--target-url"),
        ("--target-url", "not a url", "--target-url"),
        ("--test-type", "storm", "--test-type"),
        ("--test-type", "tsunami", "--delay-ms"),
        ("--threshold", "p99 <", "--threshold"),
        ("--header", "no-colon", "--header"),
        ("--drivers", "many", "--drivers"),
        ("--timeout-ms", "0", "--timeout-ms"),
        ("--delay-ms", "5", "--delay-ms"),
        ("--bogus", "1", "--bogus"),
    ];
    for (flag, value, named) in cases {
        let mut cmd = loadwave();
        cmd.arg("run");
        for (f, v) in base.iter().filter(|(f, _)| f != flag) {
            cmd.args([f, v]);
        }
        let out = cmd.args([flag, value]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {stderr}");
        assert!(
            stderr.contains(named),
            "{flag} {value} should name {named}: {stderr}"
        );
    }
    let out = loadwave()
        .args(["run", "--test-type", "avalanche", "-n", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--target-url is required"));
}

#[test]
fn the_table_is_printed_without_json() {
    let target = Target::start(&[]);
    let out = loadwave()
        .args([
            "run",
            "--target-url",
            &target.url("/ping"),
            "--test-type",
            "avalanche",
            "-n",
            "50",
        ])
        .args(["--threshold", "p99 < 10s"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "requests      50 of 50",
        "status codes  200: 50",
        "✓ p99 < 10s",
        "verdict       PASS",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
}

#[cfg(unix)]
#[test]
fn ctrl_c_stops_the_test_and_keeps_exact_counts() {
    let target = Target::start(&[]);
    let mut cmd = loadwave();
    cmd.args([
        "run",
        "--target-url",
        &target.url("/ping"),
        "--test-type",
        "tsunami",
    ])
    .args([
        "--requests-per-driver",
        "1000",
        "--delay-ms",
        "10",
        "--drivers",
        "2",
        "--json",
    ]);
    let (out, took) = interrupted(cmd, 1);
    assert!(took < Duration::from_secs(10), "took {took:?} to stop");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["status"], "stopped");
    let requests = u(&json["summary"]["requests"]);
    assert!((100..2000).contains(&requests), "{requests}");
    assert_eq!(
        requests,
        u(&target.metrics()["requests"]),
        "in-flight requests were counted"
    );
    assert!(
        json["drivers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["state"] == "stopped")
    );
}

/// One second of a run's timeline: (second, requests, planned requests, achieved
/// concurrency, planned concurrency).
type Second = (u64, u64, Option<u64>, f64, Option<f64>);

/// Per-second figures of a run's timeline.
fn timeline(json: &Value) -> Vec<Second> {
    json["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                u(&p["second"]),
                u(&p["requests"]),
                p["planned_requests"].as_u64(),
                p["concurrency"].as_f64().unwrap(),
                p["planned_concurrency"].as_f64(),
            )
        })
        .collect()
}

#[test]
fn a_duration_ends_the_test_and_in_flight_requests_are_counted() {
    // Every request takes 50 ms, so the end always finds some in flight.
    let target = Target::start(&[]);
    let started = Instant::now();
    let (code, json, stderr) = run_json(&[
        "--target-url",
        &target.url("/ping?delay_ms=50"),
        "--test-type",
        "avalanche",
        "--drivers",
        "2",
        "--concurrency",
        "4",
        "--duration",
        "3s",
    ]);
    let wall = started.elapsed();
    assert_eq!(code, 0, "{stderr}");
    let s = &json["summary"];
    assert_eq!(json["status"], "completed");
    assert_eq!(
        s["expected_requests"],
        Value::Null,
        "a time-bound closed test has no count"
    );
    let requests = u(&s["requests"]);
    assert_eq!(
        requests,
        u(&target.metrics()["requests"]),
        "the target saw every request once"
    );
    assert_eq!(u(&target.metrics()["in_flight"]), 0);
    // 8 connections × 20 requests a second × 3 s, give or take the machine.
    assert!((300..=480).contains(&requests), "{requests}");
    // The last request left before 3 s and took 50 ms: the run ends within that.
    let duration = s["duration_s"].as_f64().unwrap();
    assert!(
        (3.0..3.0 + 0.05 + 0.25).contains(&duration),
        "ran {duration} s"
    );
    assert!(wall < Duration::from_secs(6), "{wall:?}");
    let seconds = timeline(&json);
    assert!(
        seconds.iter().take(3).all(|p| p.4 == Some(8.0)),
        "{seconds:?}"
    );
    assert!(
        json["drivers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["state"] == "completed")
    );
}

#[test]
fn a_ramping_arrival_rate_delivers_each_seconds_plan() {
    // 0 → 400/s over 2 s, then down to 200/s over 2 s, split over two drivers:
    // 100, 300, 350 and 250 requests due in its four seconds.
    let target = Target::start(&[]);
    let (code, json, stderr) = run_json(&[
        "--target-url",
        &target.url("/ping"),
        "--test-type",
        "tsunami",
        "--drivers",
        "2",
        "--stage",
        "2s:400",
        "--stage",
        "2s:200",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let s = &json["summary"];
    assert_eq!(u(&s["expected_requests"]), 1000);
    let requests = u(&s["requests"]);
    assert!(requests.abs_diff(1000) <= 10, "{requests} of 1000 planned");
    assert_eq!(requests, u(&target.metrics()["requests"]));
    let seconds = timeline(&json);
    let planned: Vec<Option<u64>> = seconds.iter().take(4).map(|p| p.2).collect();
    assert_eq!(planned, vec![Some(100), Some(300), Some(350), Some(250)]);
    for &(second, got, plan, _, _) in seconds.iter().take(4) {
        let plan = plan.unwrap();
        assert!(
            got.abs_diff(plan) * 20 <= plan,
            "second {second}: {got} of {plan} planned; {seconds:?}"
        );
    }
    // Both drivers paced their half from the common start.
    for d in json["drivers"].as_array().unwrap() {
        assert_eq!(u(&d["expected_requests"]), 500);
        assert_eq!(u(&d["requests"]), 500);
    }
}

#[test]
fn ramping_concurrency_holds_the_connections_it_plans() {
    // Each driver ramps 0 → 8 connections over 2 s, holds 8 for a second, then retires
    // six of them over the last: 2, 6, 8 and 5 on average per driver in its four seconds.
    let target = Target::start(&[]);
    let (code, json, stderr) = run_json(&[
        "--target-url",
        &target.url("/ping?delay_ms=20"),
        "--test-type",
        "avalanche",
        "--drivers",
        "2",
        "--stage",
        "2s:8",
        "--stage",
        "1s:8",
        "--stage",
        "1s:2",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let seconds = timeline(&json);
    let planned: Vec<Option<f64>> = seconds.iter().take(4).map(|p| p.4).collect();
    assert_eq!(planned, vec![Some(4.0), Some(12.0), Some(16.0), Some(10.0)]);
    for &(second, _, _, got, plan) in seconds.iter().take(4) {
        let plan = plan.unwrap();
        assert!(
            (got - plan).abs() <= 0.15 * plan + 0.3,
            "second {second}: {got} in flight against {plan} planned; {seconds:?}"
        );
    }
    assert_eq!(
        u(&json["summary"]["requests"]),
        u(&target.metrics()["requests"])
    );
    // Every driver's eight workers got a connection of their own at the peak.
    assert!(u(&target.metrics()["connections"]) >= 16);
}

#[test]
fn a_weighted_mix_reports_each_request_on_its_own() {
    let target = Target::start(&[]);
    let dir = std::env::temp_dir().join(format!("loadwave-mix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("mix.json");
    std::fs::write(
        &path,
        serde_json::json!({
            "name": "shop",
            "test_type": "avalanche",
            "drivers": 2,
            "requests_per_driver": 2000,
            "concurrency": 4,
            "headers": {"x-suite": "mix"},
            "requests": [
                {"name": "browse", "url": target.url("/ping"), "weight": 3},
                {"name": "checkout", "method": "POST", "url": target.url("/ping?delay_ms=5"),
                 "body": "{\"cart\":1}", "weight": 1},
            ],
            "thresholds": ["p99{browse} < 5s", "p50{checkout} < 1ms"],
        })
        .to_string(),
    )
    .unwrap();
    let (code, json, stderr) = run_json(&["--spec", path.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(code, 1, "p50{{checkout}} cannot be under 1 ms: {stderr}");
    let s = &json["summary"];
    assert_eq!(u(&s["requests"]), 4000);
    assert_eq!(u(&target.metrics()["requests"]), 4000);
    let by = s["by_request"].as_array().unwrap();
    let (browse, checkout) = (&by[0], &by[1]);
    assert_eq!(
        (browse["name"].as_str(), checkout["name"].as_str()),
        (Some("browse"), Some("checkout"))
    );
    let (b, c) = (u(&browse["requests"]), u(&checkout["requests"]));
    assert_eq!(b + c, 4000);
    assert!((b as f64 / c as f64 - 3.0).abs() <= 0.15, "{b}:{c}");
    assert_eq!(u(&checkout["status_codes"]["200"]), c);
    // Each request's percentiles come from its own histogram.
    let p50 = |r: &Value| r["latency_ms"]["p50"].as_f64().unwrap();
    assert!(p50(checkout) >= 5.0, "{checkout}");
    assert!(p50(browse) < 5.0, "{browse}");
    let checks = json["verdict"]["checks"].as_array().unwrap();
    assert_eq!(checks[0]["passed"], true);
    assert_eq!(checks[1]["passed"], false);
    assert_eq!(checks[1]["actual"].as_f64(), Some(p50(checkout)));
    // The timeline splits the same way.
    let per_second: u64 = json["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| u(&p["by_request"][1]["requests"]))
        .sum();
    assert_eq!(per_second, c);
}

#[test]
fn an_abort_threshold_stops_a_long_test_early_with_every_request_counted() {
    // A 60 s test against a target that answers 500 to everything: the abort threshold
    // stops it once its default grace of 5 s has passed.
    let target = Target::start(&[]);
    let started = Instant::now();
    let (code, json, stderr) = run_json(&[
        "--target-url",
        &target.url("/ping?status=500"),
        "--test-type",
        "tsunami",
        "--drivers",
        "2",
        "--rate",
        "200",
        "--duration",
        "60s",
        "--threshold",
        "error_rate < 5% abort",
        "--threshold",
        "p99 < 10s",
    ]);
    let wall = started.elapsed();
    assert_eq!(code, 1, "{stderr}");
    assert!(wall < Duration::from_secs(12), "took {wall:?}");
    assert_eq!(json["status"], "stopped");
    let aborted = &json["aborted"];
    assert_eq!(aborted["threshold"], "error_rate < 5% abort");
    assert_eq!(aborted["actual"].as_f64(), Some(1.0));
    let at = aborted["at_s"].as_f64().unwrap();
    assert!((5.0..7.5).contains(&at), "aborted at {at} s");
    let reasons = json["verdict"]["reasons"].as_array().unwrap();
    assert!(
        reasons[0].as_str().unwrap().starts_with("aborted"),
        "{reasons:?}"
    );
    let requests = u(&json["summary"]["requests"]);
    assert_eq!(
        requests,
        u(&target.metrics()["requests"]),
        "in-flight requests were counted"
    );
    assert!((1000..1600).contains(&requests), "{requests}");
    for d in json["drivers"].as_array().unwrap() {
        assert_eq!(d["state"], "stopped");
        assert_eq!(u(&d["expected_requests"]), 6000);
        assert_eq!(u(&d["missing_requests"]), 6000 - u(&d["requests"]));
    }
}

#[test]
fn bad_profile_flags_exit_2_and_name_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--test-type", "avalanche", "--duration", "3x"],
            "--duration",
        ),
        (
            &["--test-type", "avalanche", "--duration", "30"],
            "--duration",
        ),
        (&["--test-type", "tsunami", "--stage", "0s:10"], "--stage"),
        (&["--test-type", "tsunami", "--stage", "5s"], "--stage"),
        (
            &["--test-type", "avalanche", "--rate", "100", "-n", "10"],
            "--rate",
        ),
        (
            &[
                "--test-type",
                "tsunami",
                "--rate",
                "100",
                "--delay-ms",
                "2",
                "-n",
                "10",
            ],
            "--rate",
        ),
        (
            &["--test-type", "tsunami", "--rate=-5", "-n", "10"],
            "--rate",
        ),
        (
            &[
                "--test-type",
                "avalanche",
                "--stage",
                "1s:4",
                "--duration",
                "2s",
            ],
            "--duration",
        ),
        (&["--test-type", "avalanche", "--stage", "1s:0"], "--stage"),
        (
            &[
                "--test-type",
                "avalanche",
                "-n",
                "5",
                "--threshold",
                "p99 < 1ms abortt",
            ],
            "--threshold",
        ),
        (
            &[
                "--test-type",
                "avalanche",
                "-n",
                "5",
                "--threshold",
                "p99{x} < 1ms",
            ],
            "--threshold",
        ),
        (
            &["--test-type", "avalanche", "-n", "5", "--abort-grace=-1s"],
            "--abort-grace",
        ),
        (
            &["--test-type", "avalanche"],
            "--requests-per-driver is required unless --duration or --stage",
        ),
    ];
    for (args, named) in cases {
        let out = loadwave()
            .args(["run", "--target-url", "http://127.0.0.1:9/"])
            .args(*args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(named),
            "{args:?} should name {named}: {stderr}"
        );
    }
    // A mix's errors name the spec file's field.
    let dir = std::env::temp_dir().join(format!("loadwave-badmix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("mix.json");
    for (mix, field) in [
        (
            serde_json::json!([{"name": "a", "url": "http://127.0.0.1:9/", "weight": 0}]),
            "field `requests`",
        ),
        (
            serde_json::json!([{"name": "a", "url": "ftp://127.0.0.1:9/"}]),
            "field `requests[0].url`",
        ),
        (serde_json::json!([]), "field `requests`"),
    ] {
        std::fs::write(
            &path,
            serde_json::json!({"test_type": "avalanche", "requests_per_driver": 1, "requests": mix})
                .to_string(),
        )
        .unwrap();
        let out = loadwave()
            .args(["run", "--spec", path.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(field), "{field}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Spawns `cmd`, sends it `ctrl_c` SIGINTs (1.5 s in, then 300 ms apart) and waits for it
/// to exit: its output and how long it took after the last signal.
fn interrupted(mut cmd: Command, ctrl_c: usize) -> (std::process::Output, Duration) {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    for i in 0..ctrl_c {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(300));
        }
        kill("INT", child.id());
    }
    let signalled = Instant::now();
    let out = child.wait_with_output().unwrap();
    (out, signalled.elapsed())
}

/// Sends `signal` to `pid`.
fn kill(signal: &str, pid: u32) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

#[cfg(unix)]
#[test]
fn a_stop_is_bounded_even_when_the_target_stalls_and_a_second_ctrl_c_exits_at_once() {
    // Every request takes a minute (the timeout allows two): in-flight requests cannot
    // finish, so a Ctrl-C alone ends the process at its stop deadline.
    let target = Target::start(&[]);
    let url = target.url("/ping?delay_ms=60000");
    let command = || {
        let mut cmd = loadwave();
        cmd.args(["run", "--target-url", &url, "--test-type", "avalanche"])
            .args(["--concurrency", "2", "--duration", "1m"])
            .args(["--timeout-ms", "120000", "--json"]);
        cmd
    };
    let (out, took) = interrupted(command(), 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(took < Duration::from_secs(10), "took {took:?}: {stderr}");
    assert!(
        took >= Duration::from_secs(8),
        "left before its deadline ({took:?}): {stderr}"
    );
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("did not stop within the deadline"),
        "{stderr}"
    );

    // A second Ctrl-C does not wait for anything.
    let (out, took) = interrupted(command(), 2);
    assert!(
        took < Duration::from_secs(2),
        "a second Ctrl-C took {took:?}"
    );
    assert_eq!(out.status.code(), Some(2));
}

#[cfg(unix)]
#[test]
fn the_target_stops_on_sigterm_even_with_requests_in_flight() {
    let mut target =
        TargetServer::start(&bin(env!("CARGO_BIN_EXE_loadwave"), "loadwave-target"), &[]);
    let url = target.url("/ping?delay_ms=60000");
    let addr = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    std::thread::spawn(move || loadwave_testkit::http_get(&addr, "/ping?delay_ms=60000"));
    std::thread::sleep(Duration::from_millis(300));
    let signalled = Instant::now();
    target.signal("TERM");
    while target.running() && signalled.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "the target took {:?} to stop",
        signalled.elapsed()
    );
}

#[cfg(unix)]
#[test]
fn start_wait_is_bounded_when_the_orchestrator_stops_answering() {
    use std::io::{Read, Write};
    // A real test's JSON, made to look as if it were still running.
    let target = Target::start(&[]);
    let (_, mut view, _) = run_json(&[
        "--target-url",
        &target.url("/ping"),
        "--test-type",
        "avalanche",
        "-n",
        "5",
    ]);
    view["status"] = "running".into();
    view["verdict"] = Value::Null;
    let created = view.to_string();
    // An orchestrator that takes the test, then never answers again.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut head = [0u8; 4096];
            let n = stream.read(&mut head).unwrap_or(0);
            if head[..n].starts_with(b"POST /tests") {
                let _ = write!(
                    stream,
                    "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{created}",
                    created.len()
                );
            } else {
                held.push(stream);
            }
        }
    });
    let mut cmd = loadwave();
    cmd.args(["--orchestrator", &format!("http://{addr}"), "start"])
        .args(["--target-url", "http://127.0.0.1:9/"])
        .args([
            "--test-type",
            "avalanche",
            "-n",
            "5",
            "--wait",
            "--no-progress",
        ]);
    let (out, took) = interrupted(cmd, 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(took < Duration::from_secs(10), "took {took:?}: {stderr}");
    assert_eq!(out.status.code(), Some(2), "{stderr}");
}

/// A stand-in orchestrator on 127.0.0.1: answers each request with `answer(head)` (status
/// and JSON body) and keeps every request head it read.
#[cfg(unix)]
fn fake_orchestrator(
    answer: impl Fn(&str) -> (u16, String) + Send + 'static,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = heads.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 8192];
            let n = stream.read(&mut buf).unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            let (status, body) = answer(&head);
            seen.lock().unwrap().push(head);
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (format!("http://{addr}"), heads)
}

#[cfg(unix)]
#[test]
fn the_cli_strips_control_characters_from_what_servers_say() {
    // A real test's JSON (nothing listens on port 9: every request errors, quickly).
    let (_, mut view, _) = run_json(&[
        "--target-url",
        "http://127.0.0.1:9/",
        "--test-type",
        "avalanche",
        "-n",
        "5",
    ]);
    view["spec"]["name"] = "evil\u{1b}]0;pwned\u{7}\u{1b}[2J name".into();
    view["error"] = "boom\u{9b}31m\u{7f}\r".into();
    let view = view.to_string();
    let list =
        serde_json::json!([{"id": "t\u{1b}[1m1", "status": "completed", "name": "n\u{1b}[5m"}])
            .to_string();
    let (url, _) = fake_orchestrator(move |head| {
        if head.starts_with("GET /tests/t1 ") {
            (200, view.clone())
        } else if head.starts_with("GET /tests ") {
            (200, list.clone())
        } else {
            (
                404,
                r#"{"error":{"status":404,"message":"no \u001b[31mtest\u0007"}}"#.to_string(),
            )
        }
    });
    for args in [
        vec!["status", "t1"],
        vec!["list"],
        vec!["status", "nope"],
        vec!["stop", "nope"],
    ] {
        let out = loadwave()
            .args(["--orchestrator", &url])
            .args(&args)
            .env("LOADWAVE_TOKEN", "0123456789abcdef0123")
            .output()
            .unwrap();
        let printed = [out.stdout.as_slice(), out.stderr.as_slice()].concat();
        let text = String::from_utf8_lossy(&printed);
        assert!(
            !text
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t'),
            "{args:?} printed control characters: {text:?}"
        );
        assert!(
            text.contains("evil") || text.contains("n[5m") || text.contains("no [31mtest"),
            "{args:?}: {text}"
        );
    }
}

#[cfg(unix)]
#[test]
fn the_cli_finds_and_sends_the_token() {
    let (url, heads) = fake_orchestrator(|_| (200, "[]".to_string()));
    let dir = std::env::temp_dir().join(format!("lw-cli-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("token"), "from-the-data-dir-0123\n").unwrap();
    let file = dir.join("other");
    std::fs::write(&file, "from-the-token-file-0123\n").unwrap();
    let authorization = |extra: &[&str], env: Option<&str>| {
        let mut cmd = loadwave();
        cmd.args(["--orchestrator", &url, "list"]).args(extra);
        cmd.current_dir(&dir);
        match env {
            Some(t) => cmd.env("LOADWAVE_TOKEN", t),
            None => cmd.env_remove("LOADWAVE_TOKEN"),
        };
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let head = heads.lock().unwrap().pop().unwrap();
        head.lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .starts_with("authorization:")
                    .then(|| l["authorization:".len()..].trim().to_string())
            })
            .unwrap_or_default()
    };
    let data_dir = dir.to_str().unwrap();
    assert_eq!(
        authorization(&["--data-dir", data_dir], None),
        "Bearer from-the-data-dir-0123"
    );
    assert_eq!(
        authorization(&["--data-dir", data_dir], Some("from-the-env-0123")),
        "Bearer from-the-env-0123"
    );
    assert_eq!(
        authorization(
            &["--token-file", file.to_str().unwrap()],
            Some("from-the-env-0123")
        ),
        "Bearer from-the-token-file-0123"
    );
    // Nothing to find: no header at all (and no failure before the call).
    assert_eq!(authorization(&[], None), "");
    let _ = std::fs::remove_dir_all(&dir);
}
