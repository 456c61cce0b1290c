//! One keep-alive HTTP/1.1 connection per load worker, written for the hot path.
//!
//! A worker sends one request at a time, so a general-purpose client (a pool behind a
//! lock, a connection task, header maps built per request) buys nothing. Here the
//! request is serialised once per driver ([`Target`]) and written as it is; the response
//! is read into the connection's own buffer and framed by [`crate::http1`], its body
//! counted and dropped. A request costs a write, a read and one wake-up, as in wrk.
//!
//! A test with a request mix builds one [`Target`] per request ([`Targets`]); a worker
//! keeps one connection per endpoint (scheme, host and port), so requests to the same
//! host share a connection and a mix over several hosts still reuses each.
//!
//! A keep-alive connection the server closed while it was idle is noticed only when it is
//! next used: a request that got nothing back on a reused connection (no byte of a
//! response) is sent once more on a new one, as browsers and Go's client do, and counts
//! once.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use loadwave_proto::{
    ErrorKind, ResolvedRequest, TargetUrl, TestSpec, forbidden_address, parse_target_url,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::EngineError;
use crate::http1::{self, Head, ResponseReader, Step};

/// The connection buffer's starting size; it grows only for response heads this big.
const BUFFER: usize = 16 * 1024;

/// Everything needed to send the test's request, built once per driver.
pub struct Target {
    url: TargetUrl,
    addrs: Vec<SocketAddr>,
    request: Bytes,
    head_request: bool,
    /// The request asks for `Connection: close`.
    closes: bool,
    timeout: Duration,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl Target {
    /// Prepares the (first) request of `spec` and resolves its host once.
    ///
    /// A host that does not resolve is not an error here: every request then counts as a
    /// `connect` error, which is what the user needs to see.
    pub async fn new(spec: &TestSpec) -> Result<Target, EngineError> {
        let ca_file = std::env::var_os("SSL_CERT_FILE").map(std::path::PathBuf::from);
        Target::with_ca_file(spec, ca_file.as_deref()).await
    }

    /// [`Target::new`] with `ca_file` (PEM certificates) trusted for https besides the
    /// public roots; `Target::new` takes it from `SSL_CERT_FILE`, as curl and OpenSSL do.
    pub async fn with_ca_file(
        spec: &TestSpec,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Target, EngineError> {
        let first = spec
            .request_list()
            .into_iter()
            .next()
            .ok_or_else(|| EngineError::Invalid("request: the spec has none".into()))?;
        Target::for_request(&first, spec.timeout_ms, ca_file).await
    }

    /// Prepares one request of a test: its bytes, its TLS setup, its resolved host.
    pub async fn for_request(
        req: &ResolvedRequest,
        timeout_ms: u64,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Target, EngineError> {
        let url = parse_target_url(&req.url).map_err(EngineError::Spec)?;
        let method = http::Method::from_bytes(req.method.as_bytes())
            .map_err(|_| EngineError::Invalid(format!("method `{}`", req.method)))?;
        let _: http::Uri = url
            .path_and_query
            .parse()
            .map_err(|_| EngineError::Invalid(format!("path `{}`", url.path_and_query)))?;
        http::HeaderValue::from_str(&url.authority)
            .map_err(|_| EngineError::Invalid(format!("host `{}`", url.authority)))?;
        let mut headers = Vec::with_capacity(req.headers.len());
        for (name, value) in &req.headers {
            http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| EngineError::Invalid(format!("header name `{name}`")))?;
            http::HeaderValue::from_str(value)
                .map_err(|_| EngineError::Invalid(format!("header value of `{name}`")))?;
            headers.push((name.clone(), value.clone()));
        }
        let body = req.body.as_deref().unwrap_or_default().as_bytes();
        let (request, closes) = http1::encode_request(
            method.as_str(),
            &url.path_and_query,
            &url.authority,
            &headers,
            body,
        );
        let tls = if url.tls {
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            if let Some(path) = ca_file {
                let unreadable = |e: &dyn std::fmt::Display| {
                    EngineError::Invalid(format!("CA file `{}`: {e}", path.display()))
                };
                let certs = CertificateDer::pem_file_iter(path).map_err(|e| unreadable(&e))?;
                for cert in certs {
                    let cert = cert.map_err(|e| unreadable(&e))?;
                    roots.add(cert).map_err(|e| unreadable(&e))?;
                }
            }
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| EngineError::Invalid(format!("TLS setup: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
            let name = ServerName::try_from(url.host.clone())
                .map_err(|_| EngineError::Invalid(format!("TLS server name `{}`", url.host)))?;
            Some((TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        let addrs: Vec<SocketAddr> =
            match tokio::net::lookup_host((url.host.as_str(), url.port)).await {
                Ok(addrs) => addrs.collect(),
                Err(err) => {
                    tracing::warn!(host = %url.host, %err, "target host does not resolve");
                    Vec::new()
                }
            };
        // Defence in depth behind the API's own check: a name that resolves to a metadata
        // service is refused here too, on every address it resolves to.
        if let Some((addr, why)) = addrs
            .iter()
            .find_map(|a| forbidden_address(a.ip()).map(|why| (a, why)))
        {
            return Err(EngineError::Invalid(format!(
                "target `{}` resolves to {}, {why}; refused",
                url.host,
                addr.ip()
            )));
        }
        Ok(Target {
            url,
            addrs,
            request,
            head_request: method == http::Method::HEAD,
            closes,
            timeout: Duration::from_millis(timeout_ms),
            tls,
        })
    }

    /// Where its connections go: requests with the same endpoint share one.
    fn endpoint(&self) -> (bool, &str, u16) {
        (self.url.tls, self.url.host.as_str(), self.url.port)
    }

    /// The per-request timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    async fn connect(&self) -> Result<Stream, ErrorKind> {
        let mut last = ErrorKind::Connect;
        for addr in &self.addrs {
            match self.connect_to(*addr).await {
                Ok(stream) => return Ok(stream),
                Err(kind) => last = kind,
            }
        }
        Err(last)
    }

    async fn connect_to(&self, addr: SocketAddr) -> Result<Stream, ErrorKind> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|_| ErrorKind::Connect)?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => Ok(Stream::Plain(tcp)),
            Some((connector, name)) => {
                let stream = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|_| ErrorKind::Tls)?;
                Ok(Stream::Tls(Box::new(stream)))
            }
        }
    }
}

/// Every request of a test, built once per driver, and the mix that picks among them.
#[derive(Debug)]
pub struct Targets {
    list: Vec<Target>,
    /// Per request, the connection slot (endpoint) it goes through.
    endpoint: Vec<usize>,
    /// Per endpoint, its first request (a connection is opened with it).
    first_of_endpoint: Vec<usize>,
    /// The mix as a cycle: the driver's request `k` is `order[k % order.len()]`. A smooth
    /// weighted round-robin, so a 3:1 mix is exactly 3:1 over every four requests and its
    /// requests interleave rather than come in runs.
    order: Vec<u16>,
    mixed: bool,
}

/// The largest cycle a mix's weights are scaled to.
const MIX_CYCLE: f64 = 1_000.0;

impl Targets {
    /// Builds every request of `spec`; `SSL_CERT_FILE`, when set, is trusted for https.
    pub async fn new(spec: &TestSpec) -> Result<Targets, EngineError> {
        let ca_file = std::env::var_os("SSL_CERT_FILE").map(std::path::PathBuf::from);
        let requests = spec.request_list();
        let mut list = Vec::with_capacity(requests.len());
        for req in &requests {
            list.push(Target::for_request(req, spec.timeout_ms, ca_file.as_deref()).await?);
        }
        let weights: Vec<f64> = requests.iter().map(|r| r.weight).collect();
        Ok(Targets::assemble(list, &weights, spec.is_mix()))
    }

    /// One request, no mix.
    pub fn single(target: Target) -> Targets {
        Targets::assemble(vec![target], &[1.0], false)
    }

    fn assemble(list: Vec<Target>, weights: &[f64], mixed: bool) -> Targets {
        let mut endpoint = Vec::with_capacity(list.len());
        let mut first_of_endpoint = Vec::new();
        let mut seen: Vec<(bool, &str, u16)> = Vec::new();
        for (i, t) in list.iter().enumerate() {
            let e = t.endpoint();
            match seen.iter().position(|s| *s == e) {
                Some(slot) => endpoint.push(slot),
                None => {
                    endpoint.push(seen.len());
                    seen.push(e);
                    first_of_endpoint.push(i);
                }
            }
        }
        Targets {
            order: mix_order(weights),
            list,
            endpoint,
            first_of_endpoint,
            mixed,
        }
    }

    /// Which request the driver's request number `k` is.
    #[inline]
    pub fn pick(&self, k: u64) -> usize {
        if self.order.len() == 1 {
            usize::from(self.order[0])
        } else {
            usize::from(self.order[(k % self.order.len() as u64) as usize])
        }
    }

    /// Request `i`.
    #[inline]
    pub fn get(&self, i: usize) -> &Target {
        &self.list[i]
    }

    /// The connection slot request `i` goes through.
    #[inline]
    pub fn endpoint_of(&self, i: usize) -> usize {
        self.endpoint[i]
    }

    /// A request of each endpoint, in slot order (to open connections ahead of time).
    pub fn endpoint_targets(&self) -> Vec<&Target> {
        self.first_of_endpoint
            .iter()
            .map(|&i| &self.list[i])
            .collect()
    }

    /// How many requests there are.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether there are none (never, for a validated spec).
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Whether the requests are reported one by one.
    pub fn is_mix(&self) -> bool {
        self.mixed
    }
}

/// The mix's cycle of request indices from their weights: integer weights as they are
/// (reduced by their common divisor) when the cycle stays short, else scaled to a cycle
/// of about [`MIX_CYCLE`] with every positive weight keeping at least one slot.
fn mix_order(weights: &[f64]) -> Vec<u16> {
    if weights.len() <= 1 {
        return vec![0];
    }
    let integral =
        weights.iter().all(|w| w.fract() == 0.0) && weights.iter().sum::<f64>() <= 10_000.0;
    let mut w: Vec<u64> = if integral {
        weights.iter().map(|w| *w as u64).collect()
    } else {
        let sum: f64 = weights.iter().sum();
        weights
            .iter()
            .map(|&x| {
                if x > 0.0 {
                    ((x / sum) * MIX_CYCLE).round().max(1.0) as u64
                } else {
                    0
                }
            })
            .collect()
    };
    let g = w.iter().copied().filter(|x| *x > 0).fold(0, gcd);
    if g > 1 {
        for x in &mut w {
            *x /= g;
        }
    }
    let total: u64 = w.iter().sum();
    let mut current = vec![0i64; w.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, x) in current.iter_mut().zip(&w) {
            *c += *x as i64;
        }
        let (best, _) = current
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(&a.0)))
            .expect("a mix has requests");
        current[best] -= total as i64;
        order.push(best as u16);
    }
    order
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// A connection's transport.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(bytes).await,
            Stream::Tls(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
        }
    }

    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf).await,
            Stream::Tls(s) => s.read(buf).await,
        }
    }
}

