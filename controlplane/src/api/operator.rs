//! Operator endpoints: every user, their plan and their trial.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::users::UserView;
use super::{ApiJson, ApiPath, ApiQuery, Page, PageQuery};
use crate::app::App;
use crate::auth::{require_operator, Caller};
use crate::model::Plan;
use crate::problem::{ApiError, ApiResult, ProblemType};
use crate::store::Change;
use crate::trial;

/// A user's new plan.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanChange {
    pub plan: Plan,
}

/// A user's new trial end (may be in the past, to end a trial now).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrialChange {
    pub trial_ends_at: DateTime<Utc>,
}

/// Every user. Operators only.
#[utoipa::path(get, path = "/api/v1/operator/users", tag = "operator", params(PageQuery),
    responses((status = 200, body = Page<UserView>), (status = 403, body = crate::problem::ProblemBody)))]
pub async fn list_users(
    State(app): State<App>,
    caller: Caller,
    ApiQuery(page): ApiQuery<PageQuery>,
) -> ApiResult<Json<Page<UserView>>> {
    require_operator(&caller)?;
    let items = app.store.read(|s| {
        s.users
            .values()
            .map(|u| (u.id.to_string(), UserView::from(u)))
            .collect::<Vec<_>>()
    });
    page.page(&app, items).map(Json)
}

/// Applies `edit` to a user and the plan rule to the workspaces they created.
async fn change_user(
    app: &App,
    user: Uuid,
    edit: impl FnOnce(&mut crate::model::User) + Send + 'static,
) -> ApiResult<Json<UserView>> {
    app.write(move |s| {
        let mut updated = s
            .users
            .get(&user)
            .cloned()
            .ok_or_else(|| ApiError::new(ProblemType::UnknownUser, "no such user"))?;
        edit(&mut updated);
        let view = UserView::from(&updated);
        let mut changes = trial::reconcile(s, Utc::now(), Some(&updated));
        changes.push(Change::PutUser(updated));
        Ok((changes, Json(view)))
    })
    .await
}

/// Set a user's plan; a paid plan re-enables the workspaces they created. Operators only.
#[utoipa::path(put, path = "/api/v1/operator/users/{user}/plan", tag = "operator",
    params(("user" = Uuid, Path, description = "User id")), request_body = PlanChange,
    responses((status = 200, body = UserView), (status = 403, body = crate::problem::ProblemBody),
        (status = 404, body = crate::problem::ProblemBody)))]
pub async fn set_plan(
    State(app): State<App>,
    caller: Caller,
    ApiPath(user): ApiPath<Uuid>,
    ApiJson(form): ApiJson<PlanChange>,
) -> ApiResult<Json<UserView>> {
    require_operator(&caller)?;
    change_user(&app, user, move |u| u.plan = form.plan).await
}

/// Move a user's trial end, e.g. prolong an ended trial; the workspaces they created follow.
/// Operators only.
#[utoipa::path(put, path = "/api/v1/operator/users/{user}/trial", tag = "operator",
    params(("user" = Uuid, Path, description = "User id")), request_body = TrialChange,
    responses((status = 200, body = UserView), (status = 403, body = crate::problem::ProblemBody),
        (status = 404, body = crate::problem::ProblemBody)))]
pub async fn set_trial(
    State(app): State<App>,
    caller: Caller,
    ApiPath(user): ApiPath<Uuid>,
    ApiJson(form): ApiJson<TrialChange>,
) -> ApiResult<Json<UserView>> {
    require_operator(&caller)?;
    change_user(&app, user, move |u| u.trial_ends_at = form.trial_ends_at).await
}

/// A consistent copy of the control plane's store, taken while it runs: one read transaction
/// copied into a new redb file (writers go on meanwhile). Operators only. `sluice controlplane
/// backup` saves it; `sluice controlplane restore` puts it back.
#[utoipa::path(get, path = "/api/v1/operator/backup", tag = "operator",
    responses((status = 200, description = "the store as a redb file; `X-Sluice-Config-Version` gives the configuration version it holds", content_type = "application/octet-stream"),
        (status = 403, body = crate::problem::ProblemBody)))]
pub async fn backup(State(app): State<App>, caller: Caller) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    require_operator(&caller)?;
    let store = app.store.clone();
    // Beside the store: the same file system, writable where the root file system is not.
    let path = app
        .config
        .data_dir
        .join(format!("backup-{}.redb.partial", Uuid::now_v7().simple()));
    let (version, bytes) = tokio::task::spawn_blocking(move || {
        let copied = store
            .backup_to(&path)
            .map_err(|e| e.to_string())
            .and_then(|version| {
                std::fs::read(&path)
                    .map(|bytes| (version, bytes))
                    .map_err(|e| format!("reading {}: {e}", path.display()))
            });
        let _ = std::fs::remove_file(&path);
        copied
    })
    .await
    .map_err(|e| ApiError::internal(format!("the backup did not complete: {e}")))?
    .map_err(|e| ApiError::internal(format!("the backup failed: {e}")))?;
    tracing::info!(version, bytes = bytes.len(), "store backed up");
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/octet-stream".to_owned(),
            ),
            (
                axum::http::HeaderName::from_static("x-sluice-config-version"),
                version.to_string(),
            ),
        ],
        bytes,
    )
        .into_response())
}
