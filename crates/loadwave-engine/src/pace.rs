//! Waiting for an open-model request's due time to within tens of microseconds.
//!
//! Tokio's timer wheel ticks in milliseconds and rounds deadlines up, so a request woken
//! by it leaves up to a millisecond after its due time; measured from the due time, that
//! error would be counted as the target's latency. A [`Pacer`] waits on a `timerfd` of
//! its own instead (Linux high-resolution timers, delivered through the same epoll loop
//! as the sockets, so nothing else on the runtime is held up): it is armed a little
//! before the due time and the last few microseconds are spun. How early is learnt from
//! the wake-ups themselves: a little more than they usually take, jumping up after a
//! late one. Waiting costs two system calls and no busy core; only the final spin burns
//! CPU, tens of microseconds per request at most.
//!
//! Elsewhere (or if a `timerfd` cannot be made) the coarse timer takes the wait to within
//! a millisecond and the rest is spun, yielding to other tasks between checks.

use std::time::{Duration, Instant};

/// How long before the due time the timer is first armed; the rest is spun. It covers
/// the wake-up of an idle thread (timer interrupt, epoll, the task's poll), which is a
/// few microseconds on bare metal and tens in a virtual machine.
const EARLY: Duration = Duration::from_micros(100);
/// Bounds of the learnt lead.
const EARLY_MIN: Duration = Duration::from_micros(20);
const EARLY_MAX: Duration = Duration::from_micros(500);
/// Margin kept above the wake-ups seen.
const MARGIN: Duration = Duration::from_micros(10);

/// Waits for due times, one at a time.
pub struct Pacer {
    #[cfg(target_os = "linux")]
    timer: Option<linux::TimerFd>,
    /// How long before a due time the timer is armed: learnt from how late wake-ups
    /// come, so the spin stays short where wake-ups are quick.
    early: Duration,
}

impl Pacer {
    /// A pacer on the current Tokio runtime (its I/O driver must be enabled).
    pub fn new() -> Self {
        Pacer {
            #[cfg(target_os = "linux")]
            timer: match linux::TimerFd::new() {
                Ok(timer) => Some(timer),
                Err(err) => {
                    tracing::warn!(%err, "no timerfd; pacing falls back to the coarse timer");
                    None
                }
            },
            early: EARLY,
        }
    }

    /// Folds in one wake-up `late` after the time asked: the lead jumps up to cover a
    /// late one at once and decays slowly towards the usual ones.
    fn learn(&mut self, late: Duration) {
        let want = late + MARGIN;
        self.early = if want > self.early {
            want
        } else {
            self.early - (self.early - want) / 32
        }
        .clamp(EARLY_MIN, EARLY_MAX);
    }

    /// Returns at `due` (or at once if it has passed). Cancel-safe.
    pub async fn wait_until(&mut self, due: Instant) {
        let now = Instant::now();
        if due <= now {
            return;
        }
        let wake = due.checked_sub(self.early).unwrap_or(due);
        if wake > now {
            #[cfg(target_os = "linux")]
            if let Some(timer) = &mut self.timer {
                if timer.wait(wake - now).await.is_ok() {
                    self.learn(Instant::now().saturating_duration_since(wake));
                    spin_until(due);
                    return;
                }
                self.timer = None;
            }
            coarse_wait(wake).await;
        }
        spin_until(due);
    }
}

impl Default for Pacer {
    fn default() -> Self {
        Pacer::new()
    }
}

/// Tokio's timer to within a millisecond of `until`, then short sleeps by yielding.
async fn coarse_wait(until: Instant) {
    if let Some(early) = until.checked_sub(Duration::from_millis(1))
        && early > Instant::now()
    {
        tokio::time::sleep_until(early.into()).await;
    }
    while Instant::now() < until {
        tokio::task::yield_now().await;
    }
}

/// Busy-waits the last stretch (at most the learnt lead when called after a timer).
fn spin_until(due: Instant) {
    while Instant::now() < due {
        std::hint::spin_loop();
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::time::Duration;

    use tokio::io::unix::AsyncFd;

    /// A non-blocking monotonic `timerfd`, registered with the runtime's epoll.
    pub(super) struct TimerFd {
        fd: AsyncFd<OwnedFd>,
    }

    impl TimerFd {
        pub(super) fn new() -> io::Result<Self> {
            // SAFETY: plain system call; the descriptor it returns is owned below.
            let raw = unsafe {
                libc::timerfd_create(
                    libc::CLOCK_MONOTONIC,
                    libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
                )
            };
            if raw < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `raw` is a fresh descriptor nothing else owns.
            let owned = unsafe { OwnedFd::from_raw_fd(raw) };
            // SAFETY: the descriptor is owned by the AsyncFd and neither replaced nor
            // closed while registered.
            let fd =
                unsafe { AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE) }
                    .map_err(io::Error::from)?;
            Ok(TimerFd { fd })
        }

        /// Arms the timer `after` from now and waits for it to expire.
        pub(super) async fn wait(&mut self, after: Duration) -> io::Result<()> {
            let spec = libc::itimerspec {
                it_interval: libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                },
                it_value: libc::timespec {
                    tv_sec: after.as_secs() as libc::time_t,
                    // A zero value would disarm the timer.
                    tv_nsec: after.subsec_nanos().max(1) as libc::c_long,
                },
            };
            // SAFETY: valid descriptor and a properly initialised itimerspec.
            let rc = unsafe {
                libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut())
            };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
            loop {
                let mut guard = self.fd.readable().await?;
                let mut expirations = 0u64;
                // SAFETY: reads 8 bytes into a u64 on a valid descriptor.
                let n = unsafe {
                    libc::read(
                        guard.get_inner().as_raw_fd(),
                        (&mut expirations as *mut u64).cast(),
                        std::mem::size_of::<u64>(),
                    )
                };
                if n == 8 {
                    return Ok(());
                }
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::WouldBlock {
                    // Readiness left over from an earlier, abandoned wait.
                    guard.clear_ready();
                    continue;
                }
                return Err(err);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn waits_end_at_the_due_time_not_before() {
        let mut pacer = Pacer::new();
        let start = Instant::now();
        for i in 1..=20u32 {
            let due = start + Duration::from_micros(700) * i;
            pacer.wait_until(due).await;
            assert!(Instant::now() >= due, "woke before the due time");
        }
        // A due time in the past returns at once.
        pacer.wait_until(start).await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_abandoned_wait_does_not_cut_the_next_short() {
        let mut pacer = Pacer::new();
        let first = Instant::now() + Duration::from_millis(1);
        let _ = tokio::time::timeout(Duration::from_micros(100), pacer.wait_until(first)).await;
        tokio::time::sleep(Duration::from_millis(3)).await;
        let due = Instant::now() + Duration::from_millis(2);
        pacer.wait_until(due).await;
        assert!(Instant::now() >= due);
    }
}
