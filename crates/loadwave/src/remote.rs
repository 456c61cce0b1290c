//! The commands that talk to an orchestrator: `start`, `status`, `list`, `stop`,
//! `report`.
//!
//! A local orchestrator wants its API token (`Authorization: Bearer`). It comes from
//! `--token-file`, else `LOADWAVE_TOKEN`, else the `token` file the orchestrator wrote
//! in its data directory (`--data-dir`, else `loadwave-data` or `.local/orchestrator`
//! under the current directory); a token found in a data directory is only sent to a
//! loopback address. With `--aws-sigv4` (API Gateway) no token is sent.
//!
//! Whatever the server says is printed with its control characters removed
//! ([`crate::render::clean`]), so no escape sequence reaches the terminal.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use loadwave_core::TestView;
use loadwave_proto::unix_ms_now;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::exit;
use crate::render::{clean, print_view, progress_line, thousands};
use crate::run::exit_code;
use crate::sigv4::Signer;
use crate::spec_args::SpecArgs;

/// Where the orchestrator is.
#[derive(Debug, Args)]
pub struct Remote {
    /// The orchestrator's base URL.
    #[arg(
        long,
        env = "LOADWAVE_ORCHESTRATOR",
        default_value = "http://127.0.0.1:8000",
        global = true
    )]
    orchestrator: String,
    /// Sign every request with AWS SigV4 (an API Gateway with IAM authorization), with
    /// credentials from the standard AWS chain; the region comes from the URL or
    /// `AWS_REGION`.
    #[arg(long, global = true)]
    aws_sigv4: bool,
    /// Read the orchestrator's API token from this file (else `LOADWAVE_TOKEN`, else the
    /// `token` file of the local orchestrator's data directory).
    #[arg(long, global = true, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// The local orchestrator's data directory, whose `token` file holds its API token
    /// (default: `loadwave-data`, then `.local/orchestrator`, as `make local` uses).
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

/// Where a local orchestrator's token is looked for when no data directory is named:
/// the orchestrator's default `--data-dir`, and the one of `make local`.
const DEFAULT_DATA_DIRS: [&str; 2] = ["loadwave-data", ".local/orchestrator"];

/// Whether `base` (the orchestrator's URL) names a loopback host.
fn is_loopback_url(base: &str) -> bool {
    let rest = base.split_once("://").map_or(base, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = host.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        host.split(':').next().unwrap_or("")
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn read_token(path: &std::path::Path) -> Result<String, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Failure(format!(
            "cannot read the token file {}: {e}",
            path.display()
        ))
    })?;
    let token = text.trim().to_string();
    if token.is_empty() {
        return Err(Failure(format!(
            "the token file {} is empty",
            path.display()
        )));
    }
    Ok(token)
}

/// The API token to send to `base`, if any: see the module docs.
fn find_token(remote: &Remote, base: &str) -> Result<Option<String>, Failure> {
    if remote.aws_sigv4 {
        return Ok(None);
    }
    if let Some(path) = &remote.token_file {
        return read_token(path).map(Some);
    }
    if let Ok(token) = std::env::var("LOADWAVE_TOKEN")
        && !token.trim().is_empty()
    {
        return Ok(Some(token.trim().to_string()));
    }
    // A local orchestrator's token goes to a local orchestrator only.
    if !is_loopback_url(base) {
        return Ok(None);
    }
    if let Some(dir) = &remote.data_dir {
        return read_token(&dir.join("token")).map(Some);
    }
    for dir in DEFAULT_DATA_DIRS {
        let path = std::path::Path::new(dir).join("token");
        if path.is_file() {
            return read_token(&path).map(Some);
        }
    }
    Ok(None)
}

