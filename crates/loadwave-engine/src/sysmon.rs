//! A driver watching itself: CPU use and scheduling lag, so a saturated driver is flagged
//! instead of silently sending less load than asked.
//!
//! A ticker asks to wake every 10 ms and measures how late it wakes: on a runtime whose
//! threads are all busy, that lag grows before throughput visibly drops. CPU time comes
//! from `getrusage`. Each reader ([`HealthProbe`]) gets the figures since its last read.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use loadwave_proto::DriverHealth;

const TICK: Duration = Duration::from_millis(10);
/// Lag maxima are kept per window of this length; a sample reports the maximum of the
/// current and the previous window.
const WINDOW: Duration = Duration::from_secs(1);
/// A driver using more than this share of its cores has no headroom left.
const SATURATED_CPU_SHARE: f64 = 0.9;
/// A mean wake-up lag above this means tasks wait for a thread: requests go out late.
const SATURATED_LAG_MS: f64 = 5.0;

/// Running totals kept by the ticker; readers take differences.
#[derive(Debug, Clone, Copy)]
struct Totals {
    at: Instant,
    cpu: Duration,
    lag_sum: Duration,
    ticks: u64,
    lag_max_window: Duration,
    lag_max_previous: Duration,
}

/// Watches the process; hand out [`HealthProbe`]s to read it.
#[derive(Debug)]
pub struct SysMonitor {
    totals: Mutex<Totals>,
    cores: u32,
}

impl SysMonitor {
    /// Starts the monitor on the current Tokio runtime. It stops when the last handle is
    /// dropped.
    pub fn spawn() -> Arc<SysMonitor> {
        let monitor = Arc::new(SysMonitor {
            totals: Mutex::new(Totals {
                at: Instant::now(),
                cpu: cpu_time(),
                lag_sum: Duration::ZERO,
                ticks: 0,
                lag_max_window: Duration::ZERO,
                lag_max_previous: Duration::ZERO,
            }),
            cores: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
        });
        tokio::spawn(watch(Arc::downgrade(&monitor)));
        monitor
    }

    fn totals(&self) -> Totals {
        let mut t = *self.totals.lock().expect("monitor lock poisoned");
        t.at = Instant::now();
        t.cpu = cpu_time();
        t
    }

    /// A reader that reports health since its previous reading (or its creation).
    pub fn probe(self: &Arc<Self>) -> HealthProbe {
        HealthProbe {
            monitor: self.clone(),
            last: self.totals(),
        }
    }
}

/// Reads a [`SysMonitor`]: each [`HealthProbe::sample`] covers the time since the last.
#[derive(Debug)]
pub struct HealthProbe {
    monitor: Arc<SysMonitor>,
    last: Totals,
}

impl HealthProbe {
    /// Health since the previous sample.
    pub fn sample(&mut self) -> DriverHealth {
        let now = self.monitor.totals();
        let elapsed = now.at.duration_since(self.last.at).as_secs_f64().max(1e-6);
        let cpu_percent = 100.0 * now.cpu.saturating_sub(self.last.cpu).as_secs_f64() / elapsed;
        let ticks = now.ticks.saturating_sub(self.last.ticks);
        let lag_ms_mean = if ticks == 0 {
            0.0
        } else {
            now.lag_sum.saturating_sub(self.last.lag_sum).as_secs_f64() * 1000.0 / ticks as f64
        };
        let lag_max = now.lag_max_window.max(now.lag_max_previous);
        self.last = now;
        let cores = self.monitor.cores;
        DriverHealth {
            cpu_percent: round2(cpu_percent),
            cores,
            lag_ms_mean: round2(lag_ms_mean),
            lag_ms_max: round2(lag_max.as_secs_f64() * 1000.0),
            saturated: cpu_percent >= SATURATED_CPU_SHARE * 100.0 * f64::from(cores)
                || lag_ms_mean >= SATURATED_LAG_MS,
        }
    }
}

async fn watch(monitor: Weak<SysMonitor>) {
    let mut window_start = Instant::now();
    let mut expected = Instant::now() + TICK;
    loop {
        tokio::time::sleep_until(tokio::time::Instant::from_std(expected)).await;
        let now = Instant::now();
        let lag = now.saturating_duration_since(expected);
        expected = now + TICK;
        let Some(monitor) = monitor.upgrade() else {
            return;
        };
        let mut t = monitor.totals.lock().expect("monitor lock poisoned");
        t.lag_sum += lag;
        t.ticks += 1;
        if now.duration_since(window_start) >= WINDOW {
            t.lag_max_previous = t.lag_max_window;
            t.lag_max_window = Duration::ZERO;
            window_start = now;
        }
        t.lag_max_window = t.lag_max_window.max(lag);
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// User plus system CPU time of this process.
#[cfg(unix)]
fn cpu_time() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we pass and reads nothing else.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return Duration::ZERO;
        }
        usage
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

#[cfg(not(unix))]
fn cpu_time() -> Duration {
    Duration::ZERO
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reports_cpu_burnt_by_a_busy_thread() {
        let monitor = SysMonitor::spawn();
        let mut probe = monitor.probe();
        let busy = std::thread::spawn(|| {
            let end = Instant::now() + Duration::from_millis(1300);
            let mut x = 0u64;
            while Instant::now() < end {
                x = x.wrapping_add(1);
            }
            x
        });
        tokio::time::sleep(Duration::from_millis(1200)).await;
        busy.join().unwrap();
        let health = probe.sample();
        assert!(health.cores >= 1);
        assert!(health.cpu_percent > 40.0, "{health:?}");
    }
}
