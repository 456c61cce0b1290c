//! One test's state: a fold of driver messages plus the decisions that move it on.
//!
//! [`TestState`] does no I/O and reads no clock: callers hand it messages
//! ([`TestState::apply`]) and the time ([`TestState::poll`]), and publish what it returns.
//! The same state machine therefore runs inside `loadwave run`, the orchestrator and the
//! Lambda controller, and tests drive it message by message.
//!
//! Folding is idempotent: every driver report carries a sequence number and a report
//! whose number was seen changes nothing. Counts add and histograms merge, so the order
//! reports arrive in does not change the result.
//!
//! Every report is untrusted input, and the fold is bounded before it costs anything: a
//! report is rejected whole ([`Applied::Rejected`], naming the field, counted in the
//! view's `rejected_messages`) when a bucket's second lies beyond what the plan allows
//! ([`TestState::max_second`]) or far behind its driver's newest second, when its
//! sequence number is beyond what the plan allows ([`TestState::max_seq`]) or would leave
//! more than [`MAX_SEQ_RUNS`] gaps, when a bucket counts more than
//! [`MAX_BUCKET_REQUESTS`] requests (or errors, late requests or responses beyond them),
//! or when a histogram does not decode. What is accepted adds up with saturating
//! arithmetic.
//!
//! A state persists through [`TestState::snapshot`] (see [`crate::snapshot`]): its own
//! serialization leaves the per-second timeline out, which the snapshot writes in
//! bounded pieces.

use std::collections::{BTreeMap, HashMap};

use loadwave_proto::{
    Activity, DriverHealth, DriverTotals, Message, MetricsReport, Pacing, Profile, RecordedCounts,
    SendLag, TestConfig, TestSpec, Trigger, TriggerAction,
};
use serde::{Deserialize, Serialize};

use crate::aggregate::Aggregate;
use crate::seqs::SeqSet;
use crate::snapshot::ChunkBook;

/// Timing of the coordination, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestOptions {
    /// Between the trigger and the common start instant: time for the trigger to reach
    /// every driver and for drivers to open their connections.
    pub start_lead_ms: u64,
    /// How long every assigned driver has to confirm its configuration.
    pub registration_timeout_ms: u64,
    /// A running driver silent for longer than this is lost (the design's 3 s).
    pub heartbeat_timeout_ms: u64,
    /// How often an unconfirmed configuration is sent again.
    pub config_resend_ms: u64,
    /// A running test is stopped once it has run this long (`LOADWAVE_MAX_DURATION_S`);
    /// no cap when `None`.
    #[serde(default)]
    pub max_duration_ms: Option<u64>,
}

impl Default for TestOptions {
    fn default() -> Self {
        TestOptions {
            // One second covers a Kafka round trip and connection warm-up with room to
            // spare; the start instant is shared, so the lead costs no skew.
            start_lead_ms: 1_000,
            registration_timeout_ms: 30_000,
            heartbeat_timeout_ms: 3_000,
            config_resend_ms: 1_000,
            max_duration_ms: None,
        }
    }
}

/// Where a test is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TestStatus {
    /// Waiting for its drivers.
    Pending,
    /// Triggered; drivers are sending.
    Running,
    /// Every driver finished (or was lost, with the rest finished).
    Completed,
    /// Could not run: drivers never became ready, or all were lost.
    Failed,
    /// Stopped on request.
    Stopped,
}

impl TestStatus {
    /// Whether the test has ended.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            TestStatus::Completed | TestStatus::Failed | TestStatus::Stopped
        )
    }

    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            TestStatus::Pending => "pending",
            TestStatus::Running => "running",
            TestStatus::Completed => "completed",
            TestStatus::Failed => "failed",
            TestStatus::Stopped => "stopped",
        }
    }
}

/// Where one driver is in the test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DriverPhase {
    /// Assigned; its confirmation of the configuration has not arrived.
    Waiting,
    /// Configured, waiting for the trigger.
    Ready,
    /// Sending.
    Running,
    /// Sent its final report after all its requests.
    Completed,
    /// Sent its final report after a stop.
    Stopped,
    /// Went silent.
    Lost,
}

impl DriverPhase {
    pub(crate) fn is_terminal(self) -> bool {
        matches!(
            self,
            DriverPhase::Completed | DriverPhase::Stopped | DriverPhase::Lost
        )
    }
}

