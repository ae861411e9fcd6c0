//! A workspace's OAuth grants: which MCP clients act for which members, with which scopes.
//! Admins list them and revoke any; a member may revoke their own. Revoking deletes the
//! grant with its tokens, so its next MCP call is a `401`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{authorize, ApiPath, ApiQuery, Page, PageQuery};
use crate::app::App;
use crate::auth::Caller;
use crate::oauth::records::Grant;
use crate::oauth::scope::Scope;
use crate::problem::{ApiError, ApiResult, ProblemType};
use crate::roles::Action;
use crate::store::Change;

/// An OAuth grant as listed (never a token).
#[derive(Debug, Serialize, ToSchema)]
pub struct OAuthGrantView {
    pub id: Uuid,
    /// The client's id: its registration, or the URL of its metadata document.
    pub client_id: String,
    /// The name the client gave itself (not verified).
    pub client_name: String,
    /// The member the client acts for.
    pub user_id: Uuid,
    pub user_email: String,
    pub scopes: Vec<Scope>,
    /// The MCP URL its tokens are for.
    pub resource: String,
    pub created_at: DateTime<Utc>,
    /// Its last token exchange or MCP call (updated every few minutes at most).
    pub last_used_at: Option<DateTime<Utc>>,
}

fn view(s: &crate::store::State, g: &Grant) -> OAuthGrantView {
    OAuthGrantView {
        id: g.id,
        client_id: g.client_id.clone(),
        client_name: g.client_name.clone(),
        user_id: g.user_id,
        user_email: s
            .users
            .get(&g.user_id)
            .map(|u| u.email.clone())
            .unwrap_or_default(),
        scopes: g.scopes.0.iter().copied().collect(),
        resource: g.resource.clone(),
        created_at: g.created_at,
        last_used_at: g.last_used_at,
    }
}

/// OAuth grants of a workspace: the MCP clients members allowed. Admin.
#[utoipa::path(get, path = "/api/v1/workspaces/{workspace}/oauth-grants", tag = "workspaces",
    params(("workspace" = String, Path, description = "Workspace id or slug"), PageQuery),
    responses((status = 200, body = Page<OAuthGrantView>), (status = 400, body = crate::problem::ProblemBody),
        (status = 403, body = crate::problem::ProblemBody), (status = 404, body = crate::problem::ProblemBody)))]
pub async fn list_oauth_grants(
    State(app): State<App>,
    caller: Caller,
    ApiPath(workspace): ApiPath<String>,
    ApiQuery(page): ApiQuery<PageQuery>,
) -> ApiResult<Json<Page<OAuthGrantView>>> {
    let items = app.store.read(|s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::ManageMembers)?;
        Ok::<_, ApiError>(
            s.oauth
                .grants_of(ws.id)
                .map(|g| (g.id.to_string(), view(s, g)))
                .collect::<Vec<_>>(),
        )
    })?;
    page.page(&app, items).map(Json)
}

/// Revoke an OAuth grant: its access and refresh tokens stop working at once. Admin, or the
/// member the grant acts for.
#[utoipa::path(delete, path = "/api/v1/workspaces/{workspace}/oauth-grants/{grant_id}", tag = "workspaces",
    params(("workspace" = String, Path, description = "Workspace id or slug"),
        ("grant_id" = Uuid, Path, description = "Grant id")),
    responses((status = 204), (status = 400, body = crate::problem::ProblemBody),
        (status = 403, body = crate::problem::ProblemBody), (status = 404, body = crate::problem::ProblemBody)))]
pub async fn revoke_oauth_grant(
    State(app): State<App>,
    caller: Caller,
    ApiPath((workspace, grant_id)): ApiPath<(String, Uuid)>,
) -> ApiResult<StatusCode> {
    app.write(move |s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::View)?;
        let grant = s
            .oauth
            .grants
            .get(&grant_id)
            .filter(|g| g.workspace_id == ws.id)
            .ok_or_else(|| {
                ApiError::new(
                    ProblemType::UnknownGrant,
                    "no such OAuth grant in this workspace",
                )
            })?;
        if grant.user_id != caller.user.id {
            authorize(s, &caller, &workspace, Action::ManageMembers)?;
        }
        let changes = s
            .oauth
            .grant_revocation(grant_id)
            .into_iter()
            .map(Change::OAuth)
            .collect();
        Ok((changes, StatusCode::NO_CONTENT))
    })
    .await
}
