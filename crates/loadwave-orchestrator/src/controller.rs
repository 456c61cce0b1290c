//! The local orchestrator: a [`ControllerCore`] driven by a Kafka consumer loop, serving
//! the API from memory.
//!
//! The loop reads `register`, `heartbeat` and `metrics`, hands each payload to the core,
//! publishes what the core asks, writes the snapshots it says are due and acknowledges
//! the deliveries whose changes are written (the core's watermark). Launchers run in a
//! task of their own, one request at a time, so a slow `RunTask` never stalls the intake
//! of messages. Invariant: the core's lock is never held across an await.
//!
//! Once a second a task of its own publishes a [`Tick`] on the heartbeat topic; reading it
//! back advances every test's bus clock (see [`loadwave_core::TestState::observe_clock`]).
//! At most one tick is ever in flight: a tick says "the bus moves now", and ticks queued
//! through an outage would, once delivered, each count as a second of a moving bus in
//! which the drivers (whose heartbeats wait the same way, one at a time) said nothing.
//!
//! Architecture invariant: the loop never waits on a publish. A publish completes when
//! the broker acknowledges it, which takes as long as an outage lasts; so the loop hands
//! what it sends (configurations, triggers) to a bounded outbox, and a task of its own
//! publishes it, in order and in batches. While the broker is away the loop goes on
//! reading, folding, persisting and serving; the outbox fills up to [`OUTBOX_BOUND`]
//! messages, then drops the newest. Nothing is lost for good: the core sends
//! configurations and triggers again every second until drivers act on them, and a stop
//! for a test that already ended again while a driver still says it holds that test.
//!
//! What no retry can deliver is dropped, not requeued: a publish the bus refuses for good
//! (a message over the broker's size limit, a topic the client may not write; see
//! [`BusError::is_retriable`]) is logged once per test and topic at ERROR, naming the test,
//! the topic, the size and the reason; and configurations and start triggers of tests that
//! have finished (or were deleted) are dropped before they are sent. Stops always go out:
//! the core sends them for finished tests on purpose, to free drivers that missed one.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use loadwave_bus::{Bus, BusError, Delivery};
use loadwave_core::{
    ControllerCore, ControllerOptions, DriverInfo, DriverRequest, DriverSlot, ListQuery, Snapshot,
    TestListItem, TestView,
};
use loadwave_proto::{Message, TestSpec, Tick, Topic, TriggerAction, unix_ms_now};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::api::{AppError, Backend, BusHealthView, Health};
use crate::launcher::Launcher;
use crate::store::{StoreError, TestStore, Version};

/// Attempts to read a running test's stored chunks for a view while writes replace them.
const VIEW_ATTEMPTS: usize = 5;
/// How often the launcher is asked which running drivers are gone.
const INSPECT_EVERY_MS: u64 = 2_000;
/// Messages waiting for the publisher at most (a thousand drivers' configurations a
/// second for ten seconds of outage).
pub const OUTBOX_BOUND: usize = 10_000;
/// How many waiting messages one publish batch takes.
const BATCH: usize = 1_000;
/// At shutdown, how long the publisher may take to send what is waiting (the broker may
/// be there and quick); what is left then is logged, and rebuilt from the stored state on
/// the next start.
const FLUSH_GRACE: Duration = Duration::from_secs(2);
/// How many (test, topic) pairs the publisher remembers having reported undeliverable,
/// so a configuration the core sends again every second is reported once, not forever.
const TOLD_UNDELIVERABLE: usize = 1_024;

