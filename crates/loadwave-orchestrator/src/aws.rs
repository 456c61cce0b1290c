//! The orchestrator without a process: what the Lambda functions run.
//!
//! - [`StoreBackend`] serves the API from the state store alone (the API function): it
//!   writes a new test, launches its drivers, reads tests back, records stops.
//! - [`LambdaController`] is the controller function: each invocation folds one batch of
//!   Kafka records (an MSK event source mapping delivers one topic-partition's records)
//!   or one scheduled event into the tests they concern, with the same
//!   [`ControllerCore`] the local orchestrator runs, then writes, publishes and releases.
//!
//! Concurrency: invocations for different topic-partitions run at once and may update
//! the same test. Every write is conditional on the version read; a conflict reloads that
//! test and folds the batch again, which is harmless because the fold is idempotent
//! (reports are keyed by driver and sequence number; heartbeats and ticks only move
//! clocks forward). Messages a fold asks for are published only after its write
//! succeeded; a publish that fails fails the invocation, so the event source mapping
//! delivers the batch again — and configurations and triggers that were written as sent
//! but never reached the bus are re-sent by the core a second later anyway.
//!
//! A publish waits at most [`PUBLISH_WAIT`]: librdkafka keeps a message for minutes while
//! the broker is away, and an invocation must not sit on one until its own timeout.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use loadwave_bus::Bus;
use loadwave_core::{
    Acquired, ControllerCore, ControllerOptions, DriverInfo, DriverPhase, ListQuery, TestListItem,
    TestState, TestView, controller::count_statuses,
};
use loadwave_proto::{Message, TestSpec, Tick, Topic, unix_ms_now};

use crate::api::{AppError, Backend, BusHealthView, Health};
use crate::launcher::Launcher;
use crate::store::{StoreError, TestStore, Version};

/// Attempts of one test's read-fold-write before the invocation fails.
const WRITE_ATTEMPTS: usize = 25;

/// How long an invocation waits for the bus to take one message before it gives up on it
/// (what the state records as sent but never went out is sent again by the core).
pub const PUBLISH_WAIT: Duration = Duration::from_secs(5);

/// Publishes `m`, waiting at most `wait` (a wait that runs out is retriable); the error
/// names the topic.
async fn publish_within(
    bus: &dyn Bus,
    m: &Message,
    wait: Duration,
) -> Result<(), loadwave_bus::BusError> {
    match tokio::time::timeout(wait, bus.publish(m)).await {
        Ok(result) => result,
        Err(_) => Err(loadwave_bus::BusError::Publish {
            topic: m.topic().name().to_string(),
            reason: format!(
                "the bus did not take the message within {} ms",
                wait.as_millis()
            ),
            retriable: true,
        }),
    }
}

/// The API over the state store (the Lambda API function).
pub struct StoreBackend {
    store: TestStore,
    launcher: Arc<dyn Launcher>,
    bus: Arc<dyn Bus>,
    options: ControllerOptions,
    publish_wait: Duration,
}

impl StoreBackend {
    /// Over clients built once per execution environment.
    pub fn new(
        store: TestStore,
        launcher: Arc<dyn Launcher>,
        bus: Arc<dyn Bus>,
        options: ControllerOptions,
    ) -> Self {
        StoreBackend {
            store,
            launcher,
            bus,
            options,
            publish_wait: PUBLISH_WAIT,
        }
    }

    /// How long a publish may wait for the bus ([`PUBLISH_WAIT`] unless set).
    pub fn with_publish_wait(mut self, wait: Duration) -> Self {
        self.publish_wait = wait;
        self
    }
}

#[async_trait]
impl Backend for StoreBackend {
    fn limits(&self) -> loadwave_core::Limits {
        self.options.limits
    }

    async fn create(&self, spec: TestSpec) -> Result<TestView, AppError> {
        let now = unix_ms_now();
        let id = uuid::Uuid::now_v7().simple().to_string();
        let count = spec.drivers as usize;
        let mut state = TestState::new(&id, spec, Vec::new(), now, self.options.new_test_options());
        match self.launcher.acquire(&id, count, &[]).await {
            Acquired::Drivers(slots) => state.assign_drivers(slots, now),
            Acquired::Failed(reason) => {
                state.fail(reason, now);
            }
            Acquired::NotYet { available } => {
                state.fail(
                    format!("needs {count} drivers, but only {available} are available"),
                    now,
                );
            }
        }
        if let Err(e) = self.store.create(&state).await {
            // The test is not recorded: its tasks must not run on.
            self.launcher.release(&id, &state.driver_slots()).await;
            return Err(e.into());
        }
        Ok(state.view())
    }

