//! A driver watching itself: CPU use and scheduling lag, so a saturated driver is flagged
//! instead of silently sending less load than asked.
//!
//! A ticker asks to wake every 10 ms and measures how late it wakes: on a runtime whose
//! threads are all busy, that lag grows before throughput visibly drops. CPU time comes
//! from `getrusage`. Every second the figures of the last second are published.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use loadwave_proto::DriverHealth;

const TICK: Duration = Duration::from_millis(10);
const WINDOW: Duration = Duration::from_secs(1);
/// A driver using more than this share of its cores has no headroom left.
const SATURATED_CPU_SHARE: f64 = 0.9;
/// A mean wake-up lag above this means tasks wait for a thread: requests go out late.
const SATURATED_LAG_MS: f64 = 5.0;

/// Publishes the driver's health over the last second.
#[derive(Debug, Default)]
pub struct SysMonitor {
    latest: Mutex<DriverHealth>,
}

impl SysMonitor {
    /// Starts the monitor on the current Tokio runtime. It stops when the last handle is
    /// dropped.
    pub fn spawn() -> Arc<SysMonitor> {
        let monitor = Arc::new(SysMonitor::default());
        tokio::spawn(watch(Arc::downgrade(&monitor)));
        monitor
    }

    /// The figures of the last complete second.
    pub fn health(&self) -> DriverHealth {
        self.latest.lock().expect("health lock poisoned").clone()
    }
}

async fn watch(monitor: Weak<SysMonitor>) {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    let mut window_start = Instant::now();
    let mut cpu_start = cpu_time();
    let (mut lag_sum, mut lag_max, mut ticks) = (Duration::ZERO, Duration::ZERO, 0u32);
    let mut expected = Instant::now() + TICK;
    loop {
        tokio::time::sleep_until(tokio::time::Instant::from_std(expected)).await;
        let now = Instant::now();
        let lag = now.saturating_duration_since(expected);
        lag_sum += lag;
        lag_max = lag_max.max(lag);
        ticks += 1;
        expected = now + TICK;
        let elapsed = now.duration_since(window_start);
        if elapsed < WINDOW {
            continue;
        }
        let Some(monitor) = monitor.upgrade() else {
            return;
        };
        let cpu = cpu_time();
        let cpu_percent =
            100.0 * (cpu.saturating_sub(cpu_start)).as_secs_f64() / elapsed.as_secs_f64();
        let lag_ms_mean = lag_sum.as_secs_f64() * 1000.0 / f64::from(ticks.max(1));
        let health = DriverHealth {
            cpu_percent: round2(cpu_percent),
            cores,
            lag_ms_mean: round2(lag_ms_mean),
            lag_ms_max: round2(lag_max.as_secs_f64() * 1000.0),
            saturated: cpu_percent >= SATURATED_CPU_SHARE * 100.0 * f64::from(cores)
                || lag_ms_mean >= SATURATED_LAG_MS,
        };
        *monitor.latest.lock().expect("health lock poisoned") = health;
        window_start = now;
        cpu_start = cpu;
        (lag_sum, lag_max, ticks) = (Duration::ZERO, Duration::ZERO, 0);
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
        let health = monitor.health();
        assert!(health.cores >= 1);
        assert!(health.cpu_percent > 40.0, "{health:?}");
    }
}
