//! `/oauth/token` (the code exchange and refreshes) and `/oauth/revoke` (RFC 7009).
//!
//! A code is exchanged once, within [`CODE_TTL`](super::CODE_TTL), by the client it was issued
//! to, with the redirect URI of its request and the PKCE verifier of its challenge; a second
//! exchange revokes what the first gave. The exchange makes the grant. Refresh tokens rotate:
//! each use gives a new one and spends the old, and a spent one presented again (a stolen copy,
//! or the thief's) revokes the whole grant.

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::records::{Grant, OAuthChange, OAuthToken, TokenKind};
use super::scope::Scopes;
use super::{
    no_store, oauth_error, pkce_s256_matches, ACCESS_TOKEN_PREFIX, REFRESH_TOKEN_PREFIX,
    REFRESH_TOKEN_TTL,
};
use crate::app::App;
use crate::auth::{new_secret, sha256_hex};
use crate::store::{Change, State as StoreState};

/// The token request's parameters (RFC 6749 §4.1.3, §6; RFC 7636 §4.5; RFC 8707).
#[derive(Debug, Deserialize)]
pub struct TokenRequest {
    grant_type: Option<String>,
    code: Option<String>,
    redirect_uri: Option<String>,
    client_id: Option<String>,
    code_verifier: Option<String>,
    refresh_token: Option<String>,
    resource: Option<String>,
    scope: Option<String>,
}

/// An OAuth error of the token endpoint: `(error, description)`.
type Refusal = (&'static str, String);

/// New access and refresh tokens of `grant`, their records and the answer.
fn issue(ttl_s: u64, grant: &Grant, now: DateTime<Utc>) -> (Vec<Change>, serde_json::Value) {
    let access = new_secret(ACCESS_TOKEN_PREFIX);
    let refresh = new_secret(REFRESH_TOKEN_PREFIX);
    let changes = vec![
        Change::OAuth(OAuthChange::PutToken(OAuthToken {
            sha256: sha256_hex(&access),
            kind: TokenKind::Access,
            grant_id: grant.id,
            expires_at: now + chrono::Duration::seconds(ttl_s as i64),
            spent: false,
            issued_at: Some(now),
        })),
        Change::OAuth(OAuthChange::PutToken(OAuthToken {
            sha256: sha256_hex(&refresh),
            kind: TokenKind::Refresh,
            grant_id: grant.id,
            expires_at: now + REFRESH_TOKEN_TTL,
            spent: false,
            issued_at: Some(now),
        })),
    ];
    let answer = json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": ttl_s,
        "refresh_token": refresh,
        "scope": grant.scopes.to_string(),
    });
    (changes, answer)
}

fn exchange_code(
    ttl_s: u64,
    s: &StoreState,
    request: &TokenRequest,
) -> (Vec<Change>, Result<serde_json::Value, Refusal>) {
    let invalid = |detail: &str| Err(("invalid_grant", detail.to_owned()));
    let (Some(code), Some(client_id), Some(verifier), Some(redirect_uri)) = (
        request.code.as_deref(),
        request.client_id.as_deref(),
        request.code_verifier.as_deref(),
        request.redirect_uri.as_deref(),
    ) else {
        return (
            Vec::new(),
            Err((
                "invalid_request",
                "code, client_id, code_verifier and redirect_uri are required".into(),
            )),
        );
    };
    let now = Utc::now();
    let Some(record) = s.oauth.codes.get(&sha256_hex(code)) else {
        return (Vec::new(), invalid("the code is unknown or expired"));
    };
    if let Some(grant) = record.redeemed {
        // Someone replays a code: what its first exchange gave is not to be trusted.
        let mut changes: Vec<Change> = s
            .oauth
            .grant_revocation(grant)
            .into_iter()
            .map(Change::OAuth)
            .collect();
        changes.push(Change::OAuth(OAuthChange::DeleteCode(
            record.sha256.clone(),
        )));
        return (
            changes,
            invalid("the code was used already; its tokens are revoked"),
        );
    }
    if record.expires_at <= now {
        return (Vec::new(), invalid("the code expired; authorize again"));
    }
    if record.client_id != client_id {
        return (Vec::new(), invalid("the code was issued to another client"));
    }
    if record.redirect_uri != redirect_uri {
        return (
            Vec::new(),
            invalid("redirect_uri is not the one of the authorization request"),
        );
    }
    if !pkce_s256_matches(verifier, &record.code_challenge) {
        return (
            Vec::new(),
            invalid("code_verifier does not match the code_challenge (S256)"),
        );
    }
    if request
        .resource
        .as_deref()
        .is_some_and(|r| r != record.resource)
    {
        return (
            Vec::new(),
            Err((
                "invalid_target",
                "resource is not the one of the authorization request".into(),
            )),
        );
    }
    if !s
        .members
        .contains_key(&(record.workspace_id, record.user_id))
    {
        return (
            Vec::new(),
            invalid("the user is no longer a member of the workspace"),
        );
    }
    let grant = Grant {
        id: Uuid::now_v7(),
        workspace_id: record.workspace_id,
        user_id: record.user_id,
        client_id: record.client_id.clone(),
        client_name: record.client_name.clone(),
        scopes: record.scopes.clone(),
        resource: record.resource.clone(),
        created_at: now,
        last_used_at: Some(now),
    };
    let (mut changes, answer) = issue(ttl_s, &grant, now);
    let mut redeemed = record.clone();
    redeemed.redeemed = Some(grant.id);
    changes.push(Change::OAuth(OAuthChange::PutCode(redeemed)));
    changes.push(Change::OAuth(OAuthChange::PutGrant(grant)));
    (changes, Ok(answer))
}

