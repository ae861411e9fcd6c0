//! Client ID Metadata Documents: a client whose id is an `https` URL publishes its metadata
//! (name, redirect URIs) there, and needs no registration. The document is fetched like a
//! webhook receiver is reached: every address its host resolves to is checked against the
//! outbound address policy (`smtp_allow_private_hosts` overrides it), the request goes to
//! those addresses only, no redirect is followed, and time and size are bounded. Documents are
//! cached for an hour, a bounded number of them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::registration::{clean_name, redirect_uri_allowed, REDIRECT_URIS_MAX};
use crate::webhook_client::checked_addresses;

/// Bound on fetching a document, connection to the last byte.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest document read (the MCP authorization specification suggests 5 KiB).
const DOCUMENT_BYTES_MAX: usize = 5 * 1024;
/// How long a fetched document is used before it is fetched again.
const CACHE_TTL: Duration = Duration::from_secs(3600);
/// Documents cached at most.
const CACHE_ENTRIES_MAX: usize = 1000;

/// What the authorization server uses of a client's document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientDocument {
    pub client_name: String,
    pub redirect_uris: Vec<String>,
}

/// Documents fetched recently, by client id.
#[derive(Default)]
pub struct Cache {
    entries: Mutex<HashMap<String, (Instant, ClientDocument)>>,
}

/// Whether `client_id` names a metadata document rather than a registered client.
pub fn is_document_url(client_id: &str) -> bool {
    client_id.starts_with("https://")
}

#[derive(Deserialize)]
struct Document {
    client_id: String,
    client_name: Option<String>,
    #[serde(default)]
    redirect_uris: Vec<String>,
    token_endpoint_auth_method: Option<String>,
}

/// Checks a fetched document against the URL it came from.
pub fn parse_document(client_id: &str, bytes: &[u8]) -> Result<ClientDocument, String> {
    let document: Document = serde_json::from_slice(bytes)
        .map_err(|e| format!("the client metadata document is not valid: {e}"))?;
    if document.client_id != client_id {
        return Err(format!(
            "the client metadata document names client_id {:?}, not its own URL",
            document.client_id
        ));
    }
    if document.redirect_uris.is_empty() || document.redirect_uris.len() > REDIRECT_URIS_MAX {
        return Err(format!(
            "the client metadata document must list 1 to {REDIRECT_URIS_MAX} redirect_uris"
        ));
    }
    for uri in &document.redirect_uris {
        redirect_uri_allowed(uri)?;
    }
    if document
        .token_endpoint_auth_method
        .as_deref()
        .is_some_and(|m| m != "none")
    {
        return Err(
            "only public clients (token_endpoint_auth_method \"none\") are accepted".into(),
        );
    }
    let name = clean_name(document.client_name.as_deref().unwrap_or(""));
    Ok(ClientDocument {
        client_name: if name.is_empty() {
            client_id.chars().take(100).collect()
        } else {
            name
        },
        redirect_uris: document.redirect_uris,
    })
}

impl Cache {
    /// The document of `client_id`, from the cache or fetched.
    pub async fn get(
        &self,
        client_id: &str,
        allow_private: bool,
    ) -> Result<ClientDocument, String> {
        if let Some((at, document)) = self
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(client_id)
        {
            if at.elapsed() < CACHE_TTL {
                return Ok(document.clone());
            }
        }
        let document = tokio::time::timeout(FETCH_TIMEOUT, fetch(client_id, allow_private))
            .await
            .unwrap_or_else(|_| Err("fetching the client metadata document timed out".into()))?;
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= CACHE_ENTRIES_MAX {
            entries.retain(|_, (at, _)| at.elapsed() < CACHE_TTL);
            if entries.len() >= CACHE_ENTRIES_MAX {
                entries.clear();
            }
        }
        entries.insert(client_id.to_owned(), (Instant::now(), document.clone()));
        Ok(document)
    }
}

async fn fetch(client_id: &str, allow_private: bool) -> Result<ClientDocument, String> {
    let url = url::Url::parse(client_id).map_err(|e| format!("the client_id is not a URL: {e}"))?;
    if url.scheme() != "https" || url.path() == "/" || url.fragment().is_some() {
        return Err("a client_id URL must be https with a path and no fragment".into());
    }
    let (host, addresses) = checked_addresses(client_id, allow_private)
        .await
        .map_err(|e| format!("the client metadata document cannot be fetched: {e}"))?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(FETCH_TIMEOUT)
        .connect_timeout(FETCH_TIMEOUT)
        .user_agent("sluice-oauth")
        .resolve_to_addrs(&host, &addresses)
        .build()
        .map_err(|e| format!("the HTTP client could not be built: {e}"))?;
    let mut response = client
        .get(client_id)
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| format!("fetching the client metadata document failed: {e}"))?;
    if response.status() != reqwest::StatusCode::OK {
        return Err(format!(
            "the client metadata document answered {}",
            response.status()
        ));
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("reading the client metadata document failed: {e}"))?
    {
        bytes.extend_from_slice(&chunk);
        if bytes.len() > DOCUMENT_BYTES_MAX {
            return Err(format!(
                "the client metadata document is larger than {DOCUMENT_BYTES_MAX} bytes"
            ));
        }
    }
    parse_document(client_id, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_must_name_its_own_url_and_list_allowed_redirect_uris() {
        let id = "https://client.example/oauth/metadata.json";
        let good = format!(
            r#"{{"client_id":"{id}","client_name":"Editor","redirect_uris":["http://127.0.0.1:3000/cb"]}}"#
        );
        let document = parse_document(id, good.as_bytes()).expect("accepted");
        assert_eq!(document.client_name, "Editor");
        let other =
            r#"{"client_id":"https://evil.example/x","redirect_uris":["https://a.example/cb"]}"#;
        assert!(parse_document(id, other.as_bytes()).is_err());
        let bad_uri =
            format!(r#"{{"client_id":"{id}","redirect_uris":["http://evil.example/cb"]}}"#);
        assert!(parse_document(id, bad_uri.as_bytes()).is_err());
        let secret = format!(
            r#"{{"client_id":"{id}","redirect_uris":["https://a.example/cb"],"token_endpoint_auth_method":"client_secret_basic"}}"#
        );
        assert!(parse_document(id, secret.as_bytes()).is_err());
    }
}
