//! The workspace's AsyncAPI document (`crate::asyncapi`), in JSON or YAML.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{authorize, require_enabled_in, ApiJson, ApiPath, ApiQuery};
use crate::app::App;
use std::collections::HashMap;

use crate::asyncapi::data_out;
use crate::asyncapi::import::{self, Plan, DOCUMENT_BYTES_MAX};
use crate::auth::Caller;
use crate::problem::{ApiError, ApiResult, FieldError, ProblemType};
use crate::roles::Action;
use crate::store::Change;
use crate::webhook_client::{self, AddressError};

/// Media type of the YAML form.
const YAML: &str = "application/yaml";

/// Whether the request asks for YAML: an `Accept` naming a YAML type (before or without JSON).
fn wants_yaml(headers: &HeaderMap) -> bool {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    accept
        .split(',')
        .map(|t| t.split(';').next().unwrap_or_default().trim())
        .find(|t| {
            matches!(
                *t,
                "application/json" | "application/yaml" | "application/x-yaml" | "text/yaml"
            )
        })
        .is_some_and(|t| t != "application/json")
}

/// The document as the answer asks for it.
pub fn render(document: &serde_json::Value, yaml: bool) -> ApiResult<Response> {
    if yaml {
        let text = serde_yaml_ng::to_string(document)
            .map_err(|e| ApiError::internal(format!("writing the document as YAML: {e}")))?;
        return Ok(([(header::CONTENT_TYPE, YAML)], text).into_response());
    }
    let text = serde_json::to_string_pretty(document)
        .map_err(|e| ApiError::internal(format!("writing the document as JSON: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], text).into_response())
}

/// The workspace as an AsyncAPI 3.0.0 document: its sources as channels, their schemas as
/// message payloads, its tag rules, its export endpoints and webhooks as channels and its
/// outputs as messages, with the ids that identify them and never a secret
/// (docs/asyncapi.md). JSON, or YAML with `Accept: application/yaml`. Any member.
#[utoipa::path(get, path = "/api/v1/workspaces/{workspace}/asyncapi", tag = "asyncapi",
    params(("workspace" = String, Path, description = "Workspace id or slug")),
    responses(
        (status = 200, description = "The AsyncAPI 3.0.0 document",
            content((Object = "application/json"), (String = "application/yaml"))),
        (status = 404, body = crate::problem::ProblemBody)))]
pub async fn export_asyncapi(
    State(app): State<App>,
    caller: Caller,
    ApiPath(workspace): ApiPath<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let urls = app.config.device_urls();
    let document = app.store.read(|s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::View)?;
        Ok::<_, ApiError>(crate::asyncapi::export(s, ws, &urls))
    })?;
    render(&document, wants_yaml(&headers))
}

/// Options of an import.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ImportQuery {
    /// Only say what the import would do.
    #[serde(default)]
    pub dry_run: bool,
}

/// What an import did, or would do with `dry_run`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportAnswer {
    pub dry_run: bool,
    /// Sources, tag rules, outputs, export endpoints and webhooks created (with their new ids;
    /// a created webhook with its secret, once), updated and deleted; entities the document
    /// leaves as they are appear in none.
    #[serde(flatten)]
    pub plan: Plan,
    /// The workspace's version after the import, as the next export's
    /// `x-sluice-configVersion` (unchanged by a dry run, or by an import that changes
    /// nothing); nodes at this configuration version or later have the workspace as imported.
    pub config_version: u64,
}

fn refused(problems: Vec<FieldError>) -> ApiError {
    let first = problems
        .first()
        .map(|e| format!("; at {:?}: {}", e.pointer, e.message))
        .unwrap_or_default();
    ApiError::new(
        ProblemType::InvalidAsyncapi,
        format!(
            "the document cannot be imported ({} problem(s); `errors` lists them with JSON \
             pointers into the document){first}",
            problems.len()
        ),
    )
    .with_errors(problems)
}

/// The configuration version `If-Match` names: `7`, `"7"` or `W/"7"`.
fn if_match(headers: &HeaderMap) -> ApiResult<Option<u64>> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default().trim();
    let text = text.strip_prefix("W/").unwrap_or(text).trim_matches('"');
    text.parse().map(Some).map_err(|_| {
        ApiError::new(
            ProblemType::InvalidBody,
            "If-Match is the x-sluice-configVersion of the exported document, e.g. If-Match: \"42\"",
        )
    })
}

