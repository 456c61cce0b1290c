//! `loadwave-driver`: a loadwave driver node over Kafka.
//!
//! Pool mode (the default) registers, heartbeats every second, runs every test the
//! orchestrator assigns to it and stays up. With `--test-id ID` it serves that one test
//! and exits, which is how the orchestrator's process launcher (and ECS tasks) run it.
//! SIGTERM or Ctrl-C stops a running test gracefully (in-flight requests finish and are
//! reported) before the process exits, within 10 s whatever the broker's state: what
//! cannot be delivered in time is logged as lost with its counts, and a second signal
//! exits at once.
//!
//! ```text
//! loadwave-driver --brokers 127.0.0.1:9092 [--topic-prefix P] [--kafka-auth none|tls|msk-iam]
//!                 [--test-id ID] [--driver-id ID] [--agents N]
//! ```
//!
//! `--agents N` runs N pool drivers in one process (ids `{driver-id}-1` … `-N`) over one
//! Kafka producer and one shared subscription ([`fanout`]). It is how the controller
//! bench puts hundreds of drivers on one machine.
//!
//! Every flag is also read from the environment (`KAFKA_BROKERS`, `LOADWAVE_TEST_ID`, …),
//! which is how an ECS task is configured. On ECS the driver id is its task's id, read
//! from the task metadata endpoint (`ECS_CONTAINER_METADATA_URI_V4`), so the launcher
//! knows it from `RunTask`'s answer.

mod fanout;

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use loadwave_bus::Bus;
use loadwave_engine::{AgentConfig, AgentMode, SysMonitor, run_agent};
use loadwave_kafka::{KafkaArgs, KafkaBus};
use tokio_util::sync::CancellationToken;

/// Command-line options.
#[derive(Debug, Parser)]
#[command(
    name = "loadwave-driver",
    version,
    about = "A loadwave driver node over Kafka"
)]
struct Args {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Serve this test only, then exit.
    #[arg(long, env = "LOADWAVE_TEST_ID")]
    test_id: Option<String>,
    /// This driver's id (default: the ECS task's id on ECS, else host name, process id
    /// and a random suffix).
    #[arg(long, env = "LOADWAVE_DRIVER_ID")]
    driver_id: Option<String>,
    /// Pool drivers to run in this process, ids `{driver-id}-1` … `-N`, sharing one
    /// subscription (for benchmarks with more drivers than processes; not with
    /// --test-id).
    #[arg(long, env = "LOADWAVE_AGENTS", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    agents: u32,
}

/// The task ARN from the ECS task metadata endpoint (v4), if this runs in an ECS task.
/// A plain HTTP/1.0 GET: the endpoint is a link-local plain-HTTP service.
async fn ecs_task_arn() -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let base = std::env::var("ECS_CONTAINER_METADATA_URI_V4").ok()?;
    let rest = base.strip_prefix("http://")?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(authority).await.ok()?;
        let request = format!("GET /{path}/task HTTP/1.0\r\nHost: {authority}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8_lossy(&response);
        let body = text.split_once("\r\n\r\n")?.1;
        let doc: serde_json::Value = serde_json::from_str(body).ok()?;
        doc.get("TaskARN")?.as_str().map(str::to_string)
    };
    match tokio::time::timeout(std::time::Duration::from_secs(5), fetch).await {
        Ok(Some(arn)) => Some(arn),
        _ => {
            tracing::warn!(%base, "ECS task metadata did not name the task; using a generated driver id");
            None
        }
    }
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
    if args.agents > 1 && args.test_id.is_some() {
        anyhow::bail!("--agents runs pool drivers; it cannot be combined with --test-id");
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour for people at a terminal, plain text in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let host = host_name();
    let driver_id = match args.driver_id.clone() {
        Some(id) => id,
        None => match ecs_task_arn().await {
            Some(arn) => loadwave_proto::ecs_task_driver_id(&arn),
            None => {
                let suffix = uuid::Uuid::new_v4().simple().to_string();
                format!("{host}-{}-{}", std::process::id(), &suffix[..6])
            }
        },
    };
    // Signals first: a stop asked for while Kafka is still being reached is bounded too.
    let shutdown = CancellationToken::new();
    loadwave_bus::stop::on_signals(shutdown.clone(), 1).context("cannot listen for signals")?;
    let mut config = args.kafka.config().map_err(anyhow::Error::msg)?;
    // A driver joining late must not replay old tests' configurations and triggers.
    config.auto_offset_reset = "latest".to_string();
    let bus: Arc<dyn Bus> = Arc::new(
        KafkaBus::connect(config)
            .await
            .with_context(|| format!("cannot reach Kafka at {}", args.kafka.brokers))?,
    );
    let mode = match args.test_id {
        Some(id) => AgentMode::Dedicated(id),
        None => AgentMode::Pool,
    };
    tracing::info!(%driver_id, ?mode, "driver up");
    let monitor = SysMonitor::spawn();
    if args.agents == 1 {
        let agent = AgentConfig {
            driver_id,
            host,
            mode,
        };
        run_agent(bus.clone(), agent, monitor, shutdown).await?;
        loadwave_bus::stop::leave(&*bus);
        return Ok(());
    }
    let bus: Arc<dyn Bus> = Arc::new(fanout::FanoutBus::new(bus, driver_id.clone()));
    let mut agents = tokio::task::JoinSet::new();
    for i in 1..=args.agents {
        let agent = AgentConfig {
            driver_id: format!("{driver_id}-{i}"),
            host: host.clone(),
            mode: mode.clone(),
        };
        agents.spawn(run_agent(
            bus.clone(),
            agent,
            monitor.clone(),
            shutdown.clone(),
        ));
    }
    while let Some(done) = agents.join_next().await {
        // One agent failing (its subscription, say) takes the process down, as it would
        // a single driver.
        done??;
    }
    loadwave_bus::stop::leave(&*bus);
    Ok(())
}
