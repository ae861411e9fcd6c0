//! The resource server's check of an OAuth access token at `/mcp/{workspace}`: known, not
//! expired, of a grant that still exists, for this very MCP URL (the audience, RFC 8707), and
//! of a user who is still a member. The caller it gives carries the grant's [`Delegation`],
//! which `api::authorize` intersects with the role on every operation.

use chrono::Utc;

use super::records::{OAuthChange, TokenKind};
use super::{mcp_url, Delegation, ACCESS_TOKEN_PREFIX, LAST_USED_RESOLUTION};
use crate::app::App;
use crate::auth::{sha256_hex, Caller};
use crate::model::{Credential, CredentialKind};
use crate::store::Change;

/// Why an access token is refused, for the `error_description` of the challenge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BearerError {
    #[error("the access token is unknown, revoked or expired")]
    Invalid,
    #[error("the access token is for another resource (MCP URL) than this one")]
    WrongResource,
}

/// Whether `secret` looks like an OAuth access token (rather than a personal token).
pub fn is_access_token(secret: &str) -> bool {
    secret.starts_with(ACCESS_TOKEN_PREFIX)
}

/// The caller an access token stands for at the MCP URL of workspace `slug`.
pub fn resolve(app: &App, secret: &str, slug: &str) -> Result<Caller, BearerError> {
    let hash = sha256_hex(secret);
    let now = Utc::now();
    let resource = mcp_url(app, slug);
    let (caller, touch) = app.store.read(|s| {
        let token = s
            .oauth
            .tokens
            .get(&hash)
            .filter(|t| t.kind == TokenKind::Access && t.expires_at > now)
            .ok_or(BearerError::Invalid)?;
        let grant = s
            .oauth
            .grants
            .get(&token.grant_id)
            .ok_or(BearerError::Invalid)?;
        let workspace = s
            .workspaces
            .get(&grant.workspace_id)
            .ok_or(BearerError::Invalid)?;
        if grant.resource != resource || workspace.slug != slug {
            return Err(BearerError::WrongResource);
        }
        let user = s.users.get(&grant.user_id).ok_or(BearerError::Invalid)?;
        let caller = Caller {
            user: user.clone(),
            credential: Credential {
                id: grant.id,
                sha256: hash.clone(),
                kind: CredentialKind::PersonalToken,
                user_id: user.id,
                name: format!("OAuth grant to {}", grant.client_name),
                hint: String::new(),
                created_at: grant.created_at,
                expires_at: Some(token.expires_at),
            },
            delegation: Some(Delegation {
                workspace_id: grant.workspace_id,
                scopes: grant.scopes.clone(),
            }),
        };
        let stale = grant
            .last_used_at
            .is_none_or(|at| now - at > LAST_USED_RESOLUTION);
        Ok((caller, stale.then_some(grant.id)))
    })?;
    if let Some(grant) = touch {
        // The grant list shows when a client last came; a write per call would be an fsync
        // per call, so it moves in steps of LAST_USED_RESOLUTION.
        let app = app.clone();
        tokio::spawn(async move {
            let _ = app
                .write(move |s| {
                    let changes = s
                        .oauth
                        .grants
                        .get(&grant)
                        .map(|g| {
                            let mut g = g.clone();
                            g.last_used_at = Some(Utc::now());
                            vec![Change::OAuth(OAuthChange::PutGrant(g))]
                        })
                        .unwrap_or_default();
                    Ok((changes, ()))
                })
                .await;
        });
    }
    Ok(caller)
}