fn is_yaml(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|t| {
            t.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .is_some_and(|t| {
            matches!(
                t.as_str(),
                "application/yaml" | "application/x-yaml" | "text/yaml"
            )
        })
}

/// Replace the workspace's sources, tag rules, outputs, export endpoints and webhooks with an
/// AsyncAPI document's, in one configuration version: entities with a known id are updated,
/// entries without an id are created, entities absent from the document are deleted
/// (docs/asyncapi.md). JSON, or YAML with `Content-Type: application/yaml`; at most 4 MiB.
/// Every problem is listed in one `422 invalid-asyncapi`. `If-Match` with the exported
/// `x-sluice-configVersion` refuses the import if the workspace changed since. The answer
/// holds the signing secret of each webhook the import created, this once. Admin or Editor.
#[utoipa::path(put, path = "/api/v1/workspaces/{workspace}/asyncapi", tag = "asyncapi",
    params(("workspace" = String, Path, description = "Workspace id or slug"), ImportQuery,
        ("If-Match" = Option<String>, Header, description = "The exported x-sluice-configVersion")),
    request_body(content((Object = "application/json"), (String = "application/yaml")),
        description = "An AsyncAPI 3.0.0 document as the export gives it"),
    responses((status = 200, body = ImportAnswer), (status = 400, body = crate::problem::ProblemBody),
        (status = 403, body = crate::problem::ProblemBody), (status = 404, body = crate::problem::ProblemBody),
        (status = 412, body = crate::problem::ProblemBody), (status = 413, body = crate::problem::ProblemBody),
        (status = 422, body = crate::problem::ProblemBody)))]
pub async fn import_asyncapi(
    State(app): State<App>,
    caller: Caller,
    ApiPath(workspace): ApiPath<String>,
    ApiQuery(query): ApiQuery<ImportQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<ImportAnswer>> {
    // Who may import is known before the document is read: a Viewer's document is not parsed.
    app.store.read(|s| {
        for action in [
            Action::ManageSources,
            Action::ManageTagRules,
            Action::ManageOutputs,
        ] {
            authorize(s, &caller, &workspace, action)?;
        }
        Ok::<_, ApiError>(())
    })?;
    let expected = if_match(&headers)?;
    let bytes = axum::body::to_bytes(body, DOCUMENT_BYTES_MAX + 1)
        .await
        .map_err(|_| {
            ApiError::new(
                ProblemType::BodyTooLarge,
                format!("an AsyncAPI document is at most {DOCUMENT_BYTES_MAX} bytes"),
            )
        })?;
    let yaml = is_yaml(&headers);
    // Parsing and checking every schema take CPU in proportion to the document: off the
    // async threads, and before the store's writer is taken.
    let proposed = tokio::task::spawn_blocking(move || {
        let document = import::parse(&bytes, yaml).map_err(|e| vec![FieldError::at("", e)])?;
        import::read(&document)
    })
    .await
    .map_err(|e| ApiError::internal(format!("reading the document failed: {e}")))?
    .map_err(refused)?;
    let allow_private = app.config.smtp_allow_private_hosts;
    let url_checks = check_webhook_urls(&app, &caller, &workspace, &proposed).await?;
    let sources_max = app.config.sources_per_workspace_max;
    let actor = caller.user.email.clone();
    let apply = move |s: &crate::store::State| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::ManageSources)?;
        let version = s.workspace_version(ws.id);
        if let Some(expected) = expected {
            if expected != version {
                return Err(ApiError::new(
                    ProblemType::ConfigChanged,
                    format!(
                        "workspace {:?} changed at configuration version {version}, after the \
                         export at {expected}: export the document again and redo the edit",
                        ws.slug
                    ),
                ));
            }
        }
        let cx = data_out::Context {
            allow_private,
            actor: &actor,
            url_checks: &url_checks,
        };
        let (plan, changes) = import::plan(s, ws, proposed, sources_max, &cx).map_err(refused)?;
        Ok::<_, ApiError>((ws.clone(), plan, changes))
    };
    if query.dry_run {
        let plan = app
            .store
            .read(|s| apply(s).map(|(ws, plan, _)| (plan, ws)))?;
        let (plan, ws) = plan;
        let version = app.store.read(|s| s.workspace_version(ws.id));
        return Ok(Json(ImportAnswer {
            dry_run: true,
            plan,
            config_version: version,
        }));
    }
    let worker = app.clone();
    let (plan, ws) = app
        .write(move |s| {
            let (ws, mut plan, mut changes) = apply(s)?;
            if !changes.is_empty() {
                require_enabled_in(s, &ws)?;
            }
            // Webhooks the import creates get a secret, as those the API creates; it is in
            // this answer only.
            for change in &mut changes {
                let Change::PutWebhook(webhook) = change else {
                    continue;
                };
                let Some(entry) = plan
                    .created
                    .iter_mut()
                    .find(|e| e.kind == "webhook" && e.id == webhook.id)
                else {
                    continue;
                };
                entry.secret = Some(super::webhooks::new_secret(&worker, webhook)?);
            }
            Ok((changes, (plan, ws)))
        })
        .await?;
    let config_version = app.store.read(|s| s.workspace_version(ws.id));
    Ok(Json(ImportAnswer {
        dry_run: false,
        plan,
        config_version,
    }))
}

