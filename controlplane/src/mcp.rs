//! The Model Context Protocol endpoint of a workspace, `/mcp/{workspace}`: every operation of
//! the workspace's API as a tool (generated from the OpenAPI document, so a new operation is a
//! new tool without further work), served over Streamable HTTP by `rmcp`, stateless.
//!
//! A tool call is the API request itself, performed in-process on the API router with the
//! caller's `Authorization` header (or, for an OAuth access token, the caller it stands for,
//! limited to its grant's workspace and scopes), so authorization, validation and refusals are
//! exactly the API's. Three tools stand beside the generated ones: `workspace_spec_get` and
//! `workspace_spec_import` (the workspace as an AsyncAPI document) and `sluice_call` (any API
//! path of the workspace, and two paths outside it: ingest, forwarded to the data plane by
//! `mcp_ingest.rs`, and token introspection, `oauth/introspect.rs`).
//!
//! Authentication is a Bearer OAuth access token for this MCP URL (`oauth/`), personal access
//! token or session token; a `401` points to the protected-resource metadata. A browser
//! `Origin` other than the control plane's own is refused, and at most `mcp_requests_max`
//! requests run at once.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    JsonObject, ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
    ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde_json::{json, Map, Value};

use crate::api::authorize;
use crate::app::App;
use crate::auth::{presented_secret_from_headers, Caller, ResolvedCaller};
use crate::problem::ApiError;
use crate::roles::Action;

/// Where the workspace operations live; the `{workspace}` parameter is filled from the MCP URL.
const WORKSPACE_PREFIX: &str = "/api/v1/workspaces/{workspace}";

/// The most text a tool result carries: a client's context is small, and an API answer (a
/// whole AsyncAPI document, a long page) may not be.
pub const RESULT_BYTES_MAX: usize = 256 * 1024;

/// The most of an API answer read at all; past [`RESULT_BYTES_MAX`] only its size is told.
const ANSWER_BYTES_MAX: usize = 64 * 1024 * 1024;

/// One tool: an API operation and how to turn arguments into its request.
#[derive(Debug, Clone)]
struct Operation {
    tool: Tool,
    method: Method,
    /// The path template, `{workspace}` included.
    path: String,
    path_params: Vec<String>,
    query_params: Vec<String>,
    /// The content type of the request body, when the operation takes one.
    body_type: Option<String>,
    /// A tool that is not one API operation, with its own way to make the request.
    extra: Option<Extra>,
}

/// The tools besides the generated ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Extra {
    /// `workspace_spec_get`: the AsyncAPI export.
    SpecGet,
    /// `workspace_spec_import`: the AsyncAPI import, with `dry_run`.
    SpecImport,
    /// `sluice_call`: any method and path of the workspace's API.
    Call,
}

impl Operation {
    fn read_only(&self) -> bool {
        self.method == Method::GET
    }
}

/// The extra tools, after the generated ones.
fn extra_tools() -> Vec<Operation> {
    let tool =
        |name: &str, description: &str, schema: Value, read_only: bool, destructive: bool| {
            let Value::Object(schema) = schema else {
                unreachable!("tool schemas are objects")
            };
            Tool::new(name.to_owned(), description.to_owned(), Arc::new(schema)).with_annotations(
                ToolAnnotations::new()
                    .read_only(read_only)
                    .destructive(destructive),
            )
        };
    let operation = |tool: Tool, method: Method, extra: Extra| Operation {
        tool,
        method,
        path: format!("{WORKSPACE_PREFIX}/asyncapi"),
        path_params: Vec::new(),
        query_params: Vec::new(),
        body_type: None,
        extra: Some(extra),
    };
    vec![
        operation(
            tool(
                "workspace_spec_get",
                "The whole workspace (sources and their schemas, tag rules, outputs, export endpoints, webhooks) as one AsyncAPI 3.0.0 document; its x-sluice-configVersion is the if_match of workspace_spec_import.",
                json!({"type": "object", "properties": {
                    "format": {"type": "string", "enum": ["json", "yaml"], "default": "json",
                        "description": "json (structured) or yaml (text)"}
                }}),
                true,
                false,
            ),
            Method::GET,
            Extra::SpecGet,
        ),
        operation(
            tool(
                "workspace_spec_import",
                "Apply an AsyncAPI 3.0.0 document (as workspace_spec_get gives it, edited) to the workspace in one configuration version: entities matched by id are updated, new ones created, missing ones deleted. Use dry_run first to see what it would do.",
                json!({"type": "object", "properties": {
                    "document": {"type": ["object", "string"],
                        "description": "The document: a JSON object, or YAML text"},
                    "dry_run": {"type": "boolean", "default": false,
                        "description": "Only say what the import would do"},
                    "if_match": {"type": "integer", "minimum": 0,
                        "description": "The exported x-sluice-configVersion: refused if the workspace changed since"}
                }, "required": ["document"]}),
                false,
                true,
            ),
            Method::PUT,
            Extra::SpecImport,
        ),
        operation(
            tool(
                "sluice_call",
                "Call any operation of this workspace's API (see /api/v1/openapi.json) with your own authorization: method, a path relative to /api/v1/workspaces/{workspace} (\"\" or \"/sources/boilers\"), query parameters and a JSON body. Two paths are not the workspace API's: POST /v1/ingest/{workspace}/{source} sends events (a JSON object or array as body, or NDJSON text with content_type application/x-ndjson; device_id optional; needs the ingest scope) to the data plane, answered with the count accepted once they are durable; POST /oauth/introspect with body {\"token\": ...} introspects an OAuth token of this workspace (RFC 7662).",
                json!({"type": "object", "properties": {
                    "method": {"type": "string", "enum": ["GET", "POST", "PUT", "PATCH", "DELETE"]},
                    "path": {"type": "string", "maxLength": 1024,
                        "description": "Relative to the workspace, starting with / (or empty for the workspace itself); or /v1/ingest/{workspace}/{source}; or /oauth/introspect"},
                    "query": {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}},
                    "body": {"description": "The JSON body, or text with content_type"},
                    "content_type": {"type": "string", "description": "For a text body, e.g. application/yaml or application/x-ndjson"},
                    "device_id": {"type": "string", "maxLength": 128,
                        "description": "Ingest only: the device the events come from (X-Device-Id)"}
                }, "required": ["method", "path"]}),
                false,
                true,
            ),
            Method::POST,
            Extra::Call,
        ),
    ]
}