/// What [`TestState::apply`] made of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The state changed.
    Changed,
    /// A report already folded; nothing changed.
    Duplicate,
    /// Not about this test or one of its drivers.
    Ignored,
    /// About this test but unusable (a histogram that does not decode).
    Rejected(String),
    /// A report with a bucket for a stored timeline chunk that is not in memory (a state
    /// loaded without its sealed chunks). Nothing changed: load the chunk and fold again.
    NeedsChunk(u32),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DriverTrack {
    pub(crate) id: String,
    pub(crate) phase: DriverPhase,
    pub(crate) last_seen_ms: u64,
    config_sent_ms: Option<u64>,
    reregistered: bool,
    pub(crate) seqs: SeqSet,
    pub(crate) final_seq: Option<u64>,
    pub(crate) agg: Aggregate,
    pub(crate) totals: DriverTotals,
    latest_seq: Option<u64>,
    pub(crate) elapsed_ms: u64,
    pub(crate) health: DriverHealth,
    pub(crate) peak_health: DriverHealth,
    pub(crate) start_delay_us: Option<u64>,
    /// Open model: its latest cumulative send lag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) send_lag: Option<SendLag>,
    /// When its launcher said it was gone while the test ran (bus time); it is lost a
    /// heartbeat timeout later unless its final report came first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gone_at_ms: Option<u64>,
    /// Bus-alive time when it was last heard from.
    seen_alive_ms: u64,
    /// The latest second any of its buckets was about: a bucket far behind it is not
    /// plausible (a request completes within the spec's timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) newest_second: Option<u32>,
    /// What the launcher knows it by (an ECS task ARN), to stop or inspect it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) handle: Option<String>,
    /// Why it ended early, as its launcher tells it (an ECS task's stop reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) note: Option<String>,
}

/// An abort threshold that broke: the test was stopped because of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Abort {
    /// The threshold as written.
    pub threshold: String,
    /// What was measured when it broke, in the metric's base unit.
    pub actual: f64,
    /// When, ms after the common start instant.
    pub at_ms: u64,
}

/// A driver a launcher found or started for a test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriverSlot {
    /// The driver's id: the one it registers with.
    pub id: String,
    /// What the launcher knows it by (an ECS task ARN), if anything.
    pub handle: Option<String>,
}

impl DriverSlot {
    /// A driver known by its id alone (a pool driver, a local process).
    pub fn id(id: impl Into<String>) -> Self {
        DriverSlot {
            id: id.into(),
            handle: None,
        }
    }
}

impl DriverTrack {
    fn new(slot: DriverSlot, now_ms: u64) -> Self {
        DriverTrack {
            id: slot.id,
            handle: slot.handle,
            note: None,
            phase: DriverPhase::Waiting,
            last_seen_ms: now_ms,
            config_sent_ms: None,
            reregistered: false,
            seqs: SeqSet::new(),
            final_seq: None,
            agg: Aggregate::default(),
            totals: DriverTotals::default(),
            latest_seq: None,
            elapsed_ms: 0,
            health: DriverHealth::default(),
            peak_health: DriverHealth::default(),
            start_delay_us: None,
            send_lag: None,
            gone_at_ms: None,
            seen_alive_ms: 0,
            newest_second: None,
        }
    }

    fn seen(&mut self, clock_ms: u64, alive_ms: u64) {
        self.last_seen_ms = self.last_seen_ms.max(clock_ms);
        self.seen_alive_ms = self.seen_alive_ms.max(alive_ms);
    }

    /// Reports numbered below the final one that never arrived.
    pub(crate) fn missing_reports(&self) -> u64 {
        match self.final_seq {
            Some(last) => (last.saturating_add(1)).saturating_sub(self.seqs.count_through(last)),
            None => 0,
        }
    }
}

