//! Members of a workspace: list, change role, remove, leave. A workspace always keeps at least
//! one Admin.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::workspaces::replacements;
use super::{authorize, ApiJson, ApiPath, ApiQuery, Page, PageQuery};
use crate::app::App;
use crate::auth::Caller;
use crate::model::Member;
use crate::problem::{ApiError, ApiResult, ProblemType};
use crate::roles::{Action, Role};
use crate::store::{Change, State as Data};

/// A member as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemberView {
    pub user_id: Uuid,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    pub role: Role,
    pub joined_at: DateTime<Utc>,
}

fn view(s: &Data, m: &Member) -> Option<MemberView> {
    let user = s.users.get(&m.user_id)?;
    Some(MemberView {
        user_id: user.id,
        email: user.email.clone(),
        first_name: user.first_name.clone(),
        last_name: user.last_name.clone(),
        role: m.role,
        joined_at: m.joined_at,
    })
}

/// A new role.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleChange {
    pub role: Role,
}

fn admins(s: &Data, workspace: Uuid) -> usize {
    s.members_of(workspace)
        .filter(|m| m.role == Role::Admin)
        .count()
}

fn last_admin() -> ApiError {
    ApiError::new(
        ProblemType::LastAdmin,
        "a workspace needs at least one Admin: make someone else Admin first",
    )
}

/// The user a path names: a user id, or `me`.
fn member_id(caller: &Caller, user: &str) -> ApiResult<Uuid> {
    if user == "me" {
        return Ok(caller.user.id);
    }
    Uuid::parse_str(user)
        .map_err(|_| ApiError::new(ProblemType::UnknownMember, format!("no member {user:?}")))
}

/// Members of a workspace. Any member.
#[utoipa::path(get, path = "/api/v1/workspaces/{workspace}/members", tag = "workspaces",
    params(("workspace" = String, Path, description = "Workspace id or slug"), PageQuery),
    responses((status = 200, body = Page<MemberView>), (status = 404, body = crate::problem::ProblemBody)))]
pub async fn list_members(
    State(app): State<App>,
    caller: Caller,
    ApiPath(workspace): ApiPath<String>,
    ApiQuery(page): ApiQuery<PageQuery>,
) -> ApiResult<Json<Page<MemberView>>> {
    let items = app.store.read(|s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::View)?;
        Ok::<_, ApiError>(
            s.members_of(ws.id)
                .filter_map(|m| view(s, m).map(|v| (m.user_id.to_string(), v)))
                .collect::<Vec<_>>(),
        )
    })?;
    page.page(&app, items).map(Json)
}

/// Change a member's role. Admin only; the last Admin cannot be demoted.
#[utoipa::path(patch, path = "/api/v1/workspaces/{workspace}/members/{user}", tag = "workspaces",
    params(("workspace" = String, Path, description = "Workspace id or slug"),
        ("user" = String, Path, description = "User id, or `me`")),
    request_body = RoleChange,
    responses((status = 200, body = MemberView), (status = 403, body = crate::problem::ProblemBody),
        (status = 404, body = crate::problem::ProblemBody), (status = 409, body = crate::problem::ProblemBody)))]
pub async fn change_role(
    State(app): State<App>,
    caller: Caller,
    ApiPath((workspace, user)): ApiPath<(String, String)>,
    ApiJson(form): ApiJson<RoleChange>,
) -> ApiResult<Json<MemberView>> {
    let user = member_id(&caller, &user)?;
    app.write(move |s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::ManageMembers)?;
        let member = s
            .members
            .get(&(ws.id, user))
            .ok_or_else(|| ApiError::new(ProblemType::UnknownMember, "no such member"))?;
        if member.role == Role::Admin && form.role != Role::Admin && admins(s, ws.id) <= 1 {
            return Err(last_admin());
        }
        let mut member = member.clone();
        member.role = form.role;
        let v = view(s, &member).ok_or_else(|| ApiError::internal("member without a user"))?;
        Ok((vec![Change::PutMember(member)], Json(v)))
    })
    .await
}

/// Remove a member (Admin), or leave (`me`, any member). The last Admin cannot go. A member
/// left without a workspace gets a fresh one of their own.
#[utoipa::path(delete, path = "/api/v1/workspaces/{workspace}/members/{user}", tag = "workspaces",
    params(("workspace" = String, Path, description = "Workspace id or slug"),
        ("user" = String, Path, description = "User id, or `me` to leave")),
    responses((status = 204), (status = 403, body = crate::problem::ProblemBody),
        (status = 404, body = crate::problem::ProblemBody), (status = 409, body = crate::problem::ProblemBody)))]
pub async fn remove_member(
    State(app): State<App>,
    caller: Caller,
    ApiPath((workspace, user)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    let user = member_id(&caller, &user)?;
    app.write(move |s| {
        let leaving = user == caller.user.id;
        let action = if leaving {
            Action::View
        } else {
            Action::ManageMembers
        };
        let (ws, _) = authorize(s, &caller, &workspace, action)?;
        let member = s
            .members
            .get(&(ws.id, user))
            .ok_or_else(|| ApiError::new(ProblemType::UnknownMember, "no such member"))?;
        if member.role == Role::Admin && admins(s, ws.id) <= 1 {
            return Err(last_admin());
        }
        let mut changes = vec![Change::DeleteMember(ws.id, user)];
        changes.extend(replacements(s, ws.id, [user]));
        Ok((changes, StatusCode::NO_CONTENT))
    })
    .await
}
