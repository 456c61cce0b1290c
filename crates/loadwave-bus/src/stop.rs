//! Stopping a process when asked, in bounded time, whatever its bus is doing.
//!
//! Every loadwave process stops the same way: the first SIGTERM or Ctrl-C starts a
//! graceful stop (in-flight work finishes, state is written, what can be sent is sent)
//! and arms a deadline; if the process is still there [`STOP_DEADLINE`] later it exits
//! anyway, saying so. A second signal exits at once. Nothing therefore waits on a
//! broker that is gone, or on a client library's own timeouts (librdkafka keeps
//! messages for minutes).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::Bus;

/// How long a graceful stop may take before the process exits regardless: under the
/// 10 s that container runtimes (ECS, Docker) give between SIGTERM and SIGKILL.
pub const STOP_DEADLINE: Duration = Duration::from_secs(9);

/// SIGTERM and Ctrl-C (SIGINT), as one stream.
pub struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Starts listening (on the current Tokio runtime).
    pub fn new() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Signals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// The next signal's name.
    pub async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}

/// Watches for SIGTERM and Ctrl-C in the background: the first cancels `stop` and arms
/// the deadline ([`arm_deadline`]); a second exits at once with `code`.
pub fn on_signals(stop: CancellationToken, code: i32) -> std::io::Result<()> {
    let mut signals = Signals::new()?;
    tokio::spawn(async move {
        let first = signals.next().await;
        tracing::info!(
            signal = first,
            deadline_s = STOP_DEADLINE.as_secs(),
            "stopping; a second signal exits at once"
        );
        stop.cancel();
        arm_deadline(code);
        let second = signals.next().await;
        tracing::warn!(signal = second, "second signal: exiting now");
        std::process::exit(code);
    });
    Ok(())
}

/// Exits the process with `code` if it is still running [`STOP_DEADLINE`] from now.
/// A thread of its own, so a blocked runtime cannot hold it up.
pub fn arm_deadline(code: i32) {
    let spawned = std::thread::Builder::new()
        .name("loadwave-stop-deadline".into())
        .spawn(move || {
            std::thread::sleep(STOP_DEADLINE);
            tracing::error!(
                deadline_s = STOP_DEADLINE.as_secs(),
                "did not stop within the deadline; exiting"
            );
            std::process::exit(code);
        });
    if let Err(err) = spawned {
        tracing::error!(%err, "cannot arm the stop deadline");
    }
}

/// Called once a process's work is done, before its bus clients are dropped. With the
/// broker gone, closing them would wait for it (a consumer's close leaves its group
/// through the broker), so the process exits here, with code 0, without closing them.
/// With the broker there they close normally (committing what was processed), within
/// the stop deadline all the same: the broker may leave while they close.
pub fn leave(bus: &dyn Bus) {
    if !bus.health().reachable {
        tracing::info!(
            "stopped; leaving without closing the bus's clients (the broker is unreachable)"
        );
        std::process::exit(0);
    }
    arm_deadline(0);
    tracing::info!("stopped");
}