/// One test, folded from its drivers' messages.
///
/// Its serde form is everything but the per-second timeline (histograms as base64);
/// [`TestState::snapshot`] adds the timeline in chunks and [`TestState::from_doc`] with
/// [`TestState::restore_chunk`] read it back exactly.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TestState {
    pub(crate) id: String,
    pub(crate) spec: TestSpec,
    options: TestOptions,
    pub(crate) status: TestStatus,
    pub(crate) error: Option<String>,
    pub(crate) created_at_ms: u64,
    pub(crate) start_at_ms: Option<u64>,
    pub(crate) finished_at_ms: Option<u64>,
    pub(crate) stop_requested: bool,
    /// The abort threshold that stopped the test, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) aborted: Option<Abort>,
    /// When abort thresholds were last evaluated (once a second).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    abort_checked_ms: Option<u64>,
    /// When the last start or stop trigger went out: both are re-sent every
    /// `config_resend_ms` until every driver acted on them, so a lost trigger (or one that
    /// a crash kept from being published) cannot strand a test.
    #[serde(default)]
    trigger_sent_ms: Option<u64>,
    pub(crate) drivers: Vec<DriverTrack>,
    pub(crate) total: Aggregate,
    /// Every second of the test, all drivers merged. Read from a document (the seconds
    /// held inline), written by [`TestState::snapshot`].
    #[serde(default, skip_serializing)]
    pub(crate) timeline: BTreeMap<u32, Aggregate>,
    /// Which chunks of the timeline are stored where (the document's manifest).
    #[serde(default, rename = "timeline_chunks", skip_serializing)]
    pub(crate) chunks: ChunkBook,
    pub(crate) duplicates: u64,
    /// Reports about this test that broke a bound or did not decode, rejected whole.
    #[serde(default)]
    pub(crate) rejected: u64,
    /// Where each driver is in `drivers`, by id: every message names its driver, and a
    /// test may have a thousand. Rebuilt when it no longer matches.
    #[serde(skip)]
    driver_index: HashMap<String, usize>,
    /// The newest send time seen on the bus (heartbeats, orchestrator ticks).
    clock_ms: u64,
    /// Time the bus was seen moving: advances with `clock_ms`, but by at most
    /// [`MAX_CLOCK_STEP_MS`] per observation, so an outage (of the broker, or of this
    /// orchestrator) counts as a single step. Lost-driver detection runs on it.
    alive_ms: u64,
}

/// Seconds a bucket may lie beyond the plan's end (its duration plus the request
/// timeout), or beyond what the bus clock says has elapsed since the start when the end is
/// not known in advance: room for clocks that disagree and a bus that lags.
pub const SECOND_SLACK_S: u32 = 60;
/// Seconds, beyond the request timeout, that a bucket may lie behind the newest second its
/// driver reported. Larger than [`SECOND_SLACK_S`], so a second pushed to the upper bound
/// cannot make the driver's real seconds look stale.
pub const BEHIND_SLACK_S: u32 = 120;
/// The latest second of a test whose end nothing bounds (no plan, no cap, not started):
/// thirty days.
pub const MAX_TEST_SECONDS: u32 = 30 * 86_400;
/// Requests one bucket (a second of one driver) may count: far beyond what a driver
/// sends, and far enough from `u64::MAX` that no sum of them comes near it.
pub const MAX_BUCKET_REQUESTS: u64 = 1_000_000_000;
/// Runs of sequence numbers a driver may leave (gaps of reports not arrived): a driver's
/// reports form one run, and a few gaps is what a lossy bus leaves.
pub const MAX_SEQ_RUNS: usize = 1_024;

/// How long the spec's plan runs, seconds, when it is known in advance: its duration
/// (or stages), or an open model's count at its pace.
fn planned_s(spec: &TestSpec) -> Option<f64> {
    let profile = Profile::of(spec);
    let planned = match (&profile.pacing, profile.duration_s) {
        (_, Some(d)) => Some(d),
        (Pacing::Delay { delay_s }, None) => spec.requests_per_driver.map(|n| n as f64 * delay_s),
        (Pacing::Arrival(curve), None) => spec.requests_per_driver.map(|n| {
            n as f64 * f64::from(spec.drivers.max(1)) / curve.max().max(f64::MIN_POSITIVE)
        }),
        _ => None,
    };
    planned.filter(|p| p.is_finite() && *p >= 0.0)
}

/// The longest step of bus-alive time one observation may add: the orchestrator's tick
/// interval. A longer gap means nothing moved on the bus; nobody's silence counts then.
pub const MAX_CLOCK_STEP_MS: u64 = 1_000;

impl TestState {
    /// A new pending test for `driver_ids` (one per driver the spec asks for).
    pub fn new(
        id: impl Into<String>,
        spec: TestSpec,
        driver_ids: Vec<String>,
        now_ms: u64,
        options: TestOptions,
    ) -> Self {
        TestState {
            id: id.into(),
            spec,
            options,
            status: TestStatus::Pending,
            error: None,
            created_at_ms: now_ms,
            start_at_ms: None,
            finished_at_ms: None,
            stop_requested: false,
            aborted: None,
            abort_checked_ms: None,
            trigger_sent_ms: None,
            drivers: driver_ids
                .into_iter()
                .map(|d| DriverTrack::new(DriverSlot::id(d), now_ms))
                .collect(),
            total: Aggregate::default(),
            timeline: BTreeMap::new(),
            chunks: ChunkBook::default(),
            duplicates: 0,
            rejected: 0,
            driver_index: HashMap::new(),
            clock_ms: now_ms,
            alive_ms: 0,
        }
    }

