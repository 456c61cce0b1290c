//! Running one driver's share of a test: `concurrency` workers, each with its own
//! connection and recorder, taking request numbers from one atomic counter.
//!
//! - Avalanche (closed model): a worker sends its next request as soon as its previous
//!   one completed; latency is measured from the send.
//! - Tsunami (open model): request *k* is due at `start + k·delay`. The worker that takes
//!   *k* sleeps until the due time if it is early; if every worker was busy and *k* is
//!   taken after its due time, it is sent at once and counted late (when it waited more
//!   than a millisecond for its connection). Either way latency is
//!   measured from the due time, so a stalling target shows up as the queueing delay its
//!   users would feel (coordinated omission corrected, as wrk2 does).
//!
//! - Due times are waited for with a [`Pacer`] (a high-resolution timer), so requests
//!   leave within tens of microseconds of them; that send lag is measured for every paced
//!   request that had a free connection and reported as the driver's own figure.
//!
//! Workers run on engine threads, one single-threaded runtime per core the process may
//! use, each worker with its connection, one lazily re-armed timeout timer and its
//! recorder on one thread.
//!
//! A stop request ends the sending of new requests; requests already in flight complete
//! and are counted, so a stopped run's counts still match the target's.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use loadwave_proto::{ErrorKind, SendLag, TestSpec, TestType};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::EngineError;
use crate::client::{Connection, Deadline, Outcome, Target};
use crate::pace::Pacer;
use crate::stats::{Bucket, Pending, Recorder};

/// A request that waited longer than this past its due time for a free connection
/// counts as late.
const LATE_AFTER: Duration = Duration::from_millis(1);

/// How requests are paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    /// Closed: as fast as the target answers.
    Avalanche,
    /// Open: one request every `delay`.
    Tsunami {
        /// Between two consecutive due times.
        delay: Duration,
    },
}

impl Model {
    /// The due time of request `k`, if the model has one.
    pub fn due(self, start: Instant, k: u64) -> Option<Instant> {
        match self {
            Model::Avalanche => None,
            Model::Tsunami { delay } => {
                let nanos = delay.as_nanos().saturating_mul(u128::from(k));
                let offset = Duration::from_nanos(nanos.min(u128::from(u64::MAX)) as u64);
                Some(start + offset)
            }
        }
    }
}

/// One driver's work.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The request to send.
    pub target: Arc<Target>,
    /// The pacing.
    pub model: Model,
    /// How many requests in total.
    pub requests: u64,
    /// Workers (connections, requests in flight at most).
    pub concurrency: u32,
}

impl Plan {
    /// The plan a spec asks of each of its drivers.
    pub async fn from_spec(spec: &TestSpec) -> Result<Plan, EngineError> {
        spec.validate().map_err(EngineError::Spec)?;
        let model = match spec.test_type {
            TestType::Avalanche => Model::Avalanche,
            TestType::Tsunami => {
                let ms = spec.delay_ms.unwrap_or(0.0);
                Model::Tsunami {
                    delay: Duration::from_secs_f64(ms / 1000.0),
                }
            }
        };
        Ok(Plan {
            target: Arc::new(Target::new(spec).await?),
            model,
            requests: spec.requests_per_driver,
            concurrency: spec.concurrency,
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
    requests: u64,
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
        let sent = self.sent.load(Ordering::Relaxed);
        RunOutcome {
            sent,
            stopped: sent < self.requests,
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
            stop: stop.clone(),
        };
        // Workers t, t + threads, t + 2·threads, … run on thread t.
        let count = (workers + threads as u64 - 1 - t as u64) / threads as u64;
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
                runtime.block_on(async move {
                    let mut set = JoinSet::new();
                    for _ in 0..count {
                        set.spawn(worker(shared.clone()));
                    }
                    while let Some(joined) = set.join_next().await {
                        if let Err(err) = joined {
                            tracing::error!(%err, "load worker failed");
                        }
                    }
                });
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
        requests: plan.requests,
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
    stop: CancellationToken,
}

async fn worker(shared: Shared) {
    let Shared {
        plan,
        start,
        next,
        sent,
        pending,
        first_send_us,
        stop,
    } = shared;
    let target = &*plan.target;
    let mut conn = Connection::new(target);
    let mut deadline = Deadline::new();
    let paced = matches!(plan.model, Model::Tsunami { .. });
    let mut pacer = Pacer::new();
    let mut recorder = Recorder::new(start, pending);
    let start_at = tokio::time::Instant::from_std(start);
    if Instant::now() < start {
        tokio::select! {
            _ = conn.warm_up(target) => {}
            _ = tokio::time::sleep_until(start_at) => {}
        }
    }
    tokio::select! {
        _ = pacer.wait_until(start) => {}
        _ = stop.cancelled() => return,
    }
    // When this worker's connection last became free: a request due before that had to
    // wait for it.
    let mut free_since = start;
    let mut first = true;
    loop {
        if stop.is_cancelled() {
            break;
        }
        let k = next.fetch_add(1, Ordering::Relaxed);
        if k >= plan.requests {
            break;
        }
        let (from, late, queued) = match plan.model.due(start, k) {
            None => (Instant::now(), false, false),
            Some(due) => {
                let now = Instant::now();
                if due > now {
                    recorder.flush_if_stale(now);
                    tokio::select! {
                        _ = pacer.wait_until(due) => {}
                        _ = stop.cancelled() => break,
                    }
                }
                let waited = free_since.saturating_duration_since(due);
                (due, waited > LATE_AFTER, waited > Duration::ZERO)
            }
        };
        let sent_at = Instant::now();
        if first {
            first = false;
            let us = sent_at.saturating_duration_since(start).as_micros() as u64;
            first_send_us.fetch_min(us, Ordering::Relaxed);
        }
        if paced && !queued {
            recorder.record_send_lag(sent_at.saturating_duration_since(from));
        }
        let outcome = deadline
            .run(sent_at + target.timeout(), conn.send(target))
            .await
            .unwrap_or(Outcome::Error(ErrorKind::Timeout));
        sent.fetch_add(1, Ordering::Relaxed);
        let end = Instant::now();
        free_since = end;
        recorder.record(outcome, from, end, late);
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
