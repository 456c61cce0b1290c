//! How Kafka clients authenticate: plaintext, TLS, or Amazon MSK IAM.
//!
//! MSK IAM is SASL/OAUTHBEARER over TLS where the "token" is a SigV4-presigned
//! `kafka-cluster:Connect` URL, base64url-encoded (what `aws-msk-iam-sasl-signer` makes
//! from the standard AWS credential chain). librdkafka asks for a fresh token through its
//! token-refresh callback shortly before the current one expires; [`AuthContext`] answers
//! it with [`MskIamTokens`].
//!
//! The context is also where librdkafka's own error and log callbacks arrive: once a bus
//! owns the client ([`AuthContext::quiet_outages`]), trouble reaching the broker goes to
//! debug, because the bus's probe and its [`loadwave_bus::BusHealth`] tell the outage (one
//! line when it starts, one when it ends) instead of a line per callback, several a second
//! for as long as the broker is away.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_config::Region;
use aws_msk_iam_sasl_signer::generate_auth_token;
use rdkafka::client::{ClientContext, OAuthToken};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::RDKafkaErrorCode;

/// Options a [`KafkaAuth`] other than `none` sets itself; a raw option may not override
/// them.
pub const OWNED_KEYS: &[&str] = &["security.protocol", "sasl.mechanism", "sasl.mechanisms"];

/// How clients authenticate (`--kafka-auth`, env `LOADWAVE_KAFKA_AUTH`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum KafkaAuth {
    /// Plaintext, no authentication: a local broker.
    #[default]
    None,
    /// TLS, the broker's certificate checked against the system's CAs (or
    /// `ssl.ca.location`).
    Tls,
    /// TLS plus SASL/OAUTHBEARER with Amazon MSK IAM tokens.
    MskIam,
}

impl KafkaAuth {
    /// The name used on the command line and in the environment.
    pub fn as_str(self) -> &'static str {
        match self {
            KafkaAuth::None => "none",
            KafkaAuth::Tls => "tls",
            KafkaAuth::MskIam => "msk-iam",
        }
    }

    /// Parses `none`, `tls` or `msk-iam`.
    pub fn parse(s: &str) -> Result<KafkaAuth, String> {
        match s.trim() {
            "" | "none" => Ok(KafkaAuth::None),
            "tls" => Ok(KafkaAuth::Tls),
            "msk-iam" => Ok(KafkaAuth::MskIam),
            other => Err(format!(
                "LOADWAVE_KAFKA_AUTH `{other}` is not one of none, tls, msk-iam"
            )),
        }
    }

    pub(crate) fn apply(self, c: &mut ClientConfig) {
        match self {
            KafkaAuth::None => {
                c.set("security.protocol", "plaintext");
            }
            KafkaAuth::Tls => {
                c.set("security.protocol", "ssl");
            }
            KafkaAuth::MskIam => {
                c.set("security.protocol", "sasl_ssl")
                    .set("sasl.mechanism", "OAUTHBEARER");
            }
        }
    }
}

/// Makes MSK IAM tokens from the standard AWS credential chain, for the region in
/// `AWS_REGION` (MSK signs for the cluster's region).
#[derive(Debug, Default)]
pub struct MskIamTokens {
    made: AtomicU64,
}

/// An MSK IAM token and when it expires.
#[derive(Debug, Clone)]
pub struct IamToken {
    /// The base64url presigned URL.
    pub token: String,
    /// Expiry, ms since the epoch.
    pub expires_at_ms: i64,
}

impl MskIamTokens {
    /// Tokens made so far (the callback's invocations).
    pub fn made(&self) -> u64 {
        self.made.load(Ordering::Relaxed)
    }

    /// A fresh token. librdkafka calls this from its own threads, some of which run
    /// inside a Tokio runtime, so the signer runs on a thread of its own with a small
    /// runtime (once every ~15 minutes).
    pub fn token(&self) -> Result<IamToken, String> {
        self.made.fetch_add(1, Ordering::Relaxed);
        let region = std::env::var("AWS_REGION")
            .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
            .map_err(|_| "AWS_REGION is not set; MSK IAM tokens are signed for a region")?;
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(generate_auth_token(Region::new(region)))
                .map(|(token, expires_at_ms)| IamToken {
                    token,
                    expires_at_ms,
                })
                .map_err(|e| format!("cannot make an MSK IAM token: {e}"))
        })
        .join()
        .map_err(|_| "the MSK IAM signer panicked".to_string())?
    }
}