    /// Assigns drivers to a test created without them (a pool that had too few idle
    /// drivers at the time). Ignored once drivers are assigned or the test has ended.
    pub fn assign_drivers(&mut self, drivers: Vec<DriverSlot>, now_ms: u64) {
        if self.drivers.is_empty() && self.status == TestStatus::Pending {
            // As many as the spec asks for, never more.
            self.drivers = drivers
                .into_iter()
                .take(self.spec.drivers.max(1) as usize)
                .map(|d| DriverTrack::new(d, now_ms))
                .collect();
        }
    }

    /// The assigned drivers with their launcher handles.
    pub fn driver_slots(&self) -> Vec<DriverSlot> {
        self.drivers
            .iter()
            .map(|d| DriverSlot {
                id: d.id.clone(),
                handle: d.handle.clone(),
            })
            .collect()
    }

    /// The drivers with a launcher handle that have not finished their part: the ones
    /// worth asking the launcher about.
    pub fn unfinished_slots(&self) -> Vec<DriverSlot> {
        self.drivers
            .iter()
            .filter(|d| !d.phase.is_terminal() && d.handle.is_some())
            .map(|d| DriverSlot {
                id: d.id.clone(),
                handle: d.handle.clone(),
            })
            .collect()
    }

    /// The launcher says the driver known by `handle` is gone (its ECS task stopped) for
    /// `reason`. Before the start it is lost at once; once the test runs, it is lost a
    /// heartbeat timeout later unless its final report arrives first (a task exits as
    /// soon as it has published it). Either way the reason is shown beside it and its
    /// data so far is kept. Returns whether anything changed.
    pub fn driver_gone(&mut self, handle: &str, reason: &str) -> bool {
        if self.is_finished() {
            return false;
        }
        let Some(d) = self
            .drivers
            .iter_mut()
            .find(|d| d.handle.as_deref() == Some(handle))
        else {
            return false;
        };
        if d.phase.is_terminal() {
            return false;
        }
        tracing::warn!(test_id = %self.id, driver = %d.id, %reason, "driver gone");
        let changed = d.note.as_deref() != Some(reason);
        d.note = Some(reason.to_string());
        if self.status == TestStatus::Running {
            // A task that ran to its end exits as soon as its final report is published,
            // which may reach the controller after the launcher's news: it gets a
            // heartbeat timeout's grace for its reports before it counts as lost.
            if d.gone_at_ms.is_none() {
                d.gone_at_ms = Some(self.clock_ms);
                return true;
            }
            return changed;
        }
        d.phase = DriverPhase::Lost;
        true
    }

    /// The ids of the assigned drivers.
    pub fn driver_ids(&self) -> impl Iterator<Item = &str> {
        self.drivers.iter().map(|d| d.id.as_str())
    }

    /// Whether `driver_id` is assigned to this test and has not finished its part.
    pub fn holds_driver(&self, driver_id: &str) -> bool {
        !self.is_finished()
            && self
                .drivers
                .iter()
                .any(|d| d.id == driver_id && !d.phase.is_terminal())
    }

    /// Ends a test that cannot run. Returns what to publish (a stop for any driver that
    /// already holds its configuration).
    pub fn fail(&mut self, reason: impl Into<String>, now_ms: u64) -> Vec<Message> {
        if self.is_finished() {
            return Vec::new();
        }
        self.error = Some(reason.into());
        self.finish(TestStatus::Failed, now_ms);
        vec![self.trigger(TriggerAction::Stop)]
    }

    /// Advances the bus clock: the send time of a message just read from the bus (an
    /// orchestrator tick or any heartbeat). Where the bus cannot stall (in one process),
    /// callers pass the wall clock.
    pub fn observe_clock(&mut self, sent_at_ms: u64) {
        if sent_at_ms > self.clock_ms {
            self.alive_ms += (sent_at_ms - self.clock_ms).min(MAX_CLOCK_STEP_MS);
            self.clock_ms = sent_at_ms;
        }
    }

    /// When the test was created, ms since the epoch.
    pub fn created_at_ms(&self) -> u64 {
        self.created_at_ms
    }

    /// The test's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The spec.
    pub fn spec(&self) -> &TestSpec {
        &self.spec
    }

    /// The current status.
    pub fn status(&self) -> TestStatus {
        self.status
    }

    /// Whether the test has ended.
    pub fn is_finished(&self) -> bool {
        self.status.is_finished()
    }

