//! One keep-alive HTTP/1.1 connection per load worker, on hyper's connection API.
//!
//! The connection pool of a general-purpose client (a lock and a queue per request) buys
//! nothing here: a worker sends one request at a time, so each owns its connection and
//! reconnects only after an error or a `Connection: close`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, HOST, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use loadwave_proto::{ErrorKind, TargetUrl, TestSpec, forbidden_address, parse_target_url};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::EngineError;

/// Everything needed to send the test's request, built once per driver.
pub struct Target {
    url: TargetUrl,
    addrs: Vec<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
    timeout: Duration,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl Target {
    /// Prepares the request of `spec` and resolves the target host once.
    ///
    /// A host that does not resolve is not an error here: every request then counts as a
    /// `connect` error, which is what the user needs to see.
    pub async fn new(spec: &TestSpec) -> Result<Target, EngineError> {
        let url = parse_target_url(&spec.target_url).map_err(EngineError::Spec)?;
        let method = Method::from_bytes(spec.method.as_bytes())
            .map_err(|_| EngineError::Invalid(format!("method `{}`", spec.method)))?;
        let uri: Uri = url
            .path_and_query
            .parse()
            .map_err(|_| EngineError::Invalid(format!("path `{}`", url.path_and_query)))?;
        let mut headers = HeaderMap::new();
        headers.insert(
            HOST,
            HeaderValue::from_str(&url.authority)
                .map_err(|_| EngineError::Invalid(format!("host `{}`", url.authority)))?,
        );
        for (name, value) in &spec.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| EngineError::Invalid(format!("header name `{name}`")))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| EngineError::Invalid(format!("header value of `{name}`")))?;
            headers.append(name, value);
        }
        let tls = if url.tls {
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
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
            method,
            uri,
            headers,
            body: Bytes::from(spec.body.clone().unwrap_or_default()),
            timeout: Duration::from_millis(spec.timeout_ms),
            tls,
        })
    }

    /// The per-request timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn request(&self) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(self.body.clone()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        req
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, ErrorKind> {
        let mut last = ErrorKind::Connect;
        for addr in &self.addrs {
            match self.connect_to(*addr).await {
                Ok(sender) => return Ok(sender),
                Err(kind) => last = kind,
            }
        }
        Err(last)
    }

    async fn connect_to(&self, addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, ErrorKind> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|_| ErrorKind::Connect)?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => handshake(tcp).await,
            Some((connector, name)) => {
                let stream = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|_| ErrorKind::Tls)?;
                handshake(stream).await
            }
        }
    }
}

async fn handshake<S>(stream: S) -> Result<SendRequest<Full<Bytes>>, ErrorKind>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| classify(&e))?;
    tokio::spawn(async move {
        // The connection ends when the worker drops its sender or the peer closes;
        // errors surface on the request that was in flight.
        let _ = conn.await;
    });
    Ok(sender)
}

/// What one request produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A whole response with this status.
    Response(u16),
    /// No response.
    Error(ErrorKind),
}

/// A worker's connection, opened on first use and after failures.
#[derive(Default)]
pub struct Connection {
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Connection {
    /// An unopened connection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Opens the connection ahead of the first request; failures are left for that
    /// request to count.
    pub async fn warm_up(&mut self, target: &Target) {
        if self.sender.is_none()
            && let Ok(Ok(sender)) = tokio::time::timeout(target.timeout, target.connect()).await
        {
            self.sender = Some(sender);
        }
    }

    /// Sends the target's request and reads the whole response, within the timeout.
    pub async fn send(&mut self, target: &Target) -> Outcome {
        let attempt = async {
            let sender = match self.sender.take() {
                Some(s) if !s.is_closed() => s,
                _ => target.connect().await?,
            };
            let mut sender = sender;
            sender.ready().await.map_err(|e| classify(&e))?;
            let response = sender
                .send_request(target.request())
                .await
                .map_err(|e| classify(&e))?;
            let status = response.status().as_u16();
            let keep = !response
                .headers()
                .get(CONNECTION)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
            let mut body = response.into_body();
            while let Some(frame) = body.frame().await {
                frame.map_err(|e| classify(&e))?;
            }
            Ok::<_, ErrorKind>((status, keep.then_some(sender)))
        };
        match tokio::time::timeout(target.timeout, attempt).await {
            Ok(Ok((status, sender))) => {
                self.sender = sender;
                Outcome::Response(status)
            }
            Ok(Err(kind)) => Outcome::Error(kind),
            Err(_) => Outcome::Error(ErrorKind::Timeout),
        }
    }
}

/// Sorts a hyper error into the kinds users see.
fn classify(err: &hyper::Error) -> ErrorKind {
    if err.is_timeout() {
        return ErrorKind::Timeout;
    }
    if err.is_incomplete_message() || err.is_canceled() || err.is_closed() {
        return ErrorKind::Reset;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as Io;
            return match io.kind() {
                Io::ConnectionReset
                | Io::ConnectionAborted
                | Io::BrokenPipe
                | Io::UnexpectedEof => ErrorKind::Reset,
                Io::TimedOut => ErrorKind::Timeout,
                Io::ConnectionRefused => ErrorKind::Connect,
                _ => ErrorKind::Other,
            };
        }
        source = s.source();
    }
    ErrorKind::Other
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
