//! The distributed stack on a real Apache Kafka broker: the real orchestrator, driver and
//! target binaries as processes, each test on its own topic prefix and data directory.
//!
//! `make test` starts the broker (`scripts/kafka.sh up`) and passes its address in
//! `KAFKA_BROKERS`. The broker-outage test starts a second broker of its own, since it
//! stops it. Tests here run one at a time: they share two cores with their processes.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use loadwave_testkit::{Proc, TargetServer, bin, free_port};
use serde_json::{Value, json};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").expect(
        "KAFKA_BROKERS must name a running Kafka broker; `make test` starts one (scripts/kafka.sh up)",
    )
}

fn exe(name: &str) -> PathBuf {
    bin(env!("CARGO_BIN_EXE_loadwave-orchestrator"), name)
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(20)))
        .http_status_as_error(false)
        .build()
        .into()
}

/// An orchestrator, its drivers and a target, on one topic prefix.
struct Stack {
    name: String,
    brokers: String,
    prefix: String,
    dir: PathBuf,
    port: u16,
    orchestrator: Option<Proc>,
    orchestrator_args: Vec<String>,
    drivers: Vec<(String, Proc)>,
    target: TargetServer,
    http: ureq::Agent,
    /// The API token the running orchestrator wrote to its data directory.
    token: String,
}