/// The orchestrator: tests, drivers, and the clients to reach them.
pub struct Orchestrator {
    bus: Arc<dyn Bus>,
    launcher: Arc<dyn Launcher>,
    orchestrator_id: String,
    core: Mutex<ControllerCore>,
    writer: SnapshotWriter,
    requests: mpsc::UnboundedSender<DriverRequest>,
    requests_rx: Mutex<Option<mpsc::UnboundedReceiver<DriverRequest>>>,
    outbox: mpsc::Sender<Message>,
    outbox_rx: Mutex<Option<mpsc::Receiver<Message>>>,
    /// Messages the full outbox turned away.
    dropped: std::sync::atomic::AtomicU64,
    /// Endpoints no test may aim at (its own listener, its brokers).
    refused_targets: Mutex<Vec<std::net::SocketAddr>>,
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
        let mut core = ControllerCore::new(options);
        let now = unix_ms_now();
        // Finished tests by their list lines; unfinished ones by their main documents
        // (the sealed timeline stays in the store until a late report or a view needs it).
        for item in store.finished_items().await? {
            core.insert_summary(item);
        }
        for (state, _) in store.load_active().await? {
            tracing::info!(test_id = %state.id(), status = state.status().as_str(), "resuming test");
            core.insert(state, now);
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let (outbox, outbox_rx) = mpsc::channel(OUTBOX_BOUND);
        Ok(Arc::new(Orchestrator {
            bus,
            launcher,
            orchestrator_id: format!("orchestrator-{}", std::process::id()),
            core: Mutex::new(core),
            writer: SnapshotWriter::new(store),
            requests: tx,
            requests_rx: Mutex::new(Some(rx)),
            outbox,
            outbox_rx: Mutex::new(Some(outbox_rx)),
            dropped: Default::default(),
            refused_targets: Mutex::default(),
            wake: Notify::new(),
        }))
    }

