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
    assert!(
        status.as_u16() < 500,
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
