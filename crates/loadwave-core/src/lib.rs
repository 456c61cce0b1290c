//! The orchestrator core of loadwave.
//!
//! [`TestState`] folds driver messages (registrations, heartbeats, metrics reports with
//! serialized histograms) into the state of one test, deterministically and idempotently,
//! and decides what happens next: send configurations, trigger a common start, declare a
//! silent driver lost, end the test. [`TestState::view`] derives the JSON users see:
//! the merged summary (exact counts, percentiles from merged histograms), the per-second
//! timeline, each driver's part and the threshold verdict.
//!
//! [`ControllerCore`] holds every test plus the driver registry and says what to publish,
//! persist and acknowledge; the orchestrator's Kafka loop and the Lambda controller are
//! shells around it.
//!
//! The core does no I/O of its own except [`session::drive`], which runs one test over a
//! [`loadwave_bus::Bus`]; the orchestrator service and the Lambda controller drive the
//! same state machine from their own loops.

pub mod aggregate;
pub mod controller;
pub mod limits;
pub mod seqs;
pub mod session;
pub mod snapshot;
pub mod state;
pub mod view;

pub use aggregate::{Aggregate, Latency};
pub use controller::{
    Acquired, BusStats, ControllerCore, ControllerOptions, DriverInfo, DriverRequest,
    LIST_DEFAULT_LIMIT, LIST_MAX_LIMIT, ListQuery, LogLimiter, MAX_REGISTERED_DRIVERS, StopError,
    TestListItem,
};
pub use limits::{Limits, OverLimit};
pub use seqs::SeqSet;
pub use snapshot::{
    CHUNK_SECONDS, ChunkReader, ChunkWrite, SEAL_LAG_SECONDS, Snapshot, SnapshotError,
};
pub use state::{Abort, Applied, DriverPhase, DriverSlot, TestOptions, TestState, TestStatus};
pub use view::{
    AbortView, Check, DriverView, RequestSummary, SendLagMs, Summary, TestView, TimelinePoint,
    TimelineRequest, Verdict,
};
