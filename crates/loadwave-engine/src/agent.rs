//! The driver agent: a driver's side of the protocol, over any [`Bus`].
//!
//! It announces itself on `register`, sends a heartbeat every second, takes the
//! `test_config` addressed to it (confirming with a `register` that names the test),
//! starts at the common instant of the `trigger`, streams a `metrics` report every second
//! and a final one, and honours a stop. A pool agent then waits for the next test; a
//! dedicated agent (one test, as in `loadwave run` or an ECS task) returns.
//!
//! Publishing retries until it succeeds, in order, so a bus that is away for a while
//! delays reports but loses none. Once the agent is told to shut down, what it still
//! holds gets [`FLUSH_GRACE`] to go out; what does not is logged as lost, with its counts.
//! An unreachable bus is told once by the transport (its health), not per retry here.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use loadwave_bus::{Bus, BusError};
use loadwave_proto::{
    Activity, DriverTotals, Heartbeat, Message, MetricsReport, Register, SendLag, TestConfig,
    Topic, TriggerAction, unix_ms_now,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::engine::{self, Plan};
use crate::sysmon::{HealthProbe, SysMonitor};

/// How often a driver says it is alive (the orchestrator declares it lost after 3 s).
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// How often a running driver reports.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);
/// How long after each second's end its report goes out.
const REPORT_GRACE: Duration = Duration::from_millis(100);
/// How long after being told to shut down an agent keeps trying to deliver: the process's
/// stop deadline less a second to log what was lost and leave, so a final report that
/// waited for slow requests in flight still has its chance.
pub const FLUSH_GRACE: Duration =
    loadwave_bus::stop::STOP_DEADLINE.saturating_sub(Duration::from_secs(1));

/// Whether the agent serves many tests or one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentMode {
    /// Stay up and take every test assigned.
    Pool,
    /// Serve this test only, then return.
    Dedicated(String),
}

/// Who the agent is.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Unique driver id.
    pub driver_id: String,
    /// Host name shown to users.
    pub host: String,
    /// Pool or dedicated.
    pub mode: AgentMode,
}

/// Why an agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The bus could not be subscribed to.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The bus closed under the agent.
    #[error("the bus closed")]
    Closed,
}

#[derive(Debug, Clone)]
struct Status {
    activity: Activity,
    test_id: Option<String>,
}

struct Running {
    test_id: String,
    task: JoinHandle<()>,
    stop: CancellationToken,
}

/// Runs the agent until `shutdown` fires (or, when dedicated, its test is done).
pub async fn run_agent(
    bus: Arc<dyn Bus>,
    config: AgentConfig,
    monitor: Arc<SysMonitor>,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let mut sub = bus
        .subscribe(&[Topic::TestConfig, Topic::Trigger], &config.driver_id)
        .await?;
    let status = Arc::new(Mutex::new(Status {
        activity: Activity::Idle,
        test_id: None,
    }));
    let heartbeat = tokio::spawn(heartbeats(
        bus.clone(),
        config.driver_id.clone(),
        status.clone(),
        shutdown.child_token(),
    ));
    let _stop_heartbeats = HeartbeatGuard(heartbeat);
    let give_up = GiveUp::new(shutdown.clone());
    let _ = publish(&*bus, &register(&config, None), &give_up).await;

    let mut configured: Option<TestConfig> = None;
    let mut running: Option<Running> = None;
    let mut finished: Vec<String> = Vec::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                if let Some(run) = running.take() {
                    run.stop.cancel();
                    let _ = run.task.await;
                }
                return Ok(());
            }
            _ = async { (&mut running.as_mut().expect("guarded").task).await }, if running.is_some() => {
                let run = running.take().expect("guarded");
                finished.push(run.test_id.clone());
                set_status(&status, Activity::Idle, None);
                if config.mode == AgentMode::Dedicated(run.test_id) {
                    return Ok(());
                }
            }
            next = sub.next_message() => {
                let Some((message, delivery)) = next else {
                    return Err(AgentError::Closed);
                };
                match message {
                    Message::TestConfig(cfg) if cfg.driver_id == config.driver_id => {
                        let busy = running.as_ref().is_some_and(|r| r.test_id != cfg.test_id);
                        let wanted = match &config.mode {
                            AgentMode::Pool => true,
                            AgentMode::Dedicated(id) => *id == cfg.test_id,
                        };
                        if busy || !wanted || finished.contains(&cfg.test_id) {
                            tracing::debug!(test_id = %cfg.test_id, "ignoring test config");
                        } else if running.is_none() {
                            set_status(&status, Activity::Configured, Some(cfg.test_id.clone()));
                            let _ = publish(&*bus, &register(&config, Some(cfg.test_id.clone())), &give_up).await;
                            configured = Some(cfg);
                        }
                    }
                    Message::Trigger(trigger) => match trigger.action {
                        TriggerAction::Start { start_at_ms } => {
                            let matches = configured.as_ref().is_some_and(|c| c.test_id == trigger.test_id);
                            if matches && running.is_none() {
                                let cfg = configured.take().expect("checked");
                                set_status(&status, Activity::Running, Some(cfg.test_id.clone()));
                                let stop = CancellationToken::new();
                                let task = tokio::spawn(execute(
                                    bus.clone(),
                                    cfg.clone(),
                                    start_at_ms,
                                    monitor.clone(),
                                    stop.clone(),
                                    give_up.clone(),
                                ));
                                running = Some(Running { test_id: cfg.test_id, task, stop });
                            }
                        }
                        TriggerAction::Stop => {
                            if let Some(run) = running.as_ref().filter(|r| r.test_id == trigger.test_id) {
                                run.stop.cancel();
                            }
                            if configured.as_ref().is_some_and(|c| c.test_id == trigger.test_id) {
                                configured = None;
                                set_status(&status, Activity::Idle, None);
                                if config.mode == AgentMode::Dedicated(trigger.test_id) {
                                    return Ok(());
                                }
                            }
                        }
                    },
                    _ => {}
                }
                delivery.ack();
            }
        }
    }
}

