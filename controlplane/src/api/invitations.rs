//! Invitations: an Admin invites an e-mail address with a role; the mail carries a link that
//! works once, for 7 days, and only for a signed-in user with that address.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::validate::valid_email;
use super::workspaces::WorkspaceView;
use super::{authorize, require_enabled_in, ApiJson, ApiPath, ApiQuery, Page, PageQuery};
use crate::app::App;
use crate::auth::{self, require_verified, Caller};
use crate::mail::Mail;
use crate::model::{Invitation, MailPurpose, Member, Workspace};
use crate::problem::{ApiError, ApiResult, ProblemType};
use crate::roles::{Action, Role};
use crate::store::{Change, State as Data};

/// A pending invitation as the API shows it (never with its link).
#[derive(Debug, Serialize, ToSchema)]
pub struct InvitationView {
    pub id: Uuid,
    pub email: String,
    pub role: Role,
    pub invited_by: Uuid,
    /// When it was sent.
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl From<&Invitation> for InvitationView {
    fn from(i: &Invitation) -> Self {
        InvitationView {
            id: i.id,
            email: i.email.clone(),
            role: i.role,
            invited_by: i.invited_by,
            created_at: i.created_at,
            expires_at: i.expires_at,
        }
    }
}

/// Whom to invite, with which role.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewInvitation {
    #[schema(format = Email, max_length = 254)]
    pub email: String,
    pub role: Role,
}

/// The token from an invitation link.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Acceptance {
    pub token: String,
}

/// Pending invitations of a workspace. Any member.
#[utoipa::path(get, path = "/api/v1/workspaces/{workspace}/invitations", tag = "invitations",
    params(("workspace" = String, Path, description = "Workspace id or slug"), PageQuery),
    responses((status = 200, body = Page<InvitationView>), (status = 404, body = crate::problem::ProblemBody)))]
pub async fn list_invitations(
    State(app): State<App>,
    caller: Caller,
    ApiPath(workspace): ApiPath<String>,
    ApiQuery(page): ApiQuery<PageQuery>,
) -> ApiResult<Json<Page<InvitationView>>> {
    let now = Utc::now();
    let items = app.store.read(|s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::View)?;
        Ok::<_, ApiError>(
            s.invitations_of(ws.id)
                .filter(|i| i.expires_at > now)
                .map(|i| (i.id.to_string(), InvitationView::from(i)))
                .collect::<Vec<_>>(),
        )
    })?;
    page.page(&app, items).map(Json)
}

/// Invite an e-mail address with a role; replaces a pending invitation of the same address.
/// Admin only; rate limited per workspace and per inviter.
#[utoipa::path(post, path = "/api/v1/workspaces/{workspace}/invitations", tag = "invitations",
    params(("workspace" = String, Path, description = "Workspace id or slug")),
    request_body = NewInvitation,
    responses((status = 201, body = InvitationView), (status = 403, body = crate::problem::ProblemBody),
        (status = 404, body = crate::problem::ProblemBody), (status = 409, body = crate::problem::ProblemBody),
        (status = 429, body = crate::problem::ProblemBody)))]
pub async fn invite(
    State(app): State<App>,
    caller: Caller,
    ApiPath(workspace): ApiPath<String>,
    ApiJson(form): ApiJson<NewInvitation>,
) -> ApiResult<(StatusCode, Json<InvitationView>)> {
    let email = valid_email(&form.email)?;
    // Checked here for a fast refusal, and again in the write, where it counts.
    let ws_id = app
        .store
        .read(|s| check_invitation(s, &caller, &workspace, &email).map(|ws| ws.id))?;
    let limits = &app.limits;
    let workspace_key = ws_id.to_string();
    let inviter_key = caller.user.id.to_string();
    let per_workspace = (
        &limits.invitations_per_workspace,
        workspace_key.as_str(),
        "invitations from this workspace today",
    );
    let per_inviter = (
        &limits.invitations_per_inviter,
        inviter_key.as_str(),
        "invitations from you today",
    );
    // Both limits are looked at before either counts, so a refusal costs no quota.
    for (limit, key, what) in [per_workspace, per_inviter] {
        limit
            .check_only(key)
            .map_err(|wait| ApiError::rate_limited(what, wait))?;
    }
    for (limit, key, what) in [per_workspace, per_inviter] {
        limit
            .hit(key)
            .map_err(|wait| ApiError::rate_limited(what, wait))?;
    }
    let slot = app.mailer.reserve()?;
    let token = Uuid::new_v4().to_string();
    let now = Utc::now();
    let ttl = Duration::seconds(i64::try_from(app.config.invitation_ttl_secs).unwrap_or(i64::MAX));
    let invitation = Invitation {
        id: Uuid::now_v7(),
        workspace_id: ws_id,
        email: email.clone(),
        role: form.role,
        invited_by: caller.user.id,
        created_at: now,
        expires_at: now + ttl,
        token_sha256: auth::sha256_hex(&token),
    };
    let view = InvitationView::from(&invitation);
    let inviter = caller.user.clone();
    let ws_name = app
        .write(move |s| {
            let ws = check_invitation(s, &caller, &workspace, &invitation.email)?;
            let name = ws.name.clone();
            let mut changes: Vec<Change> = s
                .invitations_of(ws.id)
                .filter(|i| i.email.eq_ignore_ascii_case(&invitation.email))
                .map(|i| Change::DeleteInvitation(i.id))
                .collect();
            changes.push(Change::PutInvitation(invitation));
            Ok((changes, name))
        })
        .await?;
    slot.send(Mail {
        purpose: MailPurpose::Invitation,
        workspace: Some(ws_id),
        to: email,
        subject: format!("You are invited to the Sluice workspace {ws_name}"),
        body: format!(
            "{} {} <{}> invited you to the Sluice workspace \"{ws_name}\" as {:?}.\n\nAccept by {}, signed in with this e-mail address:\n\n{}/invitations/accept?token={token}\n",
            inviter.first_name,
            inviter.last_name,
            inviter.email,
            form.role,
            view.expires_at.format("%Y-%m-%d %H:%M UTC"),
            app.config.public_url(),
        ),
    });
    Ok((StatusCode::CREATED, Json(view)))
}

