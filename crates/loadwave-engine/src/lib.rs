//! loadwave's load engine and driver agent.
//!
//! - [`engine`] sends one driver's share of a test: Avalanche (closed model) or Tsunami
//!   (open model, coordinated omission corrected), `concurrency` keep-alive connections,
//!   every latency recorded in an HDR histogram, bucketed by the second it completed in.
//! - [`client`] is the HTTP/1.1 connection each worker owns (rustls for https) and the
//!   sorting of failures into error kinds; [`http1`] is its wire format (`httparse` for
//!   response heads, framing by hand).
//! - [`pace`] waits for open-model due times to within tens of microseconds.
//! - [`stats`] records without a lock per request and drains per-second buckets.
//! - [`sysmon`] watches the driver's own CPU use and scheduling lag.
//! - [`agent`] speaks the driver's side of the protocol over any bus: register,
//!   heartbeat, configuration, trigger, metrics, stop. The `loadwave-driver` binary runs it
//!   over Kafka; `loadwave run` runs several over the in-memory bus.

pub mod agent;
pub mod client;
pub mod engine;
pub mod http1;
pub mod pace;
pub mod stats;
pub mod sysmon;

pub use agent::{AgentConfig, AgentError, AgentMode, run_agent};
pub use engine::{Model, Plan, RunHandle, RunOutcome};
pub use sysmon::{HealthProbe, SysMonitor};

/// A test that cannot be run as specified.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The spec is invalid.
    #[error("invalid test spec: {0}")]
    Spec(#[source] loadwave_proto::SpecError),
    /// Part of the request could not be built.
    #[error("cannot build the request: invalid {0}")]
    Invalid(String),
}
