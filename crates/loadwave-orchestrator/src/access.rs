//! Who may use the local orchestrator's API: the layer [`crate::api::secured_app`] puts in
//! front of every route.
//!
//! - `/healthz` and `/readyz` answer anyone (probes carry no token and may name the
//!   address they reach in `Host`); they show counts, never a test.
//! - Every other request must name, in `Host`, an address this orchestrator serves (its
//!   bind address, `localhost`, `127.0.0.1` or `[::1]` with its port, or a name given with
//!   `--allowed-host`), else 421: a page whose DNS name was rebound to 127.0.0.1 sends
//!   its own name.
//! - It must carry `Authorization: Bearer TOKEN`, or the `loadwave_session` cookie that
//!   `GET /login?code=...` sets (a one-time code printed at start, for the web console),
//!   else 401. Tokens are compared in constant time.
//! - A request with a body must say `Content-Type: application/json`, else 415: a
//!   cross-site form or `text/plain` fetch cannot send one without a CORS preflight.
//!
//! In AWS the API Gateway's IAM authorization is the authentication, and the Lambda
//! function serves [`crate::api::app`] without this layer.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::body::HttpBody;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::api::AppError;

/// The name of the console's session cookie.
pub const SESSION_COOKIE: &str = "loadwave_session";

/// The shortest token accepted from `--token-file` or `LOADWAVE_TOKEN`.
pub const MIN_TOKEN_LEN: usize = 16;

/// How many unused login codes are kept at most: each start prints one, and each new
/// one pushes out the oldest.
const MAX_LOGIN_CODES: usize = 16;

/// The access policy of the local orchestrator's API: its token, the `Host` names it
/// answers to, and the one-time login codes of the console.
#[derive(Clone)]
pub struct ApiSecurity {
    inner: Arc<Inner>,
}

struct Inner {
    token: String,
    port: u16,
    /// Hosts (lowercase, IPv6 in brackets) answered on the bind port.
    local_hosts: Vec<String>,
    /// `--allowed-host` entries: (host, port if given).
    allowed: Vec<(String, Option<u16>)>,
    /// Where people find the token, for the 401's message.
    token_hint: String,
    login_codes: Mutex<Vec<String>>,
}

/// A token that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Too short to resist guessing.
    #[error("the API token must be at least {MIN_TOKEN_LEN} characters long, got {0}")]
    TooShort(usize),
    /// It would not fit in a header.
    #[error("the API token may hold only visible ASCII characters (no spaces)")]
    NotVisibleAscii,
}

/// A new random token: 64 hex digits (two UUIDv4s' worth of randomness, 244 bits).
pub fn generate_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Checks a token given by the user (trimmed of surrounding whitespace).
pub fn check_token(token: &str) -> Result<(), TokenError> {
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TokenError::NotVisibleAscii);
    }
    if token.len() < MIN_TOKEN_LEN {
        return Err(TokenError::TooShort(token.len()));
    }
    Ok(())
}

/// Splits a `Host` value (or an `--allowed-host` entry) into a lowercase host (IPv6 kept
/// in brackets) and its port, if it has one. `None` when it is not a host.
fn split_host(value: &str) -> Option<(String, Option<u16>)> {
    let value = value.trim().to_ascii_lowercase();
    if value.is_empty() {
        return None;
    }
    if value.starts_with('[') {
        let end = value.find(']')?;
        let host = value[..=end].to_string();
        return match &value[end + 1..] {
            "" => Some((host, None)),
            rest => Some((host, Some(rest.strip_prefix(':')?.parse().ok()?))),
        };
    }
    match value.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && !host.is_empty() => {
            Some((host.to_string(), Some(port.parse().ok()?)))
        }
        Some(_) => None,
        None => Some((value, None)),
    }
}

