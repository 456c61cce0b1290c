//! The controller function and the ECS launcher against moto (S3 and ECS), as `make test`
//! runs them: MSK event fixtures through the handler into an S3 store, concurrent
//! invocations on one test, re-delivery, the schedule finding a stopped task, and
//! `RunTask` batching. `make test` starts moto and sets `LOADWAVE_TEST_MOTO`.

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_sdk_ecs::config::interceptors::BeforeSerializationInterceptorContextRef;
use aws_sdk_ecs::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_ecs::operation::run_task::RunTaskInput;
use base64::Engine;
use loadwave_bus::{Bus, MemoryBus};
use loadwave_core::{Acquired, TestStatus};
use loadwave_kafka::{KafkaArgs, KafkaAuth};
use loadwave_orchestrator::api::Backend;
use loadwave_orchestrator::aws::ecs_controller_options;
use loadwave_orchestrator::{
    EcsConfig, EcsLauncher, LambdaController, Launcher, StoreBackend, TestStore,
};
use loadwave_proto::{Activity, Message, Topic};
use loadwave_testkit::messages::{heartbeat, register, report};
use serde_json::Value;

const PREFIX: &str = "loadwave.";

/// moto's address, and the AWS SDK's environment pointed at it.
fn moto() -> String {
    let endpoint = std::env::var("LOADWAVE_TEST_MOTO").expect(
        "LOADWAVE_TEST_MOTO is not set: run these tests through `make test`, which starts moto",
    );
    // SAFETY: every test of this binary sets the same values.
    unsafe {
        std::env::set_var("AWS_ENDPOINT_URL", &endpoint);
        std::env::set_var("AWS_ACCESS_KEY_ID", "test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
        std::env::set_var("AWS_REGION", "us-east-1");
    }
    endpoint
}

fn unique(name: &str) -> String {
    format!("{name}-{}", uuid_like())
}

fn uuid_like() -> String {
    format!(
        "{:x}{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    )
}

/// A fresh bucket (its name) and its store.
fn bucket(endpoint: &str) -> (String, TestStore) {
    let name = unique("lw-test");
    ureq::put(&format!("{endpoint}/{name}"))
        .send_empty()
        .expect("moto creates the bucket");
    let store = TestStore::from_url(&format!("s3://{name}/state")).unwrap();
    (name, store)
}

/// The keys under `prefix` in `bucket`, sorted (S3's ListObjectsV2 on moto).
fn s3_keys(endpoint: &str, bucket: &str, prefix: &str) -> Vec<String> {
    let xml = ureq::get(&format!("{endpoint}/{bucket}?list-type=2&prefix={prefix}"))
        .call()
        .expect("moto lists the bucket")
        .into_body()
        .read_to_string()
        .unwrap();
    let mut keys: Vec<String> = xml
        .split("<Key>")
        .skip(1)
        .filter_map(|rest| rest.split_once("</Key>").map(|(k, _)| k.to_string()))
        .collect();
    keys.sort();
    keys
}

/// Counts `RunTask` calls and the tasks each asked for; fails call number `fail_at`
/// (1-based) when set, as a capacity or throttling error would.
#[derive(Debug, Default, Clone)]
struct RunTaskCounter(Arc<std::sync::Mutex<Vec<i32>>>, Option<usize>);

impl Intercept for RunTaskCounter {
    fn name(&self) -> &'static str {
        "RunTaskCounter"
    }

    fn read_before_execution(
        &self,
        context: &BeforeSerializationInterceptorContextRef<'_>,
        _cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_ecs::error::BoxError> {
        if let Some(input) = context.input().downcast_ref::<RunTaskInput>() {
            let mut calls = self.0.lock().unwrap();
            calls.push(input.count().unwrap_or(1));
            if self.1 == Some(calls.len()) {
                return Err("simulated: insufficient Fargate capacity".into());
            }
        }
        Ok(())
    }

    fn read_after_execution(
        &self,
        _context: &aws_sdk_ecs::config::interceptors::FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_ecs::error::BoxError> {
        Ok(())
    }
}

/// An ECS cluster with a Fargate driver task definition on moto, tasks kept RUNNING
/// until stopped.
async fn ecs(endpoint: &str, counter: RunTaskCounter) -> (aws_sdk_ecs::Client, EcsConfig) {
    let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let conf = aws_sdk_ecs::config::Builder::from(&aws)
        .interceptor(counter)
        .build();
    let client = aws_sdk_ecs::Client::from_conf(conf);
    ureq::post(&format!("{endpoint}/moto-api/state-manager/set-transition"))
        .send_json(serde_json::json!({
            "model_name": "ecs::task",
            "transition": {"progression": "manual", "times": 1000}
        }))
        .expect("moto state manager");
    let cluster = unique("lw-cluster");
    client
        .create_cluster()
        .cluster_name(&cluster)
        .send()
        .await
        .unwrap();
    let container = aws_sdk_ecs::types::ContainerDefinition::builder()
        .name("driver")
        .image("loadwave-driver:test")
        .cpu(256)
        .memory(512)
        .essential(true)
        .build();
    client
        .register_task_definition()
        .family("loadwave-driver")
        .network_mode(aws_sdk_ecs::types::NetworkMode::Awsvpc)
        .requires_compatibilities(aws_sdk_ecs::types::Compatibility::Fargate)
        .cpu("256")
        .memory("512")
        .container_definitions(container)
        .send()
        .await
        .unwrap();
    let kafka = KafkaArgs {
        brokers: "b-1.msk:9098".into(),
        topic_prefix: PREFIX.into(),
        kafka_auth: KafkaAuth::MskIam,
        kafka_replication: 2,
        kafka_options: Vec::new(),
    };
    let config = EcsConfig {
        cluster,
        task_definition: "loadwave-driver".into(),
        subnets: ec2_ids(endpoint, "DescribeSubnets", "subnetId")
            .into_iter()
            .take(2)
            .collect(),
        security_groups: ec2_ids(endpoint, "DescribeSecurityGroups", "groupId")
            .into_iter()
            .take(1)
            .collect(),
        capacity_provider: "FARGATE_SPOT".into(),
        container: "driver".into(),
        kafka,
    };
    (client, config)
}

/// Ids from moto's default VPC (moto checks the subnets and groups `RunTask` names), read
/// through the EC2 query API.
fn ec2_ids(endpoint: &str, action: &str, tag: &str) -> Vec<String> {
    let xml = ureq::get(&format!("{endpoint}/?Action={action}&Version=2016-11-15"))
        .header("Authorization", "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/ec2/aws4_request, SignedHeaders=host, Signature=0")
        .call()
        .expect("moto EC2")
        .into_body()
        .read_to_string()
        .unwrap();
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let ids: Vec<String> = xml
        .split(&open)
        .skip(1)
        .filter_map(|rest| rest.split_once(&close).map(|(id, _)| id.to_string()))
        .collect();
    assert!(!ids.is_empty(), "moto's default VPC has no {tag}: {xml}");
    ids
}

async fn task_states(
    client: &aws_sdk_ecs::Client,
    cluster: &str,
    arns: &[String],
) -> Vec<aws_sdk_ecs::types::Task> {
    client
        .describe_tasks()
        .cluster(cluster)
        .set_tasks(Some(arns.to_vec()))
        .send()
        .await
        .unwrap()
        .tasks()
        .to_vec()
}

#[tokio::test]
async fn ecs_launches_in_batches_of_ten_and_stops_its_tasks() {
    let endpoint = moto();
    let counter = RunTaskCounter::default();
    let (client, config) = ecs(&endpoint, counter.clone()).await;
    let launcher = EcsLauncher::new(client.clone(), config.clone());
    let slots = match launcher.acquire("t-ecs-12", 12, &[]).await {
        Acquired::Drivers(slots) => slots,
        other => panic!("12 tasks expected: {other:?}"),
    };
    assert_eq!(
        *counter.0.lock().unwrap(),
        vec![10, 2],
        "two RunTask batches"
    );
    assert_eq!(slots.len(), 12);
    let arns: Vec<String> = slots.iter().map(|s| s.handle.clone().unwrap()).collect();
    for s in &slots {
        assert_eq!(
            s.id,
            loadwave_proto::ecs_task_driver_id(s.handle.as_ref().unwrap())
        );
    }
    let tasks = task_states(&client, &config.cluster, &arns).await;
    assert_eq!(tasks.len(), 12);
    for task in &tasks {
        let env: BTreeMap<String, String> = task
            .overrides()
            .unwrap()
            .container_overrides()
            .iter()
            .find(|c| c.name() == Some("driver"))
            .expect("the driver container is overridden")
            .environment()
            .iter()
            .map(|kv| {
                (
                    kv.name().unwrap().to_string(),
                    kv.value().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(env["LOADWAVE_TEST_ID"], "t-ecs-12");
        assert_eq!(env["KAFKA_BROKERS"], "b-1.msk:9098");
        assert_eq!(env["LOADWAVE_TOPIC_PREFIX"], PREFIX);
        assert_eq!(env["LOADWAVE_KAFKA_AUTH"], "msk-iam");
        assert_eq!(task.desired_status(), Some("RUNNING"));
    }
    // Nothing stopped yet.
    assert!(launcher.inspect(&slots).await.is_empty());
    launcher.release("t-ecs-12", &slots).await;
    for task in task_states(&client, &config.cluster, &arns).await {
        assert_eq!(
            task.desired_status(),
            Some("STOPPED"),
            "{:?}",
            task.task_arn()
        );
    }
    let gone = launcher.inspect(&slots).await;
    assert_eq!(gone.len(), 12, "{gone:?}");
    assert!(gone[0].1.contains("loadwave: test ended"), "{gone:?}");
}

/// The second batch fails: the ten tasks of the first are stopped and the test fails
/// with the reason.
#[tokio::test]
async fn a_partial_launch_stops_what_started_and_names_the_reason() {
    let endpoint = moto();
    let counter = RunTaskCounter(Arc::default(), Some(2));
    let (client, config) = ecs(&endpoint, counter.clone()).await;
    let launcher = EcsLauncher::new(client.clone(), config.clone());
    let reason = match launcher.acquire("t-partial", 15, &[]).await {
        Acquired::Failed(reason) => reason,
        other => panic!("a failure expected: {other:?}"),
    };
    assert!(
        reason.contains("could not start 15 driver tasks"),
        "{reason}"
    );
    assert!(reason.contains("insufficient Fargate capacity"), "{reason}");
    assert_eq!(*counter.0.lock().unwrap(), vec![10, 5]);
    let listed = client
        .list_tasks()
        .cluster(&config.cluster)
        .desired_status(aws_sdk_ecs::types::DesiredStatus::Stopped)
        .send()
        .await
        .unwrap();
    let arns: Vec<String> = listed.task_arns().to_vec();
    assert_eq!(arns.len(), 10, "the first batch's tasks were stopped");
    let running = client
        .list_tasks()
        .cluster(&config.cluster)
        .desired_status(aws_sdk_ecs::types::DesiredStatus::Running)
        .send()
        .await
        .unwrap();
    assert!(running.task_arns().is_empty(), "nothing left running");
}

/// The fixture with its one record replaced by `messages` on `topic`, as an MSK event
/// source mapping would deliver them (values base64).
fn msk_event(topic: Topic, messages: &[Message]) -> Value {
    let path = format!("{}/tests/data/msk_batch.json", env!("CARGO_MANIFEST_DIR"));
    let mut event: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let template = event["records"]["loadwave.metrics-0"][0].clone();
    let name = format!("{PREFIX}{}", topic.name());
    let b64 = base64::engine::general_purpose::STANDARD;
    let records: Vec<Value> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut r = template.clone();
            r["topic"] = name.clone().into();
            r["offset"] = (100 + i).into();
            r["value"] = b64.encode(m.encode()).into();
            r
        })
        .collect();
    event["records"] = serde_json::json!({ format!("{name}-0"): records });
    event
}

fn schedule_event() -> Value {
    let path = format!("{}/tests/data/schedule.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// One test created through the API function's backend on moto (S3 and ECS), with the
/// controller function's logic over the same clients and a bus the test reads.
struct Deployed {
    client: aws_sdk_ecs::Client,
    ecs_config: EcsConfig,
    endpoint: String,
    bucket: String,
    store: TestStore,
    api: StoreBackend,
    controller: LambdaController,
    out: loadwave_bus::Subscription,
    id: String,
    drivers: Vec<String>,
}

impl Deployed {
    /// A test of `drivers` Avalanche drivers × `requests`; `out` reads `topics`.
    async fn create(drivers: u32, requests: u64, topics: &[Topic]) -> Deployed {
        let endpoint = moto();
        let (client, ecs_config) = ecs(&endpoint, RunTaskCounter::default()).await;
        let launcher: Arc<dyn Launcher> =
            Arc::new(EcsLauncher::new(client.clone(), ecs_config.clone()));
        let (bucket, store) = bucket(&endpoint);
        let bus = MemoryBus::new();
        let out = bus.subscribe(topics, "test").await.unwrap();
        let bus: Arc<dyn Bus> = Arc::new(bus);
        let api = StoreBackend::new(
            store.clone(),
            launcher.clone(),
            bus.clone(),
            ecs_controller_options().unwrap(),
        );
        let spec = serde_json::json!({
            "target_url": "http://127.0.0.1:9/ping", "test_type": "avalanche",
            "drivers": drivers, "requests_per_driver": requests,
        });
        let spec = loadwave_proto::TestSpec::from_json(spec.to_string().as_bytes()).unwrap();
        let created = api.create(spec).await.unwrap();
        let controller = LambdaController::new(store.clone(), launcher, bus);
        Deployed {
            client,
            ecs_config,
            endpoint,
            bucket,
            store,
            api,
            controller,
            out,
            id: created.id.clone(),
            drivers: created.drivers.iter().map(|d| d.id.clone()).collect(),
        }
    }

    /// The controller function's handler on `event`.
    async fn handle(&self, event: Value) -> loadwave_orchestrator::aws::BatchOutcome {
        controller::handle(&self.controller, event, PREFIX, 1)
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn msk_batches_fold_into_s3_and_concurrent_invocations_lose_nothing() {
    let mut d = Deployed::create(
        3,
        400,
        &[Topic::TestConfig, Topic::Trigger, Topic::Heartbeat],
    )
    .await;
    let (id, drivers) = (d.id.clone(), d.drivers.clone());
    assert_eq!(drivers.len(), 3);
    assert!(drivers.iter().all(|d| d.starts_with("task-")));
    // The tasks come up and announce themselves (not yet naming the test).
    let hello: Vec<Message> = drivers.iter().map(|d| register(d, None)).collect();
    let o = d.handle(msk_event(Topic::Register, &hello)).await;
    assert_eq!((o.records, o.tests), (3, 1));
    let mut configs = 0;
    while configs < 3 {
        let (m, _) = d.out.next_message().await.unwrap();
        if matches!(m, Message::TestConfig(ref c) if c.test_id == id) {
            configs += 1;
        }
    }
    // They confirm: one trigger goes out.
    let ready: Vec<Message> = drivers.iter().map(|d| register(d, Some(&id))).collect();
    d.handle(msk_event(Topic::Register, &ready)).await;
    let (m, _) = d.out.next_message().await.unwrap();
    assert!(
        matches!(m, Message::Trigger(ref t) if t.test_id == id),
        "{m:?}"
    );
    assert_eq!(
        d.api.view(&id).await.unwrap().unwrap().status,
        TestStatus::Running
    );

    // Reports from three partitions (one per driver), folded by three invocations at
    // once, all on the same test: conditional writes lose nothing.
    let mut conflicts = 0;
    for seq in 0..4u64 {
        let events: Vec<Value> = drivers
            .iter()
            .map(|d| msk_event(Topic::Metrics, &[report(&id, d, seq, seq == 3, 100)]))
            .collect();
        let results = futures_join(events.into_iter().map(|e| d.handle(e))).await;
        for r in results {
            conflicts += r.conflicts;
        }
    }
    let view = d.api.view(&id).await.unwrap().unwrap();
    assert_eq!(
        view.summary.requests, 1_200,
        "every report of every invocation folded"
    );
    assert_eq!(view.status, TestStatus::Completed);
    assert!(view.verdict.unwrap().passed);
    eprintln!("conditional-write conflicts redone: {conflicts}");

    // The same batch again (an event source mapping retry): nothing changes.
    let again = msk_event(Topic::Metrics, &[report(&id, &drivers[0], 2, false, 100)]);
    d.handle(again).await;
    assert_eq!(
        d.api.view(&id).await.unwrap().unwrap().summary.requests,
        1_200
    );
    // The test is in the index, no longer active; its tasks were stopped.
    assert!(d.store.active_ids().await.unwrap().is_empty());
    assert_eq!(d.api.list().await.unwrap()[0].requests, 1_200);
    let state = d.store.load(&id).await.unwrap().unwrap().0;
    let arns: Vec<String> = state
        .driver_slots()
        .into_iter()
        .filter_map(|s| s.handle)
        .collect();
    for task in task_states(&d.client, &d.ecs_config.cluster, &arns).await {
        assert_eq!(
            task.desired_status(),
            Some("STOPPED"),
            "tasks stopped at the end"
        );
    }
}

/// The timeline persisted in chunks on S3: three invocations at once every second for
/// long enough to seal chunks, then late reports for a sealed chunk from three at once
/// (each loads that chunk, and all but one lose the conditional write and fold again).
/// Every request is counted once, in the summary and in the timeline; S3 holds exactly
/// the chunk objects the document names; the finished test is one document.
#[tokio::test]
async fn concurrent_invocations_fold_a_chunked_timeline_exactly() {
    let mut d = Deployed::create(3, 100_000, &[Topic::Trigger]).await;
    let (id, drivers) = (d.id.clone(), d.drivers.clone());
    let ready: Vec<Message> = drivers.iter().map(|d| register(d, Some(&id))).collect();
    d.handle(msk_event(Topic::Register, &ready)).await;
    let (m, _) = d.out.next_message().await.unwrap();
    assert!(matches!(m, Message::Trigger(_)), "{m:?}");

    let seconds = 2 * loadwave_core::CHUNK_SECONDS + loadwave_core::SEAL_LAG_SECONDS + 2;
    let mut conflicts = 0;
    for second in 0..u64::from(seconds) {
        let events: Vec<Value> = drivers
            .iter()
            .map(|d| msk_event(Topic::Metrics, &[report(&id, d, second, false, 10)]))
            .collect();
        for r in futures_join(events.into_iter().map(|e| d.handle(e))).await {
            conflicts += r.conflicts;
        }
    }
    // Late buckets for second 3, in chunk 0, sealed by now, in each driver's next report
    // (a sequence number far beyond what the plan allows would be refused).
    let late: Vec<Value> = drivers
        .iter()
        .map(|drv| {
            let mut m = report(&id, drv, u64::from(seconds), false, 7);
            if let Message::Metrics(r) = &mut m {
                r.buckets[0].second = 3;
            }
            msk_event(Topic::Metrics, &[m])
        })
        .collect();
    for r in futures_join(late.into_iter().map(|e| d.handle(e))).await {
        conflicts += r.conflicts;
    }
    let expected = 3 * (10 * u64::from(seconds) + 7);
    let view = d.api.view(&id).await.unwrap().unwrap();
    assert_eq!(view.summary.requests, expected);
    assert_eq!(view.timeline.len(), seconds as usize);
    assert_eq!(
        view.timeline.iter().map(|p| p.requests).sum::<u64>(),
        expected
    );
    assert_eq!(view.timeline[3].requests, 3 * (10 + 7));
    let (head, _) = d.store.load_head(&id).await.unwrap().unwrap();
    let named: Vec<String> = head
        .unloaded_chunks()
        .iter()
        .map(|(_, name)| format!("state/tests/{id}/timeline/{name}.json"))
        .collect();
    assert_eq!(named.len(), 2, "two sealed chunks");
    let mut sorted = named.clone();
    sorted.sort();
    assert_eq!(
        s3_keys(&d.endpoint, &d.bucket, &format!("state/tests/{id}/")),
        sorted,
        "exactly the named chunks are stored"
    );
    eprintln!("conditional-write conflicts redone: {conflicts}");

    let finals: Vec<Message> = drivers
        .iter()
        .map(|drv| report(&id, drv, u64::from(seconds) + 1, true, 0))
        .collect();
    d.handle(msk_event(Topic::Metrics, &finals)).await;
    let view = d.api.view(&id).await.unwrap().unwrap();
    assert_eq!(view.status, TestStatus::Completed);
    assert_eq!(view.summary.requests, expected);
    assert!(
        s3_keys(&d.endpoint, &d.bucket, &format!("state/tests/{id}/")).is_empty(),
        "a finished test is one document"
    );
}

#[tokio::test]
async fn the_schedule_ticks_and_finds_stopped_tasks() {
    let mut d = Deployed::create(2, 50, &[Topic::Heartbeat]).await;
    let (id, drivers) = (d.id.clone(), d.drivers.clone());
    let ready: Vec<Message> = drivers.iter().map(|d| register(d, Some(&id))).collect();
    d.handle(msk_event(Topic::Register, &ready)).await;
    let beats: Vec<Message> = drivers
        .iter()
        .map(|d| {
            heartbeat(
                d,
                Some(&id),
                loadwave_proto::unix_ms_now(),
                Activity::Running,
            )
        })
        .collect();
    d.handle(msk_event(Topic::Heartbeat, &beats)).await;
    d.handle(msk_event(
        Topic::Metrics,
        &[report(&id, &drivers[0], 0, true, 50)],
    ))
    .await;

    // The second driver's task dies.
    let state = d.store.load(&id).await.unwrap().unwrap().0;
    let arn = state.driver_slots()[1].handle.clone().unwrap();
    d.client
        .stop_task()
        .cluster(&d.ecs_config.cluster)
        .task(&arn)
        .reason("Essential container in task exited")
        .send()
        .await
        .unwrap();
    let o = d.handle(schedule_event()).await;
    assert_eq!(o.ticks, 1);
    let (tick, _) = d.out.next_message().await.unwrap();
    assert!(matches!(tick, Message::Tick(_)), "{tick:?}");
    // The test runs: the driver gets a heartbeat timeout's grace for a final report that
    // may still be on its way, its task's stop reason already noted.
    let view = d.api.view(&id).await.unwrap().unwrap();
    assert_eq!(view.status, TestStatus::Running);
    let gone = view.drivers.iter().find(|d| d.id == drivers[1]).unwrap();
    assert!(gone.note.is_some(), "{gone:?}");
    tokio::time::sleep(std::time::Duration::from_millis(3_300)).await;
    d.handle(schedule_event()).await;
    let view = d.api.view(&id).await.unwrap().unwrap();
    let lost = view.drivers.iter().find(|d| d.id == drivers[1]).unwrap();
    assert_eq!(lost.state, loadwave_core::DriverPhase::Lost);
    assert!(
        lost.note
            .as_deref()
            .unwrap()
            .contains("Essential container in task exited"),
        "{:?}",
        lost.note
    );
    assert_eq!(view.status, TestStatus::Completed);
    assert_eq!(view.summary.requests, 50);
    assert!(!view.verdict.unwrap().passed);

    // Events it does not handle are refused, naming the source.
    let err = controller::handle(
        &d.controller,
        serde_json::json!({"source": "aws.s3"}),
        PREFIX,
        1,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("aws.s3"), "{err}");
}

/// Runs futures concurrently on this task (no extra dependency).
async fn futures_join<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let handles: Vec<_> = futures.collect();
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = handles.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in pinned.iter_mut().enumerate() {
            if outputs[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => outputs[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(|o| o.unwrap()).collect()
}