/// What one request produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A whole response with this status.
    Response(u16),
    /// No response.
    Error(ErrorKind),
}

/// Why reading a response failed, before it is sorted into an [`ErrorKind`].
enum ReadError {
    Io(std::io::Error),
    Protocol(http1::ProtocolError),
}

/// A worker's connection, opened on first use and after failures.
pub struct Connection {
    stream: Option<Stream>,
    /// Whether the open stream has carried a whole response already.
    reused: bool,
    buf: Vec<u8>,
    /// Unconsumed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    reader: ResponseReader,
    /// Set while a request is on the wire: a send that was cancelled (its timeout)
    /// leaves it set, and the half-read connection is dropped before the next one.
    in_flight: bool,
}

impl Connection {
    /// An unopened connection for `target`'s request.
    pub fn new(target: &Target) -> Self {
        Connection {
            stream: None,
            reused: false,
            // Allocated when first opened: a worker holds one connection per endpoint of
            // a mix, and one a ramp never needs costs nothing.
            buf: Vec::new(),
            start: 0,
            end: 0,
            reader: ResponseReader::new(target.head_request),
            in_flight: false,
        }
    }

    /// Opens the connection ahead of the first request; failures are left for that
    /// request to count.
    pub async fn warm_up(&mut self, target: &Target) {
        if self.stream.is_none()
            && let Ok(Ok(stream)) = tokio::time::timeout(target.timeout, target.connect()).await
        {
            self.open(stream);
        }
    }

