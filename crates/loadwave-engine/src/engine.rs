//! Running one driver's share of a test: workers, each with its own connections, taking
//! request numbers from one atomic counter and recording into their thread's recorder.
//!
//! - Avalanche (closed model): a worker sends its next request as soon as its previous
//!   one completed; latency is measured from the send. With a duration, workers stop
//!   taking requests once it has passed.
//! - Ramping Avalanche (closed model with stages): worker *w* sends while the driver's
//!   planned concurrency is above `w + ½`; below it, the worker finishes its request,
//!   closes its connection and waits until the plan needs it again. Connections are
//!   added and retired one at a time as the plan moves.
//! - Tsunami (open model): request *k* is due at `start + k·delay`, or (with `rate` or
//!   `stages`) when the whole test's arrival curve reaches request `k·drivers + index`.
//!   The worker that takes *k* sleeps until the due time if it is early; if every worker
//!   was busy and *k* is taken after its due time, it is sent at once and counted late
//!   (when it waited more than a millisecond for its connection). Either way latency is
//!   measured from the due time, so a stalling target shows up as the queueing delay its
//!   users would feel (coordinated omission corrected, as wrk2 does).
//!
//! - Due times are waited for with a [`Pacer`] (a high-resolution timer), so requests
//!   leave within tens of microseconds of them; that send lag is measured for every paced
//!   request that had a free connection and reported as the driver's own figure.
//! - With a request mix, request *k* is the mix's entry `k` (a smooth weighted cycle),
//!   and a worker keeps one connection per endpoint.
//!
//! Workers run on engine threads, one single-threaded runtime per core the process may
//! use, each worker with its connections and one lazily re-armed timeout timer on one
//! thread. The workers of a thread share its recorder (they take turns on one thread, and
//! recording never awaits), so a mix of M requests keeps M buckets per thread, not M per
//! worker: a thousand connections over a ten-request mix would otherwise hold ten
//! thousand histograms.
//!
//! A stop request ends the sending of new requests; requests already in flight complete
//! and are counted, so a stopped run's counts still match the target's. So does the end
//! of a duration.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use loadwave_proto::{Curve, ErrorKind, Pacing, Profile, SendLag, TestSpec};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::EngineError;
use crate::client::{Connection, Deadline, Outcome, Target, Targets};
use crate::pace::Pacer;
use crate::stats::{Bucket, Pending, Recorder};

/// A request that waited longer than this past its due time for a free connection
/// counts as late.
const LATE_AFTER: Duration = Duration::from_millis(1);

/// How requests are paced.
#[derive(Debug, Clone, PartialEq)]
pub enum Model {
    /// Closed: as fast as the target answers.
    Avalanche,
    /// Closed, ramping: worker `w` sends while the curve (connections per driver) is
    /// above `w + ½`.
    Ramping(Arc<Curve>),
    /// Open: one request every `delay`.
    Tsunami {
        /// Between two consecutive due times.
        delay: Duration,
    },
    /// Open, on the whole test's arrival curve (requests per second): this driver's
    /// request `k` is the test's request `k·drivers + driver`.
    Arrival {
        /// The whole test's rate.
        curve: Arc<Curve>,
        /// This driver's position among the test's drivers.
        driver: u32,
        /// How many drivers share the curve.
        drivers: u32,
    },
}

impl Model {
    /// Whether requests have due times (the open model).
    pub fn is_open(&self) -> bool {
        matches!(self, Model::Tsunami { .. } | Model::Arrival { .. })
    }

    /// The due time of request `k`, if the model has one (and the schedule reaches it).
    pub fn due(&self, start: Instant, k: u64) -> Option<Instant> {
        match self {
            Model::Avalanche | Model::Ramping(_) => None,
            Model::Tsunami { delay } => {
                let nanos = delay.as_nanos().saturating_mul(u128::from(k));
                let offset = Duration::from_nanos(nanos.min(u128::from(u64::MAX)) as u64);
                Some(start + offset)
            }
            Model::Arrival {
                curve,
                driver,
                drivers,
            } => {
                let t = loadwave_proto::profile::arrival_due_s(curve, *driver, *drivers, k)?;
                Some(start + Duration::from_secs_f64(t))
            }
        }
    }
}

/// One driver's work.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The requests to send (one, or a mix).
    pub targets: Arc<Targets>,
    /// The pacing.
    pub model: Model,
    /// How many requests at most (`u64::MAX` when only time bounds the run).
    pub requests: u64,
    /// Closed models: no request is sent once this long has passed since the start.
    /// (Open models end with their schedule, which `requests` already counts.)
    pub duration: Option<Duration>,
    /// Workers (requests in flight at most).
    pub concurrency: u32,
}

