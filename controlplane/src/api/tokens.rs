//! Workspace access tokens for devices and readers. The secret is shown once, at creation; the
//! control plane keeps its SHA-256 only, and that hash is what data-plane nodes receive.
//!
//! A token is single-purpose: an `ingest` token sends events (optionally only to some sources,
//! as one device), a `read` token reads export endpoints (optionally only some). A token that
//! could do both would let a leaked dashboard credential write, or a device credential read
//! the whole workspace's exports.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sluice_config::snapshot::{is_valid_device_id, Scope, DEVICE_ID_LEN_MAX};
use sluice_config::token;
use utoipa::ToSchema;
use uuid::Uuid;

use super::validate::valid_display_name;
use super::{authorize, require_enabled_in, ApiJson, ApiPath, ApiQuery, Page, PageQuery};
use crate::app::App;
use crate::auth::Caller;
use crate::model::{secret_hint, AccessToken};
use crate::problem::{ApiError, ApiResult, ProblemType};
use crate::roles::Action;
use crate::store::Change;

/// What a token may do; a token has one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TokenScope {
    /// Send events (HTTP and MQTT).
    Ingest,
    /// Read export endpoints (`/v1/stream/{workspace}/{endpoint}`).
    Read,
}

impl From<TokenScope> for Scope {
    fn from(s: TokenScope) -> Self {
        match s {
            TokenScope::Ingest => Scope::Ingest,
            TokenScope::Read => Scope::Read,
        }
    }
}

impl From<Scope> for TokenScope {
    fn from(s: Scope) -> Self {
        match s {
            Scope::Ingest => TokenScope::Ingest,
            Scope::Read => TokenScope::Read,
        }
    }
}

/// An access token as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccessTokenView {
    pub id: Uuid,
    pub name: String,
    /// Prefix and last characters of the secret, e.g. `sluice_…a1B2`.
    pub hint: String,
    pub scopes: Vec<TokenScope>,
    /// Source slugs it may write; all when absent.
    pub sources: Option<Vec<String>>,
    /// The only device id it may send as.
    pub device_id: Option<String>,
    /// Export endpoint slugs a `read` token may read; all of the workspace's when absent.
    pub endpoints: Option<Vec<String>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_by: Uuid,
    pub created_at: DateTime<Utc>,
    /// Only in the answer to its creation: store it now, it is never shown again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl From<&AccessToken> for AccessTokenView {
    fn from(t: &AccessToken) -> Self {
        AccessTokenView {
            id: t.id,
            name: t.name.clone(),
            hint: t.hint.clone(),
            scopes: t.scopes.iter().copied().map(TokenScope::from).collect(),
            sources: t.sources.clone(),
            device_id: t.device_id.clone(),
            endpoints: t.endpoints.clone(),
            expires_at: t.expires_at,
            created_by: t.created_by,
            created_at: t.created_at,
            secret: None,
        }
    }
}

/// A new access token.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAccessToken {
    #[schema(schema_with = super::validate::display_name_schema)]
    pub name: String,
    /// `["ingest"]` or `["read"]`: a token either sends events or reads export endpoints,
    /// never both.
    #[schema(min_items = 1)]
    pub scopes: Vec<TokenScope>,
    /// Ingest tokens only: limit it to these sources (slugs of existing sources); all when
    /// absent.
    pub sources: Option<Vec<String>>,
    /// Ingest tokens only: bind it to one device id: 1 to 128 visible ASCII characters.
    #[schema(min_length = 1, max_length = 128, pattern = r"^[!-~]{1,128}$")]
    pub device_id: Option<String>,
    /// Read tokens only: limit it to these export endpoints (slugs of existing endpoints, at
    /// least one); every endpoint of the workspace, present and future, when absent.
    #[schema(schema_with = endpoints_schema)]
    pub endpoints: Option<Vec<String>>,
    /// When it stops working; never when absent.
    pub expires_at: Option<DateTime<Utc>>,
}

/// `endpoints` of a new token in the OpenAPI document: endpoint slugs, at least one.
fn endpoints_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, SchemaType, Type};
    let nullable_array: SchemaType = [Type::Array, Type::Null].into_iter().collect();
    ArrayBuilder::new()
        .schema_type(nullable_array)
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(r"^[a-z0-9][a-z0-9-]{0,62}$")),
        )
        .min_items(Some(1))
        .description(Some(
            "Read tokens only: limit it to these export endpoints (slugs of existing \
             endpoints, at least one); every endpoint of the workspace when absent",
        ))
        .build()
}

