//! The HTTP client webhook deliveries go out with: bounded in time and answer size, no
//! redirects (a receiver could redirect to an address the policy refuses), and the outbound
//! address policy (`sluice_config::outbound`) applied to every address a name resolves to at
//! connect time, not only when the URL was saved: a name may resolve elsewhere later.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use sluice_config::outbound;

/// Time for one delivery attempt: connecting, sending, and the receiver's answer.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of a receiver's answer kept (for the delivery log).
const ANSWER_BYTES_MAX: usize = 1024;

/// Resolves names and keeps the public addresses only.
struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|a| outbound::is_public(a.ip()))
                .collect();
            if public.is_empty() {
                return Err(format!(
                    "{host} resolves to no public address ({addrs:?}); an operator can allow private hosts with smtp_allow_private_hosts"
                )
                .into());
            }
            Ok(Box::new(public.into_iter()) as Addrs)
        })
    }
}

/// What a receiver answered.
pub struct Answer {
    pub status: u16,
    /// `Retry-After`, in seconds, when given as seconds.
    pub retry_after: Option<Duration>,
    pub body: String,
}

/// Why an attempt got no answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("{0} is a non-public address; an operator can allow private hosts with smtp_allow_private_hosts")]
    NotPublic(IpAddr),
    #[error("{0}")]
    Request(String),
    #[error("the webhook client cannot start: {0}")]
    Build(String),
}

/// Two clients: one keeping to public addresses, one for subscriptions the operator lets
/// reach private hosts.
#[derive(Clone)]
pub struct WebhookClient {
    public_only: reqwest::Client,
    any: reqwest::Client,
}

impl WebhookClient {
    pub fn new() -> Result<WebhookClient, SendError> {
        // reqwest is built without a crypto provider of its own; `sluice` installs ring's, and
        // this makes the library (and its tests) work on its own too.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let build = |public_only: bool| {
            let builder = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(ATTEMPT_TIMEOUT)
                .connect_timeout(ATTEMPT_TIMEOUT)
                .user_agent("sluice-webhooks");
            let builder = if public_only {
                builder.dns_resolver(Arc::new(PublicOnly))
            } else {
                builder
            };
            builder.build().map_err(|e| SendError::Build(e.to_string()))
        };
        Ok(WebhookClient {
            public_only: build(true)?,
            any: build(false)?,
        })
    }

    /// Posts `body` to `url` with `headers`; the answer, or why there was none.
    pub async fn post(
        &self,
        url: &str,
        allow_private: bool,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<Answer, SendError> {
        let parsed = reqwest::Url::parse(url).map_err(|e| SendError::Request(e.to_string()))?;
        // An address literal is not resolved, so the resolver cannot judge it.
        if !allow_private {
            let literal = match parsed.host() {
                Some(url::Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
                Some(url::Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
                _ => None,
            };
            if let Some(ip) = literal.filter(|ip| !outbound::is_public(*ip)) {
                return Err(SendError::NotPublic(ip));
            }
        }
        let client = if allow_private {
            &self.any
        } else {
            &self.public_only
        };
        let mut request = client
            .post(parsed)
            .header("content-type", "application/json")
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let mut response = request.send().await.map_err(|e| {
            // reqwest's top-level message hides the cause (a refused address, a timeout).
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            SendError::Request(text)
        })?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let mut body = Vec::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            let room = ANSWER_BYTES_MAX.saturating_sub(body.len());
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if body.len() >= ANSWER_BYTES_MAX {
                break;
            }
        }
        Ok(Answer {
            status,
            retry_after,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}
