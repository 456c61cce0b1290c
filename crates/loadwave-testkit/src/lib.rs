//! Helpers for loadwave's integration tests, which run the real binaries.
//!
//! - [`bin`] finds a workspace binary next to the running test's own binaries (`make test`
//!   builds every binary of the workspace before the tests run);
//! - [`Proc`] is a child process killed (and reaped) when dropped;
//! - [`TargetServer`] is a `loadwave-target` on a free port with its `/metrics` at hand;
//! - [`http_get`] is a dependency-free GET for the tests' own checks ([`api_get`] with an
//!   orchestrator's token);
//! - [`orchestrator_token`] reads the API token a local orchestrator wrote to its data
//!   directory, [`bearer`] makes the `Authorization` value of it;
//! - [`messages`] builds driver messages for tests that feed a controller by hand.

pub mod messages;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The path of workspace binary `name`, next to `sibling` (a binary Cargo told the test
/// about, such as `env!("CARGO_BIN_EXE_loadwave")`).
pub fn bin(sibling: &str, name: &str) -> PathBuf {
    let path = Path::new(sibling).with_file_name(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (`cargo build --workspace --bins`, as `make test` does)",
        path.display()
    );
    path
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A child process, killed when dropped.
pub struct Proc {
    child: Child,
}

impl Proc {
    /// Wraps a spawned child.
    pub fn new(child: Child) -> Proc {
        Proc { child }
    }

    /// Starts `cmd` with its stderr and stdout appended to `log`.
    pub fn spawn_logged(cmd: &mut Command, log: &Path) -> Proc {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Proc { child }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (a name such as `KILL`, `TERM`, `INT`).
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{signal} {} failed", self.child.id());
    }

    /// Kills with SIGKILL and reaps.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A `loadwave-target` on 127.0.0.1 and a free port.
pub struct TargetServer {
    proc: Proc,
    addr: String,
}

impl TargetServer {
    /// Starts the target binary at `path` with one worker thread plus `extra` flags.
    pub fn start(path: &Path, extra: &[&str]) -> TargetServer {
        let mut child = Command::new(path)
            .args(["--listen", "127.0.0.1:0", "--threads", "1"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("target starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("target prints its address");
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        TargetServer {
            proc: Proc::new(child),
            addr,
        }
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The target's own `/metrics`.
    pub fn metrics(&self) -> serde_json::Value {
        let (_, body) = http_get(&self.addr, "/metrics").expect("target answers /metrics");
        serde_json::from_str(&body).expect("metrics are JSON")
    }

    /// The target's request count.
    pub fn requests(&self) -> u64 {
        self.metrics()["requests"].as_u64().expect("a count")
    }

    /// Sends `signal` (`TERM`, `INT`, …) to the target's process.
    pub fn signal(&self, signal: &str) {
        self.proc.signal(signal);
    }

    /// Whether its process is still running.
    pub fn running(&mut self) -> bool {
        self.proc.running()
    }
}

/// The API token of a local orchestrator: the `token` file it writes to `data_dir` at
/// start (before it listens), waited for up to `limit`.
pub fn orchestrator_token(data_dir: &Path, limit: std::time::Duration) -> String {
    let path = data_dir.join("token");
    let started = std::time::Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(&path)
            && !text.trim().is_empty()
        {
            return text.trim().to_string();
        }
        assert!(
            started.elapsed() < limit,
            "{} did not appear within {limit:?}",
            path.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// `Bearer TOKEN`: the `Authorization` value of an orchestrator's token.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// `GET path` over HTTP/1.0 to `addr` (`host:port`): status and body.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    get_with(addr, path, "")
}

/// [`http_get`] to an orchestrator's API, with its `token`.
pub fn api_get(addr: &str, path: &str, token: &str) -> std::io::Result<(u16, String)> {
    get_with(addr, path, &format!("Authorization: {}\r\n", bearer(token)))
}

fn get_with(addr: &str, path: &str, extra: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{extra}\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}
