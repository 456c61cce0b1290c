//! The REST API in-process: the router of `app()` over the in-memory bus and store,
//! driven with `tower::ServiceExt::oneshot`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use loadwave_bus::{Bus, MemoryBus};
use loadwave_engine::{AgentConfig, AgentMode, SysMonitor, run_agent};
use loadwave_orchestrator::{
    Backend, ControllerOptions, Orchestrator, PoolLauncher, TestStore, app,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

async fn orchestrator(options: ControllerOptions) -> (Arc<Orchestrator>, Arc<dyn Bus>) {
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
    let orch = Orchestrator::new(
        bus.clone(),
        TestStore::memory(),
        Arc::new(PoolLauncher),
        options,
    )
    .await
    .unwrap();
    (orch, bus)
}

async fn call(
    orch: &Arc<Orchestrator>,
    method: &str,
    uri: &str,
    body: Body,
) -> (StatusCode, Value, String) {
    let response = app(orch.clone())
        .oneshot(
            Request::builder()
                .method(method)
                .uri(uri)
                .header("content-type", "application/json")
                .body(body)
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).to_string();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    // Never a 5xx, but for readiness saying the bus is away.
    assert!(
        status.as_u16() < 500 || (uri == "/readyz" && status == StatusCode::SERVICE_UNAVAILABLE),
        "{method} {uri} answered {status}: {text}"
    );
    (status, json, text)
}

fn spec() -> Value {
    json!({
        "target_url": "http://127.0.0.1:9/ping",
        "test_type": "avalanche",
        "drivers": 1,
        "requests_per_driver": 10,
    })
}

#[tokio::test]
async fn bad_input_answers_4xx_naming_the_field() {
    let (orch, _) = orchestrator(ControllerOptions::default()).await;
    let with = |k: &str, v: Value| {
        let mut s = spec();
        s[k] = v;
        Body::from(s.to_string())
    };
    let without = |k: &str| {
        let mut s = spec();
        s.as_object_mut().unwrap().remove(k);
        Body::from(s.to_string())
    };
    let cases: Vec<(Body, StatusCode, &str)> = vec![
        (Body::from("{not json"), StatusCode::BAD_REQUEST, "body"),
        (Body::from(""), StatusCode::BAD_REQUEST, "body"),
        (
            Body::from("[1,2]"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "spec",
        ),
        (
            without("target_url"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "target_url",
        ),
        (
            without("requests_per_driver"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "requests_per_driver",
        ),
        (
            with("target_url", json!("ftp://h/")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "target_url",
        ),
        (
            with("target_url", json!(42)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "target_url",
        ),
        (
            with("test_type", json!("storm")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "test_type",
        ),
        (
            with("drivers", json!(0)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "drivers",
        ),
        (
            with("drivers", json!(-3)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "drivers",
        ),
        (
            with("concurrency", json!(0)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "concurrency",
        ),
        (
            with("requests_per_driver", json!("many")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "requests_per_driver",
        ),
        (
            with("timeout_ms", json!(0)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "timeout_ms",
        ),
        (
            with("thresholds", json!(["p99 <"])),
            StatusCode::UNPROCESSABLE_ENTITY,
            "thresholds[0]",
        ),
        (
            with("headers", json!({"bad header": "x"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "headers.bad header",
        ),
        (
            with("colour", json!("red")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "colour",
        ),
        (
            with("test_type", json!("tsunami")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "delay_ms",
        ),
        (
            with("body", json!("x".repeat(2 << 20))),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body",
        ),
    ];
    // The load profiles' fields, each named when it is wrong.
    let profile = |patch: Value| {
        let mut s = spec();
        let map = s.as_object_mut().unwrap();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                map.remove(k);
            } else {
                map.insert(k.clone(), v.clone());
            }
        }
        Body::from(s.to_string())
    };
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
    let mut cases = cases;
    cases.extend([
        (profile(json!({"duration_s": 0})), unprocessable, "duration_s"),
        (profile(json!({"duration_s": "30s"})), unprocessable, "duration_s"),
        (profile(json!({"rate": 50})), unprocessable, "rate"),
        (
            profile(json!({"test_type": "tsunami", "rate": 50, "delay_ms": 2})),
            unprocessable,
            "rate",
        ),
        (
            profile(json!({"test_type": "tsunami", "stages": [], "requests_per_driver": null})),
            unprocessable,
            "stages",
        ),
        (
            profile(json!({"test_type": "tsunami", "stages": [{"duration_s": 0, "target": 5}]})),
            unprocessable,
            "stages[0].duration_s",
        ),
        (
            profile(json!({"stages": [{"duration_s": 1, "target": 5}], "duration_s": 3})),
            unprocessable,
            "duration_s",
        ),
        (
            profile(json!({"target_url": null, "requests": [{"name": "a", "url": "http://127.0.0.1:9/", "weight": 0}]})),
            unprocessable,
            "requests",
        ),
        (
            profile(json!({"target_url": null, "requests": [{"name": "a", "url": "http://127.0.0.1:9/"}], "thresholds": ["p99{b} < 1s"]})),
            unprocessable,
            "thresholds[0]",
        ),
        (
            profile(json!({"target_url": null, "requests": [{"name": "a"}]})),
            unprocessable,
            "requests[0].url",
        ),
        (
            profile(json!({"target_url": null, "requests": [{"name": "a", "url": "http://169.254.169.254/"}]})),
            unprocessable,
            "requests[0].url",
        ),
    ]);
    for (body, status, field) in cases {
        let (got, json, text) = call(&orch, "POST", "/tests", body).await;
        assert_eq!(got, status, "{field}: {text}");
        assert_eq!(json["error"]["field"], field, "{text}");
        assert_eq!(json["error"]["status"], status.as_u16());
        assert!(!json["error"]["message"].as_str().unwrap().is_empty());
    }
    assert!(
        orch.list().await.unwrap().is_empty(),
        "no bad spec created a test"
    );
}

#[tokio::test]
async fn unknown_tests_and_routes_answer_json_404s() {
    let (orch, _) = orchestrator(ControllerOptions::default()).await;
    for (method, uri, status) in [
        ("GET", "/tests/nope", StatusCode::NOT_FOUND),
        ("POST", "/tests/nope/stop", StatusCode::NOT_FOUND),
        ("GET", "/tests/nope/report", StatusCode::NOT_FOUND),
        ("GET", "/nowhere", StatusCode::NOT_FOUND),
        ("DELETE", "/tests", StatusCode::METHOD_NOT_ALLOWED),
    ] {
        let (got, json, text) = call(&orch, method, uri, Body::empty()).await;
        assert_eq!(got, status, "{method} {uri}: {text}");
        assert_eq!(json["error"]["status"], status.as_u16(), "{text}");
    }
}

#[tokio::test]
async fn create_read_list_stop_report_and_openapi() {
    let (orch, _) = orchestrator(ControllerOptions::default()).await;
    let (status, created, text) =
        call(&orch, "POST", "/tests", Body::from(spec().to_string())).await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["status"], "pending");
    assert_eq!(created["spec"]["requests_per_driver"], 10);

    let (status, got, _) = call(&orch, "GET", &format!("/tests/{id}"), Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["id"], id.as_str());
    for key in [
        "requests",
        "errors",
        "status_codes",
        "error_kinds",
        "rps",
        "latency_ms",
    ] {
        assert!(got["summary"].get(key).is_some(), "summary.{key} missing");
    }
    for key in ["min", "mean", "p50", "p90", "p95", "p99", "p999", "max"] {
        assert!(
            got["summary"]["latency_ms"].get(key).is_some(),
            "latency_ms.{key} missing"
        );
    }

    let (_, list, _) = call(&orch, "GET", "/tests", Body::empty()).await;
    assert_eq!(list[0]["id"], id.as_str());

    let (status, stopped, _) =
        call(&orch, "POST", &format!("/tests/{id}/stop"), Body::empty()).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(stopped["status"], "stopped");
    let (status, json, _) = call(&orch, "POST", &format!("/tests/{id}/stop"), Body::empty()).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already ended")
    );

    let (status, _, html) = call(&orch, "GET", &format!("/tests/{id}/report"), Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.starts_with("<!doctype html>") && html.contains(&id));

    let (status, doc, _) = call(&orch, "GET", "/openapi.json", Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    for path in [
        "/tests",
        "/tests/{id}",
        "/tests/{id}/stop",
        "/tests/{id}/report",
        "/drivers",
        "/healthz",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(doc["components"]["schemas"].get("TestSpec").is_some());

    let (status, health, _) = call(&orch, "GET", "/healthz", Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["tests"]["stopped"], 1);
}

#[tokio::test]
async fn more_drivers_than_the_pool_has_fail_after_a_bounded_wait() {
    let options = ControllerOptions {
        driver_wait_ms: 1_500,
        ..ControllerOptions::default()
    };
    let (orch, bus) = orchestrator(options).await;
    let shutdown = CancellationToken::new();
    tokio::spawn(orch.clone().run(shutdown.clone()));
    // One idle pool driver.
    tokio::spawn(run_agent(
        bus.clone(),
        AgentConfig {
            driver_id: "only".into(),
            host: "h".into(),
            mode: AgentMode::Pool,
        },
        SysMonitor::spawn(),
        shutdown.clone(),
    ));
    let mut s = spec();
    s["drivers"] = json!(3);
    let (_, created, _) = call(&orch, "POST", "/tests", Body::from(s.to_string())).await;
    let id = created["id"].as_str().unwrap().to_string();
    let started = std::time::Instant::now();
    let view = loop {
        let (_, v, _) = call(&orch, "GET", &format!("/tests/{id}"), Body::empty()).await;
        if v["status"] != "pending" {
            break v;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still pending: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(view["status"], "failed");
    let error = view["error"].as_str().unwrap();
    assert!(
        error.contains("needs 3 drivers") && error.contains("only 1 idle"),
        "{error}"
    );
    assert!(started.elapsed() >= Duration::from_millis(1_000));
    let drivers = orch.drivers().await.unwrap();
    assert_eq!(drivers.len(), 1);
    assert_eq!(drivers[0].state, "idle", "the pool driver was not taken");
    shutdown.cancel();
}

#[tokio::test]
async fn a_profiled_test_runs_through_the_api_aborts_and_reports_it() {
    let target = loadwave_testkit::TargetServer::start(
        &loadwave_testkit::bin(
            env!("CARGO_BIN_EXE_loadwave-orchestrator"),
            "loadwave-target",
        ),
        &[],
    );
    let (orch, bus) = orchestrator(ControllerOptions::default()).await;
    let shutdown = CancellationToken::new();
    tokio::spawn(orch.clone().run(shutdown.clone()));
    for id in ["pool-a", "pool-b"] {
        tokio::spawn(run_agent(
            bus.clone(),
            AgentConfig {
                driver_id: id.into(),
                host: "h".into(),
                mode: AgentMode::Pool,
            },
            SysMonitor::spawn(),
            shutdown.clone(),
        ));
    }
    // A 21 s ramp over a mix in which one request always fails: its own abort threshold
    // stops the whole test a second in.
    let spec = json!({
        "name": "profiled",
        "test_type": "tsunami",
        "drivers": 2,
        "stages": [{"duration_s": 1, "target": 100}, {"duration_s": 20, "target": 100}],
        "requests": [
            {"name": "home", "url": target.url("/ping"), "weight": 1},
            {"name": "broken", "url": target.url("/ping?status=503"), "weight": 1},
        ],
        "thresholds": ["error_rate{broken} < 10% abort", "p99{home} < 5s"],
        "abort_grace_s": 1,
    });
    let (status, created, text) = call(&orch, "POST", "/tests", Body::from(spec.to_string())).await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    assert_eq!(created["summary"]["expected_requests"], 2050);
    assert_eq!(created["spec"]["stages"][1]["duration_s"], 20.0);
    let id = created["id"].as_str().unwrap().to_string();
    let started = std::time::Instant::now();
    let view = loop {
        let (_, v, _) = call(&orch, "GET", &format!("/tests/{id}"), Body::empty()).await;
        if v["verdict"].is_object() {
            break v;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "still running: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(view["status"], "stopped", "{view}");
    assert_eq!(
        view["aborted"]["threshold"],
        "error_rate{broken} < 10% abort"
    );
    let s = &view["summary"];
    let requests = s["requests"].as_u64().unwrap();
    assert_eq!(
        requests,
        target.requests(),
        "every request counted, in flight ones too"
    );
    let by = s["by_request"].as_array().unwrap();
    assert_eq!(by[1]["name"], "broken");
    assert_eq!(by[1]["errors"], by[1]["requests"]);
    assert_eq!(by[0]["errors"], 0);
    assert_eq!(
        by[0]["requests"].as_u64().unwrap() + by[1]["requests"].as_u64().unwrap(),
        requests
    );
    assert!(view["timeline"][0]["planned_requests"].as_u64().is_some());

    let (_, _, html) = call(&orch, "GET", &format!("/tests/{id}/report"), Body::empty()).await;
    for needle in [
        "<h2>Stages</h2>",
        "<h2>Requests of the mix</h2>",
        "broken",
        "Requests per second, planned and achieved",
        "aborted",
        "error_rate{broken} &lt; 10% abort",
    ] {
        assert!(html.contains(needle), "{needle} missing from the report");
    }

    let (_, doc, _) = call(&orch, "GET", "/openapi.json", Body::empty()).await;
    let schemas = &doc["components"]["schemas"];
    for field in [
        "duration_s",
        "rate",
        "stages",
        "start_target",
        "requests",
        "abort_grace_s",
        "target_url",
        "requests_per_driver",
    ] {
        assert!(
            schemas["TestSpec"]["properties"].get(field).is_some(),
            "TestSpec.{field} missing from the OpenAPI document"
        );
    }
    for (schema, field) in [
        ("Stage", "target"),
        ("RequestSpec", "weight"),
        ("TimelinePoint", "planned_requests"),
        ("TimelinePoint", "planned_concurrency"),
        ("TimelinePoint", "concurrency"),
        ("Summary", "by_request"),
        ("TestView", "aborted"),
    ] {
        assert!(
            schemas[schema]["properties"].get(field).is_some(),
            "{schema}.{field} missing from the OpenAPI document"
        );
    }
    shutdown.cancel();
}

/// A bus the broker went away from, as the controller sees it: subscriptions work; it
/// reports itself unreachable for `down_ms` (or reachable when `None`), and with `stuck`
/// its publishes never complete (librdkafka keeps such messages for minutes).
struct AwayBus {
    inner: MemoryBus,
    down_ms: Option<u64>,
    stuck: bool,
    attempts: std::sync::atomic::AtomicU64,
}

impl AwayBus {
    fn new(inner: MemoryBus, down_ms: Option<u64>, stuck: bool) -> AwayBus {
        AwayBus {
            inner,
            down_ms,
            stuck,
            attempts: Default::default(),
        }
    }
}

#[async_trait::async_trait]
impl Bus for AwayBus {
    async fn publish_raw(
        &self,
        topic: loadwave_proto::Topic,
        key: &str,
        payload: Vec<u8>,
    ) -> Result<(), loadwave_bus::BusError> {
        self.attempts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.stuck {
            std::future::pending::<()>().await;
        }
        self.inner.publish_raw(topic, key, payload).await
    }

    async fn subscribe(
        &self,
        topics: &[loadwave_proto::Topic],
        name: &str,
    ) -> Result<loadwave_bus::Subscription, loadwave_bus::BusError> {
        self.inner.subscribe(topics, name).await
    }

    fn health(&self) -> loadwave_bus::BusState {
        match self.down_ms {
            None => self.inner.health(),
            Some(ms) => loadwave_bus::BusState {
                reachable: false,
                since_ms: loadwave_proto::unix_ms_now() - ms,
            },
        }
    }
}

#[tokio::test]
async fn readiness_follows_the_bus_and_liveness_does_not() {
    let (orch, _) = orchestrator(ControllerOptions::default()).await;
    let (status, ready, text) = call(&orch, "GET", "/readyz", Body::empty()).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["bus"]["reachable"], true);
    let (_, health, _) = call(&orch, "GET", "/healthz", Body::empty()).await;
    assert_eq!(health["bus"]["reachable"], true);
    assert_eq!(
        health["bus"]["malformed"], 0,
        "the skipped counts stay beside it"
    );

    for (down_ms, ready_status) in [
        (1_000, StatusCode::OK),
        (12_000, StatusCode::SERVICE_UNAVAILABLE),
    ] {
        let bus: Arc<dyn Bus> = Arc::new(AwayBus::new(MemoryBus::new(), Some(down_ms), false));
        let orch = Orchestrator::new(
            bus,
            TestStore::memory(),
            Arc::new(PoolLauncher),
            ControllerOptions::default(),
        )
        .await
        .unwrap();
        let (status, body, text) = call(&orch, "GET", "/readyz", Body::empty()).await;
        assert_eq!(status, ready_status, "down for {down_ms} ms: {text}");
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(body["error"]["field"], "bus", "{text}");
            assert!(
                body["error"]["message"].as_str().unwrap().contains("12 s"),
                "{text}"
            );
        }
        let (status, health, text) = call(&orch, "GET", "/healthz", Body::empty()).await;
        assert_eq!(status, StatusCode::OK, "liveness holds: {text}");
        assert_eq!(health["bus"]["reachable"], false);
        assert!(health["bus"]["since_ms"].as_u64().unwrap() > 0);
    }

    let (_, doc, _) = call(&orch, "GET", "/openapi.json", Body::empty()).await;
    assert!(
        doc["paths"]["/readyz"]["get"]["responses"]
            .get("503")
            .is_some(),
        "{}",
        doc["paths"]["/readyz"]
    );
    // The bus's part of /healthz: its state beside the flattened counts of skipped messages.
    let view = doc["components"]["schemas"]["BusHealthView"].to_string();
    for field in ["\"reachable\"", "\"since_ms\"", "BusStats"] {
        assert!(
            view.contains(field),
            "{field} missing from BusHealthView: {view}"
        );
    }
    assert!(doc["components"]["schemas"].get("Ready").is_some());
}

#[tokio::test]
async fn the_loop_folds_and_stops_while_no_publish_completes() {
    let inner = MemoryBus::new();
    let bus = Arc::new(AwayBus::new(inner.clone(), None, true));
    let orch = Orchestrator::new(
        bus.clone(),
        TestStore::memory(),
        Arc::new(PoolLauncher),
        ControllerOptions::default(),
    )
    .await
    .unwrap();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(orch.clone().run(shutdown.clone()));
    // Ticks go to the publisher and never come back; a driver's registration arrives
    // meanwhile and is folded.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let register = loadwave_proto::Message::Register(loadwave_proto::Register {
        driver_id: "late".into(),
        host: "h".into(),
        pid: 1,
        version: "0".into(),
        test_id: None,
    });
    inner.publish(&register).await.unwrap();
    let started = std::time::Instant::now();
    loop {
        let (_, drivers, _) = call(&orch, "GET", "/drivers", Body::empty()).await;
        if drivers
            .as_array()
            .is_some_and(|d| d.iter().any(|d| d["id"] == "late"))
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "never folded: {drivers}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A test is taken, assigned its driver and persisted although nothing goes out.
    let (status, created, text) =
        call(&orch, "POST", "/tests", Body::from(spec().to_string())).await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    let id = created["id"].as_str().unwrap().to_string();
    let started = std::time::Instant::now();
    loop {
        let (_, view, _) = call(&orch, "GET", &format!("/tests/{id}"), Body::empty()).await;
        if view["drivers"].as_array().is_some_and(|d| d.len() == 1) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "never assigned: {view}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The publisher's first batch went to the bus and never came back; everything since
    // waits in the outbox instead of holding up the loop.
    assert!(bus.attempts.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    // And it stops, stuck publishes and all: at once but for the outbox's flush grace
    // (2 s; this bus claims to be reachable, so it gets one).
    shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(4), run).await;
    assert!(matches!(stopped, Ok(Ok(Ok(())))), "{stopped:?}");
}
