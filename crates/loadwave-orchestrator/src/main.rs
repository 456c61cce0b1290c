//! `loadwave-orchestrator`: the REST API and the runtime controller over Kafka.
//!
//! ```text
//! loadwave-orchestrator --listen 127.0.0.1:8000 --brokers 127.0.0.1:9092 \
//!     --data-dir .local/orchestrator --launcher pool
//! ```
//!
//! Tests persist in `--data-dir`: a restarted orchestrator keeps every finished result and
//! resumes running tests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use loadwave_bus::Bus;
use loadwave_kafka::{KafkaBus, KafkaConfig};
use loadwave_orchestrator::{
    ControllerOptions, Launcher, Orchestrator, PoolLauncher, ProcessLauncher, TestStore, app,
};
use tokio_util::sync::CancellationToken;

/// How drivers are found.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum LauncherKind {
    /// Drivers that are already running (`loadwave-driver` in pool mode).
    Pool,
    /// Start one `loadwave-driver --test-id` process per driver of each test.
    Process,
}

/// Command-line options.
#[derive(Debug, Parser)]
#[command(
    name = "loadwave-orchestrator",
    version,
    about = "The loadwave orchestrator: REST API and runtime controller"
)]
struct Args {
    /// Address of the REST API.
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Prefix of the topic names (and consumer groups).
    #[arg(long, env = "LOADWAVE_TOPIC_PREFIX", default_value = "")]
    topic_prefix: String,
    /// Where tests are kept (created if missing).
    #[arg(long, default_value = "loadwave-data")]
    data_dir: PathBuf,
    /// How drivers are found.
    #[arg(long, value_enum, default_value_t = LauncherKind::Pool)]
    launcher: LauncherKind,
    /// The driver binary for `--launcher process` (default: next to this one).
    #[arg(long)]
    driver_bin: Option<PathBuf>,
    /// Where started drivers write their logs (`--launcher process`).
    #[arg(long)]
    driver_log_dir: Option<PathBuf>,
    /// How long a test waits for enough idle pool drivers, ms.
    #[arg(long, default_value_t = 30_000)]
    driver_wait_ms: u64,
    /// Between the trigger and the common start instant, ms.
    #[arg(long, default_value_t = 1_000)]
    start_lead_ms: u64,
    /// A raw librdkafka option `key=value`, applied last; repeatable.
    #[arg(long = "kafka-option", value_name = "KEY=VALUE")]
    kafka_options: Vec<String>,
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

    let mut kafka = KafkaConfig::new(&args.brokers, &args.topic_prefix);
    kafka
        .add_options(&args.kafka_options)
        .map_err(anyhow::Error::msg)?;
    let bus: Arc<dyn Bus> = Arc::new(
        KafkaBus::connect(kafka)
            .await
            .with_context(|| format!("cannot reach Kafka at {}", args.brokers))?,
    );
    let store = TestStore::local_dir(&args.data_dir)?;
    let launcher: Arc<dyn Launcher> = match args.launcher {
        LauncherKind::Pool => Arc::new(PoolLauncher),
        LauncherKind::Process => {
            if let Some(dir) = &args.driver_log_dir {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("--driver-log-dir {}", dir.display()))?;
            }
            Arc::new(ProcessLauncher {
                driver_bin: args
                    .driver_bin
                    .clone()
                    .unwrap_or_else(ProcessLauncher::sibling_driver_bin),
                brokers: args.brokers.clone(),
                topic_prefix: args.topic_prefix.clone(),
                log_dir: args.driver_log_dir.clone(),
            })
        }
    };
    let mut options = ControllerOptions {
        driver_wait_ms: args.driver_wait_ms,
        ..ControllerOptions::default()
    };
    options.test.start_lead_ms = args.start_lead_ms;
    options.test.registration_timeout_ms = args.driver_wait_ms + 30_000;
    let orchestrator = Orchestrator::new(bus, store, launcher, options).await?;

    let shutdown = CancellationToken::new();
    let controller = tokio::spawn(orchestrator.clone().run(shutdown.clone()));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(listen = %listener.local_addr()?, launcher = orchestrator.launcher_name(), "orchestrator up");
    let serve_shutdown = shutdown.clone();
    axum::serve(listener, app(orchestrator))
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = shutdown_signal() => {}
                _ = serve_shutdown.cancelled() => {}
            }
        })
        .await?;
    shutdown.cancel();
    controller.await??;
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