    fn core(&self) -> std::sync::MutexGuard<'_, ControllerCore> {
        self.core.lock().expect("controller lock poisoned")
    }

    /// Refuses tests aimed at `endpoints` from now on: the orchestrator's own listener
    /// and its Kafka brokers (see [`loadwave_proto::spec::reaches`]).
    pub fn refuse_targets(&self, endpoints: Vec<std::net::SocketAddr>) {
        *self.refused_targets.lock().expect("lock") = endpoints;
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
        if let Some(rx) = self.requests_rx.lock().expect("lock").take() {
            tokio::spawn(self.clone().acquire_drivers(rx, shutdown.clone()));
        }
        let publisher = self
            .outbox_rx
            .lock()
            .expect("lock")
            .take()
            .map(|rx| tokio::spawn(self.clone().publish_outbox(rx, shutdown.clone())));
        tokio::spawn(self.clone().tick(shutdown.clone()));
        let mut ticker = tokio::time::interval(Duration::from_millis(100));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut unacked: VecDeque<(u64, Delivery)> = VecDeque::new();
        let mut last_inspect_ms = 0u64;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                next = sub.next() => {
                    let Some(delivery) = next else {
                        return Err(BusError::Closed);
                    };
                    let mut ticket = self.core().ingest_payload(delivery.topic, &delivery.payload, unix_ms_now());
                    // A late report for a sealed chunk that is only in the store changed
                    // nothing: the chunk is read back and the report folded again.
                    let needed = self.core().take_chunk_requests();
                    if !needed.is_empty() {
                        for (test_id, chunk) in needed {
                            self.restore_chunks(&test_id, Some(chunk)).await;
                        }
                        ticket = self.core().ingest_payload(delivery.topic, &delivery.payload, unix_ms_now());
                        for (test_id, chunk) in self.core().take_chunk_requests() {
                            tracing::error!(test_id, chunk, "a report needs a timeline chunk that cannot be read; report dropped");
                        }
                    }
                    unacked.push_back((ticket, delivery));
                }
                _ = ticker.tick() => {}
                _ = self.wake.notified() => {}
            }
            let now = unix_ms_now();
            if now >= last_inspect_ms + INSPECT_EVERY_MS {
                last_inspect_ms = now;
                self.clone().inspect_drivers();
            }
            self.step(now).await;
            let watermark = self.core().ack_watermark();
            while unacked.front().is_some_and(|(t, _)| *t <= watermark) {
                let (_, delivery) = unacked.pop_front().expect("checked");
                delivery.ack();
            }
        }
        // Whatever was folded is written before leaving (finished tests whole).
        let incomplete = self.core().incomplete_finished();
        for test_id in incomplete {
            self.restore_chunks(&test_id, None).await;
        }
        self.persist(unix_ms_now(), true).await;
        if let Some(publisher) = publisher {
            let _ = publisher.await;
        }
        Ok(())
    }

    /// Publishes a tick a second, each once the previous one was delivered: at most one
    /// is in flight, so an outage leaves one stale tick behind, not one per second.
    async fn tick(self: Arc<Self>, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let tick = Message::Tick(Tick {
                orchestrator_id: self.orchestrator_id.clone(),
                sent_at_ms: unix_ms_now(),
            });
            tokio::select! {
                sent = self.bus.publish(&tick) => {
                    if let Err(err) = sent {
                        tracing::debug!(%err, "tick not published");
                    }
                }
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Hands `message` to the publisher; never waits. A full outbox (a long outage)
    /// turns it away: the core sends what matters again.
    fn send(&self, message: Message) {
        if self.outbox.try_send(message).is_err() {
            let n = self
                .dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if (n + 1).is_power_of_two() {
                tracing::debug!(
                    dropped = n + 1,
                    "outbox full; message dropped (it is sent again)"
                );
            }
        }
    }

    /// Publishes what the loop hands over, in order, a batch at a time (the producer
    /// sends a batch together), until shutdown; then for [`FLUSH_GRACE`] more if the bus
    /// is reachable. A message that failed for a reason a retry may cure goes back to the
    /// core, first in line; one the bus refuses for good is dropped and reported once.
    async fn publish_outbox(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<Message>,
        shutdown: CancellationToken,
    ) {
        let mut batch: Vec<Message> = Vec::with_capacity(BATCH);
        let mut told = Undeliverable::default();
        loop {
            let first = tokio::select! {
                m = rx.recv() => m,
                _ = shutdown.cancelled() => break,
            };
            let Some(first) = first else { break };
            batch.push(first);
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            self.drop_finished(&mut batch);
            tokio::select! {
                sent = futures::future::join_all(batch.iter().map(|m| self.bus.publish(m))) => {
                    let mut failed: Vec<Message> = Vec::new();
                    for (m, sent) in std::mem::take(&mut batch).into_iter().zip(sent) {
                        match sent {
                            Ok(()) => {}
                            Err(err) if err.is_retriable() => {
                                tracing::debug!(%err, "publish failed; sending it again");
                                failed.push(m);
                            }
                            Err(err) => told.drop(&m, &err),
                        }
                    }
                    if !failed.is_empty() {
                        self.core().requeue(failed);
                    }
                }
                _ = shutdown.cancelled() => break,
            }
        }
        // Shutting down: what is waiting gets a short grace (a broker that is there takes
        // it at once), and what is left is said.
        while let Ok(m) = rx.try_recv() {
            batch.push(m);
        }
        self.drop_finished(&mut batch);
        let waiting = batch.len();
        // A broker that is gone gets no grace: nothing would go out in it.
        let grace = if self.bus.health().reachable {
            FLUSH_GRACE
        } else {
            Duration::ZERO
        };
        let flushed = tokio::time::timeout(
            grace,
            futures::future::join_all(batch.iter().map(|m| self.bus.publish(m))),
        )
        .await
        .map(|sent| sent.iter().filter(|s| s.is_ok()).count())
        .unwrap_or(0);
        if flushed < waiting {
            tracing::warn!(
                unsent = waiting - flushed,
                "messages not published before shutting down (the bus did not take them); the next start sends them again from the stored tests and the drivers' heartbeats"
            );
        }
    }

    /// Takes out of `batch` the configurations and start triggers of tests that have
    /// finished or are gone: no driver has anything to do with them, and one that failed
    /// to publish would otherwise be requeued for as long as the outage lasts. Stops stay:
    /// the core sends them for finished tests on purpose.
    fn drop_finished(&self, batch: &mut Vec<Message>) {
        let before = batch.len();
        {
            let core = self.core();
            batch.retain(|m| match m {
                Message::Trigger(t) if matches!(t.action, TriggerAction::Stop) => true,
                Message::TestConfig(_) | Message::Trigger(_) => {
                    core.test(m.key()).is_some_and(|t| !t.is_finished())
                }
                _ => true,
            });
        }
        if batch.len() < before {
            tracing::debug!(
                dropped = before - batch.len(),
                "messages for finished tests dropped"
            );
        }
    }

    /// One pass: hand new driver requests to the acquirer, poll, publish, release the
    /// drivers of finished tests, persist.
    async fn step(&self, now: u64) {
        let (outbox, finished) = {
            let mut core = self.core();
            for request in core.driver_requests() {
                let _ = self.requests.send(request);
            }
            (core.poll(now), core.take_finished())
        };
        // To the publisher, in order: it sends them together (one at a time, each waiting
        // for its own round trip, a thousand drivers' configurations held the loop for
        // seconds) and never holds up this loop.
        for message in outbox {
            self.send(message);
        }
        for (test_id, slots) in finished {
            self.release(test_id, slots);
        }
        // A finished test is written whole: what of its timeline is only in the store
        // comes back first (again at the next step if a read failed).
        let incomplete = self.core().incomplete_finished();
        for test_id in incomplete {
            self.restore_chunks(&test_id, None).await;
        }
        self.persist(now, false).await;
    }

    fn release(&self, test_id: String, slots: Vec<DriverSlot>) {
        if slots.iter().all(|s| s.handle.is_none()) {
            return;
        }
        let launcher = self.launcher.clone();
        tokio::spawn(async move { launcher.release(&test_id, &slots).await });
    }

    /// Serves driver requests one at a time (so two tests never see the same idle pool
    /// drivers), away from the message loop.
    async fn acquire_drivers(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<DriverRequest>,
        shutdown: CancellationToken,
    ) {
        loop {
            let request = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = rx.recv() => match r { Some(r) => r, None => return },
            };
            let idle = self.core().idle_drivers(unix_ms_now());
            let acquired = self
                .launcher
                .acquire(&request.test_id, request.count, &idle)
                .await;
            let unused = self
                .core()
                .drivers_acquired(&request.test_id, acquired, unix_ms_now());
            if !unused.is_empty() {
                self.release(request.test_id.clone(), unused);
            }
            self.wake.notify_one();
        }
    }

    /// Asks the launcher, in the background, which running drivers are gone.
    fn inspect_drivers(self: Arc<Self>) {
        let running: Vec<(String, Vec<DriverSlot>)> = self
            .core()
            .tests()
            .filter(|t| !t.is_finished())
            .map(|t| (t.id().to_string(), t.unfinished_slots()))
            .filter(|(_, slots)| !slots.is_empty())
            .collect();
        if running.is_empty() {
            return;
        }
        tokio::spawn(async move {
            for (test_id, slots) in running {
                for (handle, reason) in self.launcher.inspect(&slots).await {
                    self.core().driver_gone(&test_id, &handle, &reason);
                }
            }
            self.wake.notify_one();
        });
    }

    async fn restore_chunks(&self, id: &str, only: Option<u32>) {
        self.writer.restore_chunks(&self.core, id, only).await;
    }

    /// Writes the snapshots the core says are due (all of them with `all`).
    async fn persist(&self, now: u64, all: bool) {
        let _ = self.writer.write_due(&self.core, now, all).await;
    }
}

