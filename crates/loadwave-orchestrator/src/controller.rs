//! The local orchestrator: a [`ControllerCore`] driven by a Kafka consumer loop, serving
//! the API from memory.
//!
//! The loop reads `register`, `heartbeat` and `metrics`, hands each payload to the core,
//! publishes what the core asks, writes the snapshots it says are due and acknowledges
//! the deliveries whose changes are written (the core's watermark). Launchers run in a
//! task of their own, one request at a time, so a slow `RunTask` never stalls the intake
//! of messages. Invariant: the core's lock is never held across an await.
//!
//! Once a second the loop publishes a [`Tick`] on the heartbeat topic; reading it back
//! advances every test's bus clock (see [`loadwave_core::TestState::observe_clock`]).

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

use crate::api::{AppError, Backend, Health};
use crate::launcher::Launcher;
use crate::store::{StoreError, TestStore, Version};

/// How often the launcher is asked which running drivers are gone.
const INSPECT_EVERY_MS: u64 = 2_000;

/// The orchestrator: tests, drivers, and the clients to reach them.
pub struct Orchestrator {
    bus: Arc<dyn Bus>,
    launcher: Arc<dyn Launcher>,
    orchestrator_id: String,
    core: Mutex<ControllerCore>,
    writer: SnapshotWriter,
    requests: mpsc::UnboundedSender<DriverRequest>,
    requests_rx: Mutex<Option<mpsc::UnboundedReceiver<DriverRequest>>>,
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
        Ok(Arc::new(Orchestrator {
            bus,
            launcher,
            orchestrator_id: format!("orchestrator-{}", std::process::id()),
            core: Mutex::new(core),
            writer: SnapshotWriter::new(store),
            requests: tx,
            requests_rx: Mutex::new(Some(rx)),
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
        let mut ticker = tokio::time::interval(Duration::from_millis(100));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut unacked: VecDeque<(u64, Delivery)> = VecDeque::new();
        let (mut last_tick_ms, mut last_inspect_ms) = (0u64, 0u64);
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
            if now >= last_tick_ms + 1_000 {
                last_tick_ms = now;
                let tick = Message::Tick(Tick {
                    orchestrator_id: self.orchestrator_id.clone(),
                    sent_at_ms: now,
                });
                if let Err(err) = self.bus.publish(&tick).await {
                    tracing::warn!(%err, "tick not published");
                }
            }
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
        Ok(())
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
        // All at once, in order: the producer batches them. One at a time, each waited
        // for its own round trip, and a thousand drivers' configurations (re-sent every
        // second until confirmed) held the loop for seconds.
        let sent = futures::future::join_all(outbox.iter().map(|m| self.bus.publish(m))).await;
        let failed: Vec<Message> = outbox
            .into_iter()
            .zip(sent)
            .filter_map(|(message, sent)| sent.err().map(|err| (message, err)))
            .map(|(message, err)| {
                tracing::warn!(%err, "publish failed; retrying on the next step");
                message
            })
            .collect();
        if !failed.is_empty() {
            self.core().requeue(failed);
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
            bus: core.stats().clone(),
        })
    }
}