fn refresh(
    ttl_s: u64,
    s: &StoreState,
    request: &TokenRequest,
) -> (Vec<Change>, Result<serde_json::Value, Refusal>) {
    let invalid = |detail: &str| Err(("invalid_grant", detail.to_owned()));
    let Some(token) = request.refresh_token.as_deref() else {
        return (
            Vec::new(),
            Err(("invalid_request", "refresh_token is required".into())),
        );
    };
    let now = Utc::now();
    let Some(record) = s
        .oauth
        .tokens
        .get(&sha256_hex(token))
        .filter(|t| t.kind == TokenKind::Refresh)
    else {
        return (
            Vec::new(),
            invalid("the refresh token is unknown, revoked or expired"),
        );
    };
    let revoke_all = || -> Vec<Change> {
        s.oauth
            .grant_revocation(record.grant_id)
            .into_iter()
            .map(Change::OAuth)
            .collect()
    };
    if record.spent {
        tracing::warn!(grant = %record.grant_id, "a spent refresh token was presented again; the grant is revoked");
        return (
            revoke_all(),
            invalid("the refresh token was used already; the grant is revoked: authorize again"),
        );
    }
    if record.expires_at <= now {
        return (
            vec![Change::OAuth(OAuthChange::DeleteToken(
                record.sha256.clone(),
            ))],
            invalid("the refresh token expired; authorize again"),
        );
    }
    let Some(grant) = s.oauth.grants.get(&record.grant_id) else {
        return (Vec::new(), invalid("the grant was revoked"));
    };
    if request
        .client_id
        .as_deref()
        .is_some_and(|c| c != grant.client_id)
    {
        return (
            Vec::new(),
            invalid("the refresh token was issued to another client"),
        );
    }
    if request
        .resource
        .as_deref()
        .is_some_and(|r| r != grant.resource)
    {
        return (
            Vec::new(),
            Err(("invalid_target", "resource is not the grant's".into())),
        );
    }
    if let Some(scope) = request.scope.as_deref() {
        match Scopes::parse(scope) {
            Ok(asked) if asked.is_subset(&grant.scopes) => {}
            _ => {
                return (
                    Vec::new(),
                    Err((
                        "invalid_scope",
                        format!("the grant's scopes are {}", grant.scopes),
                    )),
                );
            }
        }
    }
    if !s.members.contains_key(&(grant.workspace_id, grant.user_id)) {
        return (
            revoke_all(),
            invalid("the user is no longer a member of the workspace"),
        );
    }
    let mut grant = grant.clone();
    grant.last_used_at = Some(now);
    let (mut changes, answer) = issue(ttl_s, &grant, now);
    let mut spent = record.clone();
    spent.spent = true;
    changes.push(Change::OAuth(OAuthChange::PutToken(spent)));
    changes.push(Change::OAuth(OAuthChange::PutGrant(grant)));
    (changes, Ok(answer))
}

/// `POST /oauth/token`.
pub async fn token(
    State(app): State<App>,
    form: Result<Form<TokenRequest>, FormRejection>,
) -> Response {
    let Ok(Form(request)) = form else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "send the parameters as application/x-www-form-urlencoded",
        );
    };
    let grant_type = request.grant_type.clone().unwrap_or_default();
    if grant_type != "authorization_code" && grant_type != "refresh_token" {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type is authorization_code or refresh_token",
        );
    }
    let ttl_s = app.config.oauth_access_token_ttl_secs;
    let outcome = app
        .write(move |s| {
            let (changes, answer) = if grant_type == "authorization_code" {
                exchange_code(ttl_s, s, &request)
            } else {
                refresh(ttl_s, s, &request)
            };
            Ok((changes, answer))
        })
        .await;
    match outcome {
        Ok(Ok(answer)) => {
            let mut response = Json(answer).into_response();
            no_store(&mut response);
            response
        }
        Ok(Err((error, detail))) => oauth_error(StatusCode::BAD_REQUEST, error, detail),
        Err(e) => oauth_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            e.detail,
        ),
    }
}

