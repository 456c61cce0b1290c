//! The loadwave controller as an AWS Lambda function.
//!
//! Two kinds of events reach it:
//!
//! - **MSK event source mappings** on `register`, `heartbeat` and `metrics`: a batch of
//!   one topic-partition's records, values base64-encoded. The batch is folded into every
//!   test it concerns by [`loadwave_orchestrator::LambdaController::handle_records`]; an
//!   error fails the invocation so the mapping delivers the batch again (the fold is
//!   idempotent, so nothing is counted twice).
//! - **An EventBridge schedule**: publishes ticks while tests run (they keep every test's
//!   bus clock moving when nobody else reports) and moves every test on in time —
//!   registration timeouts, lost drivers (stopped ECS tasks with their stop reason).
//!
//! Environment: as the API function, plus `LOADWAVE_TICKS_PER_SCHEDULE` (ticks one
//! scheduled invocation publishes, one a second, only while tests are active; default 1).

use base64::Engine;
use loadwave_orchestrator::LambdaController;
use loadwave_orchestrator::aws::BatchOutcome;
use loadwave_proto::{Topic, unix_ms_now};
use serde_json::Value;

/// An event the controller could not handle.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// Neither an MSK batch nor a scheduled event.
    #[error("unsupported event: {0}")]
    Unsupported(String),
    /// An MSK batch that does not parse.
    #[error("malformed Kafka event: {0}")]
    Malformed(String),
    /// The fold failed; the batch must be retried.
    #[error(transparent)]
    Controller(#[from] loadwave_orchestrator::aws::ControllerError),
}

/// The topic of a full topic name (`{prefix}{name}`), if it is one the controller reads.
pub fn topic_of(full_name: &str, prefix: &str) -> Option<Topic> {
    let name = full_name.strip_prefix(prefix)?;
    [Topic::Register, Topic::Heartbeat, Topic::Metrics]
        .into_iter()
        .find(|t| t.name() == name)
}

/// The records of an MSK event as (topic, value), in each partition's offset order.
/// Records of other topics, and records without a value, are skipped.
pub fn records_of(
    event: aws_lambda_events::event::kafka::KafkaEvent,
    prefix: &str,
) -> Result<Vec<(Topic, Vec<u8>)>, EventError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut keys: Vec<&String> = event.records.keys().collect();
    keys.sort();
    let mut out = Vec::new();
    for key in keys {
        let mut records = event.records[key].clone();
        records.sort_by_key(|r| r.offset);
        for r in records {
            let Some(topic) = r.topic.as_deref().and_then(|t| topic_of(t, prefix)) else {
                tracing::warn!(topic = ?r.topic, "record of a topic the controller does not read");
                continue;
            };
            let Some(value) = r.value else { continue };
            let bytes = b64
                .decode(value.as_bytes())
                .map_err(|e| EventError::Malformed(format!("{key}@{}: {e}", r.offset)))?;
            out.push((topic, bytes));
        }
    }
    Ok(out)
}

/// Handles one invocation's event.
pub async fn handle(
    controller: &LambdaController,
    event: Value,
    topic_prefix: &str,
    ticks_per_schedule: u32,
) -> Result<BatchOutcome, EventError> {
    let source = event
        .get("eventSource")
        .or_else(|| event.get("source"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    match source.as_str() {
        "aws:kafka" | "SelfManagedKafka" => {
            let kafka: aws_lambda_events::event::kafka::KafkaEvent =
                serde_json::from_value(event).map_err(|e| EventError::Malformed(e.to_string()))?;
            let records = records_of(kafka, topic_prefix)?;
            let outcome = controller.handle_records(&records, unix_ms_now()).await?;
            tracing::info!(?outcome, "batch folded");
            Ok(outcome)
        }
        "aws.events" | "aws.scheduler" => {
            let outcome = controller.handle_schedule(ticks_per_schedule).await?;
            tracing::info!(?outcome, "schedule handled");
            Ok(outcome)
        }
        other => Err(EventError::Unsupported(format!(
            "event source `{other}` (expected aws:kafka or aws.events)"
        ))),
    }
}
