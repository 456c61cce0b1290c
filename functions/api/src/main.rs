//! `loadwave-lambda-api`: the API function's entry point (see the crate docs).

use std::sync::Arc;

use loadwave_orchestrator::StoreBackend;
use loadwave_orchestrator::aws::{LambdaClients, ecs_controller_options};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    lambda_http::tracing::init_default_subscriber();
    let c = LambdaClients::from_env().await?;
    let backend = StoreBackend::new(c.store, c.launcher, c.bus, ecs_controller_options()?);
    lambda_http::run(api::handler(Arc::new(backend))).await
}