/// Flags of `loadwave start`.
#[derive(Debug, Args)]
pub struct StartArgs {
    #[command(flatten)]
    spec: SpecArgs,
    /// Follow the test live until it ends; the exit code is then its verdict.
    #[arg(long)]
    wait: bool,
    /// Print JSON (the created test, or with --wait the final one) instead of text.
    #[arg(long)]
    json: bool,
    /// No live progress line with --wait.
    #[arg(long)]
    no_progress: bool,
}

/// Flags of `loadwave status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The test id.
    id: String,
    /// Print the JSON of `GET /tests/{id}`.
    #[arg(long)]
    json: bool,
}

/// Flags of `loadwave stop`.
#[derive(Debug, Args)]
pub struct StopArgs {
    /// The test id.
    id: String,
}

/// Flags of `loadwave report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The test id.
    id: String,
    /// Write the HTML here instead of stdout.
    #[arg(long, short = 'o', value_name = "FILE")]
    output: Option<PathBuf>,
}

/// Flags of `loadwave list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print the JSON of `GET /tests`.
    #[arg(long)]
    json: bool,
}

/// A failed call, worded for the terminal.
struct Failure(String);

/// The orchestrator's HTTP client: reqwest (async, so SigV4 signing and concurrent calls
/// can come in without another client) driven from the CLI's synchronous commands by a
/// small runtime of its own.
struct Client {
    http: reqwest::Client,
    rt: tokio::runtime::Runtime,
    base: String,
    signer: Option<Signer>,
    token: Option<String>,
}

impl Client {
    fn new(remote: &Remote) -> Result<Client, Failure> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("an HTTP client with the default TLS setup");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the HTTP client");
        let base = remote.orchestrator.trim_end_matches('/').to_string();
        let signer = if remote.aws_sigv4 {
            Some(Signer::from_chain(&base, &rt).map_err(Failure)?)
        } else {
            None
        };
        let token = find_token(remote, &base)?;
        Ok(Client {
            http,
            rt,
            base,
            signer,
            token,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, String), Failure> {
        let url = self.url(path);
        let method = if method == "POST" { "POST" } else { "GET" };
        let body = body.unwrap_or_default();
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if !body.is_empty() {
            headers.push(("content-type", "application/json"));
        }
        let signed = match &self.signer {
            Some(signer) => signer
                .sign(method, &url, &headers, &body, std::time::SystemTime::now())
                .map_err(Failure)?,
            None => Vec::new(),
        };
        let mut request = if method == "POST" {
            self.http.post(&url)
        } else {
            self.http.get(&url)
        };
        for (name, value) in headers.iter().copied() {
            request = request.header(name, value);
        }
        for (name, value) in &signed {
            request = request.header(name.as_str(), value.as_str());
        }
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let request = request.body(body);
        let (status, text) = self.rt.block_on(async {
            let response = request.send().await.map_err(|e| {
                Failure(format!(
                    "cannot reach the orchestrator at {}: {e}",
                    self.base
                ))
            })?;
            let status = response.status().as_u16();
            let text = response
                .text()
                .await
                .map_err(|e| Failure(format!("reading the answer of {url}: {e}")))?;
            Ok::<_, Failure>((status, text))
        })?;
        if status >= 400 {
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| {
                    let e = v.get("error")?;
                    let msg = e.get("message")?.as_str()?.to_string();
                    Some(match e.get("field").and_then(Value::as_str) {
                        Some(field) => format!("{field}: {msg}"),
                        None => msg,
                    })
                })
                .unwrap_or(text);
            let hint = if status == 401 && self.token.is_none() {
                " (no token was sent: set LOADWAVE_TOKEN, or give --token-file or the orchestrator's --data-dir)"
            } else {
                ""
            };
            return Err(Failure(format!(
                "the orchestrator answered {status}: {message}{hint}"
            )));
        }
        Ok((status, text))
    }

    fn json<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, Failure> {
        let (_, text) = self.call(method, path, body)?;
        serde_json::from_str(&text)
            .map_err(|e| Failure(format!("unexpected answer from {}{path}: {e}", self.base)))
    }
}