    async fn view(&self, id: &str) -> Result<Option<TestView>, AppError> {
        Ok(self.store.load(id).await?.map(|(t, _)| t.view()))
    }

    async fn delete(&self, id: &str) -> Result<(), AppError> {
        match self.store.load_head(id).await? {
            None => Err(AppError::NotFound(format!("no test with id `{id}`"))),
            Some((state, _)) if !state.is_finished() => Err(AppError::Conflict(format!(
                "test {id} has not ended; stop it first"
            ))),
            Some(_) => {
                self.store.delete(id).await?;
                Ok(())
            }
        }
    }

    async fn list_page(&self, query: &ListQuery) -> Result<Vec<TestListItem>, AppError> {
        Ok(self.store.list_page(query).await?)
    }

    async fn stop(&self, id: &str) -> Result<TestView, AppError> {
        for _ in 0..WRITE_ATTEMPTS {
            let Some((mut state, version)) = self.store.load_head(id).await? else {
                return Err(loadwave_core::StopError::NotFound(id.to_string()).into());
            };
            let mut core = ControllerCore::new(self.options);
            core.insert(state.clone(), unix_ms_now());
            let view = core.request_stop(id, unix_ms_now())?;
            let messages = core.poll(unix_ms_now());
            state = core.test(id).expect("inserted").clone();
            match self.store.save(&mut state, Some(&version)).await {
                Ok(_) => {
                    for m in &messages {
                        // The stop is recorded: a running test's trigger goes out again
                        // with every schedule until its drivers act on it, and a pending
                        // test's tasks are released below, so an unreachable bus only
                        // delays it.
                        if let Err(e) =
                            publish_within(self.bus.as_ref(), m, self.publish_wait).await
                        {
                            tracing::warn!(test_id = %id, error = %e, "stop recorded; its trigger goes out with the next schedule");
                            break;
                        }
                    }
                    if state.is_finished() {
                        self.launcher.release(id, &state.driver_slots()).await;
                    }
                    return Ok(view);
                }
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(AppError::Internal(format!(
            "test {id} kept changing; stop not recorded"
        )))
    }

    /// The drivers of unfinished tests, from their states (ECS drivers serve one test).
    async fn drivers(&self) -> Result<Vec<DriverInfo>, AppError> {
        let active = self.store.load_active().await?;
        Ok(active
            .iter()
            .flat_map(|(t, _)| {
                let view = t.view();
                view.drivers.into_iter().map(move |d| DriverInfo {
                    id: d.id,
                    host: String::new(),
                    pid: 0,
                    version: String::new(),
                    state: match d.state {
                        DriverPhase::Waiting | DriverPhase::Ready => "configured",
                        DriverPhase::Running => "running",
                        DriverPhase::Lost => "lost",
                        DriverPhase::Completed | DriverPhase::Stopped => "idle",
                    }
                    .to_string(),
                    test_id: Some(view.id.clone()),
                    last_seen_ms: d.last_seen_ms,
                })
            })
            .collect())
    }

    async fn health(&self) -> Result<Health, AppError> {
        let list = self.store.list().await?;
        let drivers = self.drivers().await?;
        Ok(Health {
            status: "ok",
            launcher: self.launcher.name(),
            tests: count_statuses(list.iter().map(|i| i.status)),
            live_drivers: drivers.iter().filter(|d| d.state != "lost").count(),
            bus: BusHealthView::new(self.bus.health(), Default::default()),
        })
    }

    fn bus_state(&self) -> loadwave_bus::BusState {
        self.bus.health()
    }
}

/// A controller invocation that failed; the event source mapping retries the batch.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Publishing what the fold asked for failed.
    #[error("publishing failed: {0}")]
    Publish(String),
    /// A test kept changing under us.
    #[error("test {0} kept changing; giving up after {WRITE_ATTEMPTS} attempts")]
    Contended(String),
}

/// What one invocation did (logged, and returned by the function).
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct BatchOutcome {
    /// Records in the batch.
    pub records: usize,
    /// Records that did not decode.
    pub malformed: u64,
    /// Reports rejected whole by a test's fold (a bound broken, a histogram that does not
    /// decode), counted once per batch.
    pub rejected: u64,
    /// Tests folded.
    pub tests: usize,
    /// Snapshots written.
    pub written: usize,
    /// Conditional writes that lost and were redone.
    pub conflicts: usize,
    /// Messages published.
    pub published: usize,
    /// Ticks published (scheduled events).
    pub ticks: usize,
}

/// The controller function's logic.
pub struct LambdaController {
    store: TestStore,
    launcher: Arc<dyn Launcher>,
    bus: Arc<dyn Bus>,
    id: String,
    publish_wait: Duration,
}

impl LambdaController {
    /// Over clients built once per execution environment.
    pub fn new(store: TestStore, launcher: Arc<dyn Launcher>, bus: Arc<dyn Bus>) -> Self {
        LambdaController {
            store,
            launcher,
            bus,
            id: format!("controller-{}", uuid::Uuid::new_v4().simple()),
            publish_wait: PUBLISH_WAIT,
        }
    }