/// The tools of every workspace, built once from the OpenAPI document.
#[derive(Debug, Default)]
pub struct Catalogue {
    operations: Vec<Operation>,
}

impl Catalogue {
    /// One tool per operation under `/api/v1/workspaces/{workspace}`, in document order.
    pub fn from_document(document: &Value) -> Catalogue {
        let components = document
            .pointer("/components/schemas")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let mut operations = Vec::new();
        let Some(paths) = document.get("paths").and_then(Value::as_object) else {
            operations.extend(extra_tools());
            return Catalogue { operations };
        };
        for (path, item) in paths {
            let in_workspace = path == WORKSPACE_PREFIX
                || path
                    .strip_prefix(WORKSPACE_PREFIX)
                    .is_some_and(|rest| rest.starts_with('/'));
            if !in_workspace {
                continue;
            }
            for (name, method) in [
                ("get", Method::GET),
                ("put", Method::PUT),
                ("post", Method::POST),
                ("delete", Method::DELETE),
                ("patch", Method::PATCH),
            ] {
                if let Some(operation) = item.get(name) {
                    if let Some(op) = operation_tool(path, method, operation, &components) {
                        operations.push(op);
                    }
                }
            }
        }
        operations.extend(extra_tools());
        Catalogue { operations }
    }

    /// The operation ids, for tests that compare them with the OpenAPI document.
    #[cfg(test)]
    fn names(&self) -> Vec<String> {
        self.operations
            .iter()
            .map(|o| o.tool.name.to_string())
            .collect()
    }

    fn find(&self, name: &str) -> Option<&Operation> {
        self.operations.iter().find(|o| o.tool.name == name)
    }
}

