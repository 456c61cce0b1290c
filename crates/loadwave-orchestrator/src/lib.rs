//! loadwave's orchestrator.
//!
//! - [`api`]: the REST API (`POST /tests`, `GET /tests/{id}`, …) as one axum `Router`
//!   built by [`api::app`] over a [`api::Backend`];
//! - [`controller`]: the local orchestrator — a [`loadwave_core::ControllerCore`] driven
//!   by a Kafka consumer loop, serving the API from memory;
//! - [`aws`]: the same core without a process, for the Lambda functions: the store-backed
//!   API ([`aws::StoreBackend`]) and the controller fed by MSK batches and a schedule
//!   ([`aws::LambdaController`]);
//! - [`store`]: test snapshots in an object store (a local directory, memory, S3), with
//!   conditional writes and a small index for listing;
//! - [`launcher`]: how drivers are found (a pool) or started (local processes, ECS tasks);
//! - [`report`]: the HTML report.
//!
//! The `loadwave-orchestrator` binary wires them to Kafka and a data directory; the
//! functions in `functions/` wire them to Lambda; tests wire them to the in-memory bus
//! and store.

pub mod access;
pub mod api;
pub mod aws;
pub mod controller;
pub mod launcher;
pub mod report;
pub mod store;

pub use access::ApiSecurity;
pub use api::{Backend, app, secured_app};
pub use aws::{LambdaController, StoreBackend};
pub use controller::Orchestrator;
pub use launcher::{EcsConfig, EcsLauncher, Launcher, PoolLauncher, ProcessLauncher};
pub use loadwave_core::ControllerOptions;
pub use store::TestStore;