/// Aborts the heartbeat task when the agent returns.
struct HeartbeatGuard(JoinHandle<()>);

impl Drop for HeartbeatGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn set_status(status: &Mutex<Status>, activity: Activity, test_id: Option<String>) {
    *status.lock().expect("status lock poisoned") = Status { activity, test_id };
}

fn register(config: &AgentConfig, test_id: Option<String>) -> Message {
    Message::Register(Register {
        driver_id: config.driver_id.clone(),
        host: config.host.clone(),
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        test_id,
    })
}

async fn heartbeats(
    bus: Arc<dyn Bus>,
    driver_id: String,
    status: Arc<Mutex<Status>>,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(HEARTBEAT_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for seq in 0u64.. {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.cancelled() => return,
        }
        let now = status.lock().expect("status lock poisoned").clone();
        let beat = Message::Heartbeat(Heartbeat {
            driver_id: driver_id.clone(),
            seq,
            sent_at_ms: unix_ms_now(),
            activity: now.activity,
            test_id: now.test_id,
        });
        // A missed heartbeat is not worth queueing: the next one says the same. (An
        // unreachable bus is the transport's to tell, once.)
        if let Err(err) = bus.publish(&beat).await {
            tracing::debug!(%err, "heartbeat not published");
        }
    }
}

/// When an agent stops trying to deliver: [`FLUSH_GRACE`] after its shutdown, one
/// instant for every publish it still has going (a report in flight and the final one
/// share the grace rather than taking one each).
#[derive(Clone)]
struct GiveUp {
    shutdown: CancellationToken,
    reached: CancellationToken,
}

impl GiveUp {
    /// Counts from the shutdown itself, whenever the first publish looks (on the current
    /// Tokio runtime).
    fn new(shutdown: CancellationToken) -> Self {
        let reached = CancellationToken::new();
        let (from, to) = (shutdown.clone(), reached.clone());
        tokio::spawn(async move {
            from.cancelled().await;
            tokio::time::sleep(FLUSH_GRACE).await;
            to.cancel();
        });
        GiveUp { shutdown, reached }
    }

    /// Resolves at the give-up instant (never, if the agent is not shut down).
    async fn reached(&self) {
        self.reached.cancelled().await;
    }
}

