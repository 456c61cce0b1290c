//! `loadwave run`: one process, N drivers, an in-memory bus, the same core as the
//! distributed system.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use loadwave_bus::{Bus, MemoryBus};
use loadwave_core::{TestOptions, TestState, TestStatus, TestView, session};
use loadwave_engine::{AgentConfig, AgentMode, SysMonitor, run_agent};
use loadwave_proto::unix_ms_now;
use tokio_util::sync::CancellationToken;

use crate::exit;
use crate::render::{print_view, progress_line};
use crate::spec_args::SpecArgs;

/// Flags of `loadwave run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    spec: SpecArgs,
    /// Print the test's JSON (as `GET /tests/{id}` answers it) on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// No live progress line on stderr.
    #[arg(long)]
    no_progress: bool,
}

/// Runs the command; returns the exit code.
pub fn main(args: RunArgs) -> u8 {
    let spec = match args.spec.to_spec() {
        Ok(spec) => spec,
        Err(err) => {
            eprintln!("error: {err}");
            return exit::ERROR;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return exit::ERROR;
        }
    };
    let show_progress = !args.no_progress && std::io::stderr().is_terminal();
    let view = match runtime.block_on(run_local(spec, show_progress)) {
        Ok(view) => view,
        Err(err) => {
            eprintln!("error: {err:#}");
            return exit::ERROR;
        }
    };
    print_view(&view, args.json);
    exit_code(&view)
}

/// 0 pass, 1 not passed, 2 the test could not run.
pub fn exit_code(view: &TestView) -> u8 {
    match (&view.status, &view.verdict) {
        (TestStatus::Failed, _) => exit::ERROR,
        (_, Some(v)) if v.passed => exit::PASS,
        _ => exit::FAIL,
    }
}

/// Runs `spec` with `spec.drivers` agents in this process.
async fn run_local(
    spec: loadwave_proto::TestSpec,
    show_progress: bool,
) -> anyhow::Result<TestView> {
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
    let test_id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let driver_ids: Vec<String> = (1..=spec.drivers).map(|i| format!("local-{i}")).collect();
    let options = TestOptions {
        // In one process the trigger arrives at once; a short lead still lets every
        // driver open its connections before the common start.
        start_lead_ms: 200,
        registration_timeout_ms: 10_000,
        ..TestOptions::default()
    };
    let state = TestState::new(&test_id, spec, driver_ids.clone(), unix_ms_now(), options);
    let sub = session::subscribe(&*bus, "loadwave-run").await?;

    let monitor = SysMonitor::spawn();
    let shutdown = CancellationToken::new();
    let mut agents = Vec::new();
    for driver_id in driver_ids {
        let config = AgentConfig {
            driver_id,
            host: "localhost".into(),
            mode: AgentMode::Dedicated(test_id.clone()),
        };
        agents.push(tokio::spawn(run_agent(
            bus.clone(),
            config,
            monitor.clone(),
            shutdown.clone(),
        )));
    }

    // Ctrl-C or SIGTERM stops the test: in-flight requests that finish within the stop
    // deadline are counted (a stalled target cannot hold the process longer); a second
    // signal exits at once.
    let interrupted = tokio_util::sync::CancellationToken::new();
    loadwave_bus::stop::on_signals(interrupted.clone(), i32::from(exit::ERROR))?;
    let stop = async move {
        interrupted.cancelled().await;
        eprintln!("\nstopping: waiting for in-flight requests (Ctrl-C again to abort)");
    };
    let mut last_draw = 0u64;
    let progress = |state: &TestState| {
        let now = unix_ms_now();
        if show_progress && (now >= last_draw + 250 || state.is_finished()) {
            last_draw = now;
            let line = progress_line(&state.view(), now);
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K{line}");
            if state.is_finished() {
                let _ = writeln!(err);
            }
            let _ = err.flush();
        }
    };
    let state = session::drive(&*bus, sub, state, stop, progress).await?;
    shutdown.cancel();
    for agent in agents {
        let _ = tokio::time::timeout(Duration::from_secs(5), agent).await;
    }
    Ok(state.view())
}