fn operation_tool(
    path: &str,
    method: Method,
    operation: &Value,
    components: &Map<String, Value>,
) -> Option<Operation> {
    let id = operation.get("operationId")?.as_str()?.to_owned();
    let summary = operation
        .get("summary")
        .or_else(|| operation.get("description"))
        .and_then(Value::as_str)
        .unwrap_or(&id)
        .to_owned();
    let mut properties = Map::new();
    let mut required = Vec::new();
    let mut path_params = Vec::new();
    let mut query_params = Vec::new();
    let mut refs = BTreeSet::new();
    for param in operation
        .get("parameters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let (Some(name), Some(place)) = (
            param.get("name").and_then(Value::as_str),
            param.get("in").and_then(Value::as_str),
        ) else {
            continue;
        };
        match place {
            "path" if name == "workspace" => continue,
            "path" => path_params.push(name.to_owned()),
            "query" => query_params.push(name.to_owned()),
            _ => continue,
        }
        let mut schema = param
            .get("schema")
            .cloned()
            .unwrap_or_else(|| json!({"type": "string"}));
        if let (Some(object), Some(description)) = (
            schema.as_object_mut(),
            param.get("description").and_then(Value::as_str),
        ) {
            object.insert("description".into(), description.into());
        }
        collect_refs(&schema, &mut refs);
        properties.insert(name.to_owned(), schema);
        if place == "path" || param.get("required").and_then(Value::as_bool) == Some(true) {
            required.push(Value::from(name));
        }
    }
    let mut body_type = None;
    if let Some(content) = operation
        .pointer("/requestBody/content")
        .and_then(Value::as_object)
    {
        let chosen = content
            .get_key_value("application/json")
            .or_else(|| content.iter().next());
        if let Some((kind, media)) = chosen {
            let schema = media.get("schema").cloned().unwrap_or_else(|| json!({}));
            collect_refs(&schema, &mut refs);
            properties.insert("body".into(), schema);
            if operation
                .pointer("/requestBody/required")
                .and_then(Value::as_bool)
                == Some(true)
            {
                required.push("body".into());
            }
            body_type = Some(kind.clone());
        }
    }
    let mut schema = Map::new();
    schema.insert("type".into(), "object".into());
    schema.insert("properties".into(), Value::Object(properties));
    if !required.is_empty() {
        schema.insert("required".into(), Value::Array(required));
    }
    let defs = referenced_components(refs, components);
    if !defs.is_empty() {
        schema.insert("$defs".into(), Value::Object(defs));
    }
    // The components travel with the schema as `$defs`, so it stands alone.
    let mut schema = Value::Object(schema);
    rewrite_refs(&mut schema);
    let Value::Object(schema) = schema else {
        return None;
    };
    let read_only = method == Method::GET;
    let tool = Tool::new(id, summary, Arc::new(schema)).with_annotations(
        ToolAnnotations::new()
            .read_only(read_only)
            .destructive(method == Method::DELETE),
    );
    Some(Operation {
        tool,
        method,
        path: path.to_owned(),
        path_params,
        query_params,
        body_type,
        extra: None,
    })
}

const COMPONENT_REF: &str = "#/components/schemas/";

fn collect_refs(value: &Value, refs: &mut BTreeSet<String>) {
    match value {
        Value::Object(object) => {
            if let Some(name) = object
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix(COMPONENT_REF))
            {
                refs.insert(name.to_owned());
            }
            object.values().for_each(|v| collect_refs(v, refs));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, refs)),
        _ => {}
    }
}

/// The components `refs` name and those they name in turn.
fn referenced_components(
    mut pending: BTreeSet<String>,
    components: &Map<String, Value>,
) -> Map<String, Value> {
    let mut defs = Map::new();
    while let Some(name) = pending.pop_first() {
        if defs.contains_key(&name) {
            continue;
        }
        let Some(schema) = components.get(&name) else {
            continue;
        };
        let mut more = BTreeSet::new();
        collect_refs(schema, &mut more);
        pending.extend(more.into_iter().filter(|n| !defs.contains_key(n)));
        defs.insert(name, schema.clone());
    }
    defs
}

fn rewrite_refs(value: &mut Value) {
    match value {
        Value::Object(object) => {
            if let Some(Value::String(r)) = object.get_mut("$ref") {
                if let Some(name) = r.strip_prefix(COMPONENT_REF) {
                    *r = format!("#/$defs/{name}");
                }
            }
            object.values_mut().for_each(rewrite_refs);
        }
        Value::Array(items) => items.iter_mut().for_each(rewrite_refs),
        _ => {}
    }
}

/// What the authentication layer found, for the tools: the workspace of the URL and whether
/// the client asked for the read-only catalogue.
#[derive(Debug, Clone)]
struct Scope {
    workspace: String,
    lean: bool,
    /// The caller of an OAuth access token, handed to the API as is (the token itself means
    /// nothing to the API); `None` for personal and session tokens, forwarded as sent.
    delegated: Option<Caller>,
    /// Whom the request stands for (with the OAuth grant's limits, if any), for the calls
    /// that do not go through the API: ingest and introspection.
    caller: Caller,
}

/// The MCP server of one request (stateless: one per request).
#[derive(Clone)]
struct Server {
    catalogue: Arc<Catalogue>,
    api: Router,
    app: App,
}

impl Server {
    fn scope(
        context: &RequestContext<RoleServer>,
    ) -> Result<(Scope, axum::http::request::Parts), McpError> {
        let parts = context
            .extensions
            .get::<axum::http::request::Parts>()
            .cloned()
            .ok_or_else(|| McpError::internal_error("no HTTP request behind this call", None))?;
        let scope = parts
            .extensions
            .get::<Scope>()
            .cloned()
            .ok_or_else(|| McpError::internal_error("no workspace behind this call", None))?;
        Ok((scope, parts))
    }

