//! Workspaces: create, list, get, rename, delete.

use std::collections::HashSet;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::validate::{valid_display_name, valid_slug};
use super::{authorize, require_enabled_in, ApiJson, ApiPath, ApiQuery, Page, PageQuery};
use crate::app::App;
use crate::auth::{require_verified, Caller};
use crate::model::{Member, Purge, TagRules, User, Workspace};
use crate::problem::{ApiError, ApiResult, ProblemType};
use crate::purge;
use crate::roles::{Action, Role};
use crate::store::{Change, State as Data};

/// A workspace as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkspaceView {
    /// UUIDv7.
    pub id: Uuid,
    /// Unique, URL-safe; used in ingest URLs and MQTT usernames.
    pub slug: String,
    pub name: String,
    /// False while its creator's trial is over without a paid plan.
    pub enabled: bool,
    pub created_by: Uuid,
    pub created_at: DateTime<Utc>,
    /// The caller's role in it.
    pub role: Role,
}

impl WorkspaceView {
    pub fn new(ws: &Workspace, role: Role) -> Self {
        WorkspaceView {
            id: ws.id,
            slug: ws.slug.clone(),
            name: ws.name.clone(),
            enabled: ws.enabled,
            created_by: ws.created_by,
            created_at: ws.created_at,
            role,
        }
    }
}

/// A new workspace.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWorkspace {
    /// Display name, free text.
    #[schema(schema_with = super::validate::display_name_schema)]
    pub name: String,
    /// `a-z`, `0-9` and `-`, at most 63 characters, not an id; derived from the name when absent.
    #[schema(
        min_length = 1,
        max_length = 63,
        pattern = r"^[a-z0-9][a-z0-9-]{0,62}$"
    )]
    pub slug: Option<String>,
}

/// New display name.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rename {
    #[schema(schema_with = super::validate::display_name_schema)]
    pub name: String,
}

/// A slug made from a display name: lower case, runs of other characters become `-`.
pub fn slug_from_name(name: &str) -> String {
    let mut slug = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            slug.push(c);
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
    }
    let mut slug: String = slug.trim_matches('-').chars().take(50).collect();
    slug.truncate(slug.trim_end_matches('-').len());
    if slug.is_empty() {
        slug.push_str("workspace");
    }
    slug
}

/// The workspaces the caller belongs to.
#[utoipa::path(get, path = "/api/v1/workspaces", tag = "workspaces", params(PageQuery),
    responses((status = 200, body = Page<WorkspaceView>), (status = 401, body = crate::problem::ProblemBody)))]
pub async fn list_workspaces(
    State(app): State<App>,
    caller: Caller,
    ApiQuery(page): ApiQuery<PageQuery>,
) -> ApiResult<Json<Page<WorkspaceView>>> {
    let items = app.store.read(|s| {
        s.workspaces_of(caller.user.id)
            .map(|(ws, m)| (ws.id.to_string(), WorkspaceView::new(ws, m.role)))
            .collect::<Vec<_>>()
    });
    page.page(&app, items).map(Json)
}

/// Create a workspace; the caller becomes its Admin. Needs a verified e-mail address.
#[utoipa::path(post, path = "/api/v1/workspaces", tag = "workspaces", request_body = NewWorkspace,
    responses((status = 201, body = WorkspaceView), (status = 400, body = crate::problem::ProblemBody),
        (status = 403, body = crate::problem::ProblemBody), (status = 409, body = crate::problem::ProblemBody)))]
pub async fn create_workspace(
    State(app): State<App>,
    caller: Caller,
    ApiJson(form): ApiJson<NewWorkspace>,
) -> ApiResult<(StatusCode, Json<WorkspaceView>)> {
    require_verified(&caller)?;
    let name = valid_display_name(&form.name)?;
    let slug = form.slug.as_deref().map(valid_slug).transpose()?;
    let user = caller.user;
    let max = app.config.workspaces_per_user_max;
    app.write(move |s| {
        let created = s
            .workspaces
            .values()
            .filter(|w| w.created_by == user.id)
            .count();
        ApiError::at_most(created, max, "workspaces created per user")?;
        let slug = match slug {
            Some(slug) if s.slugs.contains_key(&slug) => {
                return Err(ApiError::new(
                    ProblemType::SlugTaken,
                    format!("the slug {slug:?} is taken; choose another"),
                ))
            }
            Some(slug) => slug,
            None => free_slug(s, &slug_from_name(&name)),
        };
        let now = Utc::now();
        let ws = Workspace {
            id: Uuid::now_v7(),
            slug,
            name,
            created_by: user.id,
            created_at: now,
            enabled: user.is_active(now),
            cors_allowed_origins: Vec::new(),
            asyncapi_public: false,
        };
        let view = WorkspaceView::new(&ws, Role::Admin);
        let member = Member {
            workspace_id: ws.id,
            user_id: user.id,
            role: Role::Admin,
            joined_at: now,
        };
        Ok((
            vec![Change::PutWorkspace(ws), Change::PutMember(member)],
            (StatusCode::CREATED, Json(view)),
        ))
    })
    .await
}

