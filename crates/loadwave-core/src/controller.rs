//! The controller core: every test's [`TestState`] plus the driver registry, without I/O.
//!
//! [`ControllerCore`] is what the orchestrator's Kafka loop and the Lambda controller both
//! drive. Shells hand it raw payloads ([`ControllerCore::ingest_payload`]) and the time
//! ([`ControllerCore::poll`]); it answers with what to publish, which tests need drivers,
//! which snapshots to write and which deliveries may be acknowledged. It never waits on
//! anything, so a slow launcher or store cannot stall the intake of messages.
//!
//! Architecture invariant: a delivery is acknowledged only once every change it caused
//! is in a written snapshot ([`ControllerCore::ack_watermark`]). Each change gets a
//! number; a test that is dirty remembers the first change not yet written, and the
//! watermark is just below the oldest of those. Tests persist independently, so two
//! tests running at once do not hold each other's acknowledgements back.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use loadwave_proto::{Activity, Message, TestSpec, Topic, Trigger, TriggerAction};
use serde::{Deserialize, Serialize};

use crate::limits::Limits;
use crate::snapshot::Snapshot;
use crate::state::{Applied, DriverSlot, TestOptions, TestState, TestStatus};
use crate::view::TestView;

/// A pool driver not heard from for this long is shown as lost and is not assigned.
pub const DRIVER_LIVE_MS: u64 = 3_000;
/// A driver not heard from for this long leaves the registry.
pub const DRIVER_FORGET_MS: u64 = 600_000;

/// How the controller behaves.
#[derive(Debug, Clone, Copy)]
pub struct ControllerOptions {
    /// Timing of each test's coordination.
    pub test: TestOptions,
    /// How long a test waits for enough idle drivers before it fails.
    pub driver_wait_ms: u64,
    /// Least time between two snapshots of a running test (status changes are written at
    /// once).
    pub persist_every_ms: u64,
    /// Caps on what a test may ask for.
    pub limits: Limits,
}

impl ControllerOptions {
    /// The options a new test gets: the coordination timing, and the running-time cap.
    pub fn new_test_options(&self) -> TestOptions {
        TestOptions {
            max_duration_ms: self.limits.max_duration_ms(),
            ..self.test
        }
    }
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
            persist_every_ms: 1_000,
            limits: Limits::none(),
        }
    }
}

/// What a launcher made of a request for drivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// These drivers are the test's. They will register and confirm its configuration.
    Drivers(Vec<DriverSlot>),
    /// Not enough drivers right now; ask again later.
    NotYet {
        /// Drivers that would have been available.
        available: usize,
    },
    /// Drivers cannot be had; the test fails with this reason.
    Failed(String),
}

/// A test waiting for drivers, as [`ControllerCore::driver_requests`] hands it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverRequest {
    /// The test.
    pub test_id: String,
    /// How many drivers it needs.
    pub count: usize,
}

/// A driver as `GET /drivers` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TestListItem {
    /// Test id.
    pub id: String,
    /// Its label.
    pub name: Option<String>,
    /// Its status.
    pub status: TestStatus,
    /// `avalanche` or `tsunami`.
    pub test_type: String,
    /// The target: its URL, or a mix's request names.
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

impl TestListItem {
    /// The list line of `state`.
    pub fn of(state: &TestState) -> TestListItem {
        let spec = state.spec();
        let view = state.view();
        TestListItem {
            id: state.id().to_string(),
            name: spec.name.clone(),
            status: state.status(),
            test_type: spec.test_type.to_string(),
            target_url: spec.target_label(),
            drivers: spec.drivers,
            created_at_ms: state.created_at_ms(),
            finished_at_ms: view.finished_at_ms,
            requests: view.summary.requests,
            rps: view.summary.rps,
            p99_ms: view.summary.latency_ms.p99,
            passed: view.verdict.map(|v| v.passed),
        }
    }
}

/// Messages the controller could not use.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