    /// The merged statistics of every report folded so far.
    pub fn total(&self) -> &Aggregate {
        &self.total
    }

    /// Re-delivered reports dropped so far.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Reports about this test rejected so far (a bound broken, a histogram that does
    /// not decode).
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// The latest second a bucket may be about now: the plan's end plus the request
    /// timeout, or what the bus clock says has elapsed since the start if that is later
    /// (the only bound when the end is not known in advance); either with
    /// [`SECOND_SLACK_S`], and never past the maximum duration's end (nor
    /// [`MAX_TEST_SECONDS`]).
    pub fn max_second(&self) -> u32 {
        let timeout_s = self.spec.timeout_ms.div_ceil(1_000);
        let slack = u64::from(SECOND_SLACK_S);
        let planned = planned_s(&self.spec).map(|p| (p.ceil() as u64).saturating_add(timeout_s));
        let by_clock = self
            .start_at_ms
            .map(|start| self.clock_ms.saturating_sub(start) / 1_000);
        let cap = self
            .options
            .max_duration_ms
            .map(|ms| (ms / 1_000).saturating_add(timeout_s));
        // The later of the two: a plan whose requests queued behind a slow target ends
        // late, and the bus clock says how late it can be by now.
        let bound = match (planned, by_clock) {
            (Some(p), Some(c)) => p.max(c),
            (Some(p), None) => p,
            (None, Some(c)) => c,
            (None, None) => u64::from(MAX_TEST_SECONDS),
        };
        let bound = cap.map_or(bound, |c| bound.min(c)).saturating_add(slack);
        u32::try_from(bound.min(u64::from(MAX_TEST_SECONDS))).unwrap_or(MAX_TEST_SECONDS)
    }

    /// The highest sequence number a report may carry now: a driver reports once a second
    /// (and once more at the end), so twice the seconds allowed is ample.
    pub fn max_seq(&self) -> u64 {
        u64::from(self.max_second())
            .saturating_mul(2)
            .saturating_add(1_024)
    }

    /// How far behind its driver's newest second a bucket may lie: the request timeout
    /// plus [`BEHIND_SLACK_S`].
    pub(crate) fn behind_window(&self) -> u32 {
        u32::try_from(self.spec.timeout_ms.div_ceil(1_000))
            .unwrap_or(u32::MAX)
            .saturating_add(BEHIND_SLACK_S)
    }

    /// Why `report` breaks a bound, if it does; `index` is its driver's.
    fn out_of_bounds(&self, report: &MetricsReport, index: usize) -> Option<String> {
        let max_seq = self.max_seq();
        if report.seq > max_seq {
            return Some(format!(
                "seq {} is beyond what the test's plan allows (at most {max_seq})",
                report.seq
            ));
        }
        let d = &self.drivers[index];
        let seqs = &d.seqs;
        if seqs.runs().len() >= MAX_SEQ_RUNS && seqs.would_open_run(report.seq) {
            return Some(format!(
                "seq {} would leave driver {} with more than {MAX_SEQ_RUNS} gaps in its sequence numbers",
                report.seq, d.id
            ));
        }
        if let Some((i, b)) = report.buckets.iter().enumerate().find(|(_, b)| {
            b.requests > MAX_BUCKET_REQUESTS || b.errors > b.requests || b.late > b.requests
        }) {
            return Some(format!(
                "buckets[{i}].requests {} (errors {}, late {}): more than {MAX_BUCKET_REQUESTS} requests, or errors or late requests beyond them",
                b.requests, b.errors, b.late
            ));
        }
        let max_second = self.max_second();
        if let Some((i, b)) = report
            .buckets
            .iter()
            .enumerate()
            .find(|(_, b)| b.second > max_second)
        {
            return Some(format!(
                "buckets[{i}].second {} is beyond the test's end (at most {max_second} now)",
                b.second
            ));
        }
        let newest = report
            .buckets
            .iter()
            .map(|b| b.second)
            .chain(d.newest_second)
            .max()?;
        let oldest = newest.saturating_sub(self.behind_window());
        report
            .buckets
            .iter()
            .enumerate()
            .find(|(_, b)| b.second < oldest)
            .map(|(i, b)| {
                format!(
                    "buckets[{i}].second {} is far behind the driver's newest second {newest} (more than the request timeout plus {BEHIND_SLACK_S} s)",
                    b.second
                )
            })
    }