    /// How long a publish may wait for the bus ([`PUBLISH_WAIT`] unless set).
    pub fn with_publish_wait(mut self, wait: Duration) -> Self {
        self.publish_wait = wait;
        self
    }

    /// Folds a batch of records (topic, raw value) into every test it concerns, at
    /// `now_ms`.
    pub async fn handle_records(
        &self,
        records: &[(Topic, Vec<u8>)],
        now_ms: u64,
    ) -> Result<BatchOutcome, ControllerError> {
        let mut outcome = BatchOutcome {
            records: records.len(),
            ..BatchOutcome::default()
        };
        let mut messages = Vec::with_capacity(records.len());
        // A batch of garbage costs a counter and a line a second, not a line a record.
        let mut log = loadwave_core::LogLimiter::default();
        for (topic, payload) in records {
            match Message::decode(payload) {
                Ok(m) => messages.push(m),
                Err(err) => {
                    outcome.malformed = outcome.malformed.saturating_add(1);
                    if let Some(held) = log.allow(unix_ms_now()) {
                        tracing::warn!(topic = topic.name(), %err, held_back = held, "malformed message skipped");
                    }
                }
            }
        }
        // Active tests, plus any the batch names (a report can outlive the listing).
        let mut ids: BTreeSet<String> = self.store.active_ids().await?.into_iter().collect();
        for m in &messages {
            match m {
                Message::Metrics(r) => {
                    ids.insert(r.test_id.clone());
                }
                Message::Register(r) => {
                    if let Some(t) = &r.test_id {
                        ids.insert(t.clone());
                    }
                }
                _ => {}
            }
        }
        let ids: Vec<String> = ids.into_iter().collect();
        for (state, version) in self.store.load_many(&ids).await? {
            if state.is_finished() {
                continue;
            }
            outcome.tests += 1;
            self.fold_test(state, version, &messages, &[], now_ms, &mut outcome)
                .await?;
        }
        Ok(outcome)
    }