impl Plan {
    /// A plan of `requests` requests of one target, without a duration.
    pub fn new(target: Target, model: Model, requests: u64, concurrency: u32) -> Plan {
        Plan {
            targets: Arc::new(Targets::single(target)),
            model,
            requests,
            duration: None,
            concurrency,
        }
    }

    /// The plan a spec asks of its driver number `driver_index`.
    pub async fn from_spec(spec: &TestSpec, driver_index: u32) -> Result<Plan, EngineError> {
        spec.validate().map_err(EngineError::Spec)?;
        if driver_index >= spec.drivers {
            return Err(EngineError::Invalid(format!(
                "driver index {driver_index} (the test has {} drivers)",
                spec.drivers
            )));
        }
        let profile = Profile::of(spec);
        let model = match &profile.pacing {
            Pacing::Closed { .. } => Model::Avalanche,
            Pacing::RampingClosed(curve) => Model::Ramping(Arc::new(curve.clone())),
            Pacing::Delay { delay_s } => Model::Tsunami {
                delay: Duration::from_secs_f64(*delay_s),
            },
            Pacing::Arrival(curve) => Model::Arrival {
                curve: Arc::new(curve.clone()),
                driver: driver_index,
                drivers: profile.drivers,
            },
        };
        let requests = profile
            .planned_requests(driver_index)
            .or(spec.requests_per_driver)
            .unwrap_or(u64::MAX);
        Ok(Plan {
            targets: Arc::new(Targets::new(spec).await?),
            model,
            requests,
            duration: profile.duration_s.map(Duration::from_secs_f64),
            concurrency: profile.workers(spec.concurrency()),
        })
    }
}

/// What a finished run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunOutcome {
    /// Requests sent (and completed: every sent request is waited for).
    pub sent: u64,
    /// Whether the run was stopped before sending everything.
    pub stopped: bool,
}

/// A run in progress.
pub struct RunHandle {
    pending: Arc<Pending>,
    first_send_us: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
    cut_short: Arc<AtomicBool>,
    /// One message per engine thread that ended.
    ended: tokio::sync::mpsc::UnboundedReceiver<()>,
    running: usize,
    stop: CancellationToken,
}

impl RunHandle {
    /// Takes the statistics recorded since the last call.
    pub fn drain(&self) -> Vec<Bucket> {
        self.pending.drain()
    }

    /// The send lag of the paced requests so far (open model only).
    pub fn send_lag(&self) -> Option<SendLag> {
        self.pending.send_lag()
    }

    /// How long after the start instant the first request went out, once one did.
    pub fn start_delay_us(&self) -> Option<u64> {
        match self.first_send_us.load(Ordering::Relaxed) {
            u64::MAX => None,
            us => Some(us),
        }
    }

    /// Stops sending new requests.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Waits for the run to end. Cancel-safe; call it until it returns once.
    pub async fn finished(&mut self) -> RunOutcome {
        while self.running > 0 {
            if self.ended.recv().await.is_none() {
                break;
            }
            self.running -= 1;
        }
        RunOutcome {
            sent: self.sent.load(Ordering::Relaxed),
            stopped: self.cut_short.load(Ordering::Relaxed),
        }
    }
}