/// The publisher's memory of what it reported undeliverable.
#[derive(Default)]
struct Undeliverable {
    /// (test, topic) pairs already reported at ERROR, oldest first.
    told: VecDeque<(String, Topic)>,
    /// Messages dropped so far.
    dropped: u64,
}

impl Undeliverable {
    /// Drops `message`, which the bus refused for good with `err`: one ERROR line per
    /// test and topic (the core sends a configuration again every second), debug after.
    fn drop(&mut self, message: &Message, err: &BusError) {
        self.dropped += 1;
        let key = (message.key().to_string(), message.topic());
        let bytes = message.encode().len();
        if self.told.contains(&key) {
            tracing::debug!(test_id = %key.0, topic = key.1.name(), bytes, %err, dropped = self.dropped, "undeliverable message dropped again");
            return;
        }
        tracing::error!(
            test_id = %key.0,
            topic = key.1.name(),
            bytes,
            %err,
            "message dropped: the bus refuses it and no retry can deliver it"
        );
        if self.told.len() >= TOLD_UNDELIVERABLE {
            self.told.pop_front();
        }
        self.told.push_back(key);
    }
}

/// Writes a controller's due snapshots to a store, remembering the version of each test
/// for the next conditional write. The orchestrator's loop uses it after every step (and
/// the controller bench the same way).
pub struct SnapshotWriter {
    store: TestStore,
    versions: Mutex<HashMap<String, Version>>,
    /// Chunk names are `{chunk}-{prefix}{count}`: random per writer, counted per write.
    nonce_prefix: String,
    writes: std::sync::atomic::AtomicU64,
}

impl SnapshotWriter {
    /// Over `store`.
    pub fn new(store: TestStore) -> Self {
        SnapshotWriter {
            store,
            versions: Mutex::default(),
            nonce_prefix: uuid::Uuid::new_v4().simple().to_string()[..10].to_string(),
            writes: Default::default(),
        }
    }