/// What a token may do, from what the form asks: one scope, and only the limits of that scope.
fn valid_purpose(form: &NewAccessToken) -> ApiResult<Scope> {
    let refuse = |detail: &str| Err(ApiError::new(ProblemType::InvalidScopes, detail));
    let ingest = form.scopes.contains(&TokenScope::Ingest);
    let read = form.scopes.contains(&TokenScope::Read);
    match (ingest, read) {
        (false, false) => refuse("give the token one scope: ingest or read"),
        (true, true) => refuse(
            "a token is single-purpose: an ingest token cannot read, and a read token cannot \
             ingest. Make one token of each",
        ),
        (true, false) if form.endpoints.is_some() => refuse(
            "endpoints limit what a read token may read; an ingest token takes sources and \
             device_id instead",
        ),
        (false, true) if form.sources.is_some() || form.device_id.is_some() => refuse(
            "sources and device_id limit what an ingest token may send; a read token takes \
             endpoints instead",
        ),
        (true, false) => Ok(Scope::Ingest),
        (false, true) => Ok(Scope::Read),
    }
}

/// Access tokens of a workspace (never their secrets). Any member.
#[utoipa::path(get, path = "/api/v1/workspaces/{workspace}/tokens", tag = "tokens",
    params(("workspace" = String, Path, description = "Workspace id or slug"), PageQuery),
    responses((status = 200, body = Page<AccessTokenView>), (status = 404, body = crate::problem::ProblemBody)))]
pub async fn list_tokens(
    State(app): State<App>,
    caller: Caller,
    ApiPath(workspace): ApiPath<String>,
    ApiQuery(page): ApiQuery<PageQuery>,
) -> ApiResult<Json<Page<AccessTokenView>>> {
    let items = app.store.read(|s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::View)?;
        Ok::<_, ApiError>(
            s.tokens_of(ws.id)
                .map(|t| (t.id.to_string(), AccessTokenView::from(t)))
                .collect::<Vec<_>>(),
        )
    })?;
    page.page(&app, items).map(Json)
}

/// Create an access token; the secret is in this answer only. Admin or Editor.
#[utoipa::path(post, path = "/api/v1/workspaces/{workspace}/tokens", tag = "tokens",
    params(("workspace" = String, Path, description = "Workspace id or slug")),
    request_body = NewAccessToken,
    responses((status = 201, body = AccessTokenView), (status = 400, body = crate::problem::ProblemBody),
        (status = 403, body = crate::problem::ProblemBody), (status = 404, body = crate::problem::ProblemBody)))]
pub async fn create_token(
    State(app): State<App>,
    caller: Caller,
    ApiPath(workspace): ApiPath<String>,
    ApiJson(form): ApiJson<NewAccessToken>,
) -> ApiResult<(StatusCode, Json<AccessTokenView>)> {
    let name = valid_display_name(&form.name)?;
    let scope = valid_purpose(&form)?;
    if form.endpoints.as_ref().is_some_and(Vec::is_empty) {
        return Err(ApiError::new(
            ProblemType::InvalidBody,
            "endpoints lists at least one export endpoint; leave it out for every endpoint of \
             the workspace",
        ));
    }
    if let Some(device) = &form.device_id {
        if !is_valid_device_id(device) {
            return Err(ApiError::new(
                ProblemType::InvalidDeviceId,
                format!("device_id must be 1 to {DEVICE_ID_LEN_MAX} visible ASCII characters"),
            ));
        }
    }
    if form.expires_at.is_some_and(|at| at <= Utc::now()) {
        return Err(ApiError::new(
            ProblemType::InvalidExpiry,
            "expires_at is in the past",
        ));
    }
    let secret = token::generate();
    let scopes = vec![scope];
    let endpoints = form.endpoints.map(|list| {
        let mut seen = std::collections::HashSet::new();
        list.into_iter()
            .filter(|slug| seen.insert(slug.clone()))
            .collect::<Vec<_>>()
    });
    let user = caller.user.id;
    let max = app.config.tokens_per_workspace_max;
    let created = app
        .write(move |s| {
            let (ws, _) = authorize(s, &caller, &workspace, Action::ManageTokens)?;
            require_enabled_in(s, ws)?;
            ApiError::at_most(
                s.tokens_of(ws.id).count(),
                max,
                "access tokens per workspace",
            )?;
            if let Some(sources) = &form.sources {
                for slug in sources {
                    if !s.sources_of(ws.id).any(|x| &x.slug == slug) {
                        return Err(ApiError::new(
                            ProblemType::UnknownNamedSource,
                            format!("no source {slug:?} in workspace {:?}", ws.slug),
                        ));
                    }
                }
            }
            for slug in endpoints.iter().flatten() {
                if !s.export_endpoints_of(ws.id).any(|e| &e.slug == slug) {
                    return Err(ApiError::new(
                        ProblemType::UnknownNamedEndpoint,
                        format!("no export endpoint {slug:?} in workspace {:?}", ws.slug),
                    ));
                }
            }
            let t = AccessToken {
                id: Uuid::now_v7(),
                workspace_id: ws.id,
                name,
                sha256: token::hash_hex(&secret),
                hint: secret_hint(&secret, token::TOKEN_PREFIX),
                scopes,
                sources: form.sources,
                device_id: form.device_id,
                endpoints,
                expires_at: form.expires_at,
                created_by: user,
                created_at: Utc::now(),
            };
            let mut view = AccessTokenView::from(&t);
            view.secret = Some(secret);
            Ok((vec![Change::PutToken(t)], view))
        })
        .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// One access token (without its secret). Any member.
#[utoipa::path(get, path = "/api/v1/workspaces/{workspace}/tokens/{token_id}", tag = "tokens",
    params(("workspace" = String, Path, description = "Workspace id or slug"),
        ("token_id" = Uuid, Path, description = "Token id")),
    responses((status = 200, body = AccessTokenView), (status = 404, body = crate::problem::ProblemBody)))]
