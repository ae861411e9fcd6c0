//! The HTTP API under `/api/v1`, its OpenAPI document, and what the handlers share: JSON and
//! query extractors that refuse with problem+json, pagination, and the workspace permission
//! check.
//!
//! Routes are registered through `utoipa_axum`, so the router and the OpenAPI document are
//! built from the same list and cannot drift apart.

pub(crate) mod asyncapi;
mod cluster;
pub(crate) mod codes;
pub(crate) mod cors;
pub(crate) mod export_endpoints;
pub(crate) mod html;
pub(crate) mod identities;
pub(crate) mod invitations;
pub(crate) mod links;
pub(crate) mod members;
mod meta;
pub(crate) mod oauth_grants;
mod operator;
pub(crate) mod outputs;
pub(crate) mod password_reset;
pub(crate) mod personal_tokens;
mod refusals;
pub(crate) mod sessions;
mod signup;
pub(crate) mod smtp;
pub(crate) mod sources;
pub(crate) mod tag_rules;
pub(crate) mod tokens;
mod users;
mod validate;
pub(crate) mod webhooks;
pub(crate) mod workspaces;

use axum::extract::{FromRequest, FromRequestParts};
use axum::http::StatusCode;
use axum::Router;
use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::App;
use crate::auth::Caller;
use crate::model::{User, Workspace};
use crate::problem::{ApiError, ApiResult, ProblemType};
use crate::roles::{Action, Role};
use crate::store::State;

pub(crate) use validate::{valid_display_name, valid_slug, valid_text};
pub(crate) use webhooks::{DISABLE_AFTER_S_DEFAULT, DISABLE_AFTER_S_MAX, DISABLE_AFTER_S_MIN};

/// A JSON body; malformed or mistyped bodies are refused with problem+json.
///
/// A number with a zero fraction (`2.0`) is the same JSON number as `2`, and JSON Schema calls
/// it an integer: it is read as one, where serde alone would refuse it for an integer field.
pub struct ApiJson<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let axum::Json(mut value) =
            axum::Json::<serde_json::Value>::from_request(request, state).await?;
        whole_numbers_as_integers(&mut value);
        serde_json::from_value(value).map(ApiJson).map_err(|e| {
            ApiError::new(
                ProblemType::InvalidBody,
                format!("the body does not fit: {e}"),
            )
        })
    }
}

/// Rewrites every float with a zero fraction that fits an `i64` or `u64` as that integer.
fn whole_numbers_as_integers(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            // Both bounds are powers of two, exact as f64.
            if f.fract() == 0.0 && f >= i64::MIN as f64 && f < u64::MAX as f64 {
                *n = if f < 0.0 {
                    (f as i64).into()
                } else {
                    (f as u64).into()
                };
            }
        }
        Value::Array(items) => items.iter_mut().for_each(whole_numbers_as_integers),
        Value::Object(fields) => fields.values_mut().for_each(whole_numbers_as_integers),
        _ => {}
    }
}

/// A form body (`application/x-www-form-urlencoded`); bad ones are refused with
/// problem+json.
#[derive(FromRequest)]
#[from_request(via(axum::extract::Form), rejection(ApiError))]
pub struct ApiForm<T>(pub T);

/// Path parameters; malformed ones (e.g. a bad UUID) are refused with problem+json.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// Query parameters; bad ones are refused with problem+json.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// Which page of a list to return.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Items per page (default 50, at most the server's `page_size_max`, 200 by default).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// One page of a list, in creation order.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

const PAGE_SIZE_DEFAULT: usize = 50;

impl PageQuery {
    /// Cuts one page out of `items`, each with its sort key (ascending, unique).
    pub fn page<T>(
        &self,
        app: &App,
        items: impl IntoIterator<Item = (String, T)>,
    ) -> ApiResult<Page<T>> {
        self.cut(app, items, Order::Oldest)
    }

    /// Cuts one page out of `items` for a list shown newest first (a log), each with its sort
    /// key (unique, larger is newer); the cursor works as in [`PageQuery::page`].
    pub fn page_newest_first<T>(
        &self,
        app: &App,
        items: impl IntoIterator<Item = (String, T)>,
    ) -> ApiResult<Page<T>> {
        self.cut(app, items, Order::Newest)
    }