/// The workspace every user starts with, made when their address is verified and they
/// belong to none: named after them, with them as Admin.
pub fn first_workspace(s: &Data, user: &User) -> Vec<Change> {
    if s.workspaces_of(user.id).next().is_some() {
        return Vec::new();
    }
    own_workspace(s, user, &mut HashSet::new())
}

/// Fresh workspaces for the verified users among `leaving` whom losing their membership of
/// `workspace` (it is deleted, or they are removed or leave) would leave with none: one of
/// their own each, as at verification ([`first_workspace`]), so that every user keeps one.
pub fn replacements(
    s: &Data,
    workspace: Uuid,
    leaving: impl IntoIterator<Item = Uuid>,
) -> Vec<Change> {
    let mut taken = HashSet::new();
    let mut changes = Vec::new();
    for user_id in leaving {
        let Some(user) = s.users.get(&user_id).filter(|u| u.email_verified) else {
            continue;
        };
        let keeps_one = s.workspaces_of(user_id).any(|(ws, _)| ws.id != workspace);
        if !keeps_one {
            tracing::info!(user = %user.id, "a member left without a workspace gets one of their own");
            changes.extend(own_workspace(s, user, &mut taken));
        }
    }
    changes
}

/// A new workspace of `user`'s, named after them, with them as Admin; its slug is free in `s`
/// and not among `taken` (slugs given in the same change), to which it is added.
fn own_workspace(s: &Data, user: &User, taken: &mut HashSet<String>) -> Vec<Change> {
    let now = Utc::now();
    let base = match slug_from_name(&user.first_name).as_str() {
        "workspace" => slug_from_name(user.email.split('@').next().unwrap_or_default()),
        slug => slug.to_owned(),
    };
    let slug = free_slug_among(s, taken, &base);
    taken.insert(slug.clone());
    let ws = Workspace {
        id: Uuid::now_v7(),
        slug,
        name: format!("{}'s workspace", user.first_name),
        created_by: user.id,
        created_at: now,
        enabled: user.is_active(now),
        cors_allowed_origins: Vec::new(),
        asyncapi_public: false,
    };
    let member = Member {
        workspace_id: ws.id,
        user_id: user.id,
        role: Role::Admin,
        joined_at: now,
    };
    vec![Change::PutWorkspace(ws), Change::PutMember(member)]
}

/// `base`, or `base-2`, `base-3`, ... whichever is free (and does not read as an id).
pub fn free_slug(s: &Data, base: &str) -> String {
    free_slug_among(s, &HashSet::new(), base)
}

/// [`free_slug`], also avoiding the slugs in `taken`.
fn free_slug_among(s: &Data, taken: &HashSet<String>, base: &str) -> String {
    let free = |slug: &str| !s.slugs.contains_key(slug) && !taken.contains(slug);
    if free(base) && Uuid::parse_str(base).is_err() {
        return base.to_owned();
    }
    (2..)
        .map(|n| format!("{base}-{n}"))
        .find(|slug| free(slug))
        .unwrap_or_else(|| Uuid::now_v7().simple().to_string())
}

/// One workspace of the caller's, by id or slug.
#[utoipa::path(get, path = "/api/v1/workspaces/{workspace}", tag = "workspaces",
    params(("workspace" = String, Path, description = "Workspace id or slug")),
    responses((status = 200, body = WorkspaceView), (status = 404, body = crate::problem::ProblemBody)))]
pub async fn get_workspace(
    State(app): State<App>,
    caller: Caller,
    ApiPath(workspace): ApiPath<String>,
) -> ApiResult<Json<WorkspaceView>> {
    app.store.read(|s| {
        let (ws, role) = authorize(s, &caller, &workspace, Action::View)?;
        Ok(Json(WorkspaceView::new(ws, role)))
    })
}

