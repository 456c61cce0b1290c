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
//! Every route but `/healthz` and `/readyz` needs `Authorization: Bearer TOKEN`. The token
//! comes from `--token-file` or `LOADWAVE_TOKEN`, or is generated at start; either way it
//! is written to `<data-dir>/token` (mode 0600), where `loadwave` finds it. Listening on
//! an address other than loopback needs an explicit token. A one-time login URL for the
//! web console is logged at start.
//!
//! SIGTERM or Ctrl-C stops it within 10 s whatever the broker's state: the API stops
//! answering, the controller writes every test, what waits to be published gets a short
//! grace; a second signal exits at once (see [`loadwave_bus::stop`]). `GET /healthz` is
//! the liveness probe, `GET /readyz` the readiness one (503 while the bus is away).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use loadwave_bus::Bus;
use loadwave_kafka::{KafkaArgs, KafkaBus};
use loadwave_orchestrator::ApiSecurity;
use loadwave_orchestrator::api::sweep_expired;
use loadwave_orchestrator::{
    ControllerOptions, EcsConfig, EcsLauncher, Launcher, Orchestrator, PoolLauncher,
    ProcessLauncher, TestStore, secured_app,
};
use loadwave_proto::unix_ms_now;
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
    /// Read the API token from this file (or set `LOADWAVE_TOKEN`); needed to listen on an
    /// address other than loopback. Without either, a token is generated. It is written
    /// to `<data-dir>/token` either way.
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// Also answer requests whose `Host` is this name (`NAME` on any port, or
    /// `NAME:PORT`); repeatable. The listen address, localhost, 127.0.0.1 and [::1] on
    /// the listen port are always answered.
    #[arg(long, value_name = "HOST")]
    allowed_host: Vec<String>,
    /// Delete finished tests this long after they ended (`30d`, `12h`, `90m`, `600s`);
    /// swept at start and every hour. Tests are kept forever when not given.
    #[arg(long, value_name = "AGE", value_parser = parse_age)]
    retain: Option<Duration>,
    /// Most drivers one test may ask for (`0` or `none`: no cap). Default: 64 with
    /// `--launcher process` or `ecs`, none with `pool`; overrides `LOADWAVE_MAX_DRIVERS`.
    #[arg(long, value_name = "N")]
    max_drivers: Option<String>,
    /// Longest a test may run (`10m`, `90s`, `2h`, or seconds; `0` or `none`: no cap).
    /// Default: 10 minutes; overrides `LOADWAVE_MAX_DURATION_S`.
    #[arg(long, value_name = "DURATION")]
    max_duration: Option<String>,
    /// Let tests aim at this orchestrator's own API and its Kafka brokers (refused by
    /// default; for testing loadwave itself).
    #[arg(long, env = "LOADWAVE_ALLOW_SELF_TARGET", value_parser = clap::builder::FalseyValueParser::new())]
    allow_self_target: bool,
}

/// The caps of this orchestrator: the local defaults (64 drivers when the launcher
/// starts them, 10 minutes), then `LOADWAVE_MAX_*`, then `--max-drivers` and
/// `--max-duration`. A value that is not a positive finite number stops start-up.
fn local_limits(args: &Args) -> Result<loadwave_core::Limits, String> {
    let starts_drivers = !matches!(args.launcher, LauncherKind::Pool);
    let mut limits =
        loadwave_core::Limits::from_env(loadwave_core::Limits::local_defaults(starts_drivers))?;
    if let Some(n) = &args.max_drivers {
        limits.set_max_drivers("--max-drivers", n)?;
    }
    if let Some(d) = &args.max_duration {
        limits.set_max_duration("--max-duration", d)?;
    }
    Ok(limits)
}

/// The endpoints tests may not aim at: `listen` and every address the Kafka brokers
/// (`host:port,…`, with or without a `protocol://` prefix) resolve to now. A broker that
/// does not resolve is skipped; the drivers could not reach it either.
async fn own_endpoints(listen: SocketAddr, brokers: &str) -> Vec<SocketAddr> {
    let mut endpoints = vec![listen];
    for broker in brokers.split(',').map(str::trim).filter(|b| !b.is_empty()) {
        let broker = broker.rsplit("://").next().unwrap_or(broker);
        match tokio::net::lookup_host(broker).await {
            Ok(addrs) => endpoints.extend(addrs),
            Err(err) => tracing::debug!(broker, %err, "broker address not resolved"),
        }
    }
    endpoints.sort();
    endpoints.dedup();
    endpoints
}

/// `30d`, `12h`, `90m`, `600s`: an age for `--retain`.
fn parse_age(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.len().saturating_sub(1);
    let (number, unit) = text.split_at(split);
    let seconds_per = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" => 1,
        _ => {
            return Err(format!(
                "`{text}`: give a number and a unit, d, h, m or s (such as 30d)"
            ));
        }
    };
    match number.parse::<u64>() {
        Ok(n) if n > 0 => n
            .checked_mul(seconds_per)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("`{text}` is too long")),
        _ => Err(format!(
            "`{text}`: the number must be a whole number above 0 (such as 30d)"
        )),
    }
}

/// How often finished tests older than `--retain` are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(3_600);

