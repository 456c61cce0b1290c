//! The runtime controller: every test's [`TestState`], the driver registry, and the loop
//! that feeds them from the bus.
//!
//! The loop reads `register`, `heartbeat` and `metrics`, folds each message into the
//! registry and the tests it concerns, then steps every test: assign drivers, (re)send
//! configurations, trigger, declare lost drivers, finish. Test snapshots are written to
//! the store before the deliveries folded into them are acknowledged, so a crash at any
//! point loses nothing: unacknowledged messages are delivered again and the fold ignores
//! what it already holds.
//!
//! Once a second the controller publishes a [`Tick`] on the heartbeat topic; reading it
//! back advances every test's bus clock (see [`TestState::observe_clock`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use loadwave_bus::{Bus, BusError, Delivery};
use loadwave_core::{Applied, TestOptions, TestState, TestStatus, TestView};
use loadwave_proto::{Activity, Message, TestSpec, Tick, Topic, unix_ms_now};
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::launcher::{Acquired, Launcher};
use crate::store::{StoreError, TestStore};

/// A pool driver not heard from for this long is shown as lost and is not assigned.
const DRIVER_LIVE_MS: u64 = 3_000;
/// A driver not heard from for this long leaves the registry.
const DRIVER_FORGET_MS: u64 = 600_000;

/// How the controller behaves.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    /// Timing of each test's coordination.
    pub test: TestOptions,
    /// How long a test waits for enough idle drivers before it fails.
    pub driver_wait_ms: u64,
    /// This orchestrator's id, carried by its ticks.
    pub orchestrator_id: String,
    /// Least time between two snapshots of a running test (status changes are written at
    /// once).
    pub persist_every_ms: u64,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        let driver_wait_ms = 30_000;
        ControllerOptions {
            test: TestOptions {
                // Finding drivers and their confirming the configuration share one limit.
                registration_timeout_ms: driver_wait_ms + 30_000,
                ..TestOptions::default()
            },
            driver_wait_ms,
            orchestrator_id: format!("orchestrator-{}", std::process::id()),
            persist_every_ms: 1_000,
        }
    }
}

/// A driver as `GET /drivers` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DriverInfo {
    /// Driver id.
    pub id: String,
    /// Host it runs on.
    pub host: String,
    /// Its process id there.
    pub pid: u32,
    /// loadwave version.
    pub version: String,
    /// `idle`, `configured`, `running` or `lost` (silent for 3 s).
    pub state: String,
    /// The test it is configured for or running.
    pub test_id: Option<String>,
    /// When it was last heard from, ms since the epoch.
    pub last_seen_ms: u64,
}

/// One line of `GET /tests`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TestListItem {
    /// Test id.
    pub id: String,
    /// Its label.
    pub name: Option<String>,
    /// Its status.
    pub status: TestStatus,
    /// `avalanche` or `tsunami`.
    pub test_type: String,
    /// The target.
    pub target_url: String,
    /// Drivers asked for.
    pub drivers: u32,
    /// Created, ms since the epoch.
    pub created_at_ms: u64,
    /// Finished, ms since the epoch.
    pub finished_at_ms: Option<u64>,
    /// Requests so far.
    pub requests: u64,
    /// Requests per second.
    pub rps: f64,
    /// 99th percentile so far, ms.
    pub p99_ms: f64,
    /// The verdict, once finished.
    pub passed: Option<bool>,
}

/// Messages the controller could not use.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct BusStats {
    /// Payloads that did not decode (garbage, unknown version).
    pub malformed: u64,
    /// Messages naming a test this orchestrator does not know.
    pub unknown_test: u64,
    /// Reports about a known test that could not be used.
    pub rejected: u64,
}

/// Why a stop was refused.
#[derive(Debug, thiserror::Error)]
pub enum StopError {
    /// No such test.
    #[error("no test with id `{0}`")]
    NotFound(String),
    /// The test already ended.
    #[error("test `{id}` already ended ({})", status.as_str())]
    Finished {
        /// The test.
        id: String,
        /// How it ended.
        status: TestStatus,
    },
}

