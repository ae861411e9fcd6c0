//! The control plane's own requests to webhook receivers: the address check when a URL is
//! saved, and the one signed test delivery of `POST …/webhooks/{webhook}/test`. Data-plane
//! nodes make every other delivery.
//!
//! The outbound address policy is the workspace SMTP one (`outbound::is_public`, overridden by
//! the operator's `smtp_allow_private_hosts`), for the same reason: otherwise any workspace
//! Editor could make the control plane probe hosts on its internal network. The host is
//! resolved once, every address is checked, and the request goes to those checked addresses
//! only (`resolve_to_addrs`), so a second DNS answer cannot swap them. Redirects are never
//! followed: the next hop would be an address nobody checked.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sluice_config::stream::WebhookOutcome;
use sluice_config::webhook_signature::Signer;
use url::{Host, Url};

use crate::outbound;

/// Bound on resolving a receiver's host.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on a whole test delivery, connection to the end of the answer.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of a receiver's answer read into a test's error text at most.
const ANSWER_BYTES_MAX: usize = 512;
/// Where the test's attempt says it came from, in the delivery log's `node`.
pub const TEST_NODE: &str = "control-plane";

/// Why the control plane will not send to a URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("the URL is not valid: {0}")]
    Url(String),
    #[error("resolving {host} timed out")]
    ResolveTimeout { host: String },
    #[error("{host} does not resolve: {error}")]
    Resolve { host: String, error: String },
    #[error("{host} has no address")]
    NoAddress { host: String },
    /// An address outside the public internet while the operator allows none.
    #[error("{host} is or resolves to the non-public address {ip}; an operator can allow such receivers with smtp_allow_private_hosts")]
    NotAllowed { host: String, ip: IpAddr },
}

/// The receiver's host name and the addresses it may be reached at, each checked against the
/// outbound policy unless `allow_private`.
pub async fn checked_addresses(
    url: &str,
    allow_private: bool,
) -> Result<(String, Vec<SocketAddr>), AddressError> {
    let parsed = Url::parse(url).map_err(|e| AddressError::Url(e.to_string()))?;
    let port = parsed
        .port_or_known_default()
        .ok_or_else(|| AddressError::Url("no port".into()))?;
    let (host, addresses) = match parsed.host() {
        None => return Err(AddressError::Url("no host".into())),
        Some(Host::Ipv4(ip)) => (ip.to_string(), vec![SocketAddr::new(ip.into(), port)]),
        Some(Host::Ipv6(ip)) => (ip.to_string(), vec![SocketAddr::new(ip.into(), port)]),
        Some(Host::Domain(name)) => {
            let host = name.to_owned();
            let resolved =
                tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((name, port)))
                    .await
                    .map_err(|_| AddressError::ResolveTimeout { host: host.clone() })?
                    .map_err(|e| AddressError::Resolve {
                        host: host.clone(),
                        error: e.to_string(),
                    })?;
            (host, resolved.collect())
        }
    };
    if addresses.is_empty() {
        return Err(AddressError::NoAddress { host });
    }
    if !allow_private {
        if let Some(refused) = addresses.iter().find(|a| !outbound::is_public(a.ip())) {
            return Err(AddressError::NotAllowed {
                ip: refused.ip(),
                host,
            });
        }
    }
    Ok((host, addresses))
}

/// How a test delivery went.
#[derive(Debug, Clone)]
pub struct TestDelivery {
    pub at: DateTime<Utc>,
    pub outcome: WebhookOutcome,
    /// The receiver's HTTP status, when it answered.
    pub status: Option<u16>,
    pub duration_ms: u64,
    pub error: Option<String>,
    /// The `webhook-id` header sent.
    pub message_id: String,
}