    fn driver_position(&mut self, id: &str) -> Option<usize> {
        // Drivers are only ever assigned all at once, never removed or reordered.
        if self.driver_index.len() != self.drivers.len() {
            self.driver_index = self
                .drivers
                .iter()
                .enumerate()
                .map(|(i, d)| (d.id.clone(), i))
                .collect();
        }
        self.driver_index.get(id).copied()
    }

    fn driver_mut(&mut self, id: &str) -> Option<&mut DriverTrack> {
        let i = self.driver_position(id)?;
        Some(&mut self.drivers[i])
    }

    /// Folds one message in. A driver that registers, heartbeats or reports counts as
    /// alive as of the bus clock (see [`TestState::observe_clock`]); a heartbeat's send
    /// time advances that clock first.
    pub fn apply(&mut self, message: &Message) -> Applied {
        let test_id = self.id.clone();
        match message {
            Message::Register(r) => {
                let (clock, alive) = (self.clock_ms, self.alive_ms);
                let Some(d) = self.driver_mut(&r.driver_id) else {
                    return Applied::Ignored;
                };
                match &r.test_id {
                    Some(t) if *t == test_id => {
                        d.seen(clock, alive);
                        if d.phase == DriverPhase::Waiting {
                            d.phase = DriverPhase::Ready;
                        }
                        Applied::Changed
                    }
                    None => {
                        d.seen(clock, alive);
                        d.reregistered = true;
                        Applied::Changed
                    }
                    Some(_) => Applied::Ignored,
                }
            }
            Message::Heartbeat(h) => {
                self.observe_clock(h.sent_at_ms);
                let alive = self.alive_ms;
                let Some(d) = self.driver_mut(&h.driver_id) else {
                    return Applied::Ignored;
                };
                d.seen(h.sent_at_ms, alive);
                if h.activity == Activity::Running
                    && h.test_id.as_deref() == Some(test_id.as_str())
                    && d.phase == DriverPhase::Ready
                {
                    d.phase = DriverPhase::Running;
                }
                Applied::Changed
            }
            Message::Metrics(report) if report.test_id == test_id => self.apply_report(report),
            _ => Applied::Ignored,
        }
    }

    fn apply_report(&mut self, report: &MetricsReport) -> Applied {
        let Some(index) = self.driver_position(&report.driver_id) else {
            return Applied::Ignored;
        };
        if self.drivers[index].seqs.contains(report.seq) {
            self.duplicates = self.duplicates.saturating_add(1);
            return Applied::Duplicate;
        }
        if let Some(reason) = self.out_of_bounds(report, index) {
            return self.reject(reason);
        }
        if let Some(bucket) = report
            .buckets
            .iter()
            .find(|b| self.chunks.is_unloaded(b.second))
        {
            return Applied::NeedsChunk(self.chunks.chunk_of(bucket.second));
        }
        // Decode everything before changing anything, so a bad report leaves no trace.
        let mix = self.spec.requests.as_ref().map_or(0, Vec::len);
        if let Some(r) = report
            .buckets
            .iter()
            .filter_map(|b| b.request)
            .find(|r| *r as usize >= mix)
        {
            return self.reject(format!(
                "a bucket for request {r} of the mix, but the test's mix has {mix} requests"
            ));
        }
        let mut histograms = Vec::with_capacity(report.buckets.len());
        for bucket in &report.buckets {
            // Merged several times (driver, total, second, and per request of a mix into
            // the latter two): read once, as counts.
            match RecordedCounts::from_base64(&bucket.histogram) {
                Ok(counts) => {
                    // Responses are requests that got an answer: never more than them.
                    let responses = counts
                        .values()
                        .iter()
                        .fold(0u64, |n, (_, c)| n.saturating_add(*c));
                    if responses > bucket.requests {
                        return self.reject(format!(
                            "buckets[{}].histogram counts {responses} responses of {} requests",
                            histograms.len(),
                            bucket.requests
                        ));
                    }
                    histograms.push(counts)
                }
                Err(err) => {
                    return self.reject(format!("buckets[{}].histogram: {err}", histograms.len()));
                }
            }
        }
        let (clock, alive) = (self.clock_ms, self.alive_ms);
        let d = &mut self.drivers[index];
        d.seqs.insert(report.seq);
        d.newest_second = report
            .buckets
            .iter()
            .map(|b| b.second)
            .chain(d.newest_second)
            .max();
        d.seen(clock, alive);
        if report.start_delay_us.is_some() {
            d.start_delay_us = report.start_delay_us;
        }
        d.elapsed_ms = d.elapsed_ms.max(report.elapsed_ms);
        if d.latest_seq.is_none_or(|s| report.seq > s) {
            d.latest_seq = Some(report.seq);
            d.totals = report.totals.clone();
            d.health = report.health.clone();
            if report.send_lag.is_some() {
                d.send_lag = report.send_lag;
            }
        }
        d.peak_health.cpu_percent = d.peak_health.cpu_percent.max(report.health.cpu_percent);
        d.peak_health.lag_ms_max = d.peak_health.lag_ms_max.max(report.health.lag_ms_max);
        d.peak_health.lag_ms_mean = d.peak_health.lag_ms_mean.max(report.health.lag_ms_mean);
        d.peak_health.cores = report.health.cores;
        d.peak_health.saturated |= report.health.saturated;
        if report.is_final {
            d.final_seq = Some(report.seq);
            d.phase = if report.stopped {
                DriverPhase::Stopped
            } else {
                DriverPhase::Completed
            };
        } else if matches!(d.phase, DriverPhase::Waiting | DriverPhase::Ready) {
            d.phase = DriverPhase::Running;
        }
        for (bucket, histogram) in report.buckets.iter().zip(&histograms) {
            // Histograms auto-resize, so merging cannot fail; a failure would be a bug.
            let merged = self.drivers[index]
                .agg
                .add(bucket, histogram)
                .and_then(|_| self.total.add_split(bucket, histogram))
                .and_then(|_| {
                    self.timeline
                        .entry(bucket.second)
                        .or_default()
                        .add_split(bucket, histogram)
                });
            if let Err(err) = merged {
                tracing::error!(%err, "histogram merge failed");
            }
            self.chunks.touch(bucket.second);
        }
        Applied::Changed
    }