/// The context of every loadwave Kafka client: answers librdkafka's OAUTHBEARER token
/// refresh when MSK IAM is in use (the callback is never invoked otherwise).
#[derive(Clone, Default)]
pub struct AuthContext {
    iam: Option<Arc<MskIamTokens>>,
    /// Connectivity trouble goes to debug (a bus owns the client and tells outages).
    quiet_outages: bool,
}

impl AuthContext {
    /// The context for `auth`.
    pub fn for_auth(auth: KafkaAuth) -> AuthContext {
        AuthContext {
            iam: (auth == KafkaAuth::MskIam).then(|| Arc::new(MskIamTokens::default())),
            quiet_outages: false,
        }
    }

    /// The same context for a client a bus owns: the bus's health tells an unreachable
    /// broker, so librdkafka's callbacks about it go to debug.
    pub fn quiet_outages(mut self) -> AuthContext {
        self.quiet_outages = true;
        self
    }

    /// The token source, for MSK IAM.
    pub fn iam(&self) -> Option<&Arc<MskIamTokens>> {
        self.iam.as_ref()
    }
}

impl ClientContext for AuthContext {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.route_log(level, fac, log_message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.route_error(&error, reason);
    }

    fn generate_oauth_token(
        &self,
        _oauthbearer_config: Option<&str>,
    ) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        let Some(iam) = &self.iam else {
            return Err("OAUTHBEARER needs LOADWAVE_KAFKA_AUTH=msk-iam".into());
        };
        let token = iam.token().map_err(|e| {
            tracing::error!(error = %e, "MSK IAM token refresh failed");
            e
        })?;
        tracing::debug!(
            expires_at_ms = token.expires_at_ms,
            "MSK IAM token refreshed"
        );
        Ok(OAuthToken {
            token: token.token,
            // MSK takes the identity from the signed request, not from this name.
            principal_name: "loadwave".to_string(),
            lifetime_ms: token.expires_at_ms,
        })
    }
}

impl ConsumerContext for AuthContext {}

/// Whether a client error means the broker cannot be reached (as opposed to a fault of
/// configuration or of a request).
fn is_connectivity(code: Option<RDKafkaErrorCode>) -> bool {
    matches!(
        code,
        Some(
            RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::Resolve
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::BrokerNotAvailable
                | RDKafkaErrorCode::NetworkException
        )
    )
}

/// librdkafka log facilities that narrate a broker's absence (connection attempts,
/// timed-out requests and sessions, leaders not found, the idempotent producer waiting for
/// its id): during an outage they repeat at every reconnect, and the outage is told once
/// through the bus's health instead. Configuration, TLS and SASL complaints stay loud.
const CONNECTION_FACILITIES: [&str; 13] = [
    "FAIL",
    "ERROR",
    "CONNECT",
    "BROKERFAIL",
    "REQTMOUT",
    "RETRY",
    "SESSTMOUT",
    "HEARTBEAT",
    "METADATAUPDATE",
    "METADATA",
    "GETPID",
    "COMMITFAIL",
    "CGRPQUERY",
];

impl AuthContext {
    fn route_error(&self, error: &rdkafka::error::KafkaError, reason: &str) {
        if self.quiet_outages && is_connectivity(error.rdkafka_error_code()) {
            // The bus's probe decides when the broker is gone and back (one source, so
            // the log does not flap between clients); this is detail.
            tracing::debug!(target: "librdkafka", %error, %reason, "kafka client error");
        } else {
            tracing::warn!(target: "librdkafka", %error, %reason, "kafka client error");
        }
    }

    fn route_log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        let outage_noise = self.quiet_outages && CONNECTION_FACILITIES.contains(&facility);
        match level {
            _ if outage_noise => {
                tracing::debug!(target: "librdkafka", facility, message, "kafka client")
            }
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", facility, message, "kafka client")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", facility, message, "kafka client")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", facility, message, "kafka client")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", facility, message, "kafka client")
            }
        }
    }
}

