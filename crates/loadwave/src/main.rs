//! `loadwave`: the command line of the loadwave distributed HTTP load tester.
//!
//! `loadwave run` is the zero-setup path: the orchestrator core and N drivers in one
//! process over an in-memory bus, the same engine, fold and JSON as the distributed
//! system. Exit code 0 when the test passed, 1 when thresholds failed (or work was
//! lost), 2 on bad input or error.
//!
//! `loadwave start --orchestrator URL ... --wait` submits the same spec to an orchestrator
//! and follows it; `status`, `list`, `stop` and `report` read and steer it.
//!
//! ```text
//! loadwave run --target-url http://127.0.0.1:8080/ping --test-type avalanche \
//!     --drivers 2 --requests-per-driver 10000 --concurrency 16 --threshold 'p99 < 50ms'
//! ```

mod remote;
mod render;
mod run;
mod sigv4;
mod spec_args;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Command-line interface.
#[derive(Debug, Parser)]
#[command(
    name = "loadwave",
    version,
    about = "Distributed HTTP load testing with exact percentiles"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    remote: remote::Remote,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a test in this process: the orchestrator core and N drivers over an in-memory bus.
    Run(run::RunArgs),
    /// Submit a test to an orchestrator; with --wait, follow it to its verdict.
    Start(remote::StartArgs),
    /// Show a test of an orchestrator.
    Status(remote::StatusArgs),
    /// List an orchestrator's tests, newest first.
    List(remote::ListArgs),
    /// Stop a running test.
    Stop(remote::StopArgs),
    /// Save a test's HTML report.
    Report(remote::ReportArgs),
}

/// The exit codes of the contract.
pub mod exit {
    /// The test passed.
    pub const PASS: u8 = 0;
    /// Thresholds failed, or the test lost work.
    pub const FAIL: u8 = 1;
    /// Bad input or an error.
    pub const ERROR: u8 = 2;
}

fn main() -> ExitCode {
    // Reports it saves name the test's target: this user's only.
    #[cfg(unix)]
    // SAFETY: umask only sets the process's file creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        // Colour for people at a terminal, plain text in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let code = match cli.command {
        Command::Run(args) => run::main(args),
        Command::Start(args) => remote::start(&cli.remote, args),
        Command::Status(args) => remote::status(&cli.remote, args),
        Command::List(args) => remote::list(&cli.remote, args),
        Command::Stop(args) => remote::stop(&cli.remote, args),
        Command::Report(args) => remote::report(&cli.remote, args),
    };
    ExitCode::from(code)
}