    fn open(&mut self, stream: Stream) {
        if self.buf.is_empty() {
            self.buf = vec![0; BUFFER];
        }
        self.stream = Some(stream);
        self.reused = false;
        self.start = 0;
        self.end = 0;
    }

    fn close(&mut self) {
        self.stream = None;
        self.start = 0;
        self.end = 0;
    }

    /// Closes the connection (a worker retired by a ramp down); the next request opens
    /// a new one.
    pub fn disconnect(&mut self) {
        self.close();
        self.in_flight = false;
    }

    /// Sends the target's request and reads the whole response. No timeout of its own:
    /// wrap it in a [`Deadline`].
    pub async fn send(&mut self, target: &Target) -> Outcome {
        if self.in_flight {
            self.close();
        }
        self.in_flight = true;
        let outcome = self.exchange(target).await;
        self.in_flight = false;
        outcome
    }

    async fn exchange(&mut self, target: &Target) -> Outcome {
        loop {
            if self.stream.is_none() {
                // Boxed: connecting (a TLS handshake above all) needs a large future
                // that the per-request path should not carry, move or clear.
                match Box::pin(target.connect()).await {
                    Ok(stream) => self.open(stream),
                    Err(kind) => return Outcome::Error(kind),
                }
            }
            let retry_allowed = self.reused;
            let stream = self.stream.as_mut().expect("opened above");
            if let Err(err) = stream.write_all(&target.request).await {
                self.close();
                if retry_allowed {
                    continue;
                }
                return Outcome::Error(classify(&err));
            }
            self.reader.reset_for(target.head_request);
            match self.read_response().await {
                Ok(head) => {
                    if head.keep_alive && !target.closes {
                        self.reused = true;
                    } else {
                        self.close();
                    }
                    return Outcome::Response(head.status);
                }
                Err(err) => {
                    let nothing_back = !self.reader.started() && self.start == self.end;
                    self.close();
                    if retry_allowed && nothing_back && matches!(err, ReadError::Io(_)) {
                        continue;
                    }
                    return Outcome::Error(match err {
                        ReadError::Io(e) => classify(&e),
                        ReadError::Protocol(http1::ProtocolError::Incomplete) => ErrorKind::Reset,
                        ReadError::Protocol(_) => ErrorKind::Other,
                    });
                }
            }
        }
    }

