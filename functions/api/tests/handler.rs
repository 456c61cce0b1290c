//! The API function's handler over API Gateway event fixtures (`tests/data`): HTTP API
//! (v2) and REST API (v1) events, with and without a named stage, routed to the same
//! contract as the local server. The backend is the store-backed one the function runs,
//! over an in-memory store, bus and launcher.

use std::sync::Arc;

use async_trait::async_trait;
use http_body_util::BodyExt;
use loadwave_bus::{Bus, MemoryBus};
use loadwave_core::{Acquired, DriverSlot};
use loadwave_orchestrator::aws::ecs_controller_options;
use loadwave_orchestrator::{Launcher, StoreBackend, TestStore};
use serde_json::Value;
use tower::ServiceExt;

/// Hands out `task-N` drivers with ARN-like handles, and records releases.
#[derive(Default)]
struct FakeEcs {
    released: std::sync::Mutex<Vec<String>>,
}

#[async_trait]
impl Launcher for FakeEcs {
    async fn acquire(&self, test_id: &str, count: usize, _idle: &[String]) -> Acquired {
        Acquired::Drivers(
            (0..count)
                .map(|i| DriverSlot {
                    id: format!("task-{i}"),
                    handle: Some(format!("arn:aws:ecs:eu-west-1:1:task/c/{test_id}-{i}")),
                })
                .collect(),
        )
    }

    async fn release(&self, _test_id: &str, drivers: &[DriverSlot]) {
        let mut released = self.released.lock().unwrap();
        released.extend(drivers.iter().filter_map(|d| d.handle.clone()));
    }

    fn name(&self) -> &'static str {
        "fake-ecs"
    }
}

fn fixture(name: &str, test_id: &str) -> lambda_http::Request {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    lambda_http::request::from_str(&text.replace("TEST_ID", test_id))
        .unwrap_or_else(|e| panic!("{name} is not an API Gateway event: {e}"))
}

async fn call(backend: Arc<StoreBackend>, name: &str, test_id: &str) -> (u16, Value) {
    let response = api::handler(backend)
        .oneshot(fixture(name, test_id))
        .await
        .unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, body)
}

#[tokio::test]
async fn v1_and_v2_events_route_to_the_same_contract() {
    let launcher = Arc::new(FakeEcs::default());
    let bus = MemoryBus::new();
    let mut triggers = bus
        .subscribe(&[loadwave_proto::Topic::Trigger], "t")
        .await
        .unwrap();
    let backend = Arc::new(StoreBackend::new(
        TestStore::memory(),
        launcher.clone(),
        Arc::new(bus.clone()),
        ecs_controller_options().unwrap(),
    ));

    // v2, $default stage: create.
    let (status, created) = call(backend.clone(), "apigw_v2_post_tests.json", "").await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["status"], "pending");
    assert_eq!(created["drivers"].as_array().unwrap().len(), 2);

    // v2 with a named stage in the raw path: the stage is not part of the route.
    let (status, got) = call(backend.clone(), "apigw_v2_get_test_named_stage.json", &id).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["id"], id.as_str());

    // v1 REST API, stage `Prod`: lambda_http puts the stage in front of the path.
    let (status, list) = call(backend.clone(), "apigw_v1_get_tests_stage.json", "").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], id.as_str());

    // Bad input answers 4xx naming the field, the same as the local server.
    let (status, err) = call(backend.clone(), "apigw_v1_post_not_json.json", "").await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"]["field"], "body");
    let (status, err) = call(backend.clone(), "apigw_v2_post_bad_spec.json", "").await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(err["error"]["field"], "target_url");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("169.254.169.254")
    );

    // Caps against runaway cost: the cloud defaults allow 10 drivers. A valid spec over a
    // cap is refused by the deployment's policy: 403.
    let (status, err) = call(backend.clone(), "apigw_v2_post_too_many_drivers.json", "").await;
    assert_eq!(status, 403, "{err}");
    assert_eq!(err["error"]["field"], "drivers");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("LOADWAVE_MAX_DRIVERS")
    );

    // Stop: recorded in the store, the trigger published, the pending test's tasks
    // released at once; a second stop is a conflict.
    let (status, stopped) = call(backend.clone(), "apigw_v1_stop_test.json", &id).await;
    assert_eq!(status, 202, "{stopped}");
    let (_, got) = call(backend.clone(), "apigw_v2_get_test_named_stage.json", &id).await;
    assert_eq!(got["status"], "stopped");
    let (message, _) = triggers.next_message().await.unwrap();
    assert!(matches!(message, loadwave_proto::Message::Trigger(t) if t.test_id == id));
    assert_eq!(launcher.released.lock().unwrap().len(), 2);
    let (status, _) = call(backend.clone(), "apigw_v1_stop_test.json", &id).await;
    assert_eq!(status, 409);
    let (status, _) = call(backend, "apigw_v1_stop_test.json", "nope").await;
    assert_eq!(status, 404);
}