/// How many engine threads a run of `workers` workers gets: one per core the process may
/// use (its affinity and CPU quota count), never more than the workers.
/// `LOADWAVE_ENGINE_THREADS` overrides it.
fn engine_threads(workers: u64) -> usize {
    let cores = std::env::var("LOADWAVE_ENGINE_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    cores.min(workers.max(1) as usize)
}

thread_local! {
    /// The engine thread's recorder, shared by the workers on the thread; set while the
    /// thread runs them.
    static RECORDER: RefCell<Option<Recorder>> = const { RefCell::new(None) };
}

/// Runs `f` on this engine thread's recorder.
#[inline]
fn recorder<R>(f: impl FnOnce(&mut Recorder) -> R) -> R {
    RECORDER.with_borrow_mut(|r| f(r.as_mut().expect("set while the thread runs workers")))
}

/// Sends a message when dropped, so a thread that panics is still counted as ended.
struct EndSignal(tokio::sync::mpsc::UnboundedSender<()>);

impl Drop for EndSignal {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

/// Starts `plan` so that its first requests go out at `start`.
///
/// The workers run on engine threads of their own, one single-threaded runtime per core:
/// a worker's connection, timer and recorder stay on one thread, and a response wakes
/// its worker without crossing threads or touching a shared run queue. The caller's
/// runtime only drains the statistics.
pub fn start(plan: Plan, start: Instant, stop: CancellationToken) -> RunHandle {
    let pending = Arc::new(Pending::default());
    let next = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let first_send_us = Arc::new(AtomicU64::new(u64::MAX));
    let cut_short = Arc::new(AtomicBool::new(false));
    let workers = u64::from(plan.concurrency).min(plan.requests);
    let threads = engine_threads(workers);
    let (tx, ended) = tokio::sync::mpsc::unbounded_channel();
    let mut running = 0;
    for t in 0..threads {
        let shared = Shared {
            plan: plan.clone(),
            start,
            next: next.clone(),
            sent: sent.clone(),
            pending: pending.clone(),
            first_send_us: first_send_us.clone(),
            cut_short: cut_short.clone(),
            stop: stop.clone(),
        };
        // Workers t, t + threads, t + 2·threads, … run on thread t.
        let count = (workers + threads as u64 - 1 - t as u64) / threads as u64;
        let first_worker = t as u64;
        let stride = threads as u64;
        let signal = EndSignal(tx.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("loadwave-engine-{t}"))
            .spawn(move || {
                let _signal = signal;
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(err) => {
                        tracing::error!(%err, "cannot start an engine thread's runtime");
                        return;
                    }
                };
                let targets = &shared.plan.targets;
                let thread_recorder = Recorder::with_requests(
                    shared.start,
                    shared.pending.clone(),
                    targets.len(),
                    targets.is_mix(),
                );
                RECORDER.set(Some(thread_recorder));
                runtime.block_on(async move {
                    let mut set = JoinSet::new();
                    for i in 0..count {
                        let w = first_worker + i * stride;
                        set.spawn(worker(shared.clone(), w.min(u64::from(u32::MAX)) as u32));
                    }
                    while let Some(joined) = set.join_next().await {
                        if let Err(err) = joined {
                            tracing::error!(%err, "load worker failed");
                        }
                    }
                });
                // Dropping it flushes what it holds, before the thread counts as ended.
                drop(RECORDER.take());
            });
        match spawned {
            Ok(_) => running += 1,
            Err(err) => tracing::error!(%err, "cannot start an engine thread"),
        }
    }
    RunHandle {
        pending,
        first_send_us,
        sent,
        cut_short,
        ended,
        running,
        stop,
    }
}

/// What every worker of a run shares.
#[derive(Clone)]
struct Shared {
    plan: Plan,
    start: Instant,
    next: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
    pending: Arc<Pending>,
    first_send_us: Arc<AtomicU64>,
    /// Set by a worker that left because of the stop, with work left to do.
    cut_short: Arc<AtomicBool>,
    stop: CancellationToken,
}

/// Worker number `w` of the driver.
async fn worker(shared: Shared, w: u32) {
    let Shared {
        plan,
        start,
        next,
        sent,
        pending: _,
        first_send_us,
        cut_short,
        stop,
    } = shared;
    let targets = &*plan.targets;
    let endpoint_targets = targets.endpoint_targets();
    let mut conns: Vec<Connection> = endpoint_targets
        .iter()
        .map(|t| Connection::new(t))
        .collect();
    let mut deadline = Deadline::new();
    let open = plan.model.is_open();
    let ramp = match &plan.model {
        Model::Ramping(curve) => Some(curve.clone()),
        _ => None,
    };
    // Worker w is needed while the planned concurrency rounds to more than w.
    let level = f64::from(w) + 0.5;
    let end_at = plan.duration.map(|d| start + d);
    let mut pacer = Pacer::new();
    let start_at = tokio::time::Instant::from_std(start);
    let needed_at_start = ramp.as_ref().is_none_or(|c| c.at(0.0) > level);
    if Instant::now() < start && needed_at_start {
        tokio::select! {
            _ = async {
                for (conn, target) in conns.iter_mut().zip(&endpoint_targets) {
                    conn.warm_up(target).await;
                }
            } => {}
            _ = tokio::time::sleep_until(start_at) => {}
        }
    }
    tokio::select! {
        _ = pacer.wait_until(start) => {}
        _ = stop.cancelled() => {
            cut_short.store(true, Ordering::Relaxed);
            return;
        }
    }
    // When this worker's connection last became free: a request due before that had to
    // wait for it.
    let mut free_since = start;
    let mut first = true;
    loop {
        if stop.is_cancelled() {
            // Cut short only if work was left: a stop that comes as the last request
            // completes (or as the duration ends) stops nothing.
            let left = next.load(Ordering::Relaxed) < plan.requests
                && end_at.is_none_or(|end| Instant::now() < end);
            if left {
                cut_short.store(true, Ordering::Relaxed);
            }
            break;
        }
        // The ramping model reads the clock here; its closed-model send time reuses it.
        let mut ramp_now = None;
        if let Some(curve) = &ramp {
            let now = Instant::now();
            ramp_now = Some(now);
            let t = now.saturating_duration_since(start).as_secs_f64();
            if curve.at(t) <= level {
                // Not needed now: retire the connection until the plan needs it again.
                recorder(Recorder::flush);
                for conn in &mut conns {
                    conn.disconnect();
                }
                let Some(again) = curve.next_above(t, level) else {
                    break;
                };
                let again = start + Duration::from_secs_f64(again.max(t + 0.001));
                tokio::select! {
                    _ = tokio::time::sleep_until(again.into()) => {}
                    _ = stop.cancelled() => {
                        cut_short.store(true, Ordering::Relaxed);
                        break;
                    }
                }
                continue;
            }
        }
        let k = next.fetch_add(1, Ordering::Relaxed);
        if k >= plan.requests {
            break;
        }
        let (from, late, queued) = if open {
            let Some(due) = plan.model.due(start, k) else {
                break;
            };
            let now = Instant::now();
            if due > now {
                recorder(|r| r.flush_if_stale(now));
                tokio::select! {
                    _ = pacer.wait_until(due) => {}
                    _ = stop.cancelled() => {
                        cut_short.store(true, Ordering::Relaxed);
                        break;
                    }
                }
            }
            let waited = free_since.saturating_duration_since(due);
            (due, waited > LATE_AFTER, waited > Duration::ZERO)
        } else {
            let now = ramp_now.unwrap_or_else(Instant::now);
            if end_at.is_some_and(|end| now >= end) {
                break;
            }
            (now, false, false)
        };
        let sent_at = if open { Instant::now() } else { from };
        if first {
            first = false;
            let us = sent_at.saturating_duration_since(start).as_micros() as u64;
            first_send_us.fetch_min(us, Ordering::Relaxed);
        }
        if open && !queued {
            recorder(|r| r.record_send_lag(sent_at.saturating_duration_since(from)));
        }
        let r = targets.pick(k);
        let target = targets.get(r);
        let conn = &mut conns[targets.endpoint_of(r)];
        let outcome = deadline
            .run(sent_at + target.timeout(), conn.send(target))
            .await
            .unwrap_or(Outcome::Error(ErrorKind::Timeout));
        sent.fetch_add(1, Ordering::Relaxed);
        let end = Instant::now();
        free_since = end;
        recorder(|rec| rec.record_request(r, outcome, from, sent_at, end, late));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsunami_due_times_follow_the_schedule() {
        let start = Instant::now();
        let model = Model::Tsunami {
            delay: Duration::from_micros(2500),
        };
        assert_eq!(model.due(start, 0), Some(start));
        assert_eq!(
            model.due(start, 1),
            Some(start + Duration::from_micros(2500))
        );
        assert_eq!(model.due(start, 400), Some(start + Duration::from_secs(1)));
        assert_eq!(Model::Avalanche.due(start, 7), None);
    }

    #[test]
    fn arrival_due_times_interleave_the_drivers() {
        let start = Instant::now();
        let curve = Arc::new(Curve::flat(1000.0, Some(1.0)));
        let model = |driver| Model::Arrival {
            curve: curve.clone(),
            driver,
            drivers: 4,
        };
        // The test's request j is due at j ms; driver 2 takes 2, 6, 10, ….
        let due = |d: u32, k: u64| model(d).due(start, k).unwrap().duration_since(start);
        assert_eq!(due(2, 0), Duration::from_millis(2));
        assert_eq!(due(2, 2), Duration::from_millis(10));
        assert_eq!(due(0, 1), Duration::from_millis(4));
        assert!(
            model(0).due(start, 250).is_none(),
            "past the end of the curve"
        );
    }

    #[test]
    fn fractional_delays_do_not_drift() {
        let start = Instant::now();
        let model = Model::Tsunami {
            delay: Duration::from_secs_f64(0.1 / 1000.0),
        };
        // 10k requests at 0.1 ms are due exactly one second in, not a rounding error off.
        let due = model.due(start, 10_000).unwrap();
        assert_eq!(due.duration_since(start), Duration::from_secs(1));
    }
}
