//! Whether the bus can be reached, said once and then quietly.
//!
//! A transport reports what it sees ([`BusHealth::down`] on every failed probe or client
//! error, [`BusHealth::up`] when the broker answers again); the people reading the log
//! get one WARN line when the bus becomes unreachable, a reminder at most every
//! [`REMIND_EVERY`] while it stays so (saying for how long), and one INFO line when it
//! returns. Everything else a client library says about the outage belongs at debug.
//! Health and readiness endpoints read [`BusHealth::state`].

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// At most one line about an ongoing outage this often.
pub const REMIND_EVERY: Duration = Duration::from_secs(30);

/// The bus's state as health checks show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BusState {
    /// Whether the broker answered lately.
    pub reachable: bool,
    /// Since when (ms since the epoch) it has been in this state.
    pub since_ms: u64,
}

impl BusState {
    /// How long it has been in this state at `now_ms`.
    pub fn for_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.since_ms)
    }
}

#[derive(Debug)]
struct Inner {
    reachable: bool,
    since: Instant,
    since_ms: u64,
    /// When the outage was last written to the log.
    noted: Instant,
}

/// One process's view of its bus.
#[derive(Debug)]
pub struct BusHealth {
    /// What the bus is, for log lines: `Kafka at 127.0.0.1:9092`.
    what: String,
    inner: Mutex<Inner>,
}

impl BusHealth {
    /// A bus believed reachable (it was, to be built).
    pub fn new(what: impl Into<String>) -> Self {
        let now = Instant::now();
        BusHealth {
            what: what.into(),
            inner: Mutex::new(Inner {
                reachable: true,
                since: now,
                since_ms: loadwave_proto::unix_ms_now(),
                noted: now,
            }),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The transport could not reach the broker (a failed probe, a client error).
    pub fn down(&self, reason: &str) {
        let mut s = self.inner();
        let now = Instant::now();
        if s.reachable {
            s.reachable = false;
            s.since = now;
            s.since_ms = loadwave_proto::unix_ms_now();
            s.noted = now;
            tracing::warn!(bus = %self.what, %reason, "the bus is unreachable; work goes on and what is to be sent waits for it");
        } else if now.duration_since(s.noted) >= REMIND_EVERY {
            s.noted = now;
            let secs = now.duration_since(s.since).as_secs();
            tracing::warn!(bus = %self.what, %reason, unreachable_s = secs, "the bus is still unreachable");
        } else {
            tracing::debug!(bus = %self.what, %reason, "bus still unreachable");
        }
    }

    /// The broker answered.
    pub fn up(&self) {
        let mut s = self.inner();
        if !s.reachable {
            let secs = s.since.elapsed().as_secs_f64();
            s.reachable = true;
            s.since = Instant::now();
            s.since_ms = loadwave_proto::unix_ms_now();
            tracing::info!(bus = %self.what, unreachable_s = format!("{secs:.1}"), "the bus is reachable again");
        }
    }

    /// The current state.
    pub fn state(&self) -> BusState {
        let s = self.inner();
        BusState {
            reachable: s.reachable,
            since_ms: s.since_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_of_state_are_told_once() {
        let h = BusHealth::new("test bus");
        assert!(h.state().reachable);
        h.up();
        h.down("connection refused");
        let down = h.state();
        assert!(!down.reachable);
        // Repeated failures change nothing.
        h.down("timed out");
        assert_eq!(h.state(), down);
        h.up();
        assert!(h.state().reachable);
    }
}