    /// The store written to.
    pub fn store(&self) -> &TestStore {
        &self.store
    }

    /// Test `id` was written at `version` by someone else (created through the API).
    pub fn written_at(&self, id: &str, version: Version) {
        self.versions
            .lock()
            .expect("lock")
            .insert(id.to_string(), version);
    }

    /// Reads stored timeline chunks of test `id` that are not in memory (`only` that one,
    /// or all) back into `core`: for a report that needs one, and before a finished test
    /// is written whole. The reads happen outside the lock. Failures are logged: the fold
    /// then defers again, and a finished test stays unwritten until its chunks are read.
    pub async fn restore_chunks(&self, core: &Mutex<ControllerCore>, id: &str, only: Option<u32>) {
        let wanted: Vec<(u32, String)> =
            match core.lock().expect("controller lock poisoned").test(id) {
                Some(t) => t
                    .unloaded_chunks()
                    .into_iter()
                    .filter(|(k, _)| only.is_none_or(|o| o == *k))
                    .collect(),
                None => return,
            };
        for (k, name) in wanted {
            match self.store.chunk_body(id, &name).await {
                Ok(Some(body)) => {
                    let restored = core
                        .lock()
                        .expect("controller lock poisoned")
                        .restore_chunk(id, k, &body);
                    if let Err(err) = restored {
                        tracing::error!(test_id = id, chunk = k, %err, "stored timeline chunk unreadable");
                    }
                }
                Ok(None) => {
                    tracing::error!(test_id = id, chunk = k, "stored timeline chunk missing")
                }
                Err(err) => {
                    tracing::error!(test_id = id, chunk = k, %err, "cannot read timeline chunk")
                }
            }
        }
    }

    /// Writes the snapshots `core` says are due at `now` (all of them with `all`), tells
    /// it which were written and returns them. The snapshots are taken under the core's
    /// lock (they are bounded: a test's state without its sealed timeline, plus the
    /// chunks that changed); the writes happen outside it.
    pub async fn write_due(
        &self,
        core: &Mutex<ControllerCore>,
        now: u64,
        all: bool,
    ) -> Vec<Snapshot> {
        let count = self
            .writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nonce = format!("{}{count:x}", self.nonce_prefix);
        let due = core
            .lock()
            .expect("controller lock poisoned")
            .snapshots_due(now, all, &nonce);
        let mut written = Vec::with_capacity(due.len());
        for snapshot in due {
            let id = snapshot.id.clone();
            let version = self.versions.lock().expect("lock").get(&id).cloned();
            match self.store.write(&snapshot, version.as_ref()).await {
                Ok(v) => {
                    self.versions.lock().expect("lock").insert(id, v);
                    core.lock()
                        .expect("controller lock poisoned")
                        .snapshot_written(&snapshot, now);
                    written.push(snapshot);
                }
                Err(err) => tracing::error!(test_id = %id, %err, "cannot persist test"),
            }
        }
        written
    }
}

#[async_trait]
impl Backend for Orchestrator {
    fn limits(&self) -> loadwave_core::Limits {
        self.core().options().limits
    }

    fn refused_targets(&self) -> Vec<std::net::SocketAddr> {
        self.refused_targets.lock().expect("lock").clone()
    }

    async fn create(&self, spec: TestSpec) -> Result<TestView, AppError> {
        let now = unix_ms_now();
        let id = uuid::Uuid::now_v7().simple().to_string();
        let state = self.core().new_test(&id, spec, now);
        let version = self.writer.store().create(&state).await?;
        let view = state.view();
        self.writer.written_at(&id, version);
        self.core().insert(state, now);
        self.wake.notify_one();
        Ok(view)
    }