    async fn read_response(&mut self) -> Result<Head, ReadError> {
        loop {
            if self.start < self.end {
                let (used, step) = self
                    .reader
                    .advance(&self.buf[self.start..self.end])
                    .map_err(ReadError::Protocol)?;
                self.start += used;
                if let Step::Done(head) = step {
                    if self.start == self.end {
                        self.start = 0;
                        self.end = 0;
                    }
                    return Ok(head);
                }
            }
            self.make_room();
            let stream = self.stream.as_mut().expect("reading on an open stream");
            let n = stream
                .read(&mut self.buf[self.end..])
                .await
                .map_err(ReadError::Io)?;
            if n == 0 {
                if !self.reader.started() && self.start == self.end {
                    return Err(ReadError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                }
                return self.reader.eof().map_err(ReadError::Protocol);
            }
            self.end += n;
        }
    }

    /// Room at the end of the buffer: what was consumed is dropped, a head that fills it
    /// makes it grow (up to the reader's limit).
    fn make_room(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                let size = (self.buf.len() * 2).min(2 * http1::MAX_HEAD);
                self.buf.resize(size.max(self.buf.len() + 1), 0);
            }
        }
    }
}

/// A request timeout that costs nothing per request.
///
/// Arming a timer per request (and cancelling it when the answer comes) is a large part
/// of a fast request's cost. A worker's deadlines only move forward, so one timer serves
/// them all: it stays armed at an older deadline, and when it fires early the current
/// deadline is checked and the timer re-armed. It fires at most once per timeout period.
pub struct Deadline {
    sleep: Pin<Box<tokio::time::Sleep>>,
    at: Instant,
}