pub async fn get_token(
    State(app): State<App>,
    caller: Caller,
    ApiPath((workspace, token_id)): ApiPath<(String, Uuid)>,
) -> ApiResult<Json<AccessTokenView>> {
    app.store.read(|s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::View)?;
        s.tokens
            .get(&token_id)
            .filter(|t| t.workspace_id == ws.id)
            .map(|t| Json(AccessTokenView::from(t)))
            .ok_or_else(unknown_token)
    })
}

fn unknown_token() -> ApiError {
    ApiError::new(
        ProblemType::UnknownToken,
        "no such access token in this workspace",
    )
}

/// Revoke an access token; every data-plane node refuses it from the next configuration
/// version on. Admin or Editor (also in a disabled workspace).
#[utoipa::path(delete, path = "/api/v1/workspaces/{workspace}/tokens/{token_id}", tag = "tokens",
    params(("workspace" = String, Path, description = "Workspace id or slug"),
        ("token_id" = Uuid, Path, description = "Token id")),
    responses((status = 204), (status = 403, body = crate::problem::ProblemBody), (status = 404, body = crate::problem::ProblemBody)))]
pub async fn revoke_token(
    State(app): State<App>,
    caller: Caller,
    ApiPath((workspace, token_id)): ApiPath<(String, Uuid)>,
) -> ApiResult<StatusCode> {
    app.write(move |s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::ManageTokens)?;
        s.tokens
            .get(&token_id)
            .filter(|t| t.workspace_id == ws.id)
            .ok_or_else(unknown_token)?;
        Ok((vec![Change::DeleteToken(token_id)], StatusCode::NO_CONTENT))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(scopes: &[TokenScope]) -> NewAccessToken {
        NewAccessToken {
            name: "t".into(),
            scopes: scopes.to_vec(),
            sources: None,
            device_id: None,
            endpoints: None,
            expires_at: None,
        }
    }

    #[test]
    fn a_token_has_one_scope_and_only_that_scopes_limits() {
        use TokenScope::{Ingest, Read};
        let refused = |f: &NewAccessToken| {
            valid_purpose(f).map_err(|e| e.kind).err() == Some(ProblemType::InvalidScopes)
        };
        assert!(refused(&form(&[])));
        assert!(refused(&form(&[Ingest, Read])));
        assert_eq!(
            valid_purpose(&form(&[Ingest, Ingest])).ok(),
            Some(Scope::Ingest)
        );
        assert_eq!(valid_purpose(&form(&[Read])).ok(), Some(Scope::Read));

        let mut reader = form(&[Read]);
        reader.endpoints = Some(vec!["live".into()]);
        assert_eq!(valid_purpose(&reader).ok(), Some(Scope::Read));
        reader.device_id = Some("d-1".into());
        assert!(refused(&reader), "a device binding is an ingest limit");
        let mut reader = form(&[Read]);
        reader.sources = Some(vec!["telemetry".into()]);
        assert!(refused(&reader), "sources are an ingest limit");

        let mut device = form(&[Ingest]);
        device.sources = Some(vec!["telemetry".into()]);
        device.device_id = Some("d-1".into());
        assert_eq!(valid_purpose(&device).ok(), Some(Scope::Ingest));
        device.endpoints = Some(vec!["live".into()]);
        assert!(refused(&device), "endpoints are a read limit");
    }
}