/// Sets a fresh MSK IAM token on a client that does not poll for refresh events.
pub(crate) fn set_token_now(
    client: *mut rdkafka::bindings::rd_kafka_t,
    iam: &MskIamTokens,
) -> Result<(), crate::KafkaError> {
    use std::ffi::CString;
    let fail = |m: String| crate::KafkaError::Auth(m);
    let token = iam.token().map_err(fail)?;
    let value = CString::new(token.token).map_err(|e| fail(e.to_string()))?;
    let principal = CString::new("loadwave").expect("no NUL");
    let mut errstr = [0 as std::ffi::c_char; 512];
    // SAFETY: `client` is a live librdkafka handle owned by the caller; the strings
    // outlive the call, which copies them; no extensions are passed.
    let code = unsafe {
        rdkafka::bindings::rd_kafka_oauthbearer_set_token(
            client,
            value.as_ptr(),
            token.expires_at_ms,
            principal.as_ptr(),
            std::ptr::null_mut(),
            0,
            errstr.as_mut_ptr(),
            errstr.len(),
        )
    };
    if code == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        Ok(())
    } else {
        // SAFETY: librdkafka NUL-terminates the message it wrote into `errstr`.
        let message = unsafe { std::ffi::CStr::from_ptr(errstr.as_ptr()) };
        Err(fail(message.to_string_lossy().into_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    #[test]
    fn auth_names_parse_and_set_the_protocol() {
        assert_eq!(KafkaAuth::parse("msk-iam").unwrap(), KafkaAuth::MskIam);
        assert_eq!(KafkaAuth::parse("").unwrap(), KafkaAuth::None);
        let err = KafkaAuth::parse("sasl").unwrap_err();
        assert!(
            err.contains("LOADWAVE_KAFKA_AUTH") && err.contains("sasl"),
            "{err}"
        );
        let mut c = ClientConfig::new();
        KafkaAuth::MskIam.apply(&mut c);
        assert_eq!(c.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(c.get("sasl.mechanism"), Some("OAUTHBEARER"));
    }

    /// The token from static credentials: a base64url presigned `kafka-cluster:Connect`
    /// URL for the region, signed with the key, expiring in about 15 minutes.
    #[test]
    fn msk_iam_tokens_are_presigned_connect_urls_that_expire() {
        // SAFETY: this test owns these variables; no other test reads them.
        unsafe {
            std::env::set_var("AWS_ACCESS_KEY_ID", "AKIDLOADWAVETEST");
            std::env::set_var("AWS_SECRET_ACCESS_KEY", "secret/loadwave/test");
            std::env::set_var("AWS_REGION", "eu-west-1");
            std::env::remove_var("AWS_SESSION_TOKEN");
            std::env::remove_var("AWS_PROFILE");
        }
        let tokens = MskIamTokens::default();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let token = tokens.token().expect("a token from static credentials");
        assert_eq!(tokens.made(), 1);
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.token.trim_end_matches('='))
            .map(|b| String::from_utf8(b).unwrap())
            .expect("base64url");
        assert!(
            url.starts_with("https://kafka.eu-west-1.amazonaws.com/?"),
            "{url}"
        );
        for part in [
            "Action=kafka-cluster%3AConnect",
            "X-Amz-Algorithm=AWS4-HMAC-SHA256",
            "X-Amz-Credential=AKIDLOADWAVETEST%2F",
            "%2Feu-west-1%2Fkafka-cluster%2Faws4_request",
            "X-Amz-Expires=900",
            "X-Amz-Signature=",
        ] {
            assert!(url.contains(part), "{part} missing from {url}");
        }
        let ahead = token.expires_at_ms - now_ms;
        assert!(
            (800_000..=905_000).contains(&ahead),
            "expires in {ahead} ms"
        );

        // The context answers librdkafka's callback with the same kind of token.
        let ctx = AuthContext::for_auth(KafkaAuth::MskIam);
        let oauth = ctx.generate_oauth_token(None).expect("callback answers");
        assert!(oauth.lifetime_ms > now_ms);
        assert_eq!(ctx.iam().unwrap().made(), 1);
        assert!(
            AuthContext::for_auth(KafkaAuth::Tls)
                .generate_oauth_token(None)
                .is_err()
        );

        // Wired: a client configured for MSK IAM asks for a token through librdkafka's
        // refresh event as soon as it starts, before any broker answers.
        let mut config = crate::KafkaConfig::new("127.0.0.1:1", "");
        config.auth = KafkaAuth::MskIam;
        let context = config.context();
        // The future producer polls its events on a thread of its own.
        let _producer: rdkafka::producer::FutureProducer<AuthContext> = config
            .client()
            .create_with_context(context.clone())
            .expect("an MSK IAM client");
        for _ in 0..50 {
            if context.iam().unwrap().made() > 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(
            context.iam().unwrap().made() >= 1,
            "librdkafka never asked for a token"
        );
    }
}