impl Deadline {
    /// An idle deadline (its timer armed far ahead).
    pub fn new() -> Self {
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        Deadline {
            sleep: Box::pin(tokio::time::sleep_until(far.into())),
            at: far,
        }
    }

    /// Runs `fut` until it completes or `at` passes (`None`).
    pub async fn run<F: Future>(&mut self, at: Instant, fut: F) -> Option<F::Output> {
        self.at = at;
        if self.sleep.deadline().into_std() > at {
            self.sleep.as_mut().reset(at.into());
        }
        let mut fut = std::pin::pin!(fut);
        loop {
            tokio::select! {
                biased;
                out = &mut fut => return Some(out),
                () = &mut self.sleep => {
                    if Instant::now() >= self.at {
                        return None;
                    }
                    self.sleep.as_mut().reset(self.at.into());
                }
            }
        }
    }
}

impl Default for Deadline {
    fn default() -> Self {
        Deadline::new()
    }
}

/// Sorts an I/O error into the kinds users see.
fn classify(err: &std::io::Error) -> ErrorKind {
    use std::io::ErrorKind as Io;
    match err.kind() {
        Io::ConnectionReset | Io::ConnectionAborted | Io::BrokenPipe | Io::UnexpectedEof => {
            ErrorKind::Reset
        }
        Io::TimedOut => ErrorKind::Timeout,
        Io::ConnectionRefused => ErrorKind::Connect,
        _ => ErrorKind::Other,
    }
}

/// The target's parsed URL, for messages.
impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("host", &self.url.host)
            .field("port", &self.url.port)
            .field("addrs", &self.addrs)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(order: &[u16], n: usize) -> Vec<usize> {
        (0..n)
            .map(|i| order.iter().filter(|x| usize::from(**x) == i).count())
            .collect()
    }

    #[test]
    fn mixes_follow_their_weights_and_interleave() {
        let order = mix_order(&[3.0, 1.0]);
        assert_eq!(order.len(), 4);
        assert_eq!(counts(&order, 2), vec![3, 1]);
        // Equal shares alternate rather than come in runs.
        assert_eq!(mix_order(&[2.0, 2.0]), vec![0, 1]);
        assert_eq!(mix_order(&[2.0, 3.0]), vec![1, 0, 1, 0, 1]);
        let order = mix_order(&[30.0, 10.0, 0.0]);
        assert_eq!(counts(&order, 3), vec![3, 1, 0]);
        let order = mix_order(&[0.7, 0.2, 0.1]);
        assert_eq!(counts(&order, 3), vec![7, 2, 1]);
        let order = mix_order(&[1.0, 0.001]);
        let c = counts(&order, 2);
        assert!(c[1] >= 1 && c[0] > 900, "{c:?}");
        // Smooth: no request waits for more than its share of the cycle.
        let order = mix_order(&[1.0, 1.0, 1.0]);
        assert_eq!(order, vec![0, 1, 2]);
        assert_eq!(mix_order(&[5.0]), vec![0]);
    }
}
