//! `loadwave-orchestrator`: the REST API and the runtime controller over Kafka.
//!
//! ```text
//! loadwave-orchestrator --listen 127.0.0.1:8000 --brokers 127.0.0.1:9092 \
//!     --data-dir .local/orchestrator --launcher pool
//! ```
//!
//! Tests persist in `--data-dir`: a restarted orchestrator keeps every finished result and
//! resumes running tests.
//!
//! SIGTERM or Ctrl-C stops it within 10 s whatever the broker's state: the API stops
//! answering, the controller writes every test, what waits to be published gets a short
//! grace; a second signal exits at once (see [`loadwave_bus::stop`]). `GET /healthz` is
//! the liveness probe, `GET /readyz` the readiness one (503 while the bus is away).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use loadwave_bus::Bus;
use loadwave_kafka::{KafkaArgs, KafkaBus};
use loadwave_orchestrator::{
    ControllerOptions, EcsConfig, EcsLauncher, Launcher, Orchestrator, PoolLauncher,
    ProcessLauncher, TestStore, app,
};
use tokio_util::sync::CancellationToken;

/// How drivers are found.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum LauncherKind {
    /// Drivers that are already running (`loadwave-driver` in pool mode).
    Pool,
    /// Start one `loadwave-driver --test-id` process per driver of each test.
    Process,
    /// Run one ECS (Fargate) task per driver; configured by the `LOADWAVE_ECS_*`
    /// environment and the AWS SDK's own (`AWS_REGION`, credentials, `AWS_ENDPOINT_URL`).
    Ecs,
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
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Where tests are kept (created if missing).
    #[arg(long, default_value = "loadwave-data")]
    data_dir: PathBuf,
    /// Keep tests in this store instead: `file:///PATH`, `s3://BUCKET/PREFIX`, `memory:`.
    #[arg(long, env = "LOADWAVE_STORE")]
    store: Option<String>,
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour for people at a terminal, plain text in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    // Signals first: a stop asked for while Kafka is still being reached is bounded too.
    let shutdown = CancellationToken::new();
    loadwave_bus::stop::on_signals(shutdown.clone(), 1).context("cannot listen for signals")?;
    let kafka = args.kafka.config().map_err(anyhow::Error::msg)?;
    let bus: Arc<dyn Bus> = Arc::new(
        KafkaBus::connect(kafka)
            .await
            .with_context(|| format!("cannot reach Kafka at {}", args.kafka.brokers))?,
    );
    let store = match &args.store {
        Some(url) => TestStore::from_url(url)?,
        None => TestStore::local_dir(&args.data_dir)?,
    };
    let launcher: Arc<dyn Launcher> = match args.launcher {
        LauncherKind::Pool => Arc::new(PoolLauncher),
        LauncherKind::Process => {
            if let Some(dir) = &args.driver_log_dir {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("--driver-log-dir {}", dir.display()))?;
            }
            Arc::new(ProcessLauncher::new(
                args.driver_bin
                    .clone()
                    .unwrap_or_else(ProcessLauncher::sibling_driver_bin),
                args.kafka.clone(),
                args.driver_log_dir.clone(),
            ))
        }
        LauncherKind::Ecs => {
            let config = EcsConfig::from_env(args.kafka.clone()).map_err(anyhow::Error::msg)?;
            Arc::new(EcsLauncher::from_env(config).await)
        }
    };
    let mut options = ControllerOptions {
        driver_wait_ms: args.driver_wait_ms,
        // No caps by default on a local orchestrator; LOADWAVE_MAX_* set some.
        limits: loadwave_core::Limits::from_env(loadwave_core::Limits::none())
            .map_err(anyhow::Error::msg)?,
        ..ControllerOptions::default()
    };
    options.test.start_lead_ms = args.start_lead_ms;
    options.test.registration_timeout_ms = args.driver_wait_ms + 30_000;
    let orchestrator = Orchestrator::new(bus.clone(), store, launcher, options).await?;

    let controller = tokio::spawn(orchestrator.clone().run(shutdown.clone()));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(listen = %listener.local_addr()?, launcher = orchestrator.launcher_name(), "orchestrator up");
    axum::serve(listener, app(orchestrator.clone()))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await?;
    shutdown.cancel();
    controller.await??;
    loadwave_bus::stop::leave(&*bus);
    Ok(())
}
