//! Driving one test to its end over a bus: the coordinator of `loadwave run`.
//!
//! It publishes what [`TestState::poll`] asks for, folds what the drivers send, and
//! reports progress; a stop signal becomes a `trigger` stop and the test ends once every
//! driver has sent its final report (or was declared lost).

use std::future::Future;
use std::time::Duration;

use loadwave_bus::{Bus, BusError, Subscription};
use loadwave_proto::{Topic, unix_ms_now};

use crate::state::{Applied, TestState};

/// How often the state is polled and progress reported.
const TICK: Duration = Duration::from_millis(100);

/// Runs `state` to its end. `stop` resolving asks the drivers to stop; `progress` is
/// called every 100 ms and once at the end.
///
/// `sub` comes from [`subscribe`], made before the drivers start so that no registration
/// is missed on a bus without history (a missed one only costs a configuration resend).
pub async fn drive(
    bus: &dyn Bus,
    mut sub: Subscription,
    mut state: TestState,
    stop: impl Future<Output = ()>,
    mut progress: impl FnMut(&TestState),
) -> Result<TestState, BusError> {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    let mut stopping = false;
    loop {
        // In one process the bus cannot stall behind the coordinator's back, so the wall
        // clock is the bus clock.
        state.observe_clock(unix_ms_now());
        for message in state.poll(unix_ms_now()) {
            bus.publish(&message).await?;
        }
        if state.is_finished() {
            break;
        }
        tokio::select! {
            next = sub.next_message() => {
                let Some((message, delivery)) = next else {
                    return Err(BusError::Closed);
                };
                if let Applied::Rejected(reason) = state.apply(&message) {
                    tracing::warn!(%reason, "report rejected");
                }
                delivery.ack();
            }
            _ = tick.tick() => progress(&state),
            _ = &mut stop, if !stopping => {
                stopping = true;
                for message in state.request_stop(unix_ms_now()) {
                    bus.publish(&message).await?;
                }
            }
        }
    }
    progress(&state);
    Ok(state)
}

/// Subscribes to what a coordinator consumes: `register`, `heartbeat` and `metrics`.
pub async fn subscribe(bus: &dyn Bus, name: &str) -> Result<Subscription, BusError> {
    bus.subscribe(&[Topic::Register, Topic::Heartbeat, Topic::Metrics], name)
        .await
}
