//! `loadwave-driver`: a loadwave driver node over Kafka.
//!
//! Pool mode (the default) registers, heartbeats every second, runs every test the
//! orchestrator assigns to it and stays up. With `--test-id ID` it serves that one test
//! and exits, which is how the orchestrator's process launcher (and ECS tasks) run it.
//! SIGTERM or Ctrl-C stops a running test gracefully (in-flight requests finish and are
//! reported) before the process exits.
//!
//! ```text
//! loadwave-driver --brokers 127.0.0.1:9092 [--topic-prefix P] [--test-id ID] [--driver-id ID]
//! ```

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use loadwave_bus::Bus;
use loadwave_engine::{AgentConfig, AgentMode, SysMonitor, run_agent};
use loadwave_kafka::{KafkaBus, KafkaConfig};
use tokio_util::sync::CancellationToken;

/// Command-line options.
#[derive(Debug, Parser)]
#[command(
    name = "loadwave-driver",
    version,
    about = "A loadwave driver node over Kafka"
)]
struct Args {
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Prefix of the topic names (and consumer groups).
    #[arg(long, env = "LOADWAVE_TOPIC_PREFIX", default_value = "")]
    topic_prefix: String,
    /// Serve this test only, then exit.
    #[arg(long, env = "LOADWAVE_TEST_ID")]
    test_id: Option<String>,
    /// This driver's id (default: host name, process id and a random suffix).
    #[arg(long, env = "LOADWAVE_DRIVER_ID")]
    driver_id: Option<String>,
    /// A raw librdkafka option `key=value`, applied last; repeatable.
    #[arg(long = "kafka-option", value_name = "KEY=VALUE")]
    kafka_options: Vec<String>,
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let host = host_name();
    let driver_id = args.driver_id.clone().unwrap_or_else(|| {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        format!("{host}-{}-{}", std::process::id(), &suffix[..6])
    });
    let mut config = KafkaConfig::new(&args.brokers, &args.topic_prefix);
    // A driver joining late must not replay old tests' configurations and triggers.
    config.auto_offset_reset = "latest".to_string();
    config
        .add_options(&args.kafka_options)
        .map_err(anyhow::Error::msg)?;
    let bus: Arc<dyn Bus> = Arc::new(
        KafkaBus::connect(config)
            .await
            .with_context(|| format!("cannot reach Kafka at {}", args.brokers))?,
    );
    let mode = match args.test_id {
        Some(id) => AgentMode::Dedicated(id),
        None => AgentMode::Pool,
    };
    tracing::info!(%driver_id, ?mode, "driver up");
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            shutdown_signal().await;
            tracing::info!("shutting down");
            shutdown.cancel();
        }
    });
    let agent = AgentConfig {
        driver_id,
        host,
        mode,
    };
    run_agent(bus, agent, SysMonitor::spawn(), shutdown).await?;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