    async fn perform(
        &self,
        operation: &Operation,
        scope: &Scope,
        parts: &axum::http::request::Parts,
        arguments: JsonObject,
    ) -> Result<CallToolResult, McpError> {
        if operation.extra == Some(Extra::Call) {
            match arguments.get("path").and_then(Value::as_str) {
                Some(path) if path.starts_with(INGEST_PREFIX) => {
                    return self.ingest(scope, path, &arguments).await;
                }
                Some(INTROSPECT_PATH) => return self.introspect(scope, &arguments).await,
                _ => {}
            }
        }
        let request = match operation.extra {
            None => api_request(operation, scope, parts, &arguments)?,
            Some(extra) => extra_request(extra, scope, parts, &arguments)?,
        };
        let response = tower::ServiceExt::oneshot(self.api.clone(), request)
            .await
            .map_err(|e| McpError::internal_error(format!("the API call failed: {e}"), None))?;
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), ANSWER_BYTES_MAX)
            .await
            .map_err(|e| McpError::internal_error(format!("the API answer failed: {e}"), None))?;
        Ok(tool_result(status, &bytes))
    }
}

/// `sluice_call`'s path for ingest, as on the data plane: `/v1/ingest/{workspace}/{source}`.
const INGEST_PREFIX: &str = "/v1/ingest/";
/// `sluice_call`'s path for token introspection, as on the control plane.
const INTROSPECT_PATH: &str = "/oauth/introspect";

/// A refusal made here rather than by the API, as the same tool error.
async fn problem_result(error: ApiError) -> CallToolResult {
    let response = error.into_response();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), ANSWER_BYTES_MAX)
        .await
        .unwrap_or_default();
    tool_result(status, &bytes)
}

/// `sluice_call` arguments that must say POST (ingest and introspection take nothing else).
fn require_post(arguments: &JsonObject, what: &str) -> Result<(), McpError> {
    let method = arguments
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if method.eq_ignore_ascii_case("POST") {
        Ok(())
    } else {
        Err(McpError::invalid_params(
            format!("{what} takes method POST"),
            None,
        ))
    }
}

impl Server {
    /// `sluice_call` with `POST /v1/ingest/{workspace}/{source}`: the caller's role and scopes
    /// must allow ingest in this workspace; the events go to the data plane with the
    /// workspace's own credential (`mcp_ingest.rs`), and its answer is the result.
    async fn ingest(
        &self,
        scope: &Scope,
        path: &str,
        arguments: &JsonObject,
    ) -> Result<CallToolResult, McpError> {
        require_post(arguments, "ingest")?;
        let invalid = |detail: String| McpError::invalid_params(detail, None);
        let target = path
            .strip_prefix(INGEST_PREFIX)
            .and_then(|rest| rest.split_once('/'))
            .filter(|(w, s)| {
                sluice_config::snapshot::is_valid_slug(w)
                    && sluice_config::snapshot::is_valid_slug(s)
            });
        let Some((workspace, source)) = target else {
            return Err(invalid(format!(
                "path {path:?}: ingest is /v1/ingest/{{workspace}}/{{source}} with lowercase slugs (a-z, 0-9, -)"
            )));
        };
        let authorized = self.app.store.read(|s| {
            authorize(s, &scope.caller, &scope.workspace, Action::Ingest)
                .map(|(ws, _)| (ws.id, ws.slug.clone()))
        });
        let (workspace_id, slug) = match authorized {
            Ok(found) => found,
            Err(refusal) => return Ok(problem_result(refusal).await),
        };
        if workspace != slug {
            return Err(invalid(format!(
                "this MCP endpoint serves workspace {slug:?} only; send its events to /v1/ingest/{slug}/{{source}} (use the MCP URL of {workspace:?} for that workspace)"
            )));
        }
        let (content_type, body) = match (
            arguments.get("body"),
            arguments.get("content_type").and_then(Value::as_str),
        ) {
            (None | Some(Value::Null), _) => ("application/json".to_owned(), Vec::new()),
            (Some(Value::String(text)), Some(kind)) => (kind.to_owned(), text.clone().into_bytes()),
            (Some(value), kind) => (
                kind.unwrap_or("application/json").to_owned(),
                value.to_string().into_bytes(),
            ),
        };
        let query = arguments.get("query").and_then(Value::as_object).map(|q| {
            let mut serializer = url::form_urlencoded::Serializer::new(String::new());
            for (name, value) in q {
                serializer.append_pair(name, &argument_text(value));
            }
            serializer.finish()
        });
        // Both become headers: what a header cannot carry is the caller's mistake, not the
        // data plane's failure.
        let device_id = match arguments.get("device_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(device))
                if (1..=128).contains(&device.len())
                    && device.bytes().all(|b| b.is_ascii_graphic()) =>
            {
                Some(device.clone())
            }
            Some(_) => {
                return Err(invalid(
                    "device_id is 1 to 128 visible ASCII characters (no spaces)".into(),
                ))
            }
        };
        if content_type.len() > 256
            || !content_type
                .bytes()
                .all(|b| b == b' ' || b.is_ascii_graphic())
        {
            return Err(invalid(
                "content_type is a media type such as application/x-ndjson".into(),
            ));
        }
        let forward = crate::mcp_ingest::Forward {
            workspace_id,
            workspace_slug: slug,
            source: source.to_owned(),
            query,
            content_type,
            device_id,
            body: body.into(),
        };
        Ok(match crate::mcp_ingest::send(&self.app, forward).await {
            Ok((status, answer)) => tool_result(status, &answer),
            Err(refusal) => problem_result(refusal).await,
        })
    }