/// Rename a workspace (its display name; the slug stays). Admin only.
#[utoipa::path(patch, path = "/api/v1/workspaces/{workspace}", tag = "workspaces",
    params(("workspace" = String, Path, description = "Workspace id or slug")),
    request_body = Rename,
    responses((status = 200, body = WorkspaceView), (status = 403, body = crate::problem::ProblemBody),
        (status = 404, body = crate::problem::ProblemBody)))]
pub async fn rename_workspace(
    State(app): State<App>,
    caller: Caller,
    ApiPath(workspace): ApiPath<String>,
    ApiJson(form): ApiJson<Rename>,
) -> ApiResult<Json<WorkspaceView>> {
    let name = valid_display_name(&form.name)?;
    app.write(move |s| {
        let (ws, role) = authorize(s, &caller, &workspace, Action::RenameWorkspace)?;
        require_enabled_in(s, ws)?;
        let mut ws = ws.clone();
        ws.name = name;
        let view = WorkspaceView::new(&ws, role);
        Ok((vec![Change::PutWorkspace(ws)], Json(view)))
    })
    .await
}

/// Delete a workspace with its members, invitations, tokens, sources, tag rules, outputs, export
/// endpoints and ingested data. Admin
/// only; refused for the caller's last workspace. Members it leaves without a workspace get a
/// fresh one of their own.
#[utoipa::path(delete, path = "/api/v1/workspaces/{workspace}", tag = "workspaces",
    params(("workspace" = String, Path, description = "Workspace id or slug")),
    responses((status = 204), (status = 403, body = crate::problem::ProblemBody),
        (status = 404, body = crate::problem::ProblemBody), (status = 409, body = crate::problem::ProblemBody)))]
pub async fn delete_workspace(
    State(app): State<App>,
    caller: Caller,
    ApiPath(workspace): ApiPath<String>,
) -> ApiResult<StatusCode> {
    app.write(move |s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::DeleteWorkspace)?;
        if s.workspaces_of(caller.user.id).count() <= 1 {
            return Err(ApiError::new(
                ProblemType::LastWorkspace,
                "you cannot delete your last workspace; create another one first",
            ));
        }
        let mut changes: Vec<Change> = s
            .members_of(ws.id)
            .map(|m| Change::DeleteMember(ws.id, m.user_id))
            .collect();
        changes.extend(replacements(
            s,
            ws.id,
            s.members_of(ws.id).map(|m| m.user_id),
        ));
        changes.extend(
            s.invitations_of(ws.id)
                .map(|i| Change::DeleteInvitation(i.id)),
        );
        changes.extend(s.tokens_of(ws.id).map(|t| Change::DeleteToken(t.id)));
        changes.extend(s.sources_of(ws.id).map(|x| Change::DeleteSource(x.id)));
        changes.extend(s.outputs_of(ws.id).map(|o| Change::DeleteOutput(o.id)));
        changes.extend(
            s.export_endpoints_of(ws.id)
                .map(|e| Change::DeleteExportEndpoint(e.id)),
        );
        for webhook in s.webhooks_of(ws.id) {
            changes.extend(s.webhook_deletion(webhook.id));
        }
        if !s.tag_rules_of(ws.id).is_empty() {
            changes.push(Change::PutTagRules(TagRules {
                workspace_id: ws.id,
                rules: Vec::new(),
            }));
        }
        if s.smtp.contains_key(&ws.id) {
            changes.push(Change::DeleteSmtp(ws.id));
        }
        if s.ingest_credentials.contains_key(&ws.id) {
            changes.push(Change::DeleteIngestCredential(ws.id));
        }
        changes.extend(
            s.deliveries_of(ws.id)
                .map(|d| Change::DeleteDelivery(ws.id, d.id)),
        );
        changes.push(Change::DeleteWorkspace(ws.id));
        changes.push(Change::PutPurge(Purge {
            workspace_id: ws.id,
            due_at: Utc::now(),
            passes_left: purge::PASSES,
        }));
        Ok((changes, StatusCode::NO_CONTENT))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_config::snapshot::is_valid_slug;

    #[test]
    fn slugs_from_names_are_valid() {
        for (name, slug) in [
            ("Production", "production"),
            ("  Fleet 01 / EU  ", "fleet-01-eu"),
            ("Über Wärme", "ber-w-rme"),
            ("!!!", "workspace"),
        ] {
            assert_eq!(slug_from_name(name), slug);
            assert!(is_valid_slug(&slug_from_name(name)));
        }
    }
}