/// Changes of one test not yet in a snapshot.
#[derive(Debug, Clone, Copy)]
struct Dirt {
    /// The first change not yet written (a lower bound: conservative is safe).
    first: u64,
    /// The latest change.
    last: u64,
}

/// Every test and the driver registry; see the module docs.
#[derive(Debug)]
pub struct ControllerCore {
    options: ControllerOptions,
    tests: BTreeMap<String, TestState>,
    drivers: BTreeMap<String, DriverEntry>,
    dirty: BTreeMap<String, Dirt>,
    changes: u64,
    persisted: HashMap<String, (TestStatus, u64)>,
    acquiring: BTreeSet<String>,
    finished: Vec<(String, Vec<DriverSlot>)>,
    outbox: Vec<Message>,
    stats: BusStats,
    /// Reports deferred because a timeline chunk they touch is not in memory.
    needs_chunks: BTreeSet<(String, u32)>,
    /// When the driver registry was last swept of forgotten drivers.
    swept_ms: u64,
}

impl ControllerCore {
    /// An empty controller.
    pub fn new(options: ControllerOptions) -> Self {
        ControllerCore {
            options,
            tests: BTreeMap::new(),
            drivers: BTreeMap::new(),
            dirty: BTreeMap::new(),
            changes: 0,
            persisted: HashMap::new(),
            acquiring: BTreeSet::new(),
            finished: Vec::new(),
            outbox: Vec::new(),
            stats: BusStats::default(),
            needs_chunks: BTreeSet::new(),
            swept_ms: 0,
        }
    }

    /// The options.
    pub fn options(&self) -> &ControllerOptions {
        &self.options
    }

    /// Adds a test that is already in the store (loaded at start, or just created and
    /// written), as of `now_ms`.
    pub fn insert(&mut self, state: TestState, now_ms: u64) {
        let id = state.id().to_string();
        self.persisted.insert(id.clone(), (state.status(), now_ms));
        self.tests.insert(id, state);
    }

    /// A new pending test, not yet stored: the caller writes [`ControllerCore::test`] and
    /// then calls [`ControllerCore::insert`].
    pub fn new_test(&self, id: &str, spec: TestSpec, now_ms: u64) -> TestState {
        TestState::new(
            id,
            spec,
            Vec::new(),
            now_ms,
            self.options.new_test_options(),
        )
    }

    /// A test.
    pub fn test(&self, id: &str) -> Option<&TestState> {
        self.tests.get(id)
    }

    /// Every test, by id.
    pub fn tests(&self) -> impl Iterator<Item = &TestState> {
        self.tests.values()
    }

    fn touch(&mut self, id: &str) {
        self.changes += 1;
        let change = self.changes;
        // Looked up first: a busy test is touched by every report, and the key only
        // needs allocating the first time.
        match self.dirty.get_mut(id) {
            Some(d) => d.last = change,
            None => {
                self.dirty.insert(
                    id.to_string(),
                    Dirt {
                        first: change,
                        last: change,
                    },
                );
            }
        }
    }

    fn mark(&mut self, id: &str, applied: Applied) {
        match applied {
            Applied::Changed => self.touch(id),
            Applied::Rejected(reason) => {
                self.stats.rejected += 1;
                tracing::warn!(test_id = id, %reason, "report rejected");
            }
            Applied::NeedsChunk(chunk) => {
                self.needs_chunks.insert((id.to_string(), chunk));
            }
            Applied::Duplicate | Applied::Ignored => {}
        }
    }

    /// Timeline chunks (test, chunk) that reports needed but were not in memory since the
    /// last call. Those reports changed nothing: a shell that loads tests without their
    /// sealed chunks loads these and folds the same messages again.
    pub fn take_chunk_requests(&mut self) -> Vec<(String, u32)> {
        std::mem::take(&mut self.needs_chunks).into_iter().collect()
    }