    /// `sluice_call` with `POST /oauth/introspect`: RFC 7662's answer about `body.token`, as
    /// the endpoint gives it to this caller.
    async fn introspect(
        &self,
        scope: &Scope,
        arguments: &JsonObject,
    ) -> Result<CallToolResult, McpError> {
        require_post(arguments, "introspection")?;
        let token = arguments
            .get("body")
            .and_then(|b| b.get("token"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                McpError::invalid_params(
                    "introspection takes body {\"token\": \"sluice_oat_…\" or \"sluice_ort_…\"}",
                    None,
                )
            })?;
        let issuer = crate::oauth::issuer(&self.app);
        let answer = self.app.store.read(|s| {
            crate::oauth::introspect::answer(s, &issuer, &scope.caller, token, chrono::Utc::now())
        });
        Ok(tool_result(StatusCode::OK, answer.to_string().as_bytes()))
    }
}

fn argument_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The API request of a tool call.
fn api_request(
    operation: &Operation,
    scope: &Scope,
    parts: &axum::http::request::Parts,
    arguments: &JsonObject,
) -> Result<Request, McpError> {
    let segment = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let mut path = operation
        .path
        .replace("{workspace}", &segment(&scope.workspace));
    for name in &operation.path_params {
        let value = arguments.get(name).ok_or_else(|| {
            McpError::invalid_params(format!("the argument {name:?} is required"), None)
        })?;
        path = path.replace(&format!("{{{name}}}"), &segment(&argument_text(value)));
    }
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    let mut any = false;
    for name in &operation.query_params {
        if let Some(value) = arguments.get(name).filter(|v| !v.is_null()) {
            query.append_pair(name, &argument_text(value));
            any = true;
        }
    }
    if any {
        path = format!("{path}?{}", query.finish());
    }
    let mut builder = Request::builder()
        .method(operation.method.clone())
        .uri(path);
    let body = match (&operation.body_type, arguments.get("body")) {
        (Some(kind), Some(Value::String(text))) if !kind.contains("json") => {
            builder = builder.header(header::CONTENT_TYPE, kind.as_str());
            Body::from(text.clone())
        }
        (Some(_), Some(value)) => {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
            Body::from(value.to_string())
        }
        _ => Body::empty(),
    };
    let request = builder.body(body).map_err(|e| {
        McpError::invalid_params(format!("the arguments make no request: {e}"), None)
    })?;
    Ok(as_caller(request, scope, parts))
}

/// The request made on behalf of the MCP caller: with its `Authorization` header, or (OAuth)
/// the caller its token stands for; and with its address, for the handlers that bound
/// requests per client.
fn as_caller(mut request: Request, scope: &Scope, parts: &axum::http::request::Parts) -> Request {
    match &scope.delegated {
        Some(caller) => {
            request
                .extensions_mut()
                .insert(ResolvedCaller(caller.clone()));
        }
        None => {
            if let Some(authorization) = parts.headers.get(header::AUTHORIZATION) {
                request
                    .headers_mut()
                    .insert(header::AUTHORIZATION, authorization.clone());
            }
        }
    }
    if let Some(peer) = parts.extensions.get::<ConnectInfo<SocketAddr>>() {
        request.extensions_mut().insert(*peer);
    }
    request
}

