//! Ingest through the MCP endpoint: `sluice_call` with `POST /v1/ingest/{workspace}/{source}`
//! forwards the events to the data plane, which alone makes events durable.
//!
//! Nodes take only tokens of the configuration they are pushed, so the control plane holds
//! one ingest credential per workspace of its own: a token like any other to nodes (its hash
//! in the snapshot, scope `ingest`, every source), but in a table of its own, so that it is
//! neither listed nor revocable through the token API, and it goes with its workspace. Its
//! secret is sealed at rest with the control plane's secret key (`secrets.rs`), so a copy of
//! the store does not hold a working token. It is minted on the first MCP ingest of the
//! workspace; the caller's permission (role ∩ scopes, `Action::Ingest`) is checked by the MCP
//! endpoint before this credential is used at all.
//!
//! A credential minted a moment ago may not have reached the nodes yet: the node answers
//! `401 invalid-token` (nothing written), and the call is retried for a few seconds.

use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sluice_config::snapshot::{Scope, TokenConfig};
use uuid::Uuid;

use crate::app::App;
use crate::problem::{ApiError, ApiResult, ProblemType};
use crate::secrets::{SecretBox, SecretError};
use crate::store::{Change, Store};

/// The most body `sluice_call` forwards: the MCP message holding it is bounded by the control
/// plane's `body_bytes_max` (1 MiB) anyway, and JSON escaping may double a text body inside it.
/// Larger batches go to the ingest endpoint directly.
pub const BODY_BYTES_MAX: usize = 512 * 1024;

/// Bound on one forwarded request, connection to the end of the answer.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on connecting to the ingest URL.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a fresh credential may take to reach the nodes (they apply a configuration
/// within a fraction of a second) before the node's `401` is the answer.
const NEW_TOKEN_WAIT: Duration = Duration::from_secs(5);
/// The most of the data plane's answer read (an answer is a count or a problem+json, whose
/// `errors` list is capped at 100 entries).
const ANSWER_BYTES_MAX: usize = 256 * 1024;

/// The control plane's ingest token of one workspace. Nodes see it as a token; nobody sees
/// its secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IngestCredential {
    pub workspace_id: Uuid,
    pub id: Uuid,
    /// SHA-256 (hex) of the secret, as in the snapshot.
    pub sha256: String,
    /// The secret, sealed with the control plane's secret key for this workspace.
    pub secret_sealed: String,
    pub created_at: DateTime<Utc>,
}

impl IngestCredential {
    /// The token nodes get: `ingest` to every source of the workspace, any device, no expiry.
    pub fn token_config(&self) -> TokenConfig {
        TokenConfig {
            id: self.id,
            name: "MCP ingest (control plane)".into(),
            sha256: self.sha256.clone(),
            scopes: vec![Scope::Ingest],
            sources: None,
            device_id: None,
            expires_at: None,
            endpoints: None,
        }
    }
}

/// What the seal of a workspace's credential is bound to: a sealed secret copied to another
/// workspace's record does not open.
fn seal_context(workspace: Uuid) -> String {
    format!("mcp-ingest/{workspace}")
}

/// The secret of the workspace's credential, minted (and committed) on first need; a record
/// that no longer opens (the key that sealed it was dropped) is replaced.
async fn secret(app: &App, workspace: Uuid) -> ApiResult<String> {
    let context = seal_context(workspace);
    let known = app
        .store
        .read(|s| s.ingest_credentials.get(&workspace).cloned());
    if let Some(credential) = &known {
        match app.secrets.open(&credential.secret_sealed, &context) {
            Ok(secret) => return Ok(secret),
            Err(e) => {
                tracing::warn!(%workspace, error = %e, "the MCP ingest credential does not open; minting another")
            }
        }
    }
    let secret = sluice_config::token::generate();
    let sealed = app
        .secrets
        .seal(&secret, &context)
        .map_err(|e| ApiError::internal(format!("sealing the ingest credential: {e}")))?;
    let credential = IngestCredential {
        workspace_id: workspace,
        id: Uuid::now_v7(),
        sha256: sluice_config::token::hash_hex(&secret),
        secret_sealed: sealed,
        created_at: Utc::now(),
    };
    let seen = known.map(|c| c.sha256);
    let secrets = app.secrets.clone();
    app.write(move |s| {
        if !s.workspaces.contains_key(&workspace) {
            return Err(ApiError::new(
                ProblemType::UnknownWorkspace,
                "the workspace was deleted",
            ));
        }
        // Another call minted one meanwhile: use it rather than replace the one it is
        // sending with.
        if let Some(current) = s.ingest_credentials.get(&workspace) {
            if Some(&current.sha256) != seen.as_ref() {
                if let Ok(secret) = secrets.open(&current.secret_sealed, &context) {
                    return Ok((Vec::new(), secret));
                }
            }
        }
        Ok((vec![Change::PutIngestCredential(credential)], secret))
    })
    .await
}

/// The credentials sealed with a previous key, sealed again with the current one (at start,
/// with the other stored secrets). One that opens with no configured key is left: the next
/// MCP ingest of its workspace mints another.
pub fn resealed(store: &Store, secrets: &SecretBox) -> Result<Vec<Change>, SecretError> {
    let mut changes = Vec::new();
    for mut credential in store.read(|s| {
        s.ingest_credentials
            .values()
            .filter(|c| secrets.needs_resealing(&c.secret_sealed))
            .cloned()
            .collect::<Vec<_>>()
    }) {
        let context = seal_context(credential.workspace_id);
        if let Ok(secret) = secrets.open(&credential.secret_sealed, &context) {
            credential.secret_sealed = secrets.seal(&secret, &context)?;
            changes.push(Change::PutIngestCredential(credential));
        }
    }
    Ok(changes)
}

