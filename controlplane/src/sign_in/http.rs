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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A server on loopback that answers every connection with `head` and then `body_bytes`
    /// bytes, without a length when `head` gives none (the body ends when the connection does).
    fn serve(head: &'static str, body_bytes: usize) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request);
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&vec![b'x'; body_bytes]);
            }
        });
        format!("http://{addr}/")
    }

    fn get(url: &str) -> HttpRequest {
        openidconnect::http::Request::builder()
            .uri(url)
            .body(Vec::new())
            .expect("request")
    }

    #[tokio::test]
    async fn answers_over_the_bound_are_refused_with_or_without_a_length() {
        let http = ProviderHttp::new(Duration::from_secs(5), 1024).expect("client");
        let small = serve("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", 10);
        assert_eq!(
            http.execute(get(&small)).await.expect("read").body().len(),
            10
        );
        let declared = serve("HTTP/1.1 200 OK\r\nContent-Length: 4096\r\n\r\n", 4096);
        assert!(matches!(
            http.execute(get(&declared)).await,
            Err(ProviderHttpError::TooLarge(1024))
        ));
        let undeclared = serve("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", 4096);
        assert!(matches!(
            http.execute(get(&undeclared)).await,
            Err(ProviderHttpError::TooLarge(1024))
        ));
    }

    #[tokio::test]
    async fn a_silent_provider_times_out_and_redirects_are_not_followed() {
        let http = ProviderHttp::new(Duration::from_millis(300), 1024).expect("client");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let silent = format!("http://{}/", listener.local_addr().expect("addr"));
        let started = std::time::Instant::now();
        assert!(matches!(
            http.execute(get(&silent)).await,
            Err(ProviderHttpError::Request(_))
        ));
        assert!(started.elapsed() < Duration::from_secs(3));
        drop(listener);
        let redirect = serve(
            "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/\r\nContent-Length: 0\r\n\r\n",
            0,
        );
        let answer = http.execute(get(&redirect)).await.expect("answer");
        assert_eq!(answer.status(), 302, "handed back, not followed");
    }
}
