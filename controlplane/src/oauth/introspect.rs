//! Token introspection (RFC 7662), `POST /oauth/introspect` and `sluice_call` on the MCP
//! endpoint: whether an OAuth access or refresh token works, with its scopes, client,
//! audience, expiry and member.
//!
//! Who may ask: a member who is an Admin of the token's workspace, or the member who granted
//! it, authenticated with a personal access token or session token as `Authorization: Bearer`
//! (over MCP also with an OAuth access token of the same workspace with `workspace:read`). Any
//! one else, like an unknown, expired, revoked or spent token, gets `{"active": false}`, so
//! that asking tells nothing about tokens one may not see (RFC 7662 §2.2). The endpoint takes
//! no session cookie: a page elsewhere cannot make a browser ask.

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use super::records::TokenKind;
use super::{issuer, no_store, oauth_error};
use crate::app::App;
use crate::auth::{sha256_hex, Caller};
use crate::roles::{Action, Role};
use crate::store::State as Records;

/// The form of an introspection request (RFC 7662 §2.1); `token_type_hint` is taken and
/// ignored, since both kinds are found by the one hash.
#[derive(Debug, Deserialize)]
pub struct IntrospectRequest {
    token: Option<String>,
    #[allow(dead_code)]
    token_type_hint: Option<String>,
}

/// What the introspection of `token` tells `caller` at `now`.
pub fn answer(
    s: &Records,
    issuer: &str,
    caller: &Caller,
    token: &str,
    now: DateTime<Utc>,
) -> Value {
    let inactive = json!({"active": false});
    let Some(record) = s.oauth.tokens.get(&sha256_hex(token)) else {
        return inactive;
    };
    if record.expires_at <= now || record.spent {
        return inactive;
    }
    let Some(grant) = s.oauth.grants.get(&record.grant_id) else {
        return inactive;
    };
    let Some(workspace) = s.workspaces.get(&grant.workspace_id) else {
        return inactive;
    };
    // The token works only while its member is one (bearer.rs).
    let Some(user) = s
        .members
        .contains_key(&(workspace.id, grant.user_id))
        .then(|| s.users.get(&grant.user_id))
        .flatten()
    else {
        return inactive;
    };
    let may_see = s
        .members
        .get(&(workspace.id, caller.user.id))
        .is_some_and(|m| m.role == Role::Admin || grant.user_id == caller.user.id)
        && caller
            .delegation
            .as_ref()
            .is_none_or(|d| d.workspace_id == workspace.id && d.scopes.allow(Action::View));
    if !may_see {
        return inactive;
    }
    let mut answer = json!({
        "active": true,
        "scope": grant.scopes.to_string(),
        "client_id": grant.client_id,
        "username": user.email,
        "token_type": match record.kind {
            TokenKind::Access => "Bearer",
            TokenKind::Refresh => "refresh_token",
        },
        "exp": record.expires_at.timestamp(),
        "sub": grant.user_id.to_string(),
        "aud": grant.resource,
        "iss": issuer,
        "workspace": workspace.slug,
        "grant_id": grant.id.to_string(),
    });
    if let (Some(at), Some(object)) = (record.issued_at, answer.as_object_mut()) {
        object.insert("iat".into(), at.timestamp().into());
    }
    answer
}

/// The Bearer token of `Authorization`, only: not the session cookie.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?
        .trim();
    (!token.is_empty()).then_some(token)
}