/// The API request of an extra tool.
fn extra_request(
    extra: Extra,
    scope: &Scope,
    parts: &axum::http::request::Parts,
    arguments: &JsonObject,
) -> Result<Request, McpError> {
    let invalid = |detail: String| McpError::invalid_params(detail, None);
    let segment = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let workspace = format!("/api/v1/workspaces/{}", segment(&scope.workspace));
    let builder = Request::builder();
    let request = match extra {
        Extra::SpecGet => {
            let yaml = arguments.get("format").and_then(Value::as_str) == Some("yaml");
            builder
                .method(Method::GET)
                .uri(format!("{workspace}/asyncapi"))
                .header(
                    header::ACCEPT,
                    if yaml {
                        "application/yaml"
                    } else {
                        "application/json"
                    },
                )
                .body(Body::empty())
        }
        Extra::SpecImport => {
            let dry_run = arguments
                .get("dry_run")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let mut builder = builder
                .method(Method::PUT)
                .uri(format!("{workspace}/asyncapi?dry_run={dry_run}"));
            if let Some(version) = arguments.get("if_match").filter(|v| !v.is_null()) {
                let version = version.as_u64().ok_or_else(|| {
                    invalid(
                        "if_match is the exported x-sluice-configVersion, a whole number".into(),
                    )
                })?;
                builder = builder.header(header::IF_MATCH, format!("\"{version}\""));
            }
            match arguments.get("document") {
                Some(Value::String(yaml)) => builder
                    .header(header::CONTENT_TYPE, "application/yaml")
                    .body(Body::from(yaml.clone())),
                Some(document @ Value::Object(_)) => builder
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from(document.to_string())),
                _ => {
                    return Err(invalid(
                        "document is required: the AsyncAPI document as an object or YAML text"
                            .into(),
                    ));
                }
            }
        }
        Extra::Call => {
            let method = arguments
                .get("method")
                .and_then(Value::as_str)
                .and_then(|m| match m.to_ascii_uppercase().as_str() {
                    "GET" => Some(Method::GET),
                    "POST" => Some(Method::POST),
                    "PUT" => Some(Method::PUT),
                    "PATCH" => Some(Method::PATCH),
                    "DELETE" => Some(Method::DELETE),
                    _ => None,
                })
                .ok_or_else(|| invalid("method is GET, POST, PUT, PATCH or DELETE".into()))?;
            let path = arguments
                .get("path")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    invalid("path is required, relative to the workspace (\"/sources\")".into())
                })?;
            let path = workspace_relative(path).map_err(invalid)?;
            let mut uri = format!("{workspace}{path}");
            if let Some(query) = arguments.get("query").and_then(Value::as_object) {
                let mut serializer = url::form_urlencoded::Serializer::new(String::new());
                for (name, value) in query {
                    serializer.append_pair(name, &argument_text(value));
                }
                let query = serializer.finish();
                if !query.is_empty() {
                    uri = format!("{uri}?{query}");
                }
            }
            let builder = builder.method(method).uri(uri);
            match (
                arguments.get("body"),
                arguments.get("content_type").and_then(Value::as_str),
            ) {
                (None | Some(Value::Null), _) => builder.body(Body::empty()),
                (Some(Value::String(text)), Some(kind)) => builder
                    .header(header::CONTENT_TYPE, kind)
                    .body(Body::from(text.clone())),
                (Some(value), _) => builder
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from(value.to_string())),
            }
        }
    }
    .map_err(|e| invalid(format!("the arguments make no request: {e}")))?;
    Ok(as_caller(request, scope, parts))
}

/// A `sluice_call` path checked to stay inside the workspace: empty or starting with `/`,
/// without dot segments, empty segments, a query or a fragment (those go in `query`).
fn workspace_relative(path: &str) -> Result<&str, String> {
    let path = path.trim_end_matches('/');
    let bad = !(path.is_empty() || path.starts_with('/'))
        || path.contains("//")
        || path.contains(['?', '#', '\\', '%'])
        || path.split('/').any(|s| s == "." || s == "..")
        || !path.bytes().all(|b| b.is_ascii_graphic());
    if bad {
        return Err(format!(
            "path {path:?} must be relative to the workspace, like \"/sources\" or \"/sources/boilers\", without dot segments, percent-escapes, a query or a fragment (put query parameters in query)"
        ));
    }
    Ok(path)
}