    fn cut<T>(
        &self,
        app: &App,
        items: impl IntoIterator<Item = (String, T)>,
        order: Order,
    ) -> ApiResult<Page<T>> {
        let limit = self.limit.unwrap_or(PAGE_SIZE_DEFAULT);
        if limit == 0 || limit > app.config.page_size_max {
            return Err(ApiError::new(
                ProblemType::InvalidQuery,
                format!("limit must be 1 to {}", app.config.page_size_max),
            ));
        }
        let after_cursor = |key: &String| match (&self.cursor, order) {
            (None, _) => true,
            (Some(c), Order::Oldest) => key > c,
            (Some(c), Order::Newest) => key < c,
        };
        let mut items: Vec<(String, T)> = items
            .into_iter()
            .filter(|(key, _)| after_cursor(key))
            .collect();
        match order {
            Order::Oldest => items.sort_by(|a, b| a.0.cmp(&b.0)),
            Order::Newest => items.sort_by(|a, b| b.0.cmp(&a.0)),
        }
        let next_cursor = (items.len() > limit).then(|| items[limit - 1].0.clone());
        items.truncate(limit);
        Ok(Page {
            items: items.into_iter().map(|(_, item)| item).collect(),
            next_cursor,
        })
    }
}

/// Which end of a list comes first.
#[derive(Clone, Copy)]
enum Order {
    Oldest,
    Newest,
}

/// The caller's role in the workspace named by `key` (id or slug), if it allows `action`.
/// Non-members are told the workspace does not exist, so that they learn nothing.
pub fn authorize<'s>(
    s: &'s State,
    caller: &Caller,
    key: &str,
    action: Action,
) -> ApiResult<(&'s Workspace, Role)> {
    let unknown = || {
        ApiError::new(
            ProblemType::UnknownWorkspace,
            format!("no workspace {key:?} among yours"),
        )
    };
    let ws = s.workspace(key).ok_or_else(unknown)?;
    let member = s
        .members
        .get(&(ws.id, caller.user.id))
        .ok_or_else(unknown)?;
    if caller
        .delegation
        .as_ref()
        .is_some_and(|d| d.workspace_id != ws.id)
    {
        return Err(unknown());
    }
    if !action.allows(member.role) {
        let roles: Vec<String> = action
            .allowed_roles()
            .iter()
            .map(|r| format!("{r:?}"))
            .collect();
        return Err(ApiError::new(
            ProblemType::InsufficientRole,
            format!(
                "your role in {:?} is {:?}; this needs {}: ask an Admin",
                ws.slug,
                member.role,
                roles.join(" or ")
            ),
        ));
    }
    if let Some(delegation) = caller
        .delegation
        .as_ref()
        .filter(|d| !d.scopes.allow(action))
    {
        return Err(ApiError::new(
            ProblemType::InsufficientScope,
            format!(
                "the OAuth grant's scopes are {:?}; this needs {}",
                delegation.scopes.to_string(),
                match action {
                    Action::View => "workspace:read",
                    Action::Ingest => "ingest",
                    _ => "workspace:write",
                }
            ),
        ));
    }
    Ok((ws, member.role))
}

/// Refuses changes to a disabled workspace's assets, saying what enables it again and who can
/// do it: an operator, by prolonging the creator's trial or giving them a paid plan. Names the
/// creator by e-mail.
pub fn require_enabled_in(s: &State, ws: &Workspace) -> ApiResult<()> {
    if ws.enabled {
        return Ok(());
    }
    Err(disabled(ws, s.users.get(&ws.created_by)))
}