/// `POST /oauth/introspect` (form `token`), authenticated with a personal access token or a
/// session token.
pub async fn introspect(
    State(app): State<App>,
    headers: HeaderMap,
    form: Result<Form<IntrospectRequest>, FormRejection>,
) -> Response {
    let Some(caller) = bearer(&headers).and_then(|secret| Caller::from_secret(&app, secret)) else {
        let mut response = oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "introspection takes Authorization: Bearer <personal access token or session token> of an Admin of the token's workspace or of the member who granted it",
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    };
    let Ok(Form(request)) = form else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "send token as a form (application/x-www-form-urlencoded)",
        );
    };
    let Some(token) = request.token.filter(|t| !t.is_empty()) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "token is required",
        );
    };
    let issuer = issuer(&app);
    let answer = app
        .store
        .read(|s| self::answer(s, &issuer, &caller, &token, Utc::now()));
    let mut response = Json(answer).into_response();
    no_store(&mut response);
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Credential, CredentialKind, Member, Plan, User, Workspace};
    use crate::oauth::records::{Grant, OAuthChange, OAuthToken};
    use crate::oauth::scope::Scopes;
    use crate::oauth::Delegation;
    use crate::store::Change;
    use uuid::Uuid;

    fn user(email: &str) -> User {
        User {
            id: Uuid::now_v7(),
            email: email.into(),
            first_name: String::new(),
            last_name: String::new(),
            password_hash: String::new(),
            email_verified: true,
            created_at: Utc::now(),
            trial_ends_at: Utc::now(),
            plan: Plan::Paid,
            operator: false,
            code: None,
        }
    }

    fn caller(user: &User, delegation: Option<Delegation>) -> Caller {
        Caller {
            user: user.clone(),
            credential: Credential {
                id: Uuid::now_v7(),
                sha256: String::new(),
                kind: CredentialKind::PersonalToken,
                user_id: user.id,
                name: String::new(),
                hint: String::new(),
                created_at: Utc::now(),
                expires_at: None,
            },
            delegation,
        }
    }

    #[test]
    fn admins_and_the_granting_member_see_a_live_token_and_nobody_sees_a_spent_or_foreign_one() {
        let mut s = Records::default();
        let ws = Workspace {
            id: Uuid::now_v7(),
            slug: "plant".into(),
            name: "Plant".into(),
            created_by: Uuid::now_v7(),
            created_at: Utc::now(),
            enabled: true,
            cors_allowed_origins: vec![],
            asyncapi_public: false,
        };
        let (admin, editor, viewer) = (user("a@x"), user("e@x"), user("v@x"));
        s.apply(Change::PutWorkspace(ws.clone()));
        for (u, role) in [
            (&admin, Role::Admin),
            (&editor, Role::Editor),
            (&viewer, Role::Viewer),
        ] {
            s.apply(Change::PutUser(u.clone()));
            s.apply(Change::PutMember(Member {
                workspace_id: ws.id,
                user_id: u.id,
                role,
                joined_at: Utc::now(),
            }));
        }
        let grant = Grant {
            id: Uuid::now_v7(),
            workspace_id: ws.id,
            user_id: editor.id,
            client_id: "sluice_ocl_x".into(),
            client_name: "Agent".into(),
            scopes: Scopes::parse("ingest").expect("scopes"),
            resource: "http://127.0.0.1/mcp/plant".into(),
            created_at: Utc::now(),
            last_used_at: None,
        };
        s.apply(Change::OAuth(OAuthChange::PutGrant(grant.clone())));
        let now = Utc::now();
        for (secret, kind, spent) in [
            ("a", TokenKind::Access, false),
            ("r", TokenKind::Refresh, false),
            ("spent", TokenKind::Refresh, true),
        ] {
            s.apply(Change::OAuth(OAuthChange::PutToken(OAuthToken {
                sha256: sha256_hex(secret),
                kind,
                grant_id: grant.id,
                expires_at: now + chrono::Duration::hours(1),
                spent,
                issued_at: Some(now),
            })));
        }
        let ask = |who: &Caller, token: &str| answer(&s, "http://127.0.0.1", who, token, now);
        let seen = ask(&caller(&admin, None), "a");
        assert_eq!(seen["active"], true, "{seen}");
        assert_eq!(seen["scope"], "ingest");
        assert_eq!(seen["token_type"], "Bearer");
        assert_eq!(seen["iat"], now.timestamp());
        assert_eq!(seen["username"], "e@x");
        assert_eq!(
            ask(&caller(&editor, None), "r")["token_type"],
            "refresh_token"
        );
        let inactive = json!({"active": false});
        assert_eq!(ask(&caller(&viewer, None), "a"), inactive, "not an Admin");
        assert_eq!(ask(&caller(&admin, None), "spent"), inactive);
        assert_eq!(ask(&caller(&admin, None), "unknown"), inactive);
        let later = answer(
            &s,
            "http://127.0.0.1",
            &caller(&admin, None),
            "a",
            now + chrono::Duration::hours(2),
        );
        assert_eq!(later, inactive, "expired");
        // An OAuth caller: only within its own workspace, with workspace:read.
        let read = Scopes::parse("workspace:read").expect("scopes");
        let elsewhere = Delegation {
            workspace_id: Uuid::now_v7(),
            scopes: read.clone(),
        };
        assert_eq!(ask(&caller(&admin, Some(elsewhere)), "a"), inactive);
        let no_read = Delegation {
            workspace_id: ws.id,
            scopes: Scopes::parse("ingest").expect("scopes"),
        };
        assert_eq!(ask(&caller(&admin, Some(no_read)), "a"), inactive);
        let here = Delegation {
            workspace_id: ws.id,
            scopes: read,
        };
        assert_eq!(ask(&caller(&admin, Some(here)), "a")["active"], true);
        // The member gone, the token works no more.
        s.apply(Change::DeleteMember(ws.id, editor.id));
        let gone = answer(&s, "http://127.0.0.1", &caller(&admin, None), "a", now);
        assert_eq!(gone, inactive);
    }
}