/// The API answer as a tool result: the JSON as `structuredContent` plus its text, bounded; a
/// refusal (problem+json) as a tool error carrying its `type`, `status` and `detail`.
fn tool_result(status: StatusCode, bytes: &[u8]) -> CallToolResult {
    let value: Value = if bytes.is_empty() {
        json!({"status": status.as_u16()})
    } else {
        serde_json::from_slice(bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
    };
    if !status.is_success() {
        let problem = json!({
            "type": value.get("type").cloned().unwrap_or(Value::Null),
            "status": status.as_u16(),
            "title": value.get("title").cloned().unwrap_or(Value::Null),
            "detail": value.get("detail").cloned().unwrap_or_else(|| value.clone()),
        });
        return CallToolResult::structured_error(problem);
    }
    let text = serde_json::to_string_pretty(&value).unwrap_or_default();
    if text.len() > RESULT_BYTES_MAX {
        let mut cut = RESULT_BYTES_MAX;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        let note = format!(
            "\n… truncated: the answer has {} bytes, {RESULT_BYTES_MAX} shown; ask for fewer \
             items (the list operations take a limit and a cursor)",
            text.len()
        );
        let mut result = CallToolResult::structured(json!({
            "truncated": true,
            "bytes": text.len(),
        }));
        result.content = vec![ContentBlock::text(format!("{}{note}", &text[..cut]))];
        return result;
    }
    // structuredContent is an object in MCP; other answers are wrapped.
    let structured = match value {
        Value::Object(_) => value,
        other => json!({ "value": other }),
    };
    let mut result = CallToolResult::structured(structured);
    result.content = vec![ContentBlock::text(text)];
    result
}

impl ServerHandler for Server {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("sluice", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Sluice workspace management: every operation of the workspace's API as a tool.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let (scope, _) = Self::scope(&context)?;
        let tools = self
            .catalogue
            .operations
            .iter()
            .filter(|o| !scope.lean || o.read_only())
            .map(|o| o.tool.clone())
            .collect();
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let (scope, parts) = Self::scope(&context)?;
        let name: &str = &request.name;
        let operation = self.catalogue.find(name).ok_or_else(|| {
            McpError::invalid_params(format!("no tool {name:?}; see tools/list"), None)
        })?;
        if scope.lean && !operation.read_only() {
            return Ok(CallToolResult::structured_error(json!({
                "type": "lean-mode",
                "status": 403,
                "title": "Read-only tools only",
                "detail": format!("{name} changes the workspace; lean mode (?mode=lean) serves read-only tools only"),
            }))
            .into());
        }
        let arguments = request.arguments.unwrap_or_default();
        Ok(self
            .perform(operation, &scope, &parts, arguments)
            .await?
            .into())
    }
}

/// The host names the endpoint answers to: the public URL's and loopback (rmcp refuses other
/// `Host`s, against DNS rebinding).
fn allowed_hosts(public_url: &str) -> Vec<String> {
    let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "::1", "[::1]"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    if let Ok(url) = url::Url::parse(public_url) {
        if let Some(host) = url.host_str() {
            hosts.push(host.to_owned());
            if let Some(port) = url.port() {
                hosts.push(format!("{host}:{port}"));
            }
        }
    }
    hosts
}

/// What the layer in front of the MCP service needs: the app, the origin browsers may call
/// from, and the bound on requests at once.
#[derive(Clone)]
struct Gate {
    app: App,
    /// The public URL's origin (`scheme://host[:port]`), the one browser `Origin` allowed.
    origin: String,
    requests: Arc<tokio::sync::Semaphore>,
}

/// `/mcp/{workspace}`: the MCP service behind its authentication. `api` is the API as the
/// listener serves it (with its limits), for the tool calls.
pub fn router(app: App, document: &Value, api: Router) -> Router {
    let server = Server {
        catalogue: Arc::new(Catalogue::from_document(document)),
        api,
        app: app.clone(),
    };
    let public_url = app.config.public_url();
    let origin = url::Url::parse(&public_url)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or(public_url.clone());
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_allowed_hosts(allowed_hosts(&public_url))
        .with_max_request_body_bytes(app.config.body_bytes_max);
    let service = StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let gate = Gate {
        requests: Arc::new(tokio::sync::Semaphore::new(
            app.config.mcp_requests_max.max(1),
        )),
        app,
        origin,
    };
    Router::new()
        .route_service("/mcp/{workspace}", service)
        .route_layer(axum::middleware::from_fn_with_state(gate, authenticate))
}

/// A JSON-RPC error answer outside any request id (the transport refused the request).
fn json_rpc_error(status: StatusCode, code: i64, message: &str) -> Response {
    (
        status,
        axum::Json(json!({
            "jsonrpc": "2.0",
            "id": null,
            "error": {"code": code, "message": message},
        })),
    )
        .into_response()
}

/// A `401` with the Bearer challenge that sends OAuth clients to the protected-resource
/// metadata (RFC 9728 §5.1), and `error="invalid_token"` when a token was sent.
fn unauthorized(app: &App, workspace: &str, refused: Option<&str>) -> Response {
    let detail = refused.unwrap_or(
        "send Authorization: Bearer <OAuth access token for this MCP URL, personal access token or session token>",
    );
    let mut response = ApiError::unauthenticated(detail.to_owned()).into_response();
    let metadata = crate::oauth::resource_metadata_url(app, workspace);
    let challenge = match refused {
        Some(reason) => format!(
            "Bearer error=\"invalid_token\", error_description=\"{}\", resource_metadata=\"{metadata}\"",
            reason.replace('"', "'")
        ),
        None => format!(
            "Bearer resource_metadata=\"{metadata}\", scope=\"workspace:read workspace:write\""
        ),
    };
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// In front of the MCP service: the `Origin` check, the bound on requests at once, and the
/// caller, who must be a member of the workspace of the URL.
async fn authenticate(
    State(gate): State<Gate>,
    Path(workspace): Path<String>,
    mut request: Request,
    next: Next,
) -> Response {
    let app = &gate.app;
    // Browsers send Origin; a page elsewhere must not drive a member's MCP session (the
    // cookie would otherwise authenticate it). Clients outside browsers send none.
    if let Some(origin) = request.headers().get(header::ORIGIN) {
        if origin.to_str().ok() != Some(gate.origin.as_str()) {
            return json_rpc_error(
                StatusCode::FORBIDDEN,
                -32600,
                &format!(
                    "Origin {:?} is not allowed: the MCP endpoint takes browser requests from {} only",
                    String::from_utf8_lossy(origin.as_bytes()),
                    gate.origin
                ),
            );
        }
    }
    let Ok(_permit) = gate.requests.clone().try_acquire_owned() else {
        let mut response = json_rpc_error(
            StatusCode::SERVICE_UNAVAILABLE,
            -32000,
            "the MCP endpoint is handling too many requests; retry shortly",
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    let Some(secret) = presented_secret_from_headers(request.headers()) else {
        return unauthorized(app, &workspace, None);
    };
    let (caller, delegated) = if crate::oauth::bearer::is_access_token(&secret) {
        match crate::oauth::bearer::resolve(app, &secret, &workspace) {
            Ok(caller) => (caller.clone(), Some(caller)),
            Err(refused) => return unauthorized(app, &workspace, Some(&refused.to_string())),
        }
    } else {
        match Caller::from_secret(app, &secret) {
            Some(caller) => (caller, None),
            None => {
                return unauthorized(
                    app,
                    &workspace,
                    Some("the token is unknown, revoked or expired"),
                );
            }
        }
    };
    // Not a member: the same 404 as the API, which does not tell whether the workspace exists.
    if let Err(refusal) = app
        .store
        .read(|s| authorize(s, &caller, &workspace, Action::View).map(|_| ()))
    {
        return refusal.into_response();
    }
    let lean = request
        .uri()
        .query()
        .into_iter()
        .flat_map(|q| url::form_urlencoded::parse(q.as_bytes()))
        .any(|(k, v)| k == "mode" && v == "lean");
    request.extensions_mut().insert(Scope {
        workspace,
        lean,
        delegated,
        caller,
    });
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_workspace_operation_is_a_tool_with_a_standalone_schema() {
        let (_, document) = crate::api::router_and_document();
        let document = serde_json::to_value(&document).expect("the document is JSON");
        let catalogue = Catalogue::from_document(&document);
        let names = catalogue.names();
        assert!(names.contains(&"list_sources".to_owned()), "{names:?}");
        assert!(names.contains(&"create_source".to_owned()), "{names:?}");
        assert!(!names.contains(&"sign_in".to_owned()), "{names:?}");
        for operation in &catalogue.operations {
            let schema = Value::Object((*operation.tool.input_schema).clone());
            assert!(schema["properties"].get("workspace").is_none(), "{schema}");
            let mut refs = Vec::new();
            find_refs(&schema, &mut refs);
            let defs = schema.get("$defs");
            for r in refs {
                let name = r
                    .strip_prefix("#/$defs/")
                    .unwrap_or_else(|| panic!("{r} left"));
                assert!(defs.and_then(|d| d.get(name)).is_some(), "{name} missing");
            }
        }
    }

    fn find_refs(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(o) => {
                if let Some(Value::String(r)) = o.get("$ref") {
                    out.push(r.clone());
                }
                o.values().for_each(|v| find_refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| find_refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn large_answers_are_truncated_and_refusals_are_tool_errors() {
        let big = json!({"items": vec!["x".repeat(1000); 400]}).to_string();
        let result = tool_result(StatusCode::OK, big.as_bytes());
        let text = result.content[0]
            .as_text()
            .map(|t| t.text.len())
            .unwrap_or(0);
        assert!(text < RESULT_BYTES_MAX + 512);
        let refusal = json!({"type": "https://x/unknown-source", "title": "t", "status": 404, "detail": "no source"});
        let result = tool_result(StatusCode::NOT_FOUND, refusal.to_string().as_bytes());
        assert_eq!(result.is_error, Some(true));
        let structured = result.structured_content.unwrap_or_default();
        assert_eq!(structured["status"], 404);
        assert_eq!(structured["detail"], "no source");
    }
}