fn host_of(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

impl ApiSecurity {
    /// The policy of an orchestrator bound to `listen` with `token`, also answering to the
    /// `allowed_hosts` (`name` on any port, or `name:port`). `token_hint` says where the
    /// token is kept, for the 401's message.
    pub fn new(
        token: impl Into<String>,
        listen: SocketAddr,
        allowed_hosts: &[String],
        token_hint: impl Into<String>,
    ) -> Self {
        let mut local_hosts = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "[::1]".to_string(),
        ];
        let bound = host_of(listen.ip());
        if !listen.ip().is_unspecified() && !local_hosts.contains(&bound) {
            local_hosts.push(bound);
        }
        ApiSecurity {
            inner: Arc::new(Inner {
                token: token.into(),
                port: listen.port(),
                local_hosts,
                allowed: allowed_hosts.iter().filter_map(|h| split_host(h)).collect(),
                token_hint: token_hint.into(),
                login_codes: Mutex::default(),
            }),
        }
    }

    /// Whether an `--allowed-host` value parses (`name`, `name:port`, `[v6]:port`).
    pub fn valid_allowed_host(value: &str) -> bool {
        split_host(value).is_some()
    }

    /// A new one-time login code for `GET /login?code=CODE` (the console's way in).
    pub fn login_code(&self) -> String {
        let code = uuid::Uuid::new_v4().simple().to_string();
        let mut codes = self.inner.login_codes.lock().expect("login codes lock");
        if codes.len() >= MAX_LOGIN_CODES {
            codes.remove(0);
        }
        codes.push(code.clone());
        code
    }

    /// Whether `Host` names this orchestrator. A request without one (HTTP/1.0) is
    /// refused too.
    pub fn host_allowed(&self, host: Option<&str>) -> bool {
        let Some((name, port)) = host.and_then(split_host) else {
            return false;
        };
        // Plain HTTP: no port means 80.
        let port_or_80 = port.unwrap_or(80);
        if port_or_80 == self.inner.port && self.inner.local_hosts.contains(&name) {
            return true;
        }
        self.inner
            .allowed
            .iter()
            .any(|(h, p)| *h == name && p.is_none_or(|p| p == port_or_80))
    }

    fn token_matches(&self, presented: &str) -> bool {
        presented
            .as_bytes()
            .ct_eq(self.inner.token.as_bytes())
            .into()
    }

    /// Whether the request carries the token: as a bearer token, or the session cookie.
    pub fn authenticated(&self, headers: &HeaderMap) -> bool {
        let bearer = headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .any(|t| self.token_matches(t));
        bearer
            || headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|c| c.trim().split_once('='))
                .any(|(name, value)| name == SESSION_COOKIE && self.token_matches(value))
    }

    /// `GET /login?code=CODE`: a code given out by [`ApiSecurity::login_code`] works once;
    /// it sets the session cookie and sends the browser to `/`.
    fn login(&self, req: &Request) -> Response {
        let presented = req.uri().query().and_then(|q| {
            q.split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == "code")
                .map(|(_, v)| v.to_string())
        });
        let used = presented.is_some_and(|code| {
            let mut codes = self.inner.login_codes.lock().expect("login codes lock");
            // Every code is compared, in constant time each, so the answer's timing
            // does not tell how much of a guess was right.
            let found = codes
                .iter()
                .position(|c| bool::from(c.as_bytes().ct_eq(code.as_bytes())));
            if let Some(i) = found {
                codes.remove(i);
            }
            found.is_some()
        });
        if !used {
            return unauthorized(
                "login",
                "this login code is unknown or was already used; restart the orchestrator for a new one, or send the token",
            );
        }
        let cookie = format!(
            "{SESSION_COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
            self.inner.token
        );
        let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().insert(header::SET_COOKIE, value);
        }
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

fn unauthorized(field: &str, message: &str) -> Response {
    let mut response = AppError::Invalid {
        status: StatusCode::UNAUTHORIZED,
        field: field.to_string(),
        message: message.to_string(),
    }
    .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"loadwave\""),
    );
    response
}

/// Whether the media type is `application/json` (parameters such as `charset` aside).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