/// Publishes, retrying with backoff until it succeeds or, once the agent shuts down,
/// until it gives up. Whether it went out.
async fn publish(bus: &dyn Bus, message: &Message, give_up: &GiveUp) -> bool {
    let mut backoff = Duration::from_millis(50);
    let deadline = give_up.reached();
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            // The send first: every message is tried at least once, even past the grace.
            biased;
            sent = bus.publish(message) => match sent {
                Ok(()) => return true,
                Err(err) => tracing::debug!(%err, ?backoff, "publish failed; retrying"),
            },
            _ = &mut deadline => return false,
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = &mut deadline => return false,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Converts a wall-clock instant (ms since the epoch) to a monotonic one.
fn instant_at(unix_ms: u64) -> Instant {
    let now_ms = unix_ms_now();
    let now = Instant::now();
    if unix_ms >= now_ms {
        now + Duration::from_millis(unix_ms - now_ms)
    } else {
        now.checked_sub(Duration::from_millis(now_ms - unix_ms))
            .unwrap_or(now)
    }
}

/// Runs one test and reports on it.
async fn execute(
    bus: Arc<dyn Bus>,
    cfg: TestConfig,
    start_at_ms: u64,
    monitor: Arc<SysMonitor>,
    stop: CancellationToken,
    give_up: GiveUp,
) {
    let shutdown = give_up.shutdown.clone();
    let start = instant_at(start_at_ms);
    let mut reporter = Reporter {
        bus: bus.clone(),
        test_id: cfg.test_id.clone(),
        driver_id: cfg.driver_id.clone(),
        health: monitor.probe(),
        seq: 0,
        totals: DriverTotals::default(),
        elapsed_us: 0,
        start_delay_us: None,
        send_lag: None,
        give_up,
    };
    let plan = match Plan::from_spec(&cfg.spec, cfg.driver_index).await {
        Ok(plan) => plan,
        Err(err) => {
            tracing::error!(%err, test_id = %cfg.test_id, "cannot run test");
            reporter.report(Vec::new(), true, true).await;
            return;
        }
    };
    let mut run = engine::start(plan, start, stop.clone());
    // Workers hand over a second's figures when they next complete or idle after it ends;
    // reporting a little after each boundary catches them in that second's report.
    let first = tokio::time::Instant::from_std(start + REPORT_EVERY + REPORT_GRACE);
    let mut ticker = tokio::time::interval_at(first, REPORT_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopping = false;
    let outcome = loop {
        tokio::select! {
            _ = ticker.tick() => {
                let drained = run.drain();
                reporter.start_delay_us = run.start_delay_us();
                reporter.send_lag = run.send_lag();
                reporter.report(drained, false, false).await;
            }
            outcome = run.finished() => break outcome,
            _ = shutdown.cancelled(), if !stopping => {
                run.stop();
                stopping = true;
            }
        }
    };
    let drained = run.drain();
    reporter.start_delay_us = run.start_delay_us();
    reporter.send_lag = run.send_lag();
    reporter.report(drained, true, outcome.stopped).await;
    if reporter.totals.requests != outcome.sent {
        tracing::error!(
            reported = reporter.totals.requests,
            sent = outcome.sent,
            "report totals disagree with requests sent"
        );
    }
}

struct Reporter {
    bus: Arc<dyn Bus>,
    test_id: String,
    driver_id: String,
    health: HealthProbe,
    seq: u64,
    totals: DriverTotals,
    elapsed_us: u64,
    start_delay_us: Option<u64>,
    send_lag: Option<SendLag>,
    give_up: GiveUp,
}

impl Reporter {
    async fn report(&mut self, buckets: Vec<crate::stats::Bucket>, is_final: bool, stopped: bool) {
        for b in &buckets {
            self.totals.requests += b.requests;
            self.totals.errors += b.errors;
            self.elapsed_us = self.elapsed_us.max(b.last_end_us);
        }
        let report = Message::Metrics(MetricsReport {
            test_id: self.test_id.clone(),
            driver_id: self.driver_id.clone(),
            seq: self.seq,
            is_final,
            buckets: buckets.iter().map(|b| b.to_wire()).collect(),
            totals: self.totals.clone(),
            elapsed_ms: self.elapsed_us.div_ceil(1000),
            stopped,
            start_delay_us: self.start_delay_us,
            send_lag: self.send_lag,
            health: self.health.sample(),
        });
        self.seq += 1;
        if !publish(&*self.bus, &report, &self.give_up).await {
            let requests: u64 = buckets.iter().map(|b| b.requests).sum();
            let errors: u64 = buckets.iter().map(|b| b.errors).sum();
            tracing::error!(
                test_id = %self.test_id,
                report = self.seq - 1,
                is_final,
                requests,
                errors,
                sent_in_all = self.totals.requests,
                "report not delivered before shutting down: its requests are lost to the test's results"
            );
        }
    }
}
