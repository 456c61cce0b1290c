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

// ---- The trust boundary: token, Host, content type, secrets, sizes, deletion ----

const TOKEN: &str = "0123456789abcdef0123456789abcdef";
const HOST: &str = "127.0.0.1:8000";

fn security() -> loadwave_orchestrator::ApiSecurity {
    loadwave_orchestrator::ApiSecurity::new(
        TOKEN,
        HOST.parse().unwrap(),
        &["orchestrator".to_string()],
        "the token is in the data directory",
    )
}

/// A request to the secured router: `headers` as given (none added), with a body.
async fn secured(
    router: &axum::Router,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, axum::http::HeaderMap, String) {
    let mut request = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let body = if body.is_empty() {
        Body::empty()
    } else {
        Body::from(body.to_string())
    };
    let response = router
        .clone()
        .oneshot(request.body(body).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&bytes).to_string())
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

/// The headers of a well-formed authenticated JSON request.
fn good(auth: &str) -> Vec<(&str, &str)> {
    vec![
        ("host", HOST),
        ("authorization", auth),
        ("content-type", "application/json"),
    ]
}

#[tokio::test]
async fn the_api_needs_the_token_the_host_and_json() {
    let (orch, _) = orchestrator(ControllerOptions::default()).await;
    let router = loadwave_orchestrator::secured_app(orch.clone(), security());
    let auth = bearer();
    let spec = spec().to_string();

    // Probes need nothing: they are reached by address and show no test.
    for path in ["/healthz", "/readyz"] {
        let (status, _, text) = secured(&router, "GET", path, &[], "").await;
        assert_eq!(status, StatusCode::OK, "{path}: {text}");
    }
    // No token, a wrong one, another scheme: 401 with a challenge, naming the header.
    let wrong = format!("Bearer {}", TOKEN.replace('0', "1"));
    let basic = format!("Basic {TOKEN}");
    let short = format!("Bearer {}", &TOKEN[..31]);
    for auth in [
        None,
        Some(wrong.as_str()),
        Some(basic.as_str()),
        Some(short.as_str()),
    ] {
        for (method, uri, body) in [
            ("GET", "/tests", ""),
            ("POST", "/tests", spec.as_str()),
            ("GET", "/drivers", ""),
            ("GET", "/openapi.json", ""),
            ("POST", "/tests/x/stop", ""),
            ("DELETE", "/tests/x", ""),
        ] {
            let mut headers = vec![("host", HOST), ("content-type", "application/json")];
            if let Some(a) = auth {
                headers.push(("authorization", a));
            }
            let (status, h, text) = secured(&router, method, uri, &headers, body).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {uri} {auth:?}: {text}"
            );
            assert!(h.get("www-authenticate").is_some());
            let json: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(json["error"]["field"], "authorization");
            assert!(
                json["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("Bearer")
            );
        }
    }
    assert!(orch.list().await.unwrap().is_empty(), "nothing was created");

    // A body that is not JSON by its type: 415, even with the token.
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut headers = vec![("host", HOST), ("authorization", auth.as_str())];
        if let Some(t) = content_type {
            headers.push(("content-type", t));
        }
        let (status, _, text) = secured(&router, "POST", "/tests", &headers, &spec).await;
        assert_eq!(
            status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type:?}: {text}"
        );
    }
    assert!(orch.list().await.unwrap().is_empty());

    // A Host it does not serve: 421, before anything else is looked at.
    for host in [
        "evil.example",
        "evil.example:8000",
        "127.0.0.1:8001",
        "localhost",
    ] {
        let headers = vec![
            ("host", host),
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ];
        let (status, _, text) = secured(&router, "GET", "/tests", &headers, "").await;
        assert_eq!(status, StatusCode::MISDIRECTED_REQUEST, "{host}: {text}");
    }
    // The served names all work.
    for host in [
        HOST,
        "localhost:8000",
        "[::1]:8000",
        "orchestrator",
        "orchestrator:8000",
    ] {
        let headers = vec![("host", host), ("authorization", auth.as_str())];
        let (status, _, text) = secured(&router, "GET", "/tests", &headers, "").await;
        assert_eq!(status, StatusCode::OK, "{host}: {text}");
    }
    // JSON with a charset is JSON; a bodiless POST needs no content type.
    let headers = vec![
        ("host", HOST),
        ("authorization", auth.as_str()),
        ("content-type", "application/json; charset=utf-8"),
    ];
    let (status, _, text) = secured(&router, "POST", "/tests", &headers, &spec).await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    let id = serde_json::from_str::<Value>(&text).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let headers = vec![("host", HOST), ("authorization", auth.as_str())];
    let (status, _, text) =
        secured(&router, "POST", &format!("/tests/{id}/stop"), &headers, "").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{text}");
}