/// The refusal of a change to a disabled workspace, `creator` being the user who created it.
fn disabled(ws: &Workspace, creator: Option<&User>) -> ApiError {
    let id = ws.created_by;
    let (who, ended) = match creator {
        Some(user) => (
            user.email.clone(),
            format!(" on {}", user.trial_ends_at.format("%Y-%m-%d %H:%M UTC")),
        ),
        None => (format!("user {id}"), String::new()),
    };
    ApiError::new(
        ProblemType::WorkspaceDisabled,
        format!(
            "workspace {:?} is disabled because the trial of its creator, {who}, ended{ended}. \
             It is enabled again as soon as an operator prolongs that trial \
             (PUT /api/v1/operator/users/{id}/trial) or gives {who} a paid plan \
             (PUT /api/v1/operator/users/{id}/plan): ask {who} or your operator. Meanwhile \
             the workspace can be read, its tokens revoked, its members changed, and it can \
             be deleted.",
            ws.slug
        ),
    )
}

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A session token (from POST /api/v1/sessions) or a personal access token",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(
                crate::auth::SESSION_COOKIE,
            ))),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Sluice control plane",
        description = "Users, workspaces, members and roles, invitations, access tokens, sources, tag rules, outputs, export endpoints and webhooks. Errors are application/problem+json (RFC 9457) with a stable `type`.",
        license(name = "Apache-2.0")
    ),
    modifiers(&Security),
    security(("bearer" = []), ("cookie" = [])),
    components(schemas(crate::problem::ProblemBody)),
    tags(
        (name = "users", description = "Sign-up, verification, sessions, sign-in with OpenID Connect and OAuth 2 providers and the identities it links, password reset, personal tokens"),
        (name = "workspaces", description = "Workspaces and their members"),
        (name = "invitations", description = "Inviting people into a workspace"),
        (name = "tokens", description = "Workspace access tokens for devices and readers"),
        (name = "sources", description = "Ingest points, their schemas, and CORS origins"),
        (name = "tag-rules", description = "A workspace's ordered rules that lift values from topics, headers, query parameters and payloads into tags"),
        (name = "outputs", description = "Filtered, projected views of a source's events"),
        (name = "export-endpoints", description = "Where end-users read an output with a read token"),
        (name = "webhooks", description = "Outputs delivered to a URL in signed batches (Standard Webhooks), their delivery and failure logs"),
        (name = "asyncapi", description = "The workspace as an AsyncAPI 3.0.0 document"),
        (name = "smtp", description = "A workspace's own SMTP server and its delivery log"),
        (name = "operator", description = "Plans and trials, for operators"),
        (name = "cluster", description = "The configuration stream to data-plane nodes (cluster secret)"),
        (name = "meta", description = "Liveness and this document"),
    )
)]
struct ApiDoc;

