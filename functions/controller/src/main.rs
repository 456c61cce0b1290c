//! `loadwave-lambda-controller`: the controller function's entry point (see the crate
//! docs).

use lambda_runtime::{LambdaEvent, service_fn};
use loadwave_orchestrator::LambdaController;
use loadwave_orchestrator::aws::LambdaClients;
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let c = LambdaClients::from_env().await?;
    let prefix = std::env::var("LOADWAVE_TOPIC_PREFIX").unwrap_or_default();
    let ticks = std::env::var("LOADWAVE_TICKS_PER_SCHEDULE")
        .ok()
        .map(|v| v.parse::<u32>())
        .transpose()
        .map_err(|e| format!("LOADWAVE_TICKS_PER_SCHEDULE: {e}"))?
        .unwrap_or(1);
    let controller = LambdaController::new(c.store, c.launcher, c.bus);
    let controller = &controller;
    let prefix = prefix.as_str();
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        controller::handle(controller, event.payload, prefix, ticks)
            .await
            .map(|outcome| serde_json::json!(outcome))
            .map_err(|e| lambda_runtime::Error::from(e.to_string()))
    }))
    .await
}
