//! AWS Signature Version 4 for calls to an orchestrator behind API Gateway with `AWS_IAM`
//! authorization (`--aws-sigv4`).
//!
//! Credentials come from the standard AWS chain (environment, profile, SSO cache, IMDS …,
//! through `aws-config`); the region from the API's host name
//! (`{api}.execute-api.{region}.amazonaws.com`) or, failing that, `AWS_REGION`. The
//! signing itself is the `aws-sigv4` crate's, service `execute-api`, headers only.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_credential_types::provider::ProvideCredentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;

/// The service API Gateway signs for.
const SERVICE: &str = "execute-api";

/// Signs requests with one set of credentials for one region.
pub struct Signer {
    credentials: Credentials,
    region: String,
}

/// The region in an API Gateway host name, if it is one.
pub fn region_of(url: &str) -> Option<String> {
    let host = url.split("://").nth(1)?.split(['/', ':', '?']).next()?;
    let mut parts = host.split('.');
    let (_api, service, region) = (parts.next()?, parts.next()?, parts.next()?);
    (service == SERVICE && parts.next() == Some("amazonaws")).then(|| region.to_string())
}

impl Signer {
    /// A signer with these credentials (tests, or credentials already at hand).
    pub fn new(credentials: Credentials, region: impl Into<String>) -> Signer {
        Signer {
            credentials,
            region: region.into(),
        }
    }

    /// Credentials from the standard chain, the region from `url` or the environment.
    pub fn from_chain(url: &str, rt: &tokio::runtime::Runtime) -> Result<Signer, String> {
        let region = region_of(url)
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .filter(|r| !r.is_empty())
            .ok_or_else(|| {
                "--aws-sigv4: no region in the URL (…execute-api.REGION.amazonaws.com) and AWS_REGION is not set".to_string()
            })?;
        let credentials = rt.block_on(async {
            let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
                .region(aws_config::Region::new(region.clone()))
                .load()
                .await;
            let provider = config.credentials_provider().ok_or_else(|| {
                "--aws-sigv4: no AWS credentials provider is configured".to_string()
            })?;
            provider
                .provide_credentials()
                .await
                .map_err(|e| format!("--aws-sigv4: no AWS credentials found: {e}"))
        })?;
        Ok(Signer::new(credentials, region))
    }

    /// The headers to add to a request of `method` to `url` with `headers` and `body`, as
    /// of `time`: `authorization`, `x-amz-date` and, with temporary credentials,
    /// `x-amz-security-token`.
    pub fn sign(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        time: SystemTime,
    ) -> Result<Vec<(String, String)>, String> {
        let identity = self.credentials.clone().into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(SERVICE)
            .time(time)
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| format!("signing: {e}"))?
            .into();
        let request = SignableRequest::new(
            method,
            url,
            headers.iter().copied(),
            SignableBody::Bytes(body),
        )
        .map_err(|e| format!("signing {url}: {e}"))?;
        let (instructions, _signature) = sign(request, &params)
            .map_err(|e| format!("signing {url}: {e}"))?
            .into_parts();
        Ok(instructions
            .headers()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn regions_come_from_api_gateway_host_names() {
        assert_eq!(
            region_of("https://a1b2c3.execute-api.eu-west-1.amazonaws.com/tests").as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(region_of("http://127.0.0.1:8000/tests"), None);
        assert_eq!(region_of("https://api.example.com"), None);
    }

    /// Our signature equals botocore's (an independent SigV4 implementation) for the same
    /// request, credentials and time. `make test` provides a Python with botocore
    /// (`LW_PY`); elsewhere `python3` must have it.
    #[test]
    fn signatures_match_botocore() {
        let python = std::env::var("LW_PY").unwrap_or_else(|_| "python3".to_string());
        let url = "https://a1b2c3.execute-api.eu-west-1.amazonaws.com/tests?limit=5&b=a%20b";
        let body = br#"{"target_url":"https://example.com/","test_type":"avalanche","requests_per_driver":10}"#;
        let time = UNIX_EPOCH + Duration::from_secs(1_795_615_200); // 2026-11-25T14:00:00Z
        for token in [None, Some("FwoGZXIvYXdzEXAMPLETOKEN")] {
            let signer = Signer::new(
                Credentials::new(
                    "AKIDLOADWAVEEXAMPLE",
                    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYLOADWAVEKEY",
                    token.map(str::to_string),
                    None,
                    "test",
                ),
                "eu-west-1",
            );
            let ours = signer
                .sign(
                    "POST",
                    url,
                    &[("content-type", "application/json")],
                    body,
                    time,
                )
                .unwrap();
            let header = |name: &str| {
                ours.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.clone())
            };
            let script = r#"
import sys, json
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
url, body, token = sys.argv[1], sys.argv[2].encode(), (sys.argv[3] or None)
req = AWSRequest(method="POST", url=url, data=body, headers={"content-type": "application/json"})
auth = SigV4Auth(Credentials("AKIDLOADWAVEEXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYLOADWAVEKEY", token), "execute-api", "eu-west-1")
# add_auth() reads the clock; these are its steps with the time fixed.
req.context["timestamp"] = "20261125T140000Z"
auth._modify_request_before_signing(req)
canonical = auth.canonical_request(req)
signature = auth.signature(auth.string_to_sign(req, canonical), req)
auth._inject_signature_to_request(req, signature)
print(json.dumps({k.lower(): v for k, v in req.headers.items()}))
"#;
            let out = std::process::Command::new(&python)
                .args([
                    "-c",
                    script,
                    url,
                    std::str::from_utf8(body).unwrap(),
                    token.unwrap_or(""),
                ])
                .output()
                .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
            assert!(
                out.status.success(),
                "botocore failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let theirs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(
                header("x-amz-date").as_deref(),
                theirs["x-amz-date"].as_str()
            );
            assert_eq!(
                header("authorization").as_deref(),
                theirs["authorization"].as_str(),
                "our Authorization differs from botocore's"
            );
            assert_eq!(
                header("x-amz-security-token").as_deref(),
                theirs["x-amz-security-token"].as_str()
            );
        }
    }
}
