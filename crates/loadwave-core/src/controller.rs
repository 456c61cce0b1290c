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
        // The summary alone: the timeline is what grows with the test.
        let (summary, verdict) = state.headline();
        TestListItem {
            id: state.id().to_string(),
            name: spec.name.clone(),
            status: state.status(),
            test_type: spec.test_type.to_string(),
            target_url: spec.target_label(),
            drivers: spec.drivers,
            created_at_ms: state.created_at_ms(),
            finished_at_ms: state.finished_at_ms,
            requests: summary.requests,
            rps: summary.rps,
            p99_ms: summary.latency_ms.p99,
            passed: verdict.map(|v| v.passed),
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
    /// Reports about a known test that could not be used (a bound broken, a histogram
    /// that does not decode): rejected whole.
    pub rejected: u64,
    /// Registrations and heartbeats of new drivers turned away because the registry
    /// held [`MAX_REGISTERED_DRIVERS`] already.
    #[serde(default)]
    pub registry_full: u64,
}

/// A log line at most once a second, with how many were held back since the last one: a
/// flood of bad messages costs a counter, not a log line each.
#[derive(Debug, Clone, Default)]
pub struct LogLimiter {
    last_ms: Option<u64>,
    held: u64,
}

impl LogLimiter {
    /// Whether to log now (`now_ms`, any clock); `Some(n)` when so, `n` being the lines
    /// held back since the last one.
    pub fn allow(&mut self, now_ms: u64) -> Option<u64> {
        if self
            .last_ms
            .is_some_and(|t| now_ms < t.saturating_add(1_000) && now_ms >= t)
        {
            self.held = self.held.saturating_add(1);
            return None;
        }
        self.last_ms = Some(now_ms);
        Some(std::mem::take(&mut self.held))
    }
}

/// Drivers the registry holds at most: ids in registrations and heartbeats are anyone's
/// to make up, and each would otherwise stay for [`DRIVER_FORGET_MS`].
pub const MAX_REGISTERED_DRIVERS: usize = 10_000;

/// How far ahead of the controller's own clock a heartbeat or tick may say it was sent:
/// room for clocks that disagree, not for a message that would move every test's bus
/// clock (and so the seconds its reports may be about) into the future.
pub const MAX_CLOCK_AHEAD_MS: u64 = 60_000;

/// `GET /tests` answers this many tests when no limit is given.
pub const LIST_DEFAULT_LIMIT: usize = 100;
/// `GET /tests` answers at most this many tests a page.
pub const LIST_MAX_LIMIT: usize = 1_000;

/// A page of `GET /tests`: newest first, `limit` tests at most, starting after the test
/// `cursor` (the last id of the previous page).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct ListQuery {
    /// Tests on the page, 1 to 1000 (default 100).
    #[cfg_attr(feature = "openapi", param(minimum = 1, maximum = 1000))]
    pub limit: Option<usize>,
    /// The id of the last test of the previous page: this page starts after it.
    #[cfg_attr(feature = "openapi", param(max_length = 64))]
    pub cursor: Option<String>,
}

impl ListQuery {
    /// The limit to apply: the default when none is given, at most [`LIST_MAX_LIMIT`].
    pub fn limit(&self) -> usize {
        self.limit
            .unwrap_or(LIST_DEFAULT_LIMIT)
            .clamp(1, LIST_MAX_LIMIT)
    }

    /// The page of `items` (sorted newest first, i.e. by id descending) this query asks
    /// for.
    pub fn page(&self, items: impl IntoIterator<Item = TestListItem>) -> Vec<TestListItem> {
        let cursor = self.cursor.as_deref();
        items
            .into_iter()
            .filter(|i| cursor.is_none_or(|c| i.id.as_str() < c))
            .take(self.limit())
            .collect()
    }
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
    /// Finished tests whose last snapshot is written: their list line only. The rest is
    /// in the store, read on demand.
    summaries: BTreeMap<String, TestListItem>,
    /// Rejected and skipped messages are logged at most once a second.
    log: LogLimiter,
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
            summaries: BTreeMap::new(),
            log: LogLimiter::default(),
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

    /// Adds a finished test by its list line (its state stays in the store).
    pub fn insert_summary(&mut self, item: TestListItem) {
        self.tests.remove(&item.id);
        self.summaries.insert(item.id.clone(), item);
    }

    /// A test held in memory: unfinished, or finished and not yet written.
    pub fn test(&self, id: &str) -> Option<&TestState> {
        self.tests.get(id)
    }

    /// A finished test held as its list line only (see [`ControllerCore::insert_summary`]).
    pub fn summary(&self, id: &str) -> Option<&TestListItem> {
        self.summaries.get(id)
    }