fn fail(f: Failure) -> u8 {
    eprintln!("error: {}", clean(&f.0));
    exit::ERROR
}

/// `loadwave start`.
pub fn start(remote: &Remote, args: StartArgs) -> u8 {
    let spec = match args.spec.to_spec() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::ERROR;
        }
    };
    let client = match Client::new(remote) {
        Ok(c) => c,
        Err(f) => return fail(f),
    };
    let body = serde_json::to_vec(&spec).expect("specs serialize");
    let created: TestView = match client.json("POST", "/tests", Some(body)) {
        Ok(v) => v,
        Err(f) => return fail(f),
    };
    if !args.wait {
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&created).expect("views serialize")
            );
        } else {
            println!("{}", clean(&created.id));
            eprintln!(
                "follow it: loadwave status {} --orchestrator {}",
                clean(&created.id),
                client.base
            );
        }
        return exit::PASS;
    }
    let show_progress = !args.no_progress && std::io::stderr().is_terminal();
    match follow(&client, &created.id, show_progress) {
        Ok(view) => {
            print_view(&view, args.json);
            if !args.json {
                println!(
                    "  report        {}",
                    clean(&client.url(&format!("/tests/{}/report", view.id)))
                );
            }
            exit_code(&view)
        }
        Err(f) => fail(f),
    }
}

/// Polls the test until it ends. Ctrl-C asks the orchestrator to stop it (a second
/// Ctrl-C leaves at once).
fn follow(client: &Client, id: &str, show_progress: bool) -> Result<TestView, Failure> {
    // A second Ctrl-C leaves at once, and an orchestrator that does not answer cannot hold
    // the command past the stop deadline.
    let interrupted = tokio_util::sync::CancellationToken::new();
    let _ = on_signals_in_background(interrupted.clone());
    let mut stop_sent = false;
    let mut failures = 0;
    loop {
        if interrupted.is_cancelled() && !stop_sent {
            stop_sent = true;
            eprintln!("\nstopping test {id} (Ctrl-C again to leave it running)");
            let _ = client.call("POST", &format!("/tests/{id}/stop"), None);
        }
        match client.json::<TestView>("GET", &format!("/tests/{id}"), None) {
            Ok(view) => {
                failures = 0;
                if show_progress {
                    let mut err = std::io::stderr().lock();
                    let line = clean(&progress_line(&view, unix_ms_now())).into_owned();
                    let _ = write!(err, "\r\x1b[2K{line}");
                    if view.status.is_finished() {
                        let _ = writeln!(err);
                    }
                    let _ = err.flush();
                }
                if view.status.is_finished() {
                    return Ok(view);
                }
            }
            // An orchestrator restart is survivable: keep asking for a while.
            Err(f) if failures < 60 => {
                failures += 1;
                tracing::debug!(error = %f.0, "poll failed");
            }
            Err(f) => return Err(f),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// [`loadwave_bus::stop::on_signals`] for the CLI's remote commands, which are
/// synchronous: the watcher runs on a runtime in a thread of its own.
fn on_signals_in_background(stop: tokio_util::sync::CancellationToken) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async { loadwave_bus::stop::on_signals(stop, i32::from(exit::ERROR)) })?;
    std::thread::spawn(move || runtime.block_on(std::future::pending::<()>()));
    Ok(())
}

/// `loadwave status`.
pub fn status(remote: &Remote, args: StatusArgs) -> u8 {
    let client = match Client::new(remote) {
        Ok(c) => c,
        Err(f) => return fail(f),
    };
    match client.json::<TestView>("GET", &format!("/tests/{}", args.id), None) {
        Ok(view) => {
            print_view(&view, args.json);
            exit::PASS
        }
        Err(f) => fail(f),
    }
}

/// `loadwave list`.
pub fn list(remote: &Remote, args: ListArgs) -> u8 {
    let client = match Client::new(remote) {
        Ok(c) => c,
        Err(f) => return fail(f),
    };
    // The orchestrator answers a page at a time, newest first: follow the pages.
    const PAGE: usize = 1_000;
    let mut tests: Vec<Value> = Vec::new();
    loop {
        let cursor = tests
            .last()
            .and_then(|t| t["id"].as_str())
            .map(str::to_string);
        let uri = match &cursor {
            Some(c) => format!("/tests?limit={PAGE}&cursor={c}"),
            None => format!("/tests?limit={PAGE}"),
        };
        let page: Vec<Value> = match client.json("GET", &uri, None) {
            Ok(t) => t,
            Err(f) => return fail(f),
        };
        let full = page.len() >= PAGE;
        // An orchestrator that ignores the cursor answers the same page again.
        let moved = page
            .last()
            .and_then(|t| t["id"].as_str())
            .is_some_and(|last| cursor.as_deref().is_none_or(|c| last < c));
        if cursor.is_none() || moved {
            tests.extend(page);
        }
        if !full || !moved {
            break;
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&tests).expect("values serialize")
        );
        return exit::PASS;
    }
    println!(
        "{:<34} {:<10} {:<10} {:>12} {:>10} {:>10} {:<7} name",
        "id", "status", "type", "requests", "rps", "p99 ms", "verdict"
    );
    for t in &tests {
        let s = |k: &str| t.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let f = |k: &str| t.get(k).and_then(Value::as_f64).unwrap_or(0.0);
        let s = |k: &str| clean(&s(k)).into_owned();
        println!(
            "{:<34} {:<10} {:<10} {:>12} {:>10.0} {:>10.2} {:<7} {}",
            s("id"),
            s("status"),
            s("test_type"),
            thousands(t.get("requests").and_then(Value::as_u64).unwrap_or(0)),
            f("rps"),
            f("p99_ms"),
            match t.get("passed").and_then(Value::as_bool) {
                Some(true) => "pass",
                Some(false) => "fail",
                None => "-",
            },
            s("name")
        );
    }
    exit::PASS
}