/// Resolves the host of every webhook URL of the document that is new or changed, as the
/// webhooks API does when a URL is saved (at most 50, at once, each within the client's 5 s):
/// URL -> why it is refused. Unchanged URLs are not resolved again, so that importing an
/// export does not depend on DNS (nodes check every connection anyway).
async fn check_webhook_urls(
    app: &App,
    caller: &Caller,
    workspace: &str,
    proposed: &import::Proposed,
) -> ApiResult<HashMap<String, Result<(), String>>> {
    let allow_private = app.config.smtp_allow_private_hosts;
    // More webhooks than a workspace may have is refused by the plan: a hostile document does
    // not get to make a thousand lookups first.
    if proposed.webhooks.len() > sluice_config::data_out::WEBHOOKS_MAX {
        return Ok(HashMap::new());
    }
    let urls: Vec<String> = app.store.read(|s| {
        let (ws, _) = authorize(s, caller, workspace, Action::ManageOutputs)?;
        let mut urls: Vec<String> = proposed
            .webhooks
            .iter()
            .filter(|w| {
                let stored = w.id.and_then(|id| s.webhooks.get(&id));
                !stored.is_some_and(|old| old.workspace_id == ws.id && old.url == w.url)
            })
            // A URL of the wrong form is refused by the plan without resolving it.
            .filter(|w| sluice_config::data_out::check_webhook_url(&w.url, allow_private).is_ok())
            .map(|w| w.url.clone())
            .collect();
        urls.sort();
        urls.dedup();
        Ok::<_, ApiError>(urls)
    })?;
    let checks = urls.into_iter().map(|url| async move {
        let verdict = match webhook_client::checked_addresses(&url, allow_private).await {
            Ok(_) => Ok(()),
            Err(e @ AddressError::NotAllowed { .. }) => Err(format!("address-not-allowed: {e}")),
            Err(e) => Err(format!("invalid-webhook: {e}")),
        };
        (url, verdict)
    });
    Ok(futures::future::join_all(checks)
        .await
        .into_iter()
        .collect())
}

/// Whether the document is public.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublicForm {
    pub public: bool,
}

/// Whether the document is public, and where.
#[derive(Debug, Serialize, ToSchema)]
pub struct PublicView {
    pub public: bool,
    /// Where anyone may fetch it as JSON while it is public.
    pub json_url: String,
    /// The same in YAML.
    pub yaml_url: String,
}

fn public_view(base: &str, ws: &crate::model::Workspace, public: bool) -> PublicView {
    PublicView {
        public,
        json_url: format!("{base}/public/{}/asyncapi.json", ws.slug),
        yaml_url: format!("{base}/public/{}/asyncapi.yaml", ws.slug),
    }
}

/// Whether the workspace's AsyncAPI document is public, and where. Any member.
#[utoipa::path(get, path = "/api/v1/workspaces/{workspace}/asyncapi/public", tag = "asyncapi",
    params(("workspace" = String, Path, description = "Workspace id or slug")),
    responses((status = 200, body = PublicView), (status = 404, body = crate::problem::ProblemBody)))]
