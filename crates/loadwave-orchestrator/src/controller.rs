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

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use loadwave_bus::{Bus, BusError, Delivery};
use loadwave_core::{
    ControllerCore, ControllerOptions, DriverInfo, DriverRequest, DriverSlot, Snapshot,
    TestListItem, TestView,
};
use loadwave_proto::{Message, TestSpec, Tick, Topic, unix_ms_now};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::api::{AppError, Backend, BusHealthView, Health};
use crate::launcher::Launcher;
use crate::store::{StoreError, TestStore, Version};

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
        for state in store.load_all().await? {
            if !state.is_finished() {
                tracing::info!(test_id = %state.id(), status = state.status().as_str(), "resuming test");
            }
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
            wake: Notify::new(),
        }))
    }

    fn core(&self) -> std::sync::MutexGuard<'_, ControllerCore> {
        self.core.lock().expect("controller lock poisoned")
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
                    let ticket = self.core().ingest_payload(delivery.topic, &delivery.payload, unix_ms_now());
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
        // Whatever was folded is written before leaving.
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
    /// is reachable.
    async fn publish_outbox(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<Message>,
        shutdown: CancellationToken,
    ) {
        let mut batch: Vec<Message> = Vec::with_capacity(BATCH);
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
            tokio::select! {
                sent = futures::future::join_all(batch.iter().map(|m| self.bus.publish(m))) => {
                    let failed: Vec<Message> = std::mem::take(&mut batch)
                        .into_iter()
                        .zip(sent)
                        .filter_map(|(m, sent)| sent.err().map(|err| (m, err)))
                        .map(|(m, err)| {
                            tracing::debug!(%err, "publish failed; sending it again");
                            m
                        })
                        .collect();
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

    /// Writes the snapshots the core says are due (all of them with `all`).
    async fn persist(&self, now: u64, all: bool) {
        let _ = self.writer.write_due(&self.core, now, all).await;
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

    async fn view(&self, id: &str) -> Result<Option<TestView>, AppError> {
        Ok(self.core().view(id))
    }

    async fn list(&self) -> Result<Vec<TestListItem>, AppError> {
        Ok(self.core().list())
    }

    async fn stop(&self, id: &str) -> Result<TestView, AppError> {
        let view = self.core().request_stop(id, unix_ms_now())?;
        self.wake.notify_one();
        Ok(view)
    }

    async fn drivers(&self) -> Result<Vec<DriverInfo>, AppError> {
        Ok(self.core().drivers(unix_ms_now()))
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