/// `loadwave stop`.
pub fn stop(remote: &Remote, args: StopArgs) -> u8 {
    let client = match Client::new(remote) {
        Ok(c) => c,
        Err(f) => return fail(f),
    };
    match client.call("POST", &format!("/tests/{}/stop", args.id), None) {
        Ok(_) => {
            println!("stopping {}", args.id);
            exit::PASS
        }
        Err(f) => fail(f),
    }
}

/// `loadwave report`.
pub fn report(remote: &Remote, args: ReportArgs) -> u8 {
    let client = match Client::new(remote) {
        Ok(c) => c,
        Err(f) => return fail(f),
    };
    let html = match client.call("GET", &format!("/tests/{}/report", args.id), None) {
        Ok((_, html)) => html,
        Err(f) => return fail(f),
    };
    match &args.output {
        Some(path) => match std::fs::write(path, html) {
            Ok(()) => {
                eprintln!("wrote {}", path.display());
                exit::PASS
            }
            Err(e) => fail(Failure(format!("cannot write {}: {e}", path.display()))),
        },
        None => {
            // To a terminal, perhaps: no escape sequences. A file (-o) gets the page as is.
            print!("{}", clean(&html));
            exit::PASS
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_urls() {
        for url in [
            "http://127.0.0.1:8000",
            "http://localhost:8000/",
            "http://[::1]:8000",
            "http://127.0.0.2",
            "http://user@127.0.0.1:1",
        ] {
            assert!(is_loopback_url(url), "{url}");
        }
        for url in [
            "http://10.0.0.1:8000",
            "https://abc.execute-api.eu-west-1.amazonaws.com/prod",
            "http://localhost.evil.example",
            "http://127.0.0.1.evil.example",
        ] {
            assert!(!is_loopback_url(url), "{url}");
        }
    }
}