    /// From memory when the whole test is there. A running test's sealed seconds are read
    /// from the store for the view alone (parsed outside the lock, never put back into
    /// memory); a finished test held as its list line is read from the store.
    async fn view(&self, id: &str) -> Result<Option<TestView>, AppError> {
        'attempt: for _ in 0..VIEW_ATTEMPTS {
            let (wanted, reader) = {
                let core = self.core();
                match core.test(id) {
                    Some(t) if t.is_complete() => return Ok(Some(t.view())),
                    Some(t) => (t.unloaded_chunks(), t.chunk_reader()),
                    None => break,
                }
            };
            let mut sealed = BTreeMap::new();
            for (k, name) in &wanted {
                match self.writer.store().chunk_body(id, name).await? {
                    Some(body) => sealed.extend(
                        reader
                            .read(*k, &body)
                            .map_err(|e| AppError::Internal(e.to_string()))?,
                    ),
                    // A newer write replaced it meanwhile: look again.
                    None => continue 'attempt,
                }
            }
            let core = self.core();
            match core.test(id) {
                // The same chunks are still the stored ones: the view is consistent.
                Some(t) if t.unloaded_chunks() == wanted => {
                    return Ok(Some(t.view_with_sealed(Some(&sealed))));
                }
                Some(t) if t.is_complete() => return Ok(Some(t.view())),
                Some(_) => continue,
                None => break,
            }
        }
        Ok(self.writer.store().load(id).await?.map(|(t, _)| t.view()))
    }

    async fn list_page(&self, query: &ListQuery) -> Result<Vec<TestListItem>, AppError> {
        Ok(self.core().list(query))
    }

    async fn stop(&self, id: &str) -> Result<TestView, AppError> {
        let view = self.core().request_stop(id, unix_ms_now())?;
        self.wake.notify_one();
        Ok(view)
    }

    async fn drivers(&self) -> Result<Vec<DriverInfo>, AppError> {
        Ok(self.core().drivers(unix_ms_now()))
    }

    async fn delete(&self, id: &str) -> Result<(), AppError> {
        let in_memory = self.core().test(id).map(|t| t.is_finished());
        let finished = match in_memory {
            Some(finished) => finished,
            // Not in memory: it may be in the store only.
            None => match self.writer.store().load_head(id).await? {
                Some((state, _)) => state.is_finished(),
                None => return Err(AppError::NotFound(format!("no test with id `{id}`"))),
            },
        };
        if !finished {
            return Err(AppError::Conflict(format!(
                "test {id} has not ended; stop it first"
            )));
        }
        // Out of memory first, so no snapshot of it is written after the store forgets it.
        self.core().forget(id);
        self.writer.store().delete(id).await?;
        Ok(())
    }

    async fn health(&self) -> Result<Health, AppError> {
        let core = self.core();
        Ok(Health {
            status: "ok",
            launcher: self.launcher.name(),
            tests: core.test_counts(),
            live_drivers: core
                .drivers(unix_ms_now())
                .iter()
                .filter(|d| d.state != "lost")
                .count(),
            bus: BusHealthView::new(self.bus.health(), core.stats().clone()),
        })
    }

    fn bus_state(&self) -> loadwave_bus::BusState {
        self.bus.health()
    }
}

#[cfg(test)]
mod outbox_tests {
    use super::*;
    use crate::launcher::PoolLauncher;
    use loadwave_bus::{MemoryBus, Subscription};
    use loadwave_proto::{TestConfig, Trigger};

    /// A bus that fails every publish, retriably or not.
    struct FailingBus {
        retriable: bool,
    }

    #[async_trait]
    impl Bus for FailingBus {
        async fn publish_raw(&self, topic: Topic, _: &str, _: Vec<u8>) -> Result<(), BusError> {
            Err(BusError::Publish {
                topic: topic.name().to_string(),
                reason: "broker away".into(),
                retriable: self.retriable,
            })
        }

        async fn subscribe(&self, _: &[Topic], _: &str) -> Result<Subscription, BusError> {
            Ok(Subscription::channel().1)
        }
    }

    fn spec(body_bytes: usize) -> TestSpec {
        let json = format!(
            r#"{{"target_url":"http://127.0.0.1:9/","test_type":"avalanche","requests_per_driver":1,"method":"POST","body":"{}"}}"#,
            "x".repeat(body_bytes)
        );
        TestSpec::from_json(json.as_bytes()).unwrap()
    }

    fn config(test_id: &str, spec: TestSpec) -> Message {
        Message::TestConfig(TestConfig {
            test_id: test_id.into(),
            driver_id: "d1".into(),
            driver_index: 0,
            spec,
        })
    }

    fn trigger(test_id: &str, action: TriggerAction) -> Message {
        Message::Trigger(Trigger {
            test_id: test_id.into(),
            action,
        })
    }