#[derive(Debug, Clone)]
struct DriverEntry {
    host: String,
    pid: u32,
    version: String,
    activity: Activity,
    test_id: Option<String>,
    last_heard_ms: u64,
}

#[derive(Default)]
struct Inner {
    tests: BTreeMap<String, TestState>,
    drivers: BTreeMap<String, DriverEntry>,
    /// Tests changed since their last snapshot, with the number of the latest change.
    dirty: BTreeMap<String, u64>,
    /// Changes counted so far; a snapshot clears a test's dirt only if no change came
    /// after the state it wrote (a stop can arrive while a snapshot is being written).
    changes: u64,
    persisted_status: HashMap<String, TestStatus>,
    last_persist_ms: HashMap<String, u64>,
    outbox: Vec<Message>,
    stats: BusStats,
}

impl Inner {
    /// Pool drivers alive, idle and held by no running or pending test, oldest first.
    fn idle_drivers(&self, now_ms: u64) -> Vec<String> {
        self.drivers
            .iter()
            .filter(|(id, d)| {
                d.activity == Activity::Idle
                    && now_ms.saturating_sub(d.last_heard_ms) <= DRIVER_LIVE_MS
                    && !self.tests.values().any(|t| t.holds_driver(id))
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn live_drivers(&self, now_ms: u64) -> usize {
        self.drivers
            .values()
            .filter(|d| now_ms.saturating_sub(d.last_heard_ms) <= DRIVER_LIVE_MS)
            .count()
    }

    /// Notes that test `id` changed and needs a snapshot.
    fn touch(&mut self, id: &str) {
        self.changes += 1;
        self.dirty.insert(id.to_string(), self.changes);
    }

    fn mark(&mut self, id: &str, applied: Applied) {
        match applied {
            Applied::Changed => self.touch(id),
            Applied::Rejected(reason) => {
                self.stats.rejected += 1;
                tracing::warn!(test_id = id, %reason, "report rejected");
            }
            Applied::Duplicate | Applied::Ignored => {}
        }
    }

    fn ingest(&mut self, message: &Message, now_ms: u64) {
        match message {
            Message::Register(r) => {
                let entry =
                    self.drivers
                        .entry(r.driver_id.clone())
                        .or_insert_with(|| DriverEntry {
                            host: r.host.clone(),
                            pid: r.pid,
                            version: r.version.clone(),
                            activity: Activity::Idle,
                            test_id: None,
                            last_heard_ms: now_ms,
                        });
                entry.host = r.host.clone();
                entry.pid = r.pid;
                entry.version = r.version.clone();
                entry.last_heard_ms = now_ms;
                match &r.test_id {
                    Some(test_id) => match self.tests.get_mut(test_id) {
                        Some(t) => {
                            let applied = t.apply(message);
                            self.mark(test_id, applied);
                        }
                        None => self.unknown(test_id),
                    },
                    None => {
                        let holders: Vec<String> = self
                            .tests
                            .values()
                            .filter(|t| t.holds_driver(&r.driver_id))
                            .map(|t| t.id().to_string())
                            .collect();
                        for id in holders {
                            let applied = self.tests.get_mut(&id).expect("listed").apply(message);
                            self.mark(&id, applied);
                        }
                    }
                }
            }
            Message::Heartbeat(h) => {
                if let Some(entry) = self.drivers.get_mut(&h.driver_id) {
                    entry.activity = h.activity;
                    entry.test_id = h.test_id.clone();
                    entry.last_heard_ms = now_ms;
                } else {
                    // A driver that registered before this orchestrator started: known
                    // from its heartbeats until it registers again.
                    self.drivers.insert(
                        h.driver_id.clone(),
                        DriverEntry {
                            host: String::new(),
                            pid: 0,
                            version: String::new(),
                            activity: h.activity,
                            test_id: h.test_id.clone(),
                            last_heard_ms: now_ms,
                        },
                    );
                }
                let active: Vec<String> = self
                    .tests
                    .values()
                    .filter(|t| !t.is_finished())
                    .map(|t| t.id().to_string())
                    .collect();
                for id in active {
                    let applied = self.tests.get_mut(&id).expect("listed").apply(message);
                    if id.as_str() == h.test_id.as_deref().unwrap_or_default() {
                        self.mark(&id, applied);
                    }
                }
            }
            Message::Metrics(report) => match self.tests.get_mut(&report.test_id) {
                Some(t) => {
                    let applied = t.apply(message);
                    self.mark(&report.test_id, applied);
                }
                None => self.unknown(&report.test_id),
            },
            Message::Tick(tick) => {
                for t in self.tests.values_mut().filter(|t| !t.is_finished()) {
                    t.observe_clock(tick.sent_at_ms);
                }
            }
            Message::TestConfig(_) | Message::Trigger(_) => {}
        }
    }

    fn unknown(&mut self, test_id: &str) {
        self.stats.unknown_test += 1;
        tracing::warn!(test_id, "message for an unknown test skipped");
    }
}

/// The orchestrator: tests, drivers, and the clients to reach them.
pub struct Orchestrator {
    bus: Arc<dyn Bus>,
    store: TestStore,
    launcher: Arc<dyn Launcher>,
    options: ControllerOptions,
    inner: Mutex<Inner>,
    wake: Notify,
}

impl Orchestrator {
    /// Builds the orchestrator and loads every stored test; unfinished ones resume when
    /// [`Orchestrator::run`] starts.
    pub async fn new(
        bus: Arc<dyn Bus>,
        store: TestStore,
        launcher: Arc<dyn Launcher>,
        options: ControllerOptions,
    ) -> Result<Arc<Orchestrator>, StoreError> {
        let mut inner = Inner::default();
        for state in store.load_all().await? {
            let id = state.id().to_string();
            inner.persisted_status.insert(id.clone(), state.status());
            if !state.is_finished() {
                tracing::info!(test_id = %id, status = state.status().as_str(), "resuming test");
            }
            inner.tests.insert(id, state);
        }
        Ok(Arc::new(Orchestrator {
            bus,
            store,
            launcher,
            options,
            inner: Mutex::new(inner),
            wake: Notify::new(),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("orchestrator lock poisoned")
    }

    /// Creates a test from a validated spec and stores it before answering, so an
    /// acknowledged test survives a crash.
    pub async fn create(&self, spec: TestSpec) -> Result<TestView, StoreError> {
        let now = unix_ms_now();
        let id = uuid::Uuid::now_v7().simple().to_string();
        let state = TestState::new(&id, spec, Vec::new(), now, self.options.test);
        self.store.save(&state).await?;
        let view = state.view();
        {
            let mut inner = self.lock();
            inner.persisted_status.insert(id.clone(), state.status());
            inner.last_persist_ms.insert(id.clone(), now);
            inner.tests.insert(id, state);
        }
        self.wake.notify_one();
        Ok(view)
    }

    /// Asks a test's drivers to stop.
    pub fn stop(&self, id: &str) -> Result<TestView, StopError> {
        let view = {
            let mut inner = self.lock();
            let test = inner
                .tests
                .get_mut(id)
                .ok_or_else(|| StopError::NotFound(id.to_string()))?;
            if test.is_finished() {
                return Err(StopError::Finished {
                    id: id.to_string(),
                    status: test.status(),
                });
            }
            let messages = test.request_stop(unix_ms_now());
            let view = test.view();
            inner.outbox.extend(messages);
            inner.touch(id);
            view
        };
        self.wake.notify_one();
        Ok(view)
    }

    /// A test as users see it.
    pub fn view(&self, id: &str) -> Option<TestView> {
        self.lock().tests.get(id).map(TestState::view)
    }

    /// Every test, newest first.
    pub fn list(&self) -> Vec<TestListItem> {
        let inner = self.lock();
        inner
            .tests
            .values()
            .rev()
            .map(|t| {
                let spec = t.spec();
                let view = t.view();
                TestListItem {
                    id: t.id().to_string(),
                    name: spec.name.clone(),
                    status: t.status(),
                    test_type: spec.test_type.to_string(),
                    target_url: spec.target_url.clone(),
                    drivers: spec.drivers,
                    created_at_ms: t.created_at_ms(),
                    finished_at_ms: view.finished_at_ms,
                    requests: view.summary.requests,
                    rps: view.summary.rps,
                    p99_ms: view.summary.latency_ms.p99,
                    passed: view.verdict.map(|v| v.passed),
                }
            })
            .collect()
    }

    /// The driver registry.
    pub fn drivers(&self) -> Vec<DriverInfo> {
        let now = unix_ms_now();
        self.lock()
            .drivers
            .iter()
            .map(|(id, d)| DriverInfo {
                id: id.clone(),
                host: d.host.clone(),
                pid: d.pid,
                version: d.version.clone(),
                state: if now.saturating_sub(d.last_heard_ms) > DRIVER_LIVE_MS {
                    "lost".to_string()
                } else {
                    match d.activity {
                        Activity::Idle => "idle",
                        Activity::Configured => "configured",
                        Activity::Running => "running",
                    }
                    .to_string()
                },
                test_id: d.test_id.clone(),
                last_seen_ms: d.last_heard_ms,
            })
            .collect()
    }

    /// Counts of unusable messages.
    pub fn bus_stats(&self) -> BusStats {
        self.lock().stats.clone()
    }

    /// Tests by status.
    pub fn test_counts(&self) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for t in self.lock().tests.values() {
            *counts.entry(t.status().as_str().to_string()).or_insert(0) += 1;
        }
        counts
    }

    /// The launcher's name.
    pub fn launcher_name(&self) -> &'static str {
        self.launcher.name()
    }

    /// Runs the controller until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> Result<(), BusError> {
        let mut sub = self
            .bus
            .subscribe(
                &[Topic::Register, Topic::Heartbeat, Topic::Metrics],
                "orchestrator",
            )
            .await?;
        let mut ticker = tokio::time::interval(Duration::from_millis(100));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut unacked: Vec<Delivery> = Vec::new();
        let mut last_tick_ms = 0u64;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                next = sub.next() => {
                    let Some(delivery) = next else {
                        return Err(BusError::Closed);
                    };
                    match Message::decode(&delivery.payload) {
                        Ok(message) => self.lock().ingest(&message, unix_ms_now()),
                        Err(err) => {
                            self.lock().stats.malformed += 1;
                            tracing::warn!(topic = delivery.topic.name(), %err, "malformed message skipped");
                        }
                    }
                    unacked.push(delivery);
                }
                _ = ticker.tick() => {}
                _ = self.wake.notified() => {}
            }
            let now = unix_ms_now();
            if now >= last_tick_ms + 1_000 {
                last_tick_ms = now;
                let tick = Message::Tick(Tick {
                    orchestrator_id: self.options.orchestrator_id.clone(),
                    sent_at_ms: now,
                });
                if let Err(err) = self.bus.publish(&tick).await {
                    tracing::warn!(%err, "tick not published");
                }
            }
            if self.step(now).await {
                for delivery in unacked.drain(..) {
                    delivery.ack();
                }
            }
        }
        // Whatever was folded is written before leaving.
        self.persist(unix_ms_now(), true).await;
        Ok(())
    }

    /// One pass over every test. Returns whether every change is persisted.
    async fn step(&self, now: u64) -> bool {
        self.lock()
            .drivers
            .retain(|_, d| now.saturating_sub(d.last_heard_ms) <= DRIVER_FORGET_MS);
        self.assign_drivers(now).await;
        let outbox = {
            let mut inner = self.lock();
            let mut out = std::mem::take(&mut inner.outbox);
            let ids: Vec<String> = inner
                .tests
                .values()
                .filter(|t| !t.is_finished())
                .map(|t| t.id().to_string())
                .collect();
            for id in ids {
                let test = inner.tests.get_mut(&id).expect("listed");
                let before = test.status();
                out.extend(test.poll(now));
                if test.status() != before {
                    tracing::info!(test_id = %id, from = before.as_str(), to = test.status().as_str(), "test status");
                    inner.touch(&id);
                }
            }
            out
        };
        for (i, message) in outbox.iter().enumerate() {
            if let Err(err) = self.bus.publish(message).await {
                tracing::warn!(%err, "publish failed; retrying on the next step");
                self.lock().outbox.splice(0..0, outbox[i..].iter().cloned());
                break;
            }
        }
        self.persist(now, false).await
    }

    async fn assign_drivers(&self, now: u64) {
        let waiting: Vec<(String, usize, u64)> = {
            let inner = self.lock();
            inner
                .tests
                .values()
                .filter(|t| t.status() == TestStatus::Pending && t.driver_ids().next().is_none())
                .map(|t| {
                    (
                        t.id().to_string(),
                        t.spec().drivers as usize,
                        t.created_at_ms(),
                    )
                })
                .collect()
        };
        for (id, count, created_at_ms) in waiting {
            let idle = self.lock().idle_drivers(now);
            let acquired = self.launcher.acquire(&id, count, &idle).await;
            let mut inner = self.lock();
            let live = inner.live_drivers(now);
            let Some(test) = inner.tests.get_mut(&id) else {
                continue;
            };
            let messages = match acquired {
                Acquired::Drivers(ids) => {
                    tracing::info!(test_id = %id, drivers = ?ids, "drivers assigned");
                    test.assign_drivers(ids, now);
                    Vec::new()
                }
                Acquired::NotYet { available } => {
                    if now < created_at_ms + self.options.driver_wait_ms {
                        continue;
                    }
                    test.fail(
                        format!(
                            "needs {count} drivers, but only {available} idle drivers were found within {} s ({live} live drivers in the pool)",
                            self.options.driver_wait_ms / 1000
                        ),
                        now,
                    )
                }
                Acquired::Failed(reason) => test.fail(reason, now),
            };
            inner.outbox.extend(messages);
            inner.touch(&id);
        }
    }

    /// Writes dirty tests: at once when their status changed (or `all`), otherwise at
    /// most every `persist_every_ms`. Returns whether nothing is left unwritten.
    async fn persist(&self, now: u64, all: bool) -> bool {
        let due: Vec<(TestState, u64)> = {
            let inner = self.lock();
            inner
                .dirty
                .iter()
                .filter_map(|(id, change)| inner.tests.get(id).map(|t| (t, *change)))
                .filter(|(t, _)| {
                    all || inner.persisted_status.get(t.id()) != Some(&t.status())
                        || now
                            >= inner.last_persist_ms.get(t.id()).copied().unwrap_or(0)
                                + self.options.persist_every_ms
                })
                .map(|(t, change)| (t.clone(), change))
                .collect()
        };
        for (state, change) in due {
            match self.store.save(&state).await {
                Ok(()) => {
                    let mut inner = self.lock();
                    let id = state.id().to_string();
                    inner.persisted_status.insert(id.clone(), state.status());
                    inner.last_persist_ms.insert(id.clone(), now);
                    if inner.dirty.get(&id) == Some(&change) {
                        inner.dirty.remove(&id);
                    }
                }
                Err(err) => tracing::error!(test_id = state.id(), %err, "cannot persist test"),
            }
        }
        self.lock().dirty.is_empty()
    }
}
