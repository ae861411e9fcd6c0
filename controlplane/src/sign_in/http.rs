//! The HTTP client for requests to sign-in providers: discovery, keys, token and user API.
//!
//! Providers are configured by the operator, not by workspaces, so these requests do not go
//! through the outbound address policy (`outbound.rs`), which guards against workspace Admins.
//! They are still bounded: a timeout per request, no redirects followed (a provider's
//! endpoints are where its metadata says; following could lead anywhere), and at most
//! `provider_response_bytes_max` read from an answer.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use openidconnect::{AsyncHttpClient, HttpRequest, HttpResponse};

/// A request to a provider that failed.
#[derive(Debug, thiserror::Error)]
pub enum ProviderHttpError {
    #[error("request to the provider failed: {0}")]
    Request(#[from] reqwest::Error),
    #[error("the provider's answer is larger than {0} bytes")]
    TooLarge(usize),
    #[error("malformed request or answer: {0}")]
    Http(#[from] openidconnect::http::Error),
}

/// A bounded HTTP client (cheap to clone).
#[derive(Clone)]
pub struct ProviderHttp {
    client: reqwest::Client,
    bytes_max: usize,
}

impl ProviderHttp {
    pub fn new(timeout: Duration, bytes_max: usize) -> Result<ProviderHttp, ProviderHttpError> {
        // reqwest is built without a crypto provider of its own; `sluice` installs ring's, and
        // this makes the library (and its tests) work on its own too.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent("sluice-controlplane")
            .build()?;
        Ok(ProviderHttp { client, bytes_max })
    }

    /// Sends one request and reads its answer, within the bounds.
    pub async fn execute(&self, request: HttpRequest) -> Result<HttpResponse, ProviderHttpError> {
        let request = reqwest::Request::try_from(request)?;
        let mut response = self.client.execute(request).await?;
        let mut builder = openidconnect::http::Response::builder().status(response.status());
        for (name, value) in response.headers() {
            builder = builder.header(name, value);
        }
        if response
            .content_length()
            .is_some_and(|n| n > self.bytes_max as u64)
        {
            return Err(ProviderHttpError::TooLarge(self.bytes_max));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if body.len() + chunk.len() > self.bytes_max {
                return Err(ProviderHttpError::TooLarge(self.bytes_max));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(builder.body(body)?)
    }
}

/// How `openidconnect` sends its requests (discovery, keys, token) through this client. A
/// named, `Send` future: a closure's future would not be `Send` for every lifetime, which axum
/// handlers need.
impl<'c> AsyncHttpClient<'c> for ProviderHttp {
    type Error = ProviderHttpError;
    type Future =
        Pin<Box<dyn Future<Output = Result<HttpResponse, ProviderHttpError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(self.execute(request))
    }
}