pub async fn get_asyncapi_public(
    State(app): State<App>,
    caller: Caller,
    ApiPath(workspace): ApiPath<String>,
) -> ApiResult<Json<PublicView>> {
    let base = app.config.public_url();
    app.store.read(|s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::View)?;
        Ok(Json(public_view(&base, ws, ws.asyncapi_public)))
    })
}

/// Serve the workspace's AsyncAPI document without authentication at
/// `/public/{workspace-slug}/asyncapi.json` and `.yaml` (the same document members export: no
/// secrets, no member data), or stop. Admin.
#[utoipa::path(put, path = "/api/v1/workspaces/{workspace}/asyncapi/public", tag = "asyncapi",
    params(("workspace" = String, Path, description = "Workspace id or slug")),
    request_body = PublicForm,
    responses((status = 200, body = PublicView), (status = 400, body = crate::problem::ProblemBody),
        (status = 403, body = crate::problem::ProblemBody), (status = 404, body = crate::problem::ProblemBody)))]
pub async fn set_asyncapi_public(
    State(app): State<App>,
    caller: Caller,
    ApiPath(workspace): ApiPath<String>,
    ApiJson(form): ApiJson<PublicForm>,
) -> ApiResult<Json<PublicView>> {
    let base = app.config.public_url();
    app.write(move |s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::PublishAsyncapi)?;
        let view = public_view(&base, ws, form.public);
        if ws.asyncapi_public == form.public {
            return Ok((vec![], Json(view)));
        }
        let mut ws = ws.clone();
        ws.asyncapi_public = form.public;
        Ok((vec![Change::PutWorkspaceSettings(ws)], Json(view)))
    })
    .await
}

/// The public document of a workspace, or the same 404 whether the workspace does not exist
/// or is not public: a private workspace's slug is not revealed.
fn public_document(app: &App, slug: &str, yaml: bool) -> ApiResult<Response> {
    let urls = app.config.device_urls();
    let document = app.store.read(|s| {
        s.slugs
            .get(slug)
            .and_then(|id| s.workspaces.get(id))
            .filter(|ws| ws.asyncapi_public)
            .map(|ws| crate::asyncapi::export(s, ws, &urls))
    });
    match document {
        Some(document) => render(&document, yaml),
        None => Err(ApiError::new(
            ProblemType::NotFound,
            format!("no public AsyncAPI document for workspace {slug:?}"),
        )),
    }
}

/// A workspace's AsyncAPI document in JSON, when an Admin made it public; no authentication.
#[utoipa::path(get, path = "/public/{workspace}/asyncapi.json", tag = "asyncapi", security(()),
    params(("workspace" = String, Path, description = "Workspace slug")),
    responses((status = 200, description = "The AsyncAPI 3.0.0 document", content((Object = "application/json"))),
        (status = 404, body = crate::problem::ProblemBody)))]
pub async fn public_asyncapi_json(
    State(app): State<App>,
    ApiPath(workspace): ApiPath<String>,
) -> ApiResult<Response> {
    public_document(&app, &workspace, false)
}

/// A workspace's AsyncAPI document in YAML, when an Admin made it public; no authentication.
#[utoipa::path(get, path = "/public/{workspace}/asyncapi.yaml", tag = "asyncapi", security(()),
    params(("workspace" = String, Path, description = "Workspace slug")),
    responses((status = 200, description = "The AsyncAPI 3.0.0 document", content((String = "application/yaml"))),
        (status = 404, body = crate::problem::ProblemBody)))]
pub async fn public_asyncapi_yaml(
    State(app): State<App>,
    ApiPath(workspace): ApiPath<String>,
) -> ApiResult<Response> {
    public_document(&app, &workspace, true)
}

#[cfg(test)]
mod tests {
    use super::wants_yaml;
    use axum::http::{header, HeaderMap, HeaderValue};

    fn accept(value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn yaml_is_given_when_asked_for_before_json() {
        assert!(!wants_yaml(&HeaderMap::new()));
        assert!(!wants_yaml(&accept("*/*")));
        assert!(wants_yaml(&accept("application/yaml")));
        assert!(wants_yaml(&accept(
            "text/yaml;q=0.9, application/json;q=0.5"
        )));
        assert!(!wants_yaml(&accept("application/json, application/yaml")));
    }
}
