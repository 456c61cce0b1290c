//! `loadwave-target`: the HTTP server loadwave's tests and demos aim at.
//!
//! - `GET /ping` answers `pong`. Query knobs make it a target for testing the tester:
//!   `delay_ms=20` waits before answering, `status=503` answers with that status,
//!   `size=4096` answers with that many bytes, `error_rate=0.1` answers 500 to that share
//!   of requests (deterministically spread by request number).
//! - `GET /metrics` answers `{"requests": .., "responses": .., ...}`: counts since start of
//!   every request other than `/metrics` and `/healthz`, exact under any concurrency.
//! - `GET /healthz` answers `ok`.
//!
//! Built directly on hyper's HTTP/1.1 server with keep-alive, one task per connection on a
//! multi-threaded runtime, so that on one core it outruns one loadwave driver.
//!
//! ```text
//! loadwave-target --listen 127.0.0.1:8080 [--delay-ms 0] [--status 200] [--threads N]
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Command-line options.
#[derive(Debug, Parser)]
#[command(
    name = "loadwave-target",
    version,
    about = "The HTTP server loadwave load tests aim at"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Default delay before every answer, ms (a request's `delay_ms` overrides it).
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Default status of `/ping` answers (a request's `status` overrides it).
    #[arg(long, default_value_t = 200)]
    status: u16,
}

/// Counters shared by every connection.
#[derive(Debug)]
struct Counters {
    started: Instant,
    requests: AtomicU64,
    responses: AtomicU64,
    errors: AtomicU64,
    in_flight: AtomicU64,
    connections: AtomicU64,
}

/// Defaults from the command line.
#[derive(Debug, Clone, Copy)]
struct Defaults {
    delay_ms: u64,
    status: StatusCode,
}

/// The longest delay a request may ask for: a knob, not a way to pin connections forever.
const MAX_DELAY_MS: u64 = 600_000;
/// The largest body a request may ask for.
const MAX_SIZE: usize = 64 << 20;

/// A body of `size` bytes (`x`, at most [`MAX_SIZE`]): a slice of one buffer made at the
/// first such request and shared by every response after, so concurrent large answers
/// cost no memory of their own (16 of 64 MiB each once took the server to 1.05 GB).
fn sized_body(size: usize) -> Bytes {
    static FILL: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    FILL.get_or_init(|| Bytes::from(vec![b'x'; MAX_SIZE]))
        .slice(..size.min(MAX_SIZE))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let status = StatusCode::from_u16(args.status)
        .with_context(|| format!("--status {} is not an HTTP status", args.status))?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour for people at a terminal, plain text in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.threads {
        runtime.worker_threads(threads.max(1));
    }
    runtime.enable_all().build()?.block_on(serve(
        args.listen,
        Defaults {
            delay_ms: args.delay_ms,
            status,
        },
    ))
}

async fn serve(listen: SocketAddr, defaults: Defaults) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let local = listener.local_addr()?;
    // The first line on stdout is the address, so scripts can use `--listen 127.0.0.1:0`.
    println!("listening on http://{local}");
    tracing::info!(%local, "loadwave-target up");
    let counters = Arc::new(Counters {
        started: Instant::now(),
        requests: AtomicU64::new(0),
        responses: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        in_flight: AtomicU64::new(0),
        connections: AtomicU64::new(0),
    });
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(err) => {
                    // Out of file descriptors, typically: back off instead of spinning.
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = shutdown_signal() => return Ok(()),
        };
        let _ = stream.set_nodelay(true);
        let counters = counters.clone();
        tokio::spawn(async move {
            counters.connections.fetch_add(1, Ordering::Relaxed);
            let service = service_fn(|req| handle(req, counters.clone(), defaults));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

async fn handle(
    req: Request<Incoming>,
    counters: Arc<Counters>,
    defaults: Defaults,
) -> Result<Response<Full<Bytes>>, Infallible> {
    match req.uri().path() {
        "/metrics" => return Ok(metrics(&counters)),
        "/healthz" => return Ok(text(StatusCode::OK, Bytes::from_static(b"ok"))),
        _ => {}
    }
    let n = counters.requests.fetch_add(1, Ordering::Relaxed);
    counters.in_flight.fetch_add(1, Ordering::Relaxed);
    let response = answer(&req, n, defaults).await;
    if response.status().as_u16() >= 400 {
        counters.errors.fetch_add(1, Ordering::Relaxed);
    }
    counters.in_flight.fetch_sub(1, Ordering::Relaxed);
    counters.responses.fetch_add(1, Ordering::Relaxed);
    Ok(response)
}

/// Knobs read from the query string.
#[derive(Debug, Default, PartialEq)]
struct Knobs {
    delay_ms: Option<u64>,
    status: Option<u16>,
    size: Option<usize>,
    error_rate: Option<f64>,
}

fn knobs(query: Option<&str>) -> Result<Knobs, String> {
    let mut k = Knobs::default();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let bad = || format!("query parameter `{key}` has an invalid value `{value}`");
        match key {
            "delay_ms" => k.delay_ms = Some(value.parse().map_err(|_| bad())?),
            "status" => k.status = Some(value.parse().map_err(|_| bad())?),
            "size" => k.size = Some(value.parse().map_err(|_| bad())?),
            "error_rate" => {
                let rate: f64 = value.parse().map_err(|_| bad())?;
                if !(0.0..=1.0).contains(&rate) {
                    return Err(bad());
                }
                k.error_rate = Some(rate);
            }
            _ => {}
        }
    }
    Ok(k)
}

async fn answer(req: &Request<Incoming>, n: u64, defaults: Defaults) -> Response<Full<Bytes>> {
    let k = match knobs(req.uri().query()) {
        Ok(k) => k,
        Err(message) => return text(StatusCode::BAD_REQUEST, Bytes::from(message)),
    };
    let delay = k.delay_ms.unwrap_or(defaults.delay_ms).min(MAX_DELAY_MS);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let mut status = match k.status.map(StatusCode::from_u16) {
        None => defaults.status,
        Some(Ok(s)) => s,
        Some(Err(_)) => {
            return text(
                StatusCode::BAD_REQUEST,
                Bytes::from_static(b"query parameter `status` is not an HTTP status"),
            );
        }
    };
    if let Some(rate) = k.error_rate
        && unit_interval(n) < rate
    {
        status = StatusCode::INTERNAL_SERVER_ERROR;
    }
    let body = match k.size {
        Some(size) => sized_body(size),
        None => Bytes::from_static(b"pong"),
    };
    text(status, body)
}

/// Maps request number `n` to [0, 1) with splitmix64, so an error rate is spread evenly
/// and reproducibly over requests.
fn unit_interval(n: u64) -> f64 {
    let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

fn text(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    response
}

fn metrics(c: &Counters) -> Response<Full<Bytes>> {
    let body = serde_json::json!({
        "requests": c.requests.load(Ordering::Relaxed),
        "responses": c.responses.load(Ordering::Relaxed),
        "errors": c.errors.load(Ordering::Relaxed),
        "in_flight": c.in_flight.load(Ordering::Relaxed),
        "connections": c.connections.load(Ordering::Relaxed),
        "uptime_s": c.started.elapsed().as_secs_f64(),
    });
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_knobs() {
        let k = knobs(Some("delay_ms=20&status=503&size=10&error_rate=0.5&x=y")).unwrap();
        assert_eq!(
            k,
            Knobs {
                delay_ms: Some(20),
                status: Some(503),
                size: Some(10),
                error_rate: Some(0.5)
            }
        );
        assert!(
            knobs(Some("delay_ms=soon"))
                .unwrap_err()
                .contains("delay_ms")
        );
        assert!(knobs(Some("error_rate=2")).is_err());
        assert_eq!(knobs(None).unwrap(), Knobs::default());
    }

    /// The issue: every `size` request allocated its own body.
    #[test]
    fn sized_bodies_share_one_buffer() {
        let a = sized_body(4096);
        let b = sized_body(10);
        assert_eq!(a.len(), 4096);
        assert!(a.iter().all(|c| *c == b'x'));
        assert_eq!(&b[..], b"xxxxxxxxxx");
        assert_eq!(a.as_ptr(), b.as_ptr(), "each body has a buffer of its own");
        assert_eq!(sized_body(usize::MAX).len(), MAX_SIZE);
        assert!(sized_body(0).is_empty());
    }

    #[test]
    fn error_rate_spreads_evenly() {
        let hits = (0..100_000u64).filter(|n| unit_interval(*n) < 0.1).count();
        assert!((9_000..11_000).contains(&hits), "{hits}");
    }
}