/// The revocation request's parameters.
#[derive(Debug, Deserialize)]
pub struct RevokeRequest {
    token: Option<String>,
    client_id: Option<String>,
}

/// `POST /oauth/revoke`: a refresh token ends its whole grant, an access token itself. The
/// answer is 200 whether or not the token was known (RFC 7009 §2.2).
pub async fn revoke(
    State(app): State<App>,
    form: Result<Form<RevokeRequest>, FormRejection>,
) -> Response {
    let Ok(Form(request)) = form else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "send token as a form",
        );
    };
    let Some(token) = request.token else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "token is required",
        );
    };
    let hash = sha256_hex(&token);
    let result = app
        .write(move |s| {
            let Some(record) = s.oauth.tokens.get(&hash) else {
                return Ok((Vec::new(), ()));
            };
            let client_ok = match (s.oauth.grants.get(&record.grant_id), &request.client_id) {
                (Some(grant), Some(client)) => &grant.client_id == client,
                _ => true,
            };
            if !client_ok {
                return Ok((Vec::new(), ()));
            }
            let changes = match record.kind {
                TokenKind::Refresh => s
                    .oauth
                    .grant_revocation(record.grant_id)
                    .into_iter()
                    .map(Change::OAuth)
                    .collect(),
                TokenKind::Access => vec![Change::OAuth(OAuthChange::DeleteToken(hash))],
            };
            Ok((changes, ()))
        })
        .await;
    match result {
        Ok(()) => {
            let mut response = StatusCode::OK.into_response();
            no_store(&mut response);
            response
        }
        Err(e) => oauth_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            e.detail,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Member;
    use crate::roles::Role;

    fn request(pairs: &[(&str, &str)]) -> TokenRequest {
        let pairs: serde_json::Map<String, serde_json::Value> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).into()))
            .collect();
        serde_json::from_value(pairs.into()).expect("a token request")
    }

    /// A state with one member's grant and a refresh token `r` of it expiring at `expires_at`.
    fn state_with_refresh(expires_at: DateTime<Utc>) -> (StoreState, Grant) {
        let mut s = StoreState::default();
        let (workspace, user) = (Uuid::now_v7(), Uuid::now_v7());
        s.apply(Change::PutMember(Member {
            workspace_id: workspace,
            user_id: user,
            role: Role::Admin,
            joined_at: Utc::now(),
        }));
        let grant = Grant {
            id: Uuid::now_v7(),
            workspace_id: workspace,
            user_id: user,
            client_id: "sluice_ocl_x".into(),
            client_name: "Agent".into(),
            scopes: Scopes::default_grant(),
            resource: "http://127.0.0.1/mcp/plant".into(),
            created_at: Utc::now(),
            last_used_at: None,
        };
        s.apply(Change::OAuth(OAuthChange::PutGrant(grant.clone())));
        s.apply(Change::OAuth(OAuthChange::PutToken(OAuthToken {
            sha256: sha256_hex("r"),
            kind: TokenKind::Refresh,
            grant_id: grant.id,
            expires_at,
            spent: false,
            issued_at: None,
        })));
        (s, grant)
    }

    fn apply(s: &mut StoreState, changes: Vec<Change>) {
        for change in changes {
            s.apply(change);
        }
    }

    #[test]
    fn an_expired_refresh_token_is_refused_and_forgotten() {
        let (mut s, grant) = state_with_refresh(Utc::now() - chrono::Duration::seconds(1));
        let (changes, answer) = refresh(60, &s, &request(&[("refresh_token", "r")]));
        assert_eq!(answer.map_err(|e| e.0), Err("invalid_grant"));
        apply(&mut s, changes);
        assert!(s.oauth.tokens.is_empty());
        assert!(s.oauth.grants.contains_key(&grant.id), "the grant stays");
    }

    #[test]
    fn a_refresh_rotates_and_a_spent_refresh_token_revokes_the_grant() {
        let (mut s, grant) = state_with_refresh(Utc::now() + chrono::Duration::days(1));
        let (changes, answer) = refresh(60, &s, &request(&[("refresh_token", "r")]));
        let answer = answer.expect("refreshed");
        assert_eq!(answer["expires_in"], 60);
        apply(&mut s, changes);
        assert_eq!(
            s.oauth.tokens.len(),
            3,
            "the spent one, a new access and refresh token"
        );
        let (changes, answer) = refresh(60, &s, &request(&[("refresh_token", "r")]));
        assert_eq!(answer.map_err(|e| e.0), Err("invalid_grant"));
        apply(&mut s, changes);
        assert!(!s.oauth.grants.contains_key(&grant.id));
        assert!(
            s.oauth.tokens.is_empty(),
            "every token of the grant is gone"
        );
    }
}