    fn reject(&mut self, reason: String) -> Applied {
        self.rejected = self.rejected.saturating_add(1);
        Applied::Rejected(reason)
    }

    /// Asks the drivers to stop. Returns what to publish.
    pub fn request_stop(&mut self, now_ms: u64) -> Vec<Message> {
        if self.is_finished() {
            return Vec::new();
        }
        self.stop_requested = true;
        self.trigger_sent_ms = Some(now_ms);
        if self.status == TestStatus::Pending {
            self.finish(TestStatus::Stopped, now_ms);
        }
        vec![self.trigger(TriggerAction::Stop)]
    }

    fn trigger(&self, action: TriggerAction) -> Message {
        Message::Trigger(Trigger {
            test_id: self.id.clone(),
            action,
        })
    }

    fn finish(&mut self, status: TestStatus, now_ms: u64) {
        self.status = status;
        self.finished_at_ms = Some(now_ms);
    }

    /// The first abort threshold that breaks on the merged data so far, evaluated at most
    /// once a second and only once the spec's grace has passed since the start.
    fn check_abort(&mut self, now_ms: u64) -> Option<Abort> {
        let start = self.start_at_ms?;
        if self.stop_requested || !self.spec.thresholds.iter().any(|t| t.abort) {
            return None;
        }
        let grace_ms = (self.spec.abort_grace_s() * 1_000.0) as u64;
        if now_ms < start + grace_ms
            || self.abort_checked_ms.is_some_and(|t| now_ms < t + 1_000)
            || self.total.requests == 0
        {
            return None;
        }
        // The reports' own time base, as the summary's: they arrive a second after the
        // fact, so the wall clock since the start would undercount the rate.
        let duration_s = self.duration_s();
        let mut measured = false;
        let broken = self
            .spec
            .thresholds
            .iter()
            .filter(|t| t.abort)
            .find_map(|t| {
                let agg = self.threshold_data(t)?;
                let actual = crate::view::measure(t.metric, agg, duration_s)?;
                measured = true;
                (!t.op.holds(actual, t.limit)).then(|| Abort {
                    threshold: t.to_string(),
                    actual,
                    at_ms: now_ms - start,
                })
            });
        // Nothing to judge yet (no data for the thresholds' requests): look again at the
        // next poll, not a second on.
        if measured {
            self.abort_checked_ms = Some(now_ms);
        }
        broken
    }

