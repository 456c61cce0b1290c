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
    let child = loadwave()
        .args([
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
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
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
