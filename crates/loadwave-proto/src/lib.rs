//! The loadwave wire protocol.
//!
//! Everything that crosses a process boundary is defined here, so that the CLI, the
//! orchestrator, the drivers and the Lambda functions agree on one set of types:
//!
//! - [`spec`]: the test specification users submit (`POST /tests`, `loadwave run`), with its
//!   validation, which names the offending field on every error;
//! - [`threshold`]: pass/fail criteria such as `p99 < 200ms` or `error_rate < 1% abort`;
//! - [`profile`]: what a spec plans (durations, arrival-rate and concurrency ramps), read
//!   the same way by the drivers that pace requests and the orchestrator that checks them;
//! - [`message`]: the versioned JSON envelope carried on the five Kafka topics of the
//!   original system (`register`, `test_config`, `trigger`, `metrics`, `heartbeat`);
//! - [`histogram`]: HDR histograms in the compressed V2 format, base64-encoded for JSON,
//!   so drivers ship every latency they recorded rather than a summary of it.
//!
//! The crate has no I/O and no runtime; it is shared by every other loadwave crate.

pub mod histogram;
pub mod message;
#[cfg(feature = "openapi")]
pub mod openapi;
pub mod profile;
pub mod spec;
pub mod threshold;

pub use histogram::{HistogramError, LatencyHistogram, RecordedCounts};
pub use message::{
    Activity, BucketStats, DecodeError, DriverHealth, DriverTotals, ErrorKind, Heartbeat, Message,
    MetricsReport, PROTOCOL_VERSION, Register, SendLag, TestConfig, Tick, Topic, Trigger,
    TriggerAction,
};
pub use profile::{Curve, Pacing, Profile, describe_load, format_duration_s, parse_duration_s};
pub use spec::{
    RequestSpec, ResolvedRequest, SpecError, Stage, TargetUrl, TestSpec, TestType,
    forbidden_address, parse_target_url,
};
pub use threshold::{Metric, Threshold, ThresholdError};

/// Milliseconds since the Unix epoch, the wall-clock unit used on the wire.
///
/// Drivers on different machines share instants (the trigger's start time) in this unit.
pub fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The driver id of the ECS task `task_arn`: the task's id, the last part of its ARN
/// (`arn:aws:ecs:REGION:ACCOUNT:task/CLUSTER/ID`). The launcher and the driver (which
/// reads its task ARN from the ECS metadata endpoint) derive it the same way.
pub fn ecs_task_driver_id(task_arn: &str) -> String {
    format!("task-{}", task_arn.rsplit('/').next().unwrap_or(task_arn))
}