    /// Moves the test on at time `now_ms`: (re)sends configurations, triggers once every
    /// driver is ready, declares silent drivers lost, and ends the test when every
    /// driver is done. Returns what to publish.
    pub fn poll(&mut self, now_ms: u64) -> Vec<Message> {
        let mut out = Vec::new();
        match self.status {
            TestStatus::Pending => {
                let (id, spec, resend) = (
                    self.id.clone(),
                    self.spec.clone(),
                    self.options.config_resend_ms,
                );
                for (index, d) in self.drivers.iter_mut().enumerate() {
                    let due =
                        d.reregistered || d.config_sent_ms.is_none_or(|t| now_ms >= t + resend);
                    if d.phase == DriverPhase::Waiting && due {
                        d.config_sent_ms = Some(now_ms);
                        d.reregistered = false;
                        out.push(Message::TestConfig(TestConfig {
                            test_id: id.clone(),
                            driver_id: d.id.clone(),
                            driver_index: index as u32,
                            spec: spec.clone(),
                        }));
                    }
                }
                let waiting: Vec<&str> = self
                    .drivers
                    .iter()
                    .filter(|d| d.phase == DriverPhase::Waiting)
                    .map(|d| d.id.as_str())
                    .collect();
                if self.drivers.is_empty() {
                    // Waiting for the controller to find drivers; it fails the test when
                    // none come.
                } else if waiting.is_empty() {
                    let start_at_ms = now_ms + self.options.start_lead_ms;
                    self.start_at_ms = Some(start_at_ms);
                    self.status = TestStatus::Running;
                    self.observe_clock(now_ms);
                    let alive = self.alive_ms;
                    for d in &mut self.drivers {
                        d.seen(now_ms, alive);
                    }
                    self.trigger_sent_ms = Some(now_ms);
                    out.push(self.trigger(TriggerAction::Start { start_at_ms }));
                } else if now_ms >= self.created_at_ms + self.options.registration_timeout_ms {
                    self.error = Some(format!(
                        "{} of {} drivers were not ready within {} s: {}",
                        waiting.len(),
                        self.drivers.len(),
                        self.options.registration_timeout_ms / 1000,
                        waiting.join(", ")
                    ));
                    self.finish(TestStatus::Failed, now_ms);
                    out.push(self.trigger(TriggerAction::Stop));
                }
            }
            TestStatus::Running => {
                if let (Some(max), Some(start)) = (self.options.max_duration_ms, self.start_at_ms)
                    && !self.stop_requested
                    && now_ms >= start + max
                {
                    tracing::warn!(test_id = %self.id, max_ms = max, "maximum duration reached; stopping");
                    self.error = Some(format!(
                        "stopped after the maximum duration of {} s (LOADWAVE_MAX_DURATION_S)",
                        max / 1_000
                    ));
                    out.extend(self.request_stop(now_ms));
                }
                if let Some(abort) = self.check_abort(now_ms) {
                    tracing::info!(test_id = %self.id, threshold = %abort.threshold, actual = abort.actual, "abort threshold broke; stopping the test");
                    self.aborted = Some(abort);
                    out.extend(self.request_stop(now_ms));
                }
                let resend_due = self
                    .trigger_sent_ms
                    .is_none_or(|t| now_ms >= t + self.options.config_resend_ms);
                if resend_due {
                    let action = if self.stop_requested {
                        // Drivers still sending have not seen the stop.
                        self.drivers
                            .iter()
                            .any(|d| !d.phase.is_terminal())
                            .then_some(TriggerAction::Stop)
                    } else {
                        // Drivers that confirmed their configuration but never said they
                        // run have not seen the start; a late start still runs the test.
                        self.drivers
                            .iter()
                            .any(|d| d.phase == DriverPhase::Ready)
                            .then_some(TriggerAction::Start {
                                start_at_ms: self.start_at_ms.unwrap_or(now_ms),
                            })
                    };
                    if let Some(action) = action {
                        self.trigger_sent_ms = Some(now_ms);
                        out.push(self.trigger(action));
                    }
                }
                let (timeout, alive) = (self.options.heartbeat_timeout_ms, self.alive_ms);
                for d in &mut self.drivers {
                    let gone = d
                        .gone_at_ms
                        .is_some_and(|at| now_ms.max(self.clock_ms) > at + timeout);
                    if !d.phase.is_terminal() && (gone || alive > d.seen_alive_ms + timeout) {
                        tracing::warn!(test_id = %self.id, driver = %d.id, "driver lost");
                        d.phase = DriverPhase::Lost;
                    }
                }
                if self.drivers.iter().all(|d| d.phase.is_terminal()) {
                    let status = if self.stop_requested {
                        TestStatus::Stopped
                    } else if self.drivers.iter().all(|d| d.phase == DriverPhase::Lost) {
                        self.error = Some("every driver was lost".to_string());
                        TestStatus::Failed
                    } else {
                        TestStatus::Completed
                    };
                    self.finish(status, now_ms);
                }
            }
            _ => {}
        }
        out
    }
}