    /// Whether the test ended, wherever it is held; `None` if unknown.
    pub fn is_finished(&self, id: &str) -> Option<bool> {
        match self.tests.get(id) {
            Some(t) => Some(t.is_finished()),
            None => self.summaries.get(id).map(|_| true),
        }
    }

    /// Puts the body of stored timeline chunk `chunk` of test `id` back into memory (a
    /// shell that loaded it for a deferred report, or for a view).
    pub fn restore_chunk(
        &mut self,
        id: &str,
        chunk: u32,
        body: &[u8],
    ) -> Result<(), crate::SnapshotError> {
        match self.tests.get_mut(id) {
            Some(t) => t.restore_chunk(chunk, body),
            None => Ok(()),
        }
    }

    /// Every test, by id.
    pub fn tests(&self) -> impl Iterator<Item = &TestState> {
        self.tests.values()
    }

    /// Forgets a test that was deleted from the store, with what is pending for it.
    pub fn forget(&mut self, id: &str) -> Option<TestState> {
        self.dirty.remove(id);
        self.persisted.remove(id);
        self.needs_chunks.retain(|(t, _)| t != id);
        self.summaries.remove(id);
        self.tests.remove(id)
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

    fn mark(&mut self, id: &str, applied: Applied, now_ms: u64) {
        match applied {
            Applied::Changed => self.touch(id),
            Applied::Rejected(reason) => {
                self.stats.rejected = self.stats.rejected.saturating_add(1);
                if let Some(held) = self.log.allow(now_ms) {
                    tracing::warn!(test_id = id, %reason, rejected_in_all = self.stats.rejected, held_back = held, "report rejected");
                }
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
                self.stats.malformed = self.stats.malformed.saturating_add(1);
                if let Some(held) = self.log.allow(now_ms) {
                    tracing::warn!(topic = topic.name(), %err, malformed_in_all = self.stats.malformed, held_back = held, "malformed message skipped");
                }
            }
        }
        self.changes
    }

    /// Folds one message into the registry and the tests it concerns.
    ///
    /// A heartbeat or tick sent more than [`MAX_CLOCK_AHEAD_MS`] after `now_ms` is
    /// rejected (counted): the bus clock bounds the seconds a report may be about, so no
    /// message may move it far into the future.
    pub fn ingest(&mut self, message: &Message, now_ms: u64) {
        let sent_at = match message {
            Message::Heartbeat(h) => Some(h.sent_at_ms),
            Message::Tick(t) => Some(t.sent_at_ms),
            _ => None,
        };
        if let Some(sent_at) = sent_at.filter(|t| *t > now_ms.saturating_add(MAX_CLOCK_AHEAD_MS)) {
            self.stats.rejected = self.stats.rejected.saturating_add(1);
            if let Some(held) = self.log.allow(now_ms) {
                tracing::warn!(
                    topic = message.topic().name(),
                    sent_at_ms = sent_at,
                    now_ms,
                    held_back = held,
                    "message sent too far in the future rejected"
                );
            }
            return;
        }
        match message {
            Message::Register(r) => {
                if let Some(entry) = self.registry_entry(&r.driver_id, Activity::Idle, now_ms) {
                    entry.host = r.host.clone();
                    entry.pid = r.pid;
                    entry.version = r.version.clone();
                    entry.last_heard_ms = now_ms;
                }
                match &r.test_id {
                    Some(test_id) => match self.tests.get_mut(test_id) {
                        Some(t) => {
                            let applied = t.apply(message);
                            self.mark(test_id, applied, now_ms);
                        }
                        // A test that ended and was written: nothing to confirm any more
                        // (its stop is resent while the driver says it holds it).
                        None if self.summaries.contains_key(test_id) => {}
                        None => self.unknown(test_id, now_ms),
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
                            self.mark(&id, applied, now_ms);
                        }
                    }
                }
            }
            Message::Heartbeat(h) => {
                // A driver that registered before this controller started is known from
                // its heartbeats until it registers again.
                if let Some(entry) = self.registry_entry(&h.driver_id, h.activity, now_ms) {
                    entry.activity = h.activity;
                    entry.test_id = h.test_id.clone();
                    entry.last_heard_ms = now_ms;
                }
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
                        self.mark(&id, applied, now_ms);
                    }
                }
            }
            Message::Metrics(report) => match self.tests.get_mut(&report.test_id) {
                Some(t) => {
                    let applied = t.apply(message);
                    self.mark(&report.test_id, applied, now_ms);
                }
                // A late report for a test that ended and was written: nothing to fold it
                // into any more.
                None if self.summaries.contains_key(&report.test_id) => {}
                None => self.unknown(&report.test_id, now_ms),
            },
            Message::Tick(tick) => {
                for t in self.tests.values_mut().filter(|t| !t.is_finished()) {
                    t.observe_clock(tick.sent_at_ms);
                }
            }
            Message::TestConfig(_) | Message::Trigger(_) => {}
        }
    }

    /// The registry's entry for `driver_id`, made if there is room
    /// ([`MAX_REGISTERED_DRIVERS`]); `None` (counted, logged once a second) if not.
    fn registry_entry(
        &mut self,
        driver_id: &str,
        activity: Activity,
        now_ms: u64,
    ) -> Option<&mut DriverEntry> {
        if !self.drivers.contains_key(driver_id) {
            if self.drivers.len() >= MAX_REGISTERED_DRIVERS {
                self.stats.registry_full = self.stats.registry_full.saturating_add(1);
                if let Some(held) = self.log.allow(now_ms) {
                    tracing::warn!(
                        driver_id,
                        max = MAX_REGISTERED_DRIVERS,
                        turned_away_in_all = self.stats.registry_full,
                        held_back = held,
                        "driver registry full; new driver not registered"
                    );
                }
                return None;
            }
            self.drivers.insert(
                driver_id.to_string(),
                DriverEntry {
                    host: String::new(),
                    pid: 0,
                    version: String::new(),
                    activity,
                    test_id: None,
                    last_heard_ms: now_ms,
                },
            );
        }
        self.drivers.get_mut(driver_id)
    }

    fn unknown(&mut self, test_id: &str, now_ms: u64) {
        self.stats.unknown_test = self.stats.unknown_test.saturating_add(1);
        if let Some(held) = self.log.allow(now_ms) {
            tracing::warn!(
                test_id,
                unknown_in_all = self.stats.unknown_test,
                held_back = held,
                "message for an unknown test skipped"
            );
        }
    }

    /// Asks a test's drivers to stop; the stop trigger goes out with the next
    /// [`ControllerCore::poll`].
    pub fn request_stop(&mut self, id: &str, now_ms: u64) -> Result<TestView, StopError> {
        if let Some(item) = self.summaries.get(id) {
            return Err(StopError::Finished {
                id: id.to_string(),
                status: item.status,
            });
        }
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
            .filter(|id| self.is_finished(id) == Some(true))
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
            // A finished test is written whole: the shell reads its stored chunks back
            // first (see `incomplete_finished`).
            .filter(|(t, _)| !t.is_finished() || t.is_complete())
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
            // What is written and behind every driver need not stay in memory.
            test.drop_sealed();
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
        // A finished test whose every change is written is held as its list line alone:
        // memory goes to what is live.
        let written_whole = !self.dirty.contains_key(id)
            && self.tests.get(id).is_some_and(TestState::is_finished)
            && snapshot.status.is_finished();
        if written_whole && let Some(test) = self.tests.remove(id) {
            let item = snapshot
                .list_item
                .clone()
                .unwrap_or_else(|| TestListItem::of(&test));
            self.persisted.remove(id);
            self.needs_chunks.retain(|(t, _)| t != id);
            self.summaries.insert(id.to_string(), item);
        }
    }

    /// Finished tests whose sealed timeline is partly in the store only: the shell reads
    /// their chunks back ([`ControllerCore::restore_chunk`]) so they can be written whole.
    pub fn incomplete_finished(&self) -> Vec<String> {
        self.tests
            .values()
            .filter(|t| t.is_finished() && !t.is_complete())
            .map(|t| t.id().to_string())
            .collect()
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

    /// A page of the tests, newest first (ids are time-ordered): the list lines of
    /// finished tests as held, those of tests in memory computed from their summaries.
    pub fn list(&self, query: &ListQuery) -> Vec<TestListItem> {
        let limit = query.limit();
        let below = |id: &str| query.cursor.as_deref().is_none_or(|c| id < c);
        // Both maps are ordered by id: walk them newest first, merged, up to the limit.
        let mut live = self
            .tests
            .iter()
            .rev()
            .filter(|(id, _)| below(id))
            .peekable();
        let mut done = self
            .summaries
            .iter()
            .rev()
            .filter(|(id, _)| below(id))
            .peekable();
        let mut out = Vec::with_capacity(limit.min(self.tests.len() + self.summaries.len()));
        while out.len() < limit {
            let take_live = match (live.peek(), done.peek()) {
                (Some((a, _)), Some((b, _))) => a > b,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            if take_live {
                let (_, t) = live.next().expect("peeked");
                out.push(TestListItem::of(t));
            } else {
                let (_, item) = done.next().expect("peeked");
                out.push(item.clone());
            }
        }
        out
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
        count_statuses(
            self.tests
                .values()
                .map(TestState::status)
                .chain(self.summaries.values().map(|i| i.status)),
        )
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