/// A bus whose broker is away as librdkafka sees it: a publish never completes.
struct AwayBus(MemoryBus);

#[async_trait]
impl Bus for AwayBus {
    async fn publish_raw(
        &self,
        _topic: loadwave_proto::Topic,
        _key: &str,
        _payload: Vec<u8>,
    ) -> Result<(), loadwave_bus::BusError> {
        std::future::pending().await
    }

    async fn subscribe(
        &self,
        topics: &[loadwave_proto::Topic],
        name: &str,
    ) -> Result<loadwave_bus::Subscription, loadwave_bus::BusError> {
        self.0.subscribe(topics, name).await
    }
}

#[tokio::test]
async fn with_the_bus_away_invocations_end_within_their_publish_wait() {
    let wait = std::time::Duration::from_millis(300);
    let store = TestStore::memory();
    let bus: Arc<dyn Bus> = Arc::new(AwayBus(MemoryBus::new()));
    let launcher = Arc::new(FakeEcs::default());
    let backend = Arc::new(
        StoreBackend::new(
            store.clone(),
            launcher.clone(),
            bus.clone(),
            ecs_controller_options().unwrap(),
        )
        .with_publish_wait(wait),
    );
    let (status, created) = call(backend.clone(), "apigw_v2_post_tests.json", "").await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();

    // A stop is recorded and answered although its trigger cannot go out (the schedule
    // sends it again); the test's tasks are released.
    let started = std::time::Instant::now();
    let stop = call(backend.clone(), "apigw_v1_stop_test.json", &id);
    let (status, stopped) = tokio::time::timeout(wait * 20, stop)
        .await
        .expect("the stop waited on the bus");
    assert_eq!(status, 202, "{stopped}");
    assert!(started.elapsed() < wait * 5, "{:?}", started.elapsed());
    let (_, got) = call(backend.clone(), "apigw_v2_get_test_named_stage.json", &id).await;
    assert_eq!(got["status"], "stopped");
    assert_eq!(launcher.released.lock().unwrap().len(), 2);

    // The schedule gives up on its tick, still moves tests on, and fails (so it is
    // retried) naming what it could not publish, instead of waiting out the function's
    // timeout.
    let (_, pending) = call(backend.clone(), "apigw_v2_post_tests.json", "").await;
    let pending_id = pending["id"].as_str().unwrap().to_string();
    let controller = loadwave_orchestrator::LambdaController::new(store.clone(), launcher, bus)
        .with_publish_wait(wait);
    let started = std::time::Instant::now();
    let outcome = tokio::time::timeout(wait * 20, controller.handle_schedule(3))
        .await
        .expect("the schedule waited on the bus");
    assert!(started.elapsed() < wait * 5, "{:?}", started.elapsed());
    let err = outcome
        .expect_err("configurations could not be published")
        .to_string();
    assert!(
        err.contains("test_config") && err.contains("300 ms"),
        "{err}"
    );
    let (_, got) = call(backend, "apigw_v2_get_test_named_stage.json", &pending_id).await;
    assert_eq!(got["status"], "pending", "nothing is lost meanwhile: {got}");
}