/// The API token: from `--token-file` or `LOADWAVE_TOKEN` (explicit), or generated. A
/// generated one is refused for a listener other than loopback.
fn api_token(args: &Args) -> anyhow::Result<String> {
    let given = match &args.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("--token-file {}", path.display()))?,
        ),
        None => std::env::var("LOADWAVE_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty()),
    };
    match given {
        Some(token) => {
            let token = token.trim().to_string();
            loadwave_orchestrator::access::check_token(&token)
                .map_err(|e| anyhow::anyhow!("--token-file / LOADWAVE_TOKEN: {e}"))?;
            Ok(token)
        }
        None if !args.listen.ip().is_loopback() => anyhow::bail!(
            "--listen {} is not a loopback address: anyone who reaches it could run tests. Give the API a token with --token-file PATH or LOADWAVE_TOKEN (at least {} characters), or listen on 127.0.0.1",
            args.listen,
            loadwave_orchestrator::access::MIN_TOKEN_LEN
        ),
        None => Ok(loadwave_orchestrator::access::generate_token()),
    }
}

/// Writes the token to `<data-dir>/token`, readable by this user only, for the CLI.
fn write_token(data_dir: &std::path::Path, token: &str) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("--data-dir {}", data_dir.display()))?;
    let path = data_dir.join("token");
    #[cfg(unix)]
    {
        use std::io::Write;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private", data_dir.display()))?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        // An older file keeps its mode on open: make sure.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(format!("{token}\n").as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    #[cfg(not(unix))]
    std::fs::write(&path, format!("{token}\n"))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Before anything is written: the data directory, the token, the stored tests (which
    // hold secret headers) and the drivers' logs are this user's only.
    #[cfg(unix)]
    // SAFETY: umask only sets the process's file creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
    let args = Args::parse();
    // Caps first: a mistyped one stops start-up before anything else happens.
    let limits = local_limits(&args).map_err(anyhow::Error::msg)?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour for people at a terminal, plain text in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    // The token before Kafka: a listener that would be open is refused at once.
    for host in &args.allowed_host {
        if !ApiSecurity::valid_allowed_host(host) {
            anyhow::bail!(
                "--allowed-host `{host}`: give a host name or address, with :PORT or not"
            );
        }
    }
    let token = api_token(&args)?;
    let token_path = write_token(&args.data_dir, &token)?;
    let security = ApiSecurity::new(
        token,
        args.listen,
        &args.allowed_host,
        format!(
            "the token is in {} (loadwave reads it with --data-dir or LOADWAVE_TOKEN)",
            token_path.display()
        ),
    );

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
    let sweep_store = store.clone();
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
        limits,
        ..ControllerOptions::default()
    };
    options.test.start_lead_ms = args.start_lead_ms;
    options.test.registration_timeout_ms = args.driver_wait_ms + 30_000;
    let orchestrator = Orchestrator::new(bus.clone(), store, launcher, options).await?;

    let controller = tokio::spawn(orchestrator.clone().run(shutdown.clone()));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listener.local_addr()?;
    if args.allow_self_target {
        tracing::warn!("--allow-self-target: tests may aim at this orchestrator and its brokers");
    } else {
        orchestrator.refuse_targets(own_endpoints(local, &args.kafka.brokers).await);
    }
    tracing::info!(listen = %local, launcher = orchestrator.launcher_name(), token_file = %token_path.display(), "orchestrator up");
    let login_host = if local.ip().is_unspecified() {
        format!("127.0.0.1:{}", local.port())
    } else {
        local.to_string()
    };
    // One use only: once opened, it is worth nothing to whoever reads this log later.
    tracing::info!(
        "web console login (works once): http://{login_host}/login?code={}",
        security.login_code()
    );
    if let Some(retain) = args.retain {
        let (backend, stop) = (orchestrator.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                let retain_ms = u64::try_from(retain.as_millis()).unwrap_or(u64::MAX);
                match sweep_expired(&*backend, &sweep_store, retain_ms, unix_ms_now()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "retention: finished tests deleted"),
                    Err(err) => tracing::warn!(?err, "retention sweep failed; retrying in an hour"),
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(SWEEP_EVERY) => {}
                }
            }
        });
    }
    axum::serve(listener, secured_app(orchestrator.clone(), security))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await?;
    shutdown.cancel();
    controller.await??;
    loadwave_bus::stop::leave(&*bus);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_caps_come_from_defaults_environment_and_flags() {
        let args = Args::parse_from(["o", "--launcher", "process"]);
        let limits = local_limits(&args).unwrap();
        assert_eq!(limits.max_drivers, Some(64));
        assert_eq!(limits.max_duration_s, Some(600));
        let args = Args::parse_from(["o", "--max-drivers", "1000", "--max-duration", "1h"]);
        let limits = local_limits(&args).unwrap();
        assert_eq!(
            (limits.max_drivers, limits.max_duration_s),
            (Some(1000), Some(3_600))
        );
        let args = Args::parse_from(["o", "--max-drivers", "nan"]);
        assert!(local_limits(&args).unwrap_err().contains("--max-drivers"));
    }

    #[tokio::test]
    async fn own_endpoints_are_the_listener_and_the_resolved_brokers() {
        let listen: SocketAddr = "127.0.0.1:8000".parse().unwrap();
        let got = own_endpoints(listen, "127.0.0.1:9092, PLAINTEXT://127.0.0.2:9093,").await;
        let want: Vec<SocketAddr> = ["127.0.0.1:8000", "127.0.0.1:9092", "127.0.0.2:9093"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn retention_ages() {
        assert_eq!(parse_age("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_age("12h"), Ok(Duration::from_secs(12 * 3_600)));
        assert_eq!(parse_age("90m"), Ok(Duration::from_secs(90 * 60)));
        assert_eq!(parse_age("600s"), Ok(Duration::from_secs(600)));
        for bad in [
            "",
            "30",
            "0d",
            "-1d",
            "1.5d",
            "d",
            "30w",
            "99999999999999999999d",
        ] {
            assert!(parse_age(bad).is_err(), "{bad}");
        }
    }
}
