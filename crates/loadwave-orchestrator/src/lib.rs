//! loadwave's orchestrator.
//!
//! - [`api`]: the REST API (`POST /tests`, `GET /tests/{id}`, …) as one axum `Router`
//!   built by [`api::app`];
//! - [`controller`]: the runtime controller — tests, the driver registry, and the loop
//!   that folds the bus into them (the core's [`loadwave_core::TestState`] does the
//!   folding and deciding);
//! - [`store`]: test snapshots in an object store (a local directory, memory, S3);
//! - [`launcher`]: how drivers are found (a pool) or started (local processes);
//! - [`report`]: the HTML report.
//!
//! The `loadwave-orchestrator` binary wires them to Kafka and a data directory; tests wire
//! them to the in-memory bus and store.

pub mod api;
pub mod controller;
pub mod launcher;
pub mod report;
pub mod store;

pub use api::app;
pub use controller::{ControllerOptions, Orchestrator};
pub use launcher::{Launcher, PoolLauncher, ProcessLauncher};
pub use store::TestStore;