/// The client of every forwarded request: no redirect followed (the next hop would get the
/// credential), bounded in time.
fn client() -> Result<&'static reqwest::Client, ApiError> {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    if let Some(client) = CLIENT.get() {
        return Ok(client);
    }
    // reqwest is built without a crypto provider of its own (see webhook_client.rs).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(FORWARD_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent("sluice-mcp-ingest")
        .build()
        .map_err(|e| ApiError::internal(format!("the HTTP client could not be built: {e}")))?;
    Ok(CLIENT.get_or_init(|| client))
}

/// One ingest request as `sluice_call` makes it.
#[derive(Debug, Clone)]
pub struct Forward {
    pub workspace_id: Uuid,
    pub workspace_slug: String,
    pub source: String,
    /// Form-encoded query parameters (tag rules may read them), if any.
    pub query: Option<String>,
    pub content_type: String,
    pub device_id: Option<String>,
    pub body: Bytes,
}

/// Sends `forward` to the data plane at `ingest_public_url` with the workspace's credential;
/// the node's status and answer (`202 {"accepted": N}` or a problem+json), or why no node
/// answered.
pub async fn send(app: &App, forward: Forward) -> ApiResult<(StatusCode, Bytes)> {
    if forward.body.len() > BODY_BYTES_MAX {
        return Err(ApiError::new(
            ProblemType::BodyTooLarge,
            format!(
                "the body has {} bytes; sluice_call forwards at most {BODY_BYTES_MAX}: split it, or send large batches to the ingest endpoint with an ingest token",
                forward.body.len()
            ),
        ));
    }
    let secret = secret(app, forward.workspace_id).await?;
    let base = app.config.device_urls().ingest;
    let mut url = format!(
        "{base}/v1/ingest/{}/{}",
        forward.workspace_slug, forward.source
    );
    if let Some(query) = forward.query.as_deref().filter(|q| !q.is_empty()) {
        url = format!("{url}?{query}");
    }
    let client = client()?;
    let deadline = tokio::time::Instant::now() + NEW_TOKEN_WAIT;
    let mut pause = Duration::from_millis(50);
    loop {
        let mut request = client
            .post(&url)
            .bearer_auth(&secret)
            .header(reqwest::header::CONTENT_TYPE, &forward.content_type)
            .body(forward.body.clone());
        if let Some(device) = &forward.device_id {
            request = request.header("x-device-id", device);
        }
        let (status, answer) = match request.send().await {
            Ok(response) => read_answer(response).await?,
            Err(e) => {
                tracing::warn!(url = %url, error = %e, "forwarding MCP ingest failed");
                return Err(ApiError::new(
                    ProblemType::IngestUnavailable,
                    format!("the data plane at {base} did not answer: {e}"),
                ));
            }
        };
        // A token the node does not know yet: refused before anything is written, so sending
        // again is safe.
        let unknown_token = status == StatusCode::UNAUTHORIZED
            && serde_json::from_slice::<serde_json::Value>(&answer)
                .ok()
                .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_owned))
                .is_some_and(|t| t.ends_with(":invalid-token"));
        if !unknown_token || tokio::time::Instant::now() + pause > deadline {
            return Ok((status, answer));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// The status and at most [`ANSWER_BYTES_MAX`] of the answer.
async fn read_answer(mut response: reqwest::Response) -> ApiResult<(StatusCode, Bytes)> {
    let status = StatusCode::from_u16(response.status().as_u16())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut answer = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if answer.len() + chunk.len() > ANSWER_BYTES_MAX {
                    return Err(ApiError::new(
                        ProblemType::IngestUnavailable,
                        format!("the data plane answered more than {ANSWER_BYTES_MAX} bytes"),
                    ));
                }
                answer.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok((status, Bytes::from(answer))),
            Err(e) => {
                return Err(ApiError::new(
                    ProblemType::IngestUnavailable,
                    format!("the data plane's answer broke off: {e}"),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_credential_is_an_ingest_token_of_every_source_and_its_seal_is_bound_to_the_workspace() {
        let secrets = SecretBox::new(&"ab".repeat(32), &[]).expect("key");
        let (one, two) = (Uuid::now_v7(), Uuid::now_v7());
        let secret = sluice_config::token::generate();
        let sealed = secrets.seal(&secret, &seal_context(one)).expect("seal");
        assert!(!sealed.contains(&secret));
        assert_eq!(
            secrets.open(&sealed, &seal_context(one)).expect("opens"),
            secret
        );
        assert!(secrets.open(&sealed, &seal_context(two)).is_err());
        let credential = IngestCredential {
            workspace_id: one,
            id: Uuid::now_v7(),
            sha256: sluice_config::token::hash_hex(&secret),
            secret_sealed: sealed,
            created_at: Utc::now(),
        };
        let token = credential.token_config();
        assert_eq!(token.scopes, vec![Scope::Ingest]);
        assert_eq!(token.sha256, sluice_config::token::hash_hex(&secret));
        assert!(token.sources.is_none() && token.device_id.is_none() && token.expires_at.is_none());
    }
}