/// The workspace `caller` may invite `email` into: an Admin's, enabled, `email` not a member.
fn check_invitation<'s>(
    s: &'s Data,
    caller: &Caller,
    workspace: &str,
    email: &str,
) -> ApiResult<&'s Workspace> {
    let (ws, _) = authorize(s, caller, workspace, Action::ManageMembers)?;
    require_enabled_in(s, ws)?;
    if let Some(user) = s.user_by_email(email) {
        if s.members.contains_key(&(ws.id, user.id)) {
            return Err(ApiError::new(
                ProblemType::AlreadyMember,
                format!("{email:?} is already a member of {:?}", ws.slug),
            ));
        }
    }
    Ok(ws)
}

/// Cancel a pending invitation; its link stops working at once. Admin only.
#[utoipa::path(delete, path = "/api/v1/workspaces/{workspace}/invitations/{invitation_id}", tag = "invitations",
    params(("workspace" = String, Path, description = "Workspace id or slug"),
        ("invitation_id" = Uuid, Path, description = "Invitation id")),
    responses((status = 204), (status = 403, body = crate::problem::ProblemBody), (status = 404, body = crate::problem::ProblemBody)))]
pub async fn cancel_invitation(
    State(app): State<App>,
    caller: Caller,
    ApiPath((workspace, invitation_id)): ApiPath<(String, Uuid)>,
) -> ApiResult<StatusCode> {
    app.write(move |s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::ManageMembers)?;
        s.invitations
            .get(&invitation_id)
            .filter(|i| i.workspace_id == ws.id)
            .ok_or_else(|| ApiError::new(ProblemType::UnknownInvitation, "no such invitation"))?;
        Ok((
            vec![Change::DeleteInvitation(invitation_id)],
            StatusCode::NO_CONTENT,
        ))
    })
    .await
}

/// Accept an invitation with the token from its link, as the signed-in user.
#[utoipa::path(post, path = "/api/v1/invitations/acceptance", tag = "invitations",
    request_body = Acceptance,
    responses((status = 200, body = WorkspaceView), (status = 403, body = crate::problem::ProblemBody),
        (status = 404, body = crate::problem::ProblemBody), (status = 410, body = crate::problem::ProblemBody)))]
pub async fn accept_invitation(
    State(app): State<App>,
    caller: Caller,
    ApiJson(form): ApiJson<Acceptance>,
) -> ApiResult<Json<WorkspaceView>> {
    accept(&app, caller, &form.token).await.map(Json)
}

/// Makes `caller` a member through the invitation whose link carries `token`.
pub async fn accept(app: &App, caller: Caller, token: &str) -> ApiResult<WorkspaceView> {
    require_verified(&caller)?;
    let hash = auth::sha256_hex(token.trim());
    app.write(move |s| {
        let invitation = s
            .invitations
            .values()
            .find(|i| i.token_sha256 == hash)
            .ok_or_else(|| {
                ApiError::new(
                    ProblemType::UnknownInvitation,
                    "this invitation link is not valid: it was cancelled, already used or replaced by a newer one",
                )
            })?;
        // An expired invitation stays until the housekeeping sweep removes it, so that its
        // link keeps saying "expired" rather than "unknown" meanwhile.
        if invitation.expires_at <= Utc::now() {
            return Err(ApiError::new(
                ProblemType::InvitationExpired,
                "this invitation has expired; ask an Admin of the workspace to invite you again",
            ));
        }
        if !invitation.email.eq_ignore_ascii_case(&caller.user.email) {
            return Err(ApiError::new(
                ProblemType::InvitationEmailMismatch,
                "this invitation was sent to another e-mail address; sign in with the address the invitation was sent to",
            ));
        }
        let ws = s
            .workspaces
            .get(&invitation.workspace_id)
            .ok_or_else(|| ApiError::new(ProblemType::UnknownInvitation, "the workspace no longer exists"))?;
        if s.members.contains_key(&(ws.id, caller.user.id)) {
            return Err(ApiError::new(
                ProblemType::AlreadyMember,
                format!("you are already a member of {:?}", ws.slug),
            ));
        }
        let member = Member {
            workspace_id: ws.id,
            user_id: caller.user.id,
            role: invitation.role,
            joined_at: Utc::now(),
        };
        Ok((
            vec![
                Change::PutMember(member),
                Change::DeleteInvitation(invitation.id),
            ],
            Ok(WorkspaceView::new(ws, invitation.role)),
        ))
    })
    .await?
}
