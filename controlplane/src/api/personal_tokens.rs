//! Personal access tokens: long-lived credentials of a user, for scripts.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::validate::valid_name;
use super::{ApiJson, ApiPath, ApiQuery, Page, PageQuery};
use crate::app::App;
use crate::auth::{self, Caller};
use crate::model::{Credential, CredentialKind};
use crate::problem::{ApiError, ApiResult, ProblemType};
use crate::store::Change;

/// A personal access token, without its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct PersonalTokenView {
    pub id: Uuid,
    pub name: String,
    /// Prefix and last characters of the secret.
    pub hint: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Only in the answer to its creation: store it now, it is never shown again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl From<&Credential> for PersonalTokenView {
    fn from(c: &Credential) -> Self {
        PersonalTokenView {
            id: c.id,
            name: c.name.clone(),
            hint: c.hint.clone(),
            created_at: c.created_at,
            expires_at: c.expires_at,
            secret: None,
        }
    }
}

/// A new personal access token.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPersonalToken {
    #[schema(schema_with = super::validate::person_name_schema)]
    pub name: String,
    /// When it stops working; never when absent.
    pub expires_at: Option<DateTime<Utc>>,
}

/// Personal access tokens tokens of the signed-in user.
#[utoipa::path(get, path = "/api/v1/me/tokens", tag = "users", params(PageQuery),
    responses((status = 200, body = Page<PersonalTokenView>), (status = 401, body = crate::problem::ProblemBody)))]
pub async fn list_personal_tokens(
    State(app): State<App>,
    caller: Caller,
    ApiQuery(page): ApiQuery<PageQuery>,
) -> ApiResult<Json<Page<PersonalTokenView>>> {
    let items = app.store.read(|s| {
        s.credentials
            .values()
            .filter(|c| c.user_id == caller.user.id && c.kind == CredentialKind::PersonalToken)
            .map(|c| (c.id.to_string(), PersonalTokenView::from(c)))
            .collect::<Vec<_>>()
    });
    page.page(&app, items).map(Json)
}

/// Create a personal access token for scripts; the secret is in this answer only.
#[utoipa::path(post, path = "/api/v1/me/tokens", tag = "users", request_body = NewPersonalToken,
    responses((status = 201, body = PersonalTokenView), (status = 400, body = crate::problem::ProblemBody)))]
pub async fn create_personal_token(
    State(app): State<App>,
    caller: Caller,
    ApiJson(form): ApiJson<NewPersonalToken>,
) -> ApiResult<(StatusCode, Json<PersonalTokenView>)> {
    // A token outlives sessions; only the verified owner of the address may mint one.
    auth::require_verified(&caller)?;
    let name = valid_name("name", &form.name)?;
    if form.expires_at.is_some_and(|at| at <= Utc::now()) {
        return Err(ApiError::new(
            ProblemType::InvalidExpiry,
            "expires_at is in the past",
        ));
    }
    let secret = auth::new_secret(auth::PERSONAL_TOKEN_PREFIX);
    let credential = Credential {
        id: Uuid::now_v7(),
        sha256: auth::sha256_hex(&secret),
        kind: CredentialKind::PersonalToken,
        user_id: caller.user.id,
        name,
        hint: crate::model::secret_hint(&secret, auth::PERSONAL_TOKEN_PREFIX),
        created_at: Utc::now(),
        expires_at: form.expires_at,
    };
    let mut view = PersonalTokenView::from(&credential);
    view.secret = Some(secret);
    let max = app.config.personal_tokens_per_user_max;
    app.write(move |s| {
        let held = s
            .credentials
            .values()
            .filter(|c| c.user_id == credential.user_id && c.kind == CredentialKind::PersonalToken)
            .count();
        ApiError::at_most(held, max, "personal access tokens per user")?;
        Ok((vec![Change::PutCredential(credential)], ()))
    })
    .await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// Revoke one of the signed-in user's personal access tokens.
#[utoipa::path(delete, path = "/api/v1/me/tokens/{token_id}", tag = "users",
    params(("token_id" = Uuid, Path, description = "Token id")),
    responses((status = 204), (status = 404, body = crate::problem::ProblemBody)))]
pub async fn revoke_personal_token(
    State(app): State<App>,
    caller: Caller,
    ApiPath(token_id): ApiPath<Uuid>,
) -> ApiResult<StatusCode> {
    let user = caller.user.id;
    app.write(move |s| {
        let c = s
            .credentials
            .values()
            .find(|c| {
                c.id == token_id && c.user_id == user && c.kind == CredentialKind::PersonalToken
            })
            .ok_or_else(|| {
                ApiError::new(
                    ProblemType::UnknownToken,
                    "no such personal access token of yours",
                )
            })?;
        Ok((vec![Change::DeleteCredential(c.sha256.clone())], ()))
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