/// Whether the request has a body (a length above 0, or one not known in advance).
fn has_body(req: &Request) -> bool {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(n) => n > 0,
        None => {
            req.headers().contains_key(header::TRANSFER_ENCODING)
                || req.body().size_hint().exact() != Some(0)
        }
    }
}

/// The layer's function: see the module docs.
pub async fn guard(State(security): State<ApiSecurity>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if path == "/healthz" || path == "/readyz" {
        return next.run(req).await;
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    if !security.host_allowed(host) {
        return AppError::Invalid {
            status: StatusCode::MISDIRECTED_REQUEST,
            field: "host".into(),
            message: "this orchestrator does not answer to that Host; use the address it listens on, localhost, or a name given with --allowed-host".into(),
        }
        .into_response();
    }
    if path == "/login" && req.method() == axum::http::Method::GET {
        return security.login(&req);
    }
    if !security.authenticated(req.headers()) {
        return unauthorized(
            "authorization",
            &format!(
                "send `Authorization: Bearer TOKEN`; {}",
                security.inner.token_hint
            ),
        );
    }
    if has_body(&req) && !is_json(req.headers()) {
        return AppError::Invalid {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            field: "content-type".into(),
            message: "a request body must be sent as `Content-Type: application/json`".into(),
        }
        .into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn security(allowed: &[&str]) -> ApiSecurity {
        let allowed: Vec<String> = allowed.iter().map(|s| s.to_string()).collect();
        ApiSecurity::new(
            "t".repeat(32),
            "0.0.0.0:8000".parse().unwrap(),
            &allowed,
            "see the token file",
        )
    }

    #[test]
    fn hosts_the_orchestrator_serves() {
        let s = security(&["orchestrator", "example.test:9000"]);
        for ok in [
            "localhost:8000",
            "LOCALHOST:8000",
            "127.0.0.1:8000",
            "[::1]:8000",
            "orchestrator",
            "orchestrator:8000",
            "example.test:9000",
        ] {
            assert!(s.host_allowed(Some(ok)), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8000",
            "localhost:8001",
            "localhost",
            "0.0.0.0:8000",
            "example.test:8000",
            "127.0.0.1:8000:1",
            "[::1",
            "",
        ] {
            assert!(!s.host_allowed(Some(bad)), "{bad}");
        }
        assert!(!s.host_allowed(None));
        let bound = ApiSecurity::new("t".repeat(32), "10.1.2.3:80".parse().unwrap(), &[], "");
        assert!(bound.host_allowed(Some("10.1.2.3")));
        assert!(bound.host_allowed(Some("10.1.2.3:80")));
        assert!(!bound.host_allowed(Some("10.1.2.4")));
    }

    #[test]
    fn tokens_from_headers_and_cookies() {
        let s = security(&[]);
        let mut h = HeaderMap::new();
        assert!(!s.authenticated(&h));
        h.insert(
            header::AUTHORIZATION,
            format!("Bearer {}", "t".repeat(32)).parse().unwrap(),
        );
        assert!(s.authenticated(&h));
        h.insert(
            header::AUTHORIZATION,
            format!("Bearer {}", "t".repeat(31)).parse().unwrap(),
        );
        assert!(!s.authenticated(&h));
        h.insert(
            header::AUTHORIZATION,
            format!("Basic {}", "t".repeat(32)).parse().unwrap(),
        );
        assert!(!s.authenticated(&h));
        let mut c = HeaderMap::new();
        c.insert(
            header::COOKIE,
            format!("a=b; {SESSION_COOKIE}={}", "t".repeat(32))
                .parse()
                .unwrap(),
        );
        assert!(s.authenticated(&c));
    }

    #[test]
    fn user_tokens_are_checked() {
        assert_eq!(check_token("short"), Err(TokenError::TooShort(5)));
        assert_eq!(
            check_token(&format!("{} x", "a".repeat(20))),
            Err(TokenError::NotVisibleAscii)
        );
        assert!(check_token(&generate_token()).is_ok());
        assert_eq!(generate_token().len(), 64);
        assert_ne!(generate_token(), generate_token());
    }
}