impl Stack {
    fn new(name: &str, brokers: &str) -> Stack {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let prefix = format!("t{nanos}.");
        let dir = std::env::temp_dir().join(format!("loadwave-cluster-{name}-{nanos}"));
        std::fs::create_dir_all(&dir).unwrap();
        Stack {
            name: name.to_string(),
            brokers: brokers.to_string(),
            prefix,
            dir,
            port: free_port(),
            orchestrator: None,
            orchestrator_args: Vec::new(),
            drivers: Vec::new(),
            target: TargetServer::start(&exe("loadwave-target"), &[]),
            http: agent(),
            token: String::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn start_orchestrator(&mut self, extra: &[&str]) {
        if !extra.is_empty() {
            self.orchestrator_args = extra.iter().map(|s| s.to_string()).collect();
        }
        // A restarted orchestrator makes a new token: the old one must not be read.
        let _ = std::fs::remove_file(self.dir.join("data/token"));
        let mut cmd = Command::new(exe("loadwave-orchestrator"));
        cmd.env_remove("LOADWAVE_TOKEN")
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--brokers", &self.brokers, "--topic-prefix", &self.prefix])
            .args(["--data-dir", self.dir.join("data").to_str().unwrap()])
            .args(["--start-lead-ms", "500"])
            .args(&self.orchestrator_args)
            .env("RUST_LOG", "info,librdkafka=warn,rdkafka=warn");
        self.orchestrator = Some(Proc::spawn_logged(
            &mut cmd,
            &self.dir.join("orchestrator.log"),
        ));
        self.token =
            loadwave_testkit::orchestrator_token(&self.dir.join("data"), Duration::from_secs(30));
        self.wait_answer("/healthz", 200, Duration::from_secs(30));
    }

    fn start_driver(&mut self, id: &str) {
        let mut cmd = Command::new(exe("loadwave-driver"));
        cmd.args([
            "--brokers",
            &self.brokers,
            "--topic-prefix",
            &self.prefix,
            "--driver-id",
            id,
        ])
        .env("RUST_LOG", "info,librdkafka=warn,rdkafka=warn");
        let proc = Proc::spawn_logged(&mut cmd, &self.dir.join(format!("{id}.log")));
        self.drivers.push((id.to_string(), proc));
    }

    fn driver(&mut self, id: &str) -> &mut Proc {
        &mut self
            .drivers
            .iter_mut()
            .find(|(d, _)| d == id)
            .expect("a driver")
            .1
    }

    /// The orchestrator's log and every driver's, for failure messages.
    fn logs(&self) -> String {
        let mut out = format!(
            "\n--- logs of {} in {} ---\n",
            self.name,
            self.dir.display()
        );
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
            {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(25).collect();
                out.push_str(&format!("== {}\n", e.path().display()));
                for line in tail.into_iter().rev() {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        out
    }

    fn get(&self, path: &str) -> (u16, Value) {
        let auth = loadwave_testkit::bearer(&self.token);
        match self
            .http
            .get(&self.url(path))
            .header("authorization", &auth)
            .call()
        {
            Ok(mut r) => {
                let status = r.status().as_u16();
                let text = r.body_mut().read_to_string().unwrap_or_default();
                (status, serde_json::from_str(&text).unwrap_or(Value::Null))
            }
            Err(_) => (0, Value::Null),
        }
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let mut r = self
            .http
            .post(&self.url(path))
            .header("content-type", "application/json")
            .header("authorization", &loadwave_testkit::bearer(&self.token))
            .send(body.to_string().as_bytes())
            .expect("orchestrator answers");
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Polls `probe` every 100 ms until it yields a value; fails after `limit`, with the
    /// last thing it looked at and every log of the stack.
    fn poll_until<T>(
        &self,
        limit: Duration,
        what: &str,
        mut probe: impl FnMut() -> Result<T, Value>,
    ) -> T {
        let started = Instant::now();
        loop {
            let last = match probe() {
                Ok(found) => return found,
                Err(last) => last,
            };
            assert!(started.elapsed() < limit, "{what}: {last}{}", self.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls `path` until it answers `status`.
    fn wait_answer(&self, path: &str, status: u16, limit: Duration) {
        self.poll_until(limit, &format!("{path} never answered {status}"), || {
            let (got, body) = self.get(path);
            if got == status { Ok(()) } else { Err(body) }
        })
    }

    fn wait_idle_drivers(&self, n: usize) {
        self.poll_until(
            Duration::from_secs(30),
            &format!("{n} drivers never idle"),
            || {
                let (_, drivers) = self.get("/drivers");
                let idle = drivers
                    .as_array()
                    .map(|d| d.iter().filter(|d| d["state"] == "idle").count())
                    .unwrap_or(0);
                if idle >= n { Ok(()) } else { Err(drivers) }
            },
        )
    }

    fn create(&self, spec: Value) -> String {
        let (status, view) = self.post("/tests", &spec);
        assert_eq!(status, 201, "{view}");
        view["id"].as_str().unwrap().to_string()
    }

    /// Polls the test until `done` holds for its view; returns that view.
    fn wait_test(
        &self,
        id: &str,
        limit: Duration,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        self.poll_until(limit, what, || {
            let (_, view) = self.get(&format!("/tests/{id}"));
            if done(&view) { Ok(view) } else { Err(view) }
        })
    }

    fn wait_status(&self, id: &str, status: &str, limit: Duration) {
        self.wait_test(id, limit, &format!("test never {status}"), |v| {
            v["status"] == status
        });
    }

    fn wait_finished(&self, id: &str, limit: Duration) -> Value {
        self.wait_test(id, limit, "test did not finish", |v| {
            matches!(
                v["status"].as_str(),
                Some("completed" | "failed" | "stopped")
            )
        })
    }

    fn spec(&self, test_type: &str, drivers: u32, requests: u64, delay_ms: Option<f64>) -> Value {
        let mut spec = json!({
            "target_url": self.target.url("/ping"),
            "test_type": test_type,
            "drivers": drivers,
            "requests_per_driver": requests,
            "concurrency": 8,
        });
        if let Some(d) = delay_ms {
            spec["delay_ms"] = json!(d);
        }
        spec
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

fn driver_sum(view: &Value) -> u64 {
    view["drivers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| u(&d["requests"]))
        .sum()
}

#[test]
fn three_pool_drivers_count_exactly_and_start_together() {
    let _serial = serial();
    let mut s = Stack::new("pool", &brokers());
    s.start_orchestrator(&[]);
    for d in ["d1", "d2", "d3"] {
        s.start_driver(d);
    }
    s.wait_idle_drivers(3);

    let id = s.create(s.spec("avalanche", 3, 3000, None));
    let view = s.wait_finished(&id, Duration::from_secs(60));
    let logs = s.logs();
    assert_eq!(view["status"], "completed", "{view}{logs}");
    assert_eq!(u(&view["summary"]["requests"]), 9000);
    assert_eq!(driver_sum(&view), 9000);
    assert_eq!(
        s.target.requests(),
        9000,
        "the target saw what the summary says"
    );
    assert_eq!(u(&view["summary"]["status_codes"]["200"]), 9000);
    assert!(
        view["drivers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["state"] == "completed" && d["missing_reports"] == 0)
    );
    // The drivers' first requests went out within a few ms of the common instant.
    let skew = view["summary"]["start_skew_ms"]
        .as_f64()
        .expect("a start skew");
    assert!(skew < 50.0, "start skew {skew} ms");
    assert_eq!(view["verdict"]["passed"], true, "{view}");

    // Tsunami: exact counts, on schedule (100 requests at 10 ms: 990 ms).
    s.wait_idle_drivers(3);
    let id = s.create(s.spec("tsunami", 3, 100, Some(10.0)));
    let view = s.wait_finished(&id, Duration::from_secs(60));
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(u(&view["summary"]["requests"]), 300);
    assert_eq!(s.target.requests(), 9300);
    let duration = view["summary"]["duration_s"].as_f64().unwrap();
    assert!((0.99..1.5).contains(&duration), "{duration}");

    // The CLI follows a test to its verdict and exits by it.
    s.wait_idle_drivers(3);
    let cli = |threshold: &str| {
        Command::new(exe("loadwave"))
            .args(["start", "--orchestrator", &s.url(""), "--wait", "--json"])
            // The CLI finds the token in the orchestrator's data directory.
            .args(["--data-dir", s.dir.join("data").to_str().unwrap()])
            .env_remove("LOADWAVE_TOKEN")
            .args([
                "--target-url",
                &s.target.url("/ping"),
                "--test-type",
                "avalanche",
            ])
            .args([
                "--drivers",
                "3",
                "--requests-per-driver",
                "200",
                "--threshold",
                threshold,
            ])
            .output()
            .unwrap()
    };
    let out = cli("error_rate < 1%");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let view: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(u(&view["summary"]["requests"]), 600);
    s.wait_idle_drivers(3);
    let out = cli("p99 < 1us");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(s.target.requests(), 9300 + 1200);
}

#[test]
fn a_killed_driver_is_named_lost_and_the_test_ends() {
    let _serial = serial();
    let mut s = Stack::new("lost", &brokers());
    s.start_orchestrator(&[]);
    for d in ["d1", "d2", "d3"] {
        s.start_driver(d);
    }
    s.wait_idle_drivers(3);
    // 400 requests at 10 ms: four seconds of load per driver.
    let id = s.create(s.spec("tsunami", 3, 400, Some(10.0)));
    // Kill d2 once it has reported some of its work.
    s.wait_test(&id, Duration::from_secs(30), "d2 reported nothing", |v| {
        v["drivers"]
            .as_array()
            .and_then(|d| d.iter().find(|d| d["id"] == "d2"))
            .and_then(|d| d["requests"].as_u64())
            .is_some_and(|n| n >= 50)
    });
    s.driver("d2").kill9();
    let view = s.wait_finished(&id, Duration::from_secs(60));
    assert_eq!(view["status"], "completed", "the others finished: {view}");
    let d2 = view["drivers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == "d2")
        .unwrap()
        .clone();
    assert_eq!(d2["state"], "lost", "{view}");
    let missing = u(&d2["missing_requests"]);
    assert!(missing > 0 && missing < 400, "{d2}");
    assert_eq!(u(&d2["requests"]) + missing, 400);
    for d in view["drivers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["id"] != "d2")
    {
        assert_eq!(
            (d["state"].as_str(), u(&d["requests"])),
            (Some("completed"), 400),
            "{d}"
        );
    }
    // The lost driver's reported work is kept; the target saw at least all of it.
    let total = u(&view["summary"]["requests"]);
    assert_eq!(total, driver_sum(&view));
    assert!(
        total >= 800 + 100 && s.target.requests() >= total,
        "{total}"
    );
    assert_eq!(view["verdict"]["passed"], false);
    let reasons = view["verdict"]["reasons"].to_string();
    assert!(reasons.contains("d2 was lost"), "{reasons}");
}

#[test]
fn a_killed_orchestrator_resumes_and_completes_exactly() {
    let _serial = serial();
    let mut s = Stack::new("restart", &brokers());
    s.start_orchestrator(&[]);
    for d in ["d1", "d2", "d3"] {
        s.start_driver(d);
    }
    s.wait_idle_drivers(3);
    let id = s.create(s.spec("tsunami", 3, 300, Some(10.0)));
    s.wait_status(&id, "running", Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(1200));
    s.orchestrator.as_mut().unwrap().kill9();
    std::thread::sleep(Duration::from_millis(1500));
    s.start_orchestrator(&[]);
    let view = s.wait_finished(&id, Duration::from_secs(90));
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(u(&view["summary"]["requests"]), 900, "{view}");
    assert_eq!(s.target.requests(), 900);
    assert!(
        view["drivers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["state"] == "completed" && d["missing_reports"] == 0),
        "{view}"
    );
    assert_eq!(view["verdict"]["passed"], true, "{view}");
    // Finished results survive a restart too.
    s.orchestrator.as_mut().unwrap().kill9();
    s.start_orchestrator(&[]);
    let (_, again) = s.get(&format!("/tests/{id}"));
    assert_eq!(again["summary"], view["summary"]);
}

#[test]
fn a_broker_outage_loses_no_report() {
    let _serial = serial();
    // A broker of this test's own, since it is stopped midway.
    let port = free_port();
    let controller_port = free_port();
    let kafka = |action: &str| {
        let status = Command::new("bash")
            .arg(repo_root().join("scripts/kafka.sh"))
            .arg(action)
            .env("KAFKA_PORT", port.to_string())
            .env("KAFKA_CONTROLLER_PORT", controller_port.to_string())
            .env("KAFKA_HEAP", "256m")
            .status()
            .unwrap();
        assert!(status.success(), "kafka.sh {action} failed");
    };
    struct Down<F: Fn(&str)>(F);
    impl<F: Fn(&str)> Drop for Down<F> {
        fn drop(&mut self) {
            (self.0)("down");
        }
    }
    kafka("up");
    let broker = Down(kafka);
    let mut s = Stack::new("outage", &format!("127.0.0.1:{port}"));
    s.start_orchestrator(&[]);
    s.start_driver("d1");
    s.start_driver("d2");
    s.wait_idle_drivers(2);
    // 600 requests at 10 ms: six seconds of load per driver.
    let id = s.create(s.spec("tsunami", 2, 600, Some(10.0)));
    s.wait_status(&id, "running", Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(1500));
    (broker.0)("stop");
    std::thread::sleep(Duration::from_secs(5));
    (broker.0)("start");
    let view = s.wait_finished(&id, Duration::from_secs(120));
    assert_eq!(view["status"], "completed", "{view}{}", s.logs());
    assert_eq!(u(&view["summary"]["requests"]), 1200, "{view}");
    assert_eq!(s.target.requests(), 1200);
    for d in view["drivers"].as_array().unwrap() {
        assert_eq!(d["state"], "completed", "{d}");
        assert_eq!(d["missing_reports"], 0, "{d}");
    }
    assert_eq!(view["verdict"]["passed"], true, "{view}");
    drop(s);
    drop(broker);
}

#[test]
fn garbage_on_every_topic_crashes_nothing() {
    let _serial = serial();
    let mut s = Stack::new("garbage", &brokers());
    s.start_orchestrator(&[]);
    s.start_driver("d1");
    s.start_driver("d2");
    s.wait_idle_drivers(2);
    // Garbage from a producer of our own: bytes, JSON that is no envelope, a future
    // version, a well-formed report of a test nobody knows.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bus = rt
        .block_on(loadwave_kafka::KafkaBus::connect(
            loadwave_kafka::KafkaConfig::new(brokers(), s.prefix.clone()),
        ))
        .unwrap();
    let unknown = json!({"v": 1, "body": {"type": "metrics", "test_id": "nope", "driver_id": "d1", "seq": 0,
        "final": true, "buckets": [], "totals": {"requests": 0, "errors": 0}, "elapsed_ms": 0,
        "health": {"cpu_percent": 0.0, "cores": 1, "lag_ms_mean": 0.0, "lag_ms_max": 0.0, "saturated": false}}});
    let payloads: Vec<Vec<u8>> = vec![
        vec![0xff, 0x00, 0x13, 0x37],
        b"{\"hello\": \"world\"}".to_vec(),
        b"{\"v\": 99, \"body\": {}}".to_vec(),
        b"{\"v\": 1, \"body\": {\"type\": \"trigger\", \"test_id\": 5}}".to_vec(),
        Vec::new(),
        unknown.to_string().into_bytes(),
    ];
    rt.block_on(async {
        use loadwave_bus::Bus;
        for topic in loadwave_proto::Topic::ALL {
            for p in &payloads {
                bus.publish_raw(topic, "garbage", p.clone()).await.unwrap();
            }
        }
    });
    // Everyone is still up, and a test runs normally.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(s.orchestrator.as_mut().unwrap().running(), "{}", s.logs());
    for (_, d) in s.drivers.iter_mut() {
        assert!(d.running());
    }
    s.wait_idle_drivers(2);
    let id = s.create(s.spec("avalanche", 2, 500, None));
    let view = s.wait_finished(&id, Duration::from_secs(60));
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(u(&view["summary"]["requests"]), 1000);
    assert_eq!(s.target.requests(), 1000);
    let (_, health) = s.get("/healthz");
    // The orchestrator reads register, heartbeat and metrics: 5 undecodable payloads each.
    assert!(u(&health["bus"]["malformed"]) >= 15, "{health}");
    assert!(u(&health["bus"]["unknown_test"]) >= 1, "{health}");
}

#[test]
fn the_process_launcher_starts_dedicated_drivers() {
    let _serial = serial();
    let mut s = Stack::new("process", &brokers());
    let logs = s.dir.join("drivers");
    s.start_orchestrator(&[
        "--launcher",
        "process",
        "--driver-log-dir",
        logs.to_str().unwrap(),
    ]);
    let id = s.create(s.spec("avalanche", 2, 1000, None));
    let view = s.wait_finished(&id, Duration::from_secs(60));
    assert_eq!(view["status"], "completed", "{view}{}", s.logs());
    assert_eq!(u(&view["summary"]["requests"]), 2000);
    assert_eq!(s.target.requests(), 2000);
    let ids: Vec<&str> = view["drivers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [format!("{id}-1"), format!("{id}-2")]);
}

/// The orchestrator's committed offset on `metrics` (partition 0), read from the broker.
fn committed_metrics_offset(brokers: &str, prefix: &str) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{prefix}orchestrator"))
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition(&format!("{prefix}metrics"), 0);
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    match committed.elements()[0].offset() {
        rdkafka::Offset::Offset(n) => n,
        _ => 0,
    }
}

/// Two tests running at once: the orchestrator keeps committing what it has written (it
/// used to wait for a moment when no test at all had unwritten changes, which never came
/// while two tests overlapped).
#[test]
fn offsets_are_committed_while_two_tests_overlap() {
    let _serial = serial();
    let mut s = Stack::new("overlap", &brokers());
    s.start_orchestrator(&[]);
    for d in ["d1", "d2"] {
        s.start_driver(d);
    }
    s.wait_idle_drivers(2);
    // 1,200 requests at 5 ms: six seconds each, overlapping.
    let a = s.create(s.spec("tsunami", 1, 1_200, Some(5.0)));
    let b = s.create(s.spec("tsunami", 1, 1_200, Some(5.0)));
    for id in [&a, &b] {
        s.wait_test(id, Duration::from_secs(30), "test never reported", |v| {
            v["status"] == "running" && u(&v["summary"]["requests"]) > 0
        });
    }
    let first = committed_metrics_offset(&s.brokers, &s.prefix);
    std::thread::sleep(Duration::from_millis(2_500));
    let second = committed_metrics_offset(&s.brokers, &s.prefix);
    for id in [&a, &b] {
        let (_, view) = s.get(&format!("/tests/{id}"));
        assert_eq!(
            view["status"], "running",
            "both tests still overlap: {view}"
        );
    }
    assert!(
        second > first,
        "the committed metrics offset stood at {first} → {second} while two tests ran\n{}",
        s.logs()
    );
    for id in [&a, &b] {
        let view = s.wait_finished(id, Duration::from_secs(60));
        assert_eq!(u(&view["summary"]["requests"]), 1_200);
    }
}

#[test]
fn load_profiles_run_across_drivers_over_kafka() {
    let _serial = serial();
    let mut s = Stack::new("profiles", &brokers());
    s.start_orchestrator(&[]);
    for d in ["p1", "p2", "p3"] {
        s.start_driver(d);
    }
    s.wait_idle_drivers(3);

    // A ramping arrival rate over a 3:1 mix, split across three processes: 0 → 300/s in
    // 2 s, then down to 150/s in 2 s: 75, 225, 262.5 and 187.5 due in its four seconds.
    let spec = json!({
        "test_type": "tsunami",
        "drivers": 3,
        "concurrency": 8,
        "stages": [{"duration_s": 2, "target": 300}, {"duration_s": 2, "target": 150}],
        "requests": [
            {"name": "list", "url": s.target.url("/ping"), "weight": 3},
            {"name": "item", "url": s.target.url("/ping?delay_ms=3"), "weight": 1},
        ],
    });
    let id = s.create(spec);
    let view = s.wait_finished(&id, Duration::from_secs(60));
    let logs = s.logs();
    assert_eq!(view["status"], "completed", "{view}{logs}");
    let total = u(&view["summary"]["requests"]);
    assert_eq!(u(&view["summary"]["expected_requests"]), 750);
    assert_eq!(
        total, 750,
        "every planned request was sent and counted once"
    );
    assert_eq!(
        s.target.requests(),
        750,
        "the target saw what the summary says"
    );
    let points = view["timeline"].as_array().unwrap();
    for p in points.iter().take(4) {
        let (got, plan) = (u(&p["requests"]), u(&p["planned_requests"]));
        assert!(
            got.abs_diff(plan) * 20 <= plan,
            "second {}: {got} of {plan} planned: {points:?}",
            p["second"]
        );
    }
    let by = view["summary"]["by_request"].as_array().unwrap();
    let (list, item) = (u(&by[0]["requests"]), u(&by[1]["requests"]));
    assert_eq!(list + item, 750);
    assert!(list.abs_diff(3 * item) <= 3 * 3, "{list}:{item}");
    assert!(by[1]["latency_ms"]["p50"].as_f64().unwrap() >= 3.0);

    // An abort threshold judged on the merged data stops every driver of a 60 s test.
    s.wait_idle_drivers(3);
    let spec = json!({
        "target_url": s.target.url("/ping?status=500"),
        "test_type": "avalanche",
        "drivers": 3,
        "concurrency": 2,
        "duration_s": 60,
        "abort_grace_s": 2,
        "thresholds": ["error_rate < 5% abort"],
    });
    let before = s.target.requests();
    let started = Instant::now();
    let id = s.create(spec);
    let view = s.wait_finished(&id, Duration::from_secs(30));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(view["status"], "stopped", "{view}{}", s.logs());
    assert_eq!(view["aborted"]["threshold"], "error_rate < 5% abort");
    let drivers = view["drivers"].as_array().unwrap();
    assert!(
        drivers.iter().all(|d| d["state"] == "stopped"),
        "{drivers:?}"
    );
    assert_eq!(
        u(&view["summary"]["requests"]),
        s.target.requests() - before,
        "every driver's requests, in flight ones too, are counted"
    );
    assert_eq!(driver_sum(&view), u(&view["summary"]["requests"]));
    assert_eq!(view["verdict"]["passed"], false);
}

/// A broker of the calling test's own on free ports (`kafka.sh up`), for tests that stop
/// and start it; `down` when dropped.
struct OwnBroker {
    port: u16,
    controller_port: u16,
}

impl OwnBroker {
    fn up() -> OwnBroker {
        let b = OwnBroker {
            port: free_port(),
            controller_port: free_port(),
        };
        b.run("up");
        b
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn run(&self, action: &str) {
        let status = Command::new("bash")
            .arg(repo_root().join("scripts/kafka.sh"))
            .arg(action)
            .env("KAFKA_PORT", self.port.to_string())
            .env("KAFKA_CONTROLLER_PORT", self.controller_port.to_string())
            .env("KAFKA_HEAP", "256m")
            .status()
            .unwrap();
        assert!(status.success(), "kafka.sh {action} failed");
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.run("down");
    }
}

/// Lines each log has now, to count what a stretch of time added.
fn log_lengths(paths: &[PathBuf]) -> Vec<usize> {
    paths
        .iter()
        .map(|p| std::fs::read_to_string(p).map_or(0, |t| t.lines().count()))
        .collect()
}

/// Sends SIGTERM and waits (up to 15 s) for the process to exit; how long it took.
fn terminate(proc: &mut Proc) -> Duration {
    let started = Instant::now();
    proc.signal("TERM");
    while proc.running() && started.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(50));
    }
    started.elapsed()
}

/// A stop (`terminate`'s time) must take under 10 s (`logs` say why not); prints it.
fn in_time(took: Duration, what: &str, logs: &str) {
    assert!(took < Duration::from_secs(10), "{what} took {took:?}{logs}");
    eprintln!("SIGTERM, broker gone: {what} stopped in {took:?}");
}

#[test]
fn with_the_broker_gone_processes_say_so_once_stop_in_time_and_resume() {
    let _serial = serial();
    let broker = OwnBroker::up();
    let mut s = Stack::new("bounded", &broker.addr());
    s.start_orchestrator(&[]);
    s.start_driver("a1");
    s.start_driver("a2");
    s.wait_idle_drivers(2);
    // Test A (two drivers, 40 s at 40/s) runs through both outages and must end exact.
    let spec_a = json!({
        "target_url": s.target.url("/ping"),
        "test_type": "tsunami",
        "drivers": 2,
        "rate": 40,
        "duration_s": 40,
    });
    let a = s.create(spec_a);
    s.wait_status(&a, "running", Duration::from_secs(30));
    // Test B runs on a third driver, which is stopped while the broker is gone.
    s.start_driver("b1");
    s.wait_idle_drivers(1);
    let target_b = TargetServer::start(&exe("loadwave-target"), &[]);
    let b = s.create(json!({
        "target_url": target_b.url("/ping"),
        "test_type": "tsunami",
        "drivers": 1,
        "rate": 20,
        "duration_s": 60,
    }));
    s.wait_status(&b, "running", Duration::from_secs(30));
    // An idle orchestrator beside it, on a prefix of its own.
    let mut idle = Stack::new("bounded-idle", &broker.addr());
    idle.start_orchestrator(&[]);
    std::thread::sleep(Duration::from_secs(1));

    // A 20 s outage: health stays 200 and says so, readiness turns 503, and each process
    // says it in a line or two (plus one when it is back).
    let logs: Vec<PathBuf> = ["orchestrator.log", "a1.log", "a2.log", "b1.log"]
        .iter()
        .map(|f| s.dir.join(f))
        .chain([idle.dir.join("orchestrator.log")])
        .collect();
    broker.run("stop");
    let before = log_lengths(&logs);
    let outage = Instant::now();
    s.poll_until(Duration::from_secs(15), "/readyz never said 503", || {
        let (status, body) = s.get("/readyz");
        if status == 503 && body["error"]["field"] == "bus" {
            Ok(())
        } else {
            Err(json!({"status": status, "body": body}))
        }
    });
    let (status, health) = s.get("/healthz");
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["bus"]["reachable"], false, "{health}");
    assert!(health["bus"]["since_ms"].as_u64().unwrap() > 0);
    while outage.elapsed() < Duration::from_secs(20) {
        assert_eq!(
            s.get("/healthz").0,
            200,
            "liveness holds through the outage"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    broker.run("start");
    s.wait_answer("/readyz", 200, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(2));
    let after = log_lengths(&logs);
    let added: Vec<usize> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    eprintln!("lines each process wrote during a 20 s outage: {added:?}");
    for ((path, b), a) in logs.iter().zip(&before).zip(&after) {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let added: Vec<&str> = text.lines().skip(*b).take(a - b).collect();
        assert!(
            added.len() <= 3,
            "{} wrote {} lines during a 20 s outage:\n{}",
            path.display(),
            added.len(),
            added.join("\n")
        );
        assert!(
            added.iter().any(|l| l.contains("unreachable")),
            "{} did not say the bus was gone:\n{}",
            path.display(),
            added.join("\n")
        );
    }
    assert_eq!(s.get("/healthz").1["bus"]["reachable"], true);

    // The broker goes again; SIGTERM ends the busy orchestrator, the idle one and a
    // driver in the middle of its test within 10 s each.
    broker.run("stop");
    s.wait_answer("/readyz", 503, Duration::from_secs(15));
    let took = terminate(s.orchestrator.as_mut().unwrap());
    in_time(took, "an orchestrator with a running test", &s.logs());
    let took = terminate(idle.orchestrator.as_mut().unwrap());
    in_time(took, "an idle orchestrator", &idle.logs());
    let took = terminate(s.driver("b1"));
    in_time(took, "a driver in the middle of its test", &s.logs());
    let b1_log = std::fs::read_to_string(s.dir.join("b1.log")).unwrap();
    assert!(
        b1_log.contains("not delivered before shutting down") && b1_log.contains(" requests="),
        "the driver names what it could not deliver:\n{b1_log}"
    );

    // Broker and orchestrator back: test A resumes and completes exactly.
    broker.run("start");
    s.start_orchestrator(&[]);
    let view = s.wait_finished(&a, Duration::from_secs(120));
    let logs_text = s.logs();
    assert_eq!(view["status"], "completed", "{view}{logs_text}");
    assert_eq!(u(&view["summary"]["expected_requests"]), 1600);
    assert_eq!(u(&view["summary"]["requests"]), 1600, "{view}");
    assert_eq!(
        s.target.requests(),
        1600,
        "the target saw what the summary says"
    );
    for d in view["drivers"].as_array().unwrap() {
        assert_eq!(d["state"], "completed", "{d}");
        assert_eq!(d["missing_reports"], 0, "{d}");
    }
    // Test B lost its driver mid-test: it ends, naming it.
    let view_b = s.wait_finished(&b, Duration::from_secs(60));
    assert_eq!(view_b["drivers"][0]["state"], "lost", "{view_b}");
    drop(idle);
    drop(s);
    drop(broker);
}