/// The review's probe: a web page's cross-site POST (text/plain, its own Origin, a
/// rebound Host) and GET must not reach a test.
#[tokio::test]
async fn a_cross_site_request_is_refused() {
    let (orch, _) = orchestrator(ControllerOptions::default()).await;
    let router = loadwave_orchestrator::secured_app(orch.clone(), security());
    let csrf = [
        ("host", "evil.example"),
        ("origin", "http://evil.example"),
        ("content-type", "text/plain"),
    ];
    let (status, _, text) = secured(&router, "POST", "/tests", &csrf, &spec().to_string()).await;
    assert_ne!(status, StatusCode::CREATED, "{text}");
    assert!(status.is_client_error(), "{status}: {text}");
    // The same from a page that kept the real Host (no DNS rebinding): no token.
    let csrf = [
        ("host", HOST),
        ("origin", "http://evil.example"),
        ("content-type", "text/plain"),
    ];
    let (status, _, text) = secured(&router, "POST", "/tests", &csrf, &spec().to_string()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{text}");
    assert!(orch.list().await.unwrap().is_empty(), "no test was created");

    // A test with secrets, and a rebound GET for it.
    let created = orch
        .create(loadwave_proto::TestSpec::from_json(secret_spec().to_string().as_bytes()).unwrap())
        .await
        .unwrap();
    let (status, _, text) = secured(
        &router,
        "GET",
        &format!("/tests/{}", created.id),
        &[("host", "evil.example"), ("origin", "http://evil.example")],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);
    assert!(
        !text.contains("s3cr3t") && !text.contains("hunter2"),
        "{text}"
    );
}

fn secret_spec() -> Value {
    json!({
        "target_url": "http://127.0.0.1:9/ping?token=tok3n&page=2",
        "test_type": "avalanche",
        "drivers": 1,
        "requests_per_driver": 10,
        "method": "POST",
        "headers": {
            "Authorization": "Bearer s3cr3t-auth",
            "cookie": "session=s3cr3t-cookie",
            "Proxy-Authorization": "Basic s3cr3t-proxy",
            "X-API-Key": "s3cr3t-key",
            "X-Custom-Secret": "s3cr3t-custom",
            "X-Visible": "shown-value",
        },
        "secret_headers": ["x-custom-secret"],
        "body": "{\"password\": \"hunter2\"}",
    })
}

fn assert_no_secrets(text: &str) {
    for secret in [
        "s3cr3t-auth",
        "s3cr3t-cookie",
        "s3cr3t-proxy",
        "s3cr3t-key",
        "s3cr3t-custom",
        "hunter2",
    ] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
}

#[tokio::test]
async fn secrets_are_redacted_in_every_view_but_drivers_get_them() {
    let (orch, bus) = orchestrator(ControllerOptions::default()).await;
    let router = loadwave_orchestrator::secured_app(orch.clone(), security());
    let auth = bearer();
    let mut configs = bus
        .subscribe(&[loadwave_proto::Topic::TestConfig], "probe")
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(orch.clone().run(shutdown.clone()));
    let register = loadwave_proto::Message::Register(loadwave_proto::Register {
        driver_id: "d1".into(),
        host: "h".into(),
        pid: 1,
        version: "0".into(),
        test_id: None,
    });
    // Until the loop has subscribed and folded it.
    let started = std::time::Instant::now();
    while orch.drivers().await.unwrap().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "never registered"
        );
        bus.publish(&register).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (status, _, created) = secured(
        &router,
        "POST",
        "/tests",
        &good(&auth),
        &secret_spec().to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_no_secrets(&created);
    let view: Value = serde_json::from_str(&created).unwrap();
    let id = view["id"].as_str().unwrap().to_string();
    let headers = &view["spec"]["headers"];
    for name in [
        "Authorization",
        "cookie",
        "Proxy-Authorization",
        "X-API-Key",
        "X-Custom-Secret",
    ] {
        assert_eq!(headers[name], "<redacted>", "{name}: {headers}");
    }
    assert_eq!(headers["X-Visible"], "shown-value");
    assert_eq!(view["spec"]["body"], "<redacted>");

    let (_, _, got) = secured(&router, "GET", &format!("/tests/{id}"), &good(&auth), "").await;
    assert_no_secrets(&got);
    assert!(got.contains("shown-value"));
    let (status, _, html) = secured(
        &router,
        "GET",
        &format!("/tests/{id}/report"),
        &good(&auth),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_no_secrets(&html);
    assert!(
        !html.contains("tok3n"),
        "query values named like secrets are hidden"
    );
    assert!(html.contains("page=2"));
    let (_, _, list) = secured(&router, "GET", "/tests", &good(&auth), "").await;
    assert_no_secrets(&list);

    // The driver's configuration carries the real thing.
    let config = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let (message, _) = configs.next_message().await.expect("a configuration");
            if let loadwave_proto::Message::TestConfig(c) = message {
                break c;
            }
        }
    })
    .await
    .expect("the test's configuration went out");
    assert_eq!(config.spec.headers["Authorization"], "Bearer s3cr3t-auth");
    assert_eq!(config.spec.headers["X-Custom-Secret"], "s3cr3t-custom");
    assert_eq!(
        config.spec.body.as_deref(),
        Some("{\"password\": \"hunter2\"}")
    );
    shutdown.cancel();

    // A mix: each request's secret headers and body; show_body shows bodies.
    let mix = json!({
        "test_type": "avalanche",
        "requests_per_driver": 10,
        "headers": {"Authorization": "Bearer s3cr3t-auth"},
        "requests": [
            {"name": "a", "url": "http://127.0.0.1:9/a", "method": "POST",
             "headers": {"Cookie": "s3cr3t-cookie", "X-Api-Key": "s3cr3t-key"},
             "body": "hunter2"},
            {"name": "b", "url": "http://127.0.0.1:9/b?sig=abc"},
        ],
    });
    let (status, _, created) =
        secured(&router, "POST", "/tests", &good(&auth), &mix.to_string()).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_no_secrets(&created);
    let view: Value = serde_json::from_str(&created).unwrap();
    assert_eq!(view["spec"]["requests"][0]["body"], "<redacted>");
    assert_eq!(
        view["spec"]["requests"][0]["headers"]["Cookie"],
        "<redacted>"
    );
    let mut shown = mix.clone();
    shown["show_body"] = json!(true);
    let (_, _, created) =
        secured(&router, "POST", "/tests", &good(&auth), &shown.to_string()).await;
    let view: Value = serde_json::from_str(&created).unwrap();
    assert_eq!(view["spec"]["requests"][0]["body"], "hunter2", "{created}");
    assert_eq!(view["spec"]["headers"]["Authorization"], "<redacted>");
}