/// Sends one signed batch, `[{"test": true, "webhook": "<slug>", "sent_at": ...}]`, to `url`,
/// as nodes send theirs (Standard Webhooks headers), within [`TEST_TIMEOUT`].
pub async fn send_test(
    url: &str,
    slug: &str,
    signer: &Signer,
    allow_private: bool,
) -> TestDelivery {
    let at = Utc::now();
    let started = Instant::now();
    let message_id = format!("msg_test_{}", uuid::Uuid::now_v7().simple());
    let body = serde_json::json!([{"test": true, "webhook": slug, "sent_at": at}]).to_string();
    let result = tokio::time::timeout(
        TEST_TIMEOUT,
        post(url, &message_id, at, &body, signer, allow_private),
    )
    .await
    .unwrap_or_else(|_| Err(format!("timed out after {} ms", TEST_TIMEOUT.as_millis())));
    let duration_ms = started.elapsed().as_millis() as u64;
    let (outcome, status, error) = match result {
        Ok((status, _)) if (200..300).contains(&status) => {
            (WebhookOutcome::Delivered, Some(status), None)
        }
        Ok((status, answer)) => (
            WebhookOutcome::of_status(status),
            Some(status),
            Some(format!("the receiver answered {status}: {answer}")),
        ),
        Err(error) => (WebhookOutcome::Retrying, None, Some(error)),
    };
    TestDelivery {
        at,
        outcome,
        status,
        duration_ms,
        error,
        message_id,
    }
}

/// The request itself: the status and the start of the answer, or what failed.
async fn post(
    url: &str,
    message_id: &str,
    at: DateTime<Utc>,
    body: &str,
    signer: &Signer,
    allow_private: bool,
) -> Result<(u16, String), String> {
    let (host, addresses) = checked_addresses(url, allow_private)
        .await
        .map_err(|e| format!("connection failed: {e}"))?;
    // reqwest is built without a crypto provider of its own; `sluice` installs ring's, and
    // this makes the library (and its tests) work on its own too.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(TEST_TIMEOUT)
        .connect_timeout(TEST_TIMEOUT)
        .user_agent("sluice-webhooks")
        .resolve_to_addrs(&host, &addresses)
        .build()
        .map_err(|e| format!("the HTTP client could not be built: {e}"))?;
    let timestamp = at.timestamp();
    let mut response = client
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", message_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header(
            "webhook-signature",
            signer.sign(message_id, timestamp, body.as_bytes()),
        )
        .body(body.to_owned())
        .send()
        .await
        .map_err(|e| format!("connection failed: {}", with_causes(&e)))?;
    let status = response.status().as_u16();
    let mut answer = Vec::new();
    while answer.len() < ANSWER_BYTES_MAX {
        match response.chunk().await {
            Ok(Some(chunk)) => answer.extend_from_slice(&chunk),
            _ => break,
        }
    }
    answer.truncate(ANSWER_BYTES_MAX);
    Ok((status, String::from_utf8_lossy(&answer).trim().to_owned()))
}

/// An error with its causes, as the delivery log shows it.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn loopback_and_private_receivers_are_refused_unless_the_operator_allows_them() {
        for url in [
            "https://127.0.0.1/in",
            "https://[::1]:8443/in",
            "https://10.1.2.3/in",
            "https://[::ffff:192.168.0.1]/in",
            "https://localhost/in",
        ] {
            assert!(
                matches!(
                    checked_addresses(url, false).await,
                    Err(AddressError::NotAllowed { .. })
                ),
                "{url}"
            );
        }
        let (host, addresses) = checked_addresses("http://127.0.0.1:9000/in", true)
            .await
            .expect("allowed");
        assert_eq!(host, "127.0.0.1");
        assert_eq!(addresses, vec!["127.0.0.1:9000".parse().expect("addr")]);
        assert!(checked_addresses("https://8.8.8.8/in", false).await.is_ok());
        assert!(matches!(
            checked_addresses("https://no-such-host.invalid/in", true).await,
            Err(AddressError::Resolve { .. } | AddressError::NoAddress { .. })
        ));
    }
}