    /// An orchestrator over `bus` with its publisher running, and a test of `spec`.
    async fn started(
        bus: Arc<dyn Bus>,
        spec: TestSpec,
    ) -> (Arc<Orchestrator>, String, CancellationToken) {
        let orch = Orchestrator::new(
            bus,
            TestStore::memory(),
            Arc::new(PoolLauncher),
            ControllerOptions::default(),
        )
        .await
        .unwrap();
        let id = orch.create(spec).await.unwrap().id;
        let rx = orch.outbox_rx.lock().unwrap().take().unwrap();
        let shutdown = CancellationToken::new();
        tokio::spawn(orch.clone().publish_outbox(rx, shutdown.clone()));
        (orch, id, shutdown)
    }

    /// Configurations the core would send again (requeued ones come back first).
    fn requeued_configs(orch: &Orchestrator) -> usize {
        orch.core()
            .poll(unix_ms_now())
            .iter()
            .filter(|m| matches!(m, Message::TestConfig(_)))
            .count()
    }

    /// The issue: a spec over the broker's message limit was retried about 400 times a
    /// second, forever. Now it is dropped, and what fits still goes out.
    #[tokio::test]
    async fn a_message_the_bus_refuses_for_good_is_dropped_not_requeued() {
        let bus = MemoryBus::new().with_max_message_bytes(4_000);
        let mut drivers = bus
            .subscribe(&[Topic::TestConfig, Topic::Trigger], "drivers")
            .await
            .unwrap();
        let (orch, id, shutdown) = started(Arc::new(bus.clone()), spec(10_000)).await;
        let big = config(&id, orch.core().test(&id).unwrap().spec().clone());
        assert!(big.encode().len() > 4_000);
        orch.send(big);
        orch.send(trigger(&id, TriggerAction::Start { start_at_ms: 1 }));
        let got = tokio::time::timeout(Duration::from_secs(5), drivers.next_message())
            .await
            .expect("the trigger went out")
            .unwrap()
            .0;
        assert!(matches!(got, Message::Trigger(_)), "{got:?}");
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert_eq!(
                requeued_configs(&orch),
                0,
                "the undeliverable config was requeued"
            );
        }
        shutdown.cancel();
    }

    /// A failure a retry may cure (the broker away) still goes back to the core.
    #[tokio::test]
    async fn a_message_that_may_go_out_later_is_requeued() {
        let (orch, id, shutdown) =
            started(Arc::new(FailingBus { retriable: true }), spec(10)).await;
        let cfg = config(&id, orch.core().test(&id).unwrap().spec().clone());
        orch.send(cfg);
        let mut requeued = 0;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            requeued += requeued_configs(&orch);
            if requeued > 0 {
                break;
            }
        }
        assert_eq!(requeued, 1);
        shutdown.cancel();

        let (orch, id, shutdown) =
            started(Arc::new(FailingBus { retriable: false }), spec(10)).await;
        orch.send(config(&id, orch.core().test(&id).unwrap().spec().clone()));
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert_eq!(requeued_configs(&orch), 0);
        }
        shutdown.cancel();
    }

    /// Messages for a finished test are dropped before they are sent, but its stops go
    /// out: the core sends them on purpose, to free drivers that missed one.
    #[tokio::test]
    async fn messages_for_finished_tests_are_dropped_but_stops() {
        let bus = MemoryBus::new();
        let mut drivers = bus
            .subscribe(&[Topic::TestConfig, Topic::Trigger], "drivers")
            .await
            .unwrap();
        let (orch, id, shutdown) = started(Arc::new(bus.clone()), spec(10)).await;
        orch.core().request_stop(&id, unix_ms_now()).unwrap();
        let _ = orch.core().poll(unix_ms_now());
        assert!(orch.core().test(&id).unwrap().is_finished());
        let cfg = config(&id, orch.core().test(&id).unwrap().spec().clone());
        orch.send(cfg.clone());
        orch.send(trigger(&id, TriggerAction::Start { start_at_ms: 1 }));
        orch.send(config("no-such-test", spec(10)));
        orch.send(trigger(&id, TriggerAction::Stop));
        let got = tokio::time::timeout(Duration::from_secs(5), drivers.next_message())
            .await
            .expect("the stop went out")
            .unwrap()
            .0;
        assert_eq!(got, trigger(&id, TriggerAction::Stop));
        assert!(
            tokio::time::timeout(Duration::from_millis(200), drivers.next_message())
                .await
                .is_err(),
            "something else went out"
        );
        shutdown.cancel();
    }
}