/// The API router and its OpenAPI document, built from one list of routes.
pub fn router_and_document() -> (Router<App>, utoipa::openapi::OpenApi) {
    let (router, document) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(users::sign_up))
        .routes(routes!(users::verify_email))
        .routes(routes!(codes::resend_verification_code))
        .routes(routes!(sessions::sign_in))
        .routes(routes!(sessions::sign_out))
        .routes(routes!(sessions::list_sessions))
        .routes(routes!(sessions::end_session))
        .routes(routes!(users::me))
        .routes(routes!(identities::list_providers))
        .routes(routes!(identities::list_identities))
        .routes(routes!(identities::unlink_identity))
        .routes(routes!(identities::start))
        .routes(routes!(identities::callback))
        .routes(routes!(identities::verify_identity))
        .routes(routes!(password_reset::request_password_reset))
        .routes(routes!(password_reset::reset_password))
        .routes(routes!(
            personal_tokens::list_personal_tokens,
            personal_tokens::create_personal_token
        ))
        .routes(routes!(personal_tokens::revoke_personal_token))
        .routes(routes!(
            workspaces::list_workspaces,
            workspaces::create_workspace
        ))
        .routes(routes!(
            workspaces::get_workspace,
            workspaces::rename_workspace,
            workspaces::delete_workspace
        ))
        .routes(routes!(members::list_members))
        .routes(routes!(members::change_role, members::remove_member))
        .routes(routes!(oauth_grants::list_oauth_grants))
        .routes(routes!(oauth_grants::revoke_oauth_grant))
        .routes(routes!(invitations::list_invitations, invitations::invite))
        .routes(routes!(invitations::cancel_invitation))
        .routes(routes!(invitations::accept_invitation))
        .routes(routes!(tokens::list_tokens, tokens::create_token))
        .routes(routes!(tokens::get_token, tokens::revoke_token))
        .routes(routes!(sources::list_sources, sources::create_source))
        .routes(routes!(
            sources::get_source,
            sources::update_source,
            sources::delete_source
        ))
        .routes(routes!(
            tag_rules::list_tag_rules,
            tag_rules::create_tag_rule,
            tag_rules::replace_tag_rules
        ))
        .routes(routes!(
            tag_rules::get_tag_rule,
            tag_rules::update_tag_rule,
            tag_rules::delete_tag_rule
        ))
        .routes(routes!(outputs::list_outputs, outputs::create_output))
        .routes(routes!(
            outputs::get_output,
            outputs::update_output,
            outputs::delete_output
        ))
        .routes(routes!(
            export_endpoints::list_export_endpoints,
            export_endpoints::create_export_endpoint
        ))
        .routes(routes!(
            export_endpoints::get_export_endpoint,
            export_endpoints::update_export_endpoint,
            export_endpoints::delete_export_endpoint
        ))
        .routes(routes!(webhooks::list_webhooks, webhooks::create_webhook))
        .routes(routes!(
            webhooks::get_webhook,
            webhooks::update_webhook,
            webhooks::delete_webhook
        ))
        .routes(routes!(webhooks::rotate_webhook_secret))
        .routes(routes!(webhooks::test_webhook))
        .routes(routes!(webhooks::list_webhook_deliveries))
        .routes(routes!(webhooks::list_webhook_failures))
        .routes(routes!(
            asyncapi::export_asyncapi,
            asyncapi::import_asyncapi
        ))
        .routes(routes!(
            asyncapi::get_asyncapi_public,
            asyncapi::set_asyncapi_public
        ))
        .routes(routes!(asyncapi::public_asyncapi_json))
        .routes(routes!(asyncapi::public_asyncapi_yaml))
        .routes(routes!(cors::get_cors, cors::set_cors))
        .routes(routes!(smtp::get_smtp, smtp::put_smtp, smtp::delete_smtp))
        .routes(routes!(smtp::test_smtp))
        .routes(routes!(smtp::list_deliveries))
        .routes(routes!(cluster::config_stream))
        .routes(routes!(cluster::ack))
        .routes(routes!(cluster::webhook_attempts))
        .routes(routes!(cluster::list_nodes))
        .routes(routes!(cluster::metrics))
        .routes(routes!(operator::list_users))
        .routes(routes!(operator::set_plan))
        .routes(routes!(operator::set_trial))
        .routes(routes!(operator::backup))
        .routes(routes!(links::accept_link))
        .routes(routes!(links::login_page, links::login_form))
        .routes(routes!(signup::signup_page, signup::signup_form))
        .routes(routes!(signup::verify_form))
        .routes(routes!(meta::healthz))
        .routes(routes!(meta::openapi_document))
        .split_for_parts();
    (
        router,
        with_response_descriptions(refusals::document_refusals(document)),
    )
}

/// OpenAPI requires a description on every response; where a handler gives none, the
/// status's reason phrase ("Created", "Not Found") says it.
fn with_response_descriptions(mut document: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    use utoipa::openapi::{RefOr, Response};
    for item in document.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            for (status, response) in operation.responses.responses.iter_mut() {
                if let RefOr::T(Response { description, .. }) = response {
                    if description.is_empty() {
                        *description = status
                            .parse::<u16>()
                            .ok()
                            .and_then(|s| StatusCode::from_u16(s).ok())
                            .and_then(|s| s.canonical_reason())
                            .unwrap_or("Response")
                            .to_owned();
                    }
                }
            }
        }
    }
    document
}

/// Answer of routes that do not exist.
pub async fn no_route() -> ApiError {
    ApiError::new(
        ProblemType::NoRoute,
        "no such endpoint; see /api/v1/openapi.json for the API",
    )
}

/// Answer of a known route called with the wrong method.
pub async fn wrong_method() -> ApiError {
    ApiError::new(
        ProblemType::MethodNotAllowed,
        "this endpoint does not take that method; see /api/v1/openapi.json",
    )
}

#[cfg(test)]
mod tests {
    use super::whole_numbers_as_integers;
    use serde_json::json;

    #[test]
    fn whole_floats_are_read_as_integers_and_other_numbers_stay() {
        let mut value = json!({"port": 25.0, "deep": [{"n": -3.0}], "half": 2.5, "big": 1e300});
        whole_numbers_as_integers(&mut value);
        assert_eq!(
            value,
            json!({"port": 25, "deep": [{"n": -3}], "half": 2.5, "big": 1e300})
        );
        assert!(value["port"].is_u64() && value["deep"][0]["n"].is_i64());
    }
}