#[tokio::test]
async fn body_errors_and_undeliverable_specs_answer_422() {
    let (orch, _) = orchestrator(ControllerOptions::default()).await;
    let with = |patch: Value| {
        let mut s = spec();
        for (k, v) in patch.as_object().unwrap() {
            s[k] = v.clone();
        }
        Body::from(s.to_string())
    };
    let mut mix_with_body = spec();
    mix_with_body.as_object_mut().unwrap().remove("target_url");
    mix_with_body["requests"] = json!([{"name": "a", "url": "http://127.0.0.1:9/"}]);
    mix_with_body["body"] = json!("x");
    for (body, field) in [
        (with(json!({"body": 42})), "body"),
        (with(json!({"body": ["a"]})), "body"),
        (Body::from(mix_with_body.to_string()), "body"),
        (
            with(json!({"body": "x".repeat(loadwave_proto::spec::MAX_BODY_BYTES + 1)})),
            "body",
        ),
        (
            with(json!({"secret_headers": ["bad header"]})),
            "secret_headers[0]",
        ),
        (with(json!({"show_body": "yes"})), "show_body"),
    ] {
        let (status, json, text) = call(&orch, "POST", "/tests", body).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{field}: {}",
            &text[..text.len().min(300)]
        );
        assert_eq!(json["error"]["field"], field, "{text}");
    }
    // The review's probe, a 1,040,106-byte spec, is not taken.
    let (status, _, text) = call(
        &orch,
        "POST",
        "/tests",
        with(json!({"body": "x".repeat(1_040_000)})),
    )
    .await;
    assert!(
        status.is_client_error() && status != StatusCode::CREATED,
        "{status}: {text}"
    );
    // Not JSON at all is still a 400.
    let (status, json, _) = call(&orch, "POST", "/tests", Body::from("{\"body\": ")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(json["error"]["field"], "body");
    assert!(orch.list().await.unwrap().is_empty());

    // A spec whose configuration the bus could not deliver, though each part is within
    // its own limit: 422 naming the largest part, or the spec when none dominates.
    let mix = |bodies: &[usize]| {
        let requests: Vec<Value> = bodies
            .iter()
            .enumerate()
            .map(|(i, n)| json!({"name": format!("r{i}"), "url": "http://127.0.0.1:9/", "body": "y".repeat(*n)}))
            .collect();
        let doc =
            json!({"test_type": "avalanche", "requests_per_driver": 10, "requests": requests});
        loadwave_proto::TestSpec::from_json(doc.to_string().as_bytes()).unwrap()
    };
    let deliverable = loadwave_orchestrator::api::check_deliverable;
    assert!(deliverable(&mix(&[500_000, 300_000])).is_ok());
    for (bodies, field) in [
        (vec![500_000, 450_000], "requests[0].body"),
        (vec![100_000; 10], "spec"),
    ] {
        match deliverable(&mix(&bodies)) {
            Err(loadwave_orchestrator::api::AppError::Invalid {
                status,
                field: f,
                message,
            }) => {
                assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
                assert_eq!(f, field, "{message}");
                assert!(message.contains("900000"), "{message}");
            }
            other => panic!("{bodies:?}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn finished_tests_can_be_deleted_and_swept() {
    let store = TestStore::memory();
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
    let orch = Orchestrator::new(
        bus,
        store.clone(),
        Arc::new(PoolLauncher),
        ControllerOptions::default(),
    )
    .await
    .unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(orch.clone().run(shutdown.clone()));
    let create = || async {
        let (status, created, text) =
            call(&orch, "POST", "/tests", Body::from(spec().to_string())).await;
        assert_eq!(status, StatusCode::CREATED, "{text}");
        created["id"].as_str().unwrap().to_string()
    };
    let id = create().await;
    // Pending (waiting for drivers): not yet.
    let (status, json, text) = call(&orch, "DELETE", &format!("/tests/{id}"), Body::empty()).await;
    assert_eq!(status, StatusCode::CONFLICT, "{text}");
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stop it first")
    );
    call(&orch, "POST", &format!("/tests/{id}/stop"), Body::empty()).await;
    let (status, _, text) = call(&orch, "DELETE", &format!("/tests/{id}"), Body::empty()).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{text}");
    assert!(text.is_empty());
    let (status, _, _) = call(&orch, "GET", &format!("/tests/{id}"), Body::empty()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = call(&orch, "DELETE", &format!("/tests/{id}"), Body::empty()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        store.load(&id).await.unwrap().is_none(),
        "gone from the store"
    );
    let (status, _, _) = call(&orch, "DELETE", "/tests/nope", Body::empty()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Retention: finished tests older than the setting go; newer and running ones stay.
    let old = create().await;
    call(&orch, "POST", &format!("/tests/{old}/stop"), Body::empty()).await;
    let running = create().await;
    let started = std::time::Instant::now();
    while store.finished_before(u64::MAX).await.unwrap().is_empty() {
        assert!(started.elapsed() < Duration::from_secs(5), "never indexed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let now = loadwave_proto::unix_ms_now();
    let swept = loadwave_orchestrator::api::sweep_expired(&*orch, &store, 60_000, now)
        .await
        .unwrap();
    assert_eq!(swept, 0, "not old enough");
    let swept = loadwave_orchestrator::api::sweep_expired(&*orch, &store, 60_000, now + 61_000)
        .await
        .unwrap();
    assert_eq!(swept, 1);
    let ids: Vec<String> = orch
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(ids, [running]);
    assert!(store.load(&old).await.unwrap().is_none());
    shutdown.cancel();
}

#[tokio::test]
async fn a_login_code_sets_the_session_cookie_once() {
    let (orch, _) = orchestrator(ControllerOptions::default()).await;
    let security = security();
    let router = loadwave_orchestrator::secured_app(orch.clone(), security.clone());
    let code = security.login_code();
    let login = format!("/login?code={code}");
    // Not from a foreign Host either.
    let (status, _, _) = secured(&router, "GET", &login, &[("host", "evil.example")], "").await;
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);
    let (status, headers, text) = secured(&router, "GET", &login, &[("host", HOST)], "").await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{text}");
    assert_eq!(headers["location"], "/");
    let cookie = headers["set-cookie"].to_str().unwrap().to_string();
    for part in ["loadwave_session=", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(part), "{cookie}");
    }
    let session = cookie.split(';').next().unwrap().to_string();
    let (status, _, text) = secured(
        &router,
        "GET",
        "/tests",
        &[("host", HOST), ("cookie", &session)],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    // Once only; and a made-up code does nothing.
    let (status, headers, _) = secured(&router, "GET", &login, &[("host", HOST)], "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(headers.get("set-cookie").is_none());
    let (status, _, _) = secured(&router, "GET", "/login?code=0000", &[("host", HOST)], "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = secured(
        &router,
        "GET",
        "/tests",
        &[("host", HOST), ("cookie", "loadwave_session=guess")],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_openapi_document_states_the_authentication() {
    let (orch, _) = orchestrator(ControllerOptions::default()).await;
    let (_, doc, _) = call(&orch, "GET", "/openapi.json", Body::empty()).await;
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["scheme"], "bearer", "{schemes}");
    assert!(doc["security"].as_array().is_some_and(|s| !s.is_empty()));
    let responses = &doc["paths"]["/tests"]["post"]["responses"];
    for code in ["401", "415", "421", "422"] {
        assert!(responses.get(code).is_some(), "POST /tests lacks {code}");
    }
    for (path, method) in [
        ("/tests", "get"),
        ("/tests/{id}", "get"),
        ("/tests/{id}", "delete"),
        ("/tests/{id}/stop", "post"),
        ("/tests/{id}/report", "get"),
        ("/drivers", "get"),
    ] {
        let responses = &doc["paths"][path][method]["responses"];
        for code in ["401", "421"] {
            assert!(
                responses.get(code).is_some(),
                "{method} {path} lacks {code}"
            );
        }
    }
    assert!(
        doc["paths"]["/tests/{id}"]["delete"]["responses"]
            .get("204")
            .is_some()
    );
}

/// Run as a process: listening beyond loopback needs an explicit token; the token file
/// is the user's only.
#[cfg(unix)]
#[test]
fn the_binary_refuses_an_open_listener_and_keeps_its_token_private() {
    use std::os::unix::fs::PermissionsExt;
    let exe = env!("CARGO_BIN_EXE_loadwave-orchestrator");
    let dir = std::env::temp_dir().join(format!("lw-token-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = std::process::Command::new(exe)
        .args(["--listen", "0.0.0.0:0", "--brokers", "127.0.0.1:1"])
        .args(["--data-dir", dir.to_str().unwrap()])
        .env_remove("LOADWAVE_TOKEN")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("--token-file") && stderr.contains("LOADWAVE_TOKEN"),
        "{stderr}"
    );
    // A short token is refused too.
    let out = std::process::Command::new(exe)
        .args(["--listen", "0.0.0.0:0", "--brokers", "127.0.0.1:1"])
        .args(["--data-dir", dir.to_str().unwrap()])
        .env("LOADWAVE_TOKEN", "short")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("at least"), "{stderr}");

    // On loopback a token is generated and written before Kafka is reached.
    let log = std::env::temp_dir().join(format!("lw-token-{}.log", std::process::id()));
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["--listen", "127.0.0.1:0", "--brokers", "127.0.0.1:1"])
        .args(["--data-dir", dir.to_str().unwrap()])
        .env_remove("LOADWAVE_TOKEN");
    let proc = loadwave_testkit::Proc::spawn_logged(&mut cmd, &log);
    let token = dir.join("token");
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(&token).is_ok_and(|t| t.trim().len() == 64) {
        assert!(started.elapsed() < Duration::from_secs(10), "no token file");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(proc);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&token), 0o600);
    assert_eq!(mode(&dir), 0o700);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&log);
}

/// `GET /tests` comes in pages: `limit` (1 to 1000, default 100) tests after `cursor`,
/// newest first; out-of-range values answer 400 naming the parameter.
#[tokio::test]
async fn the_test_list_comes_in_pages() {
    let (orch, _) = orchestrator(ControllerOptions::default()).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let (status, created, _) =
            call(&orch, "POST", "/tests", Body::from(spec().to_string())).await;
        assert_eq!(status, StatusCode::CREATED);
        ids.push(created["id"].as_str().unwrap().to_string());
    }
    ids.reverse();
    let page = |list: &Value| -> Vec<String> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, all, _) = call(&orch, "GET", "/tests", Body::empty()).await;
    assert_eq!(page(&all), ids);
    let (_, first, _) = call(&orch, "GET", "/tests?limit=2", Body::empty()).await;
    assert_eq!(page(&first), ids[..2]);
    let uri = format!("/tests?limit=2&cursor={}", ids[1]);
    let (_, second, _) = call(&orch, "GET", &uri, Body::empty()).await;
    assert_eq!(page(&second), ids[2..4]);
    let uri = format!("/tests?limit=2&cursor={}", ids[3]);
    let (_, last, _) = call(&orch, "GET", &uri, Body::empty()).await;
    assert_eq!(page(&last), ids[4..]);
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=abc", "query"),
    ] {
        let (status, json, text) =
            call(&orch, "GET", &format!("/tests?{query}"), Body::empty()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {text}");
        assert_eq!(json["error"]["field"], field, "{query}: {text}");
    }
    // The document states the parameters and their range.
    let (_, doc, _) = call(&orch, "GET", "/openapi.json", Body::empty()).await;
    let params = doc["paths"]["/tests"]["get"]["parameters"]
        .as_array()
        .unwrap();
    let limit = params.iter().find(|p| p["name"] == "limit").unwrap();
    assert_eq!(limit["in"], "query");
    assert_eq!(limit["schema"]["minimum"], 1);
    assert_eq!(limit["schema"]["maximum"], 1000);
    assert!(params.iter().any(|p| p["name"] == "cursor"));
}
