//! The engine's HTTP/1.1 client against servers that answer in every way the protocol
//! allows: a scripted TCP server (fragmented chunked bodies, interim responses,
//! `Connection: close`, idle connections closed under the client, bodies cut short,
//! stalls) and a real nginx (gzip-chunked, keep-alive limits, 0 B / 1 B / 1 MiB bodies,
//! https). Every test compares what the client counted with what the server saw.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use loadwave_engine::client::Target;
use loadwave_engine::engine::{self, Model, Plan};
use loadwave_proto::{ErrorKind, TestSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What a run counted.
#[derive(Debug, Default)]
struct Tally {
    requests: u64,
    ok: u64,
    errors: Vec<(ErrorKind, u64)>,
    sent: u64,
}

fn spec(url: &str, timeout_ms: u64, headers: &[(&str, &str)]) -> TestSpec {
    let headers: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
        .collect();
    serde_json::from_value(serde_json::json!({
        "target_url": url,
        "test_type": "avalanche",
        "requests_per_driver": 1,
        "timeout_ms": timeout_ms,
        "headers": headers,
    }))
    .expect("valid spec")
}

async fn run(target: Target, model: Model, requests: u64, concurrency: u32) -> Tally {
    let plan = Plan::new(target, model, requests, concurrency);
    let start = Instant::now() + Duration::from_millis(20);
    let mut handle = engine::start(plan, start, CancellationToken::new());
    let outcome = handle.finished().await;
    let mut tally = Tally {
        sent: outcome.sent,
        ..Tally::default()
    };
    for bucket in handle.drain() {
        let w = bucket.to_wire();
        tally.requests += w.requests;
        tally.ok += w.status_codes.get(&200).copied().unwrap_or(0);
        for (kind, n) in w.error_kinds {
            tally.errors.push((kind, n));
        }
    }
    tally
}

/// How the scripted server answers its n-th request (counting from 0).
#[derive(Clone)]
enum Reply {
    /// Writes these pieces (a pause between them) and, if asked, closes the connection.
    Send(Vec<Vec<u8>>, bool),
    /// Never answers.
    Stall,
}

/// A TCP server that reads request heads and answers each as `script` says.
async fn scripted(
    script: impl Fn(u64) -> Reply + Send + Sync + 'static,
) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicU64::new(0));
    let script = Arc::new(script);
    let counter = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let _ = sock.set_nodelay(true);
            let (script, seen) = (script.clone(), counter.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    buf.drain(..head_end);
                    let n = seen.fetch_add(1, Ordering::SeqCst);
                    match script(n) {
                        Reply::Stall => {
                            tokio::time::sleep(Duration::from_secs(60)).await;
                            return;
                        }
                        Reply::Send(pieces, close) => {
                            let many = pieces.len() > 1;
                            for piece in pieces {
                                if sock.write_all(&piece).await.is_err() {
                                    return;
                                }
                                if many {
                                    tokio::time::sleep(Duration::from_millis(1)).await;
                                }
                            }
                            if close {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, seen)
}

fn ok_with_body(size: usize) -> Vec<u8> {
    let mut r = format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n").into_bytes();
    r.resize(r.len() + size, b'x');
    r
}

async fn target_at(addr: SocketAddr, timeout_ms: u64) -> Target {
    Target::new(&spec(&format!("http://{addr}/"), timeout_ms, &[]))
        .await
        .unwrap()
}

#[tokio::test]
async fn content_length_bodies_of_0_1_and_1_mib_keep_the_connection() {
    for size in [0, 1, 1 << 20] {
        let body = ok_with_body(size);
        let (addr, seen) = scripted(move |_| Reply::Send(vec![body.clone()], false)).await;
        let requests = if size > 1000 { 40 } else { 400 };
        let t = run(target_at(addr, 5_000).await, Model::Avalanche, requests, 4).await;
        assert_eq!(
            (t.requests, t.ok, t.sent),
            (requests, requests, requests),
            "body of {size} B: {t:?}"
        );
        assert_eq!(seen.load(Ordering::SeqCst), requests);
    }
}

#[tokio::test]
async fn chunked_bodies_in_fragments_and_interim_responses() {
    let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n5;x=y\r\npedia\r\n0\r\nTrailer: 1\r\n\r\n".to_vec();
    let pieces: Vec<Vec<u8>> = chunked.chunks(7).map(<[u8]>::to_vec).collect();
    let (addr, seen) = scripted(move |_| Reply::Send(pieces.clone(), false)).await;
    let t = run(target_at(addr, 5_000).await, Model::Avalanche, 60, 3).await;
    assert_eq!((t.requests, t.ok), (60, 60), "{t:?}");
    assert_eq!(seen.load(Ordering::SeqCst), 60);

    // An interim 100 and the final answer in one write: pipelined-looking, one request.
    let both =
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec();
    let (addr, seen) = scripted(move |_| Reply::Send(vec![both.clone()], false)).await;
    let t = run(target_at(addr, 5_000).await, Model::Avalanche, 200, 2).await;
    assert_eq!((t.requests, t.ok), (200, 200), "{t:?}");
    assert_eq!(seen.load(Ordering::SeqCst), 200);
}

#[tokio::test]
async fn connection_close_and_bodies_that_run_to_the_close() {
    let close = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok".to_vec();
    let keep = ok_with_body(2);
    let (addr, seen) = scripted(move |n| {
        if n % 3 == 2 {
            Reply::Send(vec![close.clone()], true)
        } else {
            Reply::Send(vec![keep.clone()], false)
        }
    })
    .await;
    let t = run(target_at(addr, 5_000).await, Model::Avalanche, 300, 4).await;
    assert_eq!((t.requests, t.ok), (300, 300), "{t:?}");
    assert_eq!(seen.load(Ordering::SeqCst), 300);

    let old = b"HTTP/1.0 200 OK\r\n\r\nall of this until the close".to_vec();
    let (addr, seen) = scripted(move |_| Reply::Send(vec![old.clone()], true)).await;
    let t = run(target_at(addr, 5_000).await, Model::Avalanche, 100, 2).await;
    assert_eq!((t.requests, t.ok), (100, 100), "{t:?}");
    assert_eq!(seen.load(Ordering::SeqCst), 100);
}

#[tokio::test]
async fn idle_connections_closed_by_the_server_are_retried_and_counted_once() {
    // The server closes after every response without saying so, as an idle timeout
    // would: each reuse finds the connection gone and sends again on a new one.
    let body = ok_with_body(3);
    let (addr, seen) = scripted(move |_| Reply::Send(vec![body.clone()], true)).await;
    let t = run(target_at(addr, 5_000).await, Model::Avalanche, 200, 2).await;
    assert_eq!((t.requests, t.ok, t.sent), (200, 200, 200), "{t:?}");
    assert!(t.errors.is_empty(), "{t:?}");
    assert_eq!(seen.load(Ordering::SeqCst), 200);
}

#[tokio::test]
async fn bodies_cut_short_are_resets_and_stalls_are_timeouts() {
    let cut = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc".to_vec();
    let (addr, seen) = scripted(move |_| Reply::Send(vec![cut.clone()], true)).await;
    let t = run(target_at(addr, 5_000).await, Model::Avalanche, 50, 2).await;
    assert_eq!((t.requests, t.ok), (50, 0), "{t:?}");
    assert_eq!(t.errors, vec![(ErrorKind::Reset, 50)]);
    assert_eq!(seen.load(Ordering::SeqCst), 50);

    let garbage = b"SSH-2.0-OpenSSH_9.2\r\n\r\n".to_vec();
    let (addr, _) = scripted(move |_| Reply::Send(vec![garbage.clone()], true)).await;
    let t = run(target_at(addr, 5_000).await, Model::Avalanche, 10, 2).await;
    assert_eq!(t.errors, vec![(ErrorKind::Other, 10)], "{t:?}");

    let (addr, seen) = scripted(|_| Reply::Stall).await;
    let t = run(target_at(addr, 300).await, Model::Avalanche, 6, 3).await;
    assert_eq!((t.requests, t.sent), (6, 6), "{t:?}");
    assert_eq!(t.errors, vec![(ErrorKind::Timeout, 6)]);
    assert_eq!(seen.load(Ordering::SeqCst), 6);
}

#[tokio::test]
async fn paced_requests_report_their_send_lag() {
    let body = ok_with_body(2);
    let (addr, _) = scripted(move |_| Reply::Send(vec![body.clone()], false)).await;
    let plan = Plan::new(
        target_at(addr, 5_000).await,
        Model::Tsunami {
            delay: Duration::from_millis(5),
        },
        40,
        4,
    );
    let mut handle = engine::start(plan, Instant::now(), CancellationToken::new());
    handle.finished().await;
    let lag = handle.send_lag().expect("paced requests measure their lag");
    // Requests that found every connection busy are not measured; with four connections
    // and 5 ms between requests to a local server, most are.
    assert!(lag.count >= 20 && lag.count <= 40, "{lag:?}");
    assert!(
        lag.p50_us <= lag.p99_us && lag.p99_us <= lag.max_us,
        "{lag:?}"
    );
}

/// A throwaway CA and a certificate for `localhost` signed by it, made with openssl.
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let sh = |script: &str| {
        let ok = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(dir)
            .status()
            .expect("openssl runs")
            .success();
        assert!(ok, "openssl failed: {script}");
    };
    sh(
        "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=loadwave-test-ca \
        -keyout ca.key -out ca.pem 2>/dev/null",
    );
    sh(
        "openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key \
        -out server.csr 2>/dev/null",
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    sh(
        "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
        -extfile ext.cnf -out server.pem 2>/dev/null",
    );
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn against_nginx_gzip_chunked_keepalive_limits_large_bodies_and_https() {
    let Some(nginx) = std::env::var_os("LOADWAVE_TEST_NGINX") else {
        eprintln!("LOADWAVE_TEST_NGINX is not set (make test sets it); skipping the nginx test");
        return;
    };
    let dir = std::env::temp_dir().join(format!("loadwave-nginx-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("www")).unwrap();
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    std::fs::write(dir.join("www/empty.txt"), b"").unwrap();
    std::fs::write(dir.join("www/one.txt"), b"1").unwrap();
    std::fs::write(dir.join("www/mib.txt"), vec![b'a'; 1 << 20]).unwrap();
    let (ca, cert, key) = certificates(&dir);
    let (port, tls_port) = (free_port(), free_port());
    let conf = format!(
        "daemon off; master_process off; worker_processes 1;\n\
         pid {d}/nginx.pid; error_log {d}/logs/error.log warn;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n\
           access_log {d}/logs/access.log;\n\
           default_type text/plain;\n\
           keepalive_requests 7;\n\
           gzip on; gzip_min_length 0; gzip_types text/plain;\n\
           server {{\n\
             listen 127.0.0.1:{port};\n\
             listen 127.0.0.1:{tls_port} ssl;\n\
             ssl_certificate {cert}; ssl_certificate_key {key};\n\
             root {d}/www;\n\
           }}\n\
         }}\n",
        d = dir.display(),
        cert = cert.display(),
        key = key.display(),
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let _server = Nginx(
        Command::new(nginx)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .spawn()
            .expect("nginx starts"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", tls_port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nginx did not start; see {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    type Headers<'a> = &'a [(&'a str, &'a str)];
    let gzip = [("Accept-Encoding", "gzip")];
    let cases: [(String, Headers, u64); 5] = [
        (format!("http://127.0.0.1:{port}/empty.txt"), &[], 300),
        (format!("http://127.0.0.1:{port}/one.txt"), &[], 300),
        (format!("http://127.0.0.1:{port}/mib.txt"), &[], 30),
        // gzip makes nginx stream the body chunked.
        (format!("http://127.0.0.1:{port}/mib.txt"), &gzip, 30),
        (format!("https://localhost:{tls_port}/one.txt"), &gzip, 200),
    ];
    let mut total = 0;
    for (url, headers, requests) in cases {
        let target = Target::with_ca_file(&spec(&url, 10_000, headers), Some(&ca))
            .await
            .unwrap();
        let t = run(target, Model::Avalanche, requests, 3).await;
        assert_eq!(
            (t.requests, t.ok),
            (requests, requests),
            "{url} {headers:?}: {t:?}"
        );
        total += requests;
    }
    // nginx logs a request when it has answered it; give the last lines a moment.
    let log = dir.join("logs/access.log");
    let mut lines = 0;
    for _ in 0..50 {
        lines = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count() as u64;
        if lines >= total {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(lines, total, "nginx's access log against our count");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        logged.lines().filter(|l| l.contains(" 200 ")).count() as u64,
        total
    );

    // The gzip case really was chunked.
    use std::io::{Read, Write};
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    raw.write_all(
        b"GET /mib.txt HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut head = [0u8; 1024];
    let n = raw.read(&mut head).unwrap();
    let head = String::from_utf8_lossy(&head[..n]).to_ascii_lowercase();
    assert!(head.contains("transfer-encoding: chunked"), "{head}");

    // A certificate the client does not trust is a TLS error, not a response.
    let untrusted = Target::with_ca_file(
        &spec(
            &format!("https://localhost:{tls_port}/one.txt"),
            10_000,
            &[],
        ),
        None,
    )
    .await
    .unwrap();
    let t = run(untrusted, Model::Avalanche, 5, 1).await;
    assert_eq!(t.errors, vec![(ErrorKind::Tls, 5)], "{t:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