    /// The schedule (EventBridge): publishes `ticks` ticks one second apart while tests
    /// run (they move every test's bus clock when read back), then asks the launcher
    /// which drivers are gone and moves every test on in time (registration timeouts,
    /// lost drivers, stops).
    pub async fn handle_schedule(&self, ticks: u32) -> Result<BatchOutcome, ControllerError> {
        let mut outcome = BatchOutcome::default();
        for i in 0..ticks.max(1) {
            if i > 0 {
                if self.store.active_ids().await?.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let tick = Message::Tick(Tick {
                orchestrator_id: self.id.clone(),
                sent_at_ms: unix_ms_now(),
            });
            // Without the bus no tick goes out, but tests still move on in time below.
            if let Err(e) = publish_within(self.bus.as_ref(), &tick, self.publish_wait).await {
                tracing::warn!(error = %e, "no tick published");
                break;
            }
            outcome.ticks += 1;
        }
        for (state, version) in self.store.load_active().await? {
            outcome.tests += 1;
            let slots = state.unfinished_slots();
            let gone = if slots.is_empty() {
                Vec::new()
            } else {
                self.launcher.inspect(&slots).await
            };
            self.fold_test(state, version, &[], &gone, unix_ms_now(), &mut outcome)
                .await?;
        }
        Ok(outcome)
    }

    /// Read-fold-write of one test until the write wins, then publish and release.
    ///
    /// `state` comes from the main document alone: its sealed timeline chunks stay in
    /// the store unless a late report needs one, which is then loaded and the batch
    /// folded again from the state as read.
    async fn fold_test(
        &self,
        mut state: TestState,
        mut version: Version,
        messages: &[Message],
        gone: &[(String, String)],
        now_ms: u64,
        outcome: &mut BatchOutcome,
    ) -> Result<(), ControllerError> {
        let id = state.id().to_string();
        for _ in 0..WRITE_ATTEMPTS {
            let before = serde_json::to_vec(&state).expect("state serializes");
            let mut core = ControllerCore::new(ControllerOptions::default());
            core.insert(state.clone(), now_ms);
            for m in messages {
                core.ingest(m, now_ms);
            }
            let needed: Vec<u32> = core
                .take_chunk_requests()
                .into_iter()
                .map(|(_, chunk)| chunk)
                .collect();
            if !needed.is_empty() {
                // Late reports for sealed seconds: fold again with their chunks.
                match self.store.load_chunks(&mut state, Some(&needed)).await {
                    Ok(()) => continue,
                    Err(StoreError::Conflict(_)) => {
                        outcome.conflicts += 1;
                        match self.store.load_head(&id).await? {
                            Some((s, v)) if !s.is_finished() => (state, version) = (s, v),
                            _ => return Ok(()),
                        }
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            for (handle, reason) in gone {
                core.driver_gone(&id, handle, reason);
            }
            // Counted from the attempt that is written (a conflict folds again).
            let rejected = core.stats().rejected;
            let publish = core.poll(now_ms);
            let finished = core.take_finished();
            let mut after_state = core.test(&id).expect("inserted").clone();
            // Clock moves count too: lost-driver detection runs on them. (The serde form
            // leaves the timeline out, but every report that changes it changes the
            // driver's sequence numbers.)
            let after = serde_json::to_vec(&after_state).expect("state serializes");
            if after == before && publish.is_empty() {
                outcome.rejected = outcome.rejected.saturating_add(rejected);
                return Ok(());
            }
            match self.store.save(&mut after_state, Some(&version)).await {
                Ok(_) => {
                    outcome.written += 1;
                    outcome.rejected = outcome.rejected.saturating_add(rejected);
                    for m in &publish {
                        match publish_within(self.bus.as_ref(), m, self.publish_wait).await {
                            Ok(()) => outcome.published += 1,
                            // Failing the invocation would have the mapping retry this
                            // batch forever: no retry sends this message.
                            Err(err) if !err.is_retriable() => tracing::error!(
                                test_id = m.key(),
                                topic = m.topic().name(),
                                bytes = m.encode().len(),
                                %err,
                                "message dropped: the bus refuses it and no retry can deliver it"
                            ),
                            Err(err) => return Err(ControllerError::Publish(err.to_string())),
                        }
                    }
                    for (test_id, slots) in finished {
                        self.launcher.release(&test_id, &slots).await;
                    }
                    return Ok(());
                }
                Err(StoreError::Conflict(_)) => {
                    outcome.conflicts += 1;
                    match self.store.load_head(&id).await? {
                        Some((s, v)) if !s.is_finished() => (state, version) = (s, v),
                        _ => return Ok(()),
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ControllerError::Contended(id))
    }
}

/// The clients both Lambda functions build once per execution environment, from the
/// environment alone: `LOADWAVE_STORE`, `KAFKA_BROKERS`, `LOADWAVE_TOPIC_PREFIX`,
/// `LOADWAVE_KAFKA_AUTH`, the `LOADWAVE_ECS_*` settings and the AWS SDK's own.
pub struct LambdaClients {
    /// The state store.
    pub store: TestStore,
    /// The ECS launcher.
    pub launcher: Arc<dyn Launcher>,
    /// The Kafka producer.
    pub bus: Arc<dyn Bus>,
}

impl LambdaClients {
    /// Builds them; the error names the setting at fault.
    pub async fn from_env() -> Result<LambdaClients, String> {
        let store_url =
            std::env::var("LOADWAVE_STORE").map_err(|_| "LOADWAVE_STORE is not set".to_string())?;
        let store = TestStore::from_url(&store_url).map_err(|e| e.to_string())?;
        let kafka = loadwave_kafka::KafkaArgs::from_env()?;
        let ecs = crate::launcher::EcsConfig::from_env(kafka.clone())?;
        let launcher: Arc<dyn Launcher> =
            Arc::new(crate::launcher::EcsLauncher::from_env(ecs).await);
        let config = kafka.config()?;
        let bus: Arc<dyn Bus> = Arc::new(
            loadwave_kafka::KafkaBus::connect(config)
                .await
                .map_err(|e| format!("cannot reach Kafka at {}: {e}", kafka.brokers))?,
        );
        Ok(LambdaClients {
            store,
            launcher,
            bus,
        })
    }
}

/// The functions' options: drivers on ECS take tens of seconds to be placed, pull their
/// image and start, so registration may take up to three minutes; the caps are the
/// cloud defaults unless the `LOADWAVE_MAX_*` variables say otherwise.
pub fn ecs_controller_options() -> Result<ControllerOptions, String> {
    let mut options = ControllerOptions::default();
    options.test.registration_timeout_ms = 180_000;
    options.limits = loadwave_core::Limits::from_env(loadwave_core::Limits::cloud_defaults())?;
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use loadwave_bus::MemoryBus;
    use loadwave_core::TestOptions;
    use loadwave_testkit::messages::report;

    /// In the Lambda controller too, a report that breaks a bound is rejected and counted,
    /// garbage is counted, and neither fails the invocation (which would stop the topic:
    /// the mapping has no bisect).
    #[tokio::test]
    async fn a_batch_with_rejected_and_malformed_records_is_folded_and_counted() {
        let store = TestStore::memory();
        let spec = TestSpec::from_json(
            br#"{"target_url":"http://127.0.0.1:9/","test_type":"avalanche","duration_s":10}"#,
        )
        .unwrap();
        let state = TestState::new("t", spec, vec!["d0".into()], 1, TestOptions::default());
        store.create(&state).await.unwrap();
        let controller = LambdaController::new(
            store.clone(),
            Arc::new(crate::PoolLauncher),
            Arc::new(MemoryBus::new()),
        );
        let mut far = report("t", "d0", 0, false, 5);
        if let Message::Metrics(r) = &mut far {
            r.buckets[0].second = u32::MAX;
        }
        let records = vec![
            (Topic::Metrics, far.encode()),
            (Topic::Metrics, b"\x00garbage".to_vec()),
            (Topic::Metrics, report("t", "d0", 1, false, 5).encode()),
        ];
        let outcome = controller.handle_records(&records, 2).await.unwrap();
        assert_eq!((outcome.malformed, outcome.rejected), (1, 1));
        let (back, _) = store.load("t").await.unwrap().unwrap();
        let view = back.view();
        assert_eq!(view.rejected_messages, 1);
        assert_eq!(view.summary.requests, 5);
        assert!(view.timeline.len() < 100);
    }
}

#[cfg(test)]
mod undeliverable_tests {
    use super::*;
    use loadwave_bus::MemoryBus;
    use loadwave_core::TestOptions;

    /// A test with one assigned driver, whose configuration is about 2 KB.
    async fn store_with_a_pending_test() -> TestStore {
        let store = TestStore::memory();
        let json = format!(
            r#"{{"target_url":"http://127.0.0.1:9/","test_type":"avalanche","duration_s":10,"method":"POST","body":"{}"}}"#,
            "x".repeat(2_000)
        );
        let spec = TestSpec::from_json(json.as_bytes()).unwrap();
        let state = TestState::new("t", spec, vec!["d0".into()], 1, TestOptions::default());
        store.create(&state).await.unwrap();
        store
    }

    /// A configuration the bus refuses for good (over its size limit) fails the
    /// invocation no more: the mapping would retry it forever. A retriable failure still
    /// does (`with_the_bus_away_invocations_end_within_their_publish_wait`).
    #[tokio::test]
    async fn a_message_the_bus_refuses_for_good_does_not_fail_the_invocation() {
        // Control: with room, the schedule publishes the driver's configuration.
        let roomy = MemoryBus::new();
        let mut configs = roomy.subscribe(&[Topic::TestConfig], "d0").await.unwrap();
        let controller = LambdaController::new(
            store_with_a_pending_test().await,
            Arc::new(crate::PoolLauncher),
            Arc::new(roomy.clone()),
        );
        controller.handle_schedule(0).await.unwrap();
        let delivery = configs.next().await.unwrap();
        assert!(delivery.payload.len() > 1_000);

        let tight = MemoryBus::new().with_max_message_bytes(1_000);
        let controller = LambdaController::new(
            store_with_a_pending_test().await,
            Arc::new(crate::PoolLauncher),
            Arc::new(tight.clone()),
        );
        let outcome = controller.handle_schedule(0).await;
        assert!(outcome.is_ok(), "{:?}", outcome.err());
    }
}
