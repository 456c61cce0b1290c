//! The target policy and the caps at the API: the probes, in-process (the router
//! of `app()` over the in-memory bus and store; no request is sent to any target).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use loadwave_bus::MemoryBus;
use loadwave_orchestrator::{ControllerOptions, Orchestrator, PoolLauncher, TestStore, app};
use serde_json::{Value, json};
use tower::ServiceExt;

async fn orchestrator(options: ControllerOptions) -> Arc<Orchestrator> {
    Orchestrator::new(
        Arc::new(MemoryBus::new()),
        TestStore::memory(),
        Arc::new(PoolLauncher),
        options,
    )
    .await
    .unwrap()
}

async fn create(orch: &Arc<Orchestrator>, spec: Value) -> (StatusCode, Value) {
    let response = app(orch.clone())
        .oneshot(
            Request::builder()
                .method("POST")
                .uri("/tests")
                .header("content-type", "application/json")
                .body(Body::from(spec.to_string()))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn field(body: &Value) -> &str {
    body["error"]["field"].as_str().unwrap_or_default()
}

/// The probes: IPv6 forms carrying the metadata address, and AWS's internal
/// range, were accepted.
#[tokio::test]
async fn embedded_metadata_addresses_are_refused() {
    let orch = orchestrator(ControllerOptions::default()).await;
    for host in [
        "[64:ff9b::a9fe:a9fe]",
        "[2002:a9fe:a9fe::1]",
        "[::169.254.169.254]",
        "[fd00:ec2::23]",
        "[2001:0:a9fe:a9fe::1]",
    ] {
        let (status, body) = create(
            &orch,
            json!({"target_url": format!("http://{host}/"), "test_type": "avalanche", "requests_per_driver": 1}),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{host}: {body}");
        assert_eq!(field(&body), "target_url", "{host}: {body}");
    }
}

/// The probe: a spec POSTing to the orchestrator's own `/tests` was accepted.
#[tokio::test]
async fn the_orchestrator_and_its_brokers_are_refused_as_targets() {
    let orch = orchestrator(ControllerOptions::default()).await;
    let own = ["127.0.0.1:18000", "127.0.0.1:19092"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    orch.refuse_targets(own);
    for url in [
        "http://127.0.0.1:18000/tests",
        "http://localhost:18000/tests",
        "http://0.0.0.0:18000/tests",
        "http://[::ffff:127.0.0.1]:19092/",
    ] {
        let (status, body) = create(
            &orch,
            json!({"target_url": url, "test_type": "avalanche", "requests_per_driver": 1, "method": "POST"}),
        )
        .await;
        // A valid spec the deployment's policy refuses: 403.
        assert_eq!(status, StatusCode::FORBIDDEN, "{url}: {body}");
        assert_eq!(field(&body), "target_url", "{url}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("--allow-self-target"), "{message}");
    }
    let (status, body) = create(
        &orch,
        json!({"test_type": "avalanche", "requests_per_driver": 1, "requests": [
            {"name": "a", "url": "http://127.0.0.1:18001/"},
            {"name": "b", "url": "http://127.0.0.1:18000/tests"},
        ]}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(field(&body), "requests[1].url", "{body}");
    // Another port of the same host is an ordinary target.
    let (status, body) = create(
        &orch,
        json!({"target_url": "http://127.0.0.1:18001/", "test_type": "avalanche", "requests_per_driver": 1}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // With --allow-self-target the list is empty: the orchestrator may be tested.
    orch.refuse_targets(Vec::new());
    let (status, body) = create(
        &orch,
        json!({"target_url": "http://127.0.0.1:18000/healthz", "test_type": "avalanche", "requests_per_driver": 1}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

/// The probe: the per-driver request cap was skipped for tests bound by time.
#[tokio::test]
async fn the_request_cap_holds_for_tests_bound_by_time() {
    let mut options = ControllerOptions::default();
    options.limits.max_requests_per_driver = Some(1_000);
    let orch = orchestrator(options).await;
    let (status, body) = create(
        &orch,
        json!({"target_url": "http://127.0.0.1:9/", "test_type": "tsunami", "rate": 100, "duration_s": 60}),
    )
    .await;
    assert!(status.is_client_error(), "{status}: {body}");
    assert_eq!(field(&body), "duration_s", "{body}");
    let (status, body) = create(
        &orch,
        json!({"target_url": "http://127.0.0.1:9/", "test_type": "avalanche", "duration_s": 60}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["spec"]["requests_per_driver"], json!(1_000), "{body}");
}