    /// Decodes and folds one delivered payload. A payload that does not decode is counted
    /// and skipped. Returns the delivery's ticket: it may be acknowledged once
    /// [`ControllerCore::ack_watermark`] reaches it.
    pub fn ingest_payload(&mut self, topic: Topic, payload: &[u8], now_ms: u64) -> u64 {
        match Message::decode(payload) {
            Ok(message) => self.ingest(&message, now_ms),
            Err(err) => {
                self.stats.malformed += 1;
                tracing::warn!(topic = topic.name(), %err, "malformed message skipped");
            }
        }
        self.changes
    }

    /// Folds one message into the registry and the tests it concerns.
    pub fn ingest(&mut self, message: &Message, now_ms: u64) {
        match message {
            Message::Register(r) => {
                let entry =
                    self.drivers
                        .entry(r.driver_id.clone())
                        .or_insert_with(|| DriverEntry {
                            host: String::new(),
                            pid: 0,
                            version: String::new(),
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
                let entry = self
                    .drivers
                    .entry(h.driver_id.clone())
                    // A driver that registered before this controller started: known from
                    // its heartbeats until it registers again.
                    .or_insert_with(|| DriverEntry {
                        host: String::new(),
                        pid: 0,
                        version: String::new(),
                        activity: h.activity,
                        test_id: None,
                        last_heard_ms: now_ms,
                    });
                entry.activity = h.activity;
                entry.test_id = h.test_id.clone();
                entry.last_heard_ms = now_ms;
                // Every heartbeat moves every running test's bus clock; only the test it
                // names counts as changed.
                let active: Vec<String> = self
                    .tests
                    .values()
                    .filter(|t| !t.is_finished())
                    .map(|t| t.id().to_string())
                    .collect();
                for id in active {
                    let applied = self.tests.get_mut(&id).expect("listed").apply(message);
                    if Some(id.as_str()) == h.test_id.as_deref() {
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

    /// Asks a test's drivers to stop; the stop trigger goes out with the next
    /// [`ControllerCore::poll`].
    pub fn request_stop(&mut self, id: &str, now_ms: u64) -> Result<TestView, StopError> {
        let test = self
            .tests
            .get_mut(id)
            .ok_or_else(|| StopError::NotFound(id.to_string()))?;
        if test.is_finished() {
            return Err(StopError::Finished {
                id: id.to_string(),
                status: test.status(),
            });
        }
        let messages = test.request_stop(now_ms);
        let view = test.view();
        self.outbox.extend(messages);
        self.touch(id);
        Ok(view)
    }

    /// Pool drivers alive, idle and held by no unfinished test, oldest first.
    pub fn idle_drivers(&self, now_ms: u64) -> Vec<String> {
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

    /// Tests that need drivers and are not already being served, oldest first. Each is
    /// handed out once until [`ControllerCore::drivers_acquired`] answers for it.
    pub fn driver_requests(&mut self) -> Vec<DriverRequest> {
        let wanted: Vec<DriverRequest> = self
            .tests
            .values()
            .filter(|t| t.status() == TestStatus::Pending && t.driver_ids().next().is_none())
            .filter(|t| !self.acquiring.contains(t.id()))
            .map(|t| DriverRequest {
                test_id: t.id().to_string(),
                count: t.spec().drivers as usize,
            })
            .collect();
        for r in &wanted {
            self.acquiring.insert(r.test_id.clone());
        }
        wanted
    }

    /// The launcher's answer for `test_id`. Returns drivers that the test can no longer
    /// use (it was stopped meanwhile): the caller releases them.
    pub fn drivers_acquired(
        &mut self,
        test_id: &str,
        acquired: Acquired,
        now_ms: u64,
    ) -> Vec<DriverSlot> {
        self.acquiring.remove(test_id);
        let live = self.live_drivers(now_ms);
        let wait_ms = self.options.driver_wait_ms;
        let Some(test) = self.tests.get_mut(test_id) else {
            return match acquired {
                Acquired::Drivers(slots) => slots,
                _ => Vec::new(),
            };
        };
        let messages = match acquired {
            Acquired::Drivers(slots) => {
                if test.status() != TestStatus::Pending || test.driver_ids().next().is_some() {
                    return slots;
                }
                tracing::info!(test_id, drivers = ?slots.iter().map(|s| &s.id).collect::<Vec<_>>(), "drivers assigned");
                test.assign_drivers(slots, now_ms);
                Vec::new()
            }
            Acquired::NotYet { available } => {
                if now_ms < test.created_at_ms() + wait_ms {
                    return Vec::new();
                }
                let count = test.spec().drivers;
                test.fail(
                    format!(
                        "needs {count} drivers, but only {available} idle drivers were found within {} s ({live} live drivers in the pool)",
                        wait_ms / 1000
                    ),
                    now_ms,
                )
            }
            Acquired::Failed(reason) => test.fail(reason, now_ms),
        };
        self.outbox.extend(messages);
        self.touch(test_id);
        Vec::new()
    }

    /// The launcher reports the driver known by `handle` gone for `reason` (its ECS task
    /// stopped).
    pub fn driver_gone(&mut self, test_id: &str, handle: &str, reason: &str) {
        if let Some(test) = self.tests.get_mut(test_id)
            && test.driver_gone(handle, reason)
        {
            self.touch(test_id);
        }
    }

    /// Moves every unfinished test on at `now_ms` and returns what to publish (including
    /// stops queued by [`ControllerCore::request_stop`]).
    pub fn poll(&mut self, now_ms: u64) -> Vec<Message> {
        // Shells poll after every delivery; the registry is swept once a second, so a
        // thousand drivers cost nothing per message.
        let mut out = std::mem::take(&mut self.outbox);
        if now_ms >= self.swept_ms + 1_000 || now_ms < self.swept_ms {
            self.swept_ms = now_ms;
            self.drivers
                .retain(|_, d| now_ms.saturating_sub(d.last_heard_ms) <= DRIVER_FORGET_MS);
            out.extend(self.stops_for_finished(now_ms));
        }
        let ids: Vec<String> = self
            .tests
            .values()
            .filter(|t| !t.is_finished())
            .map(|t| t.id().to_string())
            .collect();
        for id in ids {
            let test = self.tests.get_mut(&id).expect("listed");
            let before = test.status();
            out.extend(test.poll(now_ms));
            let after = test.status();
            if after != before {
                tracing::info!(test_id = %id, from = before.as_str(), to = after.as_str(), "test status");
                if after.is_finished() {
                    self.finished.push((id.clone(), test.driver_slots()));
                }
                self.touch(&id);
            }
        }
        out
    }

    /// Stops for finished tests that live drivers still say they are configured for or
    /// running: a test that ended as it sent its stop (stopped while pending, failed,
    /// timed out) is no longer polled, so a stop lost on the way (a full outbox, a
    /// shutdown with the broker away) is sent again from here, once a second, until its
    /// drivers are idle and can be assigned again.
    fn stops_for_finished(&self, now_ms: u64) -> Vec<Message> {
        let ids: BTreeSet<&str> = self
            .drivers
            .values()
            .filter(|d| {
                d.activity != Activity::Idle
                    && now_ms.saturating_sub(d.last_heard_ms) <= DRIVER_LIVE_MS
            })
            .filter_map(|d| d.test_id.as_deref())
            .filter(|id| self.tests.get(*id).is_some_and(TestState::is_finished))
            .collect();
        ids.into_iter()
            .map(|id| {
                Message::Trigger(Trigger {
                    test_id: id.to_string(),
                    action: TriggerAction::Stop,
                })
            })
            .collect()
    }

    /// Messages a shell could not publish: they go out with the next poll, first.
    pub fn requeue(&mut self, messages: Vec<Message>) {
        self.outbox.splice(0..0, messages);
    }

    /// Tests that ended since the last call, with their drivers: the shell asks the
    /// launcher to release them (ECS tasks are stopped).
    pub fn take_finished(&mut self) -> Vec<(String, Vec<DriverSlot>)> {
        std::mem::take(&mut self.finished)
    }

    /// Snapshots to write now ([`TestState::snapshot`], chunk objects named with
    /// `nonce`, which no other call may use), each current as of its `change`: at once
    /// when a test's status changed (or `all`), otherwise at most every
    /// `persist_every_ms`. A test that cannot be snapshotted is logged and left dirty.
    pub fn snapshots_due(&self, now_ms: u64, all: bool, nonce: &str) -> Vec<Snapshot> {
        self.dirty
            .iter()
            .filter_map(|(id, dirt)| self.tests.get(id).map(|t| (t, dirt.last)))
            .filter(|(t, _)| {
                let (status, at) = self
                    .persisted
                    .get(t.id())
                    .copied()
                    .unwrap_or((TestStatus::Pending, 0));
                all || status != t.status() || now_ms >= at + self.options.persist_every_ms
            })
            .filter_map(|(t, change)| match t.snapshot(nonce) {
                Ok(snapshot) => Some(Snapshot { change, ..snapshot }),
                Err(err) => {
                    tracing::error!(test_id = t.id(), %err, "cannot snapshot test");
                    None
                }
            })
            .collect()
    }

    /// `snapshot` (from [`ControllerCore::snapshots_due`]) was written at `now_ms`.
    pub fn snapshot_written(&mut self, snapshot: &Snapshot, now_ms: u64) {
        let id = snapshot.id.as_str();
        if let Some(test) = self.tests.get_mut(id) {
            test.snapshot_written(snapshot);
        }
        self.persisted
            .insert(id.to_string(), (snapshot.status, now_ms));
        let change = snapshot.change;
        if let Some(dirt) = self.dirty.get_mut(id) {
            if dirt.last == change {
                self.dirty.remove(id);
            } else if dirt.first <= change {
                // Changes after the snapshot remain; the first of them is at least this.
                dirt.first = change + 1;
            }
        }
    }

    /// Whether every change is in a written snapshot.
    pub fn is_clean(&self) -> bool {
        self.dirty.is_empty()
    }

    /// Deliveries whose ticket is at most this may be acknowledged: every change up to it
    /// is written.
    pub fn ack_watermark(&self) -> u64 {
        self.dirty
            .values()
            .map(|d| d.first - 1)
            .min()
            .unwrap_or(self.changes)
    }

    /// A test as users see it.
    pub fn view(&self, id: &str) -> Option<TestView> {
        self.tests.get(id).map(TestState::view)
    }

    /// Every test, newest first.
    pub fn list(&self) -> Vec<TestListItem> {
        self.tests.values().rev().map(TestListItem::of).collect()
    }

    /// The driver registry as of `now_ms`.
    pub fn drivers(&self, now_ms: u64) -> Vec<DriverInfo> {
        self.drivers
            .iter()
            .map(|(id, d)| DriverInfo {
                id: id.clone(),
                host: d.host.clone(),
                pid: d.pid,
                version: d.version.clone(),
                state: if now_ms.saturating_sub(d.last_heard_ms) > DRIVER_LIVE_MS {
                    "lost".to_string()
                } else {
                    activity_name(d.activity).to_string()
                },
                test_id: d.test_id.clone(),
                last_seen_ms: d.last_heard_ms,
            })
            .collect()
    }

    /// Counts of unusable messages.
    pub fn stats(&self) -> &BusStats {
        &self.stats
    }

    /// Tests by status.
    pub fn test_counts(&self) -> BTreeMap<String, u64> {
        count_statuses(self.tests.values().map(TestState::status))
    }
}

/// The name `GET /drivers` gives an activity.
pub fn activity_name(activity: Activity) -> &'static str {
    match activity {
        Activity::Idle => "idle",
        Activity::Configured => "configured",
        Activity::Running => "running",
    }
}

/// Tests by status, as `GET /healthz` counts them.
pub fn count_statuses(statuses: impl Iterator<Item = TestStatus>) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for s in statuses {
        *counts.entry(s.as_str().to_string()).or_insert(0) += 1;
    }
    counts
}
